//! Retrieval-augmented chat: the `knowledge_base` extension field of
//! `POST /v1/chat/completions`. The last user message is the query; the chunks recalled from
//! the knowledge base are numbered and put into that message through a template; the answer
//! comes back with a `citations` list saying which chunks were given and which the answer
//! cites (`[n]`).

use serde::Deserialize;
use serde_json::{json, Value};
use shoal_protocol::ChatTurn;
use shoal_recall::{Hit, SearchMode};

use super::knowledge::FilterJson;
use super::{ApiError, GatewayState};
use crate::retrieval::Search;

/// The template used unless the request gives one: `{context}` and `{question}` are
/// replaced.
pub const DEFAULT_TEMPLATE: &str = "Answer the question using the context below. \
Cite the passages you use by their number, like [1].\n\nContext:\n{context}\n\nQuestion: {question}";

/// Most characters of one chunk put into the prompt.
const MAX_CHUNK_CHARS: usize = 2000;

/// `"knowledge_base": "name"` or `{"name": …, "top_k": …, "mode": …, "filter": …, "template": …}`.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum RagField {
    Name(String),
    Spec(RagSpec),
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RagSpec {
    name: String,
    #[serde(default = "default_top_k")]
    top_k: usize,
    #[serde(default)]
    mode: SearchMode,
    #[serde(default)]
    filter: FilterJson,
    #[serde(default)]
    template: Option<String>,
}

fn default_top_k() -> usize {
    4
}

impl RagField {
    fn spec(self) -> RagSpec {
        match self {
            RagField::Name(name) => RagSpec {
                name,
                top_k: default_top_k(),
                mode: SearchMode::Hybrid,
                filter: FilterJson::default(),
                template: None,
            },
            RagField::Spec(s) => s,
        }
    }
}

/// The chunks a RAG answer was given.
#[derive(Debug, Clone)]
pub struct Citations {
    pub knowledge_base: String,
    pub hits: Vec<Hit>,
}

impl Citations {
    /// The `citations` field: every chunk given, numbered as in the prompt, with whether
    /// `answer` cites it (`None` while the answer is not known yet).
    pub fn json(&self, answer: Option<&str>) -> Value {
        let list: Vec<Value> = self
            .hits
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let n = i + 1;
                let mut v = json!({
                    "index": n,
                    "knowledge_base": self.knowledge_base,
                    "chunk_id": h.chunk_id.to_string(),
                    "document_id": h.doc_id,
                    "title": h.title,
                    "source": h.source,
                    "score": h.score,
                    "text": h.text,
                });
                if let Some(a) = answer {
                    v["cited"] = json!(a.contains(&format!("[{n}]")));
                }
                v
            })
            .collect();
        Value::Array(list)
    }

    /// The numbers the answer cites.
    pub fn cited(&self, answer: &str) -> Vec<usize> {
        (1..=self.hits.len()).filter(|n| answer.contains(&format!("[{n}]"))).collect()
    }
}

/// Recalls chunks for the conversation's last user message and rewrites that message with
/// the template.
pub async fn augment(gw: &GatewayState, field: RagField, turns: &mut [ChatTurn]) -> Result<Citations, ApiError> {
    let spec = field.spec();
    let template = spec.template.clone().unwrap_or_else(|| DEFAULT_TEMPLATE.to_string());
    if !template.contains("{context}") || !template.contains("{question}") {
        return Err(ApiError::bad_request("knowledge_base.template must contain {context} and {question}"));
    }
    let Some(last) = turns.iter_mut().rev().find(|t| t.role == "user") else {
        return Err(ApiError::bad_request("a knowledge_base request needs a user message to answer"));
    };
    let question = last.content.clone();
    let found = gw
        .retrieval
        .search(
            &spec.name,
            Search { query: question.clone(), top_k: spec.top_k, mode: spec.mode, filter: spec.filter.to_filter() },
        )
        .await?;
    let context: Vec<String> = found
        .hits
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let text: String = h.text.chars().take(MAX_CHUNK_CHARS).collect();
            match &h.title {
                Some(t) if !t.is_empty() => format!("[{}] {t}: {}", i + 1, text.trim()),
                _ => format!("[{}] {}", i + 1, text.trim()),
            }
        })
        .collect();
    last.content = template.replace("{context}", &context.join("\n\n")).replace("{question}", &question);
    Ok(Citations { knowledge_base: spec.name, hits: found.hits })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(doc: &str) -> Hit {
        Hit {
            chunk_id: 7,
            doc_id: doc.into(),
            title: Some(format!("{doc} title")),
            source: None,
            metadata: Default::default(),
            position: 0,
            text: "text".into(),
            score: 0.5,
            dense_rank: Some(1),
            sparse_rank: None,
            dense_score: Some(0.5),
            sparse_score: None,
        }
    }

    #[test]
    fn citations_say_which_chunks_the_answer_cites() {
        let c = Citations { knowledge_base: "kb".into(), hits: vec![hit("a"), hit("b"), hit("c")] };
        let answer = "It is in March [2], as [3] also says.";
        assert_eq!(c.cited(answer), vec![2, 3]);
        let v = c.json(Some(answer));
        assert_eq!(v[0]["index"], 1);
        assert_eq!(v[0]["cited"], false);
        assert_eq!(v[1]["cited"], true);
        assert_eq!(v[1]["document_id"], "b");
        assert_eq!(v[1]["chunk_id"], "7");
        assert!(c.json(None)[0].get("cited").is_none(), "unknown before the answer");
    }

    #[test]
    fn the_field_is_a_name_or_a_spec() {
        let f: RagField = serde_json::from_value(json!("kb")).expect("name");
        assert_eq!(f.spec().top_k, 4);
        let f: RagField = serde_json::from_value(json!({"name": "kb", "top_k": 2, "mode": "sparse"})).expect("spec");
        let s = f.spec();
        assert_eq!((s.name.as_str(), s.top_k, s.mode), ("kb", 2, SearchMode::Sparse));
        assert!(serde_json::from_value::<RagField>(json!({"name": "kb", "colour": 1})).is_err());
    }
}
