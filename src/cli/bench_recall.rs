//! `shoal bench recall`: knowledge bases end to end through a real `shoal up` and one more
//! joined node: ingest throughput (chunks/s, parse → chunk and embed on the mesh → write both
//! shard copies → commit), then search QPS and p50/p99 latency for dense, sparse and hybrid
//! queries (query embedding included), for the built-in index and, in the same run, for the
//! same corpus in PostgreSQL + pgvector (the scale-out backend a user would otherwise pick).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Value};

use super::bench_serve::{agent, get, percentile, post, shoal_command, start_up};

const KEY: &str = "sk-bench-local-admin";
const EMBED: &str = "all-minilm-l6-v2";

#[derive(Debug, Args)]
pub struct RecallBench {
    /// The models folder (`./scripts/fetch-models.sh` fills it).
    #[arg(long, default_value = "./models")]
    pub models: PathBuf,
    /// Generated documents to ingest.
    #[arg(long, default_value_t = 200)]
    pub documents: usize,
    /// Searches per mode and backend.
    #[arg(long, default_value_t = 300)]
    pub searches: usize,
    /// Concurrent clients (for uploads and for searches).
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// A PostgreSQL server with pgvector to compare with (`postgres://…`); the comparison
    /// is skipped without one. `scripts/bench.sh` starts a throwaway one for the run.
    #[arg(long, env = "SHOAL_BENCH_POSTGRES", hide_env_values = true)]
    pub postgres: Option<String>,
}

const WORDS: &[&str] = &[
    "river", "harbor", "engine", "lantern", "granite", "meadow", "copper", "falcon", "orchard", "glacier", "signal",
    "timber", "canyon", "velvet", "compass", "thunder", "marble", "willow", "ember", "summit", "voyage", "cobalt",
    "prairie", "quartz", "saddle", "beacon", "harvest", "island", "juniper", "kettle",
];
const CITIES: &[&str] = &["Avel", "Brisk", "Corran", "Dunmoor", "Elswick", "Farrow", "Glenhaven", "Holt"];
const NAMES: &[&str] = &["Olsen", "Marlow", "Tanaka", "Okafor", "Lindqvist", "Moreau", "Castell", "Novak"];

/// A small deterministic generator, so every run ingests the same corpus.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> usize {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) as usize
    }
    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.next() % from.len()]
    }
}

/// Document `i`: a Markdown report of four paragraphs with one fact only it holds.
fn document(i: usize) -> String {
    let mut r = Lcg(i as u64 * 7919 + 17);
    let mut text = format!("# Field report {i}\n\n");
    text.push_str(&format!(
        "The archive code of field report {i} is {}-{}-{}. It was filed by inspector {} in the town of {}.\n\n",
        r.pick(WORDS),
        r.pick(WORDS),
        i,
        NAMES[i % NAMES.len()],
        CITIES[(i / NAMES.len()) % CITIES.len()]
    ));
    for _ in 0..3 {
        for _ in 0..4 {
            text.push_str(&format!(
                "The {} near the {} was inspected after the {} season, and the {} crew reported a {} {}. ",
                r.pick(WORDS),
                r.pick(WORDS),
                r.pick(WORDS),
                r.pick(WORDS),
                r.pick(WORDS),
                r.pick(WORDS)
            ));
        }
        text.push_str("\n\n");
    }
    text
}

/// The question whose answer only document `i` holds, phrased differently from it.
fn question(i: usize) -> String {
    format!(
        "Which inspector from {} submitted field report {i}, and under what archive code?",
        CITIES[(i / NAMES.len()) % CITIES.len()]
    )
}

struct Ingest {
    chunks: u64,
    secs: f64,
}

fn put(ag: &ureq::Agent, url: &str, body: &str) -> anyhow::Result<Value> {
    let mut resp = ag
        .put(url)
        .header("Authorization", &format!("Bearer {KEY}"))
        .header("Content-Type", "text/markdown")
        .send(body)?;
    let status = resp.status();
    let v: Value = resp.body_mut().read_json()?;
    if !status.is_success() {
        bail!("{url} answered {status}: {v}");
    }
    Ok(v)
}

