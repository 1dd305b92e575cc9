//! The HTTP gateway (axum): health, readiness, metrics, and the admin API.
//! Errors use the OpenAI error shape.

pub mod audit;
pub mod auth;
pub mod backup;
pub mod console;
pub mod deployments;
mod error;
pub mod fuzzing;
pub mod graphs;
pub mod kb_export;
pub mod keys;
pub mod knowledge;
pub mod mcp;
pub mod mcp_servers;
pub mod openai;
pub mod prometheus;
pub mod prompts;
pub mod quota;
pub mod rag;
mod responses;
mod routes;
pub mod server;

use std::sync::{Arc, Mutex};

use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;

use shoal_coordinator::raft::transport::Faults;

use crate::clock::Clock;
use crate::cluster::Cluster;

pub use auth::{Caller, KeyHasher};
pub use error::{ApiError, Body, RawBody};

/// Largest request body the gateway reads.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What the handlers share.
pub struct GatewayState {
    /// The cluster view and the way writes go to the coordinators.
    pub cluster: Arc<Cluster>,
    /// Set when test-only fault injection is enabled (built with the `fault-injection`
    /// feature and started with `SHOAL_FAULT_INJECTION=1`).
    pub faults: Option<Arc<Faults>>,
    /// How API keys are stored (a keyed hash; see `auth`).
    pub keys: KeyHasher,
    /// Per-key request rates and token budgets.
    pub quotas: quota::Quotas,
    /// Upload slots (see `knowledge::MAX_CONCURRENT_UPLOADS`).
    pub uploads: Arc<tokio::sync::Semaphore>,
    /// A reason `/readyz` still answers 503 (`shoal up` registering its models).
    pub held: Arc<Mutex<Option<String>>>,
    pub prometheus: PrometheusHandle,
    /// Coordinators from the cluster config, when embedded: `(id, quic, http)`.
    pub configured: Vec<(u64, String, String)>,
    pub ca_hash: String,
    pub clock: Clock,
    pub router: Arc<crate::router::Router>,
    /// Knowledge-base ingest and search.
    pub retrieval: Arc<crate::retrieval::Retrieval>,
    /// Where model files registered here are stored, and the coordinator that serves them
    /// to nodes (an embedded gateway shares its coordinator's store; a standalone one has
    /// none and registers models by name only).
    pub artifacts: Option<(shoal_protocol::artifact::ArtifactStore, u64)>,
    /// Where `hf://` sources are downloaded.
    pub downloads: std::path::PathBuf,
    /// Task graphs: definitions, runs, and (embedded gateways) the runner.
    pub graphs: Arc<crate::graphs::Graphs>,
    /// The audit log (every gateway started with a data dir keeps one).
    pub audit: Option<crate::audit::AuditLog>,
    /// The cluster CA's certificate and key files (embedded gateways: backups include them).
    pub ca_files: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// This gateway's last 15 minutes, for the console's charts.
    pub history: Arc<crate::history::History>,
}

pub fn router(state: Arc<GatewayState>) -> Router {
    let routes = Router::new()
        .route("/", get(console::index))
        .route("/assets/{name}", get(console::asset))
        .route("/v1/console/metrics", get(console::metrics))
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz))
        .route("/metrics", get(routes::metrics))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/cluster", get(routes::cluster))
        .route("/v1/nodes", get(routes::nodes))
        .route("/v1/nodes/{id}", get(routes::node))
        .route("/v1/tokens", post(routes::create_token).get(routes::list_tokens))
        .route("/v1/coordinators", post(routes::add_coordinator))
        .route("/v1/coordinators/{id}", delete(routes::remove_coordinator))
        .route("/v1/models", get(openai::list_models))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/v1/deployments", post(deployments::create).get(deployments::list))
        .route("/v1/deployments/{name}", get(deployments::get_one).delete(deployments::delete))
        .route("/v1/knowledge-bases", post(knowledge::create).get(knowledge::list))
        .route("/v1/knowledge-bases/{name}", get(knowledge::get_one).delete(knowledge::delete))
        .route(
            "/v1/knowledge-bases/{name}/documents",
            get(knowledge::list_documents)
                .post(knowledge::post_document)
                .layer(DefaultBodyLimit::max(knowledge::MAX_DOCUMENT_BYTES * 4 / 3 + 64 * 1024))
                .layer(axum::middleware::from_fn_with_state(state.clone(), knowledge::upload_slot)),
        )
        .route(
            "/v1/knowledge-bases/{name}/documents/{id}",
            get(knowledge::get_document)
                .delete(knowledge::delete_document)
                .put(knowledge::put_document)
                .layer(DefaultBodyLimit::max(knowledge::MAX_DOCUMENT_BYTES))
                .layer(axum::middleware::from_fn_with_state(state.clone(), knowledge::upload_slot)),
        )
        .route("/v1/knowledge-bases/{name}/search", post(knowledge::search))
        .route("/v1/knowledge-bases/{name}/export", get(kb_export::export))
        .route(
            "/v1/knowledge-bases/{name}/import",
            post(kb_export::import)
                .layer(DefaultBodyLimit::max(knowledge::MAX_DOCUMENT_BYTES * 4))
                .layer(axum::middleware::from_fn_with_state(state.clone(), knowledge::upload_slot)),
        )
        .route("/v1/graphs", get(graphs::list).post(graphs::apply))
        .route("/v1/graphs/schema", get(graphs::schema))
        .route("/v1/graphs/{name}", get(graphs::get_one).delete(graphs::delete))
        .route("/v1/graphs/{name}/runs", post(graphs::run_graph))
        .route("/v1/runs", get(graphs::list_runs))
        .route("/v1/runs/{id}", get(graphs::get_run).delete(graphs::cancel_run))
        .route("/v1/runs/{id}/rerun", post(graphs::rerun))
        .route("/v1/databases", post(graphs::add_database).get(graphs::list_databases))
        .route("/v1/databases/{name}", delete(graphs::remove_database))
        .route("/v1/databases/{name}/query", post(graphs::query_database))
        .route("/v1/mcp-servers", post(mcp_servers::add).get(mcp_servers::list))
        .route("/v1/mcp-servers/{name}", get(mcp_servers::get_one).delete(mcp_servers::remove))
        .route("/v1/mcp-servers/{name}/tools", get(mcp_servers::tools))
        .route("/v1/prompts", post(prompts::apply).get(prompts::list))
        .route("/v1/prompts/{name}", get(prompts::get_one).delete(prompts::delete))
        .route("/v1/prompts/{name}/render", post(prompts::render))
        .route("/v1/audit", get(audit::list))
        .route("/v1/backup", get(backup::backup))
        .route("/v1/prometheus/targets", get(prometheus::targets))
        .route("/v1/keys", post(keys::create).get(keys::list))
        .route("/v1/keys/{id}", delete(keys::revoke));
    #[cfg(feature = "fault-injection")]
    let routes = routes.route("/v1/debug/faults", post(routes::set_faults));
    routes
        .fallback(routes::not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::layer))
        // `/mcp` checks keys itself: its 401s carry the challenge MCP clients follow.
        .merge(mcp::router(state.clone()))
        .layer(axum::middleware::from_fn_with_state(state.clone(), audit::layer))
        .layer(axum::middleware::from_fn(responses::layer))
        .with_state(state)
}

