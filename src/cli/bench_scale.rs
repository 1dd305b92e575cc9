//! `shoal bench scale`: one coordinator process with thousands of simulated nodes over real
//! QUIC. Every simulated node joins with the token (its own key, CSR and certificate), opens
//! its own mutually authenticated connection (spread over a few client UDP sockets),
//! registers and heartbeats at the default interval, like `shoal join` does. Measured: the
//! coordinator's CPU and memory per node while they heartbeat, the heartbeat round trip at the
//! node (p50/p99: send, the coordinator renews the lease and computes the node's assignments,
//! the ack comes back), the time to declare a silent node dead, and the scheduler's time to
//! place 1,000 deployments on a state of that many nodes (the pure `scheduler::plan`, run
//! until it has nothing more to do).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use serde_json::{json, Value};
use shoal_protocol::quic::{self, ClientStream};
use shoal_protocol::tls::{self, Identity, COORDINATOR_SERVER_NAME};
use shoal_protocol::token::JoinToken;
use shoal_protocol::{Capacity, Heartbeat, JoinRequest, Load, RegisterRequest, Request, Response};

use super::bench::Group;

const KEY: &str = "sk-bench-local-admin";

#[derive(Debug, Args)]
pub struct ScaleBench {
    /// Simulated nodes.
    #[arg(long, default_value_t = 10_000)]
    pub nodes: usize,
    /// Client UDP sockets the nodes' connections are spread over.
    #[arg(long, default_value_t = 16)]
    pub endpoints: usize,
    /// Seconds of steady heartbeating measured.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Deployments the scheduler places in the placement measurement.
    #[arg(long, default_value_t = 1_000)]
    pub deployments: usize,
    /// Joins in flight at once.
    #[arg(long, default_value_t = 64)]
    pub join_concurrency: usize,
}

/// A joined simulated node.
struct Joined {
    id: String,
    client: quinn::ClientConfig,
}

