//! Quick decode timing: `cargo run --example perf -p shoal-engine [streams] [steps]`.

use std::time::Instant;

use shoal_engine::{ChatMessage, KvCache, Llm, LlmOptions, StageInput, StageOutput};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let streams: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1);
    let steps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(32);
    let dir =
        std::env::var("SHOAL_MODELS_DIR").unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../models").into());
    let path = std::path::Path::new(&dir).join("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    let requantize = std::env::var("NO_REQUANT").is_err();
    let llm = Llm::load(&path, &LlmOptions { requantize, ..Default::default() })?;
    let prompt = llm.encode(&llm.render_chat(&[ChatMessage::new("user", "Write a long story about a dragon.")])?)?;
    let mut caches: Vec<KvCache> = (0..streams).map(|_| llm.new_cache()).collect();
    let mut refs: Vec<&mut KvCache> = caches.iter_mut().collect();
    let t = Instant::now();
    llm.forward_stage(&mut refs, StageInput::Tokens(vec![prompt.clone(); streams]))?;
    println!("prefill {} x {} tokens: {:.1} ms", streams, prompt.len(), t.elapsed().as_secs_f64() * 1e3);
    let t = Instant::now();
    let mut feed = vec![vec![1u32]; streams];
    for _ in 0..steps {
        let out = llm.forward_stage(&mut refs, StageInput::Tokens(feed.clone()))?;
        if let StageOutput::Logits(l) = out {
            feed = l
                .iter()
                .map(|row| {
                    vec![
                        row.iter().enumerate().fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0
                            as u32,
                    ]
                })
                .collect();
        }
    }
    let s = t.elapsed().as_secs_f64();
    println!(
        "streams {streams}: {:.1} ms/step, {:.1} tok/s aggregate",
        s * 1e3 / steps as f64,
        (streams * steps) as f64 / s
    );
    Ok(())
}
