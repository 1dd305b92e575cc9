use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use shoal_node::{discovery, Node, NodeOptions};
use shoal_protocol::pipeline::ActivationFormat;
use shoal_protocol::tls::parse_ca_hash;
use shoal_protocol::token::JoinToken;

use super::format;

/// Options every node takes (`shoal join`, and the node inside `shoal up`).
#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// Declare an accelerator that cannot be discovered, as kind:model:memory
    /// (e.g. npu:ascend910b:64GiB). Repeatable.
    #[arg(long = "accelerator", value_name = "SPEC")]
    pub accelerators: Vec<String>,
    /// A label on this node, key=value. Repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// The node's name (defaults to the host name).
    #[arg(long)]
    pub name: Option<String>,
    /// For a model split across nodes: how long one step may take from this node's stage to
    /// the end of its chain before the requests in it fail (seconds).
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    pub stage_timeout: f64,
    /// For a model split across nodes: how this node's stages send activations to the next
    /// stage. f32 is bit-exact (a split model answers exactly like the whole model); bf16
    /// sends half the bytes per hop, and greedy answers may drift from the whole model's.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = StageActivations::F32)]
    pub stage_activations: StageActivations,
    /// Run the stdio MCP servers registered with `shoal mcp add --command` on this node,
    /// when graph steps call them (each as a child process with only PATH in its
    /// environment, killed when its call ends). Off by default: it lets admins run commands
    /// on this machine.
    #[arg(long)]
    pub mcp_stdio: bool,
}

/// `--stage-activations`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StageActivations {
    F32,
    Bf16,
}

impl NodeArgs {
    pub fn options(&self, data_dir: PathBuf, coordinator: String, listen: SocketAddr) -> anyhow::Result<NodeOptions> {
        let accelerators =
            self.accelerators.iter().map(|s| discovery::parse_accelerator(s)).collect::<Result<Vec<_>, _>>()?;
        let labels = self.labels.iter().map(|s| discovery::parse_label(s)).collect::<Result<Vec<_>, _>>()?;
        let name = self.name.clone().unwrap_or_else(hostname);
        if !(self.stage_timeout.is_finite() && self.stage_timeout > 0.0) {
            anyhow::bail!("--stage-timeout must be a positive number of seconds");
        }
        Ok(NodeOptions {
            data_dir,
            coordinator,
            token: None,
            ca_hash: None,
            name,
            listen,
            accelerators,
            labels,
            metrics: None,
            stage_timeout: std::time::Duration::from_secs_f64(self.stage_timeout),
            stage_activations: match self.stage_activations {
                StageActivations::F32 => ActivationFormat::F32,
                StageActivations::Bf16 => ActivationFormat::Bf16,
            },
            mcp_stdio: self.mcp_stdio,
        })
    }
}

pub(super) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "node".into())
}

#[derive(Debug, Args)]
pub struct JoinArgs {
    /// The coordinator's QUIC address (host:port), as printed by `shoal token create`.
    pub coordinator: String,
    /// The join token (<id>.<secret>); only needed the first time.
    #[arg(long, env = "SHOAL_JOIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The cluster CA's hash (sha256:…); only needed the first time.
    #[arg(long, env = "SHOAL_CA_HASH")]
    pub ca_hash: Option<String>,
    /// Where this node keeps its identity.
    #[arg(long, default_value = "./shoal-node")]
    pub data_dir: PathBuf,
    /// The node's data-plane QUIC address. Default: the one this data dir used last, else
    /// 127.0.0.1:7200, or a free port when that is taken (another node on this machine).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Where this node serves its Prometheus metrics (replicas, batching, KV cache,
    /// artifacts) on http://ADDR/metrics; the coordinators list it in
    /// `GET /v1/prometheus/targets`. Default: 127.0.0.1:9100, or a free loopback port when
    /// that is taken. Use 0.0.0.0:PORT for a Prometheus on another machine.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Serve no metrics.
    #[arg(long, conflicts_with = "metrics")]
    pub no_metrics: bool,
    /// On SIGTERM or Ctrl-C, how long running requests may take to finish while the node
    /// takes nothing new (a second signal stops it at once).
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    pub drain_timeout: f64,
    #[command(flatten)]
    pub node: NodeArgs,
}

