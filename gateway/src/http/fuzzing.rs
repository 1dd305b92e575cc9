//! The gateway's request bodies for the fuzz targets (`fuzz/`, see docs/fuzzing.md): each
//! route's body is parsed the way its handler's extractor parses it (`axum::Json::from_bytes`,
//! the same serde types) and run through the checks the handler runs before it needs the
//! cluster. Every check called here is the function the handler itself calls; nothing here
//! needs a running cluster.

use std::sync::OnceLock;

use axum::Json;
use serde::de::DeserializeOwned;

use super::knowledge::{document_upload, DocumentJson, SearchJson};
use super::openai::{
    chat_turns, completion_prompt, embedding_inputs, ChatRequest, CompletionRequest, EmbeddingRequest,
};
use super::routes::{token_ttl, AddCoordinator, TokenRequest};
use crate::knowledge::{check_request, KnowledgeBaseRequest};
use crate::registry::{check_deploy, DeployRequest};
use crate::retrieval::{check_search, Search, Upload, MAX_DOCUMENT_TEXT_BYTES};
use crate::state::{ClusterState, Deployment, ModelRecord, ModelVersion, SamplingHint, WeightFormat};

/// The routes [`check_body`] knows, by number (`route % ROUTES.len()`).
pub const ROUTES: &[&str] = &[
    "POST /v1/chat/completions",
    "POST /v1/completions",
    "POST /v1/embeddings",
    "POST /v1/deployments",
    "POST /v1/knowledge-bases",
    "POST /v1/knowledge-bases/{kb}/documents",
    "PUT /v1/knowledge-bases/{kb}/documents/{id}",
    "POST /v1/knowledge-bases/{kb}/search",
    "POST /v1/tokens",
    "POST /v1/coordinators",
    "POST /v1/keys",
    "POST /v1/prompts",
];

/// Content types a `PUT …/documents/{id}` body is tried as (the first body byte picks one).
const CONTENT_TYPES: &[Option<&str>] =
    &[None, Some("text/plain"), Some("text/markdown"), Some("text/html"), Some("application/pdf"), Some("image/png")];

