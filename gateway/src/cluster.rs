//! The gateway's side of the control plane: a replica of the cluster state kept current by a
//! watch stream from a coordinator, and writes forwarded to the coordinators.
//!
//! - The view: the coordinator sends its applied state, then every applied entry's change,
//!   which this replica applies with the coordinators' own pure state machine
//!   ([`shoal_coordinator::view::apply_change`]), plus soft state (raft status, coordinator
//!   addresses, node load reports) every half second.
//! - When the watched coordinator goes silent, the gateway tries the others (every address
//!   it was given or has heard of) and meanwhile serves from the view it has. Nothing here
//!   expires: a gateway whose coordinators are all gone keeps routing to the placements it
//!   knows, and each request that fails on a node fails over as usual.
//! - Writes go to the watched coordinator first (it forwards them to the leader), then to
//!   the others; with none answering they fail at once with "control plane unavailable".
//!   After a write the gateway waits until its own view has applied it, so a client that
//!   creates something and uses it in the next request finds it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use shoal_coordinator::raft::Proposal;
use shoal_coordinator::state::{ClusterState, Command, Outcome};
use shoal_coordinator::view::{apply_change, SoftView, ViewChange, SOFT_EVERY};
use shoal_protocol::metric_names as m;
use shoal_protocol::pool::{CallError, Pool};
use shoal_protocol::quic::ClientStream;
use shoal_protocol::tls::COORDINATOR_SERVER_NAME;
use shoal_protocol::{RefusalCode, Request, Response};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::GatewayError;

/// How long connecting to one coordinator may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(700);
/// A watch stream silent this long is given up (soft state comes every 500 ms).
const SILENCE: Duration = Duration::from_secs(3);
/// How long a write or read point may take, however many coordinators it tries (each
/// waits up to 5 s for a leader).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a write waits for this gateway's view to apply it.
const CATCH_UP: Duration = Duration::from_secs(3);
/// A gateway moves its view to the leader at most this often.
const MOVE_AT_MOST_EVERY: Duration = Duration::from_secs(10);
/// Pause between rounds of reconnection attempts.
const RETRY_PAUSE: Duration = Duration::from_millis(300);

/// Where the view comes from, and where writes go.
#[derive(Clone)]
pub enum Source {
    /// The gateway embedded in a coordinator: its view is that coordinator's own applied
    /// state (shared in-process, so it is never behind it), and writes and read points go
    /// to that coordinator in-process (its writer forwards them to the leader). This saves a
    /// loopback QUIC round trip per write and the wait for the view to catch up.
    Embedded {
        quic: SocketAddr,
        writer: shoal_coordinator::writer::Writer,
        control: Arc<shoal_coordinator::control::ControlPlane>,
    },
    /// Any of these coordinators (`host:port`), and any other the view names.
    Any(Vec<String>),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Embedded { quic, .. } => write!(f, "embedded in the coordinator at {quic}"),
            Source::Any(list) => write!(f, "any of {list:?}"),
        }
    }
}

/// A snapshot of how the view stands, for readiness, `/v1/cluster` and metrics.
#[derive(Debug, Clone, Default)]
pub struct ViewStatus {
    /// The view was loaded at least once.
    pub loaded: bool,
    /// A coordinator is streaming to this gateway now.
    pub connected: bool,
    /// The log index the view has applied.
    pub index: u64,
    /// The watched coordinator's soft state, as last received.
    pub soft: Arc<SoftView>,
}

pub struct Cluster {
    state: Arc<RwLock<ClusterState>>,
    index: watch::Sender<u64>,
    soft: RwLock<Arc<SoftView>>,
    /// The soft state's load reports, by placement.
    loads: RwLock<std::collections::HashMap<String, u32>>,
    /// Nodes whose last heartbeat said they are draining (shutting down).
    draining: RwLock<std::collections::HashSet<String>>,
    loaded: AtomicBool,
    connected: AtomicBool,
    source: Source,
    /// Coordinators heard of (given, and from soft state), in the order to try them.
    known: Mutex<Vec<String>>,
    /// The coordinator the view comes from now.
    watching: Mutex<Option<String>>,
    /// The leader this gateway moved its view to, and when.
    preferred: Mutex<Option<(String, Instant)>>,
    pool: Pool,
}

