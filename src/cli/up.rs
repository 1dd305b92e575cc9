use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use shoal_coordinator::config::{self, ClusterConfig};
use shoal_coordinator::{Coordinator, CoordinatorOptions};
use shoal_node::{Node, NodeIdentity};

use super::join::{describe, NodeArgs};
use shoal_gateway::registry::{discover_models, DeployRequest};
use shoal_gateway::Gateway;

/// Deploys each model in `dir` with one replica; reports failures and goes on.
async fn deploy_models(coord: &Gateway, dir: &std::path::Path) {
    let found = match discover_models(dir) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("  models       none ({} does not exist; ./scripts/fetch-models.sh fills it)", dir.display());
            return;
        }
        Err(e) => {
            println!("  models       cannot read {}: {e}", dir.display());
            return;
        }
    };
    if found.is_empty() {
        println!("  models       none found in {}", dir.display());
    }
    for (name, source) in found {
        let req = DeployRequest {
            name: name.clone(),
            model: None,
            source: Some(source.clone()),
            replicas: 1,
            shards: 0,
            sha256: None,
            force: false,
        };
        match coord.deploy(req).await {
            Ok((_, version)) => println!("  model        {name} v{version} deployed from {source}"),
            Err(e) => println!("  model        {name}: not deployed: {e}"),
        }
    }
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Where the coordinator's and the node's state live.
    #[arg(long, default_value = "./shoal-data")]
    pub data_dir: PathBuf,
    /// The coordinator's QUIC address (nodes join here).
    #[arg(long, default_value = config::DEFAULT_QUIC_ADDR)]
    pub listen: SocketAddr,
    /// The HTTP gateway's address.
    #[arg(long, default_value = config::DEFAULT_HTTP_ADDR)]
    pub http: SocketAddr,
    /// The embedded node's data-plane QUIC address.
    #[arg(long, default_value = "127.0.0.1:7200")]
    pub node_listen: SocketAddr,
    /// Admin API key (generated and printed once if none exists). Prefer SHOAL_API_KEY or
    /// --api-key-file: a key on the command line is visible to other users in `ps`.
    #[arg(long, env = "SHOAL_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// A file holding the admin API key (its first line).
    #[arg(long, env = "SHOAL_API_KEY_FILE", conflicts_with = "api_key")]
    pub api_key_file: Option<PathBuf>,
    /// How often nodes heartbeat, in milliseconds.
    #[arg(long, default_value_t = config::DEFAULT_HEARTBEAT_MS)]
    pub heartbeat_ms: u64,
    /// How long a silent node keeps its lease, in milliseconds.
    #[arg(long, default_value_t = config::DEFAULT_LEASE_MS)]
    pub lease_ms: u64,
    /// Deploy every model found here (GGUF files, safetensors folders); a missing folder deploys nothing.
    #[arg(long, default_value = "./models")]
    pub models: PathBuf,
    #[command(flatten)]
    pub node: NodeArgs,
}

pub async fn run(a: UpArgs) -> anyhow::Result<()> {
    let api_key = super::client::admin_key(a.api_key.as_deref(), a.api_key_file.as_deref())?;
    let _lock = super::preflight::lock_data_dir(&a.data_dir, "--data-dir")?;
    super::preflight::check_tcp(a.http, "gateway", "--http")?;
    super::preflight::check_udp(a.listen, "coordinator QUIC", "--listen")?;
    super::preflight::check_udp(a.node_listen, "node data plane", "--node-listen")?;
    let mut cfg = ClusterConfig::single(a.listen, a.http);
    cfg.timing.heartbeat_ms = a.heartbeat_ms;
    cfg.timing.lease_ms = a.lease_ms;
    let cfg = cfg.validate().map_err(anyhow::Error::msg)?;
    let mut coord = Coordinator::start(CoordinatorOptions {
        config: cfg.clone(),
        id: 1,
        data_dir: a.data_dir.join("coordinator"),
        api_key,
    })
    .await
    .context("coordinator failed to start")?;
    let hold = Some(format!("registering the models in {}", a.models.display()));
    let gateway = Gateway::embedded(&coord, &cfg, &a.data_dir.join("coordinator"), hold, false)
        .await
        .context("the embedded gateway failed to start")?;

    // The embedded node joins through the same path as any other: a token over QUIC.
    let node_dir = a.data_dir.join("node");
    let mut opts = a.node.options(node_dir.clone(), coord.quic_addr.to_string(), a.node_listen)?;
    if NodeIdentity::load(&node_dir)?.is_none() {
        opts.token = Some(coord.create_join_token(Duration::from_secs(300), "shoal up: embedded node").await?);
        opts.ca_hash = Some(coord.ca_hash.clone());
    }
    let node = Node::start(opts).await.context("the embedded node failed to start")?;

    println!("Shoal is up.");
    println!("  gateway      http://{}", gateway.http_addr);
    println!("  console      http://{}/  (sign in with the admin key)", gateway.http_addr);
    println!("  coordinator  {} (QUIC)", coord.quic_addr);
    println!("  CA hash      {}", coord.ca_hash);
    println!("  node         {} ({})", node.node_id, describe(&node));
    match coord.generated_api_key().await? {
        Some(key) => println!("  admin key    {key}  (shown once; keep it)"),
        None => println!("  admin key    the one given with --api-key / SHOAL_API_KEY, or printed at first start"),
    }
    if !gateway.cluster.wait_loaded(Duration::from_secs(30)).await {
        println!("  warning      the gateway has no cluster view yet; models are registered as it arrives");
    }
    deploy_models(&gateway, &a.models).await;
    gateway.ready();
    println!("Join more machines with: shoal token create --gateway http://{} --api-key KEY", gateway.http_addr);
    super::shutdown_signal().await;
    node.stop();
    coord.step_down().await;
    coord.close().await;
    Ok(())
}
