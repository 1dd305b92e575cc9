//! raft-rs `Storage` on a write-ahead log of our own ([`super::wal`]) and a checkpoint file.
//!
//! ```text
//! <dir>/wal/<seq>.wal     the log: entries, hard state, conf state, snapshots installed
//! <dir>/checkpoint        the state machine at its applied index, with the snapshot metadata
//! <dir>/raft.manifest     a commit index known to be durable (see below)
//! ```
//!
//! The log is held in memory (it is compacted every `compact_after` entries) and every write
//! is appended to the WAL; a flush is one write and one `fdatasync`, as etcd's WAL. The
//! checkpoint file is written whole (temporary file, fsync, rename, fsync of the folder) and is
//! the snapshot the log starts after: on opening, the entries it covers are skipped, and
//! segments holding only such entries are deleted. A data folder written by earlier versions
//! (raft on sled, `raft.sled/`) is moved into this form the first time it is opened.

use std::path::{Path, PathBuf};

use protobuf::Message as PbMessage;
use raft::prelude::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState};
use tracing::{info, warn};

use super::log_tail::LogTail;
use super::storage::{bootstrap, StoredState, BOOTSTRAP_INDEX};
use super::store::RaftStore;
use super::wal::{Frame, Kind, Wal, SEGMENT_BYTES};
use crate::state::ClusterState;
use crate::CoordinatorError;

const CHECKPOINT_MAGIC: &[u8; 8] = b"SHOALCK1";

fn corrupt(what: impl std::fmt::Display) -> CoordinatorError {
    CoordinatorError::CorruptStorage(what.to_string())
}

fn pb_bytes<M: PbMessage>(m: &M) -> Result<Vec<u8>, CoordinatorError> {
    m.write_to_bytes().map_err(|e| CoordinatorError::Raft(raft::Error::CodecError(e)))
}

fn parse_pb<M: PbMessage>(bytes: &[u8], what: &str) -> Result<M, CoordinatorError> {
    M::parse_from_bytes(bytes).map_err(|e| corrupt(format!("{what}: {e}")))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CoordinatorError + '_ {
    move |e| CoordinatorError::io(path, e)
}

fn sync_dir(dir: &Path) -> Result<(), CoordinatorError> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Creates (or truncates) a file readable by its owner only: the checkpoint holds API key
/// hashes and the catalogue.
fn owner_only_file(path: &Path) -> Result<std::fs::File, CoordinatorError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).map_err(io(path))
}

/// Writes the checkpoint file: `magic | meta_len u32 | meta | state_len u64 | state | crc32`,
/// the checksum over everything between the magic and itself. Whole or not at all.
fn write_checkpoint(dir: &Path, meta: &SnapshotMetadata, state: &[u8]) -> Result<(), CoordinatorError> {
    use std::io::Write;
    let meta = pb_bytes(meta)?;
    let tmp = dir.join("checkpoint.tmp");
    let path = dir.join("checkpoint");
    let mut head = Vec::with_capacity(24 + meta.len());
    head.extend_from_slice(CHECKPOINT_MAGIC);
    head.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    head.extend_from_slice(&meta);
    head.extend_from_slice(&(state.len() as u64).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&head[8..]);
    crc.update(state);
    let mut f = owner_only_file(&tmp)?;
    f.write_all(&head).map_err(io(&tmp))?;
    f.write_all(state).map_err(io(&tmp))?;
    f.write_all(&crc.finalize().to_le_bytes()).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    sync_dir(dir)
}

