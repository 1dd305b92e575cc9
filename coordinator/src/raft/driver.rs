//! The raft driver: runs a [`RaftCore`] on a dedicated thread (its disk writes block) with
//! a tick timer and a bounded inbox, and answers proposers and readers when their entry
//! is applied or their read index is reached.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use raft::prelude::{ConfChangeSingle, ConfChangeType, ConfChangeV2, Message};
use shoal_protocol::metric_names as m;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use super::core::{CoreConfig, RaftCore};
use super::transport::{Report, Transport};
use super::wal_store::WalStorage;
use super::Proposal;
use crate::state::{ClusterState, Command, Outcome};
use crate::CoordinatorError;
use std::sync::{Arc, RwLock};

/// Capacity of the driver's inbox (proposals, reads and raft messages).
pub const INBOX_CAPACITY: usize = 4096;
/// How long a proposer or reader waits.
pub const PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one ReadIndex attempt waits before it is asked again.
const READ_ATTEMPT: Duration = Duration::from_millis(1000);

/// What the rest of the coordinator can see of raft.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RaftStatus {
    pub id: u64,
    /// 0 when no leader is known.
    pub leader_id: u64,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    pub role: &'static str,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    pub first_index: u64,
    pub last_index: u64,
}

impl RaftStatus {
    pub fn is_leader(&self) -> bool {
        self.leader_id != 0 && self.leader_id == self.id
    }
}

type Reply<T> = oneshot::Sender<Result<T, CoordinatorError>>;

/// A proposal's outcome and the log index it was applied at.
pub type Applied = (Outcome, u64);

enum Input {
    Propose { proposal: Box<Proposal>, reply: Reply<Applied> },
    Read { reply: Reply<()> },
    HandOver { reply: Reply<Option<u64>> },
    Step(Box<Message>),
}

/// How the driver runs.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    pub core: CoreConfig,
    pub tick: Duration,
    /// Fold every proposal already waiting into one Ready (one flush) instead of one each.
    pub batch_proposals: bool,
}

/// A cheap, cloneable handle to the raft driver.
#[derive(Clone)]
pub struct RaftHandle {
    tx: mpsc::Sender<Input>,
    status: watch::Receiver<RaftStatus>,
    state: Arc<RwLock<ClusterState>>,
    applied: Arc<std::sync::atomic::AtomicU64>,
    view: broadcast::Sender<ViewEvent>,
}

/// What watchers of the applied state hear (see [`crate::view`]).
#[derive(Clone, Debug)]
pub enum ViewEvent {
    /// Entries applied in one pass, in order.
    Applied(Arc<Vec<(u64, crate::view::ViewChange)>>),
    /// The state was replaced by a snapshot: start again from the whole state.
    Reset,
}

/// How many passes a slow watcher may fall behind before it starts again from the state.
const VIEW_BACKLOG: usize = 1024;

