//! `shoal bench raft`: commit throughput and latency of a real raft group of coordinator
//! processes on loopback (3 and 5 voters, with and without proposal batching), and
//! leader-failover time after SIGKILL.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};

use super::bench_load::{self as load, pct};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

const KEY: &str = "sk-bench-local-admin";

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Raft commit throughput/latency and leader failover on loopback.
    Raft(RaftBench),
    /// Model serving through a real `shoal up`: decode tok/s (1 and N streams), embeddings/s and
    /// gateway overhead, beside llama.cpp, sentence-transformers and Ray Serve in the same run.
    Serve(super::bench_serve::ServeBench),
    /// Decode through a model split across 1, 2 and 3 nodes (pipeline stages) on this machine:
    /// tokens/s alone and concurrent, activation bytes and transport time per hop.
    Pipeline(super::bench_pipeline::PipelineBench),
    /// Knowledge bases: ingest chunks/s and search QPS, p50/p99 per mode (dense, sparse,
    /// hybrid) for the built-in index and PostgreSQL + pgvector in the same run.
    Recall(super::bench_recall::RecallBench),
    /// A 3-coordinator, 3-node cluster under mixed load while processes are killed,
    /// restarted and stopped: failed requests by kind, lost acknowledged writes, longest gaps.
    Chaos(super::bench_chaos::ChaosBench),
    /// One coordinator with thousands of simulated nodes over real QUIC: coordinator CPU and
    /// memory per node, heartbeat round trip p50/p99, dead-node detection time, and the
    /// scheduler's time to place 1,000 deployments.
    Scale(super::bench_scale::ScaleBench),
    /// Task graphs: per-step overhead of durable runs (a chain of 10 template steps, each
    /// committed through raft), sequential and concurrent, beside LangGraph with its SQLite
    /// checkpointer in the same run.
    Graphs(super::bench_graphs::GraphsBench),
    /// Text-to-SQL execution accuracy on the first questions of Spider's dev set through the
    /// product's qa-db prompts, per chat model, on generated SQLite files (several seeds).
    Sql(super::bench_sql::SqlBench),
    /// Tool calling: the decode cost of schema-constrained answers, and how many tool calls
    /// come out valid on generated prompts, beside llama.cpp's `llama-server --jinja` with the
    /// same GGUF file in the same run.
    Tools(super::bench_tools::ToolsBench),
}

#[derive(Debug, Args)]
pub struct RaftBench {
    /// Writes per configuration.
    #[arg(long, default_value_t = 2000)]
    pub writes: usize,
    /// Concurrent writers: keep-alive connections, each with one write in flight, driven by
    /// one event-loop thread (as wrk does), so that the load generator takes little of the
    /// CPU the servers share.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Leader kills for the failover measurement (0 to skip).
    #[arg(long, default_value_t = 20)]
    pub kills: usize,
    /// Only measure leader failover.
    #[arg(long)]
    pub failover_only: bool,
    /// Where the groups' data dirs and each member's log go, kept afterwards (by default a
    /// temporary directory, removed at the end). The members log at `warn`, or at the level
    /// in SHOAL_BENCH_MEMBER_LOG (e.g. `info,shoal_coordinator::raft=debug`).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// An etcd binary to run the same workload against in the same run (3 members on
    /// loopback, etcd's default timeouts). Skipped when it does not exist.
    #[arg(long, default_value = "/usr/bin/etcd")]
    pub etcd: PathBuf,
    /// Nodes in the state of the pre-filled rows (admitted, then lost).
    #[arg(long, default_value_t = 10_000)]
    pub prefill_nodes: usize,
    /// Knowledge-base documents in the state of the pre-filled rows.
    #[arg(long, default_value_t = 100_000)]
    pub prefill_documents: usize,
    /// Rounds of the head-to-head comparison with etcd (0 to skip): a Shoal row then an etcd
    /// row, for --concurrency writers and for one, alternated, both clusters running
    /// throughout, so that a machine whose speed drifts during the run weighs on both alike.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Writes in the pre-filled 32-writer row (default: --writes); when it differs, a row of
    /// as many writes from an empty state comes first, to compare with. A checkpoint waits for
    /// as many bytes of log as the state holds, so seeing one of a 100,000-document state takes
    /// about 150,000 writes.
    #[arg(long)]
    pub prefill_writes: Option<usize>,
}

pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Raft(a) => tokio::task::spawn_blocking(move || raft(a)).await?,
        BenchCommand::Serve(a) => tokio::task::spawn_blocking(move || super::bench_serve::run(a)).await?,
        BenchCommand::Pipeline(a) => tokio::task::spawn_blocking(move || super::bench_pipeline::run(a)).await?,
        BenchCommand::Recall(a) => tokio::task::spawn_blocking(move || super::bench_recall::run(a)).await?,
        BenchCommand::Chaos(a) => tokio::task::spawn_blocking(move || super::bench_chaos::run(a)).await?,
        BenchCommand::Scale(a) => super::bench_scale::run(a).await,
        BenchCommand::Graphs(a) => tokio::task::spawn_blocking(move || super::bench_graphs::run(a)).await?,
        BenchCommand::Sql(a) => tokio::task::spawn_blocking(move || super::bench_sql::run(a)).await?,
        BenchCommand::Tools(a) => tokio::task::spawn_blocking(move || super::bench_tools::run(a)).await?,
    }
}

/// The CPU's model name from /proc/cpuinfo (empty where there is none).
pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default()
}

pub fn free_port() -> u16 {
    loop {
        let Ok(udp) = UdpSocket::bind("127.0.0.1:0") else { continue };
        let Ok(a) = udp.local_addr() else { continue };
        if TcpListener::bind(("127.0.0.1", a.port())).is_ok() {
            return a.port();
        }
    }
}

/// A raft group of coordinator processes on loopback.
pub(super) struct Group {
    dir: PathBuf,
    config: PathBuf,
    members: Vec<(u64, SocketAddr, Option<Child>)>,
    /// Each member's QUIC address, by id order.
    pub(super) quic: Vec<SocketAddr>,
}

impl Group {
    pub(super) fn new(dir: &Path, voters: u64, batch: bool) -> anyhow::Result<Group> {
        Self::new_with(dir, voters, batch, None)
    }

    /// A group whose members all start from `state` (written into their fresh data dirs).
    pub(super) fn new_with(
        dir: &Path,
        voters: u64,
        batch: bool,
        state: Option<&shoal_coordinator::state::ClusterState>,
    ) -> anyhow::Result<Group> {
        std::fs::create_dir_all(dir)?;
        let mut cfg = String::new();
        let mut members = Vec::new();
        let mut quic_addrs = Vec::new();
        for id in 1..=voters {
            let (quic, http) = (free_port(), free_port());
            cfg +=
                &format!("[[coordinators]]\nid = {id}\nquic = \"127.0.0.1:{quic}\"\nhttp = \"127.0.0.1:{http}\"\n\n");
            members.push((id, SocketAddr::from(([127, 0, 0, 1], http)), None));
            quic_addrs.push(SocketAddr::from(([127, 0, 0, 1], quic)));
        }
        cfg += &format!("[pki]\nca_dir = \"ca\"\n\n[raft]\nbatch_proposals = {batch}\n");
        let config = dir.join("group.toml");
        std::fs::write(&config, cfg)?;
        if let Some(state) = state {
            let ids: Vec<u64> = (1..=voters).collect();
            for id in &ids {
                let raft = dir.join(format!("c{id}")).join("raft");
                shoal_coordinator::raft::wal_store::WalStorage::open_with(&raft, &ids, state.clone())
                    .with_context(|| format!("pre-filling {}", raft.display()))?;
            }
        }
        let mut g = Group { dir: dir.to_path_buf(), config, members, quic: quic_addrs };
        for id in 1..=voters {
            g.start(id)?;
        }
        Ok(g)
    }