/// Reads the checkpoint file, if there is one: its snapshot metadata and state bytes.
fn read_checkpoint(dir: &Path) -> Result<Option<(SnapshotMetadata, Vec<u8>)>, CoordinatorError> {
    let path = dir.join("checkpoint");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CoordinatorError::io(&path, e)),
    };
    let bad = |what: &str| corrupt(format!("{}: {what}", path.display()));
    if bytes.len() < 24 || &bytes[..8] != CHECKPOINT_MAGIC {
        return Err(bad("not a checkpoint file"));
    }
    let crc_at = bytes.len() - 4;
    let crc = u32::from_le_bytes(bytes[crc_at..].try_into().map_err(|_| bad("short"))?);
    if crc32fast::hash(&bytes[8..crc_at]) != crc {
        return Err(bad("fails its checksum"));
    }
    let meta_len = u32::from_le_bytes(bytes[8..12].try_into().map_err(|_| bad("short"))?) as usize;
    let state_at = 12 + meta_len + 8;
    if state_at > crc_at {
        return Err(bad("its lengths do not add up"));
    }
    let meta: SnapshotMetadata = parse_pb(&bytes[12..12 + meta_len], "checkpoint metadata")?;
    let state_len = u64::from_le_bytes(bytes[12 + meta_len..state_at].try_into().map_err(|_| bad("short"))?);
    if state_at as u64 + state_len != crc_at as u64 {
        return Err(bad("its lengths do not add up"));
    }
    Ok(Some((meta, bytes[state_at..crc_at].to_vec())))
}

