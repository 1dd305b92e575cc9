//! `/v1/knowledge-bases`: create, list, show and delete knowledge bases (the catalog and
//! where each index shard's copies are), add and remove documents, and search.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use shoal_recall::{Hit, MetadataFilter, SearchMode};

use super::auth::require;
use super::{ApiError, Body, GatewayState, RawBody};
use crate::knowledge::{check_request, readiness, redact, KnowledgeBaseRequest};
use crate::retrieval::{Ingested, RecallFailure, Search, Upload};
use crate::state::{ClusterState, Command, IndexBackend, Outcome, Scope};

type Gw = State<Arc<GatewayState>>;

/// A knowledge base as the API shows it.
pub fn describe(state: &ClusterState, name: &str) -> Option<Value> {
    let kb = state.knowledge_bases.get(name)?;
    let backend = match &kb.backend {
        IndexBackend::Builtin => json!({"kind": "builtin"}),
        IndexBackend::Postgres { url } => json!({"kind": "postgres", "url": redact(url)}),
    };
    let shards: Vec<Value> = (0..kb.shards)
        .map(|shard| {
            let copies: Vec<Value> = state
                .index_shards
                .values()
                .filter(|p| p.kb == kb.name && p.shard == shard)
                .map(|p| {
                    let node = state.nodes.get(&p.node);
                    json!({
                        "id": p.id,
                        "node": p.node,
                        "node_name": node.map(|n| n.name.clone()).unwrap_or_default(),
                        "state": p.phase.map(|s| s.as_str()).unwrap_or("assigned"),
                        "message": p.message,
                    })
                })
                .collect();
            json!({"shard": shard, "copies": copies})
        })
        .collect();
    let chunks: u64 = kb.documents.values().map(|d| u64::from(d.chunks)).sum();
    let ready = readiness(state, kb);
    Some(json!({
        "status": ready.status(),
        "status_reason": ready.blocker,
        "ready_copies": ready.ready_copies,
        "ready_nodes": ready.ready_nodes,
        "object": "knowledge_base",
        "name": kb.name,
        "embedding_model": kb.embedding,
        "dimension": kb.dimension,
        "backend": backend,
        "replicas": kb.replicas,
        "chunk_tokens": kb.chunk_tokens,
        "chunk_overlap": kb.chunk_overlap,
        "description": kb.description,
        "created_at_ms": kb.created_at_ms,
        "documents": kb.documents.len(),
        "chunks": chunks,
        "shards": shards,
    }))
}

pub async fn create(
    State(gw): Gw,
    headers: HeaderMap,
    Body(req): Body<KnowledgeBaseRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    require(&headers, &gw, Scope::Admin)?;
    let name = req.name.trim().to_string();
    let kb = {
        let state = gw.cluster.state().read().unwrap_or_else(|p| p.into_inner());
        check_request(&state, req, gw.clock.unix_ms()).map_err(|e| {
            if e.contains("already exists") {
                ApiError::conflict(e)
            } else {
                ApiError::bad_request(e)
            }
        })?
    };
    if matches!(kb.backend, IndexBackend::Postgres { .. }) {
        // Reach the database now: a wrong URL is the creator's error, not the first upload's.
        gw.retrieval.postgres(&kb).await.map_err(|e| ApiError::bad_request(e.to_string()))?;
    }
    match gw.cluster.command(Command::CreateKnowledgeBase(kb)).await? {
        Outcome::Applied => {}
        Outcome::Rejected(why) | Outcome::Ignored(why) => return Err(ApiError::conflict(why)),
        other => return Err(ApiError::unavailable(format!("{other:?}"))),
    }
    let state = gw.cluster.state().read().unwrap_or_else(|p| p.into_inner());
    let body = describe(&state, &name).unwrap_or_else(|| json!({"name": name}));
    Ok((StatusCode::CREATED, Json(body)))
}

