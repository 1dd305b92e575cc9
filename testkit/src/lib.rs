//! Dev-only helpers for tests that start real `shoal` processes on loopback: free ports,
//! process launchers (`shoal up`, coordinators, nodes), HTTP helpers, the model files, and a
//! throwaway PostgreSQL + pgvector server ([`pg`]). Never a dependency of the shipped binary.

pub mod pg;

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

use serde_json::{json, Value};

pub const API_KEY: &str = "sk-test-admin-key";

/// The `shoal` binary under test: `SHOAL_BIN`, else the one cargo built beside the running
/// test executable (`target/<profile>/shoal`, the test being in `target/<profile>/deps/`).
pub fn bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SHOAL_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("the test executable");
    let profile = exe.parent().and_then(Path::parent).expect("target/<profile>/deps");
    let bin = profile.join("shoal");
    assert!(bin.is_file(), "no shoal binary at {} (set SHOAL_BIN)", bin.display());
    bin
}

/// A port free for both UDP (QUIC) and TCP (HTTP) right now, chosen below the kernel's
/// ephemeral range (32768 and up on Linux) so that no outgoing connection made meanwhile
/// takes it before the process under test binds it, and never handed out twice by this
/// test binary.
pub fn free_port() -> u16 {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(1)
        as u64
        ^ (u64::from(std::process::id()) << 32)
        | 1;
    loop {
        // xorshift: good enough to spread concurrent test binaries over the range.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let port = 20_000 + (seed % 12_000) as u16;
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        let given = given.get_or_insert_with(HashSet::new);
        if given.contains(&port) {
            continue;
        }
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
}

pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A child process killed (SIGKILL) when dropped.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
    /// Stops the process with SIGTERM (a planned stop) and returns its exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        self.child.wait().expect("wait")
    }
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The pinned Python MCP SDK the MCP tests use (`scripts/test.sh` installs it).
pub const MCP_SDK: &str = "mcp==2.3.0";

/// `tests/python/mcp_server.py`: a small MCP server on the official Python SDK (tools
/// `add`, `echo`, `big`, `sleep`, `calls`, `last_key`).
pub fn mcp_server_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/mcp_server.py")
}

/// That server over Streamable HTTP on `127.0.0.1:port/mcp`, behind a bearer token; killed
/// when dropped.
pub struct McpServer {
    pub proc: Proc,
    pub port: u16,
    pub token: String,
}

impl McpServer {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.port)
    }
}

/// Starts [`McpServer`] (its log in `dir`) once the SDK imports, and waits until it listens.
pub fn start_mcp_server(dir: &Path) -> McpServer {
    let import =
        Command::new("python3").args(["-c", "import mcp.server.mcpserver, uvicorn"]).output().expect("python3");
    assert!(
        import.status.success(),
        "the Python MCP SDK is not importable ({}): install it with `python3 -m pip install {MCP_SDK}` \
         (scripts/test.sh does)",
        String::from_utf8_lossy(&import.stderr).trim()
    );
    let port = free_port();
    let token = format!("tok-{}-{}", std::process::id(), port);
    let log = dir.join("mcp_server.log");
    let out = std::fs::File::create(&log).expect("log");
    let child = Command::new("python3")
        .arg(mcp_server_script())
        .args(["http", &port.to_string(), &token])
        .stdout(Stdio::from(out.try_clone().expect("clone")))
        .stderr(Stdio::from(out))
        .spawn()
        .expect("python3");
    let server = McpServer { proc: Proc { child, log }, port, token };
    wait_until(Duration::from_secs(30), "the MCP server listens", || TcpStream::connect(("127.0.0.1", port)).is_ok());
    server
}

pub fn spawn(args: &[&str], log: &Path) -> Proc {
    let out = std::fs::File::create(log).expect("log file");
    let err = out.try_clone().expect("clone");
    let child = Command::new(bin())
        .args(args)
        .env("SHOAL_API_KEY", API_KEY)
        .env("SHOAL_LOG", "info,raft=warn")
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .expect("spawn shoal");
    Proc { child, log: log.to_path_buf() }
}

