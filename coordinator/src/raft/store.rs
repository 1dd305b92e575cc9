//! What the raft core needs from its storage beyond raft-rs's read-only `Storage`: the
//! writes of the Ready loop, and an explicit flush. Implemented by [`super::storage::SledStorage`]
//! (the real one) and [`super::mem_store::MemStore`] (for deterministic simulation).

use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use raft::StorageError;

use super::storage::StoredState;
use crate::CoordinatorError;

pub trait RaftStore: raft::Storage {
    /// Appends entries, replacing any conflicting tail.
    fn append(&mut self, entries: &[Entry]) -> Result<(), CoordinatorError>;
    fn set_hard_state(&mut self, hs: &HardState) -> Result<(), CoordinatorError>;
    fn set_commit(&mut self, commit: u64) -> Result<(), CoordinatorError>;
    fn set_conf_state(&mut self, cs: &ConfState) -> Result<(), CoordinatorError>;
    /// Installs a leader's snapshot atomically; returns the state it carries.
    fn apply_snapshot(&mut self, snap: &Snapshot) -> Result<StoredState, CoordinatorError>;
    fn save_state(&mut self, stored: &StoredState) -> Result<(), CoordinatorError>;
    fn load_state(&self) -> Result<Option<StoredState>, CoordinatorError>;
    /// Drops applied entries up to `index`.
    fn compact(&mut self, index: u64) -> Result<(), CoordinatorError>;
    /// Makes every write so far durable.
    fn flush(&mut self) -> Result<(), CoordinatorError>;
    fn first(&self) -> u64;
    fn last(&self) -> u64;
    fn conf_state(&self) -> &ConfState;
}

/// The snapshot both stores serve: the saved state machine at its applied index, with the
/// current membership.
pub fn snapshot_of<S: RaftStore>(store: &S) -> raft::Result<Snapshot> {
    let other = |e: CoordinatorError| raft::Error::Store(StorageError::Other(Box::new(e)));
    let stored = store.load_state().map_err(other)?.unwrap_or_default();
    let mut snap = Snapshot::default();
    let meta = snap.mut_metadata();
    meta.index = stored.applied;
    meta.term = match store.term(stored.applied) {
        Ok(t) => t,
        Err(_) => store.initial_state()?.hard_state.term,
    };
    meta.set_conf_state(store.conf_state().clone());
    snap.data = stored.encode().map_err(other)?.into();
    Ok(snap)
}
