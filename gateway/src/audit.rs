//! The audit log: every mutating API call, every admin read, and every authentication or
//! authorization failure, as JSON lines in an append-only file per gateway (each
//! coordinator's embedded gateway writes its own), rotated by size.
//!
//! Records follow Kubernetes audit events: id, time, stage, verb, URI, the key's public id
//! and name (never the secret), source address, object, response code and duration.
//! What is recorded is a pure function of the request and its answer ([`classify`]);
//! writing goes through a bounded queue to one writer thread, so auditing never blocks a
//! request (a full queue drops the record and counts it in `shoal_audit_dropped_total`).
//! The writer writes what has queued, then rests [`WRITE_PAUSE`] before it waits again: under
//! load a request queues its record without waking a thread (a wake-up per request was a
//! few percent of a busy gateway's CPU), and reads of the log first have the writer write
//! what is queued, so a read sees every request answered before it. A process killed loses
//! what was queued and not yet written: at most a pause's worth of records.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::warn;

/// Bytes a log file grows to before it is rotated.
pub const ROTATE_BYTES: u64 = 16 * 1024 * 1024;
/// Rotated files kept (`audit.jsonl.1` … `.N`).
pub const KEEP_ROTATED: u32 = 5;
/// Records waiting for the writer.
const QUEUE: usize = 8192;
/// How long the writer rests after writing, gathering the next records.
pub const WRITE_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);
/// The longest a read of the log waits for the writer to write what is queued.
pub const FLUSH_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// What the writer is sent: a record, or a request to write what is queued and say so.
enum Message {
    Record(Box<Record>),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// One audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    /// Unix milliseconds when the answer was complete.
    pub time_ms: u64,
    /// Always `ResponseComplete` (the record is written once the answer is known).
    pub stage: String,
    /// `create`, `update`, `delete`, `get`, `list`, `run` (after Kubernetes' verbs).
    pub verb: String,
    pub method: String,
    pub uri: String,
    /// The key's public id and name; empty when no valid key was given.
    pub key_id: String,
    pub key_name: String,
    pub source: String,
    /// What was acted on: `keys/k-1a2b`, `graphs/qa-db`, `deployments`.
    pub object: String,
    pub code: u16,
    pub duration_ms: u64,
    /// Why it was recorded: `mutation`, `admin_read`, `auth_failure`.
    pub reason: String,
}

/// Routes a POST to which is not a change to the cluster (it computes an answer).
fn is_computation(path: &str) -> bool {
    matches!(path, "/v1/chat/completions" | "/v1/completions" | "/v1/embeddings")
        || (path.starts_with("/v1/knowledge-bases/") && path.ends_with("/search"))
}

/// Reads that need an admin key.
fn is_admin_read(method: &str, path: &str) -> bool {
    let admin_route = ["/v1/keys", "/v1/tokens", "/v1/audit", "/v1/backup"]
        .iter()
        .any(|p| path == *p || path.starts_with(&format!("{p}/")));
    (matches!(method, "GET" | "HEAD") && admin_route)
        || (method == "POST" && path.starts_with("/v1/databases/") && path.ends_with("/query"))
}

/// Whether (and why) a request is recorded: its method, path and answer's status.
pub fn classify(method: &str, path: &str, status: u16) -> Option<&'static str> {
    if status == 401 || status == 403 {
        return Some("auth_failure");
    }
    if !path.starts_with("/v1/") {
        return None;
    }
    if is_admin_read(method, path) {
        return Some("admin_read");
    }
    match method {
        "GET" | "HEAD" | "OPTIONS" => None,
        "POST" if is_computation(path) => None,
        _ => Some("mutation"),
    }
}

/// Kubernetes-style verb of a request.
pub fn verb(method: &str, path: &str) -> &'static str {
    match method {
        "GET" | "HEAD" => {
            if path.trim_end_matches('/').matches('/').count() <= 2 {
                "list"
            } else {
                "get"
            }
        }
        "DELETE" => "delete",
        "PUT" | "PATCH" => "update",
        "POST" if path.ends_with("/runs") || path.ends_with("/rerun") || path.ends_with("/query") => "run",
        _ => "create",
    }
}

/// The object a path names: the path after `/v1/`.
pub fn object(path: &str) -> String {
    path.strip_prefix("/v1/").unwrap_or(path).to_string()
}

/// The sending side of the log.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Message>,
    dir: PathBuf,
}