/// Runs `shoal ARGS` to completion.
pub fn run(args: &[&str]) -> Output {
    Command::new(bin()).args(args).env("SHOAL_API_KEY", API_KEY).output().expect("run shoal")
}

/// Polls `cond` every 100 ms until it holds or `within` passes; panics with `what`.
pub fn wait_until(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {within:?} waiting for: {what}");
}

/// GET with the admin key; returns status and body text.
pub fn get(url: &str, key: Option<&str>) -> Option<(u16, String)> {
    let mut req = agent(Duration::from_secs(5)).get(url);
    if let Some(k) = key {
        req = req.header("Authorization", &format!("Bearer {k}"));
    }
    let mut resp = req.call().ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.body_mut().read_to_string().unwrap_or_default()))
}

pub fn get_json(url: &str) -> Option<Value> {
    match get(url, Some(API_KEY))? {
        (200, body) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

/// A coordinator process with its addresses.
pub struct Coord {
    pub proc: Proc,
    pub quic: SocketAddr,
    pub http: SocketAddr,
    pub dir: PathBuf,
    pub config: PathBuf,
}

impl Coord {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    /// Writes a one-member config with short leases and starts the coordinator.
    pub fn start(dir: &Path, heartbeat_ms: u64, lease_ms: u64) -> Coord {
        let (quic, http) = (addr(free_port()), addr(free_port()));
        let config = dir.join("cluster.toml");
        std::fs::create_dir_all(dir).expect("dir");
        std::fs::write(
            &config,
            format!(
                "[[coordinators]]\nid = 1\nquic = \"{quic}\"\nhttp = \"{http}\"\n\n[timing]\nheartbeat_ms = {heartbeat_ms}\nlease_ms = {lease_ms}\n"
            ),
        )
        .expect("config");
        let mut c =
            Coord { proc: spawn(&["--help"], &dir.join("unused.log")), quic, http, dir: dir.to_path_buf(), config };
        c.restart();
        c
    }

    /// The `shoal coordinator …` arguments for this coordinator's config and data dir.
    pub fn args(&self) -> Vec<String> {
        let data = self.dir.join("data");
        [
            "coordinator",
            "--config",
            self.config.to_str().expect("utf8"),
            "--id",
            "1",
            "--data-dir",
            data.to_str().expect("utf8"),
        ]
        .map(String::from)
        .to_vec()
    }

    /// (Re)starts the process on the same data dir and waits until it is ready.
    pub fn restart(&mut self) {
        self.proc.kill();
        let args = self.args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.proc = spawn(&args, &self.dir.join("coordinator.log"));
        let url = self.url("/readyz");
        let log = self.proc.log.clone();
        wait_until(Duration::from_secs(30), "coordinator /readyz", || {
            matches!(get(&url, None), Some((200, _)))
                || std::fs::read_to_string(&log).map(|l| l.contains("error:")).unwrap_or(false)
        });
        assert!(matches!(get(&url, None), Some((200, _))), "coordinator failed: {}", self.proc.log_text());
    }

    pub fn gateway(&self) -> String {
        format!("http://{}", self.http)
    }

    /// `shoal token create`, returning (token, ca hash).
    pub fn token(&self, ttl: &str) -> (String, String) {
        let out = run(&["token", "create", "--gateway", &self.gateway(), "--ttl", ttl]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "token create failed: {}", String::from_utf8_lossy(&out.stderr));
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
                .unwrap_or_else(|| panic!("no {name} in: {text}"))
        };
        let (token, hash) = (field("token:"), field("ca-hash:"));
        assert!(text.contains(&format!("shoal join {} --token {token} --ca-hash {hash}", self.quic)), "{text}");
        (token, hash)
    }

    pub fn nodes(&self) -> Vec<Value> {
        get_json(&self.url("/v1/nodes")).and_then(|v| v["nodes"].as_array().cloned()).unwrap_or_default()
    }

    pub fn node(&self, name: &str) -> Option<Value> {
        self.nodes().into_iter().find(|n| n["name"] == name)
    }

    pub fn metric(&self, series: &str) -> f64 {
        let (_, text) = get(&self.url("/metrics"), None).expect("metrics");
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse::<f64>().ok()))
            .unwrap_or(0.0)
    }
}

