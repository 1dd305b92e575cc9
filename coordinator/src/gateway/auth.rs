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
//! raft log or the sled database, so a copied database or backup alone does not allow
//! guessing keys offline.

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use shoal_protocol::metric_names as m;
use std::sync::Arc;

use super::{ApiError, GatewayState};
use crate::state::Scope;

/// HMAC-SHA256 (RFC 2104).
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new().chain_update(pad(0x36)).chain_update(message).finalize();
    Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize().into()
}

/// Turns API keys into the stored form.
#[derive(Clone)]
pub struct KeyHasher {
    secret: [u8; 32],
}

impl KeyHasher {
    /// The hasher of a cluster, from its CA's private key (the same on every coordinator).
    pub fn from_ca_key(ca_key_pem: &str) -> Self {
        Self { secret: hmac_sha256(ca_key_pem.as_bytes(), b"shoal api-key hashing v1") }
    }

    /// The stored form of an API key.
    pub fn hash(&self, key: &str) -> String {
        hex::encode(hmac_sha256(&self.secret, key.as_bytes()))
    }
}

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

/// Paths served without a key (probes, the scrape endpoint and the API's description).
pub fn is_open(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics" | "/v1/openapi.json")
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
    let state = gw.raft.state().read().unwrap_or_else(|p| p.into_inner());
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
    req.extensions_mut().insert(caller);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(hex::encode(mac), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn hmac_matches_rfc_4231_case_6_long_key() {
        let mac = hmac_sha256(&[0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First");
        assert_eq!(hex::encode(mac), "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
    }

    #[test]
    fn hashes_depend_on_the_cluster() {
        let a = KeyHasher::from_ca_key("ca one");
        let b = KeyHasher::from_ca_key("ca two");
        assert_eq!(a.hash("sk-1"), a.hash("sk-1"));
        assert_ne!(a.hash("sk-1"), a.hash("sk-2"));
        assert_ne!(a.hash("sk-1"), b.hash("sk-1"));
        assert_ne!(a.hash("sk-1"), hex::encode(Sha256::digest(b"sk-1")));
    }

    #[test]
    fn only_probes_and_metrics_are_open() {
        for p in ["/healthz", "/readyz", "/metrics"] {
            assert!(is_open(p), "{p}");
        }
        for p in ["/", "/v1/models", "/v1/debug/faults", "/metrics/", "/healthz/x", "/v1/keys"] {
            assert!(!is_open(p), "{p}");
        }
    }
}
