//! `shoal bench graphs`: what the task-graph engine costs per step when every step is
//! durable, measured through a real `shoal up` (no model needed) on a chain of 10 `template`
//! steps, beside LangGraph running the same chain with its SQLite checkpointer in the same
//! run (`scripts/compare/langgraph_chain.py` in the comparison venv).
//!
//! Also holds what the graph and SQL benchmarks share: a `shoal up` child process started
//! on a chosen models folder, and running a comparison script.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Value};

use super::bench_serve::{agent, get, percentile, post, shoal_command};

const KEY: &str = "sk-bench-local-admin";
/// Steps in the benchmark's chain.
const STEPS: usize = 10;
const GRAPH: &str = "chain10";

#[derive(Debug, Args)]
pub struct GraphsBench {
    /// Runs measured one after another (after the warm-up runs).
    #[arg(long, default_value_t = 200)]
    pub runs: usize,
    /// Warm-up runs before the sequential measurement.
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    /// Client threads starting runs at the same time for the concurrent measurement.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// How long the concurrent measurement lasts, in seconds.
    #[arg(long, default_value_t = 15.0)]
    pub seconds: f64,
    /// The virtual environment made by `scripts/compare/setup.sh`; LangGraph's column is
    /// empty without it.
    #[arg(long, default_value = "./.bench-venv")]
    pub venv: PathBuf,
}

/// A `shoal up` child process (coordinator + embedded gateway + node) on loopback ports,
/// with its data in a temporary folder; killed when dropped.
pub(super) struct Shoal {
    child: Child,
    pub(super) gateway: String,
    pub(super) dir: tempfile::TempDir,
}

