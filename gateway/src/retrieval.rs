//! Knowledge bases at work: ingesting documents (parse here, chunk and embed on an embedding
//! replica of the mesh, write to every copy of the document's index shard, then commit the
//! catalog entry through raft) and searching (embed the query on the mesh, scatter to one
//! ready copy of every shard, fail over to another copy when one does not answer in time,
//! merge with reciprocal rank fusion).
//!
//! The catalog commit comes last: a document is listed only once its chunks are in the
//! index, and an interrupted ingest retried with the same content and metadata finds the
//! catalog entry and does nothing.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde::Serialize;
use sha2::{Digest, Sha256};
use shoal_protocol::metric_names as m;
use shoal_protocol::pool::{CallError, Pool};
use shoal_protocol::tls::NODE_SERVER_NAME;
use shoal_protocol::{EmbedAs, RefusalCode, ReplicaPhase, Request, Response};
use shoal_recall::{wire, DocumentRecord, Hit, MetadataFilter, PgIndex, RecallError, SearchMode, SearchQuery};
use tracing::{debug, info, warn};

use crate::clock::Clock;
use crate::cluster::Cluster;
use crate::router::{RouteError, Router};
use crate::state::{ClusterState, Command, IndexBackend, KbDocument, KnowledgeBase, NodeState, Outcome};

/// How long one shard copy may take to answer a search before another copy is asked.
pub const SHARD_SEARCH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long writing a document to one shard copy may take (a copy being built queues
/// writes and answers at once).
const SHARD_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an embedding replica may take to embed a search's query before another is asked.
const QUERY_EMBED_PATIENCE: Duration = Duration::from_secs(3);
/// How long chunking and embedding one document may take on an embedding replica.
const EMBED_DOCUMENT_TIMEOUT: Duration = Duration::from_secs(600);
/// Most hits one search returns.
pub const MAX_TOP_K: usize = 100;
/// Most bytes of text one document may hold after parsing (it travels in one frame to the
/// embedding node).
pub const MAX_DOCUMENT_TEXT_BYTES: usize = 4 << 20;
/// Longest query text.
const MAX_QUERY_BYTES: usize = 8 * 1024;

impl Ingested {
    /// The answer for a document already indexed with the same fingerprint: nothing done.
    fn unchanged(d: &KbDocument, shard: u32, kb: &KnowledgeBase) -> Self {
        Ingested {
            id: d.id.clone(),
            title: d.title.clone(),
            shard,
            chunks: d.chunks,
            tokens: 0,
            unchanged: true,
            replaced: false,
            copies_written: 0,
            copies_wanted: kb.replicas as usize,
            degraded: false,
        }
    }
}

/// What the catalog records of a stored document besides its record and chunks.
struct Stored {
    sha256: String,
    bytes: u64,
    replaced: bool,
    /// Tokens embedded for it (0 for an import).
    tokens: u32,
}

/// Checks the chunks of an imported document: some, each with a vector of the base's
/// dimension holding finite numbers, text within the per-document limit.
pub fn check_imported_chunks(chunks: &[shoal_protocol::IndexChunk], dimension: usize) -> Result<(), RecallFailure> {
    if chunks.is_empty() {
        return Err(RecallFailure::BadRequest("the document has no chunks".into()));
    }
    if let Some((i, c)) = chunks.iter().enumerate().find(|(_, c)| c.vector.len() != dimension) {
        return Err(RecallFailure::BadRequest(format!(
            "chunk {i} has a {}-dimensional vector; this knowledge base holds {dimension}-dimensional ones \
             (was it exported from a base with another embedding model?)",
            c.vector.len()
        )));
    }
    if let Some(i) = chunks.iter().position(|c| c.vector.iter().any(|x| !x.is_finite())) {
        return Err(RecallFailure::BadRequest(format!("chunk {i} has a vector value that is not a finite number")));
    }
    let text: usize = chunks.iter().map(|c| c.text.len()).sum();
    if text > MAX_DOCUMENT_TEXT_BYTES {
        return Err(RecallFailure::TooLarge(format!(
            "the document's chunks hold {} MiB of text; at most {} MiB per document",
            text >> 20,
            MAX_DOCUMENT_TEXT_BYTES >> 20
        )));
    }
    Ok(())
}

/// Why a knowledge-base operation failed (each maps to one HTTP status).
#[derive(Debug)]
pub enum RecallFailure {
    /// No such knowledge base or document (404).
    NotFound(String),
    /// The request is wrong (400).
    BadRequest(String),
    /// The upload's type is not one we parse (415).
    Unsupported(String),
    /// The document is too large (413).
    TooLarge(String),
    /// The embedding model could not be reached.
    Route(RouteError),
    /// No copy of a shard could do it (503).
    Unavailable(String),
}

impl std::fmt::Display for RecallFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecallFailure::NotFound(s)
            | RecallFailure::BadRequest(s)
            | RecallFailure::Unsupported(s)
            | RecallFailure::TooLarge(s)
            | RecallFailure::Unavailable(s) => f.write_str(s),
            RecallFailure::Route(e) => write!(f, "{e}"),
        }
    }
}