impl AuditLog {
    /// Opens (creating) the log in `dir` and starts its writer thread.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let (tx, mut rx) = mpsc::channel::<Message>(QUEUE);
        let mut writer = Writer::open(dir)?;
        std::thread::Builder::new().name("audit-log".into()).spawn(move || {
            while let Some(first) = rx.blocking_recv() {
                let mut batch = Vec::new();
                let mut flushes = Vec::new();
                let mut next = Some(first);
                while let Some(m) = next {
                    match m {
                        Message::Record(r) => batch.push(*r),
                        Message::Flush(done) => flushes.push(done),
                    }
                    next = if batch.len() < QUEUE { rx.try_recv().ok() } else { None };
                }
                if !batch.is_empty() {
                    if let Err(e) = writer.append(&batch) {
                        warn!(error = %e, records = batch.len(), "writing the audit log failed");
                        metrics::counter!(shoal_protocol::metric_names::AUDIT_DROPPED).increment(batch.len() as u64);
                    }
                }
                let asked = !flushes.is_empty();
                for done in flushes {
                    let _ = done.send(());
                }
                if !asked {
                    std::thread::sleep(WRITE_PAUSE);
                }
            }
        })?;
        Ok(Self { tx, dir: dir.to_path_buf() })
    }

    /// Queues a record; a full queue drops it (counted).
    pub fn record(&self, r: Record) {
        if self.tx.try_send(Message::Record(Box::new(r))).is_err() {
            metrics::counter!(shoal_protocol::metric_names::AUDIT_DROPPED).increment(1);
        }
    }

    /// Waits until every record queued before this call is written (normally at most a
    /// write pause and a write; never more than [`FLUSH_WAIT`], so a writer stuck on a slow
    /// or full disk does not hold readers). With a full queue it waits for nothing.
    pub async fn written(&self) {
        let (done, written) = tokio::sync::oneshot::channel();
        if self.tx.try_send(Message::Flush(done)).is_ok() {
            let _ = tokio::time::timeout(FLUSH_WAIT, written).await;
        }
    }

    /// Records matching `filter`, oldest first, at most `limit` (the newest ones).
    pub fn read(&self, filter: &Filter, limit: usize) -> std::io::Result<Vec<Record>> {
        let mut files: Vec<PathBuf> =
            (1..=KEEP_ROTATED).rev().map(|n| self.dir.join(format!("audit.jsonl.{n}"))).collect();
        files.push(self.dir.join("audit.jsonl"));
        let mut out = std::collections::VecDeque::new();
        for f in files {
            let Ok(file) = File::open(&f) else { continue };
            for line in BufReader::new(file).lines() {
                let Ok(r) = serde_json::from_str::<Record>(&line?) else { continue };
                if filter.matches(&r) {
                    out.push_back(r);
                    if out.len() > limit {
                        out.pop_front();
                    }
                }
            }
        }
        Ok(out.into())
    }
}

/// Which records a reader wants.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Filter {
    /// Only records at or after this unix millisecond.
    #[serde(default)]
    pub since_ms: Option<u64>,
    /// Only records of this key (public id or name).
    #[serde(default)]
    pub key: Option<String>,
    /// Only failures (status 400 or more).
    #[serde(default)]
    pub failed: bool,
}

impl Filter {
    pub fn matches(&self, r: &Record) -> bool {
        self.since_ms.is_none_or(|s| r.time_ms >= s)
            && self.key.as_ref().is_none_or(|k| r.key_id == *k || r.key_name == *k)
            && (!self.failed || r.code >= 400)
    }
}

/// Appends lines to `audit.jsonl`, rotating it by size.
struct Writer {
    dir: PathBuf,
    file: File,
    size: u64,
}

impl Writer {
    fn open(dir: &Path) -> std::io::Result<Self> {
        let path = dir.join("audit.jsonl");
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(Self { dir: dir.to_path_buf(), file, size })
    }