/// The API's OpenAPI 3.1 description (every route and request field; checked against the
/// routes above by a test).
pub const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> impl axum::response::IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], OPENAPI)
}

impl GatewayState {
    /// The label a user-supplied model name gets on metrics: the name of a deployment that
    /// exists, otherwise `other` (so made-up names cannot grow the series count).
    pub fn model_label(&self, model: &str) -> String {
        let state = self.cluster.state().read().unwrap_or_else(|p| p.into_inner());
        if state.deployments.contains_key(model) {
            model.to_string()
        } else {
            "other".to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// `(METHOD, path)` of every route this file's router declares, read from its source.
    fn declared_routes() -> BTreeSet<(String, String)> {
        let source = include_str!("mod.rs");
        let body = &source[source.find("let routes = Router::new()").expect("router")
            ..source.find("impl GatewayState").expect("end")];
        let mut out = BTreeSet::new();
        for chunk in body.split(".route(").skip(1) {
            let path = chunk.split('"').nth(1).expect("path").to_string();
            if path == "/v1/debug/faults" {
                continue; // test builds only
            }
            for method in ["get", "post", "put", "delete"] {
                // `get(` as a call of its own: not part of a longer name such as `get_one(`.
                let call = format!("{method}(");
                let called = chunk.match_indices(&call).any(|(i, _)| {
                    chunk[..i].chars().next_back().is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == ':'))
                });
                if called {
                    out.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
        out
    }

    #[test]
    fn the_openapi_document_lists_exactly_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI).expect("valid JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        let mut described = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                assert!(op["responses"].is_object(), "{method} {path} has no responses");
                described.insert((method.to_uppercase(), path.clone()));
            }
        }
        let mut declared = declared_routes();
        assert!(declared.len() > 25, "the router parse found {declared:?}");
        // The MCP router (merged in, with its own guard).
        declared.insert(("POST".into(), super::mcp::PATH.into()));
        declared.insert(("GET".into(), super::mcp::METADATA_PATH.into()));
        declared.insert(("GET".into(), format!("{}{}", super::mcp::METADATA_PATH, super::mcp::PATH)));
        assert_eq!(described, declared, "the OpenAPI document and the router disagree");
    }

    #[test]
    fn every_json_body_field_is_described() {
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI).expect("valid JSON");
        // A request that names a field the document does not describe is refused by the
        // gateway (deny_unknown_fields) or ignored; spot-check the documented ones exist.
        let chat =
            &doc["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"];
        for field in ["model", "messages", "stream", "temperature", "top_p", "max_tokens", "stop", "knowledge_base"] {
            assert!(chat["properties"][field].is_object(), "chat field {field}");
        }
        let keys = &doc["paths"]["/v1/keys"]["post"]["requestBody"]["content"]["application/json"]["schema"];
        for field in ["name", "scope", "models", "rate_per_s", "tokens_per_minute", "expires_in_seconds"] {
            assert!(keys["properties"][field].is_object(), "key field {field}");
        }
    }
}
