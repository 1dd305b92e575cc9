//! The raft core: raft-rs's `RawNode` plus the state machine, with no threads, sockets or
//! clocks. The caller ticks it, steps messages, proposes, and runs [`RaftCore::on_ready`],
//! which persists (and flushes, once per pass) before anything that depends on it is sent,
//! applies committed entries with [`crate::state::apply`] (checkpointing the state once
//! `compact_after` entries and as many bytes of log as the last checkpoint held have been
//! applied since it), and reports what happened.
//!
//! The tokio driver ([`super::driver`]) and the deterministic simulation tests both run
//! exactly this code.

use std::sync::{Arc, RwLock};

use protobuf::Message as PbMessage;
use raft::prelude::{
    ConfChange, ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType, Message, MessageType,
    Snapshot,
};
use raft::{RawNode, SnapshotStatus, StateRole};
use shoal_protocol::metric_names as m;
use tracing::{info, warn};

use super::driver::RaftStatus;
use super::logger;
use super::storage::StoredState;
use super::store::RaftStore;
use crate::state::{apply, ClusterState, Command, CoordinatorRecord, Outcome};
use crate::CoordinatorError;

const MAX_MSG_BYTES: u64 = 1024 * 1024;
const MAX_INFLIGHT: usize = 256;

/// Raft parameters of one member.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub id: u64,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// Applied entries kept in the log before it is compacted into a snapshot.
    pub compact_after: u64,
    /// Overrides the randomised election timeout range `[min, max)` in ticks (raft-rs
    /// draws from a thread-local RNG; deterministic simulation pins it per member).
    pub election_range: Option<(usize, usize)>,
    /// Distinguishes this run of the member from earlier ones: proposal contexts carry it,
    /// so an entry proposed before a restart is never mistaken for a new proposal.
    pub incarnation: u64,
}

/// What one pass of the Ready loop did.
#[derive(Debug, Default)]
pub struct ReadyOutput {
    /// Outcomes of proposals made on this member: (proposal sequence number, log index,
    /// outcome).
    pub applied: Vec<(u64, u64, Outcome)>,
    /// What a gateway's view applies for each entry applied in this pass, in order.
    pub view: Vec<(u64, crate::view::ViewChange)>,
    /// Completed ReadIndex requests: (request context, index to wait for).
    pub reads: Vec<(Vec<u8>, u64)>,
    /// Every entry applied in this pass: (index, term, hash of its data).
    pub applied_log: Vec<(u64, u64, u64)>,
    /// The new membership, if it changed.
    pub membership: Option<ConfState>,
    /// The index of a snapshot installed in this pass.
    pub snapshot_installed: Option<u64>,
}

pub struct RaftCore<S: RaftStore> {
    node: RawNode<S>,
    id: u64,
    incarnation: u64,
    state: Arc<RwLock<ClusterState>>,
    applied: u64,
    /// The applied index, written while the state's write lock is held (so a reader holding
    /// the read lock sees the index of exactly the state it reads).
    applied_shared: Arc<std::sync::atomic::AtomicU64>,
    next_seq: u64,
    compact_after: u64,
    /// Bytes of entries applied since the last checkpoint.
    log_bytes: u64,
}

fn proposal_context(node: u64, incarnation: u64, seq: u64) -> Vec<u8> {
    let mut c = Vec::with_capacity(24);
    c.extend_from_slice(&node.to_be_bytes());
    c.extend_from_slice(&incarnation.to_be_bytes());
    c.extend_from_slice(&seq.to_be_bytes());
    c
}

fn parse_context(c: &[u8]) -> Option<(u64, u64, u64)> {
    let word = |i: usize| Some(u64::from_be_bytes(c.get(i * 8..i * 8 + 8)?.try_into().ok()?));
    Some((word(0)?, word(1)?, word(2)?))
}

/// A command as a raft entry carries it.
pub fn encode_command(cmd: &Command) -> Result<Vec<u8>, CoordinatorError> {
    Ok(shoal_protocol::frame::to_payload(cmd)?.to_vec())
}

