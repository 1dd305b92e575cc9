//! `shoal bench chaos`: a 3-coordinator, 3-node cluster on loopback under a steady mixed load
//! (chat, embeddings, knowledge-base writes and searches, join-token writes) while random
//! processes are SIGKILLed and restarted or SIGSTOPped for a while. It reports failed
//! requests by kind, acknowledged writes that were lost, and the longest time each kind of
//! request went without a success.
//!
//! One fault at a time, so a quorum of coordinators and a live replica of every model stay
//! up: the goal is no failed read, no failed request with a live replica, and no lost
//! acknowledged write. Clients behave like a client behind a load balancer: a request that
//! fails on one gateway (connection refused, timeout, 5xx) is tried on the next one.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use clap::Args;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use super::bench::{free_port, Group};

const KEY: &str = "sk-bench-local-admin";
const EMBED: &str = "minilm";
const KB: &str = "chaos";
/// How long the load's client waits for one gateway before trying the next (a stopped
/// process accepts connections and answers nothing).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Args)]
pub struct ChaosBench {
    /// How long the load and the faults run, in seconds.
    #[arg(long, default_value_t = 120)]
    pub seconds: u64,
    /// Seconds between faults (one fault at a time).
    #[arg(long, default_value_t = 8)]
    pub every: u64,
    /// How long a stopped process stays stopped and a killed one stays down, in seconds.
    #[arg(long, default_value_t = 3)]
    pub outage: u64,
    /// Where all-minilm-l6-v2 is (./scripts/fetch-models.sh puts it there).
    #[arg(long, default_value = "./models")]
    pub models: PathBuf,
    /// Seed of the fault schedule (the same seed, the same faults in the same order).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Where the processes' data and logs go (a temporary directory by default).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// One request kind's tally.
#[derive(Debug, Default, Clone)]
struct Tally {
    ok: u64,
    failed: u64,
    /// Failure reasons and how often each was seen.
    reasons: BTreeMap<String, u64>,
    last_ok: Option<Instant>,
    /// The longest time without a success while the load ran.
    longest_gap: Duration,
}

impl Tally {
    fn record(&mut self, started: Instant, result: Result<(), String>) {
        match result {
            Ok(()) => {
                self.ok += 1;
                let since = self.last_ok.unwrap_or(started);
                self.longest_gap = self.longest_gap.max(since.elapsed());
                self.last_ok = Some(Instant::now());
            }
            Err(why) => {
                self.failed += 1;
                *self.reasons.entry(why).or_default() += 1;
            }
        }
    }
}

/// What the load acknowledged, to check afterwards.
#[derive(Default)]
struct Acked {
    tokens: Vec<String>,
    /// Document id and the unique word it holds.
    documents: Vec<(String, String)>,
}

struct Nodes {
    procs: Vec<Option<Child>>,
    args: Vec<Vec<String>>,
    dir: PathBuf,
}

impl Nodes {
    fn start(&mut self, i: usize) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.dir.join(format!("n{i}.log")))?;
        let child = Command::new(std::env::current_exe()?)
            .args(&self.args[i])
            .env("SHOAL_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .context("spawning a node")?;
        self.procs[i] = Some(child);
        Ok(())
    }
    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.procs[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for i in 0..self.procs.len() {
            self.kill(i);
        }
    }
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(timeout)).build().into()
}

/// Sends `body` (or a GET) to `path` on each gateway in turn from `first`, until one answers
/// something other than a connection failure or a 5xx. Returns the status and JSON answer.
fn call(gateways: &[SocketAddr], first: usize, path: &str, body: Option<&Value>) -> Result<(u16, Value), String> {
    let a = agent(CLIENT_TIMEOUT);
    let mut last = String::from("no gateway");
    for k in 0..gateways.len() {
        let url = format!("http://{}{path}", gateways[(first + k) % gateways.len()]);
        let auth = format!("Bearer {KEY}");
        let resp = match body {
            Some(b) => a.post(&url).header("Authorization", &auth).send_json(b),
            None => a.get(&url).header("Authorization", &auth).call(),
        };
        match resp {
            Err(e) => last = format!("transport: {}", e.to_string().chars().take(60).collect::<String>()),
            Ok(mut r) => {
                let status = r.status().as_u16();
                let v: Value = r.body_mut().read_json().unwrap_or(Value::Null);
                if status >= 500 {
                    last = format!("{status} {}", v["error"]["code"].as_str().unwrap_or(""));
                    continue;
                }
                return Ok((status, v));
            }
        }
    }
    Err(last)
}