pub async fn list(State(gw): Gw, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    require(&headers, &gw, Scope::User)?;
    let state = gw.cluster.state().read().unwrap_or_else(|p| p.into_inner());
    let data: Vec<Value> = state.knowledge_bases.keys().filter_map(|n| describe(&state, n)).collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

pub async fn get_one(State(gw): Gw, headers: HeaderMap, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    require(&headers, &gw, Scope::User)?;
    let state = gw.cluster.state().read().unwrap_or_else(|p| p.into_inner());
    describe(&state, &name).map(Json).ok_or_else(|| ApiError::not_found(format!("no knowledge base named '{name}'")))
}

pub async fn delete(State(gw): Gw, headers: HeaderMap, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    require(&headers, &gw, Scope::Admin)?;
    let kb = gw.cluster.state().read().unwrap_or_else(|p| p.into_inner()).knowledge_bases.get(&name).cloned();
    match gw.cluster.command(Command::DeleteKnowledgeBase { name: name.clone() }).await? {
        Outcome::Applied => {
            // Index-shard copies on nodes go with their placements; a PostgreSQL table is dropped here.
            if let Some(kb) = kb {
                if let Err(e) = gw.retrieval.forget(&kb).await {
                    tracing::warn!(kb = %name, error = %e, "could not drop the knowledge base's PostgreSQL table");
                }
            }
            Ok(Json(json!({"name": name, "deleted": true})))
        }
        Outcome::Rejected(_) | Outcome::Ignored(_) => {
            Err(ApiError::not_found(format!("no knowledge base named '{name}'")))
        }
        other => Err(ApiError::unavailable(format!("{other:?}"))),
    }
}

/// Largest document upload.
pub const MAX_DOCUMENT_BYTES: usize = 32 * 1024 * 1024;

impl From<RecallFailure> for ApiError {
    fn from(e: RecallFailure) -> Self {
        match e {
            RecallFailure::NotFound(m) => ApiError::not_found(m),
            RecallFailure::BadRequest(m) => ApiError::bad_request(m),
            RecallFailure::Unsupported(m) => {
                ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "invalid_request_error", "unsupported_type", m)
            }
            RecallFailure::TooLarge(m) => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", "document_too_large", m)
            }
            RecallFailure::Route(e) => e.into(),
            RecallFailure::Unavailable(m) => ApiError::unavailable(m),
        }
    }
}

pub(super) fn ingested(i: &Ingested) -> Value {
    json!({
        "object": "knowledge_base.document",
        "id": i.id,
        "title": i.title,
        "shard": i.shard,
        "chunks": i.chunks,
        "tokens": i.tokens,
        "status": if i.unchanged { "unchanged" } else if i.replaced { "replaced" } else { "indexed" },
        "copies_written": i.copies_written,
        "copies_wanted": i.copies_wanted,
        "degraded": i.degraded,
    })
}

/// `PUT /v1/knowledge-bases/{kb}/documents/{id}`: the body is the file (its type from
/// `Content-Type` or the `file_name` parameter); `title`, `source`, `tags` (comma-separated)
/// and `meta.KEY=VALUE` come as query parameters.
pub async fn put_document(
    State(gw): Gw,
    headers: HeaderMap,
    Path((kb, id)): Path<(String, String)>,
    Query(params): Query<BTreeMap<String, String>>,
    RawBody(body): RawBody,
) -> Result<Json<Value>, ApiError> {
    require(&headers, &gw, Scope::Admin)?;
    let wait = params.get("wait").is_none_or(|w| w != "false");
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .filter(|t| t != "application/octet-stream");
    let mut upload = Upload {
        doc_id: id,
        bytes: body.to_vec(),
        content_type,
        file_name: params.get("file_name").cloned(),
        title: params.get("title").cloned(),
        source: params.get("source").cloned(),
        tags: params
            .get("tags")
            .map(|t| t.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
            .unwrap_or_default(),
        metadata: BTreeMap::new(),
    };
    for (k, v) in &params {
        match k.strip_prefix("meta.") {
            Some(key) if !key.is_empty() => {
                upload.metadata.insert(key.to_string(), v.clone());
            }
            _ if ["file_name", "title", "source", "tags", "wait"].contains(&k.as_str()) => {}
            _ => return Err(ApiError::bad_request(format!("unknown parameter '{k}'"))),
        }
    }
    wait_until_ready(&gw, &kb, wait).await?;
    let done = gw.retrieval.ingest(&kb, upload).await?;
    Ok(Json(ingested(&done)))
}

/// Document uploads one gateway takes at once. Each may hold up to [`MAX_DOCUMENT_BYTES`]
/// in memory while it is read, parsed and indexed, so this bounds what uploads can take;
/// beyond it an upload is answered 429 (with `Retry-After`) before its body is read.
pub const MAX_CONCURRENT_UPLOADS: usize = 8;

/// The layer in front of the upload routes: takes an upload slot before the body is read
/// and keeps it until the answer.
pub async fn upload_slot(
    State(gw): Gw,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if !matches!(*req.method(), axum::http::Method::PUT | axum::http::Method::POST) {
        return next.run(req).await;
    }
    let Ok(_slot) = gw.uploads.clone().try_acquire_owned() else {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "server_error",
            "busy",
            format!("{MAX_CONCURRENT_UPLOADS} uploads are being indexed on this gateway; try again shortly"),
        );
        e.retry_after_ms = Some(1_000);
        return e.into_response();
    };
    metrics::gauge!(shoal_protocol::metric_names::UPLOADS_IN_PROGRESS).increment(1.0);
    let response = next.run(req).await;
    metrics::gauge!(shoal_protocol::metric_names::UPLOADS_IN_PROGRESS).decrement(1.0);
    response
}