    pub(super) fn start(&mut self, id: u64) -> anyhow::Result<()> {
        let exe = std::env::current_exe()?;
        // Appended to across restarts, so that a member's earlier runs can be read afterwards.
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join(format!("c{id}.log")))?;
        let child = Command::new(exe)
            .args(["coordinator", "--config"])
            .arg(&self.config)
            .args(["--id", &id.to_string(), "--data-dir"])
            .arg(self.dir.join(format!("c{id}")))
            .env("SHOAL_API_KEY", KEY)
            .env("SHOAL_LOG", std::env::var("SHOAL_BENCH_MEMBER_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .context("spawning a coordinator")?;
        if let Some(m) = self.members.iter_mut().find(|m| m.0 == id) {
            m.2 = Some(child);
        }
        Ok(())
    }

    pub(super) fn kill(&mut self, id: u64) {
        if let Some(m) = self.members.iter_mut().find(|m| m.0 == id) {
            if let Some(mut c) = m.2.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// Stops a member with SIGTERM (a planned stop) and waits for it to exit.
    pub(super) fn terminate(&mut self, id: u64) {
        if let Some(m) = self.members.iter_mut().find(|m| m.0 == id) {
            if let Some(mut c) = m.2.take() {
                let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
                let _ = c.wait();
            }
        }
    }

    /// The process id of a live member.
    pub(super) fn pid(&self, id: u64) -> Option<u32> {
        self.members.iter().find(|m| m.0 == id).and_then(|m| m.2.as_ref()).map(Child::id)
    }

    pub(super) fn http(&self, id: u64) -> SocketAddr {
        self.members.iter().find(|m| m.0 == id).map(|m| m.1).unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    pub(super) fn live(&self) -> Vec<u64> {
        self.members.iter().filter(|m| m.2.is_some()).map(|m| m.0).collect()
    }

    /// The leader all live members agree on, waiting up to `within`.
    pub(super) fn leader(&self, within: Duration) -> anyhow::Result<u64> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            // A 200 also says the member's view holds the admin key (the writes need it).
            // (Not GET /v1/tokens: after a long row it lists hundreds of thousands.)
            let views: Vec<u64> = self
                .live()
                .iter()
                .filter_map(|id| get(self.http(*id), "/v1/cluster"))
                .filter_map(|c| c["leader_id"].as_u64())
                .collect();
            if views.len() == self.live().len() && views.windows(2).all(|w| w[0] == w[1]) {
                return Ok(views[0]);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(anyhow!("no leader within {within:?} (logs in {})", self.dir.display()))
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        for id in self.live() {
            self.kill(id);
        }
    }
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(timeout)).build().into()
}

fn get(addr: SocketAddr, path: &str) -> Option<Value> {
    let mut r = agent(Duration::from_secs(2))
        .get(&format!("http://{addr}{path}"))
        .header("Authorization", &format!("Bearer {KEY}"))
        .call()
        .ok()?;
    if r.status() != 200 {
        return None;
    }
    r.body_mut().read_json().ok()
}

/// Checkpoints written so far by the group's live members, from their metrics.
fn checkpoints(g: &Group) -> u64 {
    let name = shoal_protocol::metric_names::RAFT_CHECKPOINTS;
    g.live()
        .into_iter()
        .filter_map(|id| {
            let mut r = agent(Duration::from_secs(2)).get(&format!("http://{}/metrics", g.http(id))).call().ok()?;
            let text = r.body_mut().read_to_string().ok()?;
            text.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
                .map(|v| v as u64)
        })
        .sum()
}

fn write(agent: &ureq::Agent, addr: SocketAddr) -> bool {
    agent
        .post(&format!("http://{addr}/v1/tokens"))
        .header("Authorization", &format!("Bearer {KEY}"))
        .send_json(json!({"ttl_seconds": 600}))
        .map(answered_ok)
        .unwrap_or(false)
}

/// Whether a write was acknowledged (200). Reads the whole body, as a client does, so that
/// the connection goes back to the agent's pool and the next write reuses it (an unread
/// body closes it: every write would pay for a new TCP connection on both sides).
fn answered_ok(mut r: ureq::http::Response<ureq::Body>) -> bool {
    let ok = r.status() == 200;
    ok && r.body_mut().read_to_vec().is_ok()
}

/// Writes made (and not counted) before each measured row, for Shoal and etcd alike, so that
/// a row measures a group that has settled rather than its first moments after start.
fn warm_up(writes: usize) -> usize {
    (writes / 10).min(200)
}

fn throughput(g: &Group, writes: usize, concurrency: usize) -> anyhow::Result<(f64, f64, f64)> {
    let leader = g.http(g.leader(Duration::from_secs(30))?);
    let request = load::post_json(leader, "/v1/tokens", Some(KEY), r#"{"ttl_seconds":600}"#);
    let again = request.clone();
    load::drive(leader, warm_up(writes), concurrency, move |_| again.clone())?;
    load::drive(leader, writes, concurrency, move |_| request.clone())
}

/// Writes round-robin to `targets` until one is acknowledged; returns how long it took.
/// Each attempt gives up after 250 ms (a write normally takes a few ms), so the figure has
/// that resolution and does not depend on how long either server holds a request during an
/// election.
fn time_to_ack(targets: &[SocketAddr], op: impl Fn(&ureq::Agent, SocketAddr) -> bool) -> anyhow::Result<Duration> {
    let quick = agent(Duration::from_millis(250));
    let t0 = Instant::now();
    let mut i = 0;
    while !op(&quick, targets[i % targets.len()]) {
        i += 1;
        if t0.elapsed() > Duration::from_secs(60) {
            return Err(anyhow!("no write acknowledged within 60 s of a leader kill"));
        }
    }
    Ok(t0.elapsed())
}

/// A 3-member etcd cluster on loopback with its default timeouts (100 ms heartbeat,
/// 1000 ms election), for comparison.
struct Etcd {
    dir: PathBuf,
    bin: PathBuf,
    members: Vec<(String, u16, u16, Option<Child>)>,
}

impl Etcd {
    fn start_all(bin: &Path, dir: &Path) -> anyhow::Result<Etcd> {
        let members: Vec<(String, u16, u16, Option<Child>)> =
            (1..=3).map(|i| (format!("e{i}"), free_port(), free_port(), None)).collect();
        std::fs::create_dir_all(dir)?;
        let mut e = Etcd { dir: dir.to_path_buf(), bin: bin.to_path_buf(), members };
        for i in 0..3 {
            e.start(i)?;
        }
        Ok(e)
    }

    fn start(&mut self, i: usize) -> anyhow::Result<()> {
        let cluster: Vec<String> =
            self.members.iter().map(|(n, _, peer, _)| format!("{n}=http://127.0.0.1:{peer}")).collect();
        let (name, client, peer) = (self.members[i].0.clone(), self.members[i].1, self.members[i].2);
        let data = self.dir.join(&name);
        let state = if data.exists() { "existing" } else { "new" };
        let log = std::fs::File::create(self.dir.join(format!("{name}.log")))?;
        let child = Command::new(&self.bin)
            .args(["--name", &name, "--data-dir"])
            .arg(&data)
            .args(["--listen-client-urls", &format!("http://127.0.0.1:{client}")])
            .args(["--advertise-client-urls", &format!("http://127.0.0.1:{client}")])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args(["--initial-cluster", &cluster.join(","), "--initial-cluster-state", state])
            .args(["--initial-cluster-token", "shoal-bench"])
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .context("spawning etcd")?;
        self.members[i].3 = Some(child);
        Ok(())
    }

    fn client(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.members[i].1))
    }

    fn live(&self) -> Vec<usize> {
        (0..self.members.len()).filter(|i| self.members[*i].3.is_some()).collect()
    }

    /// The index of the member that leads, as all live members report it.
    fn leader(&self, within: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let mut views = Vec::new();
            let mut me = Vec::new();
            for i in self.live() {
                let r = agent(Duration::from_secs(1))
                    .post(&format!("http://{}/v3/maintenance/status", self.client(i)))
                    .send_json(json!({}));
                if let Ok(mut r) = r {
                    if let Ok(v) = r.body_mut().read_json::<Value>() {
                        views.push(v["leader"].as_str().unwrap_or("").to_string());
                        me.push((i, v["header"]["member_id"].as_str().unwrap_or("").to_string()));
                    }
                }
            }
            if views.len() == self.live().len() && !views[0].is_empty() && views.windows(2).all(|w| w[0] == w[1]) {
                if let Some((i, _)) = me.iter().find(|(_, id)| *id == views[0]) {
                    return Ok(*i);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(anyhow!("etcd elected no leader within {within:?}"))
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].3.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// The body of an etcd put of key `bench/{n}` (etcd's HTTP gateway takes keys and values
/// in base64).
fn etcd_put_body(n: usize) -> String {
    let enc = |s: &str| base64_encode(s.as_bytes());
    json!({"key": enc(&format!("bench/{n}")), "value": enc("0123456789abcdef0123456789abcdef")}).to_string()
}

fn etcd_put_request(addr: SocketAddr, n: usize) -> Vec<u8> {
    load::post_json(addr, "/v3/kv/put", None, &etcd_put_body(n))
}

fn etcd_put(agent: &ureq::Agent, addr: SocketAddr, n: usize) -> bool {
    agent
        .post(&format!("http://{addr}/v3/kv/put"))
        .header("content-type", "application/json")
        .send(etcd_put_body(n))
        .map(answered_ok)
        .unwrap_or(false)
}

fn base64_encode(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn etcd_throughput(e: &Etcd, writes: usize, concurrency: usize) -> anyhow::Result<(f64, f64, f64)> {
    let leader = e.client(e.leader(Duration::from_secs(30))?);
    load::drive(leader, warm_up(writes), concurrency, move |n| etcd_put_request(leader, writes + n))?;
    load::drive(leader, writes, concurrency, move |n| etcd_put_request(leader, n))
}

fn etcd_failover(e: &mut Etcd, kills: usize) -> anyhow::Result<Vec<Duration>> {
    let mut times = Vec::new();
    for k in 0..kills {
        let leader = e.leader(Duration::from_secs(30))?;
        e.kill(leader);
        let survivors: Vec<SocketAddr> = e.live().iter().map(|i| e.client(*i)).collect();
        times.push(time_to_ack(&survivors, |a, addr| etcd_put(a, addr, 1_000_000 + k))?);
        e.start(leader)?;
        e.leader(Duration::from_secs(30))?;
    }
    times.sort();
    Ok(times)
}

fn raft(a: RaftBench) -> anyhow::Result<()> {
    let keep = a.dir.is_some();
    let base = match a.dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("shoal-bench-{}", std::process::id())),
    };
    let etcd_bin = a.etcd.exists().then(|| a.etcd.clone());
    if a.failover_only {
        return failover(&base, a.kills, etcd_bin.map(|b| Etcd::start_all(&b, &base.join("etcd"))).transpose()?, keep);
    }
    println!("raft commits through the gateway (POST /v1/tokens → leader → raft → fsync on a quorum),");
    println!("{} writes per row, {} concurrent writers, coordinators on loopback:", a.writes, a.concurrency);
    println!("{:<8} {:<10} {:>10} {:>10} {:>10}", "voters", "batching", "writes/s", "p50 ms", "p99 ms");
    for voters in [3u64, 5] {
        for batch in [true, false] {
            let g = Group::new(&base.join(format!("v{voters}-{batch}")), voters, batch)?;
            let (rate, p50, p99) = throughput(&g, a.writes, a.concurrency)?;
            println!("{voters:<8} {:<10} {rate:>10.0} {p50:>10.2} {p99:>10.2}", if batch { "on" } else { "off" });
        }
    }
    // Single-writer latency: one write at a time.
    let g = Group::new(&base.join("latency"), 3, true)?;
    let (rate, p50, p99) = throughput(&g, a.writes / 4, 1)?;
    println!("{:<8} {:<10} {rate:>10.0} {p50:>10.2} {p99:>10.2}   (one writer)", 3, "on");
    drop(g);
    let prefill_writes = a.prefill_writes.unwrap_or(a.writes);
    if prefill_writes != a.writes {
        // A row as long as the pre-filled one, from an empty state, to compare like with like
        // (a long row also grows the state by its own writes and rolls log segments).
        let g = Group::new(&base.join("long-empty"), 3, true)?;
        let before = checkpoints(&g);
        let (rate, p50, p99) = throughput(&g, prefill_writes, a.concurrency)?;
        let written = checkpoints(&g).saturating_sub(before);
        println!(
            "{:<8} {:<10} {rate:>10.0} {p50:>10.2} {p99:>10.2}   (empty state; {prefill_writes} writes, {written} checkpoints written by the members)",
            3, "on"
        );
        drop(g);
    }
    // The same with a large state: a commit must not cost more as the state grows.
    let built = Instant::now();
    let state = shoal_coordinator::state::synthetic_state(a.prefill_nodes, a.prefill_documents);
    let label = format!("state pre-filled: {} nodes, {} documents", a.prefill_nodes, a.prefill_documents);
    eprintln!("({label}: built in {:.1} s)", built.elapsed().as_secs_f64());
    let g = Group::new_with(&base.join("prefilled"), 3, true, Some(&state))?;
    let checkpoints_before = checkpoints(&g);
    let (rate, p50, p99) = throughput(&g, prefill_writes, a.concurrency)?;
    let written = checkpoints(&g).saturating_sub(checkpoints_before);
    println!(
        "{:<8} {:<10} {rate:>10.0} {p50:>10.2} {p99:>10.2}   ({label}; {prefill_writes} writes, {written} checkpoints written by the members)",
        3, "on"
    );
    let (rate, p50, p99) = throughput(&g, a.writes / 4, 1)?;
    println!("{:<8} {:<10} {rate:>10.0} {p50:>10.2} {p99:>10.2}   (one writer, {label})", 3, "on");
    drop(g);
    let etcd = if a.etcd.exists() { Some(Etcd::start_all(&a.etcd, &base.join("etcd"))?) } else { None };
    match &etcd {
        Some(e) => {
            let (rate, p50, p99) = etcd_throughput(e, a.writes, a.concurrency)?;
            println!(
                "{:<8} {:<10} {rate:>10.0} {p50:>10.2} {p99:>10.2}   (etcd, PUT /v3/kv/put via its HTTP gateway)",
                3, "etcd"
            );
            let (rate, p50, p99) = etcd_throughput(e, a.writes / 4, 1)?;
            println!("{:<8} {:<10} {rate:>10.0} {p50:>10.2} {p99:>10.2}   (etcd, one writer)", 3, "etcd");
        }
        None => println!("(no etcd at {}: comparison skipped)", a.etcd.display()),
    }
    if let Some(e) = &etcd {
        if a.rounds > 0 {
            head_to_head(&base, e, a.rounds, a.writes, a.concurrency)?;
        }
    }

    failover(&base, a.kills, etcd, keep)
}

/// Shoal and etcd rows alternated round by round, both clusters running throughout (each
/// idles through the other's rows): the ratio of each round, and their median and lowest.
fn head_to_head(base: &Path, e: &Etcd, rounds: usize, writes: usize, concurrency: usize) -> anyhow::Result<()> {
    let g = Group::new(&base.join("head-to-head"), 3, true)?;
    let single = (writes / 4).max(1);
    println!();
    println!(
        "head to head with etcd, alternated: {} rounds of a Shoal row then an etcd row ({} writes by {} writers, then {single} by one), 3 voters each:",
        rounds, writes, concurrency
    );
    println!(
        "{:<6} {:>12} {:>12} {:>7}   {:>12} {:>12} {:>7}",
        "round", "shoal w/s", "etcd w/s", "×", "shoal 1w w/s", "etcd 1w w/s", "×"
    );
    let (mut many, mut one) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let (s, _, _) = throughput(&g, writes, concurrency)?;
        let (t, _, _) = etcd_throughput(e, writes, concurrency)?;
        let (s1, _, _) = throughput(&g, single, 1)?;
        let (t1, _, _) = etcd_throughput(e, single, 1)?;
        println!("{round:<6} {s:>12.0} {t:>12.0} {:>7.2}   {s1:>12.0} {t1:>12.0} {:>7.2}", s / t, s1 / t1);
        many.push(s / t);
        one.push(s1 / t1);
    }
    let median_and_lowest = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0])
    };
    let ((m, lo), (m1, lo1)) = (median_and_lowest(&mut many), median_and_lowest(&mut one));
    println!(
        "ratio to etcd: {concurrency} writers median {m:.2}× (lowest {lo:.2}×); one writer median {m1:.2}× (lowest {lo1:.2}×)"
    );
    Ok(())
}