impl RaftHandle {
    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Input) -> Result<T, CoordinatorError> {
        let (reply, rx) = oneshot::channel();
        self.tx.try_send(make(reply)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => CoordinatorError::Busy,
            mpsc::error::TrySendError::Closed(_) => CoordinatorError::Stopped,
        })?;
        match tokio::time::timeout(PROPOSE_TIMEOUT, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(CoordinatorError::ProposalDropped),
            Err(_) => Err(CoordinatorError::ProposalTimeout),
        }
    }

    /// Proposes on this member (which must lead) and waits until it is applied here.
    pub async fn propose(&self, proposal: Proposal) -> Result<Outcome, CoordinatorError> {
        Ok(self.propose_indexed(proposal).await?.0)
    }

    /// [`Self::propose`], also returning the log index the proposal was applied at.
    pub async fn propose_indexed(&self, proposal: Proposal) -> Result<Applied, CoordinatorError> {
        let status = self.status();
        if !status.is_leader() {
            return Err(CoordinatorError::NotLeader { leader: (status.leader_id != 0).then_some(status.leader_id) });
        }
        metrics::counter!(m::RAFT_PROPOSALS, "kind" => proposal.kind()).increment(1);
        self.call(|reply| Input::Propose { proposal: Box::new(proposal), reply }).await
    }

    /// Waits until this member has applied everything committed when the call was made,
    /// as confirmed by the leader with a quorum (raft ReadIndex). Works on any member.
    pub async fn read_index(&self) -> Result<(), CoordinatorError> {
        metrics::counter!(m::RAFT_READ_INDEX).increment(1);
        let deadline = tokio::time::Instant::now() + PROPOSE_TIMEOUT;
        loop {
            // raft drops a read on a member that knows no leader: wait for one first.
            let mut rx = self.status.clone();
            tokio::time::timeout_at(deadline, rx.wait_for(|s| s.leader_id != 0))
                .await
                .map_err(|_| CoordinatorError::NotLeader { leader: None })?
                .map_err(|_| CoordinatorError::Stopped)?;
            let (reply, answer) = oneshot::channel();
            self.tx.try_send(Input::Read { reply }).map_err(|_| CoordinatorError::Busy)?;
            let attempt = (tokio::time::Instant::now() + READ_ATTEMPT).min(deadline);
            match tokio::time::timeout_at(attempt, answer).await {
                Ok(Ok(r)) => return r,
                Ok(Err(_)) => return Err(CoordinatorError::Stopped),
                // The request may have been dropped by a leader change: ask again.
                Err(_) if tokio::time::Instant::now() < deadline => continue,
                Err(_) => return Err(CoordinatorError::ProposalTimeout),
            }
        }
    }

    /// When this member leads, hands leadership to the most up-to-date other voter and waits
    /// (up to `within`) until another member leads, so that a planned stop (SIGTERM) costs
    /// writers one short pause instead of an election timeout. Returns the new leader.
    pub async fn hand_over(&self, within: Duration) -> Option<u64> {
        let to = self.call(|reply| Input::HandOver { reply }).await.ok().flatten()?;
        let me = self.status().id;
        let mut rx = self.status.clone();
        let led = tokio::time::timeout(within, rx.wait_for(|s| s.leader_id != 0 && s.leader_id != me)).await;
        match led {
            Ok(Ok(s)) => {
                let leader = s.leader_id;
                tracing::info!(to = leader, "handed leadership over before stopping");
                Some(leader)
            }
            _ => {
                warn!(to, "leadership hand-over did not finish in time");
                None
            }
        }
    }

    /// Hands a raft message from a peer to the driver. Dropped when the inbox is full
    /// (raft retransmits).
    pub fn step(&self, msg: Message) {
        if self.tx.try_send(Input::Step(Box::new(msg))).is_err() {
            debug!("raft inbox full; dropped a peer message");
        }
    }

    pub fn status(&self) -> RaftStatus {
        self.status.borrow().clone()
    }

    pub fn watch_status(&self) -> watch::Receiver<RaftStatus> {
        self.status.clone()
    }

    /// The local replica of the state machine (what this member has applied).
    pub fn state(&self) -> &Arc<RwLock<ClusterState>> {
        &self.state
    }

    /// A copy of the applied state and the log index it is at.
    pub fn state_at(&self) -> (ClusterState, u64) {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        (state.clone(), self.applied.load(std::sync::atomic::Ordering::Acquire))
    }

    /// Entries as they are applied on this member, from now on.
    pub fn subscribe_view(&self) -> broadcast::Receiver<ViewEvent> {
        self.view.subscribe()
    }

    /// Starts the driver thread.
    pub fn start(
        cfg: DriverConfig,
        storage: WalStorage,
        transport: Transport,
        reports: mpsc::Receiver<Report>,
    ) -> Result<(RaftHandle, std::thread::JoinHandle<()>), CoordinatorError> {
        let voters = crate::raft::store::RaftStore::conf_state(&storage).voters.clone();
        let mut core = RaftCore::new(&cfg.core, storage)?;
        let id = cfg.core.id;
        if voters == vec![id] {
            // Alone in the group: no need to wait out an election timeout.
            core.campaign()?;
        }
        let state = core.state().clone();
        let applied = core.applied_shared().clone();
        let (view, _) = broadcast::channel(VIEW_BACKLOG);
        let (tx, rx) = mpsc::channel(INBOX_CAPACITY);
        let (status_tx, status_rx) = watch::channel(core.status());
        let driver = Driver {
            core,
            pending: HashMap::new(),
            reads: HashMap::new(),
            waiting_reads: Vec::new(),
            next_read: 1,
            transport,
            status_tx,
            leader_seen: 0,
            batch: cfg.batch_proposals,
            view: view.clone(),
        };
        let tick = cfg.tick;
        let thread = std::thread::Builder::new()
            .name(format!("raft-{id}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_time().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        error!(error = %e, "cannot start the raft driver runtime");
                        return;
                    }
                };
                rt.block_on(driver.run(rx, reports, tick));
            })
            .map_err(|e| CoordinatorError::io("raft thread", e))?;
        Ok((RaftHandle { tx, status: status_rx, state, applied, view }, thread))
    }
}