impl From<RouteError> for RecallFailure {
    fn from(e: RouteError) -> Self {
        match e {
            RouteError::BadRequest(msg) if msg.contains("at most") && msg.contains("split it") => {
                RecallFailure::TooLarge(msg)
            }
            other => RecallFailure::Route(other),
        }
    }
}

impl From<RecallError> for RecallFailure {
    fn from(e: RecallError) -> Self {
        match e {
            RecallError::UnsupportedType { .. } => RecallFailure::Unsupported(e.to_string()),
            e if e.is_caller_error() => RecallFailure::BadRequest(e.to_string()),
            e => RecallFailure::Unavailable(e.to_string()),
        }
    }
}

/// A document to ingest.
#[derive(Debug, Clone, Default)]
pub struct Upload {
    pub doc_id: String,
    pub bytes: Vec<u8>,
    pub content_type: Option<String>,
    pub file_name: Option<String>,
    pub title: Option<String>,
    pub source: Option<String>,
    pub tags: Vec<String>,
    pub metadata: BTreeMap<String, String>,
}

impl Upload {
    /// Fingerprint of the content and everything stored with it: the same upload twice
    /// is recognised, a changed title or tag is not mistaken for "unchanged".
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(&self.bytes);
        for part in [&self.title, &self.source, &self.content_type, &self.file_name] {
            h.update([0xff]);
            h.update(part.as_deref().unwrap_or("").as_bytes());
        }
        for t in &self.tags {
            h.update([0xfe]);
            h.update(t.as_bytes());
        }
        for (k, v) in &self.metadata {
            h.update([0xfd]);
            h.update(k.as_bytes());
            h.update([0]);
            h.update(v.as_bytes());
        }
        hex::encode(h.finalize())
    }
}

/// What an ingest did.
#[derive(Debug, Clone, Serialize)]
pub struct Ingested {
    pub id: String,
    pub title: String,
    pub shard: u32,
    pub chunks: u32,
    pub tokens: u32,
    /// The same content and metadata were already indexed: nothing was done.
    pub unchanged: bool,
    /// An earlier version was replaced.
    pub replaced: bool,
    /// Copies of the shard that took the write.
    pub copies_written: usize,
    /// Copies the knowledge base keeps of each shard.
    pub copies_wanted: usize,
    /// The write is on fewer copies than the knowledge base keeps (only one copy was
    /// placed on a ready node): a node loss now could lose it until the copies are rebuilt.
    pub degraded: bool,
}

/// Copies a write must reach before it is acknowledged, when that many are placed.
pub const WRITE_QUORUM: usize = 2;

/// Where a write to a shard's copies went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Copies that took (and persisted) the write.
    pub copies_written: usize,
    /// Copies the knowledge base keeps of each shard.
    pub copies_wanted: usize,
    /// Fewer copies than wanted took it.
    pub degraded: bool,
}

/// Whether a write that `ok` of `placed` copies took is acknowledged: by [`WRITE_QUORUM`]
/// copies, or by the only copy when just one is placed. `Err` says how many were needed.
pub fn write_acknowledged(ok: usize, placed: usize) -> Result<(), usize> {
    let need = WRITE_QUORUM.min(placed).max(1);
    if ok >= need {
        Ok(())
    } else {
        Err(need)
    }
}

/// A search request.
#[derive(Debug, Clone)]
pub struct Search {
    pub query: String,
    pub top_k: usize,
    pub mode: SearchMode,
    pub filter: MetadataFilter,
}

/// A search's answer.
#[derive(Debug, Clone)]
pub struct Found {
    pub hits: Vec<Hit>,
    pub shards: u32,
    /// Shards none of whose copies answered, with why.
    pub failed: Vec<String>,
}

