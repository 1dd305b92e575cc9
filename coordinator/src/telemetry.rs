//! The Prometheus recorder (one per process) and the gauges refreshed at scrape time.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use shoal_protocol::metric_names as m;

use crate::raft::RaftStatus;
use crate::state::{ClusterState, NodeState};
use crate::CoordinatorError;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

const LATENCY_BUCKETS: &[f64] = &[0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// Whole requests and first tokens of text generation take longer than control-plane calls.
const GENERATION_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

/// Installs the process-wide recorder once and returns its handle (`shoal up` and
/// `shoal coordinator` render it on the gateway's `/metrics`).
pub fn install() -> Result<PrometheusHandle, CoordinatorError> {
    install_with(None)
}

/// Like [`install`], also serving `/metrics` on `listen` (a standalone `shoal join` node):
/// every command sets up the same recorder, with the same histogram buckets.
pub fn install_with(listen: Option<std::net::SocketAddr>) -> Result<PrometheusHandle, CoordinatorError> {
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let recorder = match listen {
        None => builder()?.build_recorder(),
        Some(addr) => {
            let (recorder, exporter) = builder()?
                .with_http_listener(addr)
                .build()
                .map_err(|e| CoordinatorError::Metrics(format!("serving metrics on {addr}: {e}")))?;
            tokio::spawn(exporter);
            recorder
        }
    };
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| CoordinatorError::Metrics(e.to_string()))?;
    let handle = HANDLE.get_or_init(|| handle).clone();
    register_zeroes();
    Ok(handle)
}

fn builder() -> Result<PrometheusBuilder, CoordinatorError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), LATENCY_BUCKETS)
        .map_err(|e| CoordinatorError::Metrics(e.to_string()))?
        .set_buckets_for_metric(Matcher::Full(m::REQUEST_SECONDS.into()), GENERATION_BUCKETS)
        .map_err(|e| CoordinatorError::Metrics(e.to_string()))?
        .set_buckets_for_metric(Matcher::Full(m::TTFT_SECONDS.into()), GENERATION_BUCKETS)
        .map_err(|e| CoordinatorError::Metrics(e.to_string()))?
        .set_buckets_for_metric(Matcher::Full(m::INTER_TOKEN_SECONDS.into()), LATENCY_BUCKETS)
        .map_err(|e| CoordinatorError::Metrics(e.to_string()))?
        .set_buckets_for_metric(Matcher::Full(m::NODE_MODEL_LOAD_SECONDS.into()), GENERATION_BUCKETS)
        .map_err(|e| CoordinatorError::Metrics(e.to_string()))?
        .set_buckets_for_metric(Matcher::Full(m::GRAPH_STEP_SECONDS.into()), GENERATION_BUCKETS)
        .map_err(|e| CoordinatorError::Metrics(e.to_string()))?
        .set_buckets_for_metric(Matcher::Full(m::KB_INGEST_SECONDS.into()), GENERATION_BUCKETS)
        .map_err(|e| CoordinatorError::Metrics(e.to_string()))?
        .set_buckets_for_metric(Matcher::Full(m::NODE_BATCH_SIZE.into()), BATCH_BUCKETS)
        .map_err(|e| CoordinatorError::Metrics(e.to_string()))?
        .set_buckets_for_metric(Matcher::Full(m::NODE_EMBED_BATCH_SIZE.into()), BATCH_BUCKETS)
        .map_err(|e| CoordinatorError::Metrics(e.to_string()))
}

