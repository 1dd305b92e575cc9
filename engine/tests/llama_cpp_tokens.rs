//! Greedy output token for token against llama.cpp on the same GGUF files, loaded with
//! `LlmOptions::llama_cpp_numerics`: five chat prompts, up to 64 tokens each (the texts may part
//! only where llama.cpp's two best tokens were a near tie, see `NEAR_TIE`), for Qwen2.5-Coder-0.5B (fetched by default) and Qwen2.5-Coder-1.5B
//! (`./scripts/fetch-models.sh --all`; skipped with a note when absent). llama.cpp's tokens are
//! recorded in `fixtures/llama_cpp_tokens.json` by `scripts/compare/llamacpp_tokens.py`; when the
//! comparison venv exists (`scripts/compare/setup.sh`), that script also runs now and its
//! tokens are compared as well. Each model is loaded once.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use shoal_engine::{KvCache, Llm, LlmOptions, StageInput, StageOutput};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn models_dir() -> PathBuf {
    std::env::var_os("SHOAL_MODELS_DIR").map(PathBuf::from).unwrap_or_else(|| repo().join("models"))
}

/// Two logits closer than this are a near tie: the engines' remaining differences (their exp approximations,
/// summation orders) may order them either way. A difference where llama.cpp's choice was clearer fails.
const NEAR_TIE: f64 = 0.1;

fn argmax(row: &[f32]) -> u32 {
    row.iter().enumerate().fold((0, f32::MIN), |best, (i, &v)| if v > best.1 { (i, v) } else { best }).0 as u32
}

/// Greedy tokens after `prompt`: up to `limit`, or through the first end-of-generation token.
fn greedy(llm: &Llm, prompt: &[u32], limit: usize) -> Vec<u32> {
    let mut cache: KvCache = llm.new_cache();
    let mut input = prompt.to_vec();
    let mut out = Vec::new();
    while out.len() < limit {
        let step = llm.forward_stage(&mut [&mut cache], StageInput::Tokens(vec![input])).expect("forward");
        let StageOutput::Logits(rows) = step else { panic!("a whole model gives logits") };
        let next = argmax(&rows[0]);
        out.push(next);
        if llm.eos_tokens().contains(&next) {
            break;
        }
        input = vec![next];
    }
    out
}

/// Compares the engine with one model's recorded prompts; returns a description of every mismatch.
fn compare(llm: &Llm, name: &str, model: &Value, source: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for (i, p) in model["prompts"].as_array().expect("prompts").iter().enumerate() {
        let text = p["text"].as_str().expect("text");
        let ids = |v: &Value| -> Vec<u32> {
            v.as_array().expect("ids").iter().map(|t| t.as_u64().expect("id") as u32).collect()
        };
        let (want_prompt, want) = (ids(&p["prompt_tokens"]), ids(&p["tokens"]));
        let prompt = llm.encode(text).expect("encode");
        if prompt != want_prompt {
            problems.push(format!("{name} prompt {i}: tokenized {prompt:?}, {source} {want_prompt:?}"));
            continue;
        }
        let got = greedy(llm, &prompt, want.len().max(1));
        if got == want {
            eprintln!("{name} prompt {i}: {} tokens, the same as {source}", want.len());
            continue;
        }
        let at = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
        let gap = p["gaps"].as_array().and_then(|g| g.get(at)).and_then(Value::as_f64).unwrap_or(f64::INFINITY);
        let report = format!(
            "{name} prompt {i}: first difference at token {at} of {} (llama.cpp's top two logits {gap} apart): \
             shoal {:?} vs {source} {:?}\n  shoal: {:?}\n  {source}: {:?}",
            want.len(),
            got.get(at),
            want.get(at),
            llm.decode(&got).unwrap_or_default(),
            llm.decode(&want).unwrap_or_default()
        );
        eprintln!("{report}");
        if gap > NEAR_TIE {
            problems.push(report);
        }
    }
    problems
}

/// llama.cpp's tokens computed now, when the comparison venv has llama-cpp-python.
fn fresh_llama_cpp(ggufs: &[PathBuf]) -> Option<Value> {
    let python = repo().join(".bench-venv/bin/python");
    let has = python.exists()
        && Command::new(&python).args(["-c", "import llama_cpp"]).output().is_ok_and(|o| o.status.success());
    if !has {
        eprintln!("no comparison venv with llama-cpp-python: comparing with the recorded tokens only");
        return None;
    }
    let out = Command::new(&python)
        .arg(repo().join("scripts/compare/llamacpp_tokens.py"))
        .args(ggufs)
        .output()
        .expect("run llamacpp_tokens.py");
    assert!(out.status.success(), "llamacpp_tokens.py failed: {}", String::from_utf8_lossy(&out.stderr));
    Some(serde_json::from_slice(&out.stdout).expect("llamacpp_tokens.py prints JSON"))
}

fn gguf(name: &str) -> PathBuf {
    models_dir().join(name).join(format!("{name}-q4_k_m.gguf"))
}

#[test]
fn greedy_tokens_equal_llama_cpp_on_the_qwen_models() {
    let recorded: Value =
        serde_json::from_str(include_str!("fixtures/llama_cpp_tokens.json")).expect("fixture llama_cpp_tokens.json");
    let names = ["qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"];
    let present: Vec<&str> = names
        .into_iter()
        .filter(|n| {
            let here = gguf(n).exists();
            if !here && *n != names[0] {
                eprintln!("{} is missing (./scripts/fetch-models.sh --all): skipped", gguf(n).display());
            }
            here || *n == names[0]
        })
        .collect();
    let fresh = fresh_llama_cpp(&present.iter().map(|n| gguf(n)).collect::<Vec<_>>());
    let mut problems = Vec::new();
    for name in present {
        let path = gguf(name);
        assert!(Path::new(&path).exists(), "{} is missing: run ./scripts/fetch-models.sh", path.display());
        let llm = Llm::load(&path, &LlmOptions { llama_cpp_numerics: true, ..Default::default() }).expect("load");
        problems.extend(compare(&llm, name, &recorded["models"][name], "llama.cpp (recorded)"));
        if let Some(fresh) = &fresh {
            problems.extend(compare(&llm, name, &fresh["models"][name], "llama.cpp (now)"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
