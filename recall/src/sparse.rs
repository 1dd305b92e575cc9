//! BM25 over chunk texts with tantivy, in one directory (memory-mapped), with a tokenizer that handles English
//! and Chinese in the same field (jieba for Han runs, words for the rest; see `sparse/tokenizer.rs`).
//!
//! Changes are buffered until [`SparseIndex::commit`], which also records a caller-chosen stamp (the shard's
//! generation) in the commit, so that a reopened index can tell whether it saw every change of its shard.
//! Queries are plain text: it is analyzed like the chunks and its terms are OR-ed (BM25 sums the scores); no
//! query syntax is interpreted, so any user text is a valid query.

pub(crate) mod tokenizer;

use std::collections::BTreeSet;
use std::path::Path;

use tantivy::collector::TopDocs;
use tantivy::directory::MmapDirectory;
use tantivy::query::{BooleanQuery, ConstScoreQuery, Occur, Query, TermQuery, TermSetQuery};
use tantivy::schema::{
    Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, FAST, INDEXED, STORED, STRING,
};
use tantivy::{doc, Index, IndexReader, IndexWriter, ReloadPolicy, Term};

use crate::error::{RecallError, Result};

/// Memory the writer may buffer before it flushes a segment (tantivy's minimum is 15 MB per thread).
const WRITER_MEMORY_BYTES: usize = 32 * 1024 * 1024;

/// The schema's fields.
#[derive(Debug, Clone, Copy)]
struct Fields {
    chunk_id: Field,
    doc_id: Field,
    text: Field,
}

fn schema() -> (Schema, Fields) {
    let mut builder = Schema::builder();
    let chunk_id = builder.add_u64_field("chunk_id", INDEXED | STORED | FAST);
    let doc_id = builder.add_text_field("doc_id", STRING);
    let indexing = TextFieldIndexing::default()
        .set_tokenizer(tokenizer::TOKENIZER_NAME)
        .set_index_option(IndexRecordOption::WithFreqs);
    let text = builder.add_text_field("text", TextOptions::default().set_indexing_options(indexing));
    (builder.build(), Fields { chunk_id, doc_id, text })
}

/// The BM25 index.
pub struct SparseIndex {
    index: Index,
    writer: IndexWriter,
    reader: IndexReader,
    fields: Fields,
}

impl std::fmt::Debug for SparseIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SparseIndex").field("chunks", &self.len()).finish()
    }
}

