use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use shoal_protocol::metric_names as m;
use shoal_protocol::token::JoinToken;

use super::auth::require;
use super::{ApiError, Body, GatewayState};
use crate::state::{Command, CoordinatorRecord, NodeRecord, Outcome, Scope, TokenRecord};
use crate::telemetry;
use shoal_coordinator::raft::Proposal;

/// The longest a join token may live.
pub const MAX_TOKEN_TTL_SECONDS: u64 = 365 * 24 * 3600;
pub const DEFAULT_TOKEN_TTL_SECONDS: u64 = 24 * 3600;

type Gw = State<Arc<GatewayState>>;

/// `?consistent=true` asks for a linearizable read (raft ReadIndex) instead of this
/// member's local replica.
#[derive(Debug, Deserialize, Default)]
pub struct ReadOpts {
    #[serde(default)]
    pub consistent: bool,
}

async fn consistent(gw: &GatewayState, opts: &ReadOpts) -> Result<(), ApiError> {
    if opts.consistent {
        gw.cluster.read_index().await.map_err(|e| ApiError::unavailable(format!("consistent read failed: {e}")))?;
    }
    Ok(())
}

fn outcome_ok(outcome: Outcome) -> Result<(), ApiError> {
    match outcome {
        Outcome::Applied | Outcome::NodeUp { .. } | Outcome::ModelVersion { .. } | Outcome::Placed { .. } => Ok(()),
        Outcome::Ignored(why) | Outcome::Rejected(why) => Err(ApiError::bad_request(why)),
    }
}

fn count(route: &'static str) {
    metrics::counter!(m::HTTP_REQUESTS, "route" => route).increment(1);
}

pub async fn healthz() -> &'static str {
    count("healthz");
    "ok\n"
}

/// Ready when the view is loaded and holds an admin key, and, while a coordinator streams
/// it, when that coordinator knows a leader and the view has caught up with its commit
/// index. With every coordinator gone the gateway stays ready: it serves from its cached
/// view (writes answer 503).
pub async fn readyz(State(gw): Gw) -> axum::response::Response {
    count("readyz");
    let v = gw.cluster.status();
    let has_admin = || {
        let state = gw.cluster.state().read().unwrap_or_else(|p| p.into_inner());
        state.api_keys.values().any(|k| k.scope == Scope::Admin)
    };
    let not_ready = if !v.loaded {
        "waiting for the cluster view from a coordinator\n".to_string()
    } else if v.connected && v.soft.leader_id == 0 {
        "no raft leader\n".to_string()
    } else if !has_admin() {
        "bootstrapping the admin API key\n".to_string()
    } else if let Some(why) = gw.held.lock().unwrap_or_else(|p| p.into_inner()).clone() {
        format!("{why}\n")
    } else if v.connected && v.index < v.soft.commit {
        format!("applying: {} of {}\n", v.index, v.soft.commit)
    } else if !v.connected {
        return (StatusCode::OK, "ready (control plane unavailable: serving from the cached view)\n").into_response();
    } else {
        return (StatusCode::OK, "ready\n").into_response();
    };
    (StatusCode::SERVICE_UNAVAILABLE, [(axum::http::header::RETRY_AFTER, "1")], not_ready).into_response()
}

pub async fn metrics(State(gw): Gw) -> impl IntoResponse {
    count("metrics");
    {
        let state = gw.cluster.state().read().unwrap_or_else(|p| p.into_inner());
        telemetry::refresh_state(&state);
        telemetry::refresh_leases(&gw.cluster.status().soft.leases, &state, gw.clock.unix_ms());
        crate::retrieval::Retrieval::publish_gauges(&state);
    }
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], gw.prometheus.render())
}

/// Every coordinator this gateway knows of, `id → (quic, http)`: from the cluster config,
/// the soft view and the replicated membership (the last wins).
pub fn known_coordinators(gw: &GatewayState) -> std::collections::BTreeMap<u64, (String, String)> {
    let soft = gw.cluster.status().soft;
    let mut known: std::collections::BTreeMap<u64, (String, String)> =
        gw.configured.iter().map(|(id, quic, http)| (*id, (quic.clone(), http.clone()))).collect();
    for (id, quic, http) in &soft.coordinators {
        known.entry(*id).or_insert_with(|| (quic.clone(), http.clone()));
    }
    let state = gw.cluster.state().read().unwrap_or_else(|p| p.into_inner());
    for c in state.coordinators.values() {
        known.insert(c.id, (c.quic.clone(), c.http.clone()));
    }
    known
}

