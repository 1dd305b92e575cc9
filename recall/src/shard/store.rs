//! The shard's chunk store in sled: the source of truth the two indexes are derived from.
//!
//! Trees:
//!
//! - `docs`: doc id → JSON [`StoredDocument`] (record, chunk ids in position order, content hash);
//! - `chunks`: chunk id (big-endian) → JSON [`StoredChunk`];
//! - `vectors`: chunk id (big-endian) → the embedding as given, little-endian f32;
//! - `meta`: `generation` (u64, bumped by every document change), `dimension` (u64), `format` (u32).
//!
//! A document change (its record, old chunks removed, new chunks added, generation bumped) is one sled
//! transaction; [`ChunkStore::flush`] makes it durable.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::Transactional;

use crate::document::{DocumentRecord, StoredChunk};
use crate::error::{RecallError, Result};

const FORMAT_VERSION: u32 = 1;
const GENERATION: &[u8] = b"generation";
const DIMENSION: &[u8] = b"dimension";
const FORMAT: &[u8] = b"format";

/// A document as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredDocument {
    pub(crate) record: DocumentRecord,
    /// Chunk ids in position order.
    pub(crate) chunk_ids: Vec<u64>,
    /// Hex SHA-256 of the record, chunks and vectors as last upserted: an identical re-send is a no-op.
    pub(crate) content_hash: String,
}

/// The sled database and its trees.
pub(crate) struct ChunkStore {
    db: sled::Db,
    docs: sled::Tree,
    chunks: sled::Tree,
    vectors: sled::Tree,
    meta: sled::Tree,
}

impl ChunkStore {
    /// Opens (or creates) the store in `dir`; checks its format and records `dimension` on first use, refusing a
    /// store built for another dimension.
    pub(crate) fn open(dir: &Path, dimension: usize) -> Result<Self> {
        let db = sled::Config::new().path(dir).open()?;
        let store = ChunkStore {
            docs: db.open_tree("docs")?,
            chunks: db.open_tree("chunks")?,
            vectors: db.open_tree("vectors")?,
            meta: db.open_tree("meta")?,
            db,
        };
        match store.meta.get(FORMAT)? {
            None => {
                store.meta.insert(FORMAT, &FORMAT_VERSION.to_be_bytes()[..])?;
            }
            Some(v) if v.as_ref() == &FORMAT_VERSION.to_be_bytes()[..] => {}
            Some(_) => return Err(RecallError::corrupt(dir, "chunk store written by another format version")),
        }
        match store.meta.get(DIMENSION)? {
            None => {
                store.meta.insert(DIMENSION, &(dimension as u64).to_be_bytes()[..])?;
            }
            Some(v) => {
                let stored = read_u64(&v).ok_or_else(|| RecallError::corrupt(dir, "bad dimension entry"))? as usize;
                if stored != dimension {
                    return Err(RecallError::InvalidConfig(format!(
                        "the shard at {} holds {stored}-dimensional vectors, not {dimension}",
                        dir.display()
                    )));
                }
            }
        }
        store.flush()?;
        Ok(store)
    }

    /// Makes every change so far durable.
    pub(crate) fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    /// The number of document changes ever applied.
    pub(crate) fn generation(&self) -> Result<u64> {
        Ok(self.meta.get(GENERATION)?.as_deref().and_then(read_u64).unwrap_or(0))
    }

