//! `/v1/knowledge-bases`: create, list, show and delete knowledge bases (the catalog and
//! where each index shard's copies are).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value};

use super::auth::require;
use super::{ApiError, Body, GatewayState};
use crate::knowledge::{check_request, redact, KnowledgeBaseRequest};
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
    Some(json!({
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
        let state = gw.raft.state().read().unwrap_or_else(|p| p.into_inner());
        check_request(&state, req, gw.clock.unix_ms()).map_err(|e| {
            if e.contains("already exists") {
                ApiError::conflict(e)
            } else {
                ApiError::bad_request(e)
            }
        })?
    };
    match gw.writer.command(Command::CreateKnowledgeBase(kb)).await? {
        Outcome::Applied => {}
        Outcome::Rejected(why) | Outcome::Ignored(why) => return Err(ApiError::conflict(why)),
        other => return Err(ApiError::unavailable(format!("{other:?}"))),
    }
    let state = gw.raft.state().read().unwrap_or_else(|p| p.into_inner());
    let body = describe(&state, &name).unwrap_or_else(|| json!({"name": name}));
    Ok((StatusCode::CREATED, Json(body)))
}

pub async fn list(State(gw): Gw, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    require(&headers, &gw, Scope::User)?;
    let state = gw.raft.state().read().unwrap_or_else(|p| p.into_inner());
    let data: Vec<Value> = state.knowledge_bases.keys().filter_map(|n| describe(&state, n)).collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

pub async fn get_one(State(gw): Gw, headers: HeaderMap, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    require(&headers, &gw, Scope::User)?;
    let state = gw.raft.state().read().unwrap_or_else(|p| p.into_inner());
    describe(&state, &name).map(Json).ok_or_else(|| ApiError::not_found(format!("no knowledge base named '{name}'")))
}

pub async fn delete(State(gw): Gw, headers: HeaderMap, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    require(&headers, &gw, Scope::Admin)?;
    match gw.writer.command(Command::DeleteKnowledgeBase { name: name.clone() }).await? {
        Outcome::Applied => Ok(Json(json!({"name": name, "deleted": true}))),
        Outcome::Rejected(_) | Outcome::Ignored(_) => {
            Err(ApiError::not_found(format!("no knowledge base named '{name}'")))
        }
        other => Err(ApiError::unavailable(format!("{other:?}"))),
    }
}