/// Leader failover after SIGKILL, for Shoal and (when given) etcd.
/// Durations as whole milliseconds, space-separated.
fn ms_list(times: &[Duration]) -> String {
    times.iter().map(|t| t.as_millis().to_string()).collect::<Vec<_>>().join(" ")
}

fn failover(base: &Path, kills: usize, etcd: Option<Etcd>, keep: bool) -> anyhow::Result<()> {
    if kills > 0 {
        let mut g = Group::new(&base.join("failover"), 3, true)?;
        let mut times = Vec::new();
        for _ in 0..kills {
            let leader = g.leader(Duration::from_secs(30))?;
            g.kill(leader);
            let survivors: Vec<SocketAddr> = g.live().iter().map(|id| g.http(*id)).collect();
            times.push(time_to_ack(&survivors, write)?);
            g.start(leader)?;
            g.leader(Duration::from_secs(30))?;
        }
        let in_order = ms_list(&times);
        times.sort();
        println!();
        println!(
            "leader failover after SIGKILL ({} kills, 3 voters): time until a write is acknowledged again: p50 {:.0} ms, p90 {:.0} ms, max {:.0} ms",
            times.len(),
            pct(&times, 0.5),
            pct(&times, 0.9),
            pct(&times, 1.0)
        );
        println!("  each kill in order, ms: {in_order}");
        if let Some(mut e) = etcd {
            let t = etcd_failover(&mut e, kills)?;
            println!(
                "etcd, same measurement ({} kills, 3 members, default 100 ms heartbeat / 1000 ms election): p50 {:.0} ms, p90 {:.0} ms, max {:.0} ms",
                t.len(),
                pct(&t, 0.5),
                pct(&t, 0.9),
                pct(&t, 1.0)
            );
        }
        // A planned stop: SIGTERM makes the leader hand over before it exits.
        let mut handed = Vec::new();
        for _ in 0..kills {
            let leader = g.leader(Duration::from_secs(30))?;
            let survivors: Vec<SocketAddr> =
                g.live().iter().filter(|id| **id != leader).map(|id| g.http(*id)).collect();
            let pid = g.pid(leader).unwrap_or(0);
            let t0 = Instant::now();
            let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
            let _ = time_to_ack(&survivors, write)?;
            handed.push(t0.elapsed());
            g.terminate(leader);
            g.start(leader)?;
            g.leader(Duration::from_secs(30))?;
        }
        let in_order = ms_list(&handed);
        handed.sort();
        println!(
            "leader stopped with SIGTERM ({} stops, 3 voters; it hands leadership over first): time until a write is acknowledged again: p50 {:.0} ms, p90 {:.0} ms, max {:.0} ms",
            handed.len(),
            pct(&handed, 0.5),
            pct(&handed, 0.9),
            pct(&handed, 1.0)
        );
        println!("  each stop in order, ms: {in_order}");
        let t = shoal_coordinator::config::TimingConfig::default();
        println!(
            "timeouts: raft tick {} ms, leader heartbeat {} tick, election timeout randomised in {}-{} ticks (etcd defaults: 100 ms heartbeat, 1000 ms election)",
            t.tick_ms,
            t.heartbeat_ticks,
            t.election_ticks,
            2 * t.election_ticks
        );
    }
    if !keep {
        let _ = std::fs::remove_dir_all(base);
    }
    Ok(())
}