pub async fn cluster(State(gw): Gw, headers: HeaderMap, Query(opts): Query<ReadOpts>) -> Result<Json<Value>, ApiError> {
    count("cluster");
    require(&headers, &gw, Scope::User)?;
    consistent(&gw, &opts).await?;
    let v = gw.cluster.status();
    let s = &v.soft;
    let known = known_coordinators(&gw);
    let members: Vec<Value> = known
        .iter()
        .map(|(id, (quic, http))| {
            json!({
                "id": id,
                "quic": quic,
                "http": http,
                "voter": s.voters.contains(id),
                "learner": s.learners.contains(id),
                "leader": s.leader_id == *id,
            })
        })
        .collect();
    Ok(Json(json!({
        "self_id": s.coordinator_id,
        "role": s.role,
        "leader_id": (s.leader_id != 0).then_some(s.leader_id),
        "term": s.term,
        "commit_index": s.commit,
        "applied_index": s.applied,
        "first_index": s.first_index,
        "last_index": s.last_index,
        "voters": s.voters,
        "learners": s.learners,
        "members": members,
        "ca_hash": gw.ca_hash,
        "gateway": {
            "view_index": v.index,
            "connected": v.connected,
            "watching": s.coordinator_id,
        },
    })))
}

fn node_json(gw: &GatewayState, n: &NodeRecord) -> Value {
    let soft = gw.cluster.status().soft;
    let lease =
        soft.leases.iter().find(|l| l.node == n.id && l.generation == n.generation && l.last_heartbeat_unix_ms > 0);
    let now = gw.clock.unix_ms();
    let labels: serde_json::Map<String, Value> =
        n.labels.iter().map(|l| (l.key.clone(), Value::String(l.value.clone()))).collect();
    let replicas: Vec<Value> = {
        let state = gw.cluster.state().read().unwrap_or_else(|p| p.into_inner());
        state
            .placements
            .values()
            .filter(|p| p.node == n.id)
            .map(|p| json!({"id": p.id, "deployment": p.deployment, "model": p.model, "version": p.version, "state": p.phase_str()}))
            .collect()
    };
    json!({
        "replicas": replicas,
        "id": n.id,
        "name": n.name,
        "state": n.state,
        "generation": n.generation,
        "address": n.address,
        "capacity": n.capacity,
        "labels": labels,
        "mcp_stdio": n.mcp_stdio,
        "metrics": (!n.metrics.is_empty()).then(|| format!("http://{}/metrics", n.metrics)),
        "load": lease.map(|l| &l.load),
        "last_heartbeat_unix_ms": lease.map(|l| l.last_heartbeat_unix_ms),
        "last_heartbeat_age_ms": lease.map(|l| now.saturating_sub(l.last_heartbeat_unix_ms)),
        "joined_at_ms": n.joined_at_ms,
        "state_changed_at_ms": n.state_changed_at_ms,
    })
}

pub async fn nodes(State(gw): Gw, headers: HeaderMap, Query(opts): Query<ReadOpts>) -> Result<Json<Value>, ApiError> {
    count("nodes");
    require(&headers, &gw, Scope::User)?;
    consistent(&gw, &opts).await?;
    let records: Vec<NodeRecord> = {
        let state = gw.cluster.state().read().unwrap_or_else(|p| p.into_inner());
        state.nodes.values().cloned().collect()
    };
    let nodes: Vec<Value> = records.iter().map(|n| node_json(&gw, n)).collect();
    Ok(Json(json!({ "nodes": nodes })))
}

