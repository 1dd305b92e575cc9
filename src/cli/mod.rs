mod audit;
mod backup;
mod bench;
mod bench_chaos;
mod bench_graphs;
mod bench_load;
mod bench_pipeline;
mod bench_recall;
mod bench_scale;
mod bench_serve;
mod bench_sql;
mod bench_tools;
mod ca;
mod chat;
mod client;
mod coordinator;
mod deploy;
mod format;
mod gateway;
mod graph;
mod join;
mod kb;
mod key;
#[cfg(test)]
mod kubernetes_manifests;
mod mcp;
mod preflight;
mod prometheus;
mod prompt;
mod status;
mod token;
mod up;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Shoal: a distributed, actor-based compute mesh for serving AI models.
#[derive(Debug, Parser)]
#[command(name = "shoal", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one coordinator and one node in one process (the embedded default).
    Up(up::UpArgs),
    /// Run one coordinator of a raft group described by a config file.
    Coordinator(coordinator::CoordinatorArgs),
    /// Run a standalone gateway (HTTP API) that serves from the coordinators' cluster view.
    Gateway(gateway::GatewayArgs),
    /// The cluster CA shared by a group's coordinators (create one for a Kubernetes Secret).
    Ca {
        #[command(subcommand)]
        command: ca::CaCommand,
    },
    /// Manage join tokens.
    Token {
        #[command(subcommand)]
        command: token::TokenCommand,
    },
    /// Start a node on this machine and join it to a cluster.
    Join(join::JoinArgs),
    /// Show the cluster at a glance: coordinators, nodes, deployments.
    Status(status::StatusArgs),
    /// Register a model version and deploy it (or change an existing deployment).
    Deploy(deploy::DeployArgs),
    /// Chat with a deployed model from the terminal (streaming).
    Chat(chat::ChatArgs),
    /// Manage knowledge bases (documents for retrieval-augmented chat).
    Kb {
        #[command(subcommand)]
        command: kb::KbCommand,
    },
    /// Task graphs: apply definitions, run them (streaming events), inspect and rerun runs.
    Graph {
        #[command(subcommand)]
        command: graph::GraphCommand,
    },
    /// Databases for text-to-SQL graph steps (read-only).
    Db {
        #[command(subcommand)]
        command: graph::DbCommand,
    },
    /// External MCP servers that `mcp` graph steps call (Streamable HTTP or stdio).
    Mcp {
        #[command(subcommand)]
        command: mcp::McpCommand,
    },
    /// Prompt templates, served as MCP prompts at /mcp.
    Prompt {
        #[command(subcommand)]
        command: prompt::PromptCommand,
    },
    /// Manage API keys: scopes, allowed models, rate and token limits.
    Key {
        #[command(subcommand)]
        command: key::KeyCommand,
    },
    /// Prometheus: a prometheus.yml that discovers every coordinator and node.
    Prometheus {
        #[command(subcommand)]
        command: prometheus::PrometheusCommand,
    },
    /// Back up the replicated state (and the cluster CA) to a file, or inspect a backup.
    Backup(backup::BackupArgs),
    /// Write a new coordinator data dir from a backup (every member from the same file).
    Restore(backup::RestoreArgs),
    /// The gateway's audit log: mutations, admin reads, authentication failures.
    Audit(audit::AuditArgs),
    /// Run benchmarks and print their figures.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
}

pub fn init_tracing(cli: &Cli) {
    let default = match cli.command {
        Command::Up(_) | Command::Coordinator(_) | Command::Join(_) | Command::Gateway(_) => {
            "info,raft=warn,quinn=warn"
        }
        _ => "warn",
    };
    let filter = EnvFilter::try_from_env("SHOAL_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up(a) => up::run(a).await,
        Command::Coordinator(a) => coordinator::run(a).await,
        Command::Gateway(a) => gateway::run(a).await,
        Command::Ca { command } => ca::run(command),
        Command::Token { command } => token::run(command).await,
        Command::Join(a) => join::run(a).await,
        Command::Status(a) => status::run(a).await,
        Command::Deploy(a) => deploy::run(a).await,
        Command::Chat(a) => chat::run(a).await,
        Command::Kb { command } => kb::run(command).await,
        Command::Key { command } => key::run(command).await,
        Command::Graph { command } => graph::run(command).await,
        Command::Db { command } => graph::run_db(command).await,
        Command::Mcp { command } => mcp::run(command).await,
        Command::Prompt { command } => prompt::run(command).await,
        Command::Bench { command } => bench::run(command).await,
        Command::Audit(a) => audit::run(a).await,
        Command::Backup(a) => backup::run_backup(a).await,
        Command::Restore(a) => backup::run_restore(a),
        Command::Prometheus { command } => prometheus::run(command).await,
    }
}

/// After Ctrl-C or SIGTERM a server closes its QUIC endpoints at once (gateways move
/// in-flight requests to other replicas, replaying what was already streamed), then gives
/// its remaining tasks this long before the process exits, under any load.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Waits for Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = ctrl_c.await;
}