/// FNV-1a, for comparing entries cheaply in tests.
pub fn data_hash(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3))
}

impl<S: RaftStore> RaftCore<S> {
    pub fn new(cfg: &CoreConfig, mut store: S) -> Result<Self, CoordinatorError> {
        let stored = store.load_state()?.unwrap_or_default();
        // An entry is applied only once committed, so a saved applied index above the saved
        // commit index (a store written before commits were persisted first) is safe to lift.
        let commit = store.initial_state()?.hard_state.commit;
        if stored.applied > commit {
            warn!(applied = stored.applied, commit, "commit index behind the applied index; lifting it");
            store.set_commit(stored.applied)?;
            store.flush()?;
        }
        let rcfg = raft::Config {
            id: cfg.id,
            election_tick: cfg.election_ticks,
            heartbeat_tick: cfg.heartbeat_ticks,
            applied: stored.applied,
            max_size_per_msg: MAX_MSG_BYTES,
            max_inflight_msgs: MAX_INFLIGHT,
            check_quorum: true,
            pre_vote: true,
            min_election_tick: cfg.election_range.map(|r| r.0).unwrap_or(0),
            max_election_tick: cfg.election_range.map(|r| r.1).unwrap_or(0),
            ..Default::default()
        };
        rcfg.validate()?;
        let node = RawNode::new(&rcfg, store, &logger::logger())?;
        Ok(Self {
            node,
            id: cfg.id,
            incarnation: cfg.incarnation,
            state: Arc::new(RwLock::new(stored.state)),
            applied: stored.applied,
            applied_shared: Arc::new(std::sync::atomic::AtomicU64::new(stored.applied)),
            next_seq: 1,
            compact_after: cfg.compact_after.max(1),
            log_bytes: 0,
        })
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// The applied state, shared with readers.
    pub fn state(&self) -> &Arc<RwLock<ClusterState>> {
        &self.state
    }

    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// The applied index as readers of [`Self::state`] see it: read it while holding the
    /// state's read lock to get the index of that state.
    pub fn applied_shared(&self) -> &Arc<std::sync::atomic::AtomicU64> {
        &self.applied_shared
    }

    pub fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    pub fn leader_id(&self) -> u64 {
        self.node.raft.leader_id
    }

    pub fn term(&self) -> u64 {
        self.node.raft.term
    }

    pub fn store(&self) -> &S {
        self.node.store()
    }

    pub fn store_mut(&mut self) -> &mut S {
        self.node.mut_store()
    }

    /// How far member `id`'s log matches ours (leader only).
    pub fn matched(&self, id: u64) -> Option<u64> {
        self.node.raft.prs().get(id).map(|p| p.matched)
    }

    pub fn campaign(&mut self) -> Result<(), CoordinatorError> {
        Ok(self.node.campaign()?)
    }

    pub fn tick(&mut self) {
        self.node.tick();
    }

    pub fn step(&mut self, msg: Message) -> Result<(), CoordinatorError> {
        Ok(self.node.step(msg)?)
    }

    pub fn report_unreachable(&mut self, id: u64) {
        self.node.report_unreachable(id);
    }

    /// Starts handing leadership to the voter whose log is furthest along (raft's
    /// TimeoutNow once it has caught up). Returns that voter, or `None` when this member does
    /// not lead or has no other voter.
    pub fn transfer_leadership(&mut self) -> Option<u64> {
        let raft = &self.node.raft;
        if raft.state != StateRole::Leader {
            return None;
        }
        let voters = self.node.store().conf_state().voters.clone();
        let to = voters
            .iter()
            .filter(|id| **id != self.id)
            .filter_map(|id| raft.prs().get(*id).map(|p| (p.matched, *id)))
            .max()
            .map(|(_, id)| id)?;
        self.node.transfer_leader(to);
        Some(to)
    }

    pub fn report_snapshot(&mut self, id: u64, ok: bool) {
        let status = if ok { SnapshotStatus::Finish } else { SnapshotStatus::Failure };
        self.node.report_snapshot(id, status);
    }

    fn not_leader(&self) -> CoordinatorError {
        let leader = self.node.raft.leader_id;
        CoordinatorError::NotLeader { leader: (leader != 0).then_some(leader) }
    }

    /// Proposes a command; returns its sequence number, reported back by `on_ready` once applied.
    pub fn propose(&mut self, cmd: &Command) -> Result<u64, CoordinatorError> {
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        let data = encode_command(cmd)?;
        let seq = self.next_seq;
        self.next_seq += 1;
        self.node.propose(proposal_context(self.id, self.incarnation, seq), data)?;
        Ok(seq)
    }

    /// Proposes several commands as one raft message, so that followers get them in one
    /// append (raft sends an append to every follower per proposal message). Returns their
    /// sequence numbers, in order; all are dropped together or none is.
    /// `encoded` are commands as [`encode_command`] gives them.
    pub fn propose_batch(&mut self, encoded: Vec<Vec<u8>>) -> Result<Vec<u64>, CoordinatorError> {
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        let first = self.next_seq;
        let n = encoded.len() as u64;
        let entries: Vec<Entry> = encoded
            .into_iter()
            .zip(first..)
            .map(|(data, seq)| Entry {
                data: data.into(),
                context: proposal_context(self.id, self.incarnation, seq).into(),
                ..Default::default()
            })
            .collect();
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgPropose);
        m.from = self.id;
        m.set_entries(entries.into());
        self.node.raft.step(m)?;
        self.next_seq += n;
        Ok((first..self.next_seq).collect())
    }

