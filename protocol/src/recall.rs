//! Wire types for knowledge bases: which index-shard copies a node holds, the documents and
//! chunks written to them, searches and their hits, and the stream that rebuilds a copy from
//! another one.
//!
//! The recall crate owns the in-memory forms; these are their rkyv twins (see
//! `shoal_recall::wire` for the conversions).

use rkyv::{Archive, Deserialize as RkyvDeserialize, Serialize as RkyvSerialize};

/// Most bytes of chunks one `IndexExported` frame carries (a frame holds whole documents;
/// an export is split over as many frames as it needs).
pub const INDEX_FRAME_BYTES: usize = 4 << 20;

/// Most bytes (text and vectors, see [`IndexChunk::wire_bytes`]) one document's chunks may
/// take, so that a document always fits in one frame.
pub const MAX_DOCUMENT_CHUNK_BYTES: usize = 6 << 20;

/// A copy of an index shard the coordinator wants a node to hold.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Debug, Clone, PartialEq, Eq)]
pub struct IndexShardAssignment {
    /// The copy's id (its placement in the replicated state).
    pub id: String,
    pub kb: String,
    pub shard: u32,
    /// Vector size of the knowledge base's embedding model.
    pub dimension: u32,
    /// Other copies of the same shard that are ready: where a new copy rebuilds from.
    pub peers: Vec<IndexPeer>,
}

/// Another ready copy of a shard.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Debug, Clone, PartialEq, Eq)]
pub struct IndexPeer {
    pub id: String,
    pub node: String,
    /// The node's data-plane QUIC address.
    pub address: String,
}

/// A key/value pair of document metadata.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Debug, Clone, PartialEq, Eq)]
pub struct MetaEntry {
    pub key: String,
    pub value: String,
}

/// A document's identity and metadata.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct IndexDocument {
    pub doc_id: String,
    pub title: Option<String>,
    pub source: Option<String>,
    pub tags: Vec<String>,
    pub metadata: Vec<MetaEntry>,
}

/// One chunk of a document with its embedding.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Debug, Clone, PartialEq)]
pub struct IndexChunk {
    pub text: String,
    /// Byte range in the document's text.
    pub start: u64,
    pub end: u64,
    /// Length in tokens of the embedding model.
    pub tokens: u32,
    pub vector: Vec<f32>,
}

impl IndexChunk {
    /// Roughly the bytes this chunk takes in a frame.
    pub fn wire_bytes(&self) -> usize {
        self.text.len() + self.vector.len() * 4 + 32
    }
}

/// How hits are ranked.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexMode {
    Dense,
    Sparse,
    Hybrid,
}

/// Which documents a search may return (every condition must hold).
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct IndexFilter {
    pub doc_ids: Vec<String>,
    pub source: Option<String>,
    /// At least one of these tags.
    pub tags_any: Vec<String>,
    pub metadata: Vec<MetaEntry>,
}

/// A search of one shard.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Debug, Clone, PartialEq)]
pub struct IndexQuery {
    pub vector: Option<Vec<f32>>,
    pub text: Option<String>,
    pub k: u32,
    pub mode: IndexMode,
    pub filter: IndexFilter,
}

/// One chunk a shard found.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Debug, Clone, PartialEq)]
pub struct IndexHit {
    pub chunk_id: u64,
    pub doc_id: String,
    pub title: Option<String>,
    pub source: Option<String>,
    pub metadata: Vec<MetaEntry>,
    pub position: u32,
    pub text: String,
    pub score: f32,
    pub dense_rank: Option<u32>,
    pub sparse_rank: Option<u32>,
    pub dense_score: Option<f32>,
    pub sparse_score: Option<f32>,
}

/// A whole document as a copy exports it to a new copy.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Debug, Clone, PartialEq)]
pub struct IndexExportedDocument {
    pub document: IndexDocument,
    pub chunks: Vec<IndexChunk>,
}
