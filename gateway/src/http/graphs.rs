//! Task graphs over HTTP: definitions (`/v1/graphs`), runs (`/v1/graphs/{name}/runs`,
//! `/v1/runs`), and the databases graphs read (`/v1/databases`).
//!
//! A run is executed by the leader's runner whichever gateway started it; this gateway
//! waits for (or streams) its progress from the view. A client that goes away never
//! cancels a run: only `DELETE /v1/runs/{id}` does.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use shoal_coordinator::state::{
    Command, DatabaseKind, DatabaseRecord, Outcome, RunRecord, RunStatus, Scope, StepOutcome,
};
use shoal_graph::deps::dependencies;
use shoal_graph::plan::bind_inputs;
use shoal_graph::{Graph, Problem};
use tokio::sync::mpsc;

use super::auth::require;
use super::{ApiError, Body, GatewayState, RawBody};
use crate::graphs::Graphs;

type Gw = State<Arc<GatewayState>>;

/// How long a waiting `POST …/runs` holds the request before answering 202 with the run
/// still running (it goes on; poll `GET /v1/runs/{id}`).
const WAIT_AT_MOST: Duration = Duration::from_secs(600);

fn graphs(gw: &GatewayState) -> &Arc<Graphs> {
    &gw.graphs
}

/// A 400 listing every problem of a definition or of a run's inputs.
fn problems_response(what: &str, problems: &[Problem]) -> Response {
    let list: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    let body = json!({"error": {
        "message": format!("{what}: {} problem(s): {}", problems.len(), list.join("; ")),
        "type": "invalid_request_error",
        "code": "invalid_graph",
        "problems": problems,
    }});
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

fn graph_json(g: &Graph, version: u32, builtin: bool) -> Value {
    json!({
        "object": "graph",
        "name": g.name,
        "version": version,
        "builtin": builtin,
        "description": g.description,
        "inputs": g.inputs,
        "outputs": g.outputs.keys().collect::<Vec<_>>(),
        "steps": g.steps.iter().map(|s| json!({"id": s.id, "kind": s.kind.name()})).collect::<Vec<_>>(),
    })
}

pub async fn list(State(gw): Gw, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    require(&headers, &gw, Scope::User)?;
    let g = graphs(&gw);
    let mut data: Vec<Value> = g.builtins().values().map(|b| graph_json(b, 0, true)).collect();
    let names: Vec<String> =
        gw.cluster.state().read().unwrap_or_else(|p| p.into_inner()).graphs.keys().cloned().collect();
    for name in names {
        match g.definition(&name, None) {
            Ok((v, def)) => data.push(graph_json(&def, v, false)),
            Err(e) => data.push(json!({"object": "graph", "name": name, "error": e.to_string()})),
        }
    }
    Ok(Json(json!({"object": "list", "data": data})))
}

pub async fn schema(State(gw): Gw, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    require(&headers, &gw, Scope::User)?;
    Ok(Json(shoal_graph::json_schema()))
}

pub async fn get_one(State(gw): Gw, headers: HeaderMap, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    require(&headers, &gw, Scope::User)?;
    let (version, def) = graphs(&gw).definition(&name, None).map_err(|e| ApiError::not_found(e.to_string()))?;
    let versions: Vec<Value> = {
        let state = gw.cluster.state().read().unwrap_or_else(|p| p.into_inner());
        state.graphs.get(&name).map_or_else(Vec::new, |r| {
            r.versions
                .iter()
                .map(|v| json!({"version": v.version, "sha256": v.sha256, "created_at_ms": v.created_at_ms}))
                .collect()
        })
    };
    let mut body = graph_json(&def, version, version == 0);
    body["definition"] = serde_json::to_value(&def).unwrap_or(Value::Null);
    body["versions"] = json!(versions);
    Ok(Json(body))
}

/// `POST /v1/graphs`: a definition in YAML or JSON; checked, then stored as a new version
/// (the same definition again is the same version).
pub async fn apply(State(gw): Gw, headers: HeaderMap, RawBody(bytes): RawBody) -> Result<Response, ApiError> {
    require(&headers, &gw, Scope::Admin)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| ApiError::bad_request("the definition is not UTF-8 text"))?;
    let raw = match shoal_graph::parse(text) {
        Ok(v) => v,
        Err(p) => return Ok(problems_response("graph definition", &[p])),
    };
    let g = graphs(&gw);
    let def = match shoal_graph::check(&raw, &g.catalog()) {
        Ok(d) => d,
        Err(problems) => return Ok(problems_response("graph definition", &problems)),
    };
    if shoal_graph::builtin::is_builtin(&def.name) {
        return Err(ApiError::conflict(format!("'{}' is a built-in graph; choose another name", def.name)));
    }
    let stored = serde_json::to_string(&def).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let sha256 = hex::encode(Sha256::digest(stored.as_bytes()));
    let cmd = Command::PutGraph { name: def.name.clone(), definition: stored, sha256, at_ms: gw.clock.unix_ms() };
    match gw.cluster.command(cmd).await? {
        Outcome::ModelVersion { version, existed } => {
            let status = if existed { StatusCode::OK } else { StatusCode::CREATED };
            let mut body = graph_json(&def, version, false);
            body["created"] = json!(!existed);
            Ok((status, Json(body)).into_response())
        }
        Outcome::Rejected(why) | Outcome::Ignored(why) => Err(ApiError::bad_request(why)),
        other => Err(ApiError::unavailable(format!("unexpected outcome {other:?}"))),
    }
}