pub fn describe(node: &Node) -> String {
    let c = &node.capacity;
    let accels = if c.accelerators.is_empty() {
        "no accelerators".to_string()
    } else {
        c.accelerators
            .iter()
            .map(|a| {
                format!(
                    "{} {} {}",
                    format!("{:?}", a.kind).to_lowercase(),
                    a.model,
                    format::bytes(a.memory_total_bytes)
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!("{} CPU cores, {} RAM, {}", c.cpu_cores, format::bytes(c.memory_total_bytes), accels)
}

/// The data-plane address a node uses when `--listen` is not given.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7200";
/// Where a node's data dir remembers its data-plane address.
const LISTEN_FILE: &str = "listen";

/// `--listen` if given (it must be free), else the address this data dir used last, else
/// the default, else a free port on the same host — checked before the node is admitted.
fn choose_listen(given: Option<SocketAddr>, data_dir: &std::path::Path) -> anyhow::Result<SocketAddr> {
    if let Some(addr) = given {
        super::preflight::check_udp(addr, "node data plane", "--listen")?;
        return Ok(addr);
    }
    let remembered = std::fs::read_to_string(data_dir.join(LISTEN_FILE)).ok().and_then(|s| s.trim().parse().ok());
    let wanted: SocketAddr = match remembered {
        Some(addr) => addr,
        None => DEFAULT_LISTEN.parse()?,
    };
    if super::preflight::udp_free(wanted) {
        return Ok(wanted);
    }
    if remembered.is_some() {
        return Err(anyhow::anyhow!(
            "{wanted}, the data-plane address this node used before, is in use (is this node already running?): \
             stop the other process, or pass --listen with a free address"
        ));
    }
    let free = super::preflight::free_udp(wanted.ip())?;
    println!("{wanted} is taken (another node on this machine?); listening on {free} instead (--listen chooses)");
    Ok(free)
}

/// The default metrics address when none is given.
const DEFAULT_METRICS: &str = "127.0.0.1:9100";

/// Serves metrics on `--metrics`, else on the default address, else on a free loopback
/// port (another node on this host has the default); the address it serves on.
fn install_metrics(given: Option<SocketAddr>) -> anyhow::Result<SocketAddr> {
    if let Some(addr) = given {
        super::preflight::check_tcp(addr, "metrics", "--metrics")?;
        shoal_coordinator::telemetry::install_with(Some(addr))?;
        return Ok(addr);
    }
    let wanted: SocketAddr = DEFAULT_METRICS.parse()?;
    if shoal_coordinator::telemetry::install_with(Some(wanted)).is_ok() {
        return Ok(wanted);
    }
    // Taken: a free port, retried in case another process takes it first.
    let mut last = None;
    for _ in 0..5 {
        let free = std::net::TcpListener::bind((wanted.ip(), 0))?.local_addr()?;
        match shoal_coordinator::telemetry::install_with(Some(free)) {
            Ok(_) => {
                println!("{wanted} is taken (another node on this machine?); serving metrics on {free} instead (--metrics chooses)");
                return Ok(free);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(anyhow::anyhow!(
        "cannot serve metrics on any loopback port: {}",
        last.map(|e| e.to_string()).unwrap_or_default()
    ))
}

pub async fn run(a: JoinArgs) -> anyhow::Result<()> {
    let _lock = super::preflight::lock_data_dir(&a.data_dir, "--data-dir")?;
    let listen = choose_listen(a.listen, &a.data_dir)?;
    std::fs::write(a.data_dir.join(LISTEN_FILE), listen.to_string())
        .with_context(|| format!("cannot write to the data dir {}", a.data_dir.display()))?;
    let mut opts = a.node.options(a.data_dir, a.coordinator, listen)?;
    opts.token = a.token.as_deref().map(JoinToken::parse).transpose().context("--token")?;
    opts.ca_hash = a.ca_hash.as_deref().map(parse_ca_hash).transpose().context("--ca-hash")?;
    let metrics = if a.no_metrics { None } else { Some(install_metrics(a.metrics)?) };
    opts.metrics = metrics;
    let node = Node::start(opts).await?;
    println!("node {} joined: {} · data plane {}", node.node_id, describe(&node), node.data_addr);
    if let Some(addr) = metrics {
        println!("metrics on http://{addr}/metrics");
    }
    super::shutdown_signal().await;
    let grace = std::time::Duration::from_secs_f64(a.drain_timeout.clamp(0.0, 3600.0));
    println!(
        "draining: taking no new requests, waiting up to {:.0} s for {} running",
        grace.as_secs_f64(),
        node.host.in_flight()
    );
    tokio::select! {
        left = node.drain(grace) => {
            if left == 0 {
                println!("drained; stopping");
            } else {
                println!("{left} requests still running after {:.0} s; stopping (the router resumes them elsewhere)", grace.as_secs_f64());
            }
        }
        _ = super::shutdown_signal() => println!("second signal: stopping now"),
    }
    node.stop();
    Ok(())
}
