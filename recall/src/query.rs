//! What a search asks for and what it returns.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::document::DocumentRecord;
use crate::error::{RecallError, Result};
use crate::fuse::SearchMode;

/// Most hits one search may ask for.
pub const MAX_K: usize = 1000;

/// Restricts a search to documents whose metadata match. Every non-empty condition must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MetadataFilter {
    /// The document id is one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub doc_ids: Vec<String>,
    /// The document's source equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The document has at least one of these tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags_any: Vec<String>,
    /// The document's metadata has each of these key/value pairs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

impl MetadataFilter {
    /// Whether the filter admits everything.
    pub fn is_empty(&self) -> bool {
        self.doc_ids.is_empty() && self.source.is_none() && self.tags_any.is_empty() && self.metadata.is_empty()
    }

    /// Whether `doc` passes.
    pub fn matches(&self, doc: &DocumentRecord) -> bool {
        (self.doc_ids.is_empty() || self.doc_ids.contains(&doc.doc_id))
            && self.source.as_ref().is_none_or(|s| doc.source.as_ref() == Some(s))
            && (self.tags_any.is_empty() || self.tags_any.iter().any(|t| doc.tags.contains(t)))
            && self.metadata.iter().all(|(k, v)| doc.metadata.get(k) == Some(v))
    }
}

/// One search against a shard.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SearchQuery {
    /// The query's embedding (needed by dense search).
    #[serde(default)]
    pub vector: Option<Vec<f32>>,
    /// The query's text (needed by sparse search).
    #[serde(default)]
    pub text: Option<String>,
    /// How many hits to return, 1..=[`MAX_K`].
    pub k: usize,
    /// Which index to consult.
    #[serde(default)]
    pub mode: SearchMode,
    /// Which documents may answer.
    #[serde(default)]
    pub filter: MetadataFilter,
}

impl SearchQuery {
    /// Checks `k` and that the mode has what it needs: dense a vector, sparse a text, hybrid at least one.
    pub fn validate(&self) -> Result<()> {
        if self.k == 0 || self.k > MAX_K {
            return Err(RecallError::InvalidRequest(format!("k = {} is not in 1..={MAX_K}", self.k)));
        }
        let has_text = self.text.as_deref().is_some_and(|t| !t.trim().is_empty());
        match self.mode {
            SearchMode::Dense if self.vector.is_none() => {
                Err(RecallError::InvalidRequest("dense search needs a query vector".into()))
            }
            SearchMode::Sparse if !has_text => {
                Err(RecallError::InvalidRequest("sparse search needs a query text".into()))
            }
            SearchMode::Hybrid if self.vector.is_none() && !has_text => {
                Err(RecallError::InvalidRequest("hybrid search needs a query vector or text".into()))
            }
            _ => Ok(()),
        }
    }
}

/// One chunk that answered a search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    /// The chunk.
    pub chunk_id: u64,
    /// Its document.
    pub doc_id: String,
    /// The document's title.
    pub title: Option<String>,
    /// The document's source.
    pub source: Option<String>,
    /// The document's metadata.
    pub metadata: BTreeMap<String, String>,
    /// The chunk's index in its document.
    pub position: u32,
    /// The chunk's text.
    pub text: String,
    /// The score that ranked it: cosine similarity (dense), BM25 (sparse) or the RRF score (hybrid).
    pub score: f32,
    /// Its 1-based rank in the dense list, if it was in it.
    pub dense_rank: Option<usize>,
    /// Its 1-based rank in the BM25 list, if it was in it.
    pub sparse_rank: Option<usize>,
    /// Its cosine similarity to the query vector, if it was in the dense list.
    pub dense_score: Option<f32>,
    /// Its BM25 score, if it was in the BM25 list.
    pub sparse_score: Option<f32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_conditions_all_hold() {
        let mut doc = DocumentRecord::new("d1");
        doc.source = Some("handbook.pdf".into());
        doc.tags = vec!["hr".into(), "2024".into()];
        doc.metadata.insert("lang".into(), "zh".into());
        assert!(MetadataFilter::default().matches(&doc));
        let f = MetadataFilter {
            source: Some("handbook.pdf".into()),
            tags_any: vec!["x".into(), "hr".into()],
            ..Default::default()
        };
        assert!(f.matches(&doc));
        let f = MetadataFilter { tags_any: vec!["x".into()], ..Default::default() };
        assert!(!f.matches(&doc));
        let f = MetadataFilter { doc_ids: vec!["d2".into()], ..Default::default() };
        assert!(!f.matches(&doc));
        let mut f = MetadataFilter::default();
        f.metadata.insert("lang".into(), "en".into());
        assert!(!f.matches(&doc));
    }

    #[test]
    fn queries_need_what_their_mode_uses() {
        let q = |mode, vector: Option<Vec<f32>>, text: Option<&str>, k| SearchQuery {
            vector,
            text: text.map(String::from),
            k,
            mode,
            filter: MetadataFilter::default(),
        };
        assert!(q(SearchMode::Dense, None, Some("x"), 5).validate().is_err());
        assert!(q(SearchMode::Sparse, Some(vec![1.0]), Some("  "), 5).validate().is_err());
        assert!(q(SearchMode::Hybrid, None, None, 5).validate().is_err());
        assert!(q(SearchMode::Hybrid, None, Some("x"), 5).validate().is_ok());
        assert!(q(SearchMode::Dense, Some(vec![1.0]), None, 0).validate().is_err());
        assert!(q(SearchMode::Dense, Some(vec![1.0]), None, MAX_K + 1).validate().is_err());
        let parsed: SearchQuery = serde_json::from_str(r#"{"text":"hi","k":3}"#).expect("json");
        assert_eq!(parsed.mode, SearchMode::Hybrid);
    }
}
