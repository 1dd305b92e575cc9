//! One control session with the coordinator leader: connect (mutual TLS), register a new
//! incarnation, then heartbeat capacity and load until something breaks. The caller (the
//! agent's supervisor) reconnects with backoff.

use std::sync::Arc;
use std::time::Duration;

use shoal_protocol::metric_names as m;
use shoal_protocol::quic::{self, ClientStream};
use shoal_protocol::tls::COORDINATOR_SERVER_NAME;
use shoal_protocol::{Capacity, Heartbeat, Label, ProtocolError, RefusalCode, RegisterRequest, Request, Response};
use tracing::{debug, info};

use crate::discovery;
use crate::identity::{resolve, NodeIdentity, MAX_REDIRECTS};
use crate::NodeError;

/// Everything a session needs; shared by every reconnect.
pub struct SessionContext {
    pub identity: NodeIdentity,
    pub client: quinn::ClientConfig,
    pub coordinator: String,
    pub name: String,
    pub data_address: String,
    pub capacity: Capacity,
    pub labels: Vec<Label>,
    /// Whether this node runs stdio MCP servers.
    pub mcp_stdio: bool,
    /// Where the node serves Prometheus metrics (empty: none).
    pub metrics: String,
    /// The coordinator the last session broke on.
    pub suspect: std::sync::Mutex<Option<String>>,
    /// Every coordinator's QUIC address, as the cluster last told us.
    pub known_coordinators: std::sync::Mutex<Vec<String>>,
    /// Random per process start (see `RegisterRequest::incarnation`).
    pub incarnation: u64,
    /// The replicas this node runs.
    pub host: Arc<crate::models::ModelHost>,
}

/// How long connecting to a coordinator may take before the next one is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Runs one session to its end. `on_registered` is told the generation once registered.
/// Tries the configured coordinator first, then every other coordinator the cluster named.
pub async fn run(ctx: Arc<SessionContext>, on_registered: impl Fn(u64) + Send + Sync) -> Result<(), NodeError> {
    let mut candidates = vec![ctx.coordinator.clone()];
    for c in ctx.known_coordinators.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        if !candidates.contains(c) {
            candidates.push(c.clone());
        }
    }
    // The coordinator the last session broke on goes last: it is probably down.
    if let Some(s) = ctx.suspect.lock().unwrap_or_else(|p| p.into_inner()).take() {
        if let Some(i) = candidates.iter().position(|c| *c == s) {
            let c = candidates.remove(i);
            candidates.push(c);
        }
    }
    let mut last = None;
    for target in candidates {
        match run_with(&ctx, target.clone(), &on_registered).await {
            Err(e @ (NodeError::Protocol(ProtocolError::Connect(_)) | NodeError::Address(_))) => {
                debug!(coordinator = %target, error = %e, "coordinator unreachable; trying the next");
                last = Some(e);
            }
            other => return other,
        }
    }
    Err(last.unwrap_or_else(|| NodeError::Refused("no coordinator to connect to".into())))
}

async fn run_with(
    ctx: &SessionContext,
    first: String,
    on_registered: &(impl Fn(u64) + Send + Sync),
) -> Result<(), NodeError> {
    let mut target = first;
    for _ in 0..=MAX_REDIRECTS {
        let addr = resolve(&target).await?;
        let endpoint = quic::client_endpoint(addr)?;
        let conn = tokio::time::timeout(
            CONNECT_TIMEOUT,
            quic::connect(&endpoint, addr, ctx.client.clone(), COORDINATOR_SERVER_NAME),
        )
        .await
        .map_err(|_| ProtocolError::Connect(format!("{addr}: no answer within {CONNECT_TIMEOUT:?}")))??;
        let mut stream = ClientStream::open(&conn).await?;
        let register = RegisterRequest {
            node_id: ctx.identity.node_id.clone(),
            name: ctx.name.clone(),
            address: ctx.data_address.clone(),
            capacity: ctx.capacity.clone(),
            labels: ctx.labels.clone(),
            mcp_stdio: ctx.mcp_stdio,
            metrics: ctx.metrics.clone(),
            incarnation: ctx.incarnation,
        };
        let (generation, interval, lease) = match stream.call(&Request::Register(register)).await? {
            Response::Registered { generation, heartbeat_interval_ms, lease_ms, coordinators } => {
                *ctx.known_coordinators.lock().unwrap_or_else(|p| p.into_inner()) = coordinators;
                (
                    generation,
                    Duration::from_millis(heartbeat_interval_ms as u64),
                    Duration::from_millis(lease_ms as u64),
                )
            }
            Response::Redirect { leader_address } => {
                debug!(leader = %leader_address, "redirected to the leader");
                target = leader_address;
                continue;
            }
            Response::Refused { message, .. } => return Err(NodeError::Refused(message)),
            _ => return Err(ProtocolError::Unexpected { expected: "registered" }.into()),
        };
        info!(node = %ctx.identity.node_id, generation, coordinator = %target, "registered");
        on_registered(generation);
        let result = heartbeat_loop(ctx, stream, generation, interval, lease).await;
        if result.is_err() {
            *ctx.suspect.lock().unwrap_or_else(|p| p.into_inner()) = Some(target);
        }
        return result;
    }
    Err(NodeError::Refused("too many redirects".into()))
}

async fn heartbeat_loop(
    ctx: &SessionContext,
    mut stream: ClientStream,
    generation: u64,
    interval: Duration,
    lease: Duration,
) -> Result<(), NodeError> {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    loop {
        ticker.tick().await;
        seq += 1;
        let hb = Heartbeat {
            node_id: ctx.identity.node_id.clone(),
            generation,
            seq,
            load: {
                let mut load = discovery::sample_load(&ctx.capacity);
                load.in_flight = ctx.host.in_flight();
                load.draining = ctx.host.is_draining();
                load
            },
            replicas: {
                let mut r = ctx.host.reports();
                r.extend(ctx.host.index.reports());
                r
            },
        };
        // Give up on a silent coordinator well before the lease runs out, to re-register elsewhere in time.
        let patience = (lease / 2).max(interval);
        let resp = tokio::time::timeout(patience, stream.call(&Request::Heartbeat(hb)))
            .await
            .map_err(|_| NodeError::Refused("heartbeat not acknowledged in time".into()))??;
        metrics::counter!(m::NODE_HEARTBEATS_SENT).increment(1);
        match resp {
            Response::HeartbeatAck { assignments, index_shards, .. } => {
                ctx.host.reconcile(assignments);
                ctx.host.index.reconcile(index_shards);
            }
            Response::Refused { code: RefusalCode::StaleGeneration, message } => {
                info!(generation, "this incarnation was fenced; registering again");
                return Err(NodeError::Refused(message));
            }
            Response::Refused { message, .. } => return Err(NodeError::Refused(message)),
            Response::Redirect { leader_address } => return Err(NodeError::Redirect(leader_address)),
            _ => return Err(ProtocolError::Unexpected { expected: "heartbeat ack" }.into()),
        }
    }
}
