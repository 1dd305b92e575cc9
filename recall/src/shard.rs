//! An index shard: one directory holding a chunk store, a dense index and a BM25 index over the same chunks.
//!
//! ```text
//! <dir>/store/    sled: documents, chunks, vectors, generation (the source of truth)
//! <dir>/sparse/   tantivy BM25 index, its commits stamped with the store generation
//! <dir>/dense/    checkpoint of the dense index, and the generation it reflects
//! ```
//!
//! Every change to a document goes to the store first (one transaction, flushed), then to the BM25 index
//! (committed with the new generation), then to the in-memory dense index. On open, an index whose stamp is
//! not the store's generation (a crash between the steps, a lost or stale checkpoint) is rebuilt from the
//! store, so a reopened shard always answers as the store says. The dense checkpoint is written by
//! [`IndexShard::flush`] and after [`ShardConfig::checkpoint_after_changes`] changed chunks.
//!
//! Chunk ids derive from (document id, position) ([`chunk_id`]), so replicas fed the same documents agree, and
//! [`IndexShard::export`] / [`IndexShard::import`] stream whole documents to rebuild a lost replica.

mod store;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::dense::{DenseConfig, DenseIndex};
use crate::document::{chunk_id, DocumentRecord, EmbeddedChunk, ExportedDocument, StoredChunk};
use crate::error::{RecallError, Result};
use crate::fsutil;
use crate::fuse::{Ranking, SearchMode};
use crate::query::{Hit, SearchQuery, MAX_K};
use crate::sparse::SparseIndex;
use store::{ChunkStore, StoredDocument};

/// Most chunks one document may have.
pub const MAX_CHUNKS_PER_DOCUMENT: usize = 100_000;
/// Hybrid search reads this many times `k` candidates from each index before fusing.
const HYBRID_DEPTH_FACTOR: usize = 4;
/// ...and at least this many.
const HYBRID_MIN_DEPTH: usize = 20;
/// A metadata filter admitting at most this many chunks is answered by exact dense search over them.
const FILTER_EXACT_MAX_CHUNKS: usize = 4096;
/// Documents per batch when importing.
const IMPORT_BATCH_DOCUMENTS: usize = 32;
/// Vectors per batch when rebuilding the dense index from the store.
const REBUILD_BATCH_VECTORS: usize = 8192;
/// The file in `dense/` that holds the generation the checkpoint reflects.
const DENSE_STAMP_FILE: &str = "generation";

/// How a shard is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardConfig {
    /// The dense index (its dimension is the embedding model's).
    pub dense: DenseConfig,
    /// Write a dense checkpoint once this many chunks changed since the last one (besides [`IndexShard::flush`]).
    pub checkpoint_after_changes: usize,
}

impl ShardConfig {
    /// Defaults for embeddings of `dimension`.
    pub fn new(dimension: usize) -> Self {
        ShardConfig { dense: DenseConfig::new(dimension), checkpoint_after_changes: 50_000 }
    }
}

/// Checks a document and its chunks before anything is written (every backend): a valid id,
/// 1 to [`MAX_CHUNKS_PER_DOCUMENT`] chunks, none empty, and every vector accepted by
/// `check_vector`.
pub(crate) fn check_document(
    record: &DocumentRecord,
    chunks: &[EmbeddedChunk],
    check_vector: &dyn Fn(&[f32]) -> Result<()>,
) -> Result<()> {
    record.validate()?;
    if chunks.is_empty() {
        return Err(RecallError::InvalidRequest(format!("document {:?} has no chunks", record.doc_id)));
    }
    if chunks.len() > MAX_CHUNKS_PER_DOCUMENT {
        return Err(RecallError::InvalidRequest(format!(
            "document {:?} has {} chunks, at most {MAX_CHUNKS_PER_DOCUMENT} are allowed",
            record.doc_id,
            chunks.len()
        )));
    }
    for (position, (chunk, vector)) in chunks.iter().enumerate() {
        if chunk.text.trim().is_empty() {
            return Err(RecallError::InvalidRequest(format!(
                "chunk {position} of document {:?} is empty",
                record.doc_id
            )));
        }
        check_vector(vector)?;
    }
    Ok(())
}