    fn append(&mut self, records: &[Record]) -> std::io::Result<()> {
        let mut buf = Vec::new();
        for r in records {
            serde_json::to_writer(&mut buf, r).map_err(std::io::Error::other)?;
            buf.push(b'\n');
        }
        if self.size > 0 && self.size + buf.len() as u64 > ROTATE_BYTES {
            self.rotate()?;
        }
        self.file.write_all(&buf)?;
        self.file.flush()?;
        self.size += buf.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let name = |n: u32| self.dir.join(format!("audit.jsonl.{n}"));
        let _ = std::fs::remove_file(name(KEEP_ROTATED));
        for n in (1..KEEP_ROTATED).rev() {
            let _ = std::fs::rename(name(n), name(n + 1));
        }
        std::fs::rename(self.dir.join("audit.jsonl"), name(1))?;
        self.file = OpenOptions::new().create(true).append(true).open(self.dir.join("audit.jsonl"))?;
        self.size = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_recorded() {
        assert_eq!(classify("POST", "/v1/keys", 201), Some("mutation"));
        assert_eq!(classify("DELETE", "/v1/deployments/x", 200), Some("mutation"));
        assert_eq!(classify("POST", "/v1/graphs/qa-db/runs", 200), Some("mutation"));
        assert_eq!(classify("GET", "/v1/keys", 200), Some("admin_read"));
        assert_eq!(classify("POST", "/v1/databases/shop/query", 400), Some("admin_read"));
        assert_eq!(classify("GET", "/v1/models", 401), Some("auth_failure"));
        assert_eq!(classify("POST", "/v1/chat/completions", 403), Some("auth_failure"));
        assert_eq!(classify("POST", "/v1/chat/completions", 200), None);
        assert_eq!(classify("POST", "/v1/knowledge-bases/kb/search", 200), None);
        assert_eq!(classify("GET", "/v1/nodes", 200), None);
        assert_eq!(classify("GET", "/metrics", 200), None);
    }

    #[test]
    fn verbs_and_objects() {
        assert_eq!(verb("GET", "/v1/keys"), "list");
        assert_eq!(verb("GET", "/v1/runs/run-1"), "get");
        assert_eq!(verb("POST", "/v1/keys"), "create");
        assert_eq!(verb("POST", "/v1/graphs/g/runs"), "run");
        assert_eq!(verb("DELETE", "/v1/keys/k-1"), "delete");
        assert_eq!(object("/v1/keys/k-1"), "keys/k-1");
    }

    fn record(i: u64, code: u16) -> Record {
        Record {
            id: format!("a-{i}"),
            time_ms: i,
            stage: "ResponseComplete".into(),
            verb: "create".into(),
            method: "POST".into(),
            uri: "/v1/keys".into(),
            key_id: "k-1".into(),
            key_name: "admin".into(),
            source: "127.0.0.1:1".into(),
            object: "keys".into(),
            code,
            duration_ms: 1,
            reason: "mutation".into(),
        }
    }

    #[test]
    fn files_rotate_by_size_and_reading_spans_them() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut w = Writer::open(dir.path()).expect("open");
        let line = serde_json::to_string(&record(0, 200)).expect("json").len() as u64 + 1;
        let per_file = ROTATE_BYTES / line;
        // Enough records for two rotations, written in batches.
        let total = per_file * 2 + 10;
        let batch: Vec<Record> = (0..total).map(|i| record(i, if i % 2 == 0 { 200 } else { 403 })).collect();
        for chunk in batch.chunks(1000) {
            w.append(chunk).expect("append");
        }
        assert!(dir.path().join("audit.jsonl.1").exists() && dir.path().join("audit.jsonl.2").exists());
        let log = AuditLog { tx: mpsc::channel(1).0, dir: dir.path().to_path_buf() };
        let all = log.read(&Filter::default(), usize::MAX).expect("read");
        assert_eq!(all.len() as u64, total, "nothing lost across rotations");
        assert!(all.windows(2).all(|w| w[0].time_ms < w[1].time_ms), "oldest first");
        let failed =
            log.read(&Filter { failed: true, since_ms: Some(total - 10), ..Default::default() }, 100).expect("read");
        assert_eq!(failed.len(), 5);
        assert_eq!(log.read(&Filter::default(), 3).expect("read").last().map(|r| r.time_ms), Some(total - 1));
    }

    #[tokio::test]
    async fn a_read_sees_every_record_queued_before_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let log = AuditLog::open(dir.path()).expect("open");
        // The first record is written at once and the writer rests; the next ones queue
        // while it rests, and a read right after them must still see them all.
        log.record(record(0, 200));
        log.written().await;
        for i in 1..=50 {
            log.record(record(i, 200));
        }
        log.written().await;
        let all = log.read(&Filter::default(), usize::MAX).expect("read");
        assert_eq!(all.iter().map(|r| r.time_ms).collect::<Vec<_>>(), (0..=50).collect::<Vec<_>>());
    }
}
