//! Index-shard copies on this node: each copy the coordinator assigns is an [`IndexShard`]
//! (chunk store, HNSW and BM25) in `<data>/index/<copy id>/`, kept across restarts, whose
//! life is a ractor actor ([`IndexCopyActor`]) like a model replica's.
//!
//! A copy new to this node is built from another ready copy of the same shard when the
//! coordinator names one (the export streams over QUIC), otherwise it starts empty (a new
//! knowledge base) or reopens what is on disk (this node restarted). Writes that arrive while
//! a copy is being built are appended to the copy's on-disk [`journal`] (synced) before they
//! are acknowledged; the builder applies them in order after the copied documents and only
//! then marks the copy ready, so none is lost between the export and the copy going live, nor
//! by a crash (a reopened copy applies what its journal holds). A copy interrupted while it
//! copied from a peer is copied again. A ready copy persists a write (sled, flushed) before
//! it answers. A copy the coordinator no longer assigns is closed and its directory removed.

mod journal;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use shoal_protocol::metric_names as m;
use shoal_protocol::pool::Pool;
use shoal_protocol::tls::NODE_SERVER_NAME;
use shoal_protocol::{
    IndexChunk, IndexDocument, IndexExportedDocument, IndexHit, IndexPeer, IndexQuery, IndexShardAssignment,
    ReplicaPhase, ReplicaReport, Request, Response, INDEX_FRAME_BYTES,
};
use shoal_recall::{wire, IndexShard, ShardConfig};
use tracing::{info, warn};

use journal::Journal;
pub use journal::{JournalError, Pending, JOURNAL_FILE, MAX_PENDING_WRITES};

/// How long one frame of a peer's export may take.
const EXPORT_FRAME_TIMEOUT: Duration = Duration::from_secs(60);
/// Present in a copy's directory while it copies from a peer: a copy found with it after a
/// restart holds part of the documents and is copied again.
const COPYING_MARKER: &str = "copying";

/// Why an index operation was refused.
#[derive(Debug)]
pub enum IndexRefusal {
    /// No such copy here (never assigned, or moved away).
    NotFound(String),
    /// The copy exists but cannot answer now (building, failed).
    Unavailable(String),
    /// The request is wrong (bad vector size, bad query).
    BadRequest(String),
    /// Too many writes wait for the copy's build; retry later.
    Overloaded(String),
}

pub struct Copy {
    assignment: IndexShardAssignment,
    dir: PathBuf,
    shard: Arc<RwLock<Option<IndexShard>>>,
    /// Writes journaled while the copy is built (`None` once it takes writes directly).
    pending: Mutex<Option<Journal>>,
    /// Where the copy is: building (loading), ready or failed, and why.
    status: Mutex<(ReplicaPhase, String)>,
    /// true once the copy serves.
    ready: AtomicBool,
    /// The actor that owns the copy's life, once started.
    actor: Mutex<Option<ActorRef<()>>>,
}

impl Copy {
    fn set(&self, phase: ReplicaPhase, message: impl Into<String>) {
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = (phase, message.into());
        self.ready.store(phase == ReplicaPhase::Ready, Ordering::Release);
    }

    fn phase(&self) -> (ReplicaPhase, String) {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn labels(&self) -> [(&'static str, String); 2] {
        [("kb", self.assignment.kb.clone()), ("shard", self.assignment.shard.to_string())]
    }

    /// Closes the copy and deletes its files (it was unassigned).
    fn remove(&self) {
        let labels = self.labels();
        for g in [m::NODE_INDEX_DOCUMENTS, m::NODE_INDEX_CHUNKS, m::NODE_INDEX_BYTES] {
            metrics::gauge!(g, &labels).set(0.0);
        }
        self.ready.store(false, Ordering::Release);
        let mut guard = self.shard.write().unwrap_or_else(|p| p.into_inner());
        guard.take();
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!(dir = %self.dir.display(), error = %e, "could not remove an unassigned index copy");
            }
        }
    }