/// Ingest and search over the mesh.
pub struct Retrieval {
    cluster: Arc<Cluster>,
    router: Arc<Router>,
    pool: Pool,
    clock: Clock,
    /// Connections to the PostgreSQL indexes, by knowledge base (name, creation time).
    postgres: tokio::sync::Mutex<HashMap<(String, u64), Arc<PgIndex>>>,
    /// Counts searches, to take turns among a shard's copies.
    turn: std::sync::atomic::AtomicUsize,
}

/// Checks a search's query and `top_k`; returns the query text, trimmed.
pub fn check_search(search: &Search) -> Result<&str, RecallFailure> {
    let text = search.query.trim();
    if text.is_empty() {
        return Err(RecallFailure::BadRequest("query must not be empty".into()));
    }
    if text.len() > MAX_QUERY_BYTES {
        return Err(RecallFailure::BadRequest(format!("query is longer than {MAX_QUERY_BYTES} bytes")));
    }
    if search.top_k == 0 || search.top_k > MAX_TOP_K {
        return Err(RecallFailure::BadRequest(format!("top_k must be between 1 and {MAX_TOP_K}")));
    }
    Ok(text)
}

/// The order in which a search asks a shard's copies: turn by turn, so consecutive searches
/// spread over the copies and each copy is asked first in its turn (the rest are fallbacks).
fn copy_order<T>(mut copies: Vec<T>, turn: usize) -> Vec<T> {
    if !copies.is_empty() {
        let n = copies.len();
        copies.rotate_left(turn % n);
    }
    copies
}

/// One copy of an index shard, where to reach it.
#[derive(Debug, Clone)]
struct CopyAddr {
    id: String,
    node: String,
    address: SocketAddr,
    ready: bool,
    /// The node has reported on this copy (it knows it).
    reported: bool,
}

impl Retrieval {
    pub fn new(
        cluster: Arc<Cluster>,
        router: Arc<Router>,
        client: quinn::ClientConfig,
        clock: Clock,
    ) -> Result<Self, shoal_protocol::ProtocolError> {
        Ok(Self {
            cluster,
            router,
            pool: Pool::new(client)?,
            clock,
            postgres: Default::default(),
            turn: Default::default(),
        })
    }

    fn knowledge_base(&self, name: &str) -> Result<KnowledgeBase, RecallFailure> {
        let state = self.cluster.state().read().unwrap_or_else(|p| p.into_inner());
        state
            .knowledge_bases
            .get(name)
            .cloned()
            .ok_or_else(|| RecallFailure::NotFound(format!("no knowledge base named '{name}'")))
    }

    /// The copies of a shard on ready nodes (failed copies left out).
    fn copies(state: &ClusterState, kb: &str, shard: u32) -> Vec<CopyAddr> {
        state
            .index_shards
            .values()
            .filter(|p| p.kb == kb && p.shard == shard && p.phase != Some(ReplicaPhase::Failed))
            .filter_map(|p| {
                let node = state.nodes.get(&p.node).filter(|n| n.state == NodeState::Ready)?;
                Some(CopyAddr {
                    id: p.id.clone(),
                    node: node.name.clone(),
                    address: node.address.parse().ok()?,
                    ready: p.phase == Some(ReplicaPhase::Ready),
                    reported: p.phase.is_some(),
                })
            })
            .collect()
    }

    /// The PostgreSQL index of a knowledge base with that backend (connected on first use;
    /// the table is created if missing).
    pub async fn postgres(&self, kb: &KnowledgeBase) -> Result<Arc<PgIndex>, RecallFailure> {
        let IndexBackend::Postgres { url } = &kb.backend else {
            return Err(RecallFailure::BadRequest(format!("'{}' uses the built-in index", kb.name)));
        };
        let mut cache = self.postgres.lock().await;
        let key = (kb.name.clone(), kb.created_at_ms);
        if let Some(pg) = cache.get(&key) {
            return Ok(pg.clone());
        }
        let pg = Arc::new(PgIndex::connect(url, &kb.name, kb.dimension as usize).await?);
        cache.insert(key, pg.clone());
        Ok(pg)
    }

    /// Removes what a deleted knowledge base kept outside the nodes (its PostgreSQL table).
    pub async fn forget(&self, kb: &KnowledgeBase) -> Result<(), RecallFailure> {
        if kb.backend == IndexBackend::Builtin {
            return Ok(());
        }
        let pg = self.postgres(kb).await?;
        pg.drop_index().await?;
        self.postgres.lock().await.remove(&(kb.name.clone(), kb.created_at_ms));
        Ok(())
    }

