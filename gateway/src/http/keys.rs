//! `/v1/keys`: API keys with a scope, the models they may use and their limits (admin only).
//! A key's secret is shown once, at creation; the cluster stores only its keyed hash.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::require;
use super::{ApiError, Body, GatewayState};
use crate::state::{ApiKeyRecord, Command, Outcome, Scope};

type Gw = State<Arc<GatewayState>>;

/// The longest a key may be made to last.
pub const MAX_KEY_SECONDS: u64 = 10 * 365 * 24 * 3600;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRequest {
    pub name: String,
    /// `user` (the default) or `admin`.
    #[serde(default)]
    pub scope: Option<String>,
    /// Deployments the key may use; empty or absent: every one.
    #[serde(default)]
    pub models: Vec<String>,
    /// Requests per second (0 or absent: unlimited).
    #[serde(default)]
    pub rate_per_s: u32,
    /// Generated tokens per minute (0 or absent: unlimited).
    #[serde(default)]
    pub tokens_per_minute: u64,
    /// Seconds until the key expires (absent: never).
    #[serde(default)]
    pub expires_in_seconds: Option<u64>,
}

pub use shoal_coordinator::api_keys::{generate_id, generate_secret};

/// Checks a request and builds the record (without its hash) — a pure function of its inputs.
pub fn check(req: &KeyRequest, id: String, now_ms: u64) -> Result<ApiKeyRecord, String> {
    crate::registry::check_name("key", &req.name).map_err(|e| e.to_string())?;
    let scope = match req.scope.as_deref() {
        None | Some("user") => Scope::User,
        Some("admin") => Scope::Admin,
        Some(other) => return Err(format!("scope '{other}' is not one of: user, admin")),
    };
    if req.models.len() > 256 {
        return Err("a key may name at most 256 models".into());
    }
    for m in &req.models {
        crate::registry::check_name("model", m).map_err(|e| e.to_string())?;
    }
    let expires_at_ms = match req.expires_in_seconds {
        None => 0,
        Some(s) if s == 0 || s > MAX_KEY_SECONDS => {
            return Err(format!("expires_in_seconds must be between 1 and {MAX_KEY_SECONDS}"))
        }
        Some(s) => now_ms + s * 1000,
    };
    Ok(ApiKeyRecord {
        hash: String::new(),
        id,
        name: req.name.clone(),
        scope,
        created_at_ms: now_ms,
        models: req.models.clone(),
        rate_per_s: req.rate_per_s,
        tokens_per_minute: req.tokens_per_minute,
        expires_at_ms,
    })
}

fn describe(k: &ApiKeyRecord) -> Value {
    json!({
        "id": k.id,
        "name": k.name,
        "scope": k.scope,
        "models": k.models,
        "rate_per_s": k.rate_per_s,
        "tokens_per_minute": k.tokens_per_minute,
        "created_at_ms": k.created_at_ms,
        "expires_at_ms": (k.expires_at_ms != 0).then_some(k.expires_at_ms),
    })
}

pub async fn create(
    State(gw): Gw,
    headers: HeaderMap,
    Body(req): Body<KeyRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    require(&headers, &gw, Scope::Admin)?;
    let mut record = check(&req, generate_id(), gw.clock.unix_ms()).map_err(ApiError::bad_request)?;
    let secret = generate_secret();
    record.hash = gw.keys.hash(&secret);
    match gw.cluster.command(Command::AddApiKey(record.clone())).await? {
        Outcome::Applied => {}
        Outcome::Rejected(why) | Outcome::Ignored(why) => return Err(ApiError::conflict(why)),
        other => return Err(ApiError::unavailable(format!("unexpected outcome {other:?}"))),
    }
    tracing::info!(id = %record.id, name = %record.name, scope = ?record.scope, "admin created an API key");
    let mut body = describe(&record);
    body["key"] = json!(secret);
    Ok((StatusCode::CREATED, Json(body)))
}

pub async fn list(State(gw): Gw, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    require(&headers, &gw, Scope::Admin)?;
    let state = gw.cluster.state().read().unwrap_or_else(|p| p.into_inner());
    let mut keys: Vec<&ApiKeyRecord> = state.api_keys.values().collect();
    keys.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
    Ok(Json(json!({"object": "list", "data": keys.into_iter().map(describe).collect::<Vec<_>>()})))
}

pub async fn revoke(State(gw): Gw, headers: HeaderMap, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    require(&headers, &gw, Scope::Admin)?;
    match gw.cluster.command(Command::RevokeApiKey { id: id.clone() }).await? {
        Outcome::Applied => {}
        Outcome::Rejected(why) if why.starts_with("no API key") => return Err(ApiError::not_found(why)),
        Outcome::Rejected(why) | Outcome::Ignored(why) => return Err(ApiError::conflict(why)),
        other => return Err(ApiError::unavailable(format!("unexpected outcome {other:?}"))),
    }
    tracing::info!(%id, "admin revoked an API key");
    Ok(Json(json!({"revoked": id})))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(name: &str) -> KeyRequest {
        KeyRequest {
            name: name.into(),
            scope: None,
            models: vec![],
            rate_per_s: 0,
            tokens_per_minute: 0,
            expires_in_seconds: None,
        }
    }

    #[test]
    fn requests_become_records() {
        let mut r = req("ci-bot");
        r.models = vec!["smollm2".into()];
        r.rate_per_s = 5;
        r.expires_in_seconds = Some(60);
        let k = check(&r, "key-1".into(), 1_000).expect("valid");
        assert_eq!((k.scope, k.expires_at_ms, k.rate_per_s), (Scope::User, 61_000, 5));
        assert!(k.allows_model("smollm2") && !k.allows_model("other"));
        let mut admin = req("ops");
        admin.scope = Some("admin".into());
        assert_eq!(check(&admin, "key-2".into(), 0).map(|k| k.scope), Ok(Scope::Admin));
    }

    #[test]
    fn bad_requests_name_the_problem() {
        let err = |r: KeyRequest| check(&r, "key-1".into(), 0).err().unwrap_or_default();
        assert!(err(req("")).contains("key name"));
        assert!(err(req("has space")).contains("key name"));
        let mut r = req("x");
        r.scope = Some("root".into());
        assert_eq!(err(r), "scope 'root' is not one of: user, admin");
        let mut r = req("x");
        r.models = vec!["../etc".into()];
        assert!(err(r).contains("model name"));
        let mut r = req("x");
        r.expires_in_seconds = Some(0);
        assert!(err(r).contains("expires_in_seconds"));
    }

    #[test]
    fn secrets_and_ids_are_random() {
        assert_ne!(generate_secret(), generate_secret());
        assert!(generate_secret().starts_with("sk-shoal-") && generate_secret().len() == 41);
        assert_ne!(generate_id(), generate_id());
    }
}