/// How long an upload waits for its knowledge base to take documents (copies being placed
/// and opened, the embedding model loading) before it answers 503.
pub const INGEST_WAIT: Duration = Duration::from_secs(60);

/// `?wait=false` makes an upload fail at once when the base cannot take it yet.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitParam {
    #[serde(default = "yes")]
    wait: bool,
}

fn yes() -> bool {
    true
}

/// Waits (up to [`INGEST_WAIT`], or not at all) until `kb` can take documents. An unknown
/// base passes, for the upload itself to answer 404.
async fn wait_until_ready(gw: &GatewayState, kb: &str, wait: bool) -> Result<(), ApiError> {
    let deadline = tokio::time::Instant::now() + if wait { INGEST_WAIT } else { Duration::ZERO };
    loop {
        let blocker = {
            let state = gw.cluster.state().read().unwrap_or_else(|p| p.into_inner());
            match state.knowledge_bases.get(kb) {
                None => return Ok(()),
                Some(k) => readiness(&state, k).blocker,
            }
        };
        let Some(why) = blocker else { return Ok(()) };
        if tokio::time::Instant::now() >= deadline {
            let waited = if wait { format!(" after waiting {} s", INGEST_WAIT.as_secs()) } else { String::new() };
            let mut e = ApiError::unavailable(format!("'{kb}' cannot take documents yet{waited}: {why}"));
            e.retry_after_ms = Some(2_000);
            return Err(e);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A document given as JSON: its text, or its bytes in base64 with a file name or type.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocumentJson {
    id: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    content_base64: Option<String>,
    #[serde(default)]
    content_type: Option<String>,
    #[serde(default)]
    file_name: Option<String>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

/// The upload a JSON document stands for: its text, or its base64 bytes, within the size limit.
pub(crate) fn document_upload(doc: DocumentJson) -> Result<Upload, ApiError> {
    let (bytes, content_type) = match (doc.text, doc.content_base64) {
        (Some(t), None) => (t.into_bytes(), doc.content_type.or(Some("text/plain".into()))),
        (None, Some(b)) => {
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .map_err(|e| ApiError::bad_request(format!("content_base64 is not base64: {e}")))?;
            (bytes, doc.content_type)
        }
        _ => return Err(ApiError::bad_request("give exactly one of 'text' and 'content_base64'")),
    };
    if bytes.len() > MAX_DOCUMENT_BYTES {
        return Err(RecallFailure::TooLarge(format!(
            "the document is {} MiB; at most {} MiB per upload",
            bytes.len() >> 20,
            MAX_DOCUMENT_BYTES >> 20
        ))
        .into());
    }
    Ok(Upload {
        doc_id: doc.id,
        bytes,
        content_type,
        file_name: doc.file_name,
        title: doc.title,
        source: doc.source,
        tags: doc.tags,
        metadata: doc.metadata,
    })
}

/// `POST /v1/knowledge-bases/{kb}/documents` with a JSON document.
pub async fn post_document(
    State(gw): Gw,
    headers: HeaderMap,
    Path(kb): Path<String>,
    Query(opts): Query<WaitParam>,
    Body(doc): Body<DocumentJson>,
) -> Result<Json<Value>, ApiError> {
    require(&headers, &gw, Scope::Admin)?;
    let upload = document_upload(doc)?;
    wait_until_ready(&gw, &kb, opts.wait).await?;
    let done = gw.retrieval.ingest(&kb, upload).await?;
    Ok(Json(ingested(&done)))
}

fn document_json(d: &crate::state::KbDocument) -> Value {
    json!({
        "object": "knowledge_base.document",
        "id": d.id,
        "title": d.title,
        "source": d.source,
        "tags": d.tags,
        "chunks": d.chunks,
        "bytes": d.bytes,
        "sha256": d.sha256,
        "updated_at_ms": d.updated_at_ms,
    })
}

/// `GET /v1/knowledge-bases/{kb}/documents`.
pub async fn list_documents(
    State(gw): Gw,
    headers: HeaderMap,
    Path(kb): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require(&headers, &gw, Scope::User)?;
    let state = gw.cluster.state().read().unwrap_or_else(|p| p.into_inner());
    let k =
        state.knowledge_bases.get(&kb).ok_or_else(|| ApiError::not_found(format!("no knowledge base named '{kb}'")))?;
    let data: Vec<Value> = k.documents.values().map(document_json).collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

/// `GET /v1/knowledge-bases/{kb}/documents/{id}`.
pub async fn get_document(
    State(gw): Gw,
    headers: HeaderMap,
    Path((kb, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    require(&headers, &gw, Scope::User)?;
    let state = gw.cluster.state().read().unwrap_or_else(|p| p.into_inner());
    let k =
        state.knowledge_bases.get(&kb).ok_or_else(|| ApiError::not_found(format!("no knowledge base named '{kb}'")))?;
    k.documents
        .get(&id)
        .map(|d| Json(document_json(d)))
        .ok_or_else(|| ApiError::not_found(format!("no document '{id}' in knowledge base '{kb}'")))
}

/// `DELETE /v1/knowledge-bases/{kb}/documents/{id}`: removes its chunks from every copy.
pub async fn delete_document(
    State(gw): Gw,
    headers: HeaderMap,
    Path((kb, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    require(&headers, &gw, Scope::Admin)?;
    gw.retrieval.delete_document(&kb, &id).await?;
    Ok(Json(json!({"object": "knowledge_base.document", "id": id, "deleted": true})))
}

/// Which documents a search may return.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct FilterJson {
    #[serde(default)]
    pub document_ids: Vec<String>,
    #[serde(default)]
    pub source: Option<String>,
    /// Any of these tags.
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

impl FilterJson {
    pub fn to_filter(&self) -> MetadataFilter {
        MetadataFilter {
            doc_ids: self.document_ids.clone(),
            source: self.source.clone(),
            tags_any: self.tags.clone(),
            metadata: self.metadata.clone(),
        }
    }
}

/// `POST /v1/knowledge-bases/{kb}/search`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchJson {
    pub(crate) query: String,
    #[serde(default = "default_top_k")]
    pub(crate) top_k: usize,
    #[serde(default)]
    pub(crate) mode: SearchMode,
    #[serde(default)]
    pub(crate) filter: FilterJson,
}

fn default_top_k() -> usize {
    5
}

/// A hit as the API shows it.
pub fn hit_json(h: &Hit) -> Value {
    json!({
        "chunk_id": h.chunk_id.to_string(),
        "document_id": h.doc_id,
        "title": h.title,
        "source": h.source,
        "metadata": h.metadata,
        "position": h.position,
        "score": h.score,
        "dense_rank": h.dense_rank,
        "sparse_rank": h.sparse_rank,
        "text": h.text,
    })
}

pub async fn search(
    State(gw): Gw,
    headers: HeaderMap,
    Path(kb): Path<String>,
    Body(req): Body<SearchJson>,
) -> Result<Json<Value>, ApiError> {
    require(&headers, &gw, Scope::User)?;
    let mode = req.mode;
    let found = gw
        .retrieval
        .search(&kb, Search { query: req.query, top_k: req.top_k, mode, filter: req.filter.to_filter() })
        .await?;
    let data: Vec<Value> = found.hits.iter().map(hit_json).collect();
    Ok(Json(json!({
        "object": "list",
        "knowledge_base": kb,
        "mode": mode,
        "data": data,
        "shards": {"total": found.shards, "answered": found.shards as usize - found.failed.len(), "failed": found.failed},
    })))
}
