//! The web console (console/ in the repository): its built files, embedded in the binary by
//! build.rs, served at `/` and `/assets/…` without a key (they hold no data; the console
//! asks for a key and sends it with every API call). Strict headers: the page may talk only
//! to this gateway, and nothing outside it is ever loaded.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::auth::require;
use super::{ApiError, GatewayState};
use crate::state::Scope;

include!(concat!(env!("OUT_DIR"), "/console_assets.rs"));

/// The content security policy of every console file.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
                   connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
                   frame-ancestors 'none'";

fn file(path: &str) -> Response {
    let Some((_, content_type, bytes)) = ASSETS.iter().find(|(p, _, _)| *p == path) else {
        if path == "/index.html" {
            return (
                StatusCode::NOT_FOUND,
                "the console was not built into this binary (cd console && npm ci && npm run build)",
            )
                .into_response();
        }
        return ApiError::not_found("no such console file").into_response();
    };
    let mut r = (StatusCode::OK, *bytes).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Files under /assets/ carry a content hash in their names; the page itself is revalidated.
    let cache = if path.starts_with("/assets/") { "public, max-age=31536000, immutable" } else { "no-cache" };
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    r
}

pub async fn index() -> Response {
    file("/index.html")
}

pub async fn asset(Path(name): Path<String>) -> Response {
    file(&format!("/assets/{name}"))
}

/// `GET /v1/console/metrics`: the gateway's own last 15 minutes (see `history`).
pub async fn metrics(
    State(gw): State<Arc<GatewayState>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    require(&headers, &gw, Scope::User)?;
    Ok(Json(json!({
        "object": "console.metrics",
        "interval_seconds": crate::history::SAMPLE_EVERY.as_secs(),
        "points": gw.history.points(),
    })))
}
