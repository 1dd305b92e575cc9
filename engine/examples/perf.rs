//! Quick decode timing: `cargo run --release --example perf -p shoal-engine [streams] [steps]` (`PERF_MODEL` names
//! another GGUF file, `LLAMA_CPP_NUMERICS=1` loads it with `LlmOptions::llama_cpp_numerics`). Besides the mean it prints
//! the median and fastest step and the process CPU time per step, which are steadier on a busy machine.

use std::time::Instant;

use shoal_engine::{ChatMessage, KvCache, Llm, LlmOptions, StageInput, StageOutput};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let streams: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1);
    let steps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(32);
    let dir =
        std::env::var("SHOAL_MODELS_DIR").unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../models").into());
    // PERF_MODEL: another GGUF file, relative to the models folder or absolute.
    let model =
        std::env::var("PERF_MODEL").unwrap_or_else(|_| "smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf".into());
    let path = std::path::Path::new(&dir).join(model);
    let requantize = std::env::var("NO_REQUANT").is_err();
    let llama_cpp_numerics = std::env::var("LLAMA_CPP_NUMERICS").is_ok();
    let llm = Llm::load(&path, &LlmOptions { requantize, llama_cpp_numerics, ..Default::default() })?;
    let user = std::env::var("PERF_PROMPT").unwrap_or_else(|_| "Write a long story about a dragon.".into());
    let prompt = llm.encode(&llm.render_chat(&[ChatMessage::new("user", &user)])?)?;
    let mut caches: Vec<KvCache> = (0..streams).map(|_| llm.new_cache()).collect();
    let mut refs: Vec<&mut KvCache> = caches.iter_mut().collect();
    let t = Instant::now();
    let first = llm.forward_stage(&mut refs, StageInput::Tokens(vec![prompt.clone(); streams]))?;
    println!("prefill {} x {} tokens: {:.1} ms", streams, prompt.len(), t.elapsed().as_secs_f64() * 1e3);
    let t = Instant::now();
    let cpu0 = cpu_seconds();
    let mut step_ms = Vec::with_capacity(steps);
    let argmax = |row: &[f32]| {
        row.iter().enumerate().fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0 as u32
    };
    let mut feed = match first {
        StageOutput::Logits(l) => l.iter().map(|row| vec![argmax(row)]).collect(),
        StageOutput::Hidden(_) => vec![vec![1u32]; streams],
    };
    let mut text = vec![feed[0][0]];
    for _ in 0..steps {
        let ts = Instant::now();
        let out = llm.forward_stage(&mut refs, StageInput::Tokens(feed.clone()))?;
        if let StageOutput::Logits(l) = out {
            feed = l.iter().map(|row| vec![argmax(row)]).collect();
            text.push(feed[0][0]);
        }
        step_ms.push(ts.elapsed().as_secs_f64() * 1e3);
    }
    let s = t.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    step_ms.sort_by(f64::total_cmp);
    println!(
        "streams {streams}: {:.1} ms/step, {:.1} tok/s aggregate",
        s * 1e3 / steps as f64,
        (streams * steps) as f64 / s
    );
    let median = step_ms[steps / 2];
    println!(
        "streams {streams}: median {median:.1} ms/step ({:.1} tok/s), fastest {:.1} ms, cpu {:.1} ms/step",
        streams as f64 * 1e3 / median,
        step_ms[0],
        cpu * 1e3 / steps as f64
    );
    println!("greedy: {:?}", llm.decode(&text)?);
    Ok(())
}

/// User + system CPU time of this process so far (Linux; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15 (clock ticks of 10 ms).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}
