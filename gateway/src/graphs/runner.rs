//! The runner actor: on the raft leader's embedded gateway, it drives every running run
//! from its committed state. For each run it asks the planner what is next, executes those
//! steps (with retries, timeouts and error handling), and commits each result through raft
//! before anything that depends on it is planned. When leadership moves, the old leader's
//! runner stops and the new one's resumes every run from its last committed step: a step
//! whose result was committed never runs again.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use rand::Rng;
use serde_json::{json, Value};
use shoal_coordinator::state::{Command, RunRecord, RunStatus, StepOutcome, StepRecord};
use shoal_graph::definition::{OnError, Step};
use shoal_graph::expr::resolve;
use shoal_graph::plan::{next_steps, outputs, Plan, StepResult, StepStatus};
use shoal_protocol::metric_names as m;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, info_span, warn, Instrument};

use super::steps::{execute, Executed, StepContext};
use super::Graphs;

/// How often the runner looks for runs when nothing wakes it.
const TICK: Duration = Duration::from_millis(200);
/// How often a run being driven re-reads its state (cancellation) while steps execute.
const RECHECK: Duration = Duration::from_millis(250);
/// How long a run waits for a large step output held by an unreachable coordinator before
/// that step's result is given up and the step runs again.
const LOST_OUTPUT_GRACE: Duration = Duration::from_secs(30);
/// How often finished runs past their age are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// A step's final result after its tries, with what the run records about it.
pub struct Attempted {
    pub result: StepResult,
    pub inputs: Value,
    pub error: String,
    pub attempts: u32,
    pub ran_on: String,
    pub started_ms: u64,
    pub finished_ms: u64,
}

/// Runs a step's tries: each under its timeout, with jittered exponential backoff between
/// them. The last error when every try failed, and how many were made.
pub async fn attempt_with_retries(cx: &StepContext, step: &Step, scope: &Value) -> (Result<Executed, String>, u32) {
    let tries = step.retry.attempts.max(1);
    let timeout = Duration::from_secs_f64(step.timeout_s());
    let mut last = String::new();
    for attempt in 1..=tries {
        let ceiling = step.retry.ceiling_ms(attempt);
        if ceiling > 0 {
            let pause = rand::rng().random_range(0..=ceiling);
            tokio::time::sleep(Duration::from_millis(pause)).await;
            metrics::counter!(m::GRAPH_STEP_RETRIES, "kind" => step.kind.name()).increment(1);
        }
        match tokio::time::timeout(timeout, execute(cx, step, scope)).await {
            Ok(Ok(done)) => return (Ok(done), attempt),
            Ok(Err(e)) => last = e,
            Err(_) => last = format!("timed out after {:.1} s", timeout.as_secs_f64()),
        }
        debug!(step = %step.id, attempt, error = %last, "step attempt failed");
    }
    (Err(last), tries)
}

/// Executes a step to its final result, applying `on_error` to a final failure.
pub async fn finish(cx: &StepContext, step: &Step, scope: &Value) -> Attempted {
    let started_ms = cx.graphs.clock.unix_ms();
    let began = Instant::now();
    let (r, attempts) = attempt_with_retries(cx, step, scope).await;
    let kind = step.kind.name();
    metrics::histogram!(m::GRAPH_STEP_SECONDS, "kind" => kind).record(began.elapsed().as_secs_f64());
    let finished_ms = cx.graphs.clock.unix_ms();
    let here = cx.graphs.here();
    match r {
        Ok(done) => Attempted {
            result: StepResult { status: StepStatus::Succeeded, output: done.output },
            inputs: done.inputs,
            error: String::new(),
            attempts,
            ran_on: done.ran_on,
            started_ms,
            finished_ms,
        },
        Err(error) => {
            let (status, output) = match &step.on_error {
                OnError::Fail => (StepStatus::Failed, json!({"error": error})),
                OnError::Default(v) => match resolve(v, scope) {
                    Ok(v) => (StepStatus::Recovered, v),
                    Err(e) => (StepStatus::Failed, json!({"error": format!("{error}; and its default: {e}")})),
                },
                OnError::Branch(_) => (StepStatus::Recovered, json!({"error": error})),
            };
            Attempted {
                result: StepResult { status, output },
                inputs: Value::Null,
                error,
                attempts,
                ran_on: here,
                started_ms,
                finished_ms,
            }
        }
    }
}

fn outcome_of(s: StepStatus) -> StepOutcome {
    match s {
        StepStatus::Succeeded => StepOutcome::Succeeded,
        StepStatus::Skipped => StepOutcome::Skipped,
        StepStatus::Failed => StepOutcome::Failed,
        StepStatus::Recovered => StepOutcome::Recovered,
    }
}

