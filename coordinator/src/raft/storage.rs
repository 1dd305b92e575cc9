//! raft-rs `Storage` on sled: the raft log's format until 2026-12-07, kept to read older data
//! folders (moved into [`super::wal_store`] when first opened), and the home of the types both
//! share ([`StoredState`], [`bootstrap`]).
//!
//! The `raft` tree holds log entries under `e/<index BE>`, and under `m/`: hard state, conf
//! state and snapshot metadata. The `state` tree holds the last checkpoint of the state
//! machine (with its applied index) alone, so that the small writes of every commit never
//! touch a page holding the large state. A checkpoint or an installed snapshot changes both
//! trees in one sled transaction. Every write path is followed by an explicit flush in the
//! driver before anything that depends on it is sent or acknowledged.

use std::path::{Path, PathBuf};

use protobuf::Message as PbMessage;
use raft::prelude::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};

use super::store::RaftStore;
use super::wal_store::{read_manifest, write_manifest, MANIFEST_EVERY};
use crate::state::ClusterState;
use crate::CoordinatorError;

const KEY_HARD_STATE: &[u8] = b"m/hs";
const KEY_CONF_STATE: &[u8] = b"m/cs";
const KEY_SNAPSHOT_META: &[u8] = b"m/snap";
const KEY_STATE_MACHINE: &[u8] = b"m/sm";
const ENTRY_PREFIX: u8 = b'e';

fn entry_key(index: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = ENTRY_PREFIX;
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

/// The log position of the bootstrap snapshot. The initial membership is not in the log,
/// so every bootstrap member starts from the same virtual snapshot at this index (term 1),
/// and a member added later, whose log is empty, is sent a snapshot carrying the
/// membership instead of entries it could not interpret.
pub const BOOTSTRAP_INDEX: u64 = 1;

/// Snapshot metadata, hard state and conf state of a fresh store. A member added later
/// (`voters` empty) starts with nothing and waits for the leader.
pub fn bootstrap(voters: &[u64]) -> (SnapshotMetadata, HardState, ConfState) {
    let cs = ConfState { voters: voters.to_vec(), ..Default::default() };
    let mut meta = SnapshotMetadata::default();
    let mut hs = HardState::default();
    if !voters.is_empty() {
        meta.index = BOOTSTRAP_INDEX;
        meta.term = 1;
        meta.set_conf_state(cs.clone());
        hs.term = 1;
        hs.commit = BOOTSTRAP_INDEX;
    }
    (meta, hs, cs)
}

fn corrupt(what: impl std::fmt::Display) -> CoordinatorError {
    CoordinatorError::CorruptStorage(what.to_string())
}

/// The applied state machine as stored, with the index it reflects.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, Default)]
pub struct StoredState {
    pub applied: u64,
    pub state: ClusterState,
}

impl StoredState {
    pub fn encode(&self) -> Result<Vec<u8>, CoordinatorError> {
        // The state grows with the cluster (nodes, documents): no frame limit applies to it.
        Ok(shoal_protocol::frame::to_stored_bytes(self)?.to_vec())
    }
    pub fn decode(bytes: &[u8]) -> Result<Self, CoordinatorError> {
        shoal_protocol::frame::decode(bytes).map_err(|e| corrupt(format!("state machine: {e}")))
    }
}

/// What a sled store holds, read out whole.
pub struct Exported {
    pub hard_state: HardState,
    pub conf_state: ConfState,
    pub snapshot_meta: SnapshotMetadata,
    pub entries: Vec<Entry>,
    pub state: Option<StoredState>,
}

/// raft storage on a sled tree (the format before the write-ahead log; still read to move
/// an older data folder over).
pub struct SledStorage {
    db: sled::Db,
    tree: sled::Tree,
    /// The state machine checkpoint, under [`KEY_STATE_MACHINE`].
    state_tree: sled::Tree,
    hard_state: HardState,
    conf_state: ConfState,
    snapshot_meta: SnapshotMetadata,
    /// Index of the last entry (or of the snapshot when the log is empty).
    last: u64,
    /// A file outside sled recording a commit index known to be durable, so that a
    /// database that comes back emptier than it was (corrupted and "recovered" by
    /// truncation, or replaced) is refused instead of served.
    manifest: PathBuf,
    manifest_commit: u64,
    checkpoint_wanted: std::sync::atomic::AtomicBool,
    /// sled's log file, opened again to make each flush durable: sled 0.34's flush on Linux
    /// is `sync_file_range`, which writes the pages but neither flushes the disk's write cache
    /// nor records the file's growth, so it survives a killed process but not a power cut.
    /// `fdatasync` on this descriptor does both (etcd fdatasyncs its WAL the same way).
    log_file: std::fs::File,
}

fn get_pb<M: PbMessage>(tree: &sled::Tree, key: &[u8]) -> Result<Option<M>, CoordinatorError> {
    match tree.get(key)? {
        None => Ok(None),
        Some(v) => {
            M::parse_from_bytes(&v).map(Some).map_err(|e| corrupt(format!("{}: {e}", String::from_utf8_lossy(key))))
        }
    }
}

fn pb_bytes<M: PbMessage>(m: &M) -> Result<Vec<u8>, CoordinatorError> {
    m.write_to_bytes().map_err(|e| CoordinatorError::Raft(raft::Error::CodecError(e)))
}

/// Opens the sled database, waiting up to 2 s for its file lock: a store closed a moment ago
/// in this process releases the lock only when sled's background flusher lets go of it.
fn open_db(path: &Path) -> Result<sled::Db, CoordinatorError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match sled::Config::new().path(path).open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock") && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return Ok(other?),
        }
    }
}