/// Parses `body` as the request of route `route` and checks it as the route's handler does.
/// Returns whether the body would get past the checks (the rest needs the cluster).
pub fn check_body(route: u8, body: &[u8]) -> bool {
    match route as usize % ROUTES.len() {
        // A prompt template (YAML or JSON), checked, then rendered with every argument set to
        // the definition's own text (bounded by the template fuel and the output cap).
        11 => std::str::from_utf8(body).ok().and_then(|t| shoal_graph::prompt::parse_prompt(t).ok()).is_some_and(|p| {
            let args: serde_json::Map<String, serde_json::Value> = p
                .effective_arguments()
                .into_iter()
                .map(|a| (a.name, serde_json::Value::String(String::from_utf8_lossy(body).into_owned())))
                .collect();
            let _ = p.render(&args);
            true
        }),
        0 => parse::<ChatRequest>(body).is_some_and(|req| {
            let turns = chat_turns(&req.messages);
            let sampling = req.sampling.settings();
            // Tools and response formats: checked, their schemas compiled for constrained
            // decoding (and the compiled constraint followed over the body's own bytes).
            let plan = crate::tools::plan(
                req.tools.as_ref(),
                req.tool_choice.as_ref(),
                req.parallel_tool_calls,
                req.response_format.as_ref(),
            );
            if let Some(c) = plan.as_ref().ok().and_then(|p| p.constraint.as_ref()) {
                if let Ok(schema) = serde_json::from_str(&c.schema) {
                    if let Ok(g) = shoal_engine::constraint::JsonGrammar::compile(&schema) {
                        let mut m = shoal_engine::constraint::JsonMatcher::new(std::sync::Arc::new(g));
                        for chunk in body.chunks(7) {
                            let _ = m.allowed_bytes();
                            if !m.feed(chunk) {
                                break;
                            }
                        }
                    }
                }
            }
            turns.is_ok() && sampling.is_ok() && plan.is_ok()
        }),
        1 => parse::<CompletionRequest>(body)
            .is_some_and(|req| req.sampling.settings().is_ok() && completion_prompt(req.prompt).is_ok()),
        2 => parse::<EmbeddingRequest>(body)
            .is_some_and(|req| embedding_inputs(req.input, req.encoding_format.as_deref(), req.dimensions).is_ok()),
        3 => parse::<DeployRequest>(body).is_some_and(|req| check_deploy(&req).is_ok()),
        4 => parse::<KnowledgeBaseRequest>(body).is_some_and(|req| {
            // Against an empty cluster and one with an embedding deployment `e`.
            let empty = check_request(&ClusterState::default(), req.clone(), 1).is_ok();
            check_request(embedding_state(), req, 1).is_ok() || empty
        }),
        5 => parse::<DocumentJson>(body).is_some_and(|doc| document_upload(doc).is_ok_and(|u| ingest_checks(&u))),
        6 => {
            let (content_type, bytes) = match body.split_first() {
                Some((&b, rest)) => (CONTENT_TYPES[b as usize % CONTENT_TYPES.len()], rest),
                None => (None, body),
            };
            let upload = Upload {
                doc_id: "doc".into(),
                bytes: bytes.to_vec(),
                content_type: content_type.map(str::to_string),
                file_name: None,
                ..Upload::default()
            };
            ingest_checks(&upload)
        }
        7 => parse::<SearchJson>(body).is_some_and(|req| {
            let search = Search { query: req.query, top_k: req.top_k, mode: req.mode, filter: req.filter.to_filter() };
            check_search(&search).is_ok()
        }),
        8 => parse::<TokenRequest>(body).is_some_and(|req| token_ttl(&req).is_ok()),
        9 => parse::<AddCoordinator>(body).is_some_and(|req| req.id != 0),
        _ => parse::<super::keys::KeyRequest>(body)
            .is_some_and(|req| super::keys::check(&req, "key-00000000".into(), 1).is_ok()),
    }
}

/// The body as the handler's `Body<T>` extractor reads it (axum's `Json`).
fn parse<T: DeserializeOwned>(body: &[u8]) -> Option<T> {
    Json::<T>::from_bytes(body).ok().map(|Json(v)| v)
}

/// What an ingest checks before it needs the knowledge base's copies: the document id, the
/// parse of its bytes, the size of its text.
fn ingest_checks(upload: &Upload) -> bool {
    if shoal_recall::DocumentRecord::new(upload.doc_id.clone()).validate().is_err() {
        return false;
    }
    match shoal_recall::parse_document(&upload.bytes, upload.content_type.as_deref(), upload.file_name.as_deref()) {
        Ok(parsed) => parsed.text.len() <= MAX_DOCUMENT_TEXT_BYTES,
        Err(_) => false,
    }
}

/// A cluster state with one embedding deployment, `e`.
fn embedding_state() -> &'static ClusterState {
    static STATE: OnceLock<ClusterState> = OnceLock::new();
    STATE.get_or_init(|| {
        let version = ModelVersion {
            version: 1,
            source: "file:///models/e".into(),
            sha256: "0".repeat(64),
            size: 90 << 20,
            format: WeightFormat::Safetensors,
            architecture: "bert".into(),
            capabilities: vec!["embedding".into()],
            context_length: 512,
            layers: 6,
            hidden_size: 384,
            weight_bytes: 90 << 20,
            files: Vec::new(),
            stored_by: 1,
            registered_at_ms: 0,
            sampling: SamplingHint::default(),
        };
        let mut s = ClusterState::default();
        s.models.insert("e".into(), ModelRecord { name: "e".into(), versions: vec![version] });
        s.deployments.insert(
            "e".into(),
            Deployment {
                name: "e".into(),
                model: "e".into(),
                version: 1,
                replicas: 1,
                shards: 0,
                created_at_ms: 0,
                updated_at_ms: 0,
            },
        );
        s
    })
}