pub(super) fn read_manifest(path: &Path) -> Result<Option<u64>, CoordinatorError> {
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .lines()
            .find_map(|l| l.strip_prefix("durable_commit="))
            .and_then(|v| v.trim().parse().ok())
            .map(Some)
            .ok_or_else(|| corrupt(format!("{} is unreadable", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CoordinatorError::io(path, e)),
    }
}

pub(super) fn write_manifest(path: &Path, commit: u64) -> Result<(), CoordinatorError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = owner_only_file(&tmp)?;
    f.write_all(format!("durable_commit={commit}\n").as_bytes()).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// The manifest is rewritten once the commit index has moved this far past it, at most once
/// per [`MANIFEST_INTERVAL`] (each rewrite is a file creation, an fsync and a rename: at every
/// 64 commits it cost a busy leader hundreds of metadata syncs per second).
pub(super) const MANIFEST_EVERY: u64 = 64;
const MANIFEST_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The raft log in memory, written through to the WAL.
pub struct WalStorage {
    dir: PathBuf,
    wal: Wal,
    /// The snapshot (the checkpoint's position) and the entries after it.
    log: LogTail,
    hard_state: HardState,
    conf_state: ConfState,
    /// A file recording a commit index known to be durable, so that a log that comes back
    /// emptier than it was (lost, replaced, or cut by damage) is refused instead of served.
    manifest: PathBuf,
    manifest_commit: u64,
    manifest_written: std::time::Instant,
    checkpoint_wanted: std::sync::atomic::AtomicBool,
    /// Size of the checkpoint file.
    checkpoint_bytes: u64,
}

/// The frame a segment starts with: everything the entries after it need.
fn state_frame(meta: &SnapshotMetadata, cs: &ConfState, hs: &HardState) -> Result<Frame, CoordinatorError> {
    let mut f = Frame::default();
    f.push(Kind::Compact, &pb_bytes(meta)?);
    f.push(Kind::ConfState, &pb_bytes(cs)?);
    f.push(Kind::HardState, &pb_bytes(hs)?);
    Ok(f)
}

impl WalStorage {
    /// Opens (or creates) the storage in `dir`. A fresh store is bootstrapped with `voters`.
    pub fn open(dir: &Path, voters: &[u64]) -> Result<Self, CoordinatorError> {
        Self::open_with(dir, voters, ClusterState::default())
    }

    /// Like [`open`](Self::open), but a fresh store of a bootstrap member starts from
    /// `initial` instead of an empty state (every bootstrap member must be given the same).
    pub fn open_with(dir: &Path, voters: &[u64], initial: ClusterState) -> Result<Self, CoordinatorError> {
        Self::open_sized(dir, voters, initial, SEGMENT_BYTES)
    }

    /// [`open_with`](Self::open_with) with segments of `segment_bytes` (tests use small ones).
    pub fn open_sized(
        dir: &Path,
        voters: &[u64],
        initial: ClusterState,
        segment_bytes: u64,
    ) -> Result<Self, CoordinatorError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let wal_dir = dir.join("wal");
        let manifest = dir.join("raft.manifest");
        let manifest_commit = read_manifest(&manifest)?;
        if !wal_dir.exists() {
            let sled_dir = dir.join("raft.sled");
            if sled_dir.join("db").exists() {
                migrate_from_sled(dir, &wal_dir, segment_bytes)?;
            } else if let Some(commit) = manifest_commit {
                return Err(corrupt(format!(
                    "{} holds no raft log but {} says it had committed up to index {commit}: the log was lost or damaged",
                    dir.display(),
                    manifest.display(),
                )));
            } else {
                let (meta, hs, cs) = bootstrap(voters);
                if !voters.is_empty() {
                    let state = StoredState { applied: BOOTSTRAP_INDEX, state: initial }.encode()?;
                    write_checkpoint(dir, &meta, &state)?;
                }
                Wal::create(&wal_dir, segment_bytes, &mut state_frame(&meta, &cs, &hs)?)?;
            }
        }
        let (mut wal, segments) = Wal::open(&wal_dir, segment_bytes)?;
        let checkpoint = read_checkpoint(dir)?;
        let checkpoint_bytes = checkpoint.as_ref().map(|(_, b)| b.len() as u64).unwrap_or(0);
        let meta = checkpoint.map(|(m, _)| m).unwrap_or_default();
        let mut log = LogTail::new(meta.clone());
        let mut hs = HardState::default();
        let mut cs = ConfState::default();
        let mut term_at_snapshot: Option<u64> = None;
        let mut max_indexes = Vec::with_capacity(segments.len());
        for records in &segments {
            let mut max = 0;
            for r in records {
                match r.kind {
                    Kind::Entry => {
                        let e: Entry = parse_pb(&r.payload, "log entry")?;
                        max = max.max(e.index);
                        if e.index <= meta.index {
                            if e.index == meta.index {
                                term_at_snapshot = Some(e.term);
                            }
                            continue;
                        }
                        if e.index > log.last() + 1 {
                            return Err(corrupt(format!(
                                "log has a gap: expected entry {}, found {}",
                                log.last() + 1,
                                e.index
                            )));
                        }
                        log.append(&[e]);
                    }
                    Kind::HardState => hs = parse_pb(&r.payload, "hard state")?,
                    Kind::ConfState => cs = parse_pb(&r.payload, "conf state")?,
                    Kind::Compact | Kind::Install => {
                        let m: SnapshotMetadata = parse_pb(&r.payload, "snapshot metadata")?;
                        if m.index > meta.index {
                            return Err(corrupt(format!(
                                "the log starts after index {} but the checkpoint file is at {}: the checkpoint was lost",
                                m.index, meta.index
                            )));
                        }
                        if r.kind == Kind::Install {
                            log.reset(meta.clone());
                            term_at_snapshot = (m.index == meta.index).then_some(m.term);
                        }
                    }
                }
            }
            max_indexes.push(max);
        }
        wal.set_max_indexes(&max_indexes);
        // A snapshot from the leader whose install record did not reach the log before a crash:
        // entries after it that do not follow from it go.
        if term_at_snapshot.is_some_and(|t| t != meta.term) && log.last() > meta.index {
            warn!(index = meta.index, "dropping log entries that do not follow the installed snapshot");
            log.reset(meta.clone());
        }
        hs.commit = hs.commit.max(meta.index);
        hs.term = hs.term.max(meta.term);
        if cs == ConfState::default() {
            cs = meta.get_conf_state().clone();
        }
        let mut store = Self {
            dir: dir.to_path_buf(),
            wal,
            log,
            hard_state: hs,
            conf_state: cs,
            manifest,
            manifest_commit: manifest_commit.unwrap_or(0),
            manifest_written: std::time::Instant::now(),
            checkpoint_wanted: Default::default(),
            checkpoint_bytes,
        };
        store.check_integrity()?;
        if store.hard_state.commit < store.manifest_commit {
            return Err(corrupt(format!(
                "the log's commit index {} is behind the {} it had reached: it was truncated or damaged",
                store.hard_state.commit, store.manifest_commit
            )));
        }
        write_manifest(&store.manifest, store.hard_state.commit)?;
        store.manifest_commit = store.hard_state.commit;
        Ok(store)
    }

    /// Terms never decrease and the commit index is within the log.
    fn check_integrity(&self) -> Result<(), CoordinatorError> {
        let mut prev = self.log.snapshot.term;
        for e in self.log.entries() {
            if e.term < prev {
                return Err(corrupt(format!("term goes backwards at entry {}", e.index)));
            }
            prev = e.term;
        }
        if self.hard_state.commit > self.last() {
            return Err(corrupt(format!(
                "commit index {} is past the last log entry {}",
                self.hard_state.commit,
                self.last()
            )));
        }
        Ok(())
    }

    /// Where the next write goes in the newest segment (tests cut the log there).
    #[cfg(test)]
    fn wal_offset(&self) -> u64 {
        self.wal.offset()
    }

    /// How many segment files the log has now.
    pub fn segments(&self) -> usize {
        self.wal.segment_count()
    }
}