impl SledStorage {
    /// Applies `batch` to the raft tree and, if given, stores `state` as the checkpoint, in
    /// one transaction: after a crash both happened or neither did.
    fn write_both(&self, batch: sled::Batch, state: Option<Vec<u8>>) -> Result<(), CoordinatorError> {
        use sled::transaction::{ConflictableTransactionError, TransactionError};
        use sled::Transactional;
        let result = (&self.tree, &self.state_tree).transaction(|(raft, st)| {
            raft.apply_batch(&batch)?;
            if let Some(bytes) = &state {
                st.insert(KEY_STATE_MACHINE, bytes.as_slice())?;
            }
            Ok::<(), ConflictableTransactionError<()>>(())
        });
        match result {
            Ok(()) => Ok(()),
            Err(TransactionError::Storage(e)) => Err(e.into()),
            Err(TransactionError::Abort(())) => Err(corrupt("the storage transaction was aborted")),
        }
    }

    /// Opens (or creates) the storage in `dir`. A fresh store is bootstrapped with `voters`.
    pub fn open(dir: &Path, voters: &[u64]) -> Result<Self, CoordinatorError> {
        Self::open_with(dir, voters, ClusterState::default())
    }

    /// Like [`open`](Self::open), but a fresh store of a bootstrap member starts from
    /// `initial` instead of an empty state (every bootstrap member must be given the same).
    pub fn open_with(dir: &Path, voters: &[u64], initial: ClusterState) -> Result<Self, CoordinatorError> {
        std::fs::create_dir_all(dir).map_err(|e| CoordinatorError::io(dir, e))?;
        let db = open_db(&dir.join("raft.sled"))?;
        let log_path = dir.join("raft.sled").join("db");
        let log_file = std::fs::File::open(&log_path).map_err(|e| CoordinatorError::io(&log_path, e))?;
        let tree = db.open_tree("raft")?;
        let state_tree = db.open_tree("state")?;
        let fresh = tree.get(KEY_CONF_STATE)?.is_none();
        let manifest = dir.join("raft.manifest");
        let manifest_commit = read_manifest(&manifest)?;
        if fresh && manifest_commit.is_some() {
            return Err(corrupt(format!(
                "{} holds no raft state but {} says it had committed up to index {}: the database was lost or damaged",
                dir.join("raft.sled").display(),
                manifest.display(),
                manifest_commit.unwrap_or(0)
            )));
        }
        let mut store = Self {
            db,
            tree,
            state_tree,
            hard_state: HardState::default(),
            conf_state: ConfState::default(),
            snapshot_meta: SnapshotMetadata::default(),
            last: 0,
            manifest,
            manifest_commit: manifest_commit.unwrap_or(0),
            checkpoint_wanted: Default::default(),
            log_file,
        };
        if fresh {
            let (meta, hs, cs) = bootstrap(voters);
            store.snapshot_meta = meta;
            store.hard_state = hs;
            store.conf_state = cs;
            let mut batch = sled::Batch::default();
            batch.insert(KEY_CONF_STATE, pb_bytes(&store.conf_state)?);
            batch.insert(KEY_SNAPSHOT_META, pb_bytes(&store.snapshot_meta)?);
            batch.insert(KEY_HARD_STATE, pb_bytes(&store.hard_state)?);
            let state = if voters.is_empty() {
                None
            } else {
                Some(StoredState { applied: BOOTSTRAP_INDEX, state: initial }.encode()?)
            };
            store.write_both(batch, state)?;
            store.flush()?;
        } else {
            store.hard_state = get_pb(&store.tree, KEY_HARD_STATE)?.unwrap_or_default();
            store.conf_state = get_pb(&store.tree, KEY_CONF_STATE)?.unwrap_or_default();
            store.snapshot_meta = get_pb(&store.tree, KEY_SNAPSHOT_META)?.unwrap_or_default();
        }
        store.last = store.scan_last()?;
        store.check_integrity()?;
        if store.hard_state.commit < store.manifest_commit {
            return Err(corrupt(format!(
                "the database's commit index {} is behind the {} it had reached: it was truncated or damaged",
                store.hard_state.commit, store.manifest_commit
            )));
        }
        write_manifest(&store.manifest, store.hard_state.commit)?;
        store.manifest_commit = store.hard_state.commit;
        Ok(store)
    }

