//! What the raft core needs from its storage beyond raft-rs's read-only `Storage`: the
//! writes of the Ready loop, and an explicit flush. Implemented by [`super::storage::SledStorage`]
//! (the real one) and [`super::mem_store::MemStore`] (for deterministic simulation).

use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use raft::StorageError;
use std::sync::atomic::{AtomicBool, Ordering};

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
    /// Saves the applied state machine and drops the log entries it covers (up to
    /// `stored.applied`), atomically: the checkpoint becomes the snapshot that replaces them.
    /// Between checkpoints the state lives in memory only; after a restart the entries since
    /// the last checkpoint are applied again from the log.
    fn checkpoint(&mut self, stored: &StoredState) -> Result<(), CoordinatorError>;
    fn load_state(&self) -> Result<Option<StoredState>, CoordinatorError>;
    /// Makes every write so far durable.
    fn flush(&mut self) -> Result<(), CoordinatorError>;
    fn first(&self) -> u64;
    fn last(&self) -> u64;
    fn conf_state(&self) -> &ConfState;
    /// The membership at the last checkpoint (or snapshot installed).
    fn snapshot_conf_state(&self) -> &ConfState;
    /// Size of the last checkpoint as stored (0 when unknown): the core waits for as many
    /// bytes of log before writing the next one.
    fn checkpoint_bytes(&self) -> u64 {
        0
    }
    /// Set when a snapshot was asked for that the last checkpoint cannot serve (its
    /// membership does not hold the member it is for, one added since): the core then
    /// checkpoints at once, and raft-rs asks again.
    fn checkpoint_wanted(&self) -> &AtomicBool;
}

/// The snapshot both stores serve: the last checkpoint of the state machine, with the
/// membership at that index.
pub fn snapshot_of<S: RaftStore>(store: &S, to: u64) -> raft::Result<Snapshot> {
    let other = |e: CoordinatorError| raft::Error::Store(StorageError::Other(Box::new(e)));
    let cs = store.snapshot_conf_state();
    if ![&cs.voters, &cs.learners, &cs.voters_outgoing, &cs.learners_next].iter().any(|ids| ids.contains(&to)) {
        store.checkpoint_wanted().store(true, Ordering::Relaxed);
        return Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable));
    }
    let stored = store.load_state().map_err(other)?.unwrap_or_default();
    let mut snap = Snapshot::default();
    let meta = snap.mut_metadata();
    meta.index = stored.applied;
    meta.term = match store.term(stored.applied) {
        Ok(t) => t,
        Err(_) => store.initial_state()?.hard_state.term,
    };
    meta.set_conf_state(store.snapshot_conf_state().clone());
    snap.data = stored.encode().map_err(other)?.into();
    Ok(snap)
}