pub async fn run(a: ScaleBench) -> anyhow::Result<()> {
    shoal_protocol::install_crypto_provider();
    if a.nodes == 0 || a.endpoints == 0 {
        bail!("--nodes and --endpoints must be positive");
    }
    let dir = tempfile::tempdir()?;
    let group = tokio::task::block_in_place(|| Group::new(dir.path(), 1, true))?;
    let http = group.http(1);
    let quic_addr = group.quic[0];
    let pid = group.pid(1).ok_or_else(|| anyhow!("the coordinator did not start"))?;
    tokio::task::block_in_place(|| group.leader(Duration::from_secs(30)))?;
    let token = tokio::task::block_in_place(|| post(http, "/v1/tokens", json!({"ttl_seconds": 7200})))?;
    let secret = token["token"].as_str().ok_or_else(|| anyhow!("no token in {token}"))?;
    let token = JoinToken::parse(secret)?;
    let ca_hash = tokio::task::block_in_place(|| get(http, "/v1/cluster"))
        .and_then(|c| c["ca_hash"].as_str().map(str::to_string))
        .ok_or_else(|| anyhow!("no CA hash"))?;
    let rss_before = rss_bytes(pid);
    let hb_ms = shoal_coordinator::config::TimingConfig::default().heartbeat_ms;
    let lease_ms = shoal_coordinator::config::TimingConfig::default().lease_ms;

    // Joins: one CA-pinned connection (no client certificate yet), a stream per join.
    eprintln!("joining {} simulated nodes…", a.nodes);
    let started = Instant::now();
    let joined = join_all(&a, quic_addr, &token, &ca_hash).await?;
    let join_secs = started.elapsed().as_secs_f64();

    // Each node: its own connection (its own certificate), registered, heartbeating.
    eprintln!("connecting and registering them…");
    let endpoints: Vec<quinn::Endpoint> =
        (0..a.endpoints).map(|_| quic::client_endpoint(quic_addr)).collect::<Result<_, _>>()?;
    let rtts: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let registered = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicUsize::new(0));
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Handshakes in flight at once: more would wait past QUIC's idle timeout in the queue.
    let connecting = Arc::new(tokio::sync::Semaphore::new(a.join_concurrency.max(1) * 4));
    let first_failure: Arc<Mutex<Option<String>>> = Arc::default();
    let mut tasks = Vec::with_capacity(joined.len());
    let started = Instant::now();
    for (i, node) in joined.into_iter().enumerate() {
        let endpoint = endpoints[i % endpoints.len()].clone();
        let (rtts, registered, failures, measuring) =
            (rtts.clone(), registered.clone(), failures.clone(), measuring.clone());
        let (connecting, first_failure) = (connecting.clone(), first_failure.clone());
        let id = node.id.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = simulate(endpoint, quic_addr, node, registered, rtts, measuring, connecting).await {
                failures.fetch_add(1, Ordering::Relaxed);
                first_failure.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(|| e.to_string());
            }
        });
        tasks.push((id, task));
        // Spread the first heartbeats over the interval, as real nodes are.
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while registered.load(Ordering::Relaxed) + failures.load(Ordering::Relaxed) < a.nodes {
        if Instant::now() > deadline {
            bail!("only {} of {} nodes registered in 300 s", registered.load(Ordering::Relaxed), a.nodes);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let register_secs = started.elapsed().as_secs_f64();
    if failures.load(Ordering::Relaxed) > 0 {
        let why = first_failure.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_default();
        eprintln!("{} simulated nodes failed to register; the first: {why}", failures.load(Ordering::Relaxed));
    }
    // Let the first round of heartbeats settle, then measure a steady window.
    tokio::time::sleep(Duration::from_millis(2 * hb_ms)).await;
    let ready = ready_nodes(http).await;
    measuring.store(true, Ordering::Relaxed);
    let (cpu0, self0, t0) = (cpu_ticks(pid), cpu_ticks(std::process::id()), Instant::now());
    tokio::time::sleep(Duration::from_secs(a.seconds)).await;
    let (cpu1, self1, window) = (cpu_ticks(pid), cpu_ticks(std::process::id()), t0.elapsed().as_secs_f64());
    measuring.store(false, Ordering::Relaxed);
    let rss_after = rss_bytes(pid);
    let mut samples = std::mem::take(&mut *rtts.lock().unwrap_or_else(|p| p.into_inner()));
    samples.sort();
    let ticks = clock_ticks_per_second();
    let coordinator_cpu = (cpu1.saturating_sub(cpu0)) as f64 / ticks / window;
    let bench_cpu = (self1.saturating_sub(self0)) as f64 / ticks / window;

    // A node goes silent: how long until the coordinator declares it dead.
    let (victim, task) = tasks.pop().ok_or_else(|| anyhow!("no nodes"))?;
    task.abort();
    let silent = Instant::now();
    let mut detect = None;
    while silent.elapsed() < Duration::from_millis(4 * lease_ms + 5_000) {
        let state = tokio::task::block_in_place(|| get(http, &format!("/v1/nodes/{victim}")))
            .and_then(|n| n["state"].as_str().map(str::to_string));
        if state.as_deref().is_some_and(|s| s != "ready") {
            detect = Some(silent.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    for (_, t) in &tasks {
        t.abort();
    }

    // The scheduler placing deployments on a state of that many nodes (pure, in process).
    let (placement_secs, rounds, placed) = place(a.nodes, a.deployments);

    println!(
        "one coordinator, {} simulated nodes over real QUIC + mutual TLS ({} client sockets),",
        a.nodes, a.endpoints
    );
    println!("heartbeat every {hb_ms} ms, lease {lease_ms} ms, all on this machine:");
    println!(
        "  joins (key + CSR here, certificate + raft commit there)  {:.1} s ({:.0}/s)",
        join_secs,
        a.nodes as f64 / join_secs
    );
    println!("  connect + register                                       {:.1} s", register_secs);
    println!("  nodes ready                                              {ready}");
    println!(
        "  heartbeats in {:.0} s                                      {} ({:.0}/s)",
        window,
        samples.len(),
        samples.len() as f64 / window
    );
    println!(
        "  heartbeat round trip at the node p50 / p99 / max          {:.2} / {:.2} / {:.2} ms",
        ms(&samples, 0.5),
        ms(&samples, 0.99),
        samples.last().map(|d| d.as_secs_f64() * 1e3).unwrap_or(f64::NAN)
    );
    println!("  coordinator CPU                                          {:.0}% of one core", coordinator_cpu * 100.0);
    println!("  this process (the simulated nodes) CPU                   {:.0}% of one core", bench_cpu * 100.0);
    println!(
        "  coordinator memory: {:.0} MiB before the nodes, {:.0} MiB with them: {:.1} KiB per node",
        rss_before as f64 / 1048576.0,
        rss_after as f64 / 1048576.0,
        (rss_after.saturating_sub(rss_before)) as f64 / 1024.0 / a.nodes as f64
    );
    match detect {
        Some(d) => println!("  a silent node declared dead after                        {:.2} s", d.as_secs_f64()),
        None => println!("  a silent node was not declared dead within {} ms", 4 * lease_ms + 5_000),
    }
    println!(
        "  scheduler: {} deployments placed on {} nodes in {:.3} s ({rounds} rounds of plan + apply)",
        placed, a.nodes, placement_secs
    );
    drop(group);
    Ok(())
}

/// Joins every simulated node through one CA-pinned connection.
async fn join_all(a: &ScaleBench, addr: SocketAddr, token: &JoinToken, ca_hash: &str) -> anyhow::Result<Vec<Joined>> {
    let (config, _) = tls::pinned_client_config(ca_hash)?;
    let endpoint = quic::client_endpoint(addr)?;
    let conn = quic::connect(&endpoint, addr, config, COORDINATOR_SERVER_NAME).await?;
    let limit = Arc::new(tokio::sync::Semaphore::new(a.join_concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..a.nodes {
        let (conn, token, limit) = (conn.clone(), token.clone(), limit.clone());
        tasks.spawn(async move {
            let _slot = limit.acquire_owned().await?;
            let name = format!("sim-{i:05}");
            let (csr_der, key_pem) = tls::new_csr(&name)?;
            let req = JoinRequest {
                token_id: token.id.clone(),
                token_secret: token.secret.clone(),
                name,
                csr_der,
                gateway: false,
            };
            let mut stream = ClientStream::open(&conn).await?;
            match stream.call(&Request::Join(req)).await? {
                Response::Joined { node_id, cert_pem, ca_pem } => {
                    let client = Identity::from_pem(&cert_pem, &key_pem, &ca_pem)?.client_config()?;
                    Ok(Joined { id: node_id, client })
                }
                other => Err(anyhow!("join refused: {other:?}")),
            }
        });
    }
    let mut joined = Vec::with_capacity(a.nodes);
    while let Some(r) = tasks.join_next().await {
        joined.push(r.context("join task")??);
        if joined.len() % 1000 == 0 {
            eprintln!("  {} joined", joined.len());
        }
    }
    Ok(joined)
}

/// One simulated node: its connection, registration and heartbeat loop.
async fn simulate(
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    node: Joined,
    registered: Arc<AtomicUsize>,
    rtts: Arc<Mutex<Vec<Duration>>>,
    measuring: Arc<std::sync::atomic::AtomicBool>,
    connecting: Arc<tokio::sync::Semaphore>,
) -> anyhow::Result<()> {
    let slot = connecting.acquire_owned().await?;
    // Like `shoal join`, a node whose handshake or registration fails (the coordinator is
    // busy with thousands of others) tries again.
    let mut attempt = 0;
    let (mut stream, generation, interval) = loop {
        match register(&endpoint, addr, &node).await {
            Ok(registered) => break registered,
            Err(_) if attempt < 4 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            Err(e) => return Err(e),
        }
    };
    registered.fetch_add(1, Ordering::Relaxed);
    drop(slot);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0;
    loop {
        ticker.tick().await;
        seq += 1;
        let hb = Heartbeat { node_id: node.id.clone(), generation, seq, load: Load::default(), replicas: vec![] };
        let sent = Instant::now();
        match stream.call(&Request::Heartbeat(hb)).await? {
            Response::HeartbeatAck { .. } => {}
            other => bail!("heartbeat refused: {other:?}"),
        }
        if measuring.load(Ordering::Relaxed) {
            rtts.lock().unwrap_or_else(|p| p.into_inner()).push(sent.elapsed());
        }
    }
}

/// Connects with the node's certificate and registers: (control stream, generation,
/// heartbeat interval).
async fn register(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    node: &Joined,
) -> anyhow::Result<(ClientStream, u64, Duration)> {
    let conn = quic::connect(endpoint, addr, node.client.clone(), COORDINATOR_SERVER_NAME).await?;
    let mut stream = ClientStream::open(&conn).await?;
    let register = RegisterRequest {
        node_id: node.id.clone(),
        name: node.id.clone(),
        address: "127.0.0.1:9".into(),
        capacity: Capacity { cpu_cores: 8, memory_total_bytes: 32 << 30, accelerators: vec![] },
        labels: vec![],
        metrics: String::new(),
        incarnation: rand::random(),
        mcp_stdio: false,
    };
    match stream.call(&Request::Register(register)).await? {
        Response::Registered { generation, heartbeat_interval_ms, .. } => {
            Ok((stream, generation, Duration::from_millis(u64::from(heartbeat_interval_ms))))
        }
        other => bail!("registration refused: {other:?}"),
    }
}

/// Runs the scheduler on a state of `nodes` ready nodes and `deployments` new deployments
/// until it has nothing more to do: (seconds, rounds, placements made).
fn place(nodes: usize, deployments: usize) -> (f64, usize, usize) {
    use shoal_coordinator::state::{apply, synthetic_cluster};
    let mut state = synthetic_cluster(nodes, deployments);
    let started = Instant::now();
    let mut rounds = 0;
    loop {
        let commands = shoal_coordinator::scheduler::plan(&state, 10);
        if commands.is_empty() || rounds >= 100 {
            break;
        }
        rounds += 1;
        for c in &commands {
            apply(&mut state, c);
        }
    }
    (started.elapsed().as_secs_f64(), rounds, state.placements.len())
}

async fn ready_nodes(http: SocketAddr) -> usize {
    tokio::task::block_in_place(|| {
        let text = ureq::get(&format!("http://{http}/metrics")).call().ok()?.body_mut().read_to_string().ok()?;
        text.lines()
            .find(|l| l.starts_with("shoal_cluster_nodes{state=\"ready\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|v| v as usize)
    })
    .unwrap_or(0)
}

fn ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3
}

fn get(addr: SocketAddr, path: &str) -> Option<Value> {
    let mut r =
        ureq::get(&format!("http://{addr}{path}")).header("Authorization", &format!("Bearer {KEY}")).call().ok()?;
    r.body_mut().read_json().ok()
}

fn post(addr: SocketAddr, path: &str, body: Value) -> anyhow::Result<Value> {
    let mut r = ureq::post(&format!("http://{addr}{path}"))
        .header("Authorization", &format!("Bearer {KEY}"))
        .send_json(body)?;
    Ok(r.body_mut().read_json()?)
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0 };
    // The command name may hold spaces: fields count from after its closing parenthesis.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return 0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<f64>().ok())
        .unwrap_or(100.0)
}

/// Resident memory of a process, in bytes.
fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}
