//! API keys: `Authorization: Bearer <key>`, checked against the SHA-256 hashes in the
//! replicated state.

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};
use shoal_protocol::metric_names as m;

use super::{ApiError, GatewayState};
use crate::state::Scope;

/// The stored form of an API key.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Checks the request carries a key with at least `needed` scope.
pub fn require(headers: &HeaderMap, gw: &GatewayState, needed: Scope) -> Result<(), ApiError> {
    let refuse = |reason: &'static str, err: ApiError| {
        metrics::counter!(m::HTTP_AUTH_REFUSED, "reason" => reason).increment(1);
        Err(err)
    };
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
        return refuse("missing", ApiError::unauthorized("missing Authorization: Bearer <api key>"));
    };
    let Some(key) = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")) else {
        return refuse("malformed", ApiError::unauthorized("Authorization must be 'Bearer <api key>'"));
    };
    let hash = hash_key(key.trim());
    let scope = {
        let state = gw.raft.state().read().unwrap_or_else(|p| p.into_inner());
        state.api_keys.get(&hash).map(|k| k.scope)
    };
    match (scope, needed) {
        (None, _) => refuse("unknown", ApiError::unauthorized("invalid API key")),
        (Some(Scope::User), Scope::Admin) => refuse("scope", ApiError::forbidden("this API key is not an admin key")),
        _ => Ok(()),
    }
}
