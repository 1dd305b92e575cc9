//! Conversions between this crate's types and their wire twins in `shoal_protocol::recall`,
//! for the node's index-shard copies and the coordinator that scatters to them.

use std::collections::BTreeMap;

use shoal_protocol::recall as w;

use crate::chunk::ChunkText;
use crate::document::{DocumentRecord, EmbeddedChunk, ExportedDocument};
use crate::fuse::SearchMode;
use crate::query::{Hit, MetadataFilter, SearchQuery};

fn meta_to_wire(m: &BTreeMap<String, String>) -> Vec<w::MetaEntry> {
    m.iter().map(|(k, v)| w::MetaEntry { key: k.clone(), value: v.clone() }).collect()
}

fn meta_from_wire(m: Vec<w::MetaEntry>) -> BTreeMap<String, String> {
    m.into_iter().map(|e| (e.key, e.value)).collect()
}

/// A document record on the wire.
pub fn document_to_wire(d: &DocumentRecord) -> w::IndexDocument {
    w::IndexDocument {
        doc_id: d.doc_id.clone(),
        title: d.title.clone(),
        source: d.source.clone(),
        tags: d.tags.clone(),
        metadata: meta_to_wire(&d.metadata),
    }
}

/// A document record from the wire.
pub fn document_from_wire(d: w::IndexDocument) -> DocumentRecord {
    DocumentRecord {
        doc_id: d.doc_id,
        title: d.title,
        source: d.source,
        tags: d.tags,
        metadata: meta_from_wire(d.metadata),
    }
}

/// An embedded chunk on the wire.
pub fn chunk_to_wire((c, v): &EmbeddedChunk) -> w::IndexChunk {
    w::IndexChunk {
        text: c.text.clone(),
        start: c.start as u64,
        end: c.end as u64,
        tokens: c.tokens.min(u32::MAX as usize) as u32,
        vector: v.clone(),
    }
}

/// An embedded chunk from the wire.
pub fn chunk_from_wire(c: w::IndexChunk) -> EmbeddedChunk {
    (ChunkText { text: c.text, start: c.start as usize, end: c.end as usize, tokens: c.tokens as usize }, c.vector)
}

/// A search mode on the wire.
pub fn mode_to_wire(m: SearchMode) -> w::IndexMode {
    match m {
        SearchMode::Dense => w::IndexMode::Dense,
        SearchMode::Sparse => w::IndexMode::Sparse,
        SearchMode::Hybrid => w::IndexMode::Hybrid,
    }
}

/// A search mode from the wire.
pub fn mode_from_wire(m: w::IndexMode) -> SearchMode {
    match m {
        w::IndexMode::Dense => SearchMode::Dense,
        w::IndexMode::Sparse => SearchMode::Sparse,
        w::IndexMode::Hybrid => SearchMode::Hybrid,
    }
}

/// A search on the wire.
pub fn query_to_wire(q: &SearchQuery) -> w::IndexQuery {
    w::IndexQuery {
        vector: q.vector.clone(),
        text: q.text.clone(),
        k: q.k.min(u32::MAX as usize) as u32,
        mode: mode_to_wire(q.mode),
        filter: w::IndexFilter {
            doc_ids: q.filter.doc_ids.clone(),
            source: q.filter.source.clone(),
            tags_any: q.filter.tags_any.clone(),
            metadata: meta_to_wire(&q.filter.metadata),
        },
    }
}

/// A search from the wire.
pub fn query_from_wire(q: w::IndexQuery) -> SearchQuery {
    SearchQuery {
        vector: q.vector,
        text: q.text,
        k: q.k as usize,
        mode: mode_from_wire(q.mode),
        filter: MetadataFilter {
            doc_ids: q.filter.doc_ids,
            source: q.filter.source,
            tags_any: q.filter.tags_any,
            metadata: meta_from_wire(q.filter.metadata),
        },
    }
}

/// A hit on the wire.
pub fn hit_to_wire(h: &Hit) -> w::IndexHit {
    w::IndexHit {
        chunk_id: h.chunk_id,
        doc_id: h.doc_id.clone(),
        title: h.title.clone(),
        source: h.source.clone(),
        metadata: meta_to_wire(&h.metadata),
        position: h.position,
        text: h.text.clone(),
        score: h.score,
        dense_rank: h.dense_rank.map(|r| r as u32),
        sparse_rank: h.sparse_rank.map(|r| r as u32),
        dense_score: h.dense_score,
        sparse_score: h.sparse_score,
    }
}

/// A hit from the wire.
pub fn hit_from_wire(h: w::IndexHit) -> Hit {
    Hit {
        chunk_id: h.chunk_id,
        doc_id: h.doc_id,
        title: h.title,
        source: h.source,
        metadata: meta_from_wire(h.metadata),
        position: h.position,
        text: h.text,
        score: h.score,
        dense_rank: h.dense_rank.map(|r| r as usize),
        sparse_rank: h.sparse_rank.map(|r| r as usize),
        dense_score: h.dense_score,
        sparse_score: h.sparse_score,
    }
}

/// An exported document on the wire.
pub fn exported_to_wire(d: &ExportedDocument) -> w::IndexExportedDocument {
    w::IndexExportedDocument {
        document: document_to_wire(&d.record),
        chunks: d.chunks.iter().map(chunk_to_wire).collect(),
    }
}

/// An exported document from the wire.
pub fn exported_from_wire(d: w::IndexExportedDocument) -> ExportedDocument {
    ExportedDocument {
        record: document_from_wire(d.document),
        chunks: d.chunks.into_iter().map(chunk_from_wire).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_survives_the_round_trip() {
        let mut doc = DocumentRecord::new("d1");
        doc.title = Some("Title".into());
        doc.tags = vec!["a".into()];
        doc.metadata.insert("lang".into(), "zh".into());
        assert_eq!(document_from_wire(document_to_wire(&doc)), doc);
        let chunk: EmbeddedChunk = (ChunkText { text: "x".into(), start: 3, end: 4, tokens: 1 }, vec![0.5, -0.5]);
        assert_eq!(chunk_from_wire(chunk_to_wire(&chunk)), chunk);
        let mut q = SearchQuery { vector: Some(vec![1.0]), text: Some("q".into()), k: 7, ..Default::default() };
        q.filter.tags_any = vec!["a".into()];
        q.filter.metadata.insert("k".into(), "v".into());
        for mode in [SearchMode::Dense, SearchMode::Sparse, SearchMode::Hybrid] {
            q.mode = mode;
            assert_eq!(query_from_wire(query_to_wire(&q)), q);
        }
    }
}