/// The runner: wakes on every view change (and every [`TICK`]); while this process's
/// coordinator leads, drives each running run that has no driver yet.
pub async fn run(graphs: Arc<Graphs>) {
    let mut drivers: HashMap<String, JoinHandle<()>> = HashMap::new();
    let mut leading = false;
    let mut pruned = Instant::now();
    let mut changes = graphs.cluster.index_changes();
    loop {
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep(TICK) => {}
        }
        graphs.mirror_outputs();
        if !graphs.cluster.is_leader_here() {
            if leading {
                info!(runs = drivers.len(), "no longer the leader: the new leader's runner resumes the runs");
                for (_, d) in drivers.drain() {
                    d.abort();
                }
            }
            leading = false;
            continue;
        }
        if !leading {
            // A new leader may not have applied everything committed yet: confirm the
            // read point first, so no committed step is missed (and run again).
            if let Err(e) = graphs.cluster.read_index().await {
                debug!(error = %e, "new leader: read point not confirmed yet");
                continue;
            }
            leading = true;
            info!("leading: resuming running graph runs");
        }
        drivers.retain(|_, d| !d.is_finished());
        let running: Vec<String> = {
            let state = graphs.cluster.state().read().unwrap_or_else(|p| p.into_inner());
            state.runs.values().filter(|r| r.status == RunStatus::Running).map(|r| r.id.clone()).collect()
        };
        metrics::gauge!(m::GRAPH_RUNS_IN_FLIGHT).set(running.len() as f64);
        for id in running {
            if !drivers.contains_key(&id) {
                let span = info_span!("graph_run", run = %id);
                drivers.insert(id.clone(), tokio::spawn(drive(graphs.clone(), id).instrument(span)));
            }
        }
        if pruned.elapsed() >= PRUNE_EVERY {
            pruned = Instant::now();
            let before_ms = graphs.clock.unix_ms().saturating_sub(graphs.retention.max_age_ms);
            let stale = {
                let state = graphs.cluster.state().read().unwrap_or_else(|p| p.into_inner());
                state.runs.values().any(|r| r.status != RunStatus::Running && r.finished_at_ms < before_ms)
            };
            if stale {
                let cmd = Command::PruneRuns { keep: graphs.retention.keep_finished, before_ms };
                if let Err(e) = graphs.cluster.command(cmd).await {
                    warn!(error = %e, "pruning old runs");
                }
            }
        }
    }
}