/// Runs `job(i)` for i in 0..n on `concurrency` threads, each with its own HTTP agent; the
/// first error stops every thread.
fn fan_out(
    n: usize,
    concurrency: usize,
    job: impl Fn(&ureq::Agent, usize) -> anyhow::Result<()> + Sync,
) -> anyhow::Result<()> {
    let next = AtomicUsize::new(0);
    let failure = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..concurrency {
            s.spawn(|| {
                let ag = agent();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return;
                    }
                    if let Err(e) = job(&ag, i) {
                        next.store(n, Ordering::Relaxed);
                        *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                        return;
                    }
                }
            });
        }
    });
    match failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Uploads every document with `concurrency` clients; chunks indexed and wall time.
fn ingest(gw: &str, kb: &str, documents: usize, concurrency: usize) -> anyhow::Result<Ingest> {
    let chunks = AtomicUsize::new(0);
    let started = Instant::now();
    fan_out(documents, concurrency, |ag, i| {
        let url = format!("{gw}/v1/knowledge-bases/{kb}/documents/report-{i}.md");
        let v = put(ag, &url, &document(i))?;
        chunks.fetch_add(v["chunks"].as_u64().unwrap_or(0) as usize, Ordering::Relaxed);
        Ok(())
    })?;
    Ok(Ingest { chunks: chunks.into_inner() as u64, secs: started.elapsed().as_secs_f64() })
}

struct Searches {
    qps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Share of questions whose document came first.
    hit_at_1: f64,
}

