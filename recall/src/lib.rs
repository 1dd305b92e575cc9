//! Shoal recall core: what a knowledge base does on one machine, with no networking.
//!
//! - [`parse`]: uploaded files (plain text, Markdown, HTML, PDF) to plain text with a title.
//! - [`chunk`]: text to chunks that respect paragraphs and sentences (English and Chinese), sized in tokens
//!   of the embedding model through a caller-provided counter, with overlap.
//! - [`dense`]: an HNSW index over L2-normalised embeddings (cosine similarity), with deletes, filters,
//!   exact search for comparison, and an atomic on-disk format.
//! - [`sparse`]: BM25 with tantivy and a jieba-based tokenizer for mixed English and Chinese text.
//! - [`fuse`]: reciprocal rank fusion and the search modes.
//! - [`postgres`]: [`PgIndex`], the same index for one knowledge base kept in PostgreSQL with pgvector (async).
//! - [`shard`]: [`IndexShard`], one directory holding a chunk store (sled) and both indexes, persisted and
//!   reopened consistently, with document upsert/delete, filtered search, and export/import between replicas.
//!
//! This crate owns the data structures and their files. It does not embed text (callers pass vectors
//! computed by the embedding model), open sockets (except [`PgIndex`]'s connection to its PostgreSQL server),
//! pick shards or replicas, or keep clocks: index-shard actors on nodes wrap an [`IndexShard`], the coordinator
//! keeps the catalog, and the gateway scatters searches and merges shard answers with
//! [`fuse::merge_shard_hits`].
//!
//! [`PgIndex`] is async (tokio-postgres) and needs a tokio runtime. All other operations are synchronous and
//! some are slow (opening a shard that must rebuild an index, compacting the dense graph, saving a checkpoint):
//! run them off async executors' threads.

pub mod chunk;
pub mod dense;
pub mod document;
mod error;
mod fsutil;
pub mod fuse;
pub mod parse;
pub mod postgres;
pub mod query;
pub mod shard;
pub mod sparse;
pub mod wire;

pub use chunk::{chunk_text, ChunkConfig, ChunkText};
pub use dense::{DenseConfig, DenseIndex};
pub use document::{chunk_id, DocumentRecord, EmbeddedChunk, ExportedDocument, StoredChunk};
pub use error::{RecallError, Result};
pub use fuse::{merge_shard_hits, reciprocal_rank_fusion, Fused, SearchMode, DEFAULT_RRF_K};
pub use parse::{parse_as, parse_document, DocumentFormat, ParsedDocument, SUPPORTED_TYPES};
pub use postgres::PgIndex;
pub use query::{Hit, MetadataFilter, SearchQuery, MAX_K};
pub use shard::{IndexShard, ShardConfig, ShardStats, UpsertOutcome};
pub use sparse::SparseIndex;
