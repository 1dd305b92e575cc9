//! A knowledge base shard end to end: English and Chinese documents with known facts, searched by paraphrase
//! (dense), by exact terms (sparse) and both (hybrid); replace, delete, reopen, export/import, filters, and
//! malformed input.

mod support;

use std::path::Path;

use shoal_recall::{
    parse_document, DocumentRecord, Hit, IndexShard, MetadataFilter, RecallError, SearchMode, SearchQuery, ShardConfig,
};
use support::{embed, prepare, prepare_text, CORPUS, DIM};

/// A shard whose dense searches go through the HNSW graph even though the corpus is small.
fn config() -> ShardConfig {
    let mut config = ShardConfig::new(DIM);
    config.dense.exact_search_below = 0;
    config
}

fn open(dir: &Path) -> IndexShard {
    IndexShard::open(dir, config()).expect("open shard")
}

fn loaded(dir: &Path) -> IndexShard {
    let mut shard = open(dir);
    let batch = CORPUS.iter().map(prepare).collect();
    let outcomes = shard.upsert_documents(batch).expect("upsert");
    assert!(outcomes.iter().all(|o| !o.unchanged && o.chunks > 0));
    shard
}

fn query(mode: SearchMode, text: &str, k: usize) -> SearchQuery {
    SearchQuery { vector: Some(embed(text)), text: Some(text.to_string()), k, mode, filter: MetadataFilter::default() }
}

fn search(shard: &IndexShard, mode: SearchMode, text: &str) -> Vec<Hit> {
    shard.search(&query(mode, text, 5)).expect("search")
}

/// The first hit is from `doc_id` and holds `fact`.
fn assert_first(hits: &[Hit], doc_id: &str, fact: &str) {
    let first = hits.first().unwrap_or_else(|| panic!("no hits; expected {doc_id} with {fact:?}"));
    assert_eq!(first.doc_id, doc_id, "first hit {first:?}");
    assert!(first.text.contains(fact), "first hit {:?} lacks {fact:?}", first.text);
}

#[test]
fn a_shard_can_move_between_threads_and_be_shared() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<IndexShard>();
}

#[test]
fn paraphrased_questions_find_the_right_chunk_by_dense_search() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shard = loaded(dir.path());
    let cases = [
        ("When did they finish constructing that Paris landmark?", "eiffel", "1889"),
        ("How high is the landmark?", "eiffel", "330"),
        ("Which pigment in a plant takes in light?", "photosynthesis", "Chlorophyll"),
        ("熊猫平时吃什么食物？", "panda", "竹子"),
        ("great wall: how long is it in kilometres?", "greatwall", "两万"),
        ("长城最早是什么时候修的？始建年代", "greatwall", "春秋"),
    ];
    for (question, doc_id, fact) in cases {
        let hits = search(&shard, SearchMode::Dense, question);
        assert_first(&hits, doc_id, fact);
        assert_eq!(hits[0].dense_rank, Some(1));
        assert_eq!(hits[0].sparse_rank, None);
        assert!(hits[0].score > 0.0 && hits[0].score <= 1.0 + 1e-5);
    }
}

#[test]
fn exact_terms_find_the_right_chunk_by_bm25() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shard = loaded(dir.path());
    let cases = [
        ("chlorophyll", "photosynthesis", "Chlorophyll"),
        ("Champ de Mars", "eiffel", "Champ de Mars"),
        ("Gustave Eiffel company", "eiffel", "Gustave"),
        ("总长度", "greatwall", "总长度"),
        ("明朝重修", "greatwall", "明朝"),
        ("国宝", "panda", "国宝"),
        ("raft consensus", "shoal", "raft"),
        ("服务网格", "shoal", "服务网格"),
    ];
    for (text, doc_id, fact) in cases {
        let hits = shard
            .search(&SearchQuery {
                vector: None,
                text: Some(text.into()),
                k: 3,
                mode: SearchMode::Sparse,
                ..Default::default()
            })
            .expect("search");
        assert_first(&hits, doc_id, fact);
        assert_eq!(hits[0].sparse_rank, Some(1));
        assert_eq!(hits[0].title.as_deref(), CORPUS.iter().find(|f| f.doc_id == doc_id).map(|f| f.title));
    }
    // Words in no chunk find nothing.
    let none = shard
        .search(&SearchQuery {
            text: Some("zebra 斑马".into()), k: 3, mode: SearchMode::Sparse, ..Default::default()
        })
        .expect("search");
    assert!(none.is_empty());
}

