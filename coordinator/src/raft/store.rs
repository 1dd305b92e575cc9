//! What the raft core needs from its storage beyond raft-rs's read-only `Storage`: the
//! writes of the Ready loop, and an explicit flush. Implemented by [`super::storage::SledStorage`]
//! (the real one) and [`super::mem_store::MemStore`] (for deterministic simulation).

use raft::prelude::{ConfState, Entry, HardState, Snapshot};

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
