//! The audit layer (outermost: it sees every answer, 401s included) and `GET /v1/audit`.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Query, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use axum::Json;
use serde_json::{json, Value};

use super::auth::{require, Caller};
use super::{ApiError, GatewayState};
use crate::audit::{classify, object, verb, Filter, Record};
use crate::state::Scope;

/// The client's address, put on each request by the server.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub std::net::SocketAddr);

pub async fn layer(State(gw): State<Arc<GatewayState>>, req: Request, next: Next) -> Response {
    let Some(log) = gw.audit.clone() else { return next.run(req).await };
    let started = Instant::now();
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let source = req.extensions().get::<PeerAddr>().map(|p| p.0.to_string()).unwrap_or_default();
    let response = next.run(req).await;
    let code = response.status().as_u16();
    if let Some(reason) = classify(&method, &path, code) {
        let caller = response.extensions().get::<Caller>();
        log.record(Record {
            id: format!("audit-{:016x}", rand::random::<u64>()),
            time_ms: gw.clock.unix_ms(),
            stage: "ResponseComplete".into(),
            verb: verb(&method, &path).into(),
            method,
            // The path only: query strings are not recorded (they could carry anything).
            uri: path.clone(),
            key_id: caller.map(|c| c.id.clone()).unwrap_or_default(),
            key_name: caller.map(|c| c.name.clone()).unwrap_or_default(),
            source,
            object: object(&path),
            code,
            duration_ms: started.elapsed().as_millis() as u64,
            reason: reason.into(),
        });
    }
    response
}

/// `GET /v1/audit?since_ms=…&key=…&failed=true&limit=…` (admin): this gateway's records,
/// oldest first.
pub async fn list(
    State(gw): State<Arc<GatewayState>>,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    require(&headers, &gw, Scope::Admin)?;
    let Some(log) = &gw.audit else {
        return Err(ApiError::not_found("this gateway keeps no audit log (it was started without a data dir)"));
    };
    let filter = Filter { since_ms: q.since_ms, key: q.key.clone(), failed: q.failed };
    log.written().await;
    let records = log
        .read(&filter, q.limit.unwrap_or(1000).min(100_000))
        .map_err(|e| ApiError::unavailable(format!("reading the audit log: {e}")))?;
    Ok(Json(json!({"object": "list", "data": records})))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    #[serde(default)]
    pub since_ms: Option<u64>,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub failed: bool,
    #[serde(default)]
    pub limit: Option<usize>,
}