impl Cluster {
    /// A gateway's cluster, connecting with `client` (a gateway or coordinator certificate).
    pub fn new(source: Source, client: quinn::ClientConfig) -> Result<Arc<Self>, GatewayError> {
        let embedded = matches!(source, Source::Embedded { .. });
        let (known, state) = match &source {
            Source::Embedded { quic, writer, .. } => (vec![quic.to_string()], writer.raft().state().clone()),
            Source::Any(list) => (list.clone(), Arc::new(RwLock::new(ClusterState::default()))),
        };
        Ok(Arc::new(Self {
            state,
            index: watch::channel(0).0,
            soft: RwLock::new(Arc::new(SoftView::default())),
            loads: RwLock::new(Default::default()),
            draining: RwLock::new(Default::default()),
            // An embedded gateway's view is its coordinator's state: there from the start.
            loaded: AtomicBool::new(embedded),
            connected: AtomicBool::new(embedded),
            source,
            known: Mutex::new(known),
            watching: Mutex::new(None),
            preferred: Mutex::new(None),
            pool: Pool::with_connect_timeout(client, CONNECT_TIMEOUT)?,
        }))
    }

    /// Whether this gateway is embedded in the coordinator that leads the raft group now
    /// (graph runs execute there).
    pub fn is_leader_here(&self) -> bool {
        match &self.source {
            Source::Embedded { writer, .. } => writer.raft().status().is_leader(),
            Source::Any(_) => false,
        }
    }

    /// Wakes on every change of the view's applied index.
    pub fn index_changes(&self) -> watch::Receiver<u64> {
        self.index.subscribe()
    }

    /// The pooled connections to coordinators (this gateway's certificate).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The replica of the cluster state (read it, never write it).
    pub fn state(&self) -> &Arc<RwLock<ClusterState>> {
        &self.state
    }

