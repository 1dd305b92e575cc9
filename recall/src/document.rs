//! Documents and chunks as a shard stores and exchanges them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::chunk::ChunkText;
use crate::error::{RecallError, Result};

/// Longest document id accepted, in bytes.
pub const MAX_DOC_ID_BYTES: usize = 512;

/// A document's identity and metadata (its chunks travel beside it).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DocumentRecord {
    /// The caller's id, unique within a knowledge base. Re-sending an id replaces the document.
    pub doc_id: String,
    /// Title shown with hits (the parsed title, or the file name).
    #[serde(default)]
    pub title: Option<String>,
    /// Where the document came from (a file name, a URL), for filters and citations.
    #[serde(default)]
    pub source: Option<String>,
    /// Labels for filters.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Free-form string metadata, returned with hits and usable in filters.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

impl DocumentRecord {
    /// A record with just an id.
    pub fn new(doc_id: impl Into<String>) -> Self {
        DocumentRecord { doc_id: doc_id.into(), ..Default::default() }
    }

    /// Checks the id is present, not too long and has no control characters.
    pub fn validate(&self) -> Result<()> {
        if self.doc_id.is_empty() {
            return Err(RecallError::InvalidRequest("doc_id is empty".into()));
        }
        if self.doc_id.len() > MAX_DOC_ID_BYTES {
            return Err(RecallError::InvalidRequest(format!(
                "doc_id is {} bytes, at most {MAX_DOC_ID_BYTES} are allowed",
                self.doc_id.len()
            )));
        }
        if self.doc_id.chars().any(char::is_control) {
            return Err(RecallError::InvalidRequest("doc_id holds control characters".into()));
        }
        Ok(())
    }
}

/// The id of the chunk at `position` of document `doc_id`: the first 8 bytes of a SHA-256 over both, so every
/// replica derives the same ids from the same document.
pub fn chunk_id(doc_id: &str, position: u32) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(b"shoal-recall/chunk/v1\0");
    hasher.update((doc_id.len() as u64).to_le_bytes());
    hasher.update(doc_id.as_bytes());
    hasher.update(position.to_le_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// A chunk with its embedding, as documents are upserted, exported and imported.
pub type EmbeddedChunk = (ChunkText, Vec<f32>);

/// A chunk as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredChunk {
    /// [`chunk_id`] of the document id and position.
    pub chunk_id: u64,
    /// The document it belongs to.
    pub doc_id: String,
    /// Its index among the document's chunks.
    pub position: u32,
    /// Its text and where it lies in the document.
    pub chunk: ChunkText,
}

/// A whole document with its chunks and their vectors: the unit of export and import between replicas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportedDocument {
    /// The document.
    pub record: DocumentRecord,
    /// Its chunks in position order, each with its embedding.
    pub chunks: Vec<EmbeddedChunk>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_ids_are_stable_and_distinct() {
        assert_eq!(chunk_id("doc-1", 0), chunk_id("doc-1", 0));
        assert_ne!(chunk_id("doc-1", 0), chunk_id("doc-1", 1));
        assert_ne!(chunk_id("doc-1", 0), chunk_id("doc-2", 0));
        // Length prefixing keeps ("ab", …) and ("a", …) apart even when bytes line up.
        assert_ne!(chunk_id("a\u{1}", 0), chunk_id("a", 1));
        // Pinned so that a change of derivation (which would orphan every stored chunk) is noticed.
        assert_eq!(chunk_id("doc-1", 0), 0xbd02_2c44_817c_af4c);
    }

    #[test]
    fn doc_ids_are_validated() {
        assert!(DocumentRecord::new("ok").validate().is_ok());
        assert!(DocumentRecord::new("").validate().is_err());
        assert!(DocumentRecord::new("a\nb").validate().is_err());
        assert!(DocumentRecord::new("x".repeat(MAX_DOC_ID_BYTES + 1)).validate().is_err());
    }
}