    /// Proposes a membership change. `member` is recorded with an added coordinator.
    pub fn propose_conf_change(
        &mut self,
        mut cc: ConfChangeV2,
        member: Option<&CoordinatorRecord>,
    ) -> Result<u64, CoordinatorError> {
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        if let Some(m) = member {
            cc.context = shoal_protocol::frame::to_payload(m)?.to_vec().into();
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.node.propose_conf_change(proposal_context(self.id, self.incarnation, seq), cc)?;
        Ok(seq)
    }

    /// Starts a linearizable read; `on_ready` reports `(ctx, index)` when the leader has
    /// confirmed `index` with a quorum.
    pub fn read_index(&mut self, ctx: Vec<u8>) {
        self.node.read_index(ctx);
    }

    /// Runs one pass of the Ready loop. `send` is called with messages as soon as they may
    /// leave: the leader's appends before its own persist, everything else after the flush.
    pub fn on_ready(&mut self, send: &mut dyn FnMut(Vec<Message>)) -> Result<ReadyOutput, CoordinatorError> {
        let mut out = ReadyOutput::default();
        if self.node.store().checkpoint_wanted().swap(false, std::sync::atomic::Ordering::Relaxed) {
            self.checkpoint()?;
        }
        if !self.node.has_ready() {
            return Ok(out);
        }
        let mut ready = self.node.ready();
        if !ready.messages().is_empty() {
            send(ready.take_messages());
        }
        if *ready.snapshot() != Snapshot::default() {
            let stored = self.node.mut_store().apply_snapshot(ready.snapshot())?;
            info!(index = stored.applied, "installed a snapshot from the leader");
            metrics::counter!(m::RAFT_SNAPSHOTS_INSTALLED).increment(1);
            self.applied = stored.applied;
            out.snapshot_installed = Some(stored.applied);
            out.membership = Some(self.node.store().conf_state().clone());
            let mut g = self.state.write().unwrap_or_else(|p| p.into_inner());
            *g = stored.state;
            self.applied_shared.store(stored.applied, std::sync::atomic::Ordering::Release);
        }
        for rs in ready.take_read_states() {
            out.reads.push((rs.request_ctx, rs.index));
        }
        if !ready.entries().is_empty() {
            self.node.mut_store().append(ready.entries())?;
        }
        if let Some(hs) = ready.hs() {
            self.node.mut_store().set_hard_state(hs)?;
        }
        // Persist before anything that depends on it leaves this process. A Ready that only
        // moves the commit index needs no flush (as in etcd): no message depends on it being
        // durable, the entries it commits were flushed when they were appended, and a commit
        // index lost in a crash is learned again from the leader. The write is made; the next
        // flush carries it.
        if ready.must_sync() {
            self.node.mut_store().flush()?;
        }
        if !ready.persisted_messages().is_empty() {
            send(ready.take_persisted_messages());
        }
        self.apply_entries(ready.take_committed_entries(), &mut out)?;
        let mut light = self.node.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.node.mut_store().set_commit(commit)?;
        }
        send(light.take_messages());
        self.apply_entries(light.take_committed_entries(), &mut out)?;
        self.node.advance_apply();
        Ok(out)
    }

