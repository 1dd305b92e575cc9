//! Knowledge bases in the replicated state: the catalog (each base, its embedding model,
//! backend and documents) and where the copies of each index shard live.

use std::collections::BTreeMap;

use rkyv::{Archive, Deserialize as RkyvDeserialize, Serialize as RkyvSerialize};
use serde::Serialize;
use shoal_protocol::ReplicaPhase;

/// Where a knowledge base keeps its index.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Serialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum IndexBackend {
    /// Index-shard actors on the nodes (dense HNSW + BM25), each shard on several nodes.
    Builtin,
    /// A PostgreSQL database with pgvector, for bases that outgrow the built-in index.
    Postgres { url: String },
}

/// One document of a knowledge base (its chunks live in the index shards).
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Serialize, Debug, Clone, PartialEq, Eq)]
pub struct KbDocument {
    pub id: String,
    pub title: String,
    pub source: String,
    pub tags: Vec<String>,
    /// SHA-256 fingerprint of the uploaded bytes and everything stored with them (title,
    /// source, tags, metadata, type): re-sending the same upload is a no-op.
    pub sha256: String,
    pub chunks: u32,
    pub bytes: u64,
    pub updated_at_ms: u64,
}

/// A knowledge base bound to an embedding model deployed on the mesh.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Serialize, Debug, Clone, PartialEq, Eq)]
pub struct KnowledgeBase {
    pub name: String,
    /// The deployment that embeds its chunks and queries.
    pub embedding: String,
    /// Vector size of that model.
    pub dimension: u32,
    pub backend: IndexBackend,
    /// Index shards (documents are spread over them by id).
    pub shards: u32,
    /// Copies of each shard, on distinct nodes.
    pub replicas: u32,
    /// Chunk size and overlap in tokens of the embedding model.
    pub chunk_tokens: u32,
    pub chunk_overlap: u32,
    pub description: String,
    pub created_at_ms: u64,
    pub documents: BTreeMap<String, KbDocument>,
}

impl KnowledgeBase {
    /// The shard that holds document `id` (stable: FNV-1a of the id).
    pub fn shard_of(&self, id: &str) -> u32 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in id.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        (h % u64::from(self.shards.max(1))) as u32
    }
}

/// One copy of a knowledge base's index shard on one node incarnation.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Serialize, Debug, Clone, PartialEq, Eq)]
pub struct IndexShardPlacement {
    pub id: String,
    pub kb: String,
    pub shard: u32,
    pub node: String,
    pub node_generation: u64,
    /// `None` until the node reports on it.
    pub phase: Option<ReplicaPhase>,
    pub message: String,
    pub placed_at_ms: u64,
}
