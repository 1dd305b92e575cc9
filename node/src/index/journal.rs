//! The journal of an index-shard copy still being built: writes that reach the copy before it
//! serves are appended to `<copy dir>/pending.journal` and synced to disk before they are
//! acknowledged, then applied in order once the copy is built (also after a restart, when
//! the copy is reopened). A torn last record (a crash mid-append) was never acknowledged and
//! is cut off when the journal is opened.
//!
//! Records are protocol frames (`IndexUpsert` / `IndexDelete` requests with an empty shard id):
//! length-prefixed, validated when read back.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use shoal_protocol::frame::{self, MAX_FRAME_BYTES};
use shoal_protocol::{IndexChunk, IndexDocument, Request};

/// The journal's file name in a copy's directory.
pub const JOURNAL_FILE: &str = "pending.journal";
/// Writes a copy being built may hold; beyond this a write is refused (Overloaded) until
/// the build finishes and applies them.
pub const MAX_PENDING_WRITES: usize = 1024;

/// A write that reached a copy still being built.
#[derive(Debug, Clone, PartialEq)]
pub enum Pending {
    Upsert(IndexDocument, Vec<IndexChunk>),
    Delete(String),
}

impl Pending {
    fn to_request(&self) -> Request {
        match self {
            Pending::Upsert(d, c) => {
                Request::IndexUpsert { shard_id: String::new(), document: d.clone(), chunks: c.clone() }
            }
            Pending::Delete(id) => Request::IndexDelete { shard_id: String::new(), doc_id: id.clone() },
        }
    }
}

/// Why a write was not journaled.
#[derive(Debug)]
pub enum JournalError {
    /// [`MAX_PENDING_WRITES`] writes (the number given) are already waiting.
    Full(usize),
    Io(String),
}

impl std::fmt::Display for JournalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JournalError::Full(n) => write!(f, "{n} writes are already waiting for the copy's build; retry later"),
            JournalError::Io(e) => write!(f, "the copy's write journal: {e}"),
        }
    }
}

/// Writes waiting for a copy's build, on disk.
pub struct Journal {
    path: PathBuf,
    /// Opened (and a torn tail cut off) on first use.
    file: Option<File>,
    /// Bytes already handed out by [`Journal::take`].
    taken: u64,
    /// Records appended and not yet taken.
    waiting: usize,
    /// Most records waiting at once.
    limit: usize,
}

fn io(path: &Path, e: impl std::fmt::Display) -> JournalError {
    JournalError::Io(format!("{}: {e}", path.display()))
}

/// Whole records at the start of `bytes`, and the length they take.
fn parse(bytes: &[u8]) -> (Vec<Pending>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while let Ok(Some((req, used))) = frame::decode_frame::<Request>(&bytes[at..], MAX_FRAME_BYTES) {
        match req {
            Request::IndexUpsert { document, chunks, .. } => out.push(Pending::Upsert(document, chunks)),
            Request::IndexDelete { doc_id, .. } => out.push(Pending::Delete(doc_id)),
            _ => break,
        }
        at += used;
    }
    (out, at)
}

impl Journal {
    /// The journal of the copy in `dir` (nothing is read or created yet).
    pub fn new(dir: &Path) -> Self {
        Self { path: dir.join(JOURNAL_FILE), file: None, taken: 0, waiting: 0, limit: MAX_PENDING_WRITES }
    }