    /// Parses, chunks, embeds and indexes one document, then records it in the catalog.
    #[tracing::instrument(level = "info", skip_all, fields(kb = %kb_name, doc = %upload.doc_id))]
    pub async fn ingest(&self, kb_name: &str, upload: Upload) -> Result<Ingested, RecallFailure> {
        let started = Instant::now();
        metrics::gauge!(m::KB_INGEST_IN_PROGRESS).increment(1.0);
        let result = self.ingest_inner(kb_name, upload).await;
        metrics::gauge!(m::KB_INGEST_IN_PROGRESS).decrement(1.0);
        let outcome = match &result {
            Ok(i) if i.unchanged => "unchanged",
            Ok(_) => "indexed",
            Err(_) => "failed",
        };
        // Only names of bases that exist become labels (made-up names must not add series).
        let label = match &result {
            Err(RecallFailure::NotFound(_)) => "other".to_string(),
            _ => kb_name.to_string(),
        };
        metrics::counter!(m::KB_INGEST_DOCUMENTS, "kb" => label, "outcome" => outcome).increment(1);
        metrics::histogram!(m::KB_INGEST_SECONDS).record(started.elapsed().as_secs_f64());
        result
    }

    async fn ingest_inner(&self, kb_name: &str, upload: Upload) -> Result<Ingested, RecallFailure> {
        let kb = self.knowledge_base(kb_name)?;
        let mut record = DocumentRecord::new(upload.doc_id.clone());
        record.validate()?;
        let fingerprint = upload.fingerprint();
        let shard = kb.shard_of(&upload.doc_id);
        let earlier = kb.documents.get(&upload.doc_id);
        if let Some(d) = earlier.filter(|d| d.sha256 == fingerprint) {
            return Ok(Ingested::unchanged(d, shard, &kb));
        }
        let (bytes, content_type, file_name) =
            (upload.bytes.clone(), upload.content_type.clone(), upload.file_name.clone());
        let parsed = tokio::task::spawn_blocking(move || {
            shoal_recall::parse_document(&bytes, content_type.as_deref(), file_name.as_deref())
        })
        .await
        .map_err(|e| RecallFailure::Unavailable(format!("parsing panicked: {e}")))??;
        if parsed.text.len() > MAX_DOCUMENT_TEXT_BYTES {
            return Err(RecallFailure::TooLarge(format!(
                "the document holds {} MiB of text; at most {} MiB per document: split it",
                parsed.text.len() >> 20,
                MAX_DOCUMENT_TEXT_BYTES >> 20
            )));
        }
        let title = upload
            .title
            .clone()
            .filter(|t| !t.trim().is_empty())
            .or(parsed.title.clone())
            .or(upload.file_name.clone())
            .unwrap_or_else(|| upload.doc_id.clone());
        record.title = Some(title.clone());
        record.source = upload.source.clone().or(upload.file_name.clone());
        record.tags = upload.tags.clone();
        record.metadata = upload.metadata.clone();
        let (chunks, tokens) = self
            .router
            .embed_document(&kb.embedding, parsed.text, kb.chunk_tokens, kb.chunk_overlap, EMBED_DOCUMENT_TIMEOUT)
            .await?;
        if chunks.is_empty() {
            return Err(RecallFailure::BadRequest("the document holds no text".into()));
        }
        if let Some(c) = chunks.iter().find(|c| c.vector.len() != kb.dimension as usize) {
            return Err(RecallFailure::Unavailable(format!(
                "the embedding model answered {}-dimensional vectors; this knowledge base holds {}",
                c.vector.len(),
                kb.dimension
            )));
        }
        let stored =
            Stored { sha256: fingerprint, bytes: upload.bytes.len() as u64, replaced: earlier.is_some(), tokens };
        self.store(&kb, shard, record, chunks, stored).await
    }