/// A `shoal up` process and the addresses it serves on.
pub struct Up {
    pub proc: Proc,
    pub http: SocketAddr,
    pub quic: SocketAddr,
    /// Its command line (without the binary), to start it again.
    pub args: Vec<String>,
}

impl Up {
    /// SIGKILLs the process and starts it again on the same data dir and addresses (its log
    /// is appended to the same file's sibling `up.N.log`).
    pub fn crash_and_restart(&mut self) {
        self.proc.kill();
        let n = (1..).find(|n| !self.proc.log.with_extension(format!("{n}.log")).exists()).unwrap_or(1);
        let log = self.proc.log.with_extension(format!("{n}.log"));
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.proc = spawn(&args, &log);
    }
}

/// Starts `shoal up --models models` on free ports, its data dir and log under `dir`.
pub fn start_up(dir: &Path, models: &Path) -> Up {
    let (http, quic, node) = (addr(free_port()), addr(free_port()), addr(free_port()));
    std::fs::create_dir_all(dir).expect("dir");
    let data = dir.join("data");
    let (h, q, n) = (http.to_string(), quic.to_string(), node.to_string());
    let args = [
        "up",
        "--data-dir",
        data.to_str().expect("utf8"),
        "--http",
        &h,
        "--listen",
        &q,
        "--node-listen",
        &n,
        "--models",
        models.to_str().expect("utf8"),
    ];
    Up { proc: spawn(&args, &dir.join("up.log")), http, quic, args: args.iter().map(|a| a.to_string()).collect() }
}

/// Starts `shoal join` for a node named `name` with its own data dir under `dir`.
pub fn join(coord: &Coord, dir: &Path, name: &str, token: Option<(&str, &str)>, extra: &[&str]) -> Proc {
    join_at(&coord.quic.to_string(), dir, name, token, extra)
}

/// Starts `shoal join` against the coordinator at `quic`.
pub fn join_at(quic: &str, dir: &Path, name: &str, token: Option<(&str, &str)>, extra: &[&str]) -> Proc {
    let data = dir.join(name);
    let listen = addr(free_port()).to_string();
    let mut args: Vec<&str> =
        vec!["join", quic, "--data-dir", data.to_str().expect("utf8"), "--listen", &listen, "--name", name];
    if let Some((t, h)) = token {
        args.extend(["--token", t, "--ca-hash", h]);
    }
    args.extend(extra);
    spawn(&args, &dir.join(format!("{name}.log")))
}

/// A joined node: its process and its `--metrics` URL.
pub struct Member {
    pub name: String,
    pub proc: Proc,
    pub metrics: String,
}

/// One coordinator (heartbeats every 200 ms) and named nodes, each with a metrics endpoint,
/// all ready; the data dirs and logs live in `dir`.
pub struct Mesh {
    pub coord: Coord,
    pub nodes: Vec<Member>,
    pub dir: tempfile::TempDir,
}

impl Mesh {
    pub fn start(names: &[&str], lease_ms: u64, node_args: &[&str]) -> Mesh {
        let dir = tempfile::tempdir().expect("tempdir");
        let coord = Coord::start(&dir.path().join("coord"), 200, lease_ms);
        let (token, hash) = coord.token("1h");
        let nodes: Vec<Member> = names
            .iter()
            .map(|name| {
                let metrics = addr(free_port()).to_string();
                let mut args = vec!["--metrics", metrics.as_str()];
                args.extend(node_args);
                let proc = join(&coord, dir.path(), name, Some((&token, &hash)), &args);
                Member { name: name.to_string(), proc, metrics: format!("http://{metrics}") }
            })
            .collect();
        wait_until(Duration::from_secs(60), "all nodes ready", || {
            coord.nodes().iter().filter(|n| n["state"] == "ready").count() == names.len()
        });
        Mesh { coord, nodes, dir }
    }

