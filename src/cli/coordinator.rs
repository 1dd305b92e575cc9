use std::path::PathBuf;

use anyhow::{anyhow, Context};
use clap::{Args, Subcommand};
use serde_json::json;
use shoal_coordinator::config::ClusterConfig;
use shoal_coordinator::{Coordinator, CoordinatorOptions};
use shoal_gateway::Gateway;

use super::client::GatewayArgs;

/// Environment switch for the test-only fault-injection endpoint.
const FAULT_INJECTION_ENV: &str = "SHOAL_FAULT_INJECTION";

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct CoordinatorArgs {
    #[command(subcommand)]
    pub command: Option<MemberCommand>,
    /// The raft group's config: every member's id, QUIC and HTTP address (see cluster-configs/).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// This member's id in the config.
    #[arg(long)]
    pub id: Option<u64>,
    /// Where raft's log, the state and the PKI live.
    #[arg(long, default_value = "./shoal-data")]
    pub data_dir: PathBuf,
    /// Bootstrap admin API key (generated and printed once if none exists). Prefer SHOAL_API_KEY or
    /// --api-key-file: a key on the command line is visible to other users in `ps`.
    #[arg(long, env = "SHOAL_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// A file holding the admin API key (its first line).
    #[arg(long, env = "SHOAL_API_KEY_FILE", conflicts_with = "api_key")]
    pub api_key_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum MemberCommand {
    /// Add a coordinator (already running, started with an empty data dir) as a voter.
    Add {
        /// The new member's id.
        id: u64,
        /// Its QUIC address, host:port (an IP address or a DNS name).
        #[arg(long, value_parser = super::gateway::host_port)]
        quic: String,
        /// Its gateway address, host:port.
        #[arg(long, value_parser = super::gateway::host_port)]
        http: String,
        /// Add it even if it does not answer yet (it must then be started with an empty data
        /// dir and `initial = false`).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Remove a coordinator from the raft group.
    Remove {
        /// The member's id.
        id: u64,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
}

pub async fn run(a: CoordinatorArgs) -> anyhow::Result<()> {
    match a.command {
        Some(MemberCommand::Add { id, quic, http, force, gateway }) => {
            let body = json!({ "id": id, "quic": quic, "http": http, "force": force });
            let r = gateway.post("/v1/coordinators", body).await?;
            println!("coordinator {id} added; voters now {}", r["voters"]);
            Ok(())
        }
        Some(MemberCommand::Remove { id, gateway }) => {
            let r = gateway.delete(&format!("/v1/coordinators/{id}")).await?;
            println!("coordinator {id} removed; voters now {}", r["voters"]);
            Ok(())
        }
        None => serve(a).await,
    }
}

async fn serve(a: CoordinatorArgs) -> anyhow::Result<()> {
    let path = a.config.ok_or_else(|| anyhow!("--config is required to run a coordinator"))?;
    let id = a.id.ok_or_else(|| anyhow!("--id is required to run a coordinator"))?;
    let config = ClusterConfig::load(&path)?;
    let api_key = super::client::admin_key(a.api_key.as_deref(), a.api_key_file.as_deref())?;
    let _lock = super::preflight::lock_data_dir(&a.data_dir, "--data-dir")?;
    if let Some(m) = config.member(id) {
        let fix = format!("the address of member {id} in {}", path.display());
        super::preflight::check_tcp(m.http_listen(), "gateway", &fix)?;
        super::preflight::check_udp(m.quic_listen(), "coordinator QUIC", &fix)?;
    }
    let fault_injection = std::env::var(FAULT_INJECTION_ENV).is_ok_and(|v| v == "1");
    let mut coord =
        Coordinator::start(CoordinatorOptions { config: config.clone(), id, data_dir: a.data_dir.clone(), api_key })
            .await
            .context("coordinator failed to start")?;
    let gateway = Gateway::embedded(&coord, &config, &a.data_dir, None, fault_injection)
        .await
        .context("the embedded gateway failed to start")?;
    println!("coordinator {id} serving: QUIC {} · gateway http://{}", coord.quic_addr, gateway.http_addr);
    println!("CA hash: {}", coord.ca_hash);
    if let Some(task) = coord.take_api_key_bootstrap() {
        tokio::spawn(async move {
            match task.await {
                Ok(Ok(Some(key))) => println!("admin API key (shown once, keep it): {key}"),
                Ok(Err(e)) => tracing::warn!(error = %e, "could not bootstrap the admin API key"),
                _ => {}
            }
        });
    }
    super::shutdown_signal().await;
    coord.step_down().await;
    coord.close().await;
    Ok(())
}