    /// Writes a chunked and embedded document to every copy of its shard (or PostgreSQL),
    /// then commits its catalog entry.
    async fn store(
        &self,
        kb: &KnowledgeBase,
        shard: u32,
        record: DocumentRecord,
        chunks: Vec<shoal_protocol::IndexChunk>,
        stored: Stored,
    ) -> Result<Ingested, RecallFailure> {
        let n = chunks.len() as u32;
        let written = match &kb.backend {
            IndexBackend::Builtin => {
                let req = |id: &str| Request::IndexUpsert {
                    shard_id: id.to_string(),
                    document: wire::document_to_wire(&record),
                    chunks: chunks.clone(),
                };
                self.write_copies(kb, shard, req).await?
            }
            IndexBackend::Postgres { .. } => {
                let chunks: Vec<_> = chunks.into_iter().map(wire::chunk_from_wire).collect();
                self.postgres(kb).await?.upsert_document(&record, &chunks).await?;
                Written { copies_written: 1, copies_wanted: 1, degraded: false }
            }
        };
        metrics::counter!(m::KB_INGEST_CHUNKS, "kb" => kb.name.clone()).increment(u64::from(n));
        let title = record.title.clone().unwrap_or_else(|| record.doc_id.clone());
        let document = KbDocument {
            id: record.doc_id.clone(),
            title: title.clone(),
            source: record.source.clone().unwrap_or_default(),
            tags: record.tags.clone(),
            sha256: stored.sha256,
            chunks: n,
            bytes: stored.bytes,
            updated_at_ms: self.clock.unix_ms(),
        };
        match self.cluster.command(Command::PutDocument { kb: kb.name.clone(), document }).await {
            Ok(Outcome::Applied) => {}
            Ok(other) => return Err(RecallFailure::NotFound(format!("the catalog refused the document: {other:?}"))),
            Err(e) => return Err(RecallFailure::Unavailable(format!("could not record the document: {e}"))),
        }
        let tokens = stored.tokens;
        info!(chunks = n, tokens, copies = written.copies_written, degraded = written.degraded, "document indexed");
        Ok(Ingested {
            id: record.doc_id,
            title,
            shard,
            chunks: n,
            tokens,
            unchanged: false,
            replaced: stored.replaced,
            copies_written: written.copies_written,
            copies_wanted: written.copies_wanted,
            degraded: written.degraded,
        })
    }

    /// Adds a document exported from a knowledge base (`GET …/export`) with its chunks and
    /// vectors as they are: nothing is embedded again. The vectors must have this base's
    /// dimension; the same document with the same fingerprint is left as it is.
    pub async fn import_document(
        &self,
        kb_name: &str,
        record: DocumentRecord,
        chunks: Vec<shoal_protocol::IndexChunk>,
        sha256: String,
        bytes: u64,
    ) -> Result<Ingested, RecallFailure> {
        let kb = self.knowledge_base(kb_name)?;
        record.validate()?;
        let shard = kb.shard_of(&record.doc_id);
        let earlier = kb.documents.get(&record.doc_id);
        if let Some(d) = earlier.filter(|d| d.sha256 == sha256) {
            return Ok(Ingested::unchanged(d, shard, &kb));
        }
        check_imported_chunks(&chunks, kb.dimension as usize)?;
        let stored = Stored { sha256, bytes, replaced: earlier.is_some(), tokens: 0 };
        let result = self.store(&kb, shard, record, chunks, stored).await;
        let outcome = if result.is_ok() { "imported" } else { "failed" };
        metrics::counter!(m::KB_INGEST_DOCUMENTS, "kb" => kb.name.clone(), "outcome" => outcome).increment(1);
        result
    }

    /// Opens an export of one shard from one of its ready copies (the next copy when one
    /// cannot be reached): the stream answers `IndexExported` frames until one is `last`.
    pub async fn open_export(
        &self,
        kb: &KnowledgeBase,
        shard: u32,
    ) -> Result<shoal_protocol::quic::ClientStream, RecallFailure> {
        let copies: Vec<CopyAddr> = {
            let state = self.cluster.state().read().unwrap_or_else(|p| p.into_inner());
            Self::copies(&state, &kb.name, shard).into_iter().filter(|c| c.ready).collect()
        };
        let mut why = Vec::new();
        for c in &copies {
            let opened = async {
                let mut s = self.pool.open(c.address, NODE_SERVER_NAME).await.map_err(|e| e.to_string())?;
                s.send(&Request::IndexExport { shard_id: c.id.clone() }).await.map_err(|e| e.to_string())?;
                Ok::<_, String>(s)
            };
            match opened.await {
                Ok(s) => return Ok(s),
                Err(e) => why.push(format!("{} on {}: {e}", c.id, c.node)),
            }
        }
        Err(RecallFailure::Unavailable(if why.is_empty() {
            format!("shard {shard} of '{}' has no ready copy to export from", kb.name)
        } else {
            format!("no ready copy of shard {shard} of '{}' could be read: {}", kb.name, why.join("; "))
        }))
    }