/// Every route's number and a body it accepts (seeds for the fuzz corpus, and a test that
/// the dispatch above reaches the checks).
pub fn example_bodies() -> Vec<(u8, Vec<u8>)> {
    let json = |v: serde_json::Value| v.to_string().into_bytes();
    let mut put = vec![1u8];
    put.extend_from_slice(b"A plain text document.\n\nWith two paragraphs.");
    vec![
        (
            0,
            json(serde_json::json!({
                "model": "smollm2", "messages": [{"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
                "max_tokens": 8, "temperature": 0.7, "top_p": 0.9, "top_k": 40, "stop": ["\n"], "seed": 1,
                "stream": true, "stream_options": {"include_usage": true},
                "knowledge_base": {"name": "docs", "top_k": 3, "mode": "hybrid"}
            })),
        ),
        (
            0,
            json(serde_json::json!({
                "model": "qwen", "messages": [{"role": "user", "content": "Weather in Oslo?"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}],
                "tools": [{"type": "function", "function": {"name": "get_weather", "strict": true,
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                    "days": {"type": "array", "items": {"anyOf": [{"type": "integer"}, {"$ref": "#/$defs/d"}]}, "maxItems": 3}},
                    "required": ["city"], "$defs": {"d": {"enum": ["today", 1, null]}}}}}],
                "tool_choice": "required", "parallel_tool_calls": false
            })),
        ),
        (
            0,
            json(serde_json::json!({
                "model": "qwen", "messages": [{"role": "user", "content": "A person as JSON"}],
                "response_format": {"type": "json_schema", "json_schema": {"name": "p", "strict": true,
                    "schema": {"type": "object", "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 9},
                    "age": {"type": ["integer", "null"]}}, "required": ["name", "age"]}}}
            })),
        ),
        (1, json(serde_json::json!({"model": "smollm2", "prompt": ["Once upon"], "max_tokens": 4, "stop": "."}))),
        (2, json(serde_json::json!({"model": "minilm", "input": ["a", "b"], "encoding_format": "base64"}))),
        (3, json(serde_json::json!({"name": "smollm2", "source": "hf://org/repo/file.gguf", "replicas": 2}))),
        (4, json(serde_json::json!({"name": "docs", "embedding_model": "e", "shards": 2, "chunk_tokens": 128}))),
        (
            5,
            json(serde_json::json!({"id": "a", "content_base64": "IyBUaXRsZQoKdGV4dA==", "file_name": "a.md",
                "tags": ["x"], "metadata": {"k": "v"}})),
        ),
        (6, put),
        (7, json(serde_json::json!({"query": "what", "top_k": 3, "mode": "sparse", "filter": {"tags": ["x"]}}))),
        (8, json(serde_json::json!({"ttl_seconds": 600, "description": "node"}))),
        (9, json(serde_json::json!({"id": 2, "quic": "127.0.0.1:7001", "http": "127.0.0.1:8001"}))),
        (10, json(serde_json::json!({"name": "ci", "scope": "user", "models": ["smollm2"], "rate_per_s": 5}))),
        (
            11,
            b"name: review\ndescription: Reviews code\nmessages:\n  - {role: user, content: \"Review {{ code }}{% if lang %} ({{ lang }}){% endif %}\"}\n  - {role: assistant, content: Sure.}\narguments: [{name: code}, {name: lang, required: false}]\n".to_vec(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_accepts_its_example_and_refuses_garbage() {
        let examples = example_bodies();
        let routes: std::collections::BTreeSet<u8> = examples.iter().map(|e| e.0).collect();
        assert_eq!(routes.len(), ROUTES.len(), "an example for every route");
        for (route, body) in examples {
            assert!(check_body(route, &body), "{} refused its example", ROUTES[route as usize]);
            if route != 6 {
                assert!(!check_body(route, b"{"), "{} took a broken body", ROUTES[route as usize]);
            }
        }
    }
}