#[test]
fn hybrid_search_fuses_both_lists() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shard = loaded(dir.path());
    let hits = search(&shard, SearchMode::Hybrid, "Eiffel tower height in metres");
    assert_first(&hits, "eiffel", "330");
    assert!(hits[0].dense_rank.is_some() && hits[0].sparse_rank.is_some());
    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
    let hits = search(&shard, SearchMode::Hybrid, "熊猫吃竹子");
    assert_first(&hits, "panda", "竹子");
    // Hybrid with only a text uses BM25 alone.
    let hits =
        shard.search(&SearchQuery { text: Some("chlorophyll".into()), k: 2, ..Default::default() }).expect("search");
    assert_first(&hits, "photosynthesis", "Chlorophyll");
}

#[test]
fn re_adding_a_document_replaces_it_and_identical_resends_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut shard = loaded(dir.path());
    let before = shard.stats().expect("stats");
    let eiffel = &CORPUS[0];
    let (record, chunks) = prepare(eiffel);
    let old_chunks = chunks.len();
    assert!(old_chunks >= 2);
    let again = shard.upsert_document(record, chunks).expect("resend");
    assert!(again.unchanged);
    assert_eq!(shard.stats().expect("stats").generation, before.generation);

    let (record, chunks) = prepare_text(eiffel, "The Eiffel Tower was repainted in 2024 with 60 tonnes of paint.");
    let outcome = shard.upsert_document(record, chunks).expect("replace");
    assert!(!outcome.unchanged);
    assert_eq!(outcome.chunks, 1);
    assert_eq!(outcome.replaced_chunks, old_chunks);
    let after = shard.stats().expect("stats");
    assert_eq!(after.documents, before.documents);
    assert_eq!(after.chunks, before.chunks - outcome.replaced_chunks + 1);
    assert_eq!(after.dense_vectors, after.chunks);
    assert_eq!(after.sparse_chunks, after.chunks as u64);

    let sparse = |text: &str| {
        shard
            .search(&SearchQuery { text: Some(text.into()), k: 5, mode: SearchMode::Sparse, ..Default::default() })
            .expect("search")
    };
    assert!(sparse("1889 Champ de Mars").is_empty(), "old chunks are gone from BM25");
    assert_first(&sparse("repainted"), "eiffel", "2024");
    let dense = search(&shard, SearchMode::Dense, "When did they finish constructing that Paris landmark?");
    assert!(dense.iter().all(|h| !h.text.contains("1889")), "old chunks are gone from the dense index");
}

#[test]
fn deleting_removes_from_both_indexes_and_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut shard = loaded(dir.path());
    let before = shard.stats().expect("stats");
    assert!(shard.delete_document("panda").expect("delete"));
    assert!(!shard.delete_document("panda").expect("delete twice"));
    assert!(shard.document("panda").is_none());
    for mode in [SearchMode::Dense, SearchMode::Sparse, SearchMode::Hybrid] {
        let hits = search(&shard, mode, "熊猫 竹子 四川");
        assert!(hits.iter().all(|h| h.doc_id != "panda"), "{mode:?}: {hits:?}");
    }
    let after = shard.stats().expect("stats");
    assert_eq!(after.documents, before.documents - 1);
    assert_eq!(after.dense_vectors, after.chunks);
    assert_eq!(after.sparse_chunks, after.chunks as u64);
    let exported: Vec<String> = shard.export().map(|d| d.expect("export").record.doc_id).collect();
    assert!(!exported.contains(&"panda".to_string()));
    // Also after a restart.
    drop(shard);
    let shard = open(dir.path());
    assert!(shard.document("panda").is_none());
    assert!(search(&shard, SearchMode::Sparse, "熊猫").iter().all(|h| h.doc_id != "panda"));
}

fn snapshot(shard: &IndexShard) -> Vec<Vec<(u64, String)>> {
    let questions = ["How high is the landmark?", "熊猫平时吃什么食物？", "raft consensus", "长城 总长度"];
    let mut out = Vec::new();
    for q in questions {
        for mode in [SearchMode::Dense, SearchMode::Sparse, SearchMode::Hybrid] {
            out.push(search(shard, mode, q).into_iter().map(|h| (h.chunk_id, h.doc_id)).collect());
        }
    }
    out
}

