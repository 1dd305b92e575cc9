//! The raft driver: owns the `RawNode` on a dedicated thread (disk writes block) and runs
//! raft-rs's loop: tick, step, ready → persist (and flush) → send → apply → advance.
//!
//! Proposals arrive on a bounded channel; each carries a reply port that is answered when
//! its entry is applied here. Applying is [`crate::state::apply`], nothing else.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use protobuf::Message as PbMessage;
use raft::prelude::{ConfChange, ConfChangeV2, Entry, EntryType, Message, Snapshot};
use raft::{RawNode, StateRole, Storage};
use shoal_protocol::metric_names as m;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use super::logger;
use super::storage::{SledStorage, StoredState};
use super::transport::Transport;
use crate::config::TimingConfig;
use crate::state::{apply, ClusterState, Command, Outcome};
use crate::CoordinatorError;

/// Capacity of the driver's inbox (proposals and raft messages).
pub const INBOX_CAPACITY: usize = 4096;
/// How long a proposer waits for its entry to apply.
pub const PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Log entries kept before the applied prefix is compacted into the snapshot.
pub const COMPACT_THRESHOLD: u64 = 10_000;
const MAX_MSG_BYTES: u64 = 1024 * 1024;
const MAX_INFLIGHT: usize = 256;

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

enum Input {
    Propose {
        cmd: Command,
        reply: oneshot::Sender<Result<Outcome, CoordinatorError>>,
    },
    Step(Box<Message>),
}

/// A cheap, cloneable handle to the raft driver.
#[derive(Clone)]
pub struct RaftHandle {
    tx: mpsc::Sender<Input>,
    status: watch::Receiver<RaftStatus>,
    state: Arc<RwLock<ClusterState>>,
}