fn searches(
    gw: &str,
    kb: &str,
    mode: &str,
    n: usize,
    documents: usize,
    concurrency: usize,
) -> anyhow::Result<Searches> {
    let hits = AtomicUsize::new(0);
    let latencies = Mutex::new(Vec::with_capacity(n));
    let started = Instant::now();
    fan_out(n, concurrency, |ag, q| {
        let i = (q * 7) % documents;
        let t = Instant::now();
        let body = json!({"query": question(i), "mode": mode, "top_k": 10});
        let v = post(ag, &format!("{gw}/v1/knowledge-bases/{kb}/search"), &body)?;
        latencies.lock().unwrap_or_else(|p| p.into_inner()).push(t.elapsed().as_secs_f64() * 1e3);
        if v["data"][0]["document_id"] == format!("report-{i}.md") {
            hits.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    })?;
    let secs = started.elapsed().as_secs_f64();
    let mut l = latencies.into_inner().unwrap_or_else(|p| p.into_inner());
    l.sort_by(f64::total_cmp);
    Ok(Searches {
        qps: n as f64 / secs,
        p50_ms: percentile(&l, 0.50),
        p99_ms: percentile(&l, 0.99),
        hit_at_1: hits.into_inner() as f64 / n as f64,
    })
}

fn wait_ready(gw: &str, kb: &str, copies: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ready = get(&format!("{gw}/v1/knowledge-bases/{kb}"))
            .map(|k| {
                k["shards"]
                    .as_array()
                    .map(|s| {
                        s.iter()
                            .flat_map(|s| s["copies"].as_array().cloned().unwrap_or_default())
                            .filter(|c| c["state"] == "ready")
                            .count()
                    })
                    .unwrap_or(0)
            })
            .unwrap_or(0);
        if ready >= copies {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the index-shard copies of {kb} were not ready within 120 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn run(a: RecallBench) -> anyhow::Result<()> {
    if !a.models.join(EMBED).is_dir() {
        bail!("{} is missing: run ./scripts/fetch-models.sh", a.models.join(EMBED).display());
    }
    eprintln!("starting shoal up and joining one more node…");
    let up = start_up(&a.models, None, &[])?;
    let gw = up.gateway.clone();
    let ag = agent();
    let t = post(&ag, &format!("{gw}/v1/tokens"), &json!({"ttl_seconds": 3600}))?;
    let (token, hash) = (t["token"].as_str().unwrap_or_default(), t["ca_hash"].as_str().unwrap_or_default());
    let listen = super::bench::free_port();
    let log = std::fs::File::create(up.dir.path().join("node1.log"))?;
    let mut node = shoal_command(None)?
        .args(["join", &up.quic, "--token", token, "--ca-hash", hash, "--data-dir"])
        .arg(up.dir.path().join("node1"))
        .args(["--listen", &format!("127.0.0.1:{listen}"), "--name", "bench-node-1"])
        .env("SHOAL_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .context("starting shoal join")?;
    let result = measure(&a, &gw, &ag);
    let _ = node.kill();
    let _ = node.wait();
    result
}

fn measure(a: &RecallBench, gw: &str, ag: &ureq::Agent) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(&format!("{gw}/v1/nodes"))
        .and_then(|v| v["nodes"].as_array().map(|n| n.iter().filter(|n| n["state"] == "ready").count()))
        .unwrap_or(0)
        < 2
    {
        if Instant::now() > deadline {
            bail!("the joined node did not become ready");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut backends = vec![("built-in (2 shards × 2 copies)", "bench-builtin", None)];
    match &a.postgres {
        Some(url) => backends.push(("PostgreSQL + pgvector", "bench-pg", Some(url.clone()))),
        None => eprintln!("no --postgres given (scripts/bench.sh starts one): the PostgreSQL comparison is skipped"),
    }
    let mut rows = Vec::new();
    for (label, kb, url) in &backends {
        let mut body = json!({"name": kb, "embedding_model": EMBED, "shards": 2, "replicas": 2, "chunk_tokens": 128});
        if let Some(u) = url {
            body["postgres_url"] = json!(u);
        }
        post(ag, &format!("{gw}/v1/knowledge-bases"), &body)?;
        if url.is_none() {
            wait_ready(gw, kb, 4)?;
        }
        eprintln!("{label}: ingesting {} documents…", a.documents);
        let ing = ingest(gw, kb, a.documents, a.concurrency)?;
        let mut modes = Vec::new();
        for mode in ["dense", "sparse", "hybrid"] {
            eprintln!("{label}: {} {mode} searches…", a.searches);
            modes.push((mode, searches(gw, kb, mode, a.searches, a.documents, a.concurrency)?));
        }
        rows.push((label.to_string(), ing, modes));
    }
    println!(
        "\nKnowledge bases through `shoal up` + 1 joined node on this machine ({} documents, all-MiniLM-L6-v2, \
         {} concurrent clients)\n",
        a.documents, a.concurrency
    );
    println!("{:<32} {:>10} {:>10} {:>12}", "BACKEND", "CHUNKS", "SECONDS", "CHUNKS/S");
    for (label, ing, _) in &rows {
        println!("{label:<32} {:>10} {:>10.1} {:>12.1}", ing.chunks, ing.secs, ing.chunks as f64 / ing.secs);
    }
    println!("\n{:<32} {:<8} {:>8} {:>9} {:>9} {:>8}", "BACKEND", "MODE", "QPS", "P50 MS", "P99 MS", "HIT@1");
    for (label, _, modes) in &rows {
        for (mode, s) in modes {
            println!(
                "{label:<32} {mode:<8} {:>8.1} {:>9.1} {:>9.1} {:>7.0}%",
                s.qps,
                s.p50_ms,
                s.p99_ms,
                s.hit_at_1 * 100.0
            );
        }
    }
    println!(
        "\nSearch latency is measured at the client and includes embedding the query on the mesh (dense, hybrid).\n\
         The dense index's recall@10 against exact search on 100,000 vectors: \
         cargo run --release -p shoal-recall --example recall_at_10"
    );
    Ok(())
}