    /// Removes a document from every copy of its shard and from the catalog.
    pub async fn delete_document(&self, kb_name: &str, doc_id: &str) -> Result<(), RecallFailure> {
        let kb = self.knowledge_base(kb_name)?;
        if !kb.documents.contains_key(doc_id) {
            return Err(RecallFailure::NotFound(format!("no document '{doc_id}' in knowledge base '{kb_name}'")));
        }
        let shard = kb.shard_of(doc_id);
        match &kb.backend {
            IndexBackend::Builtin => {
                let req = |id: &str| Request::IndexDelete { shard_id: id.to_string(), doc_id: doc_id.to_string() };
                self.write_copies(&kb, shard, req).await?;
            }
            IndexBackend::Postgres { .. } => {
                self.postgres(&kb).await?.delete_document(doc_id).await?;
            }
        }
        match self.cluster.command(Command::DeleteDocument { kb: kb.name.clone(), id: doc_id.to_string() }).await {
            Ok(_) => Ok(()),
            Err(e) => Err(RecallFailure::Unavailable(format!("could not record the deletion: {e}"))),
        }
    }

    /// Sends a write to every copy of a shard. It is acknowledged when [`WRITE_QUORUM`]
    /// copies took it (each persists it before it answers: a ready copy in its store, a copy
    /// being built in its journal), or the only copy when just one is placed on a ready node;
    /// the answer then says it is degraded. Copies that missed a write another copy took are
    /// taken out of the placement, so the coordinator puts a fresh copy in their place that
    /// rebuilds from one that took it.
    async fn write_copies(
        &self,
        kb: &KnowledgeBase,
        shard: u32,
        req: impl Fn(&str) -> Request,
    ) -> Result<Written, RecallFailure> {
        let copies = {
            let state = self.cluster.state().read().unwrap_or_else(|p| p.into_inner());
            Self::copies(&state, &kb.name, shard)
        };
        if copies.is_empty() {
            return Err(RecallFailure::Unavailable(format!(
                "shard {shard} of '{}' has no copy on a ready node yet (are nodes joined?)",
                kb.name
            )));
        }
        let calls = copies.iter().map(|c| {
            let r = req(&c.id);
            async move { (c, self.call(c.address, &r, SHARD_WRITE_TIMEOUT).await) }
        });
        let mut ok = 0;
        // Copies that did not take the write, and why (never empty text).
        let mut missed: Vec<(&CopyAddr, String)> = Vec::new();
        let mut failures = Vec::new();
        for (copy, result) in join_all(calls).await {
            match result {
                Ok(Response::IndexWritten { .. }) => ok += 1,
                // A copy just placed whose node has not heard of it yet: it copies everything
                // from a ready copy when it starts, so it is not replaced for this.
                Ok(Response::Refused { code: RefusalCode::NotFound, .. }) if !copy.reported => {
                    missed.push((copy, "the copy was just placed and its node does not know it yet".into()))
                }
                Ok(Response::Refused { code: RefusalCode::BadRequest, message }) => {
                    return Err(RecallFailure::BadRequest(message))
                }
                Ok(Response::Refused { code, message }) => {
                    let why = non_empty(message, || format!("refused ({})", code.as_str()));
                    missed.push((copy, why.clone()));
                    failures.push((copy, why));
                }
                Ok(other) => {
                    let why = format!("unexpected answer {other:?}");
                    missed.push((copy, why.clone()));
                    failures.push((copy, why));
                }
                Err(e) => {
                    let why = non_empty(e, || "the call failed without a reason".into());
                    missed.push((copy, why.clone()));
                    failures.push((copy, why));
                }
            }
        }
        if ok > 0 {
            for (copy, why) in &failures {
                warn!(copy = %copy.id, node = %copy.node, error = %why, "a shard copy missed a write; replacing it");
                if let Err(e) = self.cluster.command(Command::UnplaceIndexShard { id: copy.id.clone() }).await {
                    warn!(copy = %copy.id, error = %e, "could not replace a copy that missed a write");
                }
            }
        }
        if let Err(need) = write_acknowledged(ok, copies.len()) {
            let why: Vec<String> = missed.iter().map(|(c, e)| format!("{} on {}: {e}", c.id, c.node)).collect();
            return Err(RecallFailure::Unavailable(format!(
                "{ok} of {} copies of shard {shard} of '{}' took the write, {need} needed: {}",
                copies.len(),
                kb.name,
                why.join("; ")
            )));
        }
        let wanted = (kb.replicas as usize).max(copies.len());
        Ok(Written { copies_written: ok, copies_wanted: wanted, degraded: ok < wanted })
    }