#[test]
fn reopening_after_a_drop_gives_the_same_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shard = loaded(dir.path());
    let expected = snapshot(&shard);
    let stats = shard.stats().expect("stats");
    // Dropped without flush: the dense index is rebuilt from the store.
    drop(shard);
    let mut shard = open(dir.path());
    assert_eq!(snapshot(&shard), expected);
    assert_eq!(shard.stats().expect("stats").chunks, stats.chunks);
    // Flushed: the checkpoint is used.
    shard.flush().expect("flush");
    drop(shard);
    assert!(dir.path().join("dense").join("dense.vectors").is_file());
    let shard = open(dir.path());
    assert_eq!(snapshot(&shard), expected);
    drop(shard);
    // A lost BM25 index and a corrupt checkpoint are rebuilt from the store.
    std::fs::remove_dir_all(dir.path().join("sparse")).expect("remove sparse");
    std::fs::write(dir.path().join("dense").join("dense.vectors"), b"not an index").expect("corrupt");
    let shard = open(dir.path());
    assert_eq!(snapshot(&shard), expected);
    // Another dimension is refused.
    drop(shard);
    let err = IndexShard::open(dir.path(), ShardConfig::new(DIM + 1)).err();
    assert!(matches!(err, Some(RecallError::InvalidConfig(_))), "{err:?}");
}

#[test]
fn a_lost_replica_is_rebuilt_from_an_export() {
    let a_dir = tempfile::tempdir().expect("tempdir");
    let b_dir = tempfile::tempdir().expect("tempdir");
    let a = loaded(a_dir.path());
    let mut b = open(b_dir.path());
    let documents: Vec<_> = a.export().collect::<Result<_, _>>().expect("export");
    assert_eq!(documents.len(), CORPUS.len());
    assert_eq!(b.import(documents.clone()).expect("import"), CORPUS.len());
    assert_eq!(snapshot(&b), snapshot(&a));
    assert_eq!(b.stats().expect("stats").chunks, a.stats().expect("stats").chunks);
    // Importing again is a no-op.
    assert_eq!(b.import(documents).expect("import"), 0);
}

#[test]
fn metadata_filters_restrict_hits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shard = loaded(dir.path());
    let with = |filter: MetadataFilter, mode| {
        let mut q = query(mode, "energy light 长城 熊猫 tower raft", 10);
        q.filter = filter;
        shard.search(&q).expect("search")
    };
    for mode in [SearchMode::Dense, SearchMode::Sparse, SearchMode::Hybrid] {
        let hits = with(MetadataFilter { tags_any: vec!["zh".into()], ..Default::default() }, mode);
        assert!(!hits.is_empty());
        assert!(hits.iter().all(|h| ["greatwall", "panda", "shoal"].contains(&h.doc_id.as_str())), "{hits:?}");
        let hits = with(MetadataFilter { source: Some("eiffel.md".into()), ..Default::default() }, mode);
        assert!(!hits.is_empty() && hits.iter().all(|h| h.doc_id == "eiffel"));
        let hits = with(MetadataFilter { doc_ids: vec!["panda".into(), "shoal".into()], ..Default::default() }, mode);
        assert!(!hits.is_empty() && hits.iter().all(|h| h.doc_id == "panda" || h.doc_id == "shoal"));
        let mut by_lang = MetadataFilter::default();
        by_lang.metadata.insert("lang".into(), "en".into());
        let hits = with(by_lang, mode);
        assert!(!hits.is_empty() && hits.iter().all(|h| h.metadata.get("lang").map(String::as_str) == Some("en")));
        let hits = with(MetadataFilter { tags_any: vec!["nothing".into()], ..Default::default() }, mode);
        assert!(hits.is_empty());
    }
}