/// Commits a command, retrying briefly (a leader change in between is answered by the
/// next leader). `false` when it could not be committed: the driver stops, and the
/// runner that leads next resumes the run.
async fn commit(graphs: &Graphs, cmd: Command) -> bool {
    for attempt in 0..3 {
        match graphs.cluster.command(cmd.clone()).await {
            Ok(_) => return true,
            Err(e) => {
                warn!(error = %e, attempt, kind = cmd.kind(), "commit failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        if !graphs.cluster.is_leader_here() {
            return false;
        }
    }
    false
}

async fn end(graphs: &Graphs, run: &RunRecord, status: RunStatus, outputs: Value, error: String) {
    let cmd = Command::FinishRun {
        run: run.id.clone(),
        status,
        outputs: if outputs.is_null() { String::new() } else { outputs.to_string() },
        error,
        at_ms: graphs.clock.unix_ms(),
        keep_finished: graphs.retention.keep_finished,
    };
    if commit(graphs, cmd).await {
        metrics::counter!(m::GRAPH_RUNS, "graph" => graph_label(&run.graph), "status" => status.as_str()).increment(1);
        info!(run = %run.id, status = status.as_str(), "run finished");
        graphs.events.close(&run.id);
    }
}

/// Built-in graph names as they are; other graphs as `registered` (bounded series).
fn graph_label(name: &str) -> String {
    if shoal_graph::builtin::is_builtin(name) {
        name.to_string()
    } else {
        "registered".to_string()
    }
}

fn record(id: &str, kind: &str, status: StepStatus, error: String, at_ms: u64) -> StepRecord {
    StepRecord {
        id: id.to_string(),
        kind: kind.to_string(),
        outcome: outcome_of(status),
        inputs: String::new(),
        output: String::new(),
        output_sha256: String::new(),
        output_bytes: 0,
        output_stored_by: 0,
        error,
        attempts: 0,
        started_at_ms: at_ms,
        finished_at_ms: at_ms,
        ran_on: String::new(),
    }
}

/// Drives one run to its end (or until this process stops leading).
async fn drive(graphs: Arc<Graphs>, run_id: String) {
    let mut executing: JoinSet<(String, Attempted)> = JoinSet::new();
    let mut names: BTreeSet<String> = BTreeSet::new();
    let mut unreadable_since: Option<Instant> = None;
    loop {
        let Some(run) = graphs.run(&run_id) else { return };
        if run.status != RunStatus::Running {
            return; // cancelled (dropping `executing` aborts its steps) or ended
        }
        let graph = match graphs.definition(&run.graph, Some(run.version).filter(|v| *v != 0)) {
            Ok((_, g)) => Arc::new(g),
            Err(e) => return end(&graphs, &run, RunStatus::Failed, Value::Null, e.to_string()).await,
        };
        let inputs: Value = serde_json::from_str(&run.inputs).unwrap_or(Value::Null);
        let results = match graphs.results(&run).await {
            Ok(r) => {
                unreadable_since = None;
                r
            }
            Err(e) => {
                warn!(error = %e, "reading the run's committed results");
                // A large output no live coordinator holds: after a grace period, drop
                // that result so the step runs again (the only case a committed step does).
                if unreadable_since.get_or_insert_with(Instant::now).elapsed() >= LOST_OUTPUT_GRACE {
                    for s in run.steps.values().filter(|s| !graphs.holds_output(s)) {
                        warn!(step = %s.id, sha256 = %s.output_sha256, "a step's output is lost: running the step again");
                        let cmd = Command::ForgetStep {
                            run: run_id.clone(),
                            step: s.id.clone(),
                            output_sha256: s.output_sha256.clone(),
                        };
                        if !commit(&graphs, cmd).await {
                            return;
                        }
                    }
                    unreadable_since = None;
                }
                tokio::time::sleep(RECHECK).await;
                continue;
            }
        };
        let now = graphs.clock.unix_ms();
        match next_steps(&graph, &inputs, &results, &names) {
            Plan::Done => {
                return match outputs(&graph, &inputs, &results) {
                    Ok(o) => end(&graphs, &run, RunStatus::Succeeded, o, String::new()).await,
                    Err(e) => end(&graphs, &run, RunStatus::Failed, Value::Null, e).await,
                };
            }
            Plan::Failed { step, error } => {
                return end(&graphs, &run, RunStatus::Failed, Value::Null, format!("step {step}: {error}")).await;
            }
            Plan::Continue { ready, skip, fail } => {
                let mut decided = false;
                for id in skip {
                    let kind = graph.steps.iter().find(|s| s.id == id).map_or("", |s| s.kind.name());
                    let step = record(&id, kind, StepStatus::Skipped, String::new(), now);
                    if !commit(&graphs, Command::FinishStep { run: run_id.clone(), step: Box::new(step) }).await {
                        return;
                    }
                    decided = true;
                }
                for (id, e) in fail {
                    let kind = graph.steps.iter().find(|s| s.id == id).map_or("", |s| s.kind.name());
                    let mut step = record(&id, kind, StepStatus::Failed, e.clone(), now);
                    step.output = json!({"error": e}).to_string();
                    if !commit(&graphs, Command::FinishStep { run: run_id.clone(), step: Box::new(step) }).await {
                        return;
                    }
                    decided = true;
                }
                if decided {
                    continue;
                }
                let key_models = {
                    let state = graphs.cluster.state().read().unwrap_or_else(|p| p.into_inner());
                    state.api_keys.values().find(|k| k.id == run.key_id).map(|k| k.models.clone()).unwrap_or_default()
                };
                let scope = shoal_graph::plan::scope(&inputs, &results);
                for id in ready {
                    let Some(step) = graph.steps.iter().find(|s| s.id == id).cloned() else { continue };
                    let cx = StepContext {
                        graphs: graphs.clone(),
                        graph: graph.clone(),
                        run: run_id.clone(),
                        models: Arc::new(key_models.clone()),
                        depth: 0,
                        journal: true,
                    };
                    graphs.events.step_started(&run_id, &id, step.kind.name());
                    let scope = scope.clone();
                    names.insert(id.clone());
                    let span = info_span!("graph_step", step = %id, kind = step.kind.name());
                    executing.spawn(
                        async move {
                            let done = std::panic::AssertUnwindSafe(finish(&cx, &step, &scope)).catch_unwind().await;
                            let done = done.unwrap_or_else(|_| {
                                let error = "the step panicked (a bug: please report it)".to_string();
                                Attempted {
                                    result: StepResult { status: StepStatus::Failed, output: json!({"error": error}) },
                                    inputs: Value::Null,
                                    error,
                                    attempts: 1,
                                    ran_on: cx.graphs.here(),
                                    started_ms: 0,
                                    finished_ms: 0,
                                }
                            });
                            (step.id.clone(), done)
                        }
                        .instrument(span),
                    );
                }
                if executing.is_empty() {
                    return end(&graphs, &run, RunStatus::Failed, Value::Null, "no step can run".into()).await;
                }
                tokio::select! {
                    joined = executing.join_next() => {
                        let Some(Ok((id, done))) = joined else { continue };
                        names.remove(&id);
                        let kind = graph.steps.iter().find(|s| s.id == id).map_or("", |s| s.kind.name());
                        let mut step = record(&id, kind, done.result.status, done.error, done.started_ms);
                        step.finished_at_ms = done.finished_ms;
                        step.attempts = done.attempts;
                        step.ran_on = done.ran_on;
                        step.inputs = if done.inputs.is_null() { String::new() } else { done.inputs.to_string() };
                        if let Err(e) = graphs.record_output(&mut step, &done.result.output) {
                            step.outcome = StepOutcome::Failed;
                            step.error = e.clone();
                            step.output = json!({"error": e}).to_string();
                        }
                        if !step.output_sha256.is_empty() {
                            // A large output lives outside the raft state: a majority of
                            // coordinators hold it before the result is committed.
                            graphs.replicate_output(&step.output_sha256).await;
                        }
                        if !commit(&graphs, Command::FinishStep { run: run_id.clone(), step: Box::new(step) }).await {
                            return;
                        }
                    }
                    _ = tokio::time::sleep(RECHECK) => {}
                }
            }
        }
    }
}
