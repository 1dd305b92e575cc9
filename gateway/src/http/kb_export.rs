//! Exporting and importing a knowledge base's documents, with their chunks and vectors, as
//! JSON lines: what a backup of the control plane does not hold (the index copies live on
//! the nodes). `GET /v1/knowledge-bases/{name}/export` streams a header line, one line per
//! document, and an end line with the count (an export without it was cut short);
//! `POST /v1/knowledge-bases/{name}/import` adds one document line without embedding it again.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body as HttpBody;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shoal_protocol::{IndexChunk, Response as Frame};
use shoal_recall::{wire, DocumentRecord};
use tokio::sync::mpsc;

use super::auth::require;
use super::knowledge::ingested;
use super::{ApiError, Body, GatewayState};
use crate::retrieval::RecallFailure;
use crate::state::{IndexBackend, KnowledgeBase, Scope};

type Gw = State<Arc<GatewayState>>;

/// What an export's first line says: `object` is [`HEADER_OBJECT`].
pub const HEADER_OBJECT: &str = "shoal.knowledge_base.export";
/// What an export's last line says: `object` is [`END_OBJECT`], with the documents counted.
pub const END_OBJECT: &str = "shoal.knowledge_base.export_end";

/// The first line of an export: the base it came from.
#[derive(Debug, Serialize, Deserialize)]
pub struct ExportHeader {
    pub object: String,
    pub version: u32,
    pub knowledge_base: String,
    /// The embedding deployment the vectors came from, and their dimension.
    pub embedding: String,
    pub dimension: u32,
    pub chunk_tokens: u32,
    pub chunk_overlap: u32,
    pub shards: u32,
    /// Documents in the catalog when the export began.
    pub documents: usize,
}

/// One document with everything its index copies hold.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportedDocumentJson {
    pub id: String,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// The catalog's fingerprint of the original upload (an import keeps it, so adding the
    /// same file again later is recognised as unchanged).
    pub sha256: String,
    /// The original upload's size.
    #[serde(default)]
    pub bytes: u64,
    pub chunks: Vec<ChunkJson>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkJson {
    pub text: String,
    pub start: u64,
    pub end: u64,
    pub tokens: u32,
    pub vector: Vec<f32>,
}

/// The last line of a whole export.
#[derive(Debug, Serialize, Deserialize)]
pub struct ExportEnd {
    pub object: String,
    pub documents: usize,
}

fn line<T: Serialize>(v: &T) -> Result<bytes::Bytes, std::io::Error> {
    let mut b = serde_json::to_vec(v).map_err(std::io::Error::other)?;
    b.push(b'\n');
    Ok(bytes::Bytes::from(b))
}

