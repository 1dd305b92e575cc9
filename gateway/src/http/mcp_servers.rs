//! The external MCP servers `mcp` graph steps call (`/v1/mcp-servers`): registered by admins,
//! listed by anyone with a key, always shown with their secrets as `***` (header values,
//! URL user info and query values), errors included.

use crate::router::Router;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use shoal_coordinator::state::{Command, McpHeader, McpServerRecord, McpTransport, Outcome, Scope};

use super::auth::require;
use super::{ApiError, Body, GatewayState};
use crate::graphs::mcp;
use crate::GatewayError;

type Gw = State<Arc<GatewayState>>;

/// `POST /v1/mcp-servers`: one of `url` (Streamable HTTP, with `headers`) or `command` (a
/// stdio server's command line).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpServerJson {
    pub name: String,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub command: Option<String>,
    #[serde(default)]
    pub description: String,
}

/// The record a request describes, checked (nothing is connected to yet). Errors never
/// quote a header value or the URL's secrets.
pub fn record_of(req: &McpServerJson, now_ms: u64) -> Result<McpServerRecord, String> {
    shoal_coordinator::names::check_name("MCP server", &req.name)?;
    let mut record = McpServerRecord {
        name: req.name.clone(),
        transport: McpTransport::Http,
        url: String::new(),
        headers: Vec::new(),
        command: Vec::new(),
        description: req.description.clone(),
        created_at_ms: now_ms,
    };
    match (&req.url, &req.command) {
        (Some(url), None) => {
            let origin = shoal_graph::hosts::origin(url)?;
            shoal_graph::hosts::host_port(&origin)?;
            record.url = url.clone();
            for (name, value) in &req.headers {
                HeaderName::try_from(name.as_str()).map_err(|_| format!("{name:?} is not an HTTP header name"))?;
                HeaderValue::try_from(value.as_str())
                    .map_err(|_| format!("the value of header {name:?} is not valid in HTTP"))?;
                if ["accept", "mcp-session-id", "last-event-id"].contains(&name.to_ascii_lowercase().as_str()) {
                    return Err(format!("header {name:?} is set by the MCP client itself"));
                }
                record.headers.push(McpHeader { name: name.clone(), value: value.clone() });
            }
        }
        (None, Some(command)) => {
            if !req.headers.is_empty() {
                return Err("headers are for HTTP servers (url), not stdio ones (command)".into());
            }
            record.transport = McpTransport::Stdio;
            record.command = mcp::split_command(command)?;
        }
        _ => return Err("give exactly one of url (a Streamable HTTP server) or command (a stdio server)".into()),
    }
    Ok(record)
}

fn unreachable_error(e: GatewayError) -> ApiError {
    ApiError::bad_request(format!("{e}"))
}

/// Registers a server after connecting to it and listing its tools (one that cannot be
/// used is refused). A stdio server is started on a node run with `--mcp-stdio` for the check.
pub async fn add(
    State(gw): Gw,
    headers: HeaderMap,
    Body(req): Body<McpServerJson>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    require(&headers, &gw, Scope::Admin)?;
    let record = record_of(&req, gw.clock.unix_ms()).map_err(ApiError::bad_request)?;
    let tools = list_tools(&record, &gw.router).await.map_err(unreachable_error)?;
    match gw.cluster.command(Command::AddMcpServer(Box::new(record.clone()))).await? {
        Outcome::Applied => {
            let mut shown = record.shown();
            shown["tools"] = json!(tools.iter().map(|t| t.name.to_string()).collect::<Vec<_>>());
            Ok((StatusCode::CREATED, Json(shown)))
        }
        Outcome::Rejected(why) => Err(ApiError::conflict(format!("MCP server '{}': {why}", req.name))),
        other => Err(ApiError::unavailable(format!("unexpected outcome {other:?}"))),
    }
}

