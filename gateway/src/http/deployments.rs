//! `/v1/deployments`: register model versions, deploy them, and show where their replicas run.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value};

use super::auth::require;
use super::{ApiError, Body, GatewayState};
use crate::registry::{self, DeployRequest};
use crate::state::{ClusterState, Command, Outcome, Scope};
use crate::GatewayError;

type Gw = State<Arc<GatewayState>>;

fn model_error(e: GatewayError) -> ApiError {
    match e {
        GatewayError::Model(msg) => ApiError::bad_request(msg),
        GatewayError::Io { .. } => ApiError::bad_request(e.to_string()),
        other => other.into(),
    }
}

/// A deployment with its replicas, as `GET /v1/deployments` shows it. A placement of a
/// split model carries its `stage`; `ready_replicas` counts the unsplit replicas and the
/// chains of stages that can take requests.
pub fn describe(state: &ClusterState, name: &str) -> Option<Value> {
    let d = state.deployments.get(name)?;
    let v = state.deployed_version(name);
    let replicas: Vec<Value> = state
        .placements_of(name)
        .map(|p| {
            let node = state.nodes.get(&p.node);
            let stage = p.stage.map(|s| {
                json!({
                    "chain": s.chain,
                    "index": s.index,
                    "count": s.count,
                    "layers": [s.layer_start, s.layer_end],
                })
            });
            json!({
                "id": p.id,
                "node": p.node,
                "node_name": node.map(|n| n.name.clone()).unwrap_or_default(),
                "node_address": node.map(|n| n.address.clone()).unwrap_or_default(),
                "state": p.phase_str(),
                "message": p.message,
                "version": p.version,
                "stage": stage,
            })
        })
        .collect();
    Some(json!({
        "name": d.name,
        "model": d.model,
        "version": d.version,
        "replicas": d.replicas,
        "shards": d.shards,
        "ready_replicas": state.entry_points(name).len(),
        "sha256": v.map(|v| v.sha256.clone()),
        "source": v.map(|v| v.source.clone()),
        "format": v.map(|v| v.format),
        "architecture": v.map(|v| v.architecture.clone()),
        "capabilities": v.map(|v| v.capabilities.clone()),
        "context_length": v.map(|v| v.context_length),
        "layers": v.map(|v| v.layers),
        "size_bytes": v.map(|v| v.size),
        "placements": replicas,
        "pending": crate::scheduler::shortfall(state, name),
    }))
}

pub async fn create(
    State(gw): Gw,
    headers: HeaderMap,
    Body(req): Body<DeployRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    require(&headers, &gw, Scope::Admin)?;
    let name = req.name.clone();
    registry::deploy(&gw.cluster, gw.artifacts.as_ref(), &gw.downloads, req).await.map_err(model_error)?;
    let state = gw.cluster.state().read().unwrap_or_else(|p| p.into_inner());
    let body = describe(&state, &name).unwrap_or_else(|| json!({"name": name}));
    Ok((StatusCode::CREATED, Json(body)))
}

pub async fn list(State(gw): Gw, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    require(&headers, &gw, Scope::User)?;
    let state = gw.cluster.state().read().unwrap_or_else(|p| p.into_inner());
    let data: Vec<Value> = state.deployments.keys().filter_map(|n| describe(&state, n)).collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

pub async fn get_one(State(gw): Gw, headers: HeaderMap, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    require(&headers, &gw, Scope::User)?;
    let state = gw.cluster.state().read().unwrap_or_else(|p| p.into_inner());
    describe(&state, &name).map(Json).ok_or_else(|| ApiError::not_found(format!("no deployment named '{name}'")))
}

pub async fn delete(State(gw): Gw, headers: HeaderMap, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    require(&headers, &gw, Scope::Admin)?;
    match gw.cluster.command(Command::DeleteDeployment { name: name.clone() }).await? {
        Outcome::Applied => Ok(Json(json!({"name": name, "deleted": true}))),
        Outcome::Rejected(why) | Outcome::Ignored(why) => Err(ApiError::not_found(why)),
        other => Err(ApiError::unavailable(format!("{other:?}"))),
    }
}
