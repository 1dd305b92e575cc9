//! An in-memory [`RaftStore`] for deterministic simulation. Writes land in a working copy;
//! `flush` makes them durable. A simulated crash throws the working copy away and restarts
//! from the durable one, exactly what a process crash does to unflushed writes of the real log.

use std::sync::{Arc, Mutex};

use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState};

use super::log_tail::LogTail;
use super::storage::StoredState;
use super::store::RaftStore;
use crate::CoordinatorError;

/// Everything a store holds.
#[derive(Clone, Default)]
pub struct MemData {
    log: LogTail,
    hard_state: HardState,
    conf_state: ConfState,
    state: Option<StoredState>,
}

/// What survives a crash.
pub type Durable = Arc<Mutex<MemData>>;

pub struct MemStore {
    cur: MemData,
    durable: Durable,
    /// Flushes left before the simulated process dies in the middle of a flush.
    flushes_left: Option<u32>,
    checkpoint_wanted: std::sync::atomic::AtomicBool,
    /// Encoded size of the last checkpoint (or snapshot installed) in this run.
    checkpoint_bytes: u64,
}

impl MemStore {
    /// A fresh store bootstrapped with `voters` (empty for a member added later).
    pub fn new(voters: &[u64]) -> Self {
        Self::with_state(voters, Default::default())
    }

    /// Like [`MemStore::new`], a bootstrap member starting from `initial`.
    pub fn with_state(voters: &[u64], initial: crate::state::ClusterState) -> Self {
        let (snapshot_meta, hard_state, conf_state) = super::storage::bootstrap(voters);
        let state =
            (!voters.is_empty()).then_some(StoredState { applied: super::storage::BOOTSTRAP_INDEX, state: initial });
        let checkpoint_bytes = match &state {
            Some(s) => s.encode().map(|b| b.len() as u64).unwrap_or(0),
            None => 0,
        };
        let data = MemData { log: LogTail::new(snapshot_meta), hard_state, conf_state, state };
        Self {
            durable: Arc::new(Mutex::new(data.clone())),
            cur: data,
            flushes_left: None,
            checkpoint_wanted: Default::default(),
            checkpoint_bytes,
        }
    }

    /// The handle a harness keeps to restart this store after a crash.
    pub fn durable(&self) -> Durable {
        self.durable.clone()
    }

    /// A store as it is after a crash: only what was flushed.
    pub fn recover(durable: &Durable) -> Self {
        let data = durable.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let checkpoint_bytes = match &data.state {
            Some(s) => s.encode().map(|b| b.len() as u64).unwrap_or(0),
            None => 0,
        };
        Self {
            cur: data,
            durable: durable.clone(),
            flushes_left: None,
            checkpoint_wanted: Default::default(),
            checkpoint_bytes,
        }
    }

    /// Lets `n` more flushes succeed, then fails the next one as a process killed right
    /// before it would have completed: nothing written since the last flush survives.
    pub fn crash_after_flushes(&mut self, n: u32) {
        self.flushes_left = Some(n);
    }

    /// Disarms [`MemStore::crash_after_flushes`].
    pub fn cancel_crash(&mut self) {
        self.flushes_left = None;
    }
}

impl raft::Storage for MemStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState { hard_state: self.cur.hard_state.clone(), conf_state: self.cur.conf_state.clone() })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.cur.log.slice(low, high, max_size.into())
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.cur.log.term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.cur.log.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, _request_index: u64, to: u64) -> raft::Result<Snapshot> {
        super::store::snapshot_of(self, to)
    }
}

impl RaftStore for MemStore {
    fn append(&mut self, entries: &[Entry]) -> Result<(), CoordinatorError> {
        self.cur.log.append(entries);
        Ok(())
    }

    fn set_hard_state(&mut self, hs: &HardState) -> Result<(), CoordinatorError> {
        self.cur.hard_state = hs.clone();
        Ok(())
    }

    fn set_commit(&mut self, commit: u64) -> Result<(), CoordinatorError> {
        self.cur.hard_state.commit = commit;
        Ok(())
    }

    fn set_conf_state(&mut self, cs: &ConfState) -> Result<(), CoordinatorError> {
        self.cur.conf_state = cs.clone();
        Ok(())
    }

    fn apply_snapshot(&mut self, snap: &Snapshot) -> Result<StoredState, CoordinatorError> {
        let meta = snap.get_metadata().clone();
        let stored = StoredState::decode(&snap.data)?;
        self.cur.hard_state.commit = self.cur.hard_state.commit.max(meta.index);
        self.cur.hard_state.term = self.cur.hard_state.term.max(meta.term);
        self.cur.conf_state = meta.get_conf_state().clone();
        self.cur.log.reset(meta);
        self.cur.state = Some(stored.clone());
        self.checkpoint_bytes = snap.data.len() as u64;
        Ok(stored)
    }

    fn checkpoint(&mut self, stored: &StoredState) -> Result<(), CoordinatorError> {
        let index = stored.applied;
        if index <= self.cur.log.snapshot.index || index > self.last() {
            return Ok(());
        }
        let term = raft::Storage::term(self, index)?;
        let mut meta = self.cur.log.snapshot.clone();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(self.cur.conf_state.clone());
        self.cur.log.compact(meta);
        self.cur.state = Some(stored.clone());
        self.checkpoint_bytes = stored.encode()?.len() as u64;
        Ok(())
    }

    fn load_state(&self) -> Result<Option<StoredState>, CoordinatorError> {
        Ok(self.cur.state.clone())
    }

    fn flush(&mut self) -> Result<(), CoordinatorError> {
        match self.flushes_left {
            Some(0) => return Err(CoordinatorError::Stopped),
            Some(n) => self.flushes_left = Some(n - 1),
            None => {}
        }
        *self.durable.lock().unwrap_or_else(|p| p.into_inner()) = self.cur.clone();
        Ok(())
    }

    fn first(&self) -> u64 {
        self.cur.log.first()
    }

    fn last(&self) -> u64 {
        self.cur.log.last()
    }

    fn conf_state(&self) -> &ConfState {
        &self.cur.conf_state
    }

    fn snapshot_conf_state(&self) -> &ConfState {
        self.cur.log.snapshot.get_conf_state()
    }

    fn checkpoint_wanted(&self) -> &std::sync::atomic::AtomicBool {
        &self.checkpoint_wanted
    }

    fn checkpoint_bytes(&self) -> u64 {
        self.checkpoint_bytes
    }
}