    /// Everything the store holds, for moving it into the write-ahead log
    /// ([`super::wal_store::WalStorage`] does so when it finds a sled-era folder).
    pub fn export(&self) -> Result<Exported, CoordinatorError> {
        let entries = if self.last > self.snapshot_meta.index {
            raft::Storage::entries(self, self.first(), self.last + 1, None, GetEntriesContext::empty(false))
                .map_err(|e| corrupt(format!("reading the log to move it: {e}")))?
        } else {
            Vec::new()
        };
        Ok(Exported {
            hard_state: self.hard_state.clone(),
            conf_state: self.conf_state.clone(),
            snapshot_meta: self.snapshot_meta.clone(),
            entries,
            state: self.load_state()?,
        })
    }

    fn scan_last(&self) -> Result<u64, CoordinatorError> {
        match self.tree.scan_prefix([ENTRY_PREFIX]).next_back() {
            Some(kv) => {
                let (k, _) = kv?;
                let idx: [u8; 8] = k[1..].try_into().map_err(|_| corrupt("entry key of the wrong length"))?;
                Ok(u64::from_be_bytes(idx))
            }
            None => Ok(self.snapshot_meta.index),
        }
    }

    /// Walks the log once: every entry decodes, indexes are contiguous and terms never
    /// decrease, and the commit index is within the log.
    fn check_integrity(&self) -> Result<(), CoordinatorError> {
        let mut prev_term = self.snapshot_meta.term;
        for (expect, kv) in (self.snapshot_meta.index + 1..).zip(self.tree.scan_prefix([ENTRY_PREFIX])) {
            let (k, v) = kv?;
            let e = Entry::parse_from_bytes(&v).map_err(|err| corrupt(format!("log entry {k:?}: {err}")))?;
            if e.index != expect {
                return Err(corrupt(format!("log has a gap: expected entry {expect}, found {}", e.index)));
            }
            if e.term < prev_term {
                return Err(corrupt(format!("term goes backwards at entry {}", e.index)));
            }
            prev_term = e.term;
        }
        if self.hard_state.commit > self.last {
            return Err(corrupt(format!(
                "commit index {} is past the last log entry {}",
                self.hard_state.commit, self.last
            )));
        }
        Ok(())
    }
}