async fn list_tools(record: &McpServerRecord, router: &Router) -> Result<Vec<rmcp::model::Tool>, GatewayError> {
    let listing = async {
        let conn = mcp::connect(record, None, router).await?;
        let tools = conn.tools().await;
        conn.close().await;
        tools
    };
    match tokio::time::timeout(mcp::CONNECT_TIMEOUT, listing).await {
        Ok(r) => r,
        Err(_) => Err(GatewayError::Mcp {
            server: record.name.clone(),
            message: format!("no answer within {} s", mcp::CONNECT_TIMEOUT.as_secs()),
        }),
    }
}

fn lookup(gw: &GatewayState, name: &str) -> Result<McpServerRecord, ApiError> {
    gw.graphs.mcp_server(name).map_err(ApiError::not_found)
}

pub async fn list(State(gw): Gw, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    require(&headers, &gw, Scope::User)?;
    let state = gw.cluster.state().read().unwrap_or_else(|p| p.into_inner());
    let data: Vec<Value> = state.mcp_servers.values().map(McpServerRecord::shown).collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

pub async fn get_one(State(gw): Gw, headers: HeaderMap, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    require(&headers, &gw, Scope::User)?;
    Ok(Json(lookup(&gw, &name)?.shown()))
}

/// `GET /v1/mcp-servers/{name}/tools`: connects and lists the server's tools.
pub async fn tools(State(gw): Gw, headers: HeaderMap, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    require(&headers, &gw, Scope::User)?;
    let record = lookup(&gw, &name)?;
    let tools = list_tools(&record, &gw.router)
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "server_error", "mcp_unreachable", e.to_string()))?;
    let data: Vec<Value> = tools.iter().map(mcp::tool_json).collect();
    Ok(Json(json!({"object": "list", "server": name, "data": data})))
}

pub async fn remove(State(gw): Gw, headers: HeaderMap, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    require(&headers, &gw, Scope::Admin)?;
    match gw.cluster.command(Command::RemoveMcpServer { name: name.clone() }).await? {
        Outcome::Applied => Ok(Json(json!({"object": "mcp_server", "name": name, "deleted": true}))),
        Outcome::Rejected(why) => Err(ApiError::not_found(format!("MCP server '{name}': {why}"))),
        other => Err(ApiError::unavailable(format!("unexpected outcome {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: Value) -> McpServerJson {
        serde_json::from_value(v).expect("a request")
    }

    #[test]
    fn requests_become_records_and_errors_quote_no_secret() {
        let r = record_of(
            &req(json!({"name": "calc", "url": "http://127.0.0.1:9/mcp", "headers": {"Authorization": "Bearer s3cret-token"}})),
            5,
        )
        .expect("ok");
        assert_eq!((r.transport, r.headers.len(), r.created_at_ms), (McpTransport::Http, 1, 5));
        let r = record_of(&req(json!({"name": "local", "command": "python3 'my server.py' --x"})), 5).expect("ok");
        assert_eq!(
            (r.transport, r.command.clone()),
            (McpTransport::Stdio, vec!["python3".into(), "my server.py".into(), "--x".into()])
        );

        let both = record_of(&req(json!({"name": "x", "url": "http://h/", "command": "y"})), 0).expect_err("both");
        assert!(both.contains("exactly one"), "{both}");
        let bad =
            record_of(&req(json!({"name": "x", "url": "ftp://u:pw-secret@h/?t=tok-secret"})), 0).expect_err("ftp");
        assert!(!bad.contains("secret"), "{bad}");
        let bad =
            record_of(&req(json!({"name": "x", "url": "http://h/", "headers": {"X-Key": "line\nbreak-secret"}})), 0)
                .expect_err("a value HTTP cannot carry");
        assert!(bad.contains("X-Key") && !bad.contains("secret"), "{bad}");
        assert!(record_of(&req(json!({"name": "x", "url": "http://h/", "headers": {"Accept": "x"}})), 0).is_err());
        assert!(record_of(&req(json!({"name": "bad name", "url": "http://h/"})), 0).is_err());
        assert!(record_of(&req(json!({"name": "x", "command": "  "})), 0).is_err());
    }
}
