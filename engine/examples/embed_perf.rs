//! Times the embedding engine in-process: `cargo run --release --example embed_perf -p shoal-engine [DIR]`.
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "models/all-minilm-l6-v2".into());
    let e = shoal_engine::Embedder::load(std::path::Path::new(&dir))?;
    let short: Vec<String> = (0..32).map(|i| format!("Sentence number {i} is about a cat sitting on a mat.")).collect();
    let long: Vec<String> = (0..32)
        .map(|i| format!("{i} ") + &"The quick brown fox jumps over the lazy dog near the river bank. ".repeat(9))
        .collect();
    let one = vec!["A man is eating food.".to_string()];
    for (name, texts, reps) in [("one", &one, 50), ("short32", &short, 5), ("long32", &long, 2)] {
        e.embed(texts)?;
        let t = Instant::now();
        for _ in 0..reps {
            e.embed(texts)?;
        }
        let per = t.elapsed().as_secs_f64() / reps as f64;
        println!("{name}: {:.2} ms per call, {:.1} sentences/s", per * 1e3, texts.len() as f64 / per);
    }
    Ok(())
}