#[test]
fn malformed_input_gives_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut shard = loaded(dir.path());
    let before = shard.stats().expect("stats");
    // Wrong vector dimension: refused before anything is written.
    let (record, mut chunks) = prepare(&CORPUS[1]);
    chunks[0].1.push(1.0);
    let err = shard.upsert_document(record, chunks).err();
    assert!(matches!(err, Some(RecallError::DimensionMismatch { expected: DIM, got }) if got == DIM + 1), "{err:?}");
    assert_eq!(shard.stats().expect("stats").generation, before.generation);
    // A zero vector, an empty id, no chunks.
    let (record, mut chunks) = prepare(&CORPUS[1]);
    chunks[0].1 = vec![0.0; DIM];
    assert!(matches!(shard.upsert_document(record, chunks), Err(RecallError::InvalidVector(_))));
    let (_, chunks) = prepare(&CORPUS[1]);
    let err = shard.upsert_document(DocumentRecord::new(""), chunks).err();
    assert!(err.as_ref().is_some_and(RecallError::is_caller_error), "{err:?}");
    assert!(shard.upsert_document(DocumentRecord::new("x"), vec![]).is_err());
    // A query vector of the wrong dimension, k out of range, a mode without its input.
    let mut q = query(SearchMode::Dense, "tower", 3);
    q.vector = Some(vec![1.0; 3]);
    assert!(matches!(shard.search(&q), Err(RecallError::DimensionMismatch { expected: DIM, got: 3 })));
    assert!(shard.search(&query(SearchMode::Hybrid, "tower", 0)).is_err());
    let err =
        shard.search(&SearchQuery { text: Some("x".into()), k: 3, mode: SearchMode::Dense, ..Default::default() });
    assert!(matches!(err, Err(RecallError::InvalidRequest(_))));
    // Uploads: a corrupt PDF, random bytes called a PDF, an unsupported type, an empty file, bad UTF-8.
    let mut pdf = support::pdf::minimal_pdf("T", &["Hello there."]);
    pdf.truncate(pdf.len() / 2);
    pdf.extend_from_slice(&[0xFF; 64]);
    let err = parse_document(&pdf, Some("application/pdf"), Some("broken.pdf")).err();
    assert!(matches!(err, Some(RecallError::Malformed { format: "PDF", .. })), "{err:?}");
    let err = parse_document(b"\x00\x01 definitely not a pdf", None, Some("x.pdf")).err();
    assert!(matches!(err, Some(RecallError::Malformed { format: "PDF", .. })), "{err:?}");
    let err = parse_document(b"PK\x03\x04", Some("application/vnd.ms-excel"), Some("sheet.xls")).err();
    assert!(
        matches!(&err, Some(RecallError::UnsupportedType { supported, .. }) if supported.contains("text/markdown"))
    );
    assert!(matches!(parse_document(b"   \n\n", Some("text/plain"), None), Err(RecallError::EmptyDocument)));
    assert!(matches!(parse_document(b"<p></p>", Some("text/html"), None), Err(RecallError::EmptyDocument)));
    let err = parse_document(b"caf\xe9", Some("text/markdown"), None).err();
    assert!(matches!(err, Some(RecallError::InvalidUtf8 { offset: 3, .. })), "{err:?}");
    assert!(err.as_ref().is_some_and(RecallError::is_caller_error));
}

#[test]
fn uploads_of_every_format_are_ingested_and_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut shard = open(dir.path());
    let uploads: Vec<(&str, &str, Vec<u8>)> = vec![
        (
            "guide.md",
            "text/markdown",
            b"# Operator guide\n\nThe **gateway** listens on port 8443 by default.\n\n- keys are hashed\n".to_vec(),
        ),
        (
            "faq.html",
            "text/html",
            "<html><head><title>常见问题</title><script>alert(1)</script></head><body><h1>常见问题</h1>\
             <p>知识库支持中文检索。</p><p>Quotas are enforced per API key.</p></body></html>"
                .as_bytes()
                .to_vec(),
        ),
        ("notes.txt", "text/plain", "Backups are taken every night at 02:00.\n".as_bytes().to_vec()),
        (
            "manual.pdf",
            "application/pdf",
            support::pdf::minimal_pdf("Shoal manual", &["Nodes report their GPU memory."]),
        ),
    ];
    for (name, content_type, bytes) in &uploads {
        let parsed = parse_document(bytes, Some(content_type), Some(name)).expect(name);
        let mut record = DocumentRecord::new(*name);
        record.title = parsed.title.clone().or_else(|| Some(name.to_string()));
        record.source = Some(name.to_string());
        let chunks = shoal_recall::chunk_text(&parsed.text, &support::chunk_config(), &support::count_tokens)
            .expect("chunk")
            .into_iter()
            .map(|c| {
                let v = embed(&c.text);
                (c, v)
            })
            .collect();
        shard.upsert_document(record, chunks).expect("upsert");
    }
    let find = |text: &str| {
        shard
            .search(&SearchQuery { text: Some(text.into()), k: 1, mode: SearchMode::Sparse, ..Default::default() })
            .expect("search")
    };
    let hit = &find("gateway port")[0];
    assert_eq!((hit.doc_id.as_str(), hit.title.as_deref()), ("guide.md", Some("Operator guide")));
    let hit = &find("中文检索")[0];
    assert_eq!((hit.doc_id.as_str(), hit.title.as_deref()), ("faq.html", Some("常见问题")));
    assert!(!hit.text.contains("alert"));
    assert_eq!(find("backups nightly")[0].doc_id, "notes.txt");
    let hit = &find("GPU memory")[0];
    assert_eq!((hit.doc_id.as_str(), hit.title.as_deref()), ("manual.pdf", Some("Shoal manual")));
}
