use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use shoal_coordinator::config::ClusterConfig;
use shoal_coordinator::{Coordinator, CoordinatorOptions};

#[derive(Debug, Args)]
pub struct CoordinatorArgs {
    /// The raft group's config: every member's id, QUIC and HTTP address (see cluster-configs/).
    #[arg(long)]
    pub config: PathBuf,
    /// This member's id in the config.
    #[arg(long)]
    pub id: u64,
    /// Where raft's log, the state and the PKI live.
    #[arg(long, default_value = "./shoal-data")]
    pub data_dir: PathBuf,
    /// Bootstrap admin API key (generated and printed once if none exists).
    #[arg(long, env = "SHOAL_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

pub async fn run(a: CoordinatorArgs) -> anyhow::Result<()> {
    let config = ClusterConfig::load(&a.config)?;
    let coord = Coordinator::start(CoordinatorOptions {
        config,
        id: a.id,
        data_dir: a.data_dir,
        api_key: a.api_key,
    })
    .await
    .context("coordinator failed to start")?;
    println!(
        "coordinator {} serving: QUIC {} · gateway http://{}",
        a.id, coord.quic_addr, coord.http_addr
    );
    println!("CA hash: {}", coord.ca_hash);
    if let Some(key) = &coord.generated_api_key {
        println!("admin API key (shown once, keep it): {key}");
    }
    super::shutdown_signal().await;
    coord.close();
    Ok(())
}
