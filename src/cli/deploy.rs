use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use serde_json::json;

use super::client::GatewayArgs;
use super::status::deployments_table;

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The deployment's name: what clients pass as `model`.
    pub name: String,
    /// Where the model comes from: file:///path/model.gguf, file:///path/safetensors-folder,
    /// hf://org/repo/file.gguf or hf://org/repo. Paths are read by the coordinator.
    #[arg(long)]
    pub source: Option<String>,
    /// The registered model to serve (defaults to NAME).
    #[arg(long)]
    pub model: Option<String>,
    /// How many replicas to run (one per node; for a split model, chains of stages).
    #[arg(long, default_value_t = 1)]
    pub replicas: u32,
    /// Split the model's layers across K nodes (pipeline stages); 0 = only when no single
    /// node has the memory for it.
    #[arg(long, default_value_t = 0, value_name = "K")]
    pub shards: u32,
    /// Refuse the source unless its SHA-256 is this.
    #[arg(long)]
    pub sha256: Option<String>,
    /// Allow an existing deployment to change what it serves (chat to embeddings or back).
    #[arg(long)]
    pub force: bool,
    /// Wait until this many replicas are ready (0 = don't wait).
    #[arg(long, default_value_t = 0)]
    pub wait_ready: u32,
    /// How long --wait-ready waits, in seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

pub async fn run(a: DeployArgs) -> anyhow::Result<()> {
    let source = a.source.as_ref().map(|s| {
        // A bare path is taken relative to where the command runs.
        if s.contains("://") {
            s.clone()
        } else {
            let p = std::fs::canonicalize(s).unwrap_or_else(|_| s.into());
            format!("file://{}", p.display())
        }
    });
    let body = json!({
        "name": a.name, "model": a.model, "source": source, "replicas": a.replicas, "shards": a.shards,
        "sha256": a.sha256, "force": a.force,
    });
    let d = a.gateway.post("/v1/deployments", body).await?;
    let shards = if a.shards >= 2 { format!(", each split into {} shards", a.shards) } else { String::new() };
    println!(
        "deployed {} → {} v{} ({} replicas{shards}, sha256 {})",
        a.name,
        d["model"].as_str().unwrap_or(""),
        d["version"],
        a.replicas,
        d["sha256"].as_str().unwrap_or("")
    );
    if a.wait_ready > 0 {
        let deadline = Instant::now() + Duration::from_secs(a.timeout);
        loop {
            let d = a.gateway.get(&format!("/v1/deployments/{}", a.name)).await?;
            let ready = d["ready_replicas"].as_u64().unwrap_or(0);
            if ready >= a.wait_ready as u64 {
                println!("{ready} replicas ready");
                break;
            }
            if Instant::now() > deadline {
                bail!("{ready} of {} replicas ready after {}s", a.wait_ready, a.timeout);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let all = a.gateway.get("/v1/deployments").await?;
    print!("{}", deployments_table(&all));
    Ok(())
}
