use clap::{Args, Subcommand};
use serde_json::json;

use super::client::GatewayArgs;
use super::format::parse_duration_secs;

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a join token and print the `shoal join` command for a new machine.
    Create(CreateArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// How long the token stays valid: 90s, 30m, 24h, 7d.
    #[arg(long, default_value = "24h", value_parser = parse_duration_secs)]
    pub ttl: u64,
    /// A note stored with the token.
    #[arg(long)]
    pub description: Option<String>,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

pub async fn run(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create(a) => {
            let body = json!({ "ttl_seconds": a.ttl, "description": a.description });
            let r = a.gateway.post("/v1/tokens", body).await?;
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            println!("token:    {}", s("token"));
            println!("ca-hash:  {}", s("ca_hash"));
            println!("expires:  in {}s", a.ttl);
            println!();
            println!("Run this on the new machine:");
            println!("  {}", s("join_command"));
            Ok(())
        }
    }
}