impl RaftStore for SledStorage {
    fn flush(&mut self) -> Result<(), CoordinatorError> {
        self.db.flush()?;
        self.log_file.sync_data().map_err(|e| CoordinatorError::io("raft.sled/db", e))?;
        if self.hard_state.commit >= self.manifest_commit + MANIFEST_EVERY {
            write_manifest(&self.manifest, self.hard_state.commit)?;
            self.manifest_commit = self.hard_state.commit;
        }
        Ok(())
    }

    fn first(&self) -> u64 {
        self.snapshot_meta.index + 1
    }

    fn last(&self) -> u64 {
        self.last
    }

    /// Appends entries, replacing any conflicting tail.
    fn append(&mut self, entries: &[Entry]) -> Result<(), CoordinatorError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let mut batch = sled::Batch::default();
        for idx in first.index..=self.last {
            batch.remove(&entry_key(idx)[..]);
        }
        for e in entries {
            batch.insert(&entry_key(e.index)[..], pb_bytes(e)?);
        }
        self.tree.apply_batch(batch)?;
        self.last = entries.last().map(|e| e.index).unwrap_or(self.last);
        Ok(())
    }

    fn set_hard_state(&mut self, hs: &HardState) -> Result<(), CoordinatorError> {
        self.tree.insert(KEY_HARD_STATE, pb_bytes(hs)?)?;
        self.hard_state = hs.clone();
        Ok(())
    }

    fn set_commit(&mut self, commit: u64) -> Result<(), CoordinatorError> {
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.set_hard_state(&hs)
    }

    fn set_conf_state(&mut self, cs: &ConfState) -> Result<(), CoordinatorError> {
        self.tree.insert(KEY_CONF_STATE, pb_bytes(cs)?)?;
        self.conf_state = cs.clone();
        Ok(())
    }

    fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    fn snapshot_conf_state(&self) -> &ConfState {
        self.snapshot_meta.get_conf_state()
    }

    fn checkpoint_wanted(&self) -> &std::sync::atomic::AtomicBool {
        &self.checkpoint_wanted
    }

    /// The stored state machine, if any has been saved.
    fn load_state(&self) -> Result<Option<StoredState>, CoordinatorError> {
        // Data dirs written before the state had a tree of its own keep it in the raft tree.
        let found = match self.state_tree.get(KEY_STATE_MACHINE)? {
            Some(v) => Some(v),
            None => self.tree.get(KEY_STATE_MACHINE)?,
        };
        match found {
            None => Ok(None),
            Some(v) => StoredState::decode(&v).map(Some),
        }
    }

    /// Installs a snapshot received from the leader: state machine, conf state and log
    /// position change in one atomic batch, so a crash leaves either the old or the new.
    fn apply_snapshot(&mut self, snap: &Snapshot) -> Result<StoredState, CoordinatorError> {
        let meta = snap.get_metadata().clone();
        let stored = StoredState::decode(&snap.data)?;
        let mut batch = sled::Batch::default();
        for kv in self.tree.scan_prefix([ENTRY_PREFIX]) {
            let (k, _) = kv?;
            batch.remove(k);
        }
        let mut hs = self.hard_state.clone();
        hs.commit = hs.commit.max(meta.index);
        hs.term = hs.term.max(meta.term);
        batch.insert(KEY_SNAPSHOT_META, pb_bytes(&meta)?);
        batch.insert(KEY_CONF_STATE, pb_bytes(meta.get_conf_state())?);
        batch.insert(KEY_HARD_STATE, pb_bytes(&hs)?);
        batch.remove(KEY_STATE_MACHINE);
        self.write_both(batch, Some(stored.encode()?))?;
        self.conf_state = meta.get_conf_state().clone();
        self.hard_state = hs;
        self.last = meta.index;
        self.snapshot_meta = meta;
        Ok(stored)
    }

    /// The state machine at `stored.applied` and the log compacted up to it, in one batch.
    fn checkpoint(&mut self, stored: &StoredState) -> Result<(), CoordinatorError> {
        let index = stored.applied;
        if index <= self.snapshot_meta.index || index > self.last {
            return Ok(());
        }
        let term = raft::Storage::term(self, index)?;
        let mut meta = self.snapshot_meta.clone();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(self.conf_state.clone());
        let mut batch = sled::Batch::default();
        for idx in self.snapshot_meta.index + 1..=index {
            batch.remove(&entry_key(idx)[..]);
        }
        batch.insert(KEY_SNAPSHOT_META, pb_bytes(&meta)?);
        batch.remove(KEY_STATE_MACHINE);
        self.write_both(batch, Some(stored.encode()?))?;
        self.snapshot_meta = meta;
        Ok(())
    }
}