impl Drop for Shoal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Shoal {
    /// Starts `shoal up --models MODELS` and waits until its gateway is ready and each of
    /// `models` has a ready replica.
    pub(super) fn start(models: &Path, wait_for: &[String]) -> anyhow::Result<Shoal> {
        let dir = tempfile::tempdir()?;
        let port = super::bench::free_port;
        let (http, quic, node) = (port(), port(), port());
        let log = std::fs::File::create(dir.path().join("up.log"))?;
        let child = shoal_command(None)?
            .args(["up", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--http", &format!("127.0.0.1:{http}"), "--listen", &format!("127.0.0.1:{quic}")])
            .args(["--node-listen", &format!("127.0.0.1:{node}"), "--models"])
            .arg(models)
            .env("SHOAL_API_KEY", KEY)
            .env("SHOAL_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .context("starting shoal up")?;
        let up = Shoal { child, gateway: format!("http://127.0.0.1:{http}"), dir };
        let ready =
            || agent().get(&format!("{}/readyz", up.gateway)).call().map(|r| r.status().is_success()).unwrap_or(false);
        let deadline = Instant::now() + Duration::from_secs(120);
        while !ready() {
            if Instant::now() > deadline {
                bail!("shoal up was not ready within 120 s (log: {})", up.log().display());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let deadline = Instant::now() + Duration::from_secs(600);
        for name in wait_for {
            loop {
                let replicas = get(&format!("{}/v1/deployments/{name}", up.gateway))
                    .and_then(|d| d["ready_replicas"].as_u64())
                    .unwrap_or(0);
                if replicas >= 1 {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("{name} had no ready replica within 600 s (log: {})", up.log().display());
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        }
        Ok(up)
    }

    pub(super) fn log(&self) -> PathBuf {
        self.dir.path().join("up.log")
    }

    /// `POST /v1/graphs` with a YAML definition.
    pub(super) fn apply_graph(&self, yaml: &str) -> anyhow::Result<Value> {
        let url = format!("{}/v1/graphs", self.gateway);
        let mut resp = agent()
            .post(&url)
            .header("Authorization", &format!("Bearer {KEY}"))
            .header("Content-Type", "application/yaml")
            .send(yaml)?;
        let status = resp.status();
        let v: Value = resp.body_mut().read_json()?;
        if !status.is_success() {
            bail!("applying a graph: {url} answered {status}: {v}");
        }
        Ok(v)
    }
}

/// Runs `scripts/compare/SCRIPT` with `python` (from the repository root); its last stdout
/// line that starts with `{` is its JSON answer. `Err` is one line saying why there is none.
pub(super) fn run_script(python: &Path, script: &str, args: &[String]) -> Result<Value, String> {
    if !python.exists() {
        return Err(format!("not run: no {} (./scripts/compare/setup.sh makes it)", python.display()));
    }
    let path = Path::new("scripts/compare").join(script);
    if !path.is_file() {
        return Err(format!("not run: no {} (run from the repository root)", path.display()));
    }
    let out = Command::new(python)
        .arg(&path)
        .args(args)
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("not run: {script}: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!("not run: {script} failed: {}", err.lines().last().unwrap_or("")));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().rev().find(|l| l.trim_start().starts_with('{')).unwrap_or("");
    serde_json::from_str(last).map_err(|e| format!("not run: {script} printed no JSON: {e}"))
}

/// The chain: s1 renders "x", each next step its predecessor's text plus "x".
fn chain_yaml() -> String {
    let mut y = format!(
        "name: {GRAPH}\ndescription: {STEPS} template steps in a chain, each reading the previous one \
         (shoal bench graphs).\nsteps:\n  - {{id: s1, kind: template, template: \"x\"}}\n"
    );
    for i in 2..=STEPS {
        y += &format!("  - {{id: s{i}, kind: template, template: \"{{{{ steps.s{}.text }}}}x\"}}\n", i - 1);
    }
    y += &format!("outputs:\n  text: ${{steps.s{STEPS}.text}}\n");
    y
}

/// What one run reported about itself.
struct RunTiming {
    /// Client-side: request sent to the run's JSON read.
    latency_ms: f64,
    /// Server-side: the run's created_at_ms to finished_at_ms.
    server_ms: f64,
    /// Between one step's finished_at_ms and the next one's started_at_ms (the commit of
    /// the first and the planning of the second), for each consecutive pair.
    gaps_ms: Vec<f64>,
}

/// Starts one run of the chain and waits for it; checks that it succeeded with the right output.
fn one_run(ag: &ureq::Agent, url: &str) -> anyhow::Result<RunTiming> {
    let t = Instant::now();
    let v = post(ag, url, &json!({"inputs": {}}))?;
    let latency_ms = t.elapsed().as_secs_f64() * 1e3;
    if v["status"] != "succeeded" {
        bail!("run {} ended {}: {}", v["id"], v["status"], v["error"]);
    }
    let want = "x".repeat(STEPS);
    if v["outputs"]["text"].as_str() != Some(want.as_str()) {
        bail!("run {} answered {} (expected {want})", v["id"], v["outputs"]);
    }
    let ms = |x: &Value, k: &str| x[k].as_u64().unwrap_or(0) as f64;
    let steps = v["steps"].as_array().cloned().unwrap_or_default();
    let gaps_ms = steps.windows(2).map(|w| ms(&w[1], "started_at_ms") - ms(&w[0], "finished_at_ms")).collect();
    Ok(RunTiming { latency_ms, server_ms: ms(&v, "finished_at_ms") - ms(&v, "created_at_ms"), gaps_ms })
}

struct Sequential {
    p50: f64,
    p99: f64,
    runs_per_s: f64,
    server_p50: f64,
    gap_p50: f64,
    gap_p99: f64,
}

fn sequential(gw: &str, warmup: usize, runs: usize) -> anyhow::Result<Sequential> {
    let ag = agent();
    let url = format!("{gw}/v1/graphs/{GRAPH}/runs");
    for _ in 0..warmup {
        one_run(&ag, &url)?;
    }
    let (mut lat, mut server, mut gaps) = (Vec::new(), Vec::new(), Vec::new());
    let t0 = Instant::now();
    for i in 0..runs {
        let r = one_run(&ag, &url)?;
        lat.push(r.latency_ms);
        server.push(r.server_ms);
        gaps.extend(r.gaps_ms);
        if (i + 1) % 50 == 0 {
            eprintln!("  {} of {runs} runs", i + 1);
        }
    }
    let runs_per_s = runs as f64 / t0.elapsed().as_secs_f64();
    for v in [&mut lat, &mut server, &mut gaps] {
        v.sort_by(f64::total_cmp);
    }
    Ok(Sequential {
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
        runs_per_s,
        server_p50: percentile(&server, 0.5),
        gap_p50: percentile(&gaps, 0.5),
        gap_p99: percentile(&gaps, 0.99),
    })
}

struct Concurrent {
    runs: usize,
    runs_per_s: f64,
    p50: f64,
    p99: f64,
}

/// `threads` clients start runs back to back for `seconds`.
fn concurrent(gw: &str, threads: usize, seconds: f64) -> anyhow::Result<Concurrent> {
    let url = format!("{gw}/v1/graphs/{GRAPH}/runs");
    let latencies = Mutex::new(Vec::new());
    let failure = Mutex::new(None);
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(seconds);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let ag = agent();
                while Instant::now() < deadline {
                    match one_run(&ag, &url) {
                        Ok(r) => latencies.lock().unwrap_or_else(|p| p.into_inner()).push(r.latency_ms),
                        Err(e) => {
                            *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                            return;
                        }
                    }
                }
            });
        }
    });
    let wall = t0.elapsed().as_secs_f64();
    if let Some(e) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    let mut l = latencies.into_inner().unwrap_or_else(|p| p.into_inner());
    l.sort_by(f64::total_cmp);
    Ok(Concurrent {
        runs: l.len(),
        runs_per_s: l.len() as f64 / wall,
        p50: percentile(&l, 0.5),
        p99: percentile(&l, 0.99),
    })
}

fn ratio(a: f64, b: Option<f64>) -> String {
    match b {
        Some(b) if b > 0.0 && a.is_finite() => format!("{:.2}×", a / b),
        _ => String::new(),
    }
}

pub fn run(a: GraphsBench) -> anyhow::Result<()> {
    if a.runs == 0 || a.concurrency == 0 {
        bail!("--runs and --concurrency must be at least 1");
    }
    eprintln!("starting shoal up on an empty models folder…");
    let empty = tempfile::tempdir()?;
    let up = Shoal::start(empty.path(), &[])?;
    let gw = up.gateway.clone();
    up.apply_graph(&chain_yaml())?;
    eprintln!("shoal: {} warm-up runs, then {} sequential runs of {GRAPH}…", a.warmup, a.runs);
    let seq = sequential(&gw, a.warmup, a.runs)?;
    eprintln!("shoal: {} clients for {:.0} s…", a.concurrency, a.seconds);
    let conc = concurrent(&gw, a.concurrency, a.seconds)?;
    drop(up); // free the cores for LangGraph

    // LangGraph twice: fdatasync at every commit (synchronous=FULL, Python's default), and
    // without (NORMAL: a commit survives the process, not necessarily the machine).
    let lg: Vec<(&str, Result<Value, String>)> = ["FULL", "NORMAL"]
        .into_iter()
        .map(|sync| {
            eprintln!("langgraph: the same chain with the SQLite checkpointer, synchronous={sync}…");
            let args = [
                ("--steps", STEPS.to_string()),
                ("--runs", a.runs.to_string()),
                ("--warmup", a.warmup.to_string()),
                ("--threads", a.concurrency.to_string()),
                ("--seconds", a.seconds.to_string()),
                ("--synchronous", sync.to_string()),
            ];
            let args: Vec<String> = args.into_iter().flat_map(|(k, v)| [k.to_string(), v]).collect();
            (sync, run_script(&a.venv.join("bin/python"), "langgraph_chain.py", &args))
        })
        .collect();
    let peer = |i: usize, path: &[&str]| -> Option<f64> {
        let v = lg[i].1.as_ref().ok()?;
        path.iter().try_fold(v, |v, k| v.get(*k)).and_then(Value::as_f64)
    };
    let steps = STEPS as f64;
    let measures: Vec<(String, f64, [&str; 2])> = vec![
        ("per step p50 ms (run p50 / 10)".into(), seq.p50 / steps, ["sequential", "step_p50_ms"]),
        ("per step p99 ms (run p99 / 10)".into(), seq.p99 / steps, ["sequential", "step_p99_ms"]),
        ("run p50 ms, sequential".into(), seq.p50, ["sequential", "p50_ms"]),
        ("run p99 ms, sequential".into(), seq.p99, ["sequential", "p99_ms"]),
        ("runs/s, sequential".into(), seq.runs_per_s, ["sequential", "runs_per_s"]),
        (format!("runs/s, {} concurrent clients", a.concurrency), conc.runs_per_s, ["concurrent", "runs_per_s"]),
        (format!("run p50 ms, {} concurrent clients", a.concurrency), conc.p50, ["concurrent", "p50_ms"]),
        (format!("run p99 ms, {} concurrent clients", a.concurrency), conc.p99, ["concurrent", "p99_ms"]),
    ];

    println!(
        "shoal bench graphs — one run, this machine ({} cores): a chain of {STEPS} `template` steps \
         (each renders the previous step's text + \"x\"), no model",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    println!(
        "Shoal: `shoal up` (1 coordinator, raft on its write-ahead log), POST /v1/graphs/{GRAPH}/runs waiting for the run; \
         every step's result is committed through raft and flushed to disk before the next step is planned \
         (one write and one fdatasync of the raft log per flush)."
    );
    for (sync, r) in &lg {
        match r {
            Ok(v) => println!(
                "LangGraph {} ({}, SqliteSaver on a file, journal {}, synchronous {}, durability=\"{}\": each step \
                 checkpointed and committed before the next; {} checkpoints per run); concurrent: {} Python \
                 threads, {} connection.",
                v["version"].as_str().unwrap_or("?"),
                v["checkpointer"].as_str().unwrap_or("?"),
                v["journal_mode"].as_str().unwrap_or("?"),
                v["synchronous"].as_str().unwrap_or("?"),
                v["durability"].as_str().unwrap_or("?"),
                v["checkpoints_per_run"],
                v["concurrent"]["threads"],
                v["concurrent"]["connections"].as_str().unwrap_or("?"),
            ),
            Err(e) => println!("LangGraph, synchronous={sync}: {e}"),
        }
    }
    println!(
        "{} sequential runs after {} warm-up runs; concurrent: {} clients starting runs back to back for {:.0} s.",
        a.runs, a.warmup, a.concurrency, a.seconds
    );
    println!();
    let w = measures.iter().map(|r| r.0.len()).max().unwrap_or(10);
    println!(
        "{:w$}  {:>9}  {:>10}  {:>8}  {:>10}  {:>8}",
        "MEASURE", "SHOAL", "LG FULL", "SHOAL/LG", "LG NORMAL", "SHOAL/LG"
    );
    for (what, shoal, path) in &measures {
        let cell = |i: usize| peer(i, path).map(|x| format!("{x:.2}")).unwrap_or_else(|| "—".into());
        println!(
            "{what:w$}  {shoal:>9.2}  {:>10}  {:>8}  {:>10}  {:>8}",
            cell(0),
            ratio(*shoal, peer(0, path)),
            cell(1),
            ratio(*shoal, peer(1, path))
        );
    }
    println!();
    println!(
        "Shoal, from the runs' own timestamps: server-side run time p50 {:.0} ms (created → finished); \
         gap between a step's end and the next step's start (its commit + planning) p50 {:.0} ms, p99 {:.0} ms \
         (millisecond resolution); {} runs in the concurrent phase.",
        seq.server_p50, seq.gap_p50, seq.gap_p99, conc.runs
    );
    println!(
        "(ratios are Shoal ÷ LangGraph: below 1 is better for latencies, above 1 for runs/s; LG FULL fdatasyncs \
         every commit, LG NORMAL none — Shoal fdatasyncs every flush of its raft log, as LG FULL does)"
    );
    for (sync, r) in &lg {
        if let Ok(v) = r {
            if v["concurrent"]["errors"].as_u64().unwrap_or(0) > 0 {
                println!(
                    "LangGraph ({sync}) concurrent errors: {} (first: {})",
                    v["concurrent"]["errors"],
                    v["concurrent"]["first_error"].as_str().unwrap_or("")
                );
            }
        }
    }
    Ok(())
}