impl SparseIndex {
    /// Opens the index in `dir`, creating the directory and an empty index if needed. Only one `SparseIndex`
    /// may have a directory open at a time (tantivy holds a writer lock).
    #[tracing::instrument(level = "info", skip_all, fields(dir = %dir.display()))]
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let directory = MmapDirectory::open(dir).map_err(|e| RecallError::Sparse(e.to_string()))?;
        let (schema, fields) = schema();
        let index = Index::open_or_create(directory, schema)?;
        index.tokenizers().register(tokenizer::TOKENIZER_NAME, tokenizer::analyzer());
        let writer = index.writer_with_num_threads(1, WRITER_MEMORY_BYTES)?;
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?;
        Ok(SparseIndex { index, writer, reader, fields })
    }

    /// Adds a chunk (visible after [`commit`](Self::commit)). Adding a chunk id twice indexes it twice: delete
    /// first (the shard replaces whole documents).
    pub fn add(&mut self, chunk_id: u64, text: &str, doc_id: &str) -> Result<()> {
        let f = self.fields;
        self.writer.add_document(doc!(f.chunk_id => chunk_id, f.doc_id => doc_id, f.text => text))?;
        Ok(())
    }

    /// Deletes every chunk of `doc_id` (at the next commit; chunks added after this call are kept).
    pub fn delete_doc(&mut self, doc_id: &str) -> Result<()> {
        self.writer.delete_term(Term::from_field_text(self.fields.doc_id, doc_id));
        Ok(())
    }

    /// Deletes one chunk (at the next commit).
    pub fn delete_chunk(&mut self, chunk_id: u64) -> Result<()> {
        self.writer.delete_term(Term::from_field_u64(self.fields.chunk_id, chunk_id));
        Ok(())
    }

    /// Deletes everything (at the next commit).
    pub fn delete_all(&mut self) -> Result<()> {
        self.writer.delete_all_documents()?;
        Ok(())
    }

    /// Makes the changes so far durable and visible, recording `stamp` with them.
    #[tracing::instrument(level = "debug", skip(self))]
    pub fn commit(&mut self, stamp: u64) -> Result<()> {
        let mut prepared = self.writer.prepare_commit()?;
        prepared.set_payload(&stamp.to_string());
        prepared.commit()?;
        self.reader.reload()?;
        Ok(())
    }

    /// The stamp of the last commit, if any commit carried one.
    pub fn committed_stamp(&self) -> Result<Option<u64>> {
        let metas = self.index.load_metas()?;
        Ok(metas.payload.as_deref().and_then(|p| p.parse().ok()))
    }

    /// Committed chunks.
    pub fn len(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// Whether no chunk is committed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `k` best chunks for `query` by BM25, best first (ties by chunk id).
    pub fn search(&self, query: &str, k: usize) -> Result<Vec<(u64, f32)>> {
        self.search_in_docs(query, k, None)
    }

    /// Like [`search`](Self::search), restricted to chunks of the given documents when `doc_ids` is given.
    #[tracing::instrument(level = "debug", skip_all, fields(k))]
    pub fn search_in_docs(&self, query: &str, k: usize, doc_ids: Option<&[&str]>) -> Result<Vec<(u64, f32)>> {
        let terms: BTreeSet<String> = tokenizer::terms(query).into_iter().collect();
        if terms.is_empty() || k == 0 || doc_ids.is_some_and(|ids| ids.is_empty()) {
            return Ok(Vec::new());
        }
        let clauses: Vec<(Occur, Box<dyn Query>)> = terms
            .iter()
            .map(|t| {
                let term = Term::from_field_text(self.fields.text, t);
                (Occur::Should, Box::new(TermQuery::new(term, IndexRecordOption::WithFreqs)) as Box<dyn Query>)
            })
            .collect();
        let text_query: Box<dyn Query> = Box::new(BooleanQuery::new(clauses));
        let query: Box<dyn Query> = match doc_ids {
            None => text_query,
            Some(ids) => {
                let allowed = TermSetQuery::new(ids.iter().map(|id| Term::from_field_text(self.fields.doc_id, id)));
                let allowed: Box<dyn Query> = Box::new(ConstScoreQuery::new(Box::new(allowed), 0.0));
                Box::new(BooleanQuery::new(vec![(Occur::Must, text_query), (Occur::Must, allowed)]))
            }
        };
        let searcher = self.reader.searcher();
        let top = searcher.search(&query, &TopDocs::with_limit(k).order_by_score())?;
        let mut hits = Vec::with_capacity(top.len());
        for (score, address) in top {
            let segment = searcher.segment_reader(address.segment_ord);
            let column = segment.fast_fields().u64("chunk_id")?;
            if let Some(chunk_id) = column.first(address.doc_id) {
                hits.push((chunk_id, score));
            }
        }
        hits.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        Ok(hits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn english_and_chinese_queries_find_their_chunk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut index = SparseIndex::open(dir.path()).expect("open");
        index.add(1, "The Eiffel Tower was completed in 1889 for the World's Fair.", "paris").expect("add");
        index.add(2, "Photosynthesis converts light energy into chemical energy.", "bio").expect("add");
        index.add(3, "长城是中国古代的军事防御工程，全长两万多公里。", "china").expect("add");
        index.add(4, "熊猫主要生活在四川的竹林里，以竹子为食。", "china").expect("add");
        index.commit(1).expect("commit");
        assert_eq!(index.len(), 4);
        assert_eq!(index.search("when was the eiffel tower completed?", 3).expect("search")[0].0, 1);
        assert_eq!(index.search("长城有多长", 3).expect("search")[0].0, 3);
        assert_eq!(index.search("熊猫吃什么", 3).expect("search")[0].0, 4);
        assert!(index.search("。？！", 3).expect("search").is_empty());
        assert!(index.search("zebra", 3).expect("search").is_empty());
        // Restricted to a document.
        let hits = index.search_in_docs("energy 竹子", 5, Some(&["china"])).expect("search");
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), [4]);
    }

    #[test]
    fn deletes_and_reopen_keep_the_committed_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut index = SparseIndex::open(dir.path()).expect("open");
            assert_eq!(index.committed_stamp().expect("stamp"), None);
            index.add(10, "alpha beta", "a").expect("add");
            index.add(11, "alpha gamma", "a").expect("add");
            index.add(12, "alpha delta", "b").expect("add");
            index.commit(7).expect("commit");
            index.delete_doc("a").expect("delete");
            index.add(13, "alpha epsilon", "a").expect("add");
            index.commit(8).expect("commit");
        }
        let index = SparseIndex::open(dir.path()).expect("reopen");
        assert_eq!(index.committed_stamp().expect("stamp"), Some(8));
        let mut ids: Vec<u64> = index.search("alpha", 10).expect("search").iter().map(|h| h.0).collect();
        ids.sort_unstable();
        assert_eq!(ids, [12, 13]);
    }
}