fn store_err(e: CoordinatorError) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(e)))
}

impl raft::Storage for SledStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState { hard_state: self.hard_state.clone(), conf_state: self.conf_state.clone() })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.snapshot_meta.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max = max_size.into().unwrap_or(u64::MAX);
        let mut out = Vec::with_capacity((high - low) as usize);
        let mut size = 0u64;
        for kv in self.tree.range(&entry_key(low)[..]..&entry_key(high)[..]) {
            let (_, v) = kv.map_err(|e| store_err(e.into()))?;
            let e = Entry::parse_from_bytes(&v).map_err(|err| store_err(corrupt(format!("log entry: {err}"))))?;
            size += v.len() as u64;
            if !out.is_empty() && size > max {
                break;
            }
            out.push(e);
        }
        if out.first().map(|e| e.index) != Some(low) {
            return Err(store_err(corrupt(format!("log entry {low} is missing"))));
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snapshot_meta.index {
            return Ok(self.snapshot_meta.term);
        }
        if idx < self.snapshot_meta.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        match self.tree.get(entry_key(idx)).map_err(|e| store_err(e.into()))? {
            Some(v) => Entry::parse_from_bytes(&v)
                .map(|e| e.term)
                .map_err(|err| store_err(corrupt(format!("log entry {idx}: {err}")))),
            None => Err(store_err(corrupt(format!("log entry {idx} is missing")))),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last)
    }

    fn snapshot(&self, _request_index: u64, to: u64) -> raft::Result<Snapshot> {
        super::store::snapshot_of(self, to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry { index, term, data: vec![index as u8].into(), ..Default::default() }
    }

    /// An older data folder whose sled log is damaged is refused when it is moved over, and
    /// left as it was.
    #[test]
    fn a_corrupt_entry_is_reported_on_open() {
        let dir = tempfile::tempdir().expect("tmp");
        {
            let mut s = SledStorage::open(dir.path(), &[1]).expect("open");
            s.append(&[entry(2, 1), entry(3, 1)]).expect("append");
            s.tree.insert(entry_key(3), &b"\xff\xff\xff garbage"[..]).expect("poke");
            s.flush().expect("flush");
        }
        let err = SledStorage::open(dir.path(), &[1]).err().expect("must refuse");
        assert!(err.to_string().contains("corrupt storage"), "{err}");
        let err = super::super::wal_store::WalStorage::open(dir.path(), &[1]).err().expect("must refuse");
        assert!(err.to_string().contains("corrupt storage"), "{err}");
        assert!(dir.path().join("raft.sled").exists() && !dir.path().join("wal").exists());
    }
}