struct Pending {
    reply: Reply<Applied>,
    proposed_at: Instant,
}

struct Driver {
    core: RaftCore<WalStorage>,
    pending: HashMap<u64, Pending>,
    reads: HashMap<u64, Reply<()>>,
    waiting_reads: Vec<(u64, Reply<()>)>,
    next_read: u64,
    transport: Transport,
    status_tx: watch::Sender<RaftStatus>,
    leader_seen: u64,
    batch: bool,
    view: broadcast::Sender<ViewEvent>,
}

impl Driver {
    async fn run(mut self, mut rx: mpsc::Receiver<Input>, mut reports: mpsc::Receiver<Report>, tick: Duration) {
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => self.core.tick(),
                Some(report) = reports.recv() => match report {
                    Report::Unreachable(id) => self.core.report_unreachable(id),
                    Report::Snapshot { to, ok } => self.core.report_snapshot(to, ok),
                },
                input = rx.recv() => match input {
                    None => break,
                    Some(first) => {
                        let mut commands = Vec::new();
                        self.handle(first, &mut commands);
                        if self.batch {
                            // Fold whatever else is already waiting into the same Ready, and
                            // the commands among it into one proposal (one append per
                            // follower instead of one per command).
                            while let Ok(more) = rx.try_recv() {
                                self.handle(more, &mut commands);
                            }
                        }
                        self.propose_commands(commands);
                    }
                },
            }
            if let Err(e) = self.ready() {
                // Storage failed: nothing more can be acknowledged safely.
                error!(error = %e, "raft storage failed; stopping the raft driver");
                break;
            }
            self.publish_status();
        }
        for (_, p) in self.pending.drain() {
            let _ = p.reply.send(Err(CoordinatorError::Stopped));
        }
    }

    /// Proposes the commands gathered in one pass as one raft message.
    fn propose_commands(&mut self, commands: Vec<(Command, Reply<Applied>)>) {
        if commands.is_empty() {
            return;
        }
        let mut encoded = Vec::with_capacity(commands.len());
        let mut replies = Vec::with_capacity(commands.len());
        for (cmd, reply) in commands {
            match super::core::encode_command(&cmd) {
                Ok(bytes) => {
                    encoded.push(bytes);
                    replies.push(reply);
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            }
        }
        if encoded.is_empty() {
            return;
        }
        match self.core.propose_batch(encoded) {
            Ok(seqs) => {
                let now = Instant::now();
                for (seq, reply) in seqs.into_iter().zip(replies) {
                    self.pending.insert(seq, Pending { reply, proposed_at: now });
                }
            }
            Err(e) => {
                // Refused as a whole: not the leader, or raft dropped the proposal (a
                // leadership transfer is under way).
                for reply in replies {
                    let again = match &e {
                        CoordinatorError::NotLeader { leader } => CoordinatorError::NotLeader { leader: *leader },
                        CoordinatorError::Raft(raft::Error::ProposalDropped) => {
                            CoordinatorError::Raft(raft::Error::ProposalDropped)
                        }
                        _ => CoordinatorError::Rejected("proposal refused by raft"),
                    };
                    let _ = reply.send(Err(again));
                }
            }
        }
    }

    fn propose_one(&mut self, proposal: Proposal, reply: Reply<Applied>) {
        let seq = match proposal {
            Proposal::Command(cmd) => self.core.propose(&cmd),
            Proposal::AddMember(member) => {
                let cc = single_change(ConfChangeType::AddNode, member.id);
                self.core.propose_conf_change(cc, Some(&member))
            }
            Proposal::RemoveMember { id } => {
                self.core.propose_conf_change(single_change(ConfChangeType::RemoveNode, id), None)
            }
        };
        match seq {
            Ok(seq) => {
                self.pending.insert(seq, Pending { reply, proposed_at: Instant::now() });
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    /// Handles one input; with batching on, commands are gathered into `commands` (and
    /// proposed before any other input, to keep their order).
    fn handle(&mut self, input: Input, commands: &mut Vec<(Command, Reply<Applied>)>) {
        if let Input::Propose { proposal, reply } = input {
            match *proposal {
                Proposal::Command(cmd) if self.batch => commands.push((cmd, reply)),
                other => {
                    self.propose_commands(std::mem::take(commands));
                    self.propose_one(other, reply);
                }
            }
            return;
        }
        self.propose_commands(std::mem::take(commands));
        match input {
            Input::Propose { .. } => {} // handled above
            Input::Read { reply } => {
                let ctx = self.next_read;
                self.next_read += 1;
                self.reads.insert(ctx, reply);
                self.core.read_index(ctx.to_be_bytes().to_vec());
            }
            Input::HandOver { reply } => {
                let _ = reply.send(Ok(self.core.transfer_leadership()));
            }
            Input::Step(msg) => {
                if let Err(e) = self.core.step(*msg) {
                    debug!(error = %e, "raft step refused a message");
                }
            }
        }
    }

    fn ready(&mut self) -> Result<(), CoordinatorError> {
        let transport = &mut self.transport;
        let out = self.core.on_ready(&mut |msgs| transport.send(msgs))?;
        if let Some(cs) = &out.membership {
            let state = self.core.state().read().unwrap_or_else(|p| p.into_inner());
            self.transport.learn(&state, cs);
        }
        for (seq, index, outcome) in out.applied {
            if let Some(p) = self.pending.remove(&seq) {
                metrics::histogram!(m::RAFT_COMMIT_SECONDS).record(p.proposed_at.elapsed().as_secs_f64());
                let _ = p.reply.send(Ok((outcome, index)));
            }
        }
        if self.view.receiver_count() > 0 {
            if out.snapshot_installed.is_some() {
                let _ = self.view.send(ViewEvent::Reset);
            }
            if !out.view.is_empty() {
                let _ = self.view.send(ViewEvent::Applied(Arc::new(out.view)));
            }
        }
        for (ctx, index) in out.reads {
            let Ok(bytes) = <[u8; 8]>::try_from(ctx.as_slice()) else { continue };
            if let Some(reply) = self.reads.remove(&u64::from_be_bytes(bytes)) {
                self.waiting_reads.push((index, reply));
            }
        }
        let applied = self.core.applied();
        let (done, waiting): (Vec<_>, Vec<_>) = self.waiting_reads.drain(..).partition(|(idx, _)| *idx <= applied);
        self.waiting_reads = waiting;
        for (_, reply) in done {
            let _ = reply.send(Ok(()));
        }
        Ok(())
    }

    fn publish_status(&mut self) {
        let status = self.core.status();
        if status.leader_id != self.leader_seen {
            if status.leader_id != 0 {
                metrics::counter!(m::RAFT_LEADER_CHANGES).increment(1);
                info!(leader = status.leader_id, term = status.term, "leader elected");
            }
            self.leader_seen = status.leader_id;
        }
        if !self.core.is_leader() && !self.pending.is_empty() {
            for (_, p) in self.pending.drain() {
                let _ = p.reply.send(Err(CoordinatorError::ProposalDropped));
            }
        }
        self.status_tx.send_if_modified(|s| {
            if *s != status {
                crate::telemetry::refresh_raft(&status);
                *s = status;
                true
            } else {
                false
            }
        });
    }
}

fn single_change(change_type: ConfChangeType, node_id: u64) -> ConfChangeV2 {
    let mut change = ConfChangeSingle::default();
    change.set_change_type(change_type);
    change.node_id = node_id;
    let mut cc = ConfChangeV2::default();
    cc.set_changes(vec![change].into());
    cc
}