/// Moves a sled-era raft folder into the WAL form: the checkpoint, then the log (one segment,
/// created whole), then `raft.sled` is renamed `raft.sled.migrated` (kept for the operator to
/// delete). A crash before the log appears leaves the sled database in charge.
fn migrate_from_sled(dir: &Path, wal_dir: &Path, segment_bytes: u64) -> Result<(), CoordinatorError> {
    let old = super::storage::SledStorage::open(dir, &[])?;
    let exported = old.export()?;
    drop(old);
    if let Some(state) = &exported.state {
        write_checkpoint(dir, &exported.snapshot_meta, &state.encode()?)?;
    }
    let mut frame = state_frame(&exported.snapshot_meta, &exported.conf_state, &exported.hard_state)?;
    for e in &exported.entries {
        frame.push(Kind::Entry, &pb_bytes(e)?);
    }
    Wal::create(wal_dir, segment_bytes, &mut frame)?;
    let from = dir.join("raft.sled");
    let to = dir.join("raft.sled.migrated");
    std::fs::rename(&from, &to).map_err(io(&to))?;
    info!(
        entries = exported.entries.len(),
        old = %to.display(),
        "moved the raft log from sled to the write-ahead log; the old folder can be deleted"
    );
    Ok(())
}

impl RaftStore for WalStorage {
    fn flush(&mut self) -> Result<(), CoordinatorError> {
        if self.wal.has_pending() {
            if self.wal.must_roll() {
                let mut first = state_frame(&self.log.snapshot, &self.conf_state, &self.hard_state)?;
                self.wal.roll(&mut first)?;
            }
            self.wal.sync()?;
        }
        self.wal.drop_through(self.log.snapshot.index)?;
        if self.hard_state.commit >= self.manifest_commit + MANIFEST_EVERY
            && self.manifest_written.elapsed() >= MANIFEST_INTERVAL
        {
            write_manifest(&self.manifest, self.hard_state.commit)?;
            self.manifest_commit = self.hard_state.commit;
            self.manifest_written = std::time::Instant::now();
        }
        Ok(())
    }

    fn first(&self) -> u64 {
        self.log.first()
    }

    fn last(&self) -> u64 {
        self.log.last()
    }

    /// Appends entries, replacing any conflicting tail.
    fn append(&mut self, entries: &[Entry]) -> Result<(), CoordinatorError> {
        let Some(first) = entries.first() else { return Ok(()) };
        if first.index < self.log.first() || first.index > self.log.last() + 1 {
            return Err(corrupt(format!(
                "append at {} outside the log ({}..={})",
                first.index,
                self.log.first(),
                self.log.last() + 1
            )));
        }
        for e in entries {
            self.wal.push_entry(e.index, &pb_bytes(e)?);
        }
        self.log.append(entries);
        Ok(())
    }

