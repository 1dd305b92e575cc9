//! Times the embedding engine in-process:
//! `cargo run --release --example embed_perf -p shoal-engine [DIR]` from the repository root (the sentences of
//! `shoal bench serve`, scripts/compare/sentences.json: 32 short and 32 long ones).
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "models/all-minilm-l6-v2".into());
    let e = shoal_engine::Embedder::load(std::path::Path::new(&dir))?;
    println!("dense layers on: {}", shoal_engine::encoder_path());
    let sentences: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("scripts/compare/sentences.json")?)?;
    let kind = |k: &str| -> Vec<String> {
        sentences[k].as_array().into_iter().flatten().filter_map(|s| s.as_str().map(String::from)).collect()
    };
    let (short, long) = (kind("short"), kind("long"));
    let one = vec!["A man is eating food.".to_string()];
    for (name, texts, reps) in [("one", &one, 200), ("short32", &short, 20), ("long32", &long, 5)] {
        e.embed(texts)?;
        let t = Instant::now();
        for _ in 0..reps {
            e.embed(texts)?;
        }
        let per = t.elapsed().as_secs_f64() / reps as f64;
        println!("{name}: {:.2} ms per call, {:.1} sentences/s", per * 1e3, texts.len() as f64 / per);
    }
    // One sentence at a time with pauses between, as a server gets them: p50 of each call.
    for pause_us in [500u64, 5000] {
        let mut times = Vec::new();
        for _ in 0..200 {
            std::thread::sleep(std::time::Duration::from_micros(pause_us));
            let t = Instant::now();
            e.embed(&one)?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        println!("one after {pause_us} µs pauses: p50 {:.2} ms", times[times.len() / 2]);
    }
    Ok(())
}