    pub fn gateway(&self) -> String {
        self.coord.gateway()
    }

    pub fn member(&self, name: &str) -> &Member {
        self.nodes.iter().find(|m| m.name == name).expect("member")
    }

    /// A metric summed over every live node.
    pub fn node_metric(&self, name: &str) -> f64 {
        self.nodes.iter().filter(|m| get(&m.metrics, None).is_some()).map(|m| metric_sum(&m.metrics, name)).sum()
    }
}

// ---- A raft group of coordinators ----

/// One coordinator of a [`Group`].
pub struct GroupMember {
    pub id: u64,
    pub quic: std::net::SocketAddr,
    pub http: std::net::SocketAddr,
    pub proc: Option<Proc>,
}

/// A raft group of `shoal coordinator` processes on loopback, from one config file.
pub struct Group {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub members: Vec<GroupMember>,
    /// Members are written in the config as `localhost:PORT` (DNS names, resolved by every
    /// process at each connection) and bound on 127.0.0.1.
    pub named: bool,
}

impl Drop for Group {
    /// When a test fails, the end of each member's log goes to the test's output (the logs
    /// themselves live in a temporary directory that is removed).
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for m in &self.members {
            let log = self.dir.join(format!("c{}.log", m.id));
            let Ok(text) = std::fs::read_to_string(&log) else { continue };
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            eprintln!("---- the last {} lines of coordinator {}'s log ----", tail.len(), m.id);
            for l in tail {
                eprintln!("{l}");
            }
        }
    }
}

/// How many lines of each member's log a failed test shows.
const LOG_TAIL_LINES: usize = 60;

/// POSTs with the admin key; `None` when nothing answered.
pub fn post_opt(url: &str, body: Value) -> Option<(u16, Value)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(8)))
        .build()
        .into();
    let mut resp = agent.post(url).header("Authorization", &format!("Bearer {API_KEY}")).send_json(body).ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.body_mut().read_json().unwrap_or(Value::Null)))
}

impl Group {
    /// Writes a config for `n` members (the last `extra` not part of the bootstrap group).
    pub fn new(dir: &Path, n: u64, extra: u64) -> Group {
        Self::write(dir, n, extra, false)
    }

    /// As [`Group::new`], with the members named `localhost:PORT` in the config.
    pub fn new_named(dir: &Path, n: u64, extra: u64) -> Group {
        Self::write(dir, n, extra, true)
    }

    /// How member `id`'s QUIC and HTTP addresses are written in the config.
    pub fn advertised(&self, id: u64) -> (String, String) {
        let m = self.member(id);
        if self.named {
            (format!("localhost:{}", m.quic.port()), format!("localhost:{}", m.http.port()))
        } else {
            (m.quic.to_string(), m.http.to_string())
        }
    }

    fn write(dir: &Path, n: u64, extra: u64, named: bool) -> Group {
        let members: Vec<GroupMember> = (1..=n + extra)
            .map(|id| GroupMember { id, quic: addr(free_port()), http: addr(free_port()), proc: None })
            .collect();
        let mut cfg = String::new();
        for m in &members {
            let (quic, http) = if named {
                (format!("localhost:{}", m.quic.port()), format!("localhost:{}", m.http.port()))
            } else {
                (m.quic.to_string(), m.http.to_string())
            };
            cfg += &format!("[[coordinators]]\nid = {}\nquic = \"{quic}\"\nhttp = \"{http}\"\n", m.id);
            if named {
                cfg += &format!("listen_quic = \"{}\"\nlisten_http = \"{}\"\n", m.quic, m.http);
            }
            cfg += &format!("initial = {}\n\n", m.id <= n);
        }
        cfg +=
            "[pki]\nca_dir = \"ca\"\n\n[timing]\nheartbeat_ms = 300\nlease_ms = 1500\n\n[raft]\ncompact_after = 40\n";
        std::fs::create_dir_all(dir).expect("dir");
        let config = dir.join("group.toml");
        std::fs::write(&config, cfg).expect("config");
        Group { dir: dir.to_path_buf(), config, members, named }
    }