    fn set_hard_state(&mut self, hs: &HardState) -> Result<(), CoordinatorError> {
        self.wal.push(Kind::HardState, &pb_bytes(hs)?);
        self.hard_state = hs.clone();
        Ok(())
    }

    fn set_commit(&mut self, commit: u64) -> Result<(), CoordinatorError> {
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.set_hard_state(&hs)
    }

    fn set_conf_state(&mut self, cs: &ConfState) -> Result<(), CoordinatorError> {
        self.wal.push(Kind::ConfState, &pb_bytes(cs)?);
        self.conf_state = cs.clone();
        Ok(())
    }

    fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    fn snapshot_conf_state(&self) -> &ConfState {
        self.log.snapshot.get_conf_state()
    }

    fn checkpoint_wanted(&self) -> &std::sync::atomic::AtomicBool {
        &self.checkpoint_wanted
    }

    fn checkpoint_bytes(&self) -> u64 {
        self.checkpoint_bytes
    }

    fn load_state(&self) -> Result<Option<StoredState>, CoordinatorError> {
        match read_checkpoint(&self.dir)? {
            None => Ok(None),
            Some((_, bytes)) => StoredState::decode(&bytes).map(Some),
        }
    }

    /// Installs a snapshot received from the leader: the checkpoint file first, then the
    /// install record (made durable by the Ready's flush). A crash between the two is sorted
    /// out on opening: the checkpoint rules, and entries that do not follow it are dropped.
    fn apply_snapshot(&mut self, snap: &Snapshot) -> Result<StoredState, CoordinatorError> {
        let meta = snap.get_metadata().clone();
        let stored = StoredState::decode(&snap.data)?;
        write_checkpoint(&self.dir, &meta, &snap.data)?;
        self.checkpoint_bytes = snap.data.len() as u64;
        let mut hs = self.hard_state.clone();
        hs.commit = hs.commit.max(meta.index);
        hs.term = hs.term.max(meta.term);
        self.wal.push(Kind::Install, &pb_bytes(&meta)?);
        self.wal.push(Kind::ConfState, &pb_bytes(meta.get_conf_state())?);
        self.wal.push(Kind::HardState, &pb_bytes(&hs)?);
        self.conf_state = meta.get_conf_state().clone();
        self.hard_state = hs;
        self.log.reset(meta);
        Ok(stored)
    }

    /// Writes the state machine at `stored.applied` as the checkpoint and drops the entries it
    /// covers; the segments holding only those are deleted at the next flush.
    fn checkpoint(&mut self, stored: &StoredState) -> Result<(), CoordinatorError> {
        let index = stored.applied;
        if index <= self.log.snapshot.index || index > self.last() {
            return Ok(());
        }
        let term = raft::Storage::term(self, index)?;
        let mut meta = self.log.snapshot.clone();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(self.conf_state.clone());
        let bytes = stored.encode()?;
        write_checkpoint(&self.dir, &meta, &bytes)?;
        self.checkpoint_bytes = bytes.len() as u64;
        self.log.compact(meta);
        Ok(())
    }
}

