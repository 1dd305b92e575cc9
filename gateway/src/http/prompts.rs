//! Prompt templates over HTTP (`/v1/prompts`): apply a definition (YAML or JSON; a changed
//! one becomes a new version), list, show, render with arguments, delete. The same
//! templates are the MCP prompts of `/mcp` ([`super::mcp`]).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use shoal_coordinator::state::{Command, Outcome, Scope};
use shoal_graph::prompt::{parse_prompt, PromptTemplate};

use super::auth::require;
use super::{ApiError, Body, GatewayState, RawBody};

type Gw = State<Arc<GatewayState>>;

/// The latest version of a prompt: `(version, template)`.
pub fn prompt(gw: &GatewayState, name: &str) -> Result<(u32, PromptTemplate), ApiError> {
    let state = gw.cluster.state().read().unwrap_or_else(|p| p.into_inner());
    let record = state.prompts.get(name).ok_or_else(|| {
        ApiError::not_found(format!("no prompt named '{name}' (add one with `shoal prompt add` or POST /v1/prompts)"))
    })?;
    let v = record.latest().ok_or_else(|| ApiError::not_found(format!("prompt '{name}' has no versions")))?;
    let p = serde_json::from_str::<PromptTemplate>(&v.definition).map_err(|e| {
        ApiError::unavailable(format!("prompt '{name}' v{}: stored definition unreadable: {e}", v.version))
    })?;
    Ok((v.version, p))
}

/// Every prompt, latest versions, by name (unreadable ones left out).
pub fn all(gw: &GatewayState) -> Vec<(u32, PromptTemplate)> {
    let names: Vec<String> =
        gw.cluster.state().read().unwrap_or_else(|p| p.into_inner()).prompts.keys().cloned().collect();
    names.iter().filter_map(|n| prompt(gw, n).ok()).collect()
}

pub fn prompt_json(p: &PromptTemplate, version: u32) -> Value {
    json!({
        "object": "prompt",
        "name": p.name,
        "version": version,
        "description": p.description,
        "arguments": p.effective_arguments(),
    })
}

fn invalid(problems: &[String]) -> Response {
    let body = json!({"error": {
        "message": format!("prompt definition: {} problem(s): {}", problems.len(), problems.join("; ")),
        "type": "invalid_request_error",
        "code": "invalid_prompt",
        "problems": problems,
    }});
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

/// `POST /v1/prompts`: a definition in YAML or JSON; checked, then stored as a new version
/// (the same definition again is the same version).
pub async fn apply(State(gw): Gw, headers: HeaderMap, RawBody(bytes): RawBody) -> Result<Response, ApiError> {
    require(&headers, &gw, Scope::Admin)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| ApiError::bad_request("the definition is not UTF-8 text"))?;
    let p = match parse_prompt(text) {
        Ok(p) => p,
        Err(problems) => return Ok(invalid(&problems)),
    };
    let stored = serde_json::to_string(&p).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let sha256 = hex::encode(Sha256::digest(stored.as_bytes()));
    let cmd = Command::PutPrompt { name: p.name.clone(), definition: stored, sha256, at_ms: gw.clock.unix_ms() };
    match gw.cluster.command(cmd).await? {
        Outcome::ModelVersion { version, existed } => {
            let mut body = prompt_json(&p, version);
            body["created"] = json!(!existed);
            let status = if existed { StatusCode::OK } else { StatusCode::CREATED };
            Ok((status, Json(body)).into_response())
        }
        other => Err(ApiError::unavailable(format!("unexpected outcome {other:?}"))),
    }
}

pub async fn list(State(gw): Gw, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    require(&headers, &gw, Scope::User)?;
    let data: Vec<Value> = all(&gw).iter().map(|(v, p)| prompt_json(p, *v)).collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

pub async fn get_one(State(gw): Gw, headers: HeaderMap, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    require(&headers, &gw, Scope::User)?;
    let (version, p) = prompt(&gw, &name)?;
    let mut body = prompt_json(&p, version);
    body["definition"] = serde_json::to_value(&p).unwrap_or(Value::Null);
    Ok(Json(body))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenderRequest {
    #[serde(default)]
    pub arguments: Map<String, Value>,
}

/// `POST /v1/prompts/{name}/render`: the messages with the arguments filled in, ready for
/// `/v1/chat/completions`.
pub async fn render(
    State(gw): Gw,
    headers: HeaderMap,
    Path(name): Path<String>,
    Body(req): Body<RenderRequest>,
) -> Result<Json<Value>, ApiError> {
    require(&headers, &gw, Scope::User)?;
    let (version, p) = prompt(&gw, &name)?;
    let messages = p.render(&req.arguments).map_err(ApiError::bad_request)?;
    let messages: Vec<Value> =
        messages.into_iter().map(|(role, content)| json!({"role": role, "content": content})).collect();
    Ok(Json(json!({"object": "prompt.rendered", "name": name, "version": version, "messages": messages})))
}

pub async fn delete(State(gw): Gw, headers: HeaderMap, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    require(&headers, &gw, Scope::Admin)?;
    match gw.cluster.command(Command::DeletePrompt { name: name.clone() }).await? {
        Outcome::Applied => Ok(Json(json!({"object": "prompt", "name": name, "deleted": true}))),
        Outcome::Rejected(why) => Err(ApiError::not_found(format!("prompt '{name}': {why}"))),
        other => Err(ApiError::unavailable(format!("unexpected outcome {other:?}"))),
    }
}