    fn apply_entries(&mut self, entries: Vec<Entry>, out: &mut ReadyOutput) -> Result<(), CoordinatorError> {
        let Some(last) = entries.last().map(|e| e.index) else { return Ok(()) };
        let state_arc = self.state.clone();
        let mut state = state_arc.write().unwrap_or_else(|p| p.into_inner());
        for e in &entries {
            if e.index <= self.applied {
                continue;
            }
            self.log_bytes += (e.data.len() + e.context.len()) as u64;
            out.applied_log.push((e.index, e.term, data_hash(&e.data)));
            let outcome = match e.get_entry_type() {
                EntryType::EntryNormal => {
                    if e.data.is_empty() {
                        out.view.push((e.index, crate::view::ViewChange::Nothing));
                        continue; // a new leader's empty entry
                    }
                    metrics::counter!(m::RAFT_APPLIED_ENTRIES).increment(1);
                    match shoal_protocol::frame::decode::<Command>(&e.data) {
                        Ok(cmd) => {
                            let outcome = apply(&mut state, &cmd);
                            out.view.push((e.index, crate::view::ViewChange::Command(cmd)));
                            outcome
                        }
                        Err(err) => {
                            warn!(index = e.index, error = %err, "skipping an undecodable command");
                            out.view.push((e.index, crate::view::ViewChange::Nothing));
                            Outcome::rejected("undecodable command")
                        }
                    }
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    let cc = if e.get_entry_type() == EntryType::EntryConfChange {
                        v1_to_v2(ConfChange::parse_from_bytes(&e.data).map_err(raft::Error::CodecError)?)
                    } else {
                        ConfChangeV2::parse_from_bytes(&e.data).map_err(raft::Error::CodecError)?
                    };
                    let cs = self.node.apply_conf_change(&cc)?;
                    self.node.mut_store().set_conf_state(&cs)?;
                    record_members(&mut state, &cc);
                    let members = state.coordinators.values().cloned().collect();
                    out.view.push((e.index, crate::view::ViewChange::Coordinators(members)));
                    info!(voters = ?cs.voters, learners = ?cs.learners, "membership changed");
                    out.membership = Some(cs);
                    Outcome::Applied
                }
            };
            if let Some((node, incarnation, seq)) = parse_context(&e.context) {
                if node == self.id && incarnation == self.incarnation {
                    out.applied.push((seq, e.index, outcome));
                }
            }
        }
        self.applied = last.max(self.applied);
        self.applied_shared.store(self.applied, std::sync::atomic::Ordering::Release);
        // The state is written only at checkpoints: a commit costs the same whatever the size
        // of the state (the log holds what came since, and is applied again after a restart).
        // A checkpoint waits for `compact_after` entries and for as many bytes of log as the
        // last checkpoint held, so that its cost (encoding and writing the whole state) is
        // spread over at least as many bytes of commits however large the state grows: the
        // log in memory stays within about twice the state's size.
        drop(state);
        if self.applied.saturating_sub(self.node.store().first()) >= self.compact_after
            && self.log_bytes >= self.node.store().checkpoint_bytes()
        {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Saves the applied state and compacts the log up to it. The state is lent to the store
    /// (no copy of it is made) while the write lock keeps everyone else out.
    fn checkpoint(&mut self) -> Result<(), CoordinatorError> {
        let mut guard = self.state.write().unwrap_or_else(|p| p.into_inner());
        let stored = StoredState { applied: self.applied, state: std::mem::take(&mut *guard) };
        let result = self.node.mut_store().checkpoint(&stored);
        *guard = stored.state;
        drop(guard);
        result?;
        self.log_bytes = 0;
        metrics::counter!(m::RAFT_CHECKPOINTS).increment(1);
        Ok(())
    }

    /// A snapshot of what the rest of the coordinator may see.
    pub fn status(&self) -> RaftStatus {
        let raft = &self.node.raft;
        let store = self.node.store();
        let cs = store.conf_state();
        RaftStatus {
            id: self.id,
            leader_id: raft.leader_id,
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
        }
    }
}

/// Keeps the replicated coordinator address book in step with membership.
fn record_members(state: &mut ClusterState, cc: &ConfChangeV2) {
    let member = shoal_protocol::frame::decode::<CoordinatorRecord>(&cc.context).ok();
    for change in cc.get_changes() {
        match change.get_change_type() {
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                if let Some(m) = member.as_ref().filter(|m| m.id == change.node_id) {
                    state.coordinators.insert(m.id, m.clone());
                }
            }
            ConfChangeType::RemoveNode => {
                state.coordinators.remove(&change.node_id);
            }
        }
    }
}

/// A legacy single change as a v2 change.
fn v1_to_v2(v1: ConfChange) -> ConfChangeV2 {
    let mut single = ConfChangeSingle::default();
    single.set_change_type(v1.get_change_type());
    single.node_id = v1.node_id;
    let mut cc = ConfChangeV2::default();
    cc.set_changes(vec![single].into());
    cc.context = v1.context;
    cc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::mem_store::MemStore;
    use crate::state::TokenRecord;

    fn token(i: usize) -> Command {
        Command::CreateToken(TokenRecord {
            id: format!("t{i}"),
            secret_hash: "h".repeat(64),
            created_at_ms: 0,
            expires_at_ms: u64::MAX,
            description: String::new(),
        })
    }

    /// A checkpoint waits for `compact_after` entries *and* for as many bytes of log as the
    /// last checkpoint held: with a large state it comes exactly at the first entry where
    /// both hold, never before.
    #[test]
    fn a_checkpoint_waits_for_as_many_log_bytes_as_the_state_holds() {
        let store = MemStore::with_state(&[1], crate::state::synthetic_state(20, 200));
        let state_bytes = store.checkpoint_bytes();
        assert!(state_bytes > 20_000, "{state_bytes}");
        let cfg = CoreConfig {
            id: 1,
            election_ticks: 10,
            heartbeat_ticks: 1,
            compact_after: 5,
            election_range: None,
            incarnation: 1,
        };
        let mut core = RaftCore::new(&cfg, store).expect("core");
        core.campaign().expect("campaign");
        let mut send = |_: Vec<Message>| {};
        while !core.is_leader() {
            core.on_ready(&mut send).expect("ready");
        }
        core.on_ready(&mut send).expect("ready");
        let start = core.applied();
        let first_before = core.store().first();
        // Predict where the checkpoint must come: the first index past `compact_after` from
        // the log's start at which the bytes applied since the start reach the state's size.
        let mut bytes = 0u64;
        let mut expected = None;
        let mut compacted_at = None;
        for i in 0..2_000 {
            let cmd = token(i);
            core.propose(&cmd).expect("propose");
            core.on_ready(&mut send).expect("ready");
            let index = core.applied();
            assert_eq!(index, start + i as u64 + 1, "one entry applied per pass");
            // The entry's data and its proposal context (node, incarnation, sequence: 24 bytes).
            bytes += (encode_command(&cmd).expect("encode").len() + 24) as u64;
            if expected.is_none() && index - first_before >= 5 && bytes >= state_bytes {
                expected = Some(index);
            }
            if core.store().first() != first_before {
                compacted_at = Some(index);
                break;
            }
        }
        assert!(
            expected.is_some(),
            "2,000 tokens never reached {state_bytes} bytes: {bytes} bytes, compacted at {compacted_at:?}, applied {}",
            core.applied()
        );
        assert_eq!(compacted_at, expected, "entries applied since {start}");
        assert!(compacted_at.unwrap_or(0) - start > 100, "the byte rule, not the entry count, decided");
    }
}