    pub fn status(&self) -> ViewStatus {
        ViewStatus {
            loaded: self.loaded.load(Ordering::Acquire),
            connected: self.connected.load(Ordering::Acquire),
            index: *self.index.borrow(),
            soft: self.soft.read().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }

    /// Whether a view has been received (an embedded gateway's always is).
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Outstanding work on `placement` as its node last reported it to the leader.
    /// Whether a node's last heartbeat said it is draining.
    pub fn is_draining(&self, node: &str) -> bool {
        self.draining.read().unwrap_or_else(|p| p.into_inner()).contains(node)
    }

    pub fn reported_load(&self, placement: &str) -> u32 {
        self.loads.read().unwrap_or_else(|p| p.into_inner()).get(placement).copied().unwrap_or(0)
    }

    /// Waits until the view is loaded (or `within` passes); returns whether it is.
    pub async fn wait_loaded(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while !self.loaded.load(Ordering::Acquire) {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Waits until the view has applied `index` (at most `within`).
    async fn catch_up(&self, index: u64, within: Duration) {
        if let Source::Embedded { writer, .. } = &self.source {
            let mut status = writer.raft().watch_status();
            if tokio::time::timeout(within, status.wait_for(|s| s.applied >= index)).await.is_err() {
                warn!(index, "this coordinator did not apply a write in time");
            }
            return;
        }
        let mut rx = self.index.subscribe();
        if tokio::time::timeout(within, rx.wait_for(|i| *i >= index)).await.is_err() {
            warn!(index, view = *self.index.borrow(), "the view did not reach a write in time");
        }
    }

    /// The coordinators to try, in order: the leader this gateway moved to, the one it
    /// watches, then every other it knows.
    fn targets(&self) -> Vec<String> {
        let mut list = self.known.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let first = [
            self.preferred.lock().unwrap_or_else(|p| p.into_inner()).clone().map(|(a, _)| a),
            self.watching.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        ];
        for a in first.into_iter().flatten().rev() {
            list.retain(|x| *x != a);
            list.insert(0, a);
        }
        list
    }

    /// The leader's address when `soft` (from the coordinator at `watching`) names another
    /// member as leader, and this gateway has not moved in the last [`MOVE_AT_MOST_EVERY`]
    /// (a leader it cannot reach must not make it bounce).
    fn leader_elsewhere(&self, soft: &SoftView, watching: &str) -> Option<String> {
        if soft.leader_id == 0 || soft.leader_id == soft.coordinator_id {
            return None;
        }
        let leader = soft.coordinators.iter().find(|(id, _, _)| *id == soft.leader_id)?.1.clone();
        let recent = self
            .preferred
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|(_, at)| at.elapsed() < MOVE_AT_MOST_EVERY);
        (leader != watching && !recent).then_some(leader)
    }

    /// Commits a command through the coordinators; see [`Self::submit`].
    pub async fn command(&self, cmd: Command) -> Result<Outcome, GatewayError> {
        self.submit(Proposal::Command(cmd)).await
    }

    /// Commits a proposal through the coordinators and waits until this gateway's view
    /// includes it. Tries the watched coordinator first, then the others; a coordinator
    /// that cannot be reached, or answers that it has no leader, passes the write on to the
    /// next (nothing was committed). Fails with [`GatewayError::ControlPlaneUnavailable`]
    /// when none takes it.
    pub async fn submit(&self, proposal: Proposal) -> Result<Outcome, GatewayError> {
        if let Source::Embedded { writer, .. } = &self.source {
            let (outcome, index) = writer.submit_indexed(proposal).await?;
            self.catch_up(index, CATCH_UP).await;
            return Ok(outcome);
        }
        let bytes = shoal_protocol::frame::to_payload(&proposal)?.to_vec();
        let request = Request::Propose { proposal: bytes };
        let mut why = Vec::new();
        // One deadline for the write, however many coordinators it tries.
        let deadline = tokio::time::Instant::now() + WRITE_TIMEOUT;
        for addr in self.targets() {
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            let addr = match shoal_protocol::quic::resolve(&addr).await {
                Ok(a) => a,
                Err(e) => {
                    why.push(e.to_string());
                    continue;
                }
            };
            match self.pool.call(addr, COORDINATOR_SERVER_NAME, &request, deadline).await {
                Ok(Response::Proposed { outcome, index }) => {
                    let outcome: Outcome = shoal_protocol::frame::decode(&outcome)?;
                    self.catch_up(index, CATCH_UP).await;
                    return Ok(outcome);
                }
                Ok(_) => return Err(GatewayError::Refused("unexpected answer to a write".into())),
                Err(e) if e.nothing_sent() => why.push(e.to_string()),
                // The coordinator died with the write in flight: its fate is unknown, and the
                // next coordinator is asked (every write the gateway makes carries its own
                // ids, so a second commit of one is refused or changes nothing).
                Err(e @ CallError::Broken { .. }) => why.push(e.to_string()),
                Err(CallError::Timeout { .. }) => return Err(GatewayError::WriteTimeout),
                Err(CallError::Refused { message, .. }) => return Err(GatewayError::Refused(message)),
                Err(e) => return Err(GatewayError::Refused(e.to_string())),
            }
        }
        metrics::counter!(m::VIEW_WRITES_REFUSED).increment(1);
        Err(GatewayError::ControlPlaneUnavailable(if why.is_empty() {
            "no coordinator is known".into()
        } else {
            why.join("; ")
        }))
    }

    /// A linearizable read: waits until the view has applied everything committed now.
    pub async fn read_index(&self) -> Result<(), GatewayError> {
        if let Source::Embedded { writer, .. } = &self.source {
            writer.raft().read_index().await?;
            let index = writer.raft().status().applied;
            self.catch_up(index, CATCH_UP).await;
            return Ok(());
        }
        let mut why = Vec::new();
        let deadline = tokio::time::Instant::now() + WRITE_TIMEOUT;
        for addr in self.targets() {
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            let addr = match shoal_protocol::quic::resolve(&addr).await {
                Ok(a) => a,
                Err(e) => {
                    why.push(e.to_string());
                    continue;
                }
            };
            match self.pool.call(addr, COORDINATOR_SERVER_NAME, &Request::ReadIndex, deadline).await {
                Ok(Response::ReadIndexed { index }) => {
                    self.catch_up(index, CATCH_UP).await;
                    return Ok(());
                }
                Ok(_) => return Err(GatewayError::Refused("unexpected answer to a read".into())),
                Err(e) => why.push(e.to_string()),
            }
        }
        Err(GatewayError::ControlPlaneUnavailable(why.join("; ")))
    }

    /// Keeps the view current for as long as the process runs.
    pub async fn run(self: Arc<Self>) {
        if let Source::Embedded { writer, control, .. } = &self.source {
            return self.follow_local(writer.raft().clone(), control.clone()).await;
        }
        loop {
            let mut moved = false;
            for addr in self.targets() {
                match self.watch_one(&addr).await {
                    // Left on purpose, for the leader: go to it at once.
                    Ok(()) => {
                        moved = true;
                        break;
                    }
                    Err(e) => debug!(%addr, error = %e, "view stream ended"),
                }
                if self.connected.swap(false, Ordering::AcqRel) {
                    metrics::gauge!(m::VIEW_CONNECTED).set(0.0);
                    warn!(%addr, "lost the cluster view's coordinator; serving from the cached view");
                }
            }
            if !moved {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }

    /// The embedded gateway's view: the coordinator's own state (already shared); this keeps
    /// the index and the soft state current, the soft state every [`SOFT_EVERY`] and at once
    /// when the leader, term or membership changes.
    async fn follow_local(
        &self,
        raft: shoal_coordinator::raft::RaftHandle,
        control: Arc<shoal_coordinator::control::ControlPlane>,
    ) {
        self.loaded.store(true, Ordering::Release);
        self.connected.store(true, Ordering::Release);
        let mut status = raft.watch_status();
        let mut tick = tokio::time::interval(SOFT_EVERY);
        let mut shape = None;
        loop {
            let s = status.borrow_and_update().clone();
            self.index.send_if_modified(|i| std::mem::replace(i, s.applied) != s.applied);
            let now = (s.leader_id, s.term, s.role, s.voters.clone(), s.learners.clone());
            if shape.as_ref() != Some(&now) {
                shape = Some(now);
                self.set_soft(shoal_coordinator::watch::soft_view(&control));
            }
            tokio::select! {
                changed = status.changed() => if changed.is_err() { return },
                _ = tick.tick() => self.set_soft(shoal_coordinator::watch::soft_view(&control)),
            }
        }
    }

    fn set_soft(&self, soft: SoftView) {
        self.learn(&soft);
        let loads = soft.loads.iter().cloned().collect();
        *self.loads.write().unwrap_or_else(|p| p.into_inner()) = loads;
        let draining = soft.leases.iter().filter(|l| l.load.draining).map(|l| l.node.clone()).collect();
        *self.draining.write().unwrap_or_else(|p| p.into_inner()) = draining;
        *self.soft.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(soft);
    }

    /// Follows one coordinator's view until it ends or goes silent.
    async fn watch_one(&self, name: &str) -> Result<(), GatewayError> {
        let addr = shoal_protocol::quic::resolve(name).await?;
        let conn = self.pool.connection(addr, COORDINATOR_SERVER_NAME).await?;
        let mut stream = ClientStream::open(&conn).await?;
        let from = *self.index.borrow();
        stream.send(&Request::Watch { from }).await?;
        let mut pending: Vec<u8> = Vec::new();
        loop {
            let answer = match tokio::time::timeout(SILENCE, stream.recv()).await {
                Ok(a) => a,
                Err(_) => {
                    self.pool.forget(addr, COORDINATOR_SERVER_NAME);
                    return Err(GatewayError::ControlPlaneUnavailable(format!("{addr} went silent")));
                }
            };
            match answer {
                Err(e) => {
                    self.pool.forget(addr, COORDINATOR_SERVER_NAME);
                    return Err(e.into());
                }
                Ok(Response::ViewState { index, data, last }) => {
                    pending.extend_from_slice(&data);
                    if last {
                        let state: ClusterState = shoal_protocol::frame::decode(&std::mem::take(&mut pending))?;
                        *self.state.write().unwrap_or_else(|p| p.into_inner()) = state;
                        self.index.send_replace(index);
                        metrics::counter!(m::VIEW_STATES_RECEIVED).increment(1);
                        metrics::gauge!(m::VIEW_INDEX).set(index as f64);
                        self.loaded.store(true, Ordering::Release);
                        *self.watching.lock().unwrap_or_else(|p| p.into_inner()) = Some(name.to_string());
                        if !self.connected.swap(true, Ordering::AcqRel) {
                            metrics::gauge!(m::VIEW_CONNECTED).set(1.0);
                            info!(%addr, index, "receiving the cluster view");
                        }
                    }
                }
                Ok(Response::ViewChanges { entries }) => {
                    let mut last = None;
                    {
                        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
                        for e in &entries {
                            let change: ViewChange = shoal_protocol::frame::decode(&e.data)?;
                            apply_change(&mut state, &change);
                            last = Some(e.index);
                        }
                    }
                    if let Some(index) = last {
                        self.index.send_replace(index);
                        metrics::gauge!(m::VIEW_INDEX).set(index as f64);
                    }
                }
                Ok(Response::ViewSoft { data }) => {
                    let soft: SoftView = shoal_protocol::frame::decode(&data)?;
                    let leader = self.leader_elsewhere(&soft, name);
                    self.set_soft(soft);
                    if let Some(leader) = leader {
                        // Only the leader hears heartbeats: watching it gives the router the
                        // nodes' load reports and `/v1/nodes` their last heartbeats.
                        info!(from = %addr, to = %leader, "moving the cluster view to the leader");
                        *self.preferred.lock().unwrap_or_else(|p| p.into_inner()) = Some((leader, Instant::now()));
                        return Ok(());
                    }
                }
                Ok(Response::Refused { code: RefusalCode::Unauthenticated, message }) => {
                    return Err(GatewayError::Refused(message));
                }
                Ok(other) => {
                    return Err(GatewayError::Refused(format!("unexpected answer on the view stream: {other:?}")));
                }
            }
        }
    }

    /// Adds coordinators named by soft state to the ones to try.
    fn learn(&self, soft: &SoftView) {
        if matches!(self.source, Source::Embedded { .. }) {
            return;
        }
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        for (_, addr, _) in &soft.coordinators {
            if shoal_protocol::address::split_host_port(addr).is_some() && !known.contains(addr) {
                known.push(addr.clone());
            }
        }
    }
}