    pub fn member(&self, id: u64) -> &GroupMember {
        self.members.iter().find(|m| m.id == id).expect("member")
    }

    pub fn start(&mut self, id: u64) {
        let data = self.dir.join(format!("c{id}"));
        let log = self.dir.join(format!("c{id}.log"));
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("log");
        let child = std::process::Command::new(bin())
            .args(["coordinator", "--config", self.config.to_str().expect("utf8"), "--id", &id.to_string()])
            .args(["--data-dir", data.to_str().expect("utf8")])
            .env("SHOAL_API_KEY", API_KEY)
            .env("SHOAL_FAULT_INJECTION", "1")
            .env("SHOAL_LOG", "info,raft=info")
            .stdout(std::process::Stdio::from(out.try_clone().expect("clone")))
            .stderr(std::process::Stdio::from(out))
            .spawn()
            .expect("spawn");
        let m = self.members.iter_mut().find(|m| m.id == id).expect("member");
        m.proc = Some(Proc { child, log });
    }

    /// Starts members 1..=n, waits for an agreed leader and every member's readiness.
    pub fn start_all_ready(&mut self, n: u64) -> u64 {
        for id in 1..=n {
            self.start(id);
        }
        let leader = self.wait_leader(Duration::from_secs(20), None);
        for id in 1..=n {
            let url = self.url(id, "/readyz");
            wait_until(Duration::from_secs(20), "readyz", || matches!(get(&url, None), Some((200, _))));
        }
        leader
    }

    pub fn kill(&mut self, id: u64) {
        let m = self.members.iter_mut().find(|m| m.id == id).expect("member");
        if let Some(mut p) = m.proc.take() {
            p.kill();
        }
    }

    /// Stops a member with SIGTERM (a planned stop: a leader hands over first).
    pub fn terminate(&mut self, id: u64) -> Option<std::process::ExitStatus> {
        let m = self.members.iter_mut().find(|m| m.id == id).expect("member");
        m.proc.take().map(|mut p| p.terminate())
    }

    pub fn live(&self) -> Vec<u64> {
        self.members.iter().filter(|m| m.proc.is_some()).map(|m| m.id).collect()
    }

    pub fn url(&self, id: u64, path: &str) -> String {
        format!("http://{}{}", self.member(id).http, path)
    }

    pub fn cluster(&self, id: u64) -> Option<Value> {
        get_json(&self.url(id, "/v1/cluster"))
    }

    /// The leader every live member agrees on, if they do.
    pub fn agreed_leader(&self) -> Option<u64> {
        let views: Vec<(u64, u64)> = self
            .live()
            .iter()
            .filter_map(|id| self.cluster(*id))
            .filter_map(|c| Some((c["leader_id"].as_u64()?, c["term"].as_u64()?)))
            .collect();
        (views.len() == self.live().len() && views.windows(2).all(|w| w[0] == w[1])).then(|| views[0].0)
    }

    pub fn wait_leader(&self, within: Duration, not: Option<u64>) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            let leader = self.agreed_leader().unwrap_or(0);
            if leader != 0 && Some(leader) != not {
                return leader;
            }
            if Instant::now() > deadline {
                let views: Vec<String> = self
                    .live()
                    .iter()
                    .map(|id| match self.cluster(*id) {
                        Some(c) => format!("{id}: leader {} term {} role {}", c["leader_id"], c["term"], c["role"]),
                        None => format!("{id}: no answer"),
                    })
                    .collect();
                panic!("no agreed leader after {within:?} (logs in {}): {views:?}", self.dir.display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn tokens(&self, id: u64) -> Option<BTreeSet<String>> {
        let v = get_json(&self.url(id, "/v1/tokens?consistent=true"))?;
        Some(v["tokens"].as_array()?.iter().filter_map(|t| t["id"].as_str().map(str::to_string)).collect())
    }

    /// Every acknowledged write is on every live member.
    pub fn assert_no_ack_lost(&self, acked: &Mutex<Vec<String>>, within: Duration) {
        let want: BTreeSet<String> = acked.lock().expect("acked").iter().cloned().collect();
        for id in self.live() {
            let mut missing = want.len();
            wait_until(within, &format!("member {id} holds every acknowledged write"), || {
                missing = self.tokens(id).map(|have| want.difference(&have).count()).unwrap_or(want.len());
                missing == 0
            });
        }
    }
}

// ---- HTTP and model helpers shared by the serving tests ----

/// The real model files: `SHOAL_MODELS_DIR`, else `models/` in the workspace root
/// (`./scripts/fetch-models.sh` puts them there).
pub fn models_dir() -> PathBuf {
    let dir = std::env::var_os("SHOAL_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../models"));
    assert!(
        ["smollm2-135m-instruct", "all-minilm-l6-v2", "qwen2.5-coder-0.5b-instruct"]
            .iter()
            .all(|m| dir.join(m).is_dir()),
        "model files missing in {}: run ./scripts/fetch-models.sh",
        dir.display()
    );
    dir
}

pub fn gguf() -> PathBuf {
    models_dir().join("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
}

pub fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(timeout)).build().into()
}