fn ok_status((status, v): (u16, Value)) -> Result<Value, String> {
    if status == 200 || status == 201 {
        Ok(v)
    } else {
        Err(format!("{status} {}", v["error"]["code"].as_str().unwrap_or("")))
    }
}

fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if cond() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(anyhow!("{what} did not happen within {within:?}"))
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
}

pub fn run(a: ChaosBench) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = a.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let minilm = a.models.join("all-minilm-l6-v2");
    if !minilm.is_dir() {
        return Err(anyhow!("{} is missing: run ./scripts/fetch-models.sh", minilm.display()));
    }
    let minilm = minilm.canonicalize()?;
    println!("starting 3 coordinators and 3 nodes in {}", dir.display());
    let mut group = Group::new(&dir.join("coordinators"), 3, true)?;
    let leader = group.leader(Duration::from_secs(60))?;
    let gateways: Vec<SocketAddr> = (1..=3).map(|id| group.http(id)).collect();
    let token = ok_status(
        call(&gateways, leader as usize - 1, "/v1/tokens", Some(&json!({"ttl_seconds": 3600})))
            .map_err(|e| anyhow!("token: {e}"))?,
    )
    .map_err(|e| anyhow!("token: {e}"))?;
    let (token, ca_hash) =
        (token["token"].as_str().unwrap_or("").to_string(), token["ca_hash"].as_str().unwrap_or("").to_string());
    let mut nodes = Nodes { procs: vec![None, None, None], args: vec![], dir: dir.clone() };
    for i in 0..3 {
        let data = dir.join(format!("node{i}"));
        let listen = format!("127.0.0.1:{}", free_port());
        let coordinator = group.quic[i].to_string();
        let base = vec![
            "join".to_string(),
            coordinator,
            "--data-dir".into(),
            data.display().to_string(),
            "--listen".into(),
            listen,
        ];
        let mut first = base.clone();
        first.extend([
            "--name".into(),
            format!("n{i}"),
            "--token".into(),
            token.clone(),
            "--ca-hash".into(),
            ca_hash.clone(),
        ]);
        nodes.args.push(first);
        nodes.start(i)?;
        // Later starts rejoin with the node's identity from its data dir.
        nodes.args[i] = base;
    }
    let ready_nodes = || {
        call(&gateways, 0, "/v1/nodes", None)
            .ok()
            .and_then(|(_, v)| v["nodes"].as_array().map(|n| n.iter().filter(|n| n["state"] == "ready").count()))
            .unwrap_or(0)
    };
    wait_for("3 ready nodes", Duration::from_secs(60), || ready_nodes() == 3)?;
    for body in [
        json!({"name": "echo", "source": "builtin://echo", "replicas": 3}),
        json!({"name": EMBED, "source": format!("file://{}", minilm.display()), "replicas": 3}),
    ] {
        ok_status(call(&gateways, 0, "/v1/deployments", Some(&body)).map_err(|e| anyhow!("deploy: {e}"))?)
            .map_err(|e| anyhow!("deploy {}: {e}", body["name"]))?;
    }
    let ready = |name: &str| {
        call(&gateways, 0, "/v1/models", None)
            .ok()
            .and_then(|(_, v)| v["data"].as_array().cloned())
            .and_then(|d| d.into_iter().find(|m| m["id"] == name))
            .and_then(|m| m["ready_replicas"].as_u64())
            .unwrap_or(0)
    };
    wait_for("3 replicas of each model", Duration::from_secs(300), || ready("echo") == 3 && ready(EMBED) == 3)?;
    ok_status(
        call(&gateways, 0, "/v1/knowledge-bases", Some(&json!({"name": KB, "embedding_model": EMBED, "replicas": 2})))
            .map_err(|e| anyhow!("kb: {e}"))?,
    )
    .map_err(|e| anyhow!("kb: {e}"))?;
    wait_for("the knowledge base", Duration::from_secs(60), || {
        call(&gateways, 0, &format!("/v1/knowledge-bases/{KB}"), None).is_ok_and(|(_, v)| v["status"] == "ready")
    })?;

    // The load: one thread per kind, each request through a gateway chosen in turn.
    let stop = Arc::new(AtomicBool::new(false));
    let tallies: Arc<Mutex<BTreeMap<&'static str, Tally>>> = Arc::default();
    let acked: Arc<Mutex<Acked>> = Arc::default();
    type Op = fn(&[SocketAddr], usize, u64, &Mutex<Acked>) -> Result<(), String>;
    let ops: Vec<(&'static str, Op)> = vec![
        ("chat", op_chat),
        ("chat (2nd client)", op_chat),
        ("embeddings", op_embed),
        ("kb write", op_kb_write),
        ("kb search", op_kb_search),
        ("token write", op_token),
        ("cluster read", op_read),
    ];
    let started = Instant::now();
    let workers: Vec<_> = ops
        .into_iter()
        .enumerate()
        .map(|(w, (kind, op))| {
            let (stop, tallies, acked, gateways) = (stop.clone(), tallies.clone(), acked.clone(), gateways.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let result = op(&gateways, w + n as usize, n, &acked);
                    if let Ok(mut tallies) = tallies.lock() {
                        tallies.entry(kind).or_default().record(started, result);
                    }
                    n += 1;
                    // A steady load, not a flood: about 20 requests/s per kind.
                    std::thread::sleep(Duration::from_millis(50).saturating_sub(t.elapsed()));
                }
            })
        })
        .collect();

    // The faults, one at a time.
    let mut rng = StdRng::seed_from_u64(a.seed);
    let mut faults = Vec::new();
    let outage = Duration::from_secs(a.outage);
    while started.elapsed() < Duration::from_secs(a.seconds) {
        std::thread::sleep(Duration::from_secs(a.every));
        let target = rng.random_range(0..6usize);
        let kill = rng.random_bool(0.5);
        let what = if target < 3 { format!("coordinator {}", target + 1) } else { format!("node n{}", target - 3) };
        let t = started.elapsed().as_secs_f64();
        if target < 3 {
            let id = target as u64 + 1;
            let Some(pid) = group.pid(id) else { continue };
            if kill {
                group.kill(id);
                std::thread::sleep(outage);
                group.start(id)?;
            } else {
                signal(pid, "-STOP");
                std::thread::sleep(outage);
                signal(pid, "-CONT");
            }
        } else {
            let i = target - 3;
            let Some(pid) = nodes.procs[i].as_ref().map(Child::id) else { continue };
            if kill {
                nodes.kill(i);
                std::thread::sleep(outage);
                nodes.start(i)?;
            } else {
                signal(pid, "-STOP");
                std::thread::sleep(outage);
                signal(pid, "-CONT");
            }
        }
        let how = if kill { "SIGKILL, restarted" } else { "SIGSTOP, resumed" };
        faults.push(format!("{t:6.1}s  {what}: {how} after {} s", a.outage));
        // Let the cluster settle before the next fault (a restarted node reloads its models).
        let settle = Instant::now();
        let _ = wait_for("recovery", Duration::from_secs(60), || {
            ready_nodes() == 3 && ready("echo") == 3 && ready(EMBED) == 3
        });
        if settle.elapsed() > Duration::from_secs(30) {
            faults.push(format!("        (took {:.0} s to recover)", settle.elapsed().as_secs_f64()));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    let ran = started.elapsed();

    // Every acknowledged write must still be there.
    let acked = acked.lock().map_err(|_| anyhow!("poisoned"))?;
    let leader = group.leader(Duration::from_secs(60))?;
    let tokens =
        ok_status(call(&gateways, leader as usize - 1, "/v1/tokens?consistent=true", None).map_err(|e| anyhow!(e))?)
            .map_err(|e| anyhow!("listing tokens: {e}"))?;
    let listed: std::collections::HashSet<&str> =
        tokens["tokens"].as_array().into_iter().flatten().filter_map(|t| t["id"].as_str()).collect();
    let lost_tokens = acked.tokens.iter().filter(|t| !listed.contains(t.as_str())).count();
    let docs =
        ok_status(call(&gateways, 0, &format!("/v1/knowledge-bases/{KB}/documents"), None).map_err(|e| anyhow!(e))?)
            .map_err(|e| anyhow!("listing documents: {e}"))?;
    let in_catalog: std::collections::HashSet<&str> =
        docs["data"].as_array().into_iter().flatten().filter_map(|d| d["id"].as_str()).collect();
    let mut lost_docs = 0;
    let mut unfindable = 0;
    for (id, word) in &acked.documents {
        if !in_catalog.contains(id.as_str()) {
            lost_docs += 1;
            continue;
        }
        let q = json!({"query": word, "mode": "sparse", "top_k": 1});
        let found = call(&gateways, 0, &format!("/v1/knowledge-bases/{KB}/search"), Some(&q))
            .ok()
            .and_then(|r| ok_status(r).ok())
            .is_some_and(|v| v["data"][0]["document_id"] == id.as_str());
        if !found {
            unfindable += 1;
        }
    }

    println!();
    println!("shoal bench chaos: {:.0} s of mixed load, {} faults (seed {})", ran.as_secs_f64(), faults.len(), a.seed);
    for f in &faults {
        println!("  {f}");
    }
    println!();
    println!(
        "(longest gap: the longest time one client went without a success; a client waits {} s on a stopped gateway before trying the next)",
        CLIENT_TIMEOUT.as_secs()
    );
    println!("{:<20} {:>8} {:>8} {:>14}  failures", "kind", "ok", "failed", "longest gap");
    let tallies = tallies.lock().map_err(|_| anyhow!("poisoned"))?;
    for (kind, t) in tallies.iter() {
        let reasons: Vec<String> = t.reasons.iter().map(|(r, n)| format!("{n}× {r}")).collect();
        println!(
            "{kind:<20} {:>8} {:>8} {:>12.2} s  {}",
            t.ok,
            t.failed,
            t.longest_gap.as_secs_f64(),
            reasons.join("; ")
        );
    }
    println!();
    println!(
        "acknowledged writes: {} join tokens ({lost_tokens} lost), {} documents ({lost_docs} lost from the catalog, {unfindable} not found by search)",
        acked.tokens.len(),
        acked.documents.len()
    );
    println!("logs: {}", dir.display());
    if a.dir.is_none() {
        // Keep nothing behind; the figures are printed above.
        drop(nodes);
        drop(group);
    }
    Ok(())
}

fn op_chat(gw: &[SocketAddr], first: usize, n: u64, _: &Mutex<Acked>) -> Result<(), String> {
    let text = format!("chaos message {n}");
    let body = json!({"model": "echo", "messages": [{"role": "user", "content": text}]});
    let v = ok_status(call(gw, first, "/v1/chat/completions", Some(&body))?)?;
    if v["choices"][0]["message"]["content"] == text.as_str() {
        Ok(())
    } else {
        Err("wrong answer".into())
    }
}

fn op_embed(gw: &[SocketAddr], first: usize, n: u64, _: &Mutex<Acked>) -> Result<(), String> {
    let body = json!({"model": EMBED, "input": [format!("sentence {n}"), "the sea is calm", "a boat leaves"]});
    let v = ok_status(call(gw, first, "/v1/embeddings", Some(&body))?)?;
    if v["data"].as_array().map(Vec::len) == Some(3) {
        Ok(())
    } else {
        Err("wrong answer".into())
    }
}

/// A word no other document holds.
fn word(n: u64) -> String {
    let letters: String = format!("{n:06}").bytes().map(|d| (b'a' + (d - b'0')) as char).collect();
    format!("zq{letters}")
}

fn op_kb_write(gw: &[SocketAddr], first: usize, n: u64, acked: &Mutex<Acked>) -> Result<(), String> {
    let id = format!("doc-{n}");
    let w = word(n);
    let body = json!({"id": id, "text": format!("Document {n} mentions {w} once.")});
    ok_status(call(gw, first, &format!("/v1/knowledge-bases/{KB}/documents"), Some(&body))?)?;
    if let Ok(mut a) = acked.lock() {
        a.documents.push((id, w));
    }
    Ok(())
}

fn op_kb_search(gw: &[SocketAddr], first: usize, n: u64, acked: &Mutex<Acked>) -> Result<(), String> {
    let target = acked.lock().ok().and_then(|a| {
        let docs = &a.documents;
        (!docs.is_empty()).then(|| docs[n as usize % docs.len()].clone())
    });
    let query = target.as_ref().map_or("the sea".to_string(), |t| t.1.clone());
    // Sparse: a document's unique word ranks it first there, whatever the dense list says
    // (in hybrid, a made-up word's dense neighbours are noise and can tie with it).
    let body = json!({"query": query, "mode": if target.is_some() { "sparse" } else { "hybrid" }, "top_k": 3});
    let v = ok_status(call(gw, first, &format!("/v1/knowledge-bases/{KB}/search"), Some(&body))?)?;
    match target {
        Some((id, _)) if v["data"][0]["document_id"] != id.as_str() => Err("acknowledged document not found".into()),
        _ => Ok(()),
    }
}

fn op_token(gw: &[SocketAddr], first: usize, _: u64, acked: &Mutex<Acked>) -> Result<(), String> {
    let v = ok_status(call(gw, first, "/v1/tokens", Some(&json!({"ttl_seconds": 3600})))?)?;
    let id = v["token_id"].as_str().ok_or("no token id")?.to_string();
    if let Ok(mut a) = acked.lock() {
        a.tokens.push(id);
    }
    Ok(())
}

fn op_read(gw: &[SocketAddr], first: usize, _: u64, _: &Mutex<Acked>) -> Result<(), String> {
    let v = ok_status(call(gw, first, "/v1/nodes", None)?)?;
    if v["nodes"].as_array().is_some_and(|n| n.len() == 3) {
        Ok(())
    } else {
        Err("wrong answer".into())
    }
}