/// `GET /v1/knowledge-bases/{name}/export` (admin): every document of a built-in base, read
/// from one ready copy of each shard, as JSON lines.
pub async fn export(State(gw): Gw, headers: HeaderMap, Path(name): Path<String>) -> Result<Response, ApiError> {
    require(&headers, &gw, Scope::Admin)?;
    let kb: KnowledgeBase = {
        let state = gw.cluster.state().read().unwrap_or_else(|p| p.into_inner());
        state
            .knowledge_bases
            .get(&name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("no knowledge base named '{name}'")))?
    };
    if let IndexBackend::Postgres { .. } = kb.backend {
        return Err(ApiError::bad_request(format!(
            "'{name}' keeps its index in PostgreSQL: back that database up with pg_dump"
        )));
    }
    let header = ExportHeader {
        object: HEADER_OBJECT.into(),
        version: 1,
        knowledge_base: kb.name.clone(),
        embedding: kb.embedding.clone(),
        dimension: kb.dimension,
        chunk_tokens: kb.chunk_tokens,
        chunk_overlap: kb.chunk_overlap,
        shards: kb.shards,
        documents: kb.documents.len(),
    };
    // Opening the first shard before answering turns "no ready copy" into a clear 503.
    let first = gw.retrieval.open_export(&kb, 0).await?;
    let (tx, rx) = mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(16);
    let head = line(&header).map_err(|e| ApiError::unavailable(e.to_string()))?;
    tokio::spawn(async move {
        let _ = tx.send(Ok(head)).await;
        let mut total = 0;
        let mut stream = Some(first);
        for shard in 0..kb.shards {
            let mut s = match stream.take() {
                Some(s) => s,
                None => match gw.retrieval.open_export(&kb, shard).await {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = tx.send(Err(std::io::Error::other(format!("{e:?}")))).await;
                        return;
                    }
                },
            };
            loop {
                let frame = match tokio::time::timeout(std::time::Duration::from_secs(60), s.recv()).await {
                    Ok(Ok(f)) => f,
                    Ok(Err(e)) => {
                        let _ = tx.send(Err(std::io::Error::other(format!("shard {shard}: {e}")))).await;
                        return;
                    }
                    Err(_) => {
                        let _ = tx.send(Err(std::io::Error::other(format!("shard {shard}: no frame in 60 s")))).await;
                        return;
                    }
                };
                let (documents, last) = match frame {
                    Frame::IndexExported { documents, last } => (documents, last),
                    other => {
                        let why = format!("shard {shard}: unexpected answer {other:?}");
                        let _ = tx.send(Err(std::io::Error::other(why))).await;
                        return;
                    }
                };
                for d in documents {
                    let exported = wire::exported_from_wire(d);
                    let record = exported.record;
                    let (sha256, bytes) =
                        kb.documents.get(&record.doc_id).map(|c| (c.sha256.clone(), c.bytes)).unwrap_or_default();
                    let doc = ExportedDocumentJson {
                        id: record.doc_id,
                        title: record.title,
                        source: record.source,
                        tags: record.tags,
                        metadata: record.metadata,
                        sha256,
                        bytes,
                        chunks: exported
                            .chunks
                            .into_iter()
                            .map(|(c, vector)| ChunkJson {
                                text: c.text,
                                start: c.start as u64,
                                end: c.end as u64,
                                tokens: c.tokens as u32,
                                vector,
                            })
                            .collect(),
                    };
                    total += 1;
                    if tx.send(line(&doc)).await.is_err() {
                        return; // the client went away
                    }
                }
                if last {
                    break;
                }
            }
        }
        let _ = tx.send(line(&ExportEnd { object: END_OBJECT.into(), documents: total })).await;
    });
    let body = HttpBody::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson".to_string()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}.kb.jsonl\"")),
        ],
        body,
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
pub struct ImportQuery {
    /// The embedding deployment the export came from: refused when the base uses another
    /// (its vectors would not match the queries'). Leave it out to skip the check.
    #[serde(default)]
    pub embedding: Option<String>,
}

/// `POST /v1/knowledge-bases/{name}/import` (admin): one document line of an export.
pub async fn import(
    State(gw): Gw,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<ImportQuery>,
    Body(doc): Body<ExportedDocumentJson>,
) -> Result<Json<Value>, ApiError> {
    require(&headers, &gw, Scope::Admin)?;
    if let Some(from) = &q.embedding {
        let uses = {
            let state = gw.cluster.state().read().unwrap_or_else(|p| p.into_inner());
            state.knowledge_bases.get(&name).map(|k| k.embedding.clone())
        };
        if let Some(uses) = uses.filter(|u| u != from) {
            return Err(ApiError::bad_request(format!(
                "the export's vectors come from '{from}'; '{name}' embeds with '{uses}' (import with --force if they \
                 are the same model)"
            )));
        }
    }
    if doc.sha256.trim().is_empty() {
        return Err(ApiError::bad_request("the document has no sha256"));
    }
    let record =
        DocumentRecord { doc_id: doc.id, title: doc.title, source: doc.source, tags: doc.tags, metadata: doc.metadata };
    let chunks: Vec<IndexChunk> = doc
        .chunks
        .into_iter()
        .map(|c| IndexChunk { text: c.text, start: c.start, end: c.end, tokens: c.tokens, vector: c.vector })
        .collect();
    let done = gw.retrieval.import_document(&name, record, chunks, doc.sha256, doc.bytes).await;
    let done = done.map_err(|e: RecallFailure| ApiError::from(e))?;
    Ok(Json(ingested(&done)))
}