/// Makes the counters operators alert on visible at zero before the first event.
fn register_zeroes() {
    for reason in ["oversized", "truncated", "malformed", "version"] {
        metrics::counter!(m::FRAMES_REFUSED, "reason" => reason).increment(0);
    }
    for reason in ["invalid_token", "expired_token"] {
        metrics::counter!(m::JOINS_REFUSED, "reason" => reason).increment(0);
    }
    metrics::counter!(m::FRAMES_RECEIVED).increment(0);
    metrics::counter!(m::HEARTBEATS).increment(0);
    metrics::counter!(m::LEASES_EXPIRED).increment(0);
    metrics::counter!(m::JOINS).increment(0);
    metrics::counter!(m::RAFT_LEADER_CHANGES).increment(0);
    metrics::counter!(m::RAFT_APPLIED_ENTRIES).increment(0);
    metrics::counter!(m::RAFT_SNAPSHOTS_SENT).increment(0);
    metrics::counter!(m::RAFT_MESSAGES_RESENT).increment(0);
    metrics::counter!(m::RAFT_SNAPSHOTS_INSTALLED).increment(0);
    metrics::counter!(m::RAFT_CHECKPOINTS).increment(0);
    metrics::counter!(m::RAFT_READ_INDEX).increment(0);
    metrics::counter!(m::RAFT_FORWARDED).increment(0);
}

/// Sets the gauges that are read off the current state rather than counted.
/// The raft gauges (set by the raft driver whenever its status changes).
pub fn refresh_raft(status: &RaftStatus) {
    metrics::gauge!(m::RAFT_TERM).set(status.term as f64);
    metrics::gauge!(m::RAFT_COMMIT_INDEX).set(status.commit as f64);
    metrics::gauge!(m::RAFT_APPLIED_INDEX).set(status.applied as f64);
    metrics::gauge!(m::RAFT_IS_LEADER).set(if status.is_leader() { 1.0 } else { 0.0 });
    let entries = (status.last_index + 1).saturating_sub(status.first_index);
    metrics::gauge!(m::RAFT_LOG_ENTRIES).set(entries as f64);
}

/// Gauges computed from the state (refreshed when `/metrics` is scraped).
pub fn refresh_state(state: &ClusterState) {
    for s in NodeState::ALL {
        metrics::gauge!(m::NODES, "state" => s.as_str()).set(state.count_nodes(s) as f64);
    }
    let mut accelerators: std::collections::BTreeMap<(String, String), u64> = Default::default();
    for n in state.nodes.values().filter(|n| n.state == NodeState::Ready) {
        for a in &n.capacity.accelerators {
            *accelerators.entry((format!("{:?}", a.kind).to_lowercase(), a.vendor.clone())).or_default() += 1;
        }
    }
    for ((kind, vendor), count) in accelerators {
        metrics::gauge!(m::ACCELERATORS, "kind" => kind, "vendor" => vendor).set(count as f64);
    }
    let mut replicas: std::collections::BTreeMap<(String, &'static str), u64> = Default::default();
    for n in state.nodes.values() {
        for phase in ["assigned", "loading", "ready", "failed"] {
            replicas.insert((n.name.clone(), phase), 0);
        }
    }
    for p in state.placements.values() {
        if let Some(n) = state.nodes.get(&p.node) {
            let phase = match p.phase_str() {
                "ready" => "ready",
                "loading" => "loading",
                "failed" => "failed",
                _ => "assigned",
            };
            *replicas.entry((n.name.clone(), phase)).or_default() += 1;
        }
    }
    for ((node, phase), count) in replicas {
        metrics::gauge!(m::NODE_REPLICAS, "node" => node, "phase" => phase).set(count as f64);
    }
}

/// The age of each ready node's last heartbeat, from the leader's lease view (only a
/// process that sees the leases publishes these).
pub fn refresh_leases(leases: &[crate::view::LeaseView], state: &ClusterState, now_ms: u64) {
    for l in leases.iter().filter(|l| l.last_heartbeat_unix_ms > 0) {
        let Some(n) = state.nodes.get(&l.node) else { continue };
        if n.state != NodeState::Ready || n.generation != l.generation {
            continue;
        }
        let age = now_ms.saturating_sub(l.last_heartbeat_unix_ms) as f64 / 1000.0;
        metrics::gauge!(m::NODE_HEARTBEAT_AGE, "node" => n.name.clone()).set(age);
    }
}