    fn open(&mut self) -> Result<&mut File, JournalError> {
        if self.file.is_none() {
            let dir = self.path.parent().unwrap_or(Path::new("."));
            std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
            let mut f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&self.path)
                .map_err(|e| io(&self.path, e))?;
            let mut bytes = Vec::new();
            f.read_to_end(&mut bytes).map_err(|e| io(&self.path, e))?;
            let (records, len) = parse(&bytes);
            if len < bytes.len() {
                f.set_len(len as u64).map_err(|e| io(&self.path, e))?;
                f.sync_all().map_err(|e| io(&self.path, e))?;
            }
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
            self.waiting = records.len();
            self.file = Some(f);
        }
        Ok(self.file.as_mut().expect("opened above"))
    }

    /// Appends a write and syncs it to disk; only then may it be acknowledged.
    pub fn append(&mut self, write: &Pending) -> Result<(), JournalError> {
        let path = self.path.clone();
        self.open()?;
        if self.waiting >= self.limit {
            return Err(JournalError::Full(self.limit));
        }
        let bytes = frame::encode(&write.to_request()).map_err(|e| io(&path, e))?;
        let f = self.open()?;
        f.seek(SeekFrom::End(0)).map_err(|e| io(&path, e))?;
        f.write_all(&bytes).map_err(|e| io(&path, e))?;
        f.sync_data().map_err(|e| io(&path, e))?;
        self.waiting += 1;
        Ok(())
    }

    /// The writes appended since the last call, in order (those left by an earlier process
    /// first).
    pub fn take(&mut self) -> Result<Vec<Pending>, JournalError> {
        let path = self.path.clone();
        let taken = self.taken;
        let f = self.open()?;
        f.seek(SeekFrom::Start(taken)).map_err(|e| io(&path, e))?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes).map_err(|e| io(&path, e))?;
        let (records, len) = parse(&bytes);
        self.taken += len as u64;
        self.waiting = self.waiting.saturating_sub(records.len());
        Ok(records)
    }

    /// Deletes the journal once every write in it was applied and persisted by the copy.
    pub fn remove(self) -> Result<(), JournalError> {
        drop(self.file);
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&self.path, e)),
        }
        if let Some(dir) = self.path.parent() {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upsert(id: &str) -> Pending {
        let doc = IndexDocument { doc_id: id.into(), title: Some("t".into()), ..Default::default() };
        let chunk = IndexChunk { text: format!("text of {id}"), start: 0, end: 4, tokens: 2, vector: vec![0.5; 8] };
        Pending::Upsert(doc, vec![chunk])
    }

    #[test]
    fn writes_survive_a_restart_in_order_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut j = Journal::new(dir.path());
        j.append(&upsert("a")).expect("append");
        j.append(&Pending::Delete("a".into())).expect("append");
        j.append(&upsert("b")).expect("append");
        drop(j); // the process dies: nothing was applied
                 // A crash in the middle of a fourth append leaves half a record.
        let path = dir.path().join(JOURNAL_FILE);
        let whole = std::fs::metadata(&path).expect("meta").len();
        let torn = frame::encode(&upsert("c").to_request()).expect("encode");
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(&torn[..torn.len() / 2]).expect("write");
        drop(f);

        let mut j = Journal::new(dir.path());
        let replay = j.take().expect("take");
        assert_eq!(replay, vec![upsert("a"), Pending::Delete("a".into()), upsert("b")]);
        assert_eq!(std::fs::metadata(&path).expect("meta").len(), whole, "the torn record was cut off");
        // New writes follow; take gives only what came since.
        j.append(&upsert("d")).expect("append");
        assert_eq!(j.waiting, 1);
        assert_eq!(j.take().expect("take"), vec![upsert("d")]);
        assert!(j.take().expect("take").is_empty());
        j.remove().expect("remove");
        assert!(!path.exists());
        assert!(Journal::new(dir.path()).take().expect("take").is_empty());
    }

    #[test]
    fn a_full_journal_refuses_at_once() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut j = Journal { limit: 5, ..Journal::new(dir.path()) };
        for i in 0..5 {
            j.append(&Pending::Delete(format!("d{i}"))).expect("append");
        }
        let full = j.append(&upsert("x")).expect_err("full");
        assert!(matches!(full, JournalError::Full(5)), "{full}");
        assert!(full.to_string().contains("5 writes are already waiting"), "{full}");
        // Taking them (the build applies them) makes room again.
        assert_eq!(j.take().expect("take").len(), 5);
        j.append(&upsert("x")).expect("room again");
    }
}