impl raft::Storage for WalStorage {
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
        self.log.slice(low, high, max_size.into())
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.log.term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.log.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, _request_index: u64, to: u64) -> raft::Result<Snapshot> {
        super::store::snapshot_of(self, to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::{Storage, StorageError};

    fn entry(index: u64, term: u64) -> Entry {
        Entry { index, term, data: vec![index as u8; 40].into(), ..Default::default() }
    }

    fn indexes_terms(s: &WalStorage) -> Vec<(u64, u64)> {
        let (first, last) = (s.first_index().expect("first"), s.last_index().expect("last"));
        if last < first {
            return Vec::new();
        }
        let got = s.entries(first, last + 1, None, GetEntriesContext::empty(false)).expect("entries");
        got.iter().map(|e| (e.index, e.term)).collect()
    }

    #[test]
    fn entries_survive_reopen_and_conflicts_truncate() {
        let dir = tempfile::tempdir().expect("tmp");
        {
            let mut s = WalStorage::open(dir.path(), &[1]).expect("open");
            s.append(&[entry(2, 1), entry(3, 1), entry(4, 1)]).expect("append");
            s.flush().expect("flush");
            s.append(&[entry(4, 2), entry(5, 2)]).expect("append");
            s.set_hard_state(&HardState { term: 2, commit: 5, ..Default::default() }).expect("hs");
            s.flush().expect("flush");
            // Not flushed: gone after the "crash" (the store is dropped without a flush).
            s.append(&[entry(6, 2)]).expect("append");
        }
        let s = WalStorage::open(dir.path(), &[9]).expect("reopen");
        assert_eq!(s.initial_state().expect("state").conf_state.voters, vec![1]);
        assert_eq!(s.initial_state().expect("state").hard_state.commit, 5);
        assert_eq!(indexes_terms(&s), vec![(2, 1), (3, 1), (4, 2), (5, 2)]);
        assert_eq!(s.term(4).expect("term"), 2);
    }

    #[test]
    fn a_checkpoint_saves_the_state_compacts_and_serves_as_the_snapshot() {
        let dir = tempfile::tempdir().expect("tmp");
        {
            let mut s = WalStorage::open(dir.path(), &[1]).expect("open");
            s.append(&[entry(2, 1), entry(3, 1), entry(4, 2)]).expect("append");
            s.set_hard_state(&HardState { term: 2, commit: 4, ..Default::default() }).expect("hs");
            s.flush().expect("flush");
            let mut state = ClusterState::default();
            state.coordinators.insert(
                1,
                crate::state::CoordinatorRecord { id: 1, quic: "127.0.0.1:1".into(), http: "127.0.0.1:2".into() },
            );
            s.checkpoint(&StoredState { applied: 3, state }).expect("checkpoint");
            // A later membership is not the checkpoint's.
            s.set_conf_state(&ConfState { voters: vec![1, 2], ..Default::default() }).expect("cs");
            s.flush().expect("flush");
        }
        let s = WalStorage::open(dir.path(), &[1]).expect("reopen");
        assert_eq!(s.first_index().expect("first"), 4);
        assert_eq!(s.term(3).expect("term"), 1);
        assert_eq!(s.initial_state().expect("state").conf_state.voters, vec![1, 2]);
        assert!(matches!(
            s.entries(1, 3, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        let loaded = s.load_state().expect("load").expect("a state");
        assert_eq!((loaded.applied, loaded.state.coordinators.len()), (3, 1));
        let snap = raft::Storage::snapshot(&s, 0, 1).expect("snapshot");
        assert_eq!((snap.get_metadata().index, snap.get_metadata().term), (3, 1));
        assert_eq!(snap.get_metadata().get_conf_state().voters, vec![1]);
        assert_eq!(StoredState::decode(&snap.data).expect("decode").applied, 3);
        assert!(matches!(
            raft::Storage::snapshot(&s, 0, 2),
            Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable))
        ));
        assert!(s.checkpoint_wanted().load(std::sync::atomic::Ordering::Relaxed));
    }

    #[test]
    fn a_state_larger_than_a_frame_is_checkpointed_and_read_back() {
        let dir = tempfile::tempdir().expect("tmp");
        let big = crate::state::synthetic_state(1_000, 50_000);
        {
            let mut s = WalStorage::open_with(dir.path(), &[1], big).expect("open");
            s.append(&[entry(2, 1)]).expect("append");
            s.flush().expect("flush");
            s.checkpoint(&s.load_state().expect("load").map(|st| StoredState { applied: 2, ..st }).expect("state"))
                .expect("checkpoint");
            s.flush().expect("flush");
        }
        let s = WalStorage::open(dir.path(), &[1]).expect("reopen");
        let loaded = s.load_state().expect("load").expect("a state");
        assert_eq!(loaded.applied, 2);
        assert_eq!(loaded.state.knowledge_bases["synthetic"].documents.len(), 50_000);
        assert_eq!(loaded.state.nodes.len(), 1_000);
    }

    #[test]
    fn segments_covered_by_a_checkpoint_are_deleted_and_the_rest_reads_back() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = WalStorage::open_sized(dir.path(), &[1], ClusterState::default(), 4096).expect("open");
        for i in 2..=200 {
            s.append(&[entry(i, 1)]).expect("append");
            s.set_commit(i).expect("commit");
            s.flush().expect("flush");
        }
        let before = s.segments();
        assert!(before >= 4, "{before} segments");
        s.checkpoint(&StoredState { applied: 150, state: ClusterState::default() }).expect("checkpoint");
        s.flush().expect("flush");
        assert!(s.segments() <= 2, "{} of {before} segments left", s.segments());
        drop(s);
        let s = WalStorage::open_sized(dir.path(), &[1], ClusterState::default(), 4096).expect("reopen");
        assert_eq!(indexes_terms(&s), (151..=200).map(|i| (i, 1)).collect::<Vec<_>>());
        assert_eq!(s.initial_state().expect("state").hard_state.commit, 200);
        assert_eq!(s.load_state().expect("load").expect("state").applied, 150);
    }

    /// A power cut during a flush: only part of the flush's write reached the disk. Every
    /// earlier flush must come back whole, and the cut flush not at all (or whole, if its
    /// write did land), at every possible cut point.
    #[test]
    fn a_flush_cut_anywhere_loses_only_that_flush() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut offsets = Vec::new();
        {
            let mut s = WalStorage::open(dir.path(), &[1]).expect("open");
            for i in 2..=5 {
                offsets.push(s.wal_offset());
                s.append(&[entry(i, 1)]).expect("append");
                s.set_hard_state(&HardState { term: 1, commit: i - 1, ..Default::default() }).expect("hs");
                s.flush().expect("flush");
            }
            offsets.push(s.wal_offset());
        }
        let segment = dir.path().join("wal").join("0000000000000000.wal");
        let pristine = std::fs::read(&segment).expect("read");
        let (start, end) = (offsets[3] as usize, offsets[4] as usize); // the flush of entry 5
                                                                       // A sector is written whole or not at all, so the 16-byte frame header (which never
                                                                       // spans two) is either there or zero; the body may be cut at any byte.
        for cut in (start..=end).filter(|c| *c == start || *c >= start + 16) {
            let mut bytes = pristine.clone();
            for b in &mut bytes[cut..end] {
                *b = 0;
            }
            let _ = std::fs::remove_file(dir.path().join("raft.manifest"));
            std::fs::write(&segment, &bytes).expect("write");
            let s = WalStorage::open(dir.path(), &[1]).expect("a torn tail opens");
            let body_end =
                start + 16 + u32::from_le_bytes(pristine[start + 4..start + 8].try_into().expect("len")) as usize;
            let want: Vec<(u64, u64)> =
                if cut >= body_end { (2..=5).map(|i| (i, 1)).collect() } else { (2..=4).map(|i| (i, 1)).collect() };
            assert_eq!(indexes_terms(&s), want, "cut at {cut} ({start}..{end})");
        }
    }

    /// The same damage in the middle of the log is corruption, never a shorter log.
    #[test]
    fn damage_before_the_last_write_is_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        {
            let mut s = WalStorage::open(dir.path(), &[1]).expect("open");
            for i in 2..=5 {
                s.append(&[entry(i, 1)]).expect("append");
                s.flush().expect("flush");
            }
        }
        let segment = dir.path().join("wal").join("0000000000000000.wal");
        let mut bytes = std::fs::read(&segment).expect("read");
        bytes[150] ^= 0x5a;
        std::fs::write(&segment, &bytes).expect("write");
        let err = WalStorage::open(dir.path(), &[1]).err().expect("must refuse");
        assert!(err.to_string().contains("corrupt storage"), "{err}");
    }

    #[test]
    fn a_log_that_comes_back_empty_is_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        {
            let mut s = WalStorage::open(dir.path(), &[1]).expect("open");
            s.append(&(2..=100).map(|i| entry(i, 1)).collect::<Vec<_>>()).expect("append");
            s.set_commit(100).expect("commit");
            s.flush().expect("flush");
        }
        std::fs::remove_dir_all(dir.path().join("wal")).expect("lose the log");
        let err = WalStorage::open(dir.path(), &[1]).err().expect("must refuse");
        assert!(err.to_string().contains("was lost or damaged"), "{err}");
    }

    #[test]
    fn an_installed_snapshot_replaces_the_log_even_if_the_install_record_was_lost() {
        let leader_state = StoredState { applied: 50, state: crate::state::synthetic_state(3, 10) };
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 50;
        snap.mut_metadata().term = 3;
        snap.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
        snap.data = leader_state.encode().expect("encode").into();
        for lose_install_record in [false, true] {
            let dir = tempfile::tempdir().expect("tmp");
            {
                let mut s = WalStorage::open(dir.path(), &[1, 2, 3]).expect("open");
                // A deposed leader's entries, term 2, that the cluster never committed.
                s.append(&(2..=60).map(|i| entry(i, 2)).collect::<Vec<_>>()).expect("append");
                s.flush().expect("flush");
                s.apply_snapshot(&snap).expect("install");
                if !lose_install_record {
                    s.flush().expect("flush");
                    s.append(&[entry(51, 3)]).expect("append");
                    s.flush().expect("flush");
                }
            }
            let s = WalStorage::open(dir.path(), &[1, 2, 3]).expect("reopen");
            let want = if lose_install_record { vec![] } else { vec![(51, 3)] };
            assert_eq!(indexes_terms(&s), want, "install record lost: {lose_install_record}");
            assert_eq!(s.first_index().expect("first"), 51);
            assert_eq!(s.term(50).expect("term"), 3);
            assert_eq!(s.initial_state().expect("state").hard_state.commit, 50);
            assert_eq!(s.load_state().expect("load").expect("state").state.nodes.len(), 3);
        }
    }

    #[test]
    fn a_sled_era_folder_is_moved_over_whole() {
        let dir = tempfile::tempdir().expect("tmp");
        {
            let mut old = super::super::storage::SledStorage::open(dir.path(), &[1]).expect("open");
            old.append(&(2..=30).map(|i| entry(i, 1)).collect::<Vec<_>>()).expect("append");
            old.set_hard_state(&HardState { term: 1, commit: 30, ..Default::default() }).expect("hs");
            let state = crate::state::synthetic_state(2, 5);
            old.checkpoint(&StoredState { applied: 20, state }).expect("checkpoint");
            old.flush().expect("flush");
        }
        let s = WalStorage::open(dir.path(), &[7]).expect("migrate");
        assert_eq!(indexes_terms(&s), (21..=30).map(|i| (i, 1)).collect::<Vec<_>>());
        assert_eq!(s.initial_state().expect("state").hard_state.commit, 30);
        assert_eq!(s.initial_state().expect("state").conf_state.voters, vec![1]);
        assert_eq!(s.load_state().expect("load").expect("state").applied, 20);
        assert!(dir.path().join("raft.sled.migrated").exists());
        assert!(!dir.path().join("raft.sled").exists());
        drop(s);
        // And it opens as a WAL store from then on.
        let s = WalStorage::open(dir.path(), &[7]).expect("reopen");
        assert_eq!(s.last_index().expect("last"), 30);
    }
}