/// POSTs a raw body with the admin key (or `key`); returns status and parsed JSON.
pub fn post_raw(url: &str, body: &str, key: Option<&str>) -> (u16, Value) {
    let mut req = agent(Duration::from_secs(120)).post(url).header("Content-Type", "application/json");
    if let Some(k) = key {
        req = req.header("Authorization", &format!("Bearer {k}"));
    }
    let mut resp = req.send(body).expect("request");
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

pub fn post(url: &str, body: Value) -> (u16, Value) {
    post_raw(url, &body.to_string(), Some(API_KEY))
}

pub fn stream_chat(gateway: &str, model: &str, prompt: &str, max_tokens: u32) -> (String, Option<String>) {
    let body = json!({
        "model": model, "messages": [{"role": "user", "content": prompt}],
        "temperature": 0, "max_tokens": max_tokens, "stream": true,
    });
    let resp = agent(Duration::from_secs(180))
        .post(&format!("{gateway}/v1/chat/completions"))
        .header("Authorization", &format!("Bearer {API_KEY}"))
        .send_json(body)
        .expect("stream request");
    assert_eq!(resp.status().as_u16(), 200);
    let mut text = String::new();
    let mut done = false;
    for line in BufReader::new(resp.into_body().into_reader()).lines() {
        let line = line.expect("sse line");
        let Some(data) = line.strip_prefix("data: ") else { continue };
        if data == "[DONE]" {
            done = true;
            break;
        }
        let v: Value = serde_json::from_str(data).expect("event json");
        if let Some(e) = v["error"]["message"].as_str() {
            return (text, Some(e.to_string()));
        }
        text.push_str(v["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
    }
    (text, (!done).then(|| "the stream ended without [DONE]".to_string()))
}

pub fn chat_once(gateway: &str, model: &str, prompt: &str, max_tokens: u32) -> String {
    let body = json!({
        "model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0, "max_tokens": max_tokens,
    });
    let (status, v) = post(&format!("{gateway}/v1/chat/completions"), body);
    assert_eq!(status, 200, "{v}");
    v["choices"][0]["message"]["content"].as_str().expect("content").to_string()
}

pub fn metric_sum(gateway: &str, name: &str) -> f64 {
    let (_, text) = get(&format!("{gateway}/metrics"), None).expect("metrics");
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// Sends a streaming chat request and reads a few events, then hangs up.
pub fn abandon_stream(gw: &str, model: &str) {
    let host = gw.trim_start_matches("http://");
    let mut conn = TcpStream::connect(host).expect("connect");
    let body = json!({
        "model": model, "messages": [{"role": "user", "content": "Tell me a very long story."}],
        "max_tokens": 1000, "stream": true, "temperature": 0.8,
    })
    .to_string();
    write!(
        conn,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut buf = [0u8; 4096];
    let mut seen = String::new();
    while seen.matches("data: ").count() < 5 {
        let n = conn.read(&mut buf).expect("read");
        assert!(n > 0, "stream ended early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}
