//! API keys: `Authorization: Bearer <key>`, checked by a layer before any handler runs (so no
//! body is read for a request without a valid key), against the keyed hashes in the
//! replicated state.
//!
//! Why a keyed hash and not a slow one (argon2, scrypt): keys are checked on every request,
//! and a slow hash costs tens of milliseconds per check (or a cache of plaintext-equivalent
//! secrets in memory). Generated keys carry 128 random bits, which no offline guessing
//! reaches, so slowness buys nothing for them; what protects a user-chosen key is that the
//! stored value is `HMAC-SHA256(secret, key)` with a secret derived from the cluster CA's
//! private key. That key lives in the coordinators' owner-only PKI folder and never enters the
//! raft log or its checkpoint, so a copied data folder or backup alone does not allow
//! guessing keys offline.

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use shoal_protocol::metric_names as m;
use std::sync::Arc;

use super::{ApiError, GatewayState};
use crate::state::Scope;
pub use shoal_coordinator::api_keys::KeyHasher;

/// Who made a request: the key it carried, as the replicated state knows it.
#[derive(Debug, Clone)]
pub struct Caller {
    pub id: String,
    pub name: String,
    pub scope: Scope,
    pub models: Vec<String>,
    pub rate_per_s: u32,
    pub tokens_per_minute: u64,
}

impl Caller {
    /// Refuses a deployment this key may not use.
    pub fn require_model(&self, model: &str) -> Result<(), ApiError> {
        if self.models.is_empty() || self.models.iter().any(|m| m == model) {
            return Ok(());
        }
        metrics::counter!(m::HTTP_AUTH_REFUSED, "reason" => "model").increment(1);
        Err(ApiError::forbidden(format!("this API key ('{}') may not use the model '{model}'", self.name)))
    }
}

/// Paths served without a key (probes, the scrape endpoint, the API's description, and the
/// console's static files, which hold no data).
pub fn is_open(path: &str) -> bool {
    matches!(path, "/" | "/healthz" | "/readyz" | "/metrics" | "/v1/openapi.json") || path.starts_with("/assets/")
}

fn refuse(reason: &'static str, err: ApiError) -> ApiError {
    metrics::counter!(m::HTTP_AUTH_REFUSED, "reason" => reason).increment(1);
    err
}

/// The caller behind the request's `Authorization` header.
pub fn authenticate(headers: &HeaderMap, gw: &GatewayState) -> Result<Caller, ApiError> {
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Err(refuse("missing", ApiError::unauthorized("missing Authorization: Bearer <api key>")));
    };
    let Some(key) = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")) else {
        return Err(refuse("malformed", ApiError::unauthorized("Authorization must be 'Bearer <api key>'")));
    };
    let hash = gw.keys.hash(key.trim());
    let state = gw.cluster.state().read().unwrap_or_else(|p| p.into_inner());
    let Some(k) = state.api_keys.get(&hash) else {
        return Err(refuse("unknown", ApiError::unauthorized("invalid API key")));
    };
    if k.expired(gw.clock.unix_ms()) {
        return Err(refuse("expired", ApiError::unauthorized(format!("the API key '{}' has expired", k.name))));
    }
    Ok(Caller {
        id: k.id.clone(),
        name: k.name.clone(),
        scope: k.scope,
        models: k.models.clone(),
        rate_per_s: k.rate_per_s,
        tokens_per_minute: k.tokens_per_minute,
    })
}

/// Checks the request carries a key with at least `needed` scope and returns its caller.
pub fn require(headers: &HeaderMap, gw: &GatewayState, needed: Scope) -> Result<Caller, ApiError> {
    let caller = authenticate(headers, gw)?;
    if caller.scope == Scope::User && needed == Scope::Admin {
        return Err(refuse("scope", ApiError::forbidden("this API key is not an admin key")));
    }
    Ok(caller)
}

/// The layer in front of every route: a request to anything but an open path needs a valid,
/// unexpired key within its request rate, checked before the body is read.
pub async fn layer(State(gw): State<Arc<GatewayState>>, mut req: Request, next: Next) -> Response {
    if is_open(req.uri().path()) {
        return next.run(req).await;
    }
    // Keys and models are read from the view: before the first one arrives, every answer
    // would be a wrong 401 or 404.
    if !gw.cluster.is_loaded() {
        return ApiError::unavailable(
            "this gateway has not received the cluster view from a coordinator yet; retry in a moment",
        )
        .into_response();
    }
    let caller = match authenticate(req.headers(), &gw) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    if let Err(retry_ms) = gw.quotas.admit_request(&caller, gw.clock.unix_ms()) {
        metrics::counter!(m::HTTP_RATE_LIMITED, "limit" => "requests").increment(1);
        return ApiError::rate_limited(
            format!("the API key '{}' is limited to {} requests/s", caller.name, caller.rate_per_s),
            retry_ms,
        )
        .into_response();
    }
    req.extensions_mut().insert(caller.clone());
    let mut response = next.run(req).await;
    // The audit layer, outside this one, records who it was.
    response.extensions_mut().insert(caller);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_probes_metrics_and_console_files_are_open() {
        for p in ["/healthz", "/readyz", "/metrics", "/", "/assets/index-abc123.js"] {
            assert!(is_open(p), "{p}");
        }
        for p in ["/v1/models", "/v1/debug/faults", "/metrics/", "/healthz/x", "/v1/keys", "/v1/console/metrics", "//"]
        {
            assert!(!is_open(p), "{p}");
        }
    }
}