/// What an upsert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpsertOutcome {
    /// Chunks the document has now.
    pub chunks: usize,
    /// Chunks of an earlier version that were replaced.
    pub replaced_chunks: usize,
    /// The same content was already stored: nothing was written.
    pub unchanged: bool,
}

/// Sizes of a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardStats {
    /// Documents stored.
    pub documents: usize,
    /// Chunks stored.
    pub chunks: usize,
    /// Live vectors in the dense index.
    pub dense_vectors: usize,
    /// Deleted vectors still in the dense graph.
    pub dense_tombstones: usize,
    /// Chunks in the BM25 index.
    pub sparse_chunks: u64,
    /// Document changes ever applied.
    pub generation: u64,
    /// Vector dimension.
    pub dimension: usize,
    /// Bytes under the shard's directory.
    pub bytes_on_disk: u64,
}

/// One shard of a knowledge base (see the module docs).
pub struct IndexShard {
    dir: PathBuf,
    config: ShardConfig,
    store: ChunkStore,
    sparse: SparseIndex,
    dense: DenseIndex,
    /// Every stored document, for metadata filters.
    documents: HashMap<String, StoredDocument>,
    /// Chunks changed since the last dense checkpoint.
    changes_since_checkpoint: usize,
}

impl std::fmt::Debug for IndexShard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexShard").field("dir", &self.dir).field("documents", &self.documents.len()).finish()
    }
}

impl IndexShard {
    /// Opens the shard in `dir`, creating it if needed, and rebuilds whichever index is behind the store.
    #[tracing::instrument(level = "info", skip_all, fields(dir = %dir.display()))]
    pub fn open(dir: &Path, config: ShardConfig) -> Result<Self> {
        config.dense.validate()?;
        std::fs::create_dir_all(dir)?;
        let store = ChunkStore::open(&dir.join("store"), config.dense.dimension)?;
        let generation = store.generation()?;
        let documents: HashMap<String, StoredDocument> =
            store.documents().map(|d| d.map(|d| (d.record.doc_id.clone(), d))).collect::<Result<_>>()?;
        let chunk_count: usize = documents.values().map(|d| d.chunk_ids.len()).sum();
        let mut sparse = SparseIndex::open(&dir.join("sparse"))?;
        if sparse.committed_stamp()? != Some(generation) || sparse.len() != chunk_count as u64 {
            rebuild_sparse(&store, &mut sparse, generation)?;
        }
        let dense_dir = dir.join("dense");
        let (dense, fresh) = match load_dense_checkpoint(&dense_dir, &config.dense, generation, chunk_count) {
            Some(dense) => (dense, false),
            None => (rebuild_dense(&store, &config.dense)?, true),
        };
        let mut shard =
            IndexShard { dir: dir.to_path_buf(), config, store, sparse, dense, documents, changes_since_checkpoint: 0 };
        if fresh && chunk_count > 0 {
            shard.checkpoint()?;
        }
        Ok(shard)
    }

