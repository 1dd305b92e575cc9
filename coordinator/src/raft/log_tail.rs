//! The raft log after the last snapshot, in memory: what both stores ([`super::wal_store`],
//! [`super::mem_store`]) hold and serve to raft-rs. Compacted at every checkpoint, so it stays
//! small.

use raft::prelude::{Entry, SnapshotMetadata};
use raft::StorageError;

#[derive(Clone, Default, Debug)]
pub struct LogTail {
    /// The snapshot the entries follow.
    pub snapshot: SnapshotMetadata,
    /// `snapshot.index + 1` first.
    entries: Vec<Entry>,
}

impl LogTail {
    pub fn new(snapshot: SnapshotMetadata) -> Self {
        Self { snapshot, entries: Vec::new() }
    }

    pub fn first(&self) -> u64 {
        self.snapshot.index + 1
    }

    pub fn last(&self) -> u64 {
        self.snapshot.index + self.entries.len() as u64
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Appends `entries` (contiguous, the first at most one past the last), replacing the
    /// tail from the first one's index. The caller checks the range.
    pub fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else { return };
        self.entries.truncate(first.index.saturating_sub(self.first()) as usize);
        self.entries.extend_from_slice(entries);
    }

    /// Drops the entries up to `snapshot.index`, which becomes the new snapshot.
    pub fn compact(&mut self, snapshot: SnapshotMetadata) {
        let drop = (snapshot.index + 1).saturating_sub(self.first()).min(self.entries.len() as u64);
        self.entries.drain(..drop as usize);
        self.snapshot = snapshot;
    }

    /// Replaces the whole log by `snapshot` (one installed from the leader).
    pub fn reset(&mut self, snapshot: SnapshotMetadata) {
        self.entries.clear();
        self.snapshot = snapshot;
    }

    /// raft-rs's `Storage::entries`: `[low, high)`, at most `max_size` bytes (at least one).
    pub fn slice(&self, low: u64, high: u64, max_size: Option<u64>) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let (lo, hi) = ((low - self.first()) as usize, (high - self.first()) as usize);
        let mut out = self.entries[lo..hi].to_vec();
        raft::util::limit_size(&mut out, max_size);
        Ok(out)
    }

    /// raft-rs's `Storage::term`.
    pub fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snapshot.index {
            return Ok(self.snapshot.term);
        }
        if idx < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(self.entries[(idx - self.first()) as usize].term)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(index: u64, term: u64) -> Entry {
        Entry { index, term, ..Default::default() }
    }

    fn at(index: u64, term: u64) -> SnapshotMetadata {
        SnapshotMetadata { index, term, ..Default::default() }
    }

    #[test]
    fn appends_replace_the_tail_and_compaction_keeps_what_follows() {
        let mut log = LogTail::new(at(5, 1));
        log.append(&[e(6, 1), e(7, 1), e(8, 1)]);
        log.append(&[e(8, 2), e(9, 2)]);
        assert_eq!((log.first(), log.last()), (6, 9));
        assert_eq!(log.term(8).expect("term"), 2);
        assert_eq!(log.term(5).expect("snapshot term"), 1);
        assert!(matches!(log.term(4), Err(raft::Error::Store(StorageError::Compacted))));
        assert!(matches!(log.term(10), Err(raft::Error::Store(StorageError::Unavailable))));
        log.compact(at(7, 1));
        assert_eq!(log.slice(8, 10, None).expect("slice").iter().map(|e| e.index).collect::<Vec<_>>(), [8, 9]);
        assert!(matches!(log.slice(7, 9, None), Err(raft::Error::Store(StorageError::Compacted))));
        assert!(matches!(log.slice(8, 11, None), Err(raft::Error::Store(StorageError::Unavailable))));
        log.reset(at(20, 3));
        assert_eq!((log.first(), log.last(), log.term(20).expect("term")), (21, 20, 3));
    }
}