    /// Every stored document, in doc-id byte order.
    pub(crate) fn documents(&self) -> impl Iterator<Item = Result<StoredDocument>> + '_ {
        self.docs.iter().map(|entry| {
            let (_, value) = entry?;
            decode(&value)
        })
    }

    /// The stored chunk `chunk_id`.
    pub(crate) fn chunk(&self, chunk_id: u64) -> Result<Option<StoredChunk>> {
        self.chunks.get(chunk_id.to_be_bytes())?.map(|v| decode(&v)).transpose()
    }

    /// The vector of `chunk_id`.
    pub(crate) fn vector(&self, chunk_id: u64) -> Result<Option<Vec<f32>>> {
        Ok(self.vectors.get(chunk_id.to_be_bytes())?.map(|v| f32s_from_le(&v)))
    }

    /// Every stored chunk with its vector, in chunk-id order (for rebuilding the indexes).
    pub(crate) fn chunks_with_vectors(&self) -> impl Iterator<Item = Result<(StoredChunk, Vec<f32>)>> + '_ {
        self.chunks.iter().map(move |entry| {
            let (key, value) = entry?;
            let chunk: StoredChunk = decode(&value)?;
            let vector = self
                .vectors
                .get(&key)?
                .map(|v| f32s_from_le(&v))
                .ok_or_else(|| RecallError::Store(format!("chunk {} has no vector", chunk.chunk_id)))?;
            Ok((chunk, vector))
        })
    }

    /// Replaces document `doc` (removing the chunks `old_chunk_ids`) by its new chunks, in one transaction.
    /// Returns the new generation.
    pub(crate) fn put_document(
        &self,
        doc: &StoredDocument,
        old_chunk_ids: &[u64],
        chunks: &[(StoredChunk, Vec<f32>)],
    ) -> Result<u64> {
        let doc_value = encode(doc)?;
        let chunk_values: Vec<(u64, Vec<u8>, Vec<u8>)> =
            chunks.iter().map(|(c, v)| Ok((c.chunk_id, encode(c)?, f32s_to_le(v)))).collect::<Result<_>>()?;
        let doc_key = doc.record.doc_id.as_bytes();
        self.transact(|docs, chunks, vectors, meta| {
            for id in old_chunk_ids {
                chunks.remove(&id.to_be_bytes()[..])?;
                vectors.remove(&id.to_be_bytes()[..])?;
            }
            for (id, chunk, vector) in &chunk_values {
                chunks.insert(&id.to_be_bytes()[..], chunk.as_slice())?;
                vectors.insert(&id.to_be_bytes()[..], vector.as_slice())?;
            }
            docs.insert(doc_key, doc_value.as_slice())?;
            bump_generation(meta)
        })
    }

    /// Removes document `doc_id` and its chunks in one transaction; returns the new generation.
    pub(crate) fn remove_document(&self, doc: &StoredDocument) -> Result<u64> {
        let doc_key = doc.record.doc_id.as_bytes();
        self.transact(|docs, chunks, vectors, meta| {
            for id in &doc.chunk_ids {
                chunks.remove(&id.to_be_bytes()[..])?;
                vectors.remove(&id.to_be_bytes()[..])?;
            }
            docs.remove(doc_key)?;
            bump_generation(meta)
        })
    }

    fn transact(
        &self,
        work: impl Fn(
            &TransactionalTree,
            &TransactionalTree,
            &TransactionalTree,
            &TransactionalTree,
        ) -> std::result::Result<u64, ConflictableTransactionError<RecallError>>,
    ) -> Result<u64> {
        (&self.docs, &self.chunks, &self.vectors, &self.meta)
            .transaction(|(docs, chunks, vectors, meta)| work(docs, chunks, vectors, meta))
            .map_err(|e| match e {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => e.into(),
            })
    }
}

fn bump_generation(meta: &TransactionalTree) -> std::result::Result<u64, ConflictableTransactionError<RecallError>> {
    let current = meta.get(GENERATION)?.as_deref().and_then(read_u64).unwrap_or(0);
    let next = current + 1;
    meta.insert(GENERATION, &next.to_be_bytes()[..])?;
    Ok(next)
}

fn read_u64(bytes: &[u8]) -> Option<u64> {
    let array: [u8; 8] = bytes.try_into().ok()?;
    Some(u64::from_be_bytes(array))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| RecallError::Store(format!("encode: {e}")))
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| RecallError::Store(format!("decode: {e}")))
}

fn f32s_to_le(vector: &[f32]) -> Vec<u8> {
    vector.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f32s_from_le(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}