impl RaftHandle {
    /// Proposes a command and waits until it is committed and applied here.
    pub async fn propose(&self, cmd: Command) -> Result<Outcome, CoordinatorError> {
        let status = self.status();
        if !status.is_leader() {
            return Err(CoordinatorError::NotLeader {
                leader: (status.leader_id != 0).then_some(status.leader_id),
            });
        }
        metrics::counter!(m::RAFT_PROPOSALS, "kind" => cmd.kind()).increment(1);
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send(Input::Propose { cmd, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => CoordinatorError::Busy,
                mpsc::error::TrySendError::Closed(_) => CoordinatorError::Stopped,
            })?;
        match tokio::time::timeout(PROPOSE_TIMEOUT, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(CoordinatorError::ProposalDropped),
            Err(_) => Err(CoordinatorError::ProposalTimeout),
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

    /// The local replica of the state machine (what this coordinator has applied).
    pub fn state(&self) -> &Arc<RwLock<ClusterState>> {
        &self.state
    }

    /// Starts the driver thread.
    pub fn start(
        id: u64,
        timing: &TimingConfig,
        storage: SledStorage,
        transport: Transport,
    ) -> Result<(RaftHandle, std::thread::JoinHandle<()>), CoordinatorError> {
        let stored = storage.load_state()?.unwrap_or_default();
        let cfg = raft::Config {
            id,
            election_tick: timing.election_ticks,
            heartbeat_tick: timing.heartbeat_ticks,
            applied: stored.applied,
            max_size_per_msg: MAX_MSG_BYTES,
            max_inflight_msgs: MAX_INFLIGHT,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        cfg.validate()?;
        let voters = storage.conf_state().voters.clone();
        let node = RawNode::new(&cfg, storage, &logger::logger())?;
        let state = Arc::new(RwLock::new(stored.state));
        let (tx, rx) = mpsc::channel(INBOX_CAPACITY);
        let (status_tx, status_rx) = watch::channel(RaftStatus {
            id,
            ..Default::default()
        });
        let mut driver = Driver {
            node,
            id,
            state: state.clone(),
            pending: HashMap::new(),
            next_proposal: 1,
            transport,
            status_tx,
            leader_seen: 0,
            applied: stored.applied,
        };
        if voters == vec![id] {
            // Alone in the group: no need to wait out an election timeout.
            driver.node.campaign()?;
        }
        let tick = timing.tick();
        let thread = std::thread::Builder::new()
            .name(format!("raft-{id}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        error!(error = %e, "cannot start the raft driver runtime");
                        return;
                    }
                };
                rt.block_on(driver.run(rx, tick));
            })
            .map_err(|e| CoordinatorError::io("raft thread", e))?;
        Ok((
            RaftHandle {
                tx,
                status: status_rx,
                state,
            },
            thread,
        ))
    }
}

struct Pending {
    reply: oneshot::Sender<Result<Outcome, CoordinatorError>>,
    proposed_at: Instant,
}

struct Driver {
    node: RawNode<SledStorage>,
    id: u64,
    state: Arc<RwLock<ClusterState>>,
    pending: HashMap<u64, Pending>,
    next_proposal: u64,
    transport: Transport,
    status_tx: watch::Sender<RaftStatus>,
    leader_seen: u64,
    applied: u64,
}

fn proposal_context(node: u64, seq: u64) -> Vec<u8> {
    let mut c = Vec::with_capacity(16);
    c.extend_from_slice(&node.to_be_bytes());
    c.extend_from_slice(&seq.to_be_bytes());
    c
}

fn parse_context(c: &[u8]) -> Option<(u64, u64)> {
    let node = u64::from_be_bytes(c.get(..8)?.try_into().ok()?);
    let seq = u64::from_be_bytes(c.get(8..16)?.try_into().ok()?);
    Some((node, seq))
}

impl Driver {
    async fn run(mut self, mut rx: mpsc::Receiver<Input>, tick: Duration) {
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    self.node.tick();
                }
                input = rx.recv() => match input {
                    None => break,
                    Some(first) => {
                        self.handle(first);
                        // Batch whatever else is already waiting into the same Ready.
                        while let Ok(more) = rx.try_recv() {
                            self.handle(more);
                        }
                    }
                },
            }
            if let Err(e) = self.on_ready() {
                // Storage failed: we cannot safely continue acknowledging anything.
                error!(error = %e, "raft storage failed; stopping the raft driver");
                break;
            }
            self.publish_status();
        }
        for (_, p) in self.pending.drain() {
            let _ = p.reply.send(Err(CoordinatorError::Stopped));
        }
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Propose { cmd, reply } => {
                if self.node.raft.state != StateRole::Leader {
                    let leader = self.node.raft.leader_id;
                    let _ = reply.send(Err(CoordinatorError::NotLeader {
                        leader: (leader != 0).then_some(leader),
                    }));
                    return;
                }
                let data = match shoal_protocol::frame::to_payload(&cmd) {
                    Ok(d) => d.to_vec(),
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                        return;
                    }
                };
                let seq = self.next_proposal;
                self.next_proposal += 1;
                match self.node.propose(proposal_context(self.id, seq), data) {
                    Ok(()) => {
                        self.pending.insert(
                            seq,
                            Pending {
                                reply,
                                proposed_at: Instant::now(),
                            },
                        );
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                    }
                }
            }
            Input::Step(msg) => {
                if let Err(e) = self.node.step(*msg) {
                    debug!(error = %e, "raft step refused a message");
                }
            }
        }
    }

    fn on_ready(&mut self) -> Result<(), CoordinatorError> {
        if !self.node.has_ready() {
            return Ok(());
        }
        let mut ready = self.node.ready();
        if !ready.messages().is_empty() {
            self.transport.send(ready.take_messages());
        }
        if *ready.snapshot() != Snapshot::default() {
            let stored = self.node.mut_store().apply_snapshot(ready.snapshot())?;
            info!(
                index = stored.applied,
                "installed a snapshot from the leader"
            );
            self.applied = stored.applied;
            self.replace_state(stored.state);
        }
        self.apply_entries(ready.take_committed_entries())?;
        if !ready.entries().is_empty() {
            self.node.mut_store().append(ready.entries())?;
        }
        if let Some(hs) = ready.hs() {
            self.node.mut_store().set_hard_state(hs)?;
        }
        // Persist before anything that depends on it leaves this process.
        self.node.store().flush()?;
        if !ready.persisted_messages().is_empty() {
            self.transport.send(ready.take_persisted_messages());
        }
        let mut light = self.node.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.node.mut_store().set_commit(commit)?;
        }
        self.transport.send(light.take_messages());
        self.apply_entries(light.take_committed_entries())?;
        self.node.advance_apply();
        Ok(())
    }

    fn replace_state(&mut self, new: ClusterState) {
        match self.state.write() {
            Ok(mut g) => *g = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
    }

    fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<(), CoordinatorError> {
        let Some(last) = entries.last().map(|e| e.index) else {
            return Ok(());
        };
        let mut replies = Vec::new();
        {
            let mut state = match self.state.write() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            for e in &entries {
                if e.index <= self.applied {
                    continue;
                }
                match e.get_entry_type() {
                    EntryType::EntryNormal => {
                        if e.data.is_empty() {
                            continue; // a new leader's empty entry
                        }
                        let outcome = match shoal_protocol::frame::decode::<Command>(&e.data) {
                            Ok(cmd) => apply(&mut state, &cmd),
                            Err(err) => {
                                warn!(index = e.index, error = %err, "skipping an undecodable command");
                                Outcome::Rejected("undecodable command")
                            }
                        };
                        metrics::counter!(m::RAFT_APPLIED_ENTRIES).increment(1);
                        if let Some((node, seq)) = parse_context(&e.context) {
                            if node == self.id {
                                if let Some(p) = self.pending.remove(&seq) {
                                    replies.push((p, outcome));
                                }
                            }
                        }
                    }
                    EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                        let cs = if e.get_entry_type() == EntryType::EntryConfChange {
                            let cc = ConfChange::parse_from_bytes(&e.data)
                                .map_err(raft::Error::CodecError)?;
                            self.node.apply_conf_change(&cc)?
                        } else {
                            let cc = ConfChangeV2::parse_from_bytes(&e.data)
                                .map_err(raft::Error::CodecError)?;
                            self.node.apply_conf_change(&cc)?
                        };
                        self.node.mut_store().set_conf_state(&cs)?;
                        info!(voters = ?cs.voters, learners = ?cs.learners, "membership changed");
                    }
                }
            }
            self.applied = last.max(self.applied);
            let stored = StoredState {
                applied: self.applied,
                state: state.clone(),
            };
            self.node.mut_store().save_state(&stored)?;
        }
        let store = self.node.mut_store();
        store.flush()?;
        if self.applied.saturating_sub(store.first()) > COMPACT_THRESHOLD {
            store.compact(self.applied)?;
            store.flush()?;
        }
        for (p, outcome) in replies {
            metrics::histogram!(m::RAFT_COMMIT_SECONDS)
                .record(p.proposed_at.elapsed().as_secs_f64());
            let _ = p.reply.send(Ok(outcome));
        }
        Ok(())
    }

    fn publish_status(&mut self) {
        let raft = &self.node.raft;
        let leader = raft.leader_id;
        if leader != self.leader_seen {
            if leader != 0 {
                metrics::counter!(m::RAFT_LEADER_CHANGES).increment(1);
                info!(leader, term = raft.term, "leader elected");
            }
            self.leader_seen = leader;
        }
        if raft.state != StateRole::Leader && !self.pending.is_empty() {
            for (_, p) in self.pending.drain() {
                let _ = p.reply.send(Err(CoordinatorError::ProposalDropped));
            }
        }
        let store = self.node.store();
        let cs = store.conf_state();
        let status = RaftStatus {
            id: self.id,
            leader_id: leader,
            term: raft.term,
            commit: raft.raft_log.committed,
            applied: self.applied,
            role: match raft.state {
                StateRole::Leader => "leader",
                StateRole::Follower => "follower",
                StateRole::Candidate => "candidate",
                StateRole::PreCandidate => "pre-candidate",
            },
            voters: cs.voters.clone(),
            learners: cs.learners.clone(),
            first_index: store.first(),
            last_index: store.last_index().unwrap_or(0),
        };
        self.status_tx.send_if_modified(|s| {
            if *s != status {
                *s = status;
                true
            } else {
                false
            }
        });
    }
}