    async fn call(&self, address: SocketAddr, req: &Request, timeout: Duration) -> Result<Response, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        match self.pool.call(address, NODE_SERVER_NAME, req, deadline).await {
            Ok(r) => Ok(r),
            // Callers read the refusal's code themselves.
            Err(CallError::Refused { code, message, .. }) => Ok(Response::Refused { code, message }),
            Err(CallError::Timeout { .. }) => Err(format!("no answer within {} ms", timeout.as_millis())),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Searches a knowledge base.
    #[tracing::instrument(level = "info", skip_all, fields(kb = %kb_name, mode = ?search.mode))]
    pub async fn search(&self, kb_name: &str, search: Search) -> Result<Found, RecallFailure> {
        let started = Instant::now();
        let kb = self.knowledge_base(kb_name)?;
        let text = check_search(&search)?;
        let vector = if search.mode == SearchMode::Sparse {
            None
        } else {
            let (mut v, _) = self
                .router
                .embed_within(&kb.embedding, vec![text.to_string()], EmbedAs::Query, QUERY_EMBED_PATIENCE)
                .await?;
            v.pop()
        };
        let query = SearchQuery {
            vector,
            text: Some(text.to_string()),
            k: search.top_k,
            mode: search.mode,
            filter: search.filter.clone(),
        };
        query.validate()?;
        let found = match &kb.backend {
            IndexBackend::Builtin => self.scatter(&kb, &query).await?,
            IndexBackend::Postgres { .. } => {
                let hits = self.postgres(&kb).await?.search(&query).await?;
                Found { hits, shards: 1, failed: Vec::new() }
            }
        };
        let mode = format!("{:?}", search.mode).to_lowercase();
        metrics::histogram!(m::KB_SEARCH_SECONDS, "mode" => mode).record(started.elapsed().as_secs_f64());
        Ok(found)
    }

    /// Asks one ready copy of every shard (another when one fails or is slow) and merges.
    async fn scatter(&self, kb: &KnowledgeBase, query: &SearchQuery) -> Result<Found, RecallFailure> {
        let turn = self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let per_shard: Vec<Vec<CopyAddr>> = {
            let state = self.cluster.state().read().unwrap_or_else(|p| p.into_inner());
            (0..kb.shards)
                .map(|s| {
                    let ready = Self::copies(&state, &kb.name, s).into_iter().filter(|c| c.ready).collect();
                    copy_order(ready, turn + s as usize)
                })
                .collect()
        };
        let wire_query = wire::query_to_wire(query);
        let asks = per_shard.iter().enumerate().map(|(shard, copies)| {
            let q = wire_query.clone();
            async move { (shard, self.search_shard(&kb.name, copies, q).await) }
        });
        let mut lists = Vec::new();
        let mut failed = Vec::new();
        for (shard, result) in join_all(asks).await {
            match result {
                Ok(hits) => lists.push(hits),
                Err(why) => failed.push(format!("shard {shard}: {why}")),
            }
        }
        if lists.is_empty() {
            return Err(RecallFailure::Unavailable(format!(
                "no shard of '{}' answered: {}",
                kb.name,
                failed.join("; ")
            )));
        }
        let hits = shoal_recall::merge_shard_hits(query.mode, lists, query.k);
        Ok(Found { hits, shards: kb.shards, failed })
    }

    async fn search_shard(
        &self,
        kb: &str,
        copies: &[CopyAddr],
        query: shoal_protocol::IndexQuery,
    ) -> Result<Vec<Hit>, String> {
        if copies.is_empty() {
            return Err("no copy is ready".into());
        }
        let mut why = Vec::new();
        for (i, c) in copies.iter().enumerate() {
            if i > 0 {
                metrics::counter!(m::KB_SHARD_FAILOVERS, "kb" => kb.to_string()).increment(1);
            }
            let req = Request::IndexSearch { shard_id: c.id.clone(), query: query.clone() };
            match self.call(c.address, &req, SHARD_SEARCH_TIMEOUT).await {
                Ok(Response::IndexHits { hits }) => return Ok(hits.into_iter().map(wire::hit_from_wire).collect()),
                Ok(Response::Refused { message, .. }) => why.push(format!("{} on {}: {message}", c.id, c.node)),
                Ok(other) => why.push(format!("{} on {}: unexpected {other:?}", c.id, c.node)),
                Err(e) => why.push(format!("{} on {}: {e}", c.id, c.node)),
            }
            debug!(copy = %c.id, "shard copy did not answer; trying another");
        }
        Err(why.join("; "))
    }

    /// Sizes and copy health for every knowledge base, as gauges (run by the leader).
    pub fn publish_gauges(state: &ClusterState) {
        for kb in state.knowledge_bases.values() {
            let chunks: u64 = kb.documents.values().map(|d| u64::from(d.chunks)).sum();
            metrics::gauge!(m::KB_DOCUMENTS, "kb" => kb.name.clone()).set(kb.documents.len() as f64);
            metrics::gauge!(m::KB_CHUNKS, "kb" => kb.name.clone()).set(chunks as f64);
            if kb.backend != IndexBackend::Builtin {
                continue;
            }
            for shard in 0..kb.shards {
                let ready = Self::copies(state, &kb.name, shard).iter().filter(|c| c.ready).count();
                metrics::gauge!(m::KB_SHARD_READY_COPIES, "kb" => kb.name.clone(), "shard" => shard.to_string())
                    .set(ready as f64);
                metrics::gauge!(m::KB_SHARD_WANTED_COPIES, "kb" => kb.name.clone(), "shard" => shard.to_string())
                    .set(f64::from(kb.replicas));
            }
        }
    }
}

/// `text`, or what `otherwise` says when it is empty: every reason a user reads says something.
fn non_empty(text: String, otherwise: impl FnOnce() -> String) -> String {
    if text.trim().is_empty() {
        otherwise()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn searches_take_turns_among_copies() {
        let copies = vec!["a", "b", "c"];
        assert_eq!(copy_order(copies.clone(), 0), vec!["a", "b", "c"]);
        assert_eq!(copy_order(copies.clone(), 1), vec!["b", "c", "a"]);
        assert_eq!(copy_order(copies.clone(), 5), vec!["c", "a", "b"]);
        assert_eq!(copy_order(Vec::<&str>::new(), 3), Vec::<&str>::new());
        // Two consecutive turns put every one of two copies first once.
        let firsts: Vec<&str> = (7..9).map(|t| copy_order(vec!["x", "y"], t)[0]).collect();
        assert_eq!(firsts, vec!["y", "x"]);
    }

    #[test]
    fn the_fingerprint_changes_with_the_content_and_with_what_is_stored_with_it() {
        let base = Upload { doc_id: "d".into(), bytes: b"text".to_vec(), ..Default::default() };
        let same = base.clone();
        assert_eq!(base.fingerprint(), same.fingerprint());
        let variants = [
            Upload { bytes: b"text!".to_vec(), ..base.clone() },
            Upload { title: Some("t".into()), ..base.clone() },
            Upload { source: Some("s".into()), ..base.clone() },
            Upload { tags: vec!["a".into()], ..base.clone() },
            Upload { metadata: [("k".to_string(), "v".to_string())].into(), ..base.clone() },
            Upload { content_type: Some("text/markdown".into()), ..base.clone() },
        ];
        for v in &variants {
            assert_ne!(v.fingerprint(), base.fingerprint(), "{v:?}");
        }
        // Fields do not run into each other.
        let a = Upload { title: Some("ab".into()), source: Some("c".into()), ..base.clone() };
        let b = Upload { title: Some("a".into()), source: Some("bc".into()), ..base.clone() };
        assert_ne!(a.fingerprint(), b.fingerprint());
    }

    #[test]
    fn a_write_is_acknowledged_by_two_copies_or_by_the_only_one() {
        assert_eq!(write_acknowledged(1, 1), Ok(()), "a single copy: acknowledged (and reported degraded)");
        assert_eq!(write_acknowledged(2, 2), Ok(()));
        assert_eq!(write_acknowledged(2, 3), Ok(()), "two of three copies are enough");
        assert_eq!(write_acknowledged(1, 2), Err(2), "one of two copies is not");
        assert_eq!(write_acknowledged(1, 3), Err(2));
        assert_eq!(write_acknowledged(0, 1), Err(1));
        assert_eq!(non_empty(String::new(), || "why".into()), "why");
        assert_eq!(non_empty(" ".into(), || "why".into()), "why");
        assert_eq!(non_empty("timeout".into(), || "why".into()), "timeout");
    }

    #[test]
    fn failures_map_to_what_the_caller_did() {
        let unsupported = RecallError::UnsupportedType { given: "x.zip".into(), supported: "txt" };
        assert!(matches!(RecallFailure::from(unsupported), RecallFailure::Unsupported(_)));
        assert!(matches!(RecallFailure::from(RecallError::EmptyDocument), RecallFailure::BadRequest(_)));
        let big = RouteError::BadRequest("the document makes 9 chunks …; at most 6 MiB per document: split it".into());
        assert!(matches!(RecallFailure::from(big), RecallFailure::TooLarge(_)));
        assert!(matches!(RecallFailure::from(RouteError::NoReplica("x".into())), RecallFailure::Route(_)));
    }
}