pub async fn node(State(gw): Gw, headers: HeaderMap, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    count("node");
    require(&headers, &gw, Scope::User)?;
    let record = {
        let state = gw.cluster.state().read().unwrap_or_else(|p| p.into_inner());
        state.nodes.get(&id).cloned()
    };
    match record {
        Some(n) => Ok(Json(node_json(&gw, &n))),
        None => Err(ApiError::not_found(format!("no node with id {id}"))),
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub ttl_seconds: Option<u64>,
    pub description: Option<String>,
}

/// The checked lifetime of a join token request, in seconds.
pub(crate) fn token_ttl(req: &TokenRequest) -> Result<u64, ApiError> {
    let ttl = req.ttl_seconds.unwrap_or(DEFAULT_TOKEN_TTL_SECONDS);
    if ttl == 0 || ttl > MAX_TOKEN_TTL_SECONDS {
        return Err(ApiError::bad_request(format!(
            "ttl_seconds must be between 1 and {MAX_TOKEN_TTL_SECONDS}, got {ttl}"
        )));
    }
    Ok(ttl)
}

pub async fn create_token(
    State(gw): Gw,
    headers: HeaderMap,
    Body(req): Body<TokenRequest>,
) -> Result<Json<Value>, ApiError> {
    count("create_token");
    require(&headers, &gw, Scope::Admin)?;
    let ttl = token_ttl(&req)?;
    let token = JoinToken::generate();
    let now = gw.clock.unix_ms();
    let record = TokenRecord {
        id: token.id.clone(),
        secret_hash: token.secret_hash(),
        created_at_ms: now,
        expires_at_ms: now + ttl * 1000,
        description: req.description.unwrap_or_default(),
    };
    let expires_at_ms = record.expires_at_ms;
    outcome_ok(gw.cluster.command(Command::CreateToken(record)).await?)?;
    tracing::info!(token_id = %token.id, ttl, "admin created a join token");
    let soft = gw.cluster.status().soft;
    let quic_of = |id: u64| soft.coordinators.iter().find(|(c, _, _)| *c == id).map(|(_, a, _)| a.clone());
    let addr = quic_of(soft.coordinator_id).unwrap_or_default();
    let mut all: Vec<String> = soft.voters.iter().filter_map(|id| quic_of(*id)).collect();
    if all.is_empty() {
        all.push(addr.clone());
    }
    Ok(Json(json!({
        "token": token.to_string(),
        "token_id": token.id,
        "expires_at_ms": expires_at_ms,
        "ca_hash": gw.ca_hash,
        "coordinator": addr,
        "coordinators": all,
        "join_command": format!("shoal join {addr} --token {token} --ca-hash {}", gw.ca_hash),
        "gateway_command": format!(
            "shoal gateway --coordinators {} --token {token} --ca-hash {} --http 127.0.0.1:8090 --data-dir ./shoal-gateway",
            all.join(","),
            gw.ca_hash
        ),
    })))
}

/// `GET /v1/tokens` query: a read as `ReadOpts`, and optionally one page of the tokens in id order —
/// at most `limit`, after the id `after` (as Kubernetes and etcd list: everything unless a limit is asked).
#[derive(Debug, Deserialize, Default)]
pub struct TokenPage {
    #[serde(default)]
    pub consistent: bool,
    pub limit: Option<usize>,
    pub after: Option<String>,
}

/// The largest page of `GET /v1/tokens`.
pub const MAX_TOKEN_PAGE: usize = 10_000;

/// Lists join tokens (ids and expiry, never secrets), like `kubeadm token list`.
pub async fn list_tokens(
    State(gw): Gw,
    headers: HeaderMap,
    Query(page): Query<TokenPage>,
) -> Result<Json<Value>, ApiError> {
    count("list_tokens");
    require(&headers, &gw, Scope::Admin)?;
    if page.limit.is_some_and(|l| l == 0 || l > MAX_TOKEN_PAGE) {
        return Err(ApiError::bad_request(format!("limit must be 1 to {MAX_TOKEN_PAGE}")));
    }
    consistent(&gw, &ReadOpts { consistent: page.consistent }).await?;
    let state = gw.cluster.state().read().unwrap_or_else(|p| p.into_inner());
    let from = match &page.after {
        Some(after) => std::ops::Bound::Excluded(after.as_str()),
        None => std::ops::Bound::Unbounded,
    };
    let limit = page.limit.unwrap_or(usize::MAX);
    let mut listed = state.tokens.range::<str, _>((from, std::ops::Bound::Unbounded));
    let tokens: Vec<Value> = listed
        .by_ref()
        .take(limit)
        .map(|(_, t)| json!({"id": t.id, "created_at_ms": t.created_at_ms, "expires_at_ms": t.expires_at_ms, "description": t.description}))
        .collect();
    // Where the next page starts, when there is one.
    let next_after = match listed.next() {
        Some(_) => tokens.last().map(|t| t["id"].clone()).unwrap_or(Value::Null),
        None => Value::Null,
    };
    Ok(Json(json!({ "tokens": tokens, "next_after": next_after })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddCoordinator {
    pub id: u64,
    /// Its QUIC address, `host:port` (an IP address or a DNS name).
    pub quic: String,
    /// Its gateway's HTTP address, `host:port`.
    pub http: String,
    /// Add it even when it does not answer at `http` (it will be started later).
    #[serde(default)]
    pub force: bool,
}

/// How long `coordinator add` waits for the new member's gateway to answer.
const MEMBER_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
/// How long `coordinator add` waits for a member that does not answer yet.
const MEMBER_START_GRACE: std::time::Duration = std::time::Duration::from_secs(8);

/// Whether a coordinator answers `GET /healthz` at `http` (a plain HTTP/1.0 exchange).
/// [`answers`], retried for a few seconds when nothing listens yet: a member started a
/// moment before `coordinator add` (a pasted procedure) binds its port within that time.
async fn answers_soon(http: &str) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + MEMBER_START_GRACE;
    loop {
        match answers(http).await {
            Ok(()) => return Ok(()),
            Err(why) if tokio::time::Instant::now() >= deadline => return Err(why),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    }
}

async fn answers(http: &str) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(http).await.map_err(|e| e.to_string())?;
        s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").await.map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&answer);
        if text.starts_with("HTTP/1.") && text.contains(" 200 ") && text.ends_with("ok\n") {
            Ok(())
        } else {
            Err("something answered, but not a shoal coordinator".to_string())
        }
    };
    tokio::time::timeout(MEMBER_PROBE_TIMEOUT, exchange).await.map_err(|_| "no answer".to_string())?
}

/// The voters as committed: read through the leader (ReadIndex), so a follower that
/// forwarded the change reports it too.
async fn committed_voters(gw: &GatewayState) -> Result<Vec<u64>, ApiError> {
    gw.cluster
        .read_index()
        .await
        .map_err(|e| ApiError::unavailable(format!("the change committed, but reading it back failed: {e}")))?;
    wait_for_voters(gw).await;
    Ok(gw.cluster.status().soft.voters.clone())
}

/// Soft state arrives every half second: wait for the next one, so the voters listed
/// include a change just read back.
async fn wait_for_voters(gw: &GatewayState) {
    let at = |gw: &GatewayState| std::sync::Arc::as_ptr(&gw.cluster.status().soft) as usize;
    let before = at(gw);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    while at(gw) == before && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

/// Adds a coordinator to the raft group (it must already be running with an empty data dir).
pub async fn add_coordinator(
    State(gw): Gw,
    headers: HeaderMap,
    Body(req): Body<AddCoordinator>,
) -> Result<Json<Value>, ApiError> {
    count("add_coordinator");
    require(&headers, &gw, Scope::Admin)?;
    if req.id == 0 {
        return Err(ApiError::bad_request("coordinator id 0 is reserved"));
    }
    for (field, a) in [("quic", &req.quic), ("http", &req.http)] {
        shoal_protocol::address::check_host_port(a).map_err(|why| ApiError::bad_request(format!("{field}: {why}")))?;
    }
    if gw.cluster.status().soft.voters.contains(&req.id) {
        return Err(ApiError::bad_request(format!("coordinator {} is already a voter", req.id)));
    }
    if !req.force {
        answers_soon(&req.http).await.map_err(|why| {
            ApiError::bad_request(format!(
                "coordinator {} does not answer at http://{} ({why}): start it first with `initial = false` in its \
                 config (see docs/guarantees.md), or pass --force to add it anyway",
                req.id, req.http
            ))
        })?;
    }
    let member = CoordinatorRecord { id: req.id, quic: req.quic.clone(), http: req.http.clone() };
    outcome_ok(gw.cluster.submit(Proposal::AddMember(member)).await?)?;
    tracing::info!(id = req.id, "admin added a coordinator");
    Ok(Json(json!({ "added": req.id, "voters": committed_voters(&gw).await? })))
}

/// Removes a coordinator from the raft group.
pub async fn remove_coordinator(
    State(gw): Gw,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Result<Json<Value>, ApiError> {
    count("remove_coordinator");
    require(&headers, &gw, Scope::Admin)?;
    let s = gw.cluster.status().soft;
    if !s.voters.contains(&id) && !s.learners.contains(&id) {
        return Err(ApiError::not_found(format!("coordinator {id} is not a member")));
    }
    if s.voters.len() == 1 && s.voters.contains(&id) {
        return Err(ApiError::bad_request("cannot remove the last voter"));
    }
    outcome_ok(gw.cluster.submit(Proposal::RemoveMember { id }).await?)?;
    tracing::info!(id, "admin removed a coordinator");
    Ok(Json(json!({ "removed": id, "voters": committed_voters(&gw).await? })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg(feature = "fault-injection")]
pub struct FaultRequest {
    pub isolated: bool,
}

/// Test-only: cut this member off from its raft peers (built with the `fault-injection`
/// feature, enabled by SHOAL_FAULT_INJECTION=1).
#[cfg(feature = "fault-injection")]
pub async fn set_faults(
    State(gw): Gw,
    headers: HeaderMap,
    Body(body): Body<FaultRequest>,
) -> Result<Json<Value>, ApiError> {
    require(&headers, &gw, Scope::Admin)?;
    let Some(faults) = &gw.faults else {
        return Err(ApiError::not_found("fault injection is not enabled on this coordinator"));
    };
    faults.isolated.store(body.isolated, std::sync::atomic::Ordering::Relaxed);
    tracing::warn!(isolated = body.isolated, "fault injection changed");
    Ok(Json(json!({ "isolated": body.isolated })))
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}