    /// The shard's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &ShardConfig {
        &self.config
    }

    /// Adds or replaces one document with its chunks and their embeddings (see [`upsert_documents`]).
    ///
    /// [`upsert_documents`]: Self::upsert_documents
    pub fn upsert_document(&mut self, doc: DocumentRecord, chunks: Vec<EmbeddedChunk>) -> Result<UpsertOutcome> {
        let mut outcomes = self.upsert_documents(vec![(doc, chunks)])?;
        outcomes.pop().ok_or_else(|| RecallError::Store("upsert returned no outcome".into()))
    }

    /// Adds or replaces documents. Each replaces every earlier chunk of its document id; re-sending identical
    /// content changes nothing (so a retried ingest is idempotent). Every document is checked before any is
    /// written; the BM25 index commits once for the whole batch.
    #[tracing::instrument(level = "info", skip_all, fields(documents = docs.len()))]
    pub fn upsert_documents(&mut self, docs: Vec<(DocumentRecord, Vec<EmbeddedChunk>)>) -> Result<Vec<UpsertOutcome>> {
        for (record, chunks) in &docs {
            self.check_document(record, chunks)?;
        }
        let mut outcomes = Vec::with_capacity(docs.len());
        let mut last_generation = None;
        for (record, chunks) in docs {
            let content_hash = content_hash(&record, &chunks);
            let old_ids = match self.documents.get(&record.doc_id) {
                Some(existing) if existing.content_hash == content_hash => {
                    outcomes.push(UpsertOutcome { chunks: chunks.len(), replaced_chunks: 0, unchanged: true });
                    continue;
                }
                Some(existing) => existing.chunk_ids.clone(),
                None => Vec::new(),
            };
            let doc_id = record.doc_id.clone();
            let stored: Vec<(StoredChunk, Vec<f32>)> = chunks
                .into_iter()
                .enumerate()
                .map(|(position, (chunk, vector))| {
                    let position = position as u32;
                    let chunk_id = chunk_id(&doc_id, position);
                    (StoredChunk { chunk_id, doc_id: doc_id.clone(), position, chunk }, vector)
                })
                .collect();
            let new_ids: Vec<u64> = stored.iter().map(|(c, _)| c.chunk_id).collect();
            let document = StoredDocument { record, chunk_ids: new_ids.clone(), content_hash };
            last_generation = Some(self.store.put_document(&document, &old_ids, &stored)?);

            self.sparse.delete_doc(&doc_id)?;
            for (chunk, _) in &stored {
                self.sparse.add(chunk.chunk_id, &chunk.chunk.text, &doc_id)?;
            }
            let kept: HashSet<u64> = new_ids.iter().copied().collect();
            for id in old_ids.iter().filter(|id| !kept.contains(id)) {
                self.dense.delete(*id);
            }
            let vectors: Vec<(u64, &[f32])> = stored.iter().map(|(c, v)| (c.chunk_id, v.as_slice())).collect();
            self.dense.insert_batch(&vectors)?;

            self.changes_since_checkpoint += old_ids.len() + new_ids.len();
            outcomes.push(UpsertOutcome { chunks: new_ids.len(), replaced_chunks: old_ids.len(), unchanged: false });
            self.documents.insert(doc_id, document);
        }
        if let Some(generation) = last_generation {
            self.store.flush()?;
            self.sparse.commit(generation)?;
            self.maybe_checkpoint()?;
        }
        Ok(outcomes)
    }

    fn check_document(&self, record: &DocumentRecord, chunks: &[EmbeddedChunk]) -> Result<()> {
        check_document(record, chunks, &|v| self.dense.check_vector(v))
    }

    /// Deletes a document from the store and both indexes; returns whether it existed.
    #[tracing::instrument(level = "info", skip(self))]
    pub fn delete_document(&mut self, doc_id: &str) -> Result<bool> {
        let Some(document) = self.documents.get(doc_id) else { return Ok(false) };
        let generation = self.store.remove_document(document)?;
        self.store.flush()?;
        self.sparse.delete_doc(doc_id)?;
        self.sparse.commit(generation)?;
        for id in &document.chunk_ids {
            self.dense.delete(*id);
        }
        self.changes_since_checkpoint += document.chunk_ids.len();
        self.documents.remove(doc_id);
        self.maybe_checkpoint()?;
        Ok(true)
    }

    /// The stored record of `doc_id`.
    pub fn document(&self, doc_id: &str) -> Option<&DocumentRecord> {
        self.documents.get(doc_id).map(|d| &d.record)
    }

    /// Ids of every stored document, sorted.
    pub fn document_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.documents.keys().cloned().collect();
        ids.sort_unstable();
        ids
    }

    /// Searches the shard.
    ///
    /// Dense mode ranks by cosine similarity to `query.vector`, sparse mode by BM25 of `query.text`, hybrid
    /// fuses both lists (each read `4k` deep) by reciprocal rank fusion; hybrid uses whichever of vector and
    /// text is present. Only chunks of documents that pass `query.filter` answer.
    #[tracing::instrument(level = "debug", skip_all, fields(mode = ?query.mode, k = query.k))]
    pub fn search(&self, query: &SearchQuery) -> Result<Vec<Hit>> {
        query.validate()?;
        let text = query.text.as_deref().filter(|t| !t.trim().is_empty());
        let vector = query.vector.as_deref().filter(|_| query.mode != SearchMode::Sparse);
        let text = text.filter(|_| query.mode != SearchMode::Dense);
        let depth = match query.mode {
            SearchMode::Hybrid => (query.k * HYBRID_DEPTH_FACTOR).clamp(HYBRID_MIN_DEPTH, MAX_K * HYBRID_DEPTH_FACTOR),
            _ => query.k,
        };
        if let Some(v) = vector {
            self.dense.check_vector(v)?;
        }

        // Documents, and their chunks, that the filter admits (None: all).
        let admitted: Option<(Vec<&str>, HashSet<u64>)> = (!query.filter.is_empty()).then(|| {
            let docs: Vec<&StoredDocument> =
                self.documents.values().filter(|d| query.filter.matches(&d.record)).collect();
            let ids = docs.iter().map(|d| d.record.doc_id.as_str()).collect();
            let chunks = docs.iter().flat_map(|d| d.chunk_ids.iter().copied()).collect();
            (ids, chunks)
        });
        if admitted.as_ref().is_some_and(|(docs, _)| docs.is_empty()) {
            return Ok(Vec::new());
        }

        let dense_hits = match (vector, &admitted) {
            (None, _) => Vec::new(),
            (Some(v), None) => self.dense.search(v, depth, &|_| true)?,
            (Some(v), Some((_, chunks))) if chunks.len() <= FILTER_EXACT_MAX_CHUNKS => {
                let ids: Vec<u64> = chunks.iter().copied().collect();
                self.dense.search_among(v, depth, &ids)?
            }
            (Some(v), Some((_, chunks))) => self.dense.search(v, depth, &|id| chunks.contains(&id))?,
        };
        let sparse_hits = match text {
            None => Vec::new(),
            Some(t) => self.sparse.search_in_docs(t, depth, admitted.as_ref().map(|(docs, _)| docs.as_slice()))?,
        };

        let ranking = Ranking::new(query.mode, dense_hits, sparse_hits, query.k);
        let mut hits = Vec::with_capacity(ranking.order.len());
        for &(chunk_id, score) in &ranking.order {
            let Some(chunk) = self.store.chunk(chunk_id)? else {
                tracing::warn!(chunk_id, "an index returned a chunk the store does not hold");
                continue;
            };
            let record = self.documents.get(&chunk.doc_id).map(|d| &d.record);
            let (dense_rank, sparse_rank, dense_score, sparse_score) = ranking.of(chunk_id);
            hits.push(Hit {
                chunk_id,
                title: record.and_then(|r| r.title.clone()),
                source: record.and_then(|r| r.source.clone()),
                metadata: record.map(|r| r.metadata.clone()).unwrap_or_default(),
                doc_id: chunk.doc_id,
                position: chunk.position,
                text: chunk.chunk.text,
                score,
                dense_rank,
                sparse_rank,
                dense_score,
                sparse_score,
            });
        }
        Ok(hits)
    }

    /// Sizes of the shard.
    pub fn stats(&self) -> Result<ShardStats> {
        Ok(ShardStats {
            documents: self.documents.len(),
            chunks: self.documents.values().map(|d| d.chunk_ids.len()).sum(),
            dense_vectors: self.dense.len(),
            dense_tombstones: self.dense.tombstones(),
            sparse_chunks: self.sparse.len(),
            generation: self.store.generation()?,
            dimension: self.config.dense.dimension,
            bytes_on_disk: fsutil::dir_size(&self.dir),
        })
    }

    /// Every document with its chunks and vectors, in doc-id order, read lazily from the store: stream it to
    /// another replica and [`import`](Self::import) it there.
    pub fn export(&self) -> impl Iterator<Item = Result<ExportedDocument>> + '_ {
        self.store.documents().map(move |document| {
            let document = document?;
            let mut chunks = Vec::with_capacity(document.chunk_ids.len());
            for &id in &document.chunk_ids {
                let missing =
                    || RecallError::Store(format!("document {:?}: chunk {id} missing", document.record.doc_id));
                let chunk = self.store.chunk(id)?.ok_or_else(missing)?;
                let vector = self.store.vector(id)?.ok_or_else(missing)?;
                chunks.push((chunk.chunk, vector));
            }
            Ok(ExportedDocument { record: document.record, chunks })
        })
    }

    /// Upserts exported documents in batches; returns how many changed this shard.
    #[tracing::instrument(level = "info", skip_all)]
    pub fn import(&mut self, documents: impl IntoIterator<Item = ExportedDocument>) -> Result<usize> {
        let mut changed = 0;
        let mut batch = Vec::with_capacity(IMPORT_BATCH_DOCUMENTS);
        for document in documents {
            batch.push((document.record, document.chunks));
            if batch.len() == IMPORT_BATCH_DOCUMENTS {
                changed += self.upsert_documents(std::mem::take(&mut batch))?.iter().filter(|o| !o.unchanged).count();
            }
        }
        if !batch.is_empty() {
            changed += self.upsert_documents(batch)?.iter().filter(|o| !o.unchanged).count();
        }
        Ok(changed)
    }

    /// Makes everything durable and writes a dense checkpoint if anything changed since the last one, so the
    /// next open does not rebuild the dense graph.
    pub fn flush(&mut self) -> Result<()> {
        self.store.flush()?;
        if self.changes_since_checkpoint > 0 {
            self.checkpoint()?;
        }
        Ok(())
    }

    fn maybe_checkpoint(&mut self) -> Result<()> {
        if self.changes_since_checkpoint >= self.config.checkpoint_after_changes {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Saves the dense index, then the generation it reflects.
    fn checkpoint(&mut self) -> Result<()> {
        let dense_dir = self.dir.join("dense");
        let generation = self.store.generation()?;
        self.dense.save(&dense_dir)?;
        fsutil::write_atomic(&dense_dir.join(DENSE_STAMP_FILE), generation.to_string().as_bytes())?;
        self.changes_since_checkpoint = 0;
        Ok(())
    }
}

/// SHA-256 over the record, the chunk texts and positions, and the vectors.
pub(crate) fn content_hash(record: &DocumentRecord, chunks: &[EmbeddedChunk]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(serde_json::to_vec(record).unwrap_or_default());
    for (chunk, vector) in chunks {
        hasher.update((chunk.text.len() as u64).to_le_bytes());
        hasher.update(chunk.text.as_bytes());
        for n in [chunk.start, chunk.end, chunk.tokens] {
            hasher.update((n as u64).to_le_bytes());
        }
        hasher.update((vector.len() as u64).to_le_bytes());
        for x in vector {
            hasher.update(x.to_le_bytes());
        }
    }
    format!("{:x}", hasher.finalize())
}

/// Re-indexes every stored chunk into an emptied BM25 index.
#[tracing::instrument(level = "info", skip_all, fields(generation = generation))]
fn rebuild_sparse(store: &ChunkStore, sparse: &mut SparseIndex, generation: u64) -> Result<()> {
    sparse.delete_all()?;
    for entry in store.chunks_with_vectors() {
        let (chunk, _) = entry?;
        sparse.add(chunk.chunk_id, &chunk.chunk.text, &chunk.doc_id)?;
    }
    sparse.commit(generation)
}

/// The dense checkpoint in `dir`, if it reflects `generation`, has `chunk_count` vectors and `config`.
fn load_dense_checkpoint(dir: &Path, config: &DenseConfig, generation: u64, chunk_count: usize) -> Option<DenseIndex> {
    let stamp: u64 = std::fs::read_to_string(dir.join(DENSE_STAMP_FILE)).ok()?.trim().parse().ok()?;
    if stamp != generation || !DenseIndex::exists_in(dir) {
        return None;
    }
    match DenseIndex::load(dir) {
        Ok(dense) if dense.config() == config && dense.len() == chunk_count => Some(dense),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(error = %e, "dense checkpoint unreadable; rebuilding from the store");
            None
        }
    }
}

/// A dense index built from every vector in the store.
#[tracing::instrument(level = "info", skip_all)]
fn rebuild_dense(store: &ChunkStore, config: &DenseConfig) -> Result<DenseIndex> {
    let mut dense = DenseIndex::new(*config)?;
    let mut batch: Vec<(u64, Vec<f32>)> = Vec::with_capacity(REBUILD_BATCH_VECTORS);
    for entry in store.chunks_with_vectors() {
        let (chunk, vector) = entry?;
        batch.push((chunk.chunk_id, vector));
        if batch.len() == REBUILD_BATCH_VECTORS {
            dense.insert_batch(&batch)?;
            batch.clear();
        }
    }
    dense.insert_batch(&batch)?;
    Ok(dense)
}