    /// Publishes the copy's sizes as gauges.
    fn publish(&self) {
        let stats = {
            let guard = self.shard.read().unwrap_or_else(|p| p.into_inner());
            guard.as_ref().and_then(|s| s.stats().ok())
        };
        if let Some(s) = stats {
            let labels = self.labels();
            metrics::gauge!(m::NODE_INDEX_DOCUMENTS, &labels).set(s.documents as f64);
            metrics::gauge!(m::NODE_INDEX_CHUNKS, &labels).set(s.chunks as f64);
            metrics::gauge!(m::NODE_INDEX_BYTES, &labels).set(s.bytes_on_disk as f64);
        }
    }
}

/// Every index-shard copy on this node.
pub struct IndexHost {
    root: PathBuf,
    pool: Arc<Pool>,
    copies: Mutex<HashMap<String, Arc<Copy>>>,
    /// Directories under `root` were checked against the first assignments.
    swept: Mutex<bool>,
}

impl IndexHost {
    pub fn new(data_dir: &Path, pool: Arc<Pool>) -> Arc<Self> {
        Arc::new(Self {
            root: data_dir.join("index"),
            pool,
            copies: Mutex::new(HashMap::new()),
            swept: Mutex::new(false),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Copy>>> {
        self.copies.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Brings the copies in line with the coordinator's assignments.
    pub fn reconcile(self: &Arc<Self>, assignments: Vec<IndexShardAssignment>) {
        let wanted: HashSet<String> = assignments.iter().map(|a| a.id.clone()).collect();
        let mut copies = self.lock();
        let gone: Vec<String> = copies.keys().filter(|id| !wanted.contains(*id)).cloned().collect();
        for id in gone {
            if let Some(copy) = copies.remove(&id) {
                info!(copy = %id, "index-shard copy unassigned; removing it");
                // A running actor removes the files as it stops; one that failed to start has
                // none to stop; one still building stops itself when it finds it is gone.
                let actor = copy.actor.lock().unwrap_or_else(|p| p.into_inner()).take();
                match actor {
                    Some(a) => a.stop(Some("unassigned".into())),
                    None if copy.phase().0 == ReplicaPhase::Failed => {
                        tokio::task::spawn_blocking(move || copy.remove());
                    }
                    None => {}
                }
            }
        }
        for a in assignments {
            if copies.contains_key(&a.id) {
                continue;
            }
            let copy = Arc::new(Copy {
                dir: self.root.join(&a.id),
                assignment: a.clone(),
                shard: Arc::new(RwLock::new(None)),
                pending: Mutex::new(Some(Journal::new(&self.root.join(&a.id)))),
                status: Mutex::new((ReplicaPhase::Loading, "opening".into())),
                ready: AtomicBool::new(false),
                actor: Mutex::new(None),
            });
            copies.insert(a.id.clone(), copy.clone());
            let host = self.clone();
            tokio::spawn(async move {
                let id = copy.assignment.id.clone();
                let result = Actor::spawn(None, IndexCopyActor, (host.clone(), copy.clone())).await;
                let still_assigned = host.lock().get(&id).is_some_and(|c| Arc::ptr_eq(c, &copy));
                match result {
                    Ok((actor, _)) if still_assigned => {
                        *copy.actor.lock().unwrap_or_else(|p| p.into_inner()) = Some(actor);
                    }
                    Ok((actor, _)) => actor.stop(Some("unassigned while building".into())),
                    Err(e) => {
                        let why = match &e {
                            ractor::SpawnErr::StartupFailed(inner) => inner.to_string(),
                            other => other.to_string(),
                        };
                        warn!(copy = %id, error = %why, "index-shard copy failed");
                        copy.set(ReplicaPhase::Failed, why);
                        if !still_assigned {
                            tokio::task::spawn_blocking(move || copy.remove());
                        }
                    }
                }
            });
        }
        drop(copies);
        self.sweep(&wanted);
    }

    /// Applies the writes journaled during the build, in order, until none is left; then the
    /// copy takes writes directly and the journal is deleted.
    async fn drain(copy: &Arc<Copy>) -> Result<(), String> {
        loop {
            let c = copy.clone();
            let batch = tokio::task::spawn_blocking(move || {
                let mut pending = c.pending.lock().unwrap_or_else(|p| p.into_inner());
                let Some(j) = pending.as_mut() else { return Ok(None) };
                let batch = j.take().map_err(|e| e.to_string())?;
                if !batch.is_empty() {
                    return Ok(Some(batch));
                }
                // Everything in it is applied and persisted by the shard.
                if let Some(j) = pending.take() {
                    if let Err(e) = j.remove() {
                        warn!(copy = %c.assignment.id, error = %e, "could not delete an applied write journal");
                    }
                }
                Ok::<_, String>(None)
            })
            .await
            .map_err(|e| format!("reading the write journal panicked: {e}"))??;
            let Some(batch) = batch else { return Ok(()) };
            for op in batch {
                let result = match op {
                    Pending::Upsert(doc, chunks) => Self::apply_upsert(copy, doc, chunks).await.map(|_| ()),
                    Pending::Delete(id) => Self::apply_delete(copy, id).await.map(|_| ()),
                };
                if let Err(IndexRefusal::Unavailable(e) | IndexRefusal::NotFound(e)) = result {
                    return Err(e);
                }
            }
        }
    }

    /// Journals a write (synced to disk) if the copy is still being built; gives it back
    /// otherwise.
    async fn queue(copy: &Arc<Copy>, op: Pending) -> Result<Option<Pending>, IndexRefusal> {
        let c = copy.clone();
        tokio::task::spawn_blocking(move || {
            let mut pending = c.pending.lock().unwrap_or_else(|p| p.into_inner());
            let Some(j) = pending.as_mut() else { return Ok(Some(op)) };
            match j.append(&op) {
                Ok(()) => Ok(None),
                Err(e @ JournalError::Full(_)) => {
                    metrics::counter!(m::NODE_REQUESTS_REJECTED, "reason" => "queue_full").increment(1);
                    Err(IndexRefusal::Overloaded(format!("index-shard copy {} is being built: {e}", c.assignment.id)))
                }
                Err(e) => Err(IndexRefusal::Unavailable(e.to_string())),
            }
        })
        .await
        .map_err(|e| IndexRefusal::Unavailable(format!("journaling the write panicked: {e}")))?
    }

    /// Once, after the first assignments: removes directories of copies no longer assigned
    /// (left by a process that stopped before it heard they moved).
    fn sweep(&self, wanted: &HashSet<String>) {
        let mut swept = self.swept.lock().unwrap_or_else(|p| p.into_inner());
        if *swept {
            return;
        }
        *swept = true;
        let Ok(entries) = std::fs::read_dir(&self.root) else { return };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if !wanted.contains(&name) && e.path().is_dir() {
                info!(copy = %name, "removing an index-shard copy that is no longer assigned");
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    /// Opens the copy, and fills a new one from a peer when one is named.
    async fn build(&self, copy: &Arc<Copy>) -> Result<String, String> {
        let a = &copy.assignment;
        let (dir, dimension) = (copy.dir.clone(), a.dimension as usize);
        let (shard, existed) = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            if dir.join(COPYING_MARKER).exists() {
                info!(dir = %dir.display(), "a copy from a peer was interrupted; copying again");
                clear_except_journal(&dir).map_err(|e| format!("cannot clear {}: {e}", dir.display()))?;
            }
            let existed = dir.join("store").exists();
            let shard = IndexShard::open(&dir, ShardConfig::new(dimension)).map_err(|e| e.to_string())?;
            Ok::<_, String>((shard, existed))
        })
        .await
        .map_err(|e| format!("opening the copy panicked: {e}"))??;
        *copy.shard.write().unwrap_or_else(|p| p.into_inner()) = Some(shard);
        if existed || a.peers.is_empty() {
            return Ok(
                if existed { "index-shard copy reopened from disk" } else { "new empty index-shard copy" }.into()
            );
        }
        let marker = copy.dir.join(COPYING_MARKER);
        write_synced(&marker).map_err(|e| format!("cannot write {}: {e}", marker.display()))?;
        let mut last = String::new();
        for peer in &a.peers {
            copy.set(ReplicaPhase::Loading, format!("copying documents from {}", peer.node));
            match self.copy_from(copy, peer).await {
                Ok(n) => {
                    // The copied documents are flushed: a restart from here reopens them.
                    std::fs::remove_file(&marker).map_err(|e| format!("cannot remove {}: {e}", marker.display()))?;
                    return Ok(format!("index-shard copy rebuilt from {} ({n} documents)", peer.id));
                }
                Err(e) => {
                    warn!(copy = %a.id, peer = %peer.id, error = %e, "copying from a peer failed; trying the next");
                    last = format!("copying from {} ({}) failed: {e}", peer.id, peer.address);
                }
            }
        }
        Err(last)
    }

    /// Streams a peer's export into `copy`; the number of documents copied.
    async fn copy_from(&self, copy: &Arc<Copy>, peer: &IndexPeer) -> Result<usize, String> {
        let addr = peer.address.parse().map_err(|_| format!("bad peer address {}", peer.address))?;
        let mut s = self.pool.open(addr, NODE_SERVER_NAME).await.map_err(|e| e.to_string())?;
        s.send(&Request::IndexExport { shard_id: peer.id.clone() }).await.map_err(|e| e.to_string())?;
        let mut total = 0;
        loop {
            let frame = tokio::time::timeout(EXPORT_FRAME_TIMEOUT, s.recv())
                .await
                .map_err(|_| format!("no export frame within {EXPORT_FRAME_TIMEOUT:?}"))?
                .map_err(|e| e.to_string())?;
            match frame {
                Response::IndexExported { documents, last } => {
                    let n = documents.len();
                    total += n;
                    let shard = copy.shard.clone();
                    tokio::task::spawn_blocking(move || {
                        let mut guard = shard.write().unwrap_or_else(|p| p.into_inner());
                        let s = guard.as_mut().ok_or("the copy was closed")?;
                        s.import(documents.into_iter().map(wire::exported_from_wire)).map_err(|e| e.to_string())?;
                        Ok::<_, String>(())
                    })
                    .await
                    .map_err(|e| format!("import panicked: {e}"))??;
                    metrics::counter!(m::NODE_INDEX_REBUILT_DOCUMENTS).increment(n as u64);
                    if last {
                        let shard = copy.shard.clone();
                        tokio::task::spawn_blocking(move || {
                            let mut guard = shard.write().unwrap_or_else(|p| p.into_inner());
                            guard.as_mut().map(|s| s.flush()).transpose().map_err(|e| e.to_string())
                        })
                        .await
                        .map_err(|e| format!("flush panicked: {e}"))??;
                        return Ok(total);
                    }
                }
                Response::Refused { message, .. } => return Err(message),
                other => return Err(format!("unexpected answer {other:?}")),
            }
        }
    }

    /// What the next heartbeat says about the copies.
    pub fn reports(&self) -> Vec<ReplicaReport> {
        let mut out: Vec<ReplicaReport> = self
            .lock()
            .iter()
            .map(|(id, c)| {
                let (phase, message) = c.phase();
                ReplicaReport { placement_id: id.clone(), phase, message, outstanding: 0 }
            })
            .collect();
        out.sort_by(|a, b| a.placement_id.cmp(&b.placement_id));
        out
    }

    fn copy(&self, id: &str) -> Result<Arc<Copy>, IndexRefusal> {
        self.lock()
            .get(id)
            .cloned()
            .ok_or_else(|| IndexRefusal::NotFound(format!("no index-shard copy {id} on this node")))
    }

    /// The copy, if it serves (a copy being built or failed is refused).
    fn serving(&self, id: &str) -> Result<Arc<Copy>, IndexRefusal> {
        let copy = self.copy(id)?;
        if !copy.ready.load(Ordering::Acquire) {
            let (phase, msg) = copy.phase();
            return Err(IndexRefusal::Unavailable(format!("index-shard copy {id} is {}: {msg}", phase.as_str())));
        }
        Ok(copy)
    }

    /// Replaces a document in copy `id`: (chunks, unchanged). A copy being built queues it.
    pub async fn upsert(
        &self,
        id: &str,
        document: IndexDocument,
        chunks: Vec<IndexChunk>,
    ) -> Result<(u32, bool), IndexRefusal> {
        let copy = self.copy(id)?;
        if copy.phase().0 == ReplicaPhase::Failed {
            return Err(IndexRefusal::Unavailable(format!("index-shard copy {id} failed: {}", copy.phase().1)));
        }
        let n = chunks.len() as u32;
        match Self::queue(&copy, Pending::Upsert(document, chunks)).await? {
            None => Ok((n, false)),
            Some(Pending::Upsert(document, chunks)) => Self::apply_upsert(&copy, document, chunks).await,
            Some(Pending::Delete(_)) => unreachable!("queue gives back what it was given"),
        }
    }

    async fn apply_upsert(
        copy: &Arc<Copy>,
        document: IndexDocument,
        chunks: Vec<IndexChunk>,
    ) -> Result<(u32, bool), IndexRefusal> {
        let shard = copy.shard.clone();
        let record = wire::document_from_wire(document);
        let chunks: Vec<_> = chunks.into_iter().map(wire::chunk_from_wire).collect();
        let out = tokio::task::spawn_blocking(move || {
            let mut guard = shard.write().unwrap_or_else(|p| p.into_inner());
            let s = guard.as_mut().ok_or_else(|| IndexRefusal::NotFound("the copy was closed".into()))?;
            s.upsert_document(record, chunks).map_err(refusal)
        })
        .await
        .map_err(|e| IndexRefusal::Unavailable(format!("the write panicked: {e}")))??;
        metrics::counter!(m::NODE_INDEX_WRITES, "op" => "upsert").increment(1);
        copy.publish();
        Ok((out.chunks as u32, out.unchanged))
    }

    /// Removes a document from copy `id`; whether it was there. A copy being built queues it.
    pub async fn delete(&self, id: &str, doc_id: String) -> Result<bool, IndexRefusal> {
        let copy = self.copy(id)?;
        if copy.phase().0 == ReplicaPhase::Failed {
            return Err(IndexRefusal::Unavailable(format!("index-shard copy {id} failed: {}", copy.phase().1)));
        }
        match Self::queue(&copy, Pending::Delete(doc_id)).await? {
            None => Ok(true),
            Some(Pending::Delete(doc_id)) => Self::apply_delete(&copy, doc_id).await,
            Some(Pending::Upsert(..)) => unreachable!("queue gives back what it was given"),
        }
    }

    async fn apply_delete(copy: &Arc<Copy>, doc_id: String) -> Result<bool, IndexRefusal> {
        let shard = copy.shard.clone();
        let existed = tokio::task::spawn_blocking(move || {
            let mut guard = shard.write().unwrap_or_else(|p| p.into_inner());
            let s = guard.as_mut().ok_or_else(|| IndexRefusal::NotFound("the copy was closed".into()))?;
            s.delete_document(&doc_id).map_err(refusal)
        })
        .await
        .map_err(|e| IndexRefusal::Unavailable(format!("the delete panicked: {e}")))??;
        metrics::counter!(m::NODE_INDEX_WRITES, "op" => "delete").increment(1);
        copy.publish();
        Ok(existed)
    }

    /// Searches copy `id` (only once it serves: a building copy is refused at once).
    pub async fn search(&self, id: &str, query: IndexQuery) -> Result<Vec<IndexHit>, IndexRefusal> {
        let copy = self.serving(id)?;
        let started = Instant::now();
        let query = wire::query_from_wire(query);
        let mode = format!("{:?}", query.mode).to_lowercase();
        let shard = copy.shard.clone();
        let hits = tokio::task::spawn_blocking(move || {
            let guard = shard.read().unwrap_or_else(|p| p.into_inner());
            let s = guard.as_ref().ok_or_else(|| IndexRefusal::NotFound("the copy was closed".into()))?;
            s.search(&query).map_err(refusal)
        })
        .await
        .map_err(|e| IndexRefusal::Unavailable(format!("the search panicked: {e}")))??;
        metrics::histogram!(m::NODE_INDEX_SEARCH_SECONDS, "mode" => mode).record(started.elapsed().as_secs_f64());
        Ok(hits.iter().map(wire::hit_to_wire).collect())
    }

    /// Every document of copy `id`, in frames of at most [`INDEX_FRAME_BYTES`] of chunks.
    pub async fn export(&self, id: &str) -> Result<Vec<Vec<IndexExportedDocument>>, IndexRefusal> {
        let copy = self.serving(id)?;
        let shard = copy.shard.clone();
        tokio::task::spawn_blocking(move || {
            let guard = shard.read().unwrap_or_else(|p| p.into_inner());
            let s = guard.as_ref().ok_or_else(|| IndexRefusal::NotFound("the copy was closed".into()))?;
            let mut frames = vec![Vec::new()];
            let mut bytes = 0usize;
            for doc in s.export() {
                let doc = wire::exported_to_wire(&doc.map_err(refusal)?);
                let size: usize = doc.chunks.iter().map(IndexChunk::wire_bytes).sum();
                if bytes > 0 && bytes + size > INDEX_FRAME_BYTES {
                    frames.push(Vec::new());
                    bytes = 0;
                }
                bytes += size;
                frames.last_mut().expect("one frame").push(doc);
            }
            Ok(frames)
        })
        .await
        .map_err(|e| IndexRefusal::Unavailable(format!("the export panicked: {e}")))?
    }
}

/// One index-shard copy's life on this node: built in `pre_start` (reopened from disk, or
/// copied from a ready peer, then the writes queued meanwhile applied), serving while it
/// runs, closed with its files removed when the coordinator unassigns it.
pub struct IndexCopyActor;

impl Actor for IndexCopyActor {
    type Msg = ();
    type State = Arc<Copy>;
    type Arguments = (Arc<IndexHost>, Arc<Copy>);

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        (host, copy): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let detail = host.build(&copy).await?;
        IndexHost::drain(&copy).await.map_err(|e| format!("applying the writes queued while building: {e}"))?;
        info!(copy = %copy.assignment.id, "{detail}");
        copy.set(ReplicaPhase::Ready, "");
        copy.publish();
        Ok(copy)
    }

    async fn post_stop(&self, _myself: ActorRef<Self::Msg>, copy: &mut Self::State) -> Result<(), ActorProcessingErr> {
        let copy = copy.clone();
        tokio::task::spawn_blocking(move || copy.remove()).await?;
        Ok(())
    }
}

/// Creates an empty file and syncs it and its directory.
fn write_synced(path: &Path) -> std::io::Result<()> {
    std::fs::File::create(path)?.sync_all()?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Removes everything in a copy's directory but its write journal.
fn clear_except_journal(dir: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_name() == JOURNAL_FILE {
            continue;
        }
        if e.file_type()?.is_dir() {
            std::fs::remove_dir_all(e.path())?;
        } else {
            std::fs::remove_file(e.path())?;
        }
    }
    Ok(())
}

fn refusal(e: shoal_recall::RecallError) -> IndexRefusal {
    if e.is_caller_error() {
        IndexRefusal::BadRequest(e.to_string())
    } else {
        IndexRefusal::Unavailable(e.to_string())
    }
}

#[cfg(test)]
mod tests;