pub async fn delete(State(gw): Gw, headers: HeaderMap, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    require(&headers, &gw, Scope::Admin)?;
    if shoal_graph::builtin::is_builtin(&name) {
        return Err(ApiError::bad_request(format!("'{name}' is built in and cannot be deleted")));
    }
    match gw.cluster.command(Command::DeleteGraph { name: name.clone() }).await? {
        Outcome::Applied => Ok(Json(json!({"object": "graph", "name": name, "deleted": true}))),
        Outcome::Rejected(why) => Err(ApiError::not_found(format!("graph '{name}': {why}"))),
        other => Err(ApiError::unavailable(format!("unexpected outcome {other:?}"))),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunJson {
    #[serde(default)]
    pub inputs: Value,
    #[serde(default)]
    pub stream: bool,
    /// A registered version (default: the latest).
    #[serde(default)]
    pub version: Option<u32>,
}

/// Starts a run: checks its inputs, commits it, and returns its id.
pub async fn start_run(
    gw: &GatewayState,
    caller_id: &str,
    name: &str,
    version: Option<u32>,
    given: &Value,
) -> Result<Result<RunRecord, Response>, ApiError> {
    let g = graphs(gw);
    let (version, def) = g.definition(name, version).map_err(|e| ApiError::not_found(e.to_string()))?;
    let inputs = match bind_inputs(&def, given) {
        Ok(i) => i,
        Err(problems) => return Ok(Err(problems_response("run inputs", &problems))),
    };
    let run = RunRecord {
        id: format!("run-{:016x}", rand::random::<u64>()),
        graph: name.to_string(),
        version,
        inputs: inputs.to_string(),
        status: RunStatus::Running,
        created_at_ms: gw.clock.unix_ms(),
        finished_at_ms: 0,
        outputs: String::new(),
        error: String::new(),
        steps: Default::default(),
        rerun_of: String::new(),
        key_id: caller_id.to_string(),
        calls: Default::default(),
    };
    commit_run(gw, run).await.map(Ok)
}

async fn commit_run(gw: &GatewayState, run: RunRecord) -> Result<RunRecord, ApiError> {
    match gw.cluster.command(Command::StartRun(Box::new(run.clone()))).await? {
        Outcome::Applied => Ok(run),
        Outcome::Rejected(why) | Outcome::Ignored(why) => Err(ApiError::bad_request(why)),
        other => Err(ApiError::unavailable(format!("unexpected outcome {other:?}"))),
    }
}

/// Waits until a run ends (or `within` passes); the run as the view has it then.
pub async fn wait_run(gw: &GatewayState, id: &str, within: Duration) -> Option<RunRecord> {
    let deadline = tokio::time::Instant::now() + within;
    let mut changes = gw.cluster.index_changes();
    loop {
        let run = graphs(gw).run(id)?;
        if run.status != RunStatus::Running || tokio::time::Instant::now() >= deadline {
            return Some(run);
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

pub async fn run_graph(
    State(gw): Gw,
    headers: HeaderMap,
    Path(name): Path<String>,
    Body(req): Body<RunJson>,
) -> Result<Response, ApiError> {
    let caller = require(&headers, &gw, Scope::User)?;
    let run = match start_run(&gw, &caller.id, &name, req.version, &req.inputs).await? {
        Ok(r) => r,
        Err(response) => return Ok(response),
    };
    if req.stream {
        return Ok(stream_run(gw.clone(), run).into_response());
    }
    respond_when_done(&gw, &run.id).await
}

async fn respond_when_done(gw: &Arc<GatewayState>, id: &str) -> Result<Response, ApiError> {
    // The run goes on if this request is dropped: it lives in the replicated state.
    let Some(run) = wait_run(gw, id, WAIT_AT_MOST).await else {
        return Err(ApiError::not_found(format!("run {id} is gone (pruned)")));
    };
    let status = if run.status == RunStatus::Running { StatusCode::ACCEPTED } else { StatusCode::OK };
    Ok((status, Json(run_json(gw, &run).await)).into_response())
}

/// Server-sent events of a run: `run_started`, `step_started` and `token` (when this
/// gateway's process executes it), `step_finished`, `run_finished`, then `[DONE]`.
fn stream_run(
    gw: Arc<GatewayState>,
    run: RunRecord,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let (tx, rx) = mpsc::channel::<Value>(256);
    let mut live = graphs(&gw).events.subscribe(&run.id);
    tokio::spawn(async move {
        let id = run.id.clone();
        let started = json!({"event": "run_started", "run": id, "graph": run.graph, "version": run.version});
        if tx.send(started).await.is_err() {
            return;
        }
        let mut seen: BTreeSet<String> = BTreeSet::new();
        let mut changes = gw.cluster.index_changes();
        // A live event waits until the view's finished steps are out, so a client sees
        // `step_finished` of a step before `step_started` of the steps after it.
        let mut pending: Option<Value> = None;
        loop {
            let Some(now) = graphs(&gw).run(&id) else { return };
            for (sid, s) in &now.steps {
                if seen.insert(sid.clone()) {
                    let output = graphs(&gw).output_of(s).await.unwrap_or(Value::Null);
                    let ev = json!({"event": "step_finished", "run": id, "step": sid, "kind": s.kind,
                                    "status": s.outcome, "output": output, "error": s.error, "attempts": s.attempts});
                    if tx.send(ev).await.is_err() {
                        return;
                    }
                }
            }
            if now.status != RunStatus::Running {
                let mut ev = run_json(&gw, &now).await;
                ev["event"] = json!("run_finished");
                let _ = tx.send(ev).await;
                return;
            }
            if let Some(ev) = pending.take() {
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                ev = live.recv() => match ev {
                    Ok(ev) => pending = Some(ev),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => live = graphs(&gw).events.subscribe(&id),
                },
                _ = changes.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    });
    let stream = futures_util::stream::unfold((rx, false), |(mut rx, done)| async move {
        if done {
            return None;
        }
        match rx.recv().await {
            Some(v) => {
                let name = v.get("event").and_then(Value::as_str).unwrap_or("message").to_string();
                Some((Ok(Event::default().event(name).data(v.to_string())), (rx, false)))
            }
            None => Some((Ok(Event::default().data("[DONE]")), (rx, true))),
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// A run as the API shows it: every step's inputs, output, attempts, timing, place and error.
pub async fn run_json(gw: &GatewayState, run: &RunRecord) -> Value {
    let g = graphs(gw);
    let (order, deps): (Vec<String>, std::collections::BTreeMap<String, shoal_graph::deps::Deps>) =
        match g.definition(&run.graph, Some(run.version).filter(|v| *v != 0)) {
            Ok((_, def)) => (def.steps.iter().map(|s| s.id.clone()).collect(), dependencies(&def)),
            Err(_) => (run.steps.keys().cloned().collect(), Default::default()),
        };
    // The steps each one waits for (data it reads, and branches that decide whether it runs).
    let after = |id: &str| -> Vec<String> { deps.get(id).map(|d| d.all().cloned().collect()).unwrap_or_default() };
    let mut steps = Vec::new();
    for id in &order {
        let Some(s) = run.steps.get(id) else {
            let mut v = json!({
                "id": id,
                "status": if run.status == RunStatus::Running { "pending" } else { "not_run" },
                "after": after(id),
            });
            // An agent step's calls committed so far.
            if let Some(calls) = run.calls.get(id) {
                v["calls"] = crate::graphs::agent::calls_json(calls);
            }
            steps.push(v);
            continue;
        };
        let output = g.output_of(s).await.unwrap_or_else(|e| json!({"unavailable": e}));
        let inputs: Value =
            if s.inputs.is_empty() { Value::Null } else { serde_json::from_str(&s.inputs).unwrap_or(Value::Null) };
        let mut v = json!({
            "id": id, "kind": s.kind, "status": s.outcome, "attempts": s.attempts,
            "started_at_ms": s.started_at_ms, "finished_at_ms": s.finished_at_ms,
            "duration_ms": s.finished_at_ms.saturating_sub(s.started_at_ms),
            "ran_on": s.ran_on, "inputs": inputs, "output": output, "error": s.error, "after": after(id),
        });
        if !s.output_sha256.is_empty() {
            v["output_sha256"] = json!(s.output_sha256);
            v["output_bytes"] = json!(s.output_bytes);
        }
        steps.push(v);
    }
    let parse = |s: &str| if s.is_empty() { Value::Null } else { serde_json::from_str(s).unwrap_or(Value::Null) };
    json!({
        "object": "graph.run",
        "id": run.id,
        "graph": run.graph,
        "version": run.version,
        "status": run.status,
        "created_at_ms": run.created_at_ms,
        "finished_at_ms": run.finished_at_ms,
        "inputs": parse(&run.inputs),
        "outputs": parse(&run.outputs),
        "error": run.error,
        "rerun_of": if run.rerun_of.is_empty() { Value::Null } else { json!(run.rerun_of) },
        "steps": steps,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunsQuery {
    #[serde(default)]
    pub graph: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub limit: Option<usize>,
}

pub async fn list_runs(State(gw): Gw, headers: HeaderMap, Query(q): Query<RunsQuery>) -> Result<Json<Value>, ApiError> {
    require(&headers, &gw, Scope::User)?;
    let status = match &q.status {
        Some(s) => Some(RunStatus::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!("unknown status '{s}' (running, succeeded, failed, cancelled)"))
        })?),
        None => None,
    };
    let runs = graphs(&gw).runs(q.graph.as_deref(), status);
    let data: Vec<Value> = runs
        .iter()
        .take(q.limit.unwrap_or(100).min(1000))
        .map(|r| {
            json!({"object": "graph.run", "id": r.id, "graph": r.graph, "version": r.version, "status": r.status,
                   "created_at_ms": r.created_at_ms, "finished_at_ms": r.finished_at_ms, "error": r.error,
                   "steps_finished": r.steps.len()})
        })
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

pub async fn get_run(State(gw): Gw, headers: HeaderMap, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    require(&headers, &gw, Scope::User)?;
    let run = graphs(&gw).run(&id).ok_or_else(|| ApiError::not_found(format!("no run '{id}'")))?;
    Ok(Json(run_json(&gw, &run).await))
}

/// `DELETE /v1/runs/{id}`: cancels a running run (the only way a run is cancelled).
pub async fn cancel_run(State(gw): Gw, headers: HeaderMap, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    require(&headers, &gw, Scope::User)?;
    let run = graphs(&gw).run(&id).ok_or_else(|| ApiError::not_found(format!("no run '{id}'")))?;
    if run.status == RunStatus::Running {
        let cmd = Command::FinishRun {
            run: id.clone(),
            status: RunStatus::Cancelled,
            outputs: String::new(),
            error: "cancelled by DELETE /v1/runs".into(),
            at_ms: gw.clock.unix_ms(),
            keep_finished: graphs(&gw).retention.keep_finished,
        };
        gw.cluster.command(cmd).await?;
    }
    let run = graphs(&gw).run(&id).ok_or_else(|| ApiError::not_found(format!("no run '{id}'")))?;
    Ok(Json(run_json(&gw, &run).await))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RerunJson {
    pub from: String,
    #[serde(default)]
    pub stream: bool,
}

/// `POST /v1/runs/{id}/rerun {"from": STEP}`: a new run of the same graph version and
/// inputs that reuses the committed results of every step STEP does not lead to.
pub async fn rerun(
    State(gw): Gw,
    headers: HeaderMap,
    Path(id): Path<String>,
    Body(req): Body<RerunJson>,
) -> Result<Response, ApiError> {
    let caller = require(&headers, &gw, Scope::User)?;
    let old = graphs(&gw).run(&id).ok_or_else(|| ApiError::not_found(format!("no run '{id}'")))?;
    let (_, def) = graphs(&gw)
        .definition(&old.graph, Some(old.version).filter(|v| *v != 0))
        .map_err(|e| ApiError::not_found(e.to_string()))?;
    if !def.steps.iter().any(|s| s.id == req.from) {
        let ids: Vec<&str> = def.steps.iter().map(|s| s.id.as_str()).collect();
        return Err(ApiError::bad_request(format!(
            "graph '{}' has no step '{}' (steps: {})",
            def.name,
            req.from,
            ids.join(", ")
        )));
    }
    let redo = downstream(&def, &req.from);
    let kept = old
        .steps
        .iter()
        .filter(|(sid, s)| !redo.contains(*sid) && s.outcome != StepOutcome::Failed)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let run = RunRecord {
        id: format!("run-{:016x}", rand::random::<u64>()),
        status: RunStatus::Running,
        created_at_ms: gw.clock.unix_ms(),
        finished_at_ms: 0,
        outputs: String::new(),
        error: String::new(),
        steps: kept,
        rerun_of: old.id.clone(),
        key_id: caller.id.clone(),
        // Steps run again make their calls again.
        calls: Default::default(),
        ..old
    };
    let run = commit_run(&gw, run).await?;
    if req.stream {
        return Ok(stream_run(gw.clone(), run).into_response());
    }
    respond_when_done(&gw, &run.id).await
}

/// `from` and every step that depends on it, directly or not.
pub fn downstream(def: &Graph, from: &str) -> BTreeSet<String> {
    let deps = dependencies(def);
    let mut out: BTreeSet<String> = [from.to_string()].into();
    loop {
        let before = out.len();
        for (id, d) in &deps {
            if d.all().any(|x| out.contains(x)) {
                out.insert(id.clone());
            }
        }
        if out.len() == before {
            return out;
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseJson {
    pub name: String,
    #[serde(default)]
    pub sqlite: Option<String>,
    #[serde(default)]
    pub postgres: Option<String>,
    #[serde(default)]
    pub description: String,
}

fn database_json(db: &DatabaseRecord) -> Value {
    let shown = match db.kind {
        DatabaseKind::Sqlite => db.location.clone(),
        DatabaseKind::Postgres => shoal_sql::Database::Postgres { url: db.location.clone() }.redacted(),
    };
    json!({"object": "database", "name": db.name, "kind": db.kind, "location": shown,
           "description": db.description, "created_at_ms": db.created_at_ms})
}

/// `POST /v1/databases`: registers a database for `sql` steps; an unreachable one is refused.
pub async fn add_database(
    State(gw): Gw,
    headers: HeaderMap,
    Body(req): Body<DatabaseJson>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    require(&headers, &gw, Scope::Admin)?;
    crate::registry::check_name("database", &req.name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let (kind, location, db) = match (&req.sqlite, &req.postgres) {
        (Some(path), None) => {
            let abs = std::path::absolute(path).map_err(|e| ApiError::bad_request(format!("sqlite path: {e}")))?;
            let loc = abs.display().to_string();
            (DatabaseKind::Sqlite, loc, shoal_sql::Database::Sqlite { path: abs })
        }
        (None, Some(url)) => (DatabaseKind::Postgres, url.clone(), shoal_sql::Database::Postgres { url: url.clone() }),
        _ => return Err(ApiError::bad_request("give exactly one of sqlite (a file path) or postgres (a URL)")),
    };
    shoal_sql::check_reachable(&db).await.map_err(|e| {
        ApiError::bad_request(format!("database '{}' ({}) is not reachable: {e}", req.name, db.redacted()))
    })?;
    let record = DatabaseRecord {
        name: req.name.clone(),
        kind,
        location,
        description: req.description.clone(),
        created_at_ms: gw.clock.unix_ms(),
    };
    match gw.cluster.command(Command::AddDatabase(record.clone())).await? {
        Outcome::Applied => Ok((StatusCode::CREATED, Json(database_json(&record)))),
        Outcome::Rejected(why) => Err(ApiError::conflict(format!("database '{}': {why}", req.name))),
        other => Err(ApiError::unavailable(format!("unexpected outcome {other:?}"))),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryJson {
    pub sql: String,
    #[serde(default)]
    pub max_rows: Option<usize>,
}

/// `POST /v1/databases/{name}/query` (admin): runs one read-only query, checked exactly as
/// `sql` steps are; a refused statement is a 400 naming the rule it broke.
pub async fn query_database(
    State(gw): Gw,
    headers: HeaderMap,
    Path(name): Path<String>,
    Body(req): Body<QueryJson>,
) -> Result<Response, ApiError> {
    require(&headers, &gw, Scope::Admin)?;
    let db = graphs(&gw).database(&name).map_err(ApiError::not_found)?;
    let limits = shoal_sql::Limits { max_rows: req.max_rows.unwrap_or(200).min(10_000), ..Default::default() };
    match shoal_sql::query(&db, &req.sql, &limits).await {
        Ok(r) => Ok(Json(json!({"object": "query.result", "database": name, "sql": r.sql, "columns": r.columns,
                                "rows": r.rows, "row_count": r.rows.len(), "truncated": r.truncated}))
        .into_response()),
        Err(e) => {
            let (status, code) = match &e {
                shoal_sql::SqlError::Refused { .. } | shoal_sql::SqlError::Parse(_) => {
                    (StatusCode::BAD_REQUEST, "sql_refused")
                }
                shoal_sql::SqlError::Query(_) => (StatusCode::BAD_REQUEST, "sql_error"),
                shoal_sql::SqlError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "sql_timeout"),
                shoal_sql::SqlError::Unreachable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            };
            let body = json!({"error": {"message": e.to_string(), "type": "invalid_request_error", "code": code, "rule": e.rule()}});
            Ok((status, Json(body)).into_response())
        }
    }
}

pub async fn list_databases(State(gw): Gw, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    require(&headers, &gw, Scope::User)?;
    let state = gw.cluster.state().read().unwrap_or_else(|p| p.into_inner());
    let data: Vec<Value> = state.databases.values().map(database_json).collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

pub async fn remove_database(
    State(gw): Gw,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require(&headers, &gw, Scope::Admin)?;
    match gw.cluster.command(Command::RemoveDatabase { name: name.clone() }).await? {
        Outcome::Applied => Ok(Json(json!({"object": "database", "name": name, "deleted": true}))),
        Outcome::Rejected(why) => Err(ApiError::not_found(format!("database '{name}': {why}"))),
        other => Err(ApiError::unavailable(format!("unexpected outcome {other:?}"))),
    }
}

/// `"model": "graph:NAME"` on `/v1/chat/completions`: runs the graph with the last user
/// message as its `question` input and answers with its `answer` output (or all its
/// outputs as JSON), in the chat completion shape; `graph_run` carries the run.
pub async fn chat_with_graph(
    gw: &Arc<GatewayState>,
    caller_id: &str,
    name: &str,
    turns: &[shoal_protocol::ChatTurn],
    stream: bool,
) -> Result<Response, ApiError> {
    let question =
        turns.iter().rev().find(|t| t.role == "user").map(|t| t.content.clone()).ok_or_else(|| {
            ApiError::bad_request("a graph chat needs a user message (it becomes the input `question`)")
        })?;
    let run = match start_run(gw, caller_id, name, None, &json!({"question": question})).await? {
        Ok(r) => r,
        Err(response) => return Ok(response),
    };
    let Some(run) = wait_run(gw, &run.id, WAIT_AT_MOST).await else {
        return Err(ApiError::not_found(format!("run {} is gone", run.id)));
    };
    let detail = run_json(gw, &run).await;
    if run.status != RunStatus::Succeeded {
        return Err(ApiError::unavailable(format!("graph run {} {}: {}", run.id, run.status.as_str(), run.error)));
    }
    let outputs = detail["outputs"].clone();
    let content = match outputs.get("answer") {
        Some(Value::String(a)) => a.clone(),
        _ => outputs.to_string(),
    };
    let model = format!("graph:{name}");
    let created = gw.clock.unix_ms() / 1000;
    let graph_run = json!({"id": run.id, "outputs": outputs});
    if stream {
        let chunks = vec![
            json!({"id": run.id, "object": "chat.completion.chunk", "created": created, "model": model,
                   "choices": [{"index": 0, "delta": {"role": "assistant", "content": content}, "finish_reason": null}],
                   "graph_run": graph_run}),
            json!({"id": run.id, "object": "chat.completion.chunk", "created": created, "model": model,
                   "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
        ];
        let events: Vec<Result<Event, Infallible>> = chunks
            .into_iter()
            .map(|c| Ok(Event::default().data(c.to_string())))
            .chain(std::iter::once(Ok(Event::default().data("[DONE]"))))
            .collect();
        return Ok(Sse::new(futures_util::stream::iter(events)).into_response());
    }
    Ok(Json(json!({
        "id": run.id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        "graph_run": graph_run,
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rerun_redoes_the_step_and_everything_after_it() {
        let raw = shoal_graph::parse(
            r#"
name: chain
steps:
  - {id: a, kind: template, template: "a"}
  - {id: b, kind: template, template: "{{ steps.a.text }}b"}
  - {id: c, kind: template, template: "{{ steps.b.text }}c"}
  - {id: d, kind: template, template: "d", after: [a]}
outputs: {text: "${steps.c.text}"}
"#,
        )
        .expect("ok");
        let def = shoal_graph::check(&raw, &Default::default()).expect("ok");
        assert_eq!(downstream(&def, "b"), ["b".to_string(), "c".to_string()].into());
        assert_eq!(downstream(&def, "a").len(), 4);
    }
}
