//! Engine throughput: single-stream decode, 8-stream batched decode, embeddings.
//! Needs the model files (./scripts/fetch-models.sh or SHOAL_MODELS_DIR).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use shoal_engine::{Batcher, ChatMessage, Embedder, Event, Llm, LlmOptions, SamplingParams};

const DECODE_TOKENS: usize = 64;

fn models_dir() -> PathBuf {
    match std::env::var_os("SHOAL_MODELS_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("models"),
    }
}

fn model_path(rel: &str) -> PathBuf {
    let p = models_dir().join(rel);
    assert!(p.exists(), "{} is missing: run ./scripts/fetch-models.sh", p.display());
    p
}

fn prompt(llm: &Llm, text: &str) -> Vec<u32> {
    let chat = llm.render_chat(&[ChatMessage::new("user", text)]).expect("chat");
    llm.encode(&chat).expect("encode")
}

/// Prefill (untimed) then decode until every sequence is done; returns (decode time, tokens decoded).
fn decode_run(llm: &Arc<Llm>, prompts: &[Vec<u32>]) -> (Duration, usize) {
    let mut b = Batcher::new(Arc::clone(llm), prompts.len());
    for (i, p) in prompts.iter().enumerate() {
        // Sampling keeps the text going (greedy may end early); the seed keeps runs comparable.
        let params = SamplingParams {
            max_tokens: DECODE_TOKENS + 1,
            temperature: 0.7,
            seed: Some(i as u64),
            ..Default::default()
        };
        b.admit(i as u64, p.clone(), vec![], params).expect("admit");
    }
    b.step().expect("prefill step");
    let start = Instant::now();
    let mut tokens = 0;
    while !b.is_idle() {
        tokens += b.step().expect("step").iter().filter(|e| matches!(e, Event::Token { .. })).count();
    }
    (start.elapsed(), tokens)
}

fn bench_decode(c: &mut Criterion) {
    let llm = Arc::new(
        Llm::load(&model_path("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"), &LlmOptions::default())
            .expect("load"),
    );
    let topics = ["a dragon", "the sea", "a robot", "the moon", "a city", "a forest", "a train", "a library"];
    let prompts: Vec<Vec<u32>> =
        topics.iter().map(|t| prompt(&llm, &format!("Write a long story about {t}."))).collect();

    for (name, streams) in [("decode_1_stream", 1usize), ("decode_8_streams", 8)] {
        let mut total = (Duration::ZERO, 0usize);
        let mut group = c.benchmark_group("llm");
        group.sample_size(10);
        group.bench_function(name, |bench| {
            bench.iter_custom(|iters| {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iters {
                    let (d, n) = decode_run(&llm, &prompts[..streams]);
                    elapsed += d;
                    total.0 += d;
                    total.1 += n;
                }
                elapsed
            })
        });
        group.finish();
        eprintln!(
            "SUMMARY {name}: {:.1} tok/s aggregate ({} tokens in {:.2}s)",
            total.1 as f64 / total.0.as_secs_f64(),
            total.1,
            total.0.as_secs_f64()
        );
    }
}

fn bench_embed(c: &mut Criterion) {
    let e = Embedder::load(&model_path("all-minilm-l6-v2")).expect("load embedder");
    let short: Vec<String> = (0..32).map(|i| format!("A short sentence number {i} about cats.")).collect();
    let long_text = "The quick brown fox jumps over the lazy dog while the rain falls softly on the roof of the old \
                     barn, and the farmer counts his sheep one by one before the evening bell rings across the quiet \
                     valley where the river bends toward the distant hills covered in pine trees and wild flowers.";
    let long: Vec<String> = (0..32).map(|i| format!("{long_text} {long_text} Item {i}.")).collect();
    let long_tokens = e.count_tokens(&long[0]).expect("count");
    for (name, texts) in [("embed_32_short", &short), ("embed_32_long", &long)] {
        let mut total = (Duration::ZERO, 0usize);
        let mut group = c.benchmark_group("embed");
        group.sample_size(10);
        group.bench_function(name, |bench| {
            bench.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    let out = e.embed(texts).expect("embed");
                    assert_eq!(out.vectors.len(), texts.len());
                }
                let d = start.elapsed();
                total.0 += d;
                total.1 += iters as usize * texts.len();
                d
            })
        });
        group.finish();
        eprintln!(
            "SUMMARY {name}: {:.1} sentences/s ({} tokens each for long: {long_tokens})",
            total.1 as f64 / total.0.as_secs_f64(),
            texts.len()
        );
    }
}

criterion_group!(benches, bench_decode, bench_embed);
criterion_main!(benches);
