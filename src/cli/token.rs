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
    /// How to print it: text (with the commands to run), env (SHOAL_JOIN_TOKEN=…,
    /// SHOAL_CA_HASH=…, SHOAL_COORDINATOR=… lines, e.g. for a Kubernetes Secret), or json.
    #[arg(long, value_enum, default_value_t = TokenFormat::Text)]
    pub format: TokenFormat,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

/// `--format env`: each variable and the answer's field it holds. The first two are what
/// `shoal join` and `shoal gateway` read.
pub const ENV_FORMAT: [(&str, &str); 3] =
    [("SHOAL_JOIN_TOKEN", "token"), ("SHOAL_CA_HASH", "ca_hash"), ("SHOAL_COORDINATOR", "coordinator")];

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TokenFormat {
    Text,
    Env,
    Json,
}

pub async fn run(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create(a) => {
            let body = json!({ "ttl_seconds": a.ttl, "description": a.description });
            let r = a.gateway.post("/v1/tokens", body).await?;
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            match a.format {
                TokenFormat::Json => {
                    println!("{}", serde_json::to_string_pretty(&r)?);
                    return Ok(());
                }
                TokenFormat::Env => {
                    for (name, field) in ENV_FORMAT {
                        println!("{name}={}", s(field));
                    }
                    return Ok(());
                }
                TokenFormat::Text => {}
            }
            println!("token:    {}", s("token"));
            println!("ca-hash:  {}", s("ca_hash"));
            println!("expires:  in {}s", a.ttl);
            println!();
            println!("Run this on the new machine:");
            println!("  {}", s("join_command"));
            if let Some(local) = same_host_hint(&s("coordinator"), &s("join_command")) {
                println!();
                println!("Or, for another node on this same machine (its own data dir and data-plane port):");
                println!("  {local}");
            }
            let gateway = s("gateway_command");
            if !gateway.is_empty() {
                println!();
                println!("Or, to add a standalone gateway (HTTP API) on another machine:");
                println!("  {gateway}");
            }
            Ok(())
        }
    }
}

/// For a coordinator on loopback, the join command with the flags a second node on the same
/// machine needs (its own data dir; `--listen` to pick the port yourself).
pub fn same_host_hint(coordinator: &str, join_command: &str) -> Option<String> {
    let addr: std::net::SocketAddr = coordinator.parse().ok()?;
    addr.ip().is_loopback().then(|| format!("{join_command} --data-dir ./shoal-node-2 --listen 127.0.0.1:7201"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loopback_coordinator_gets_the_same_machine_flags() {
        let join = "shoal join 127.0.0.1:7100 --token a.b --ca-hash sha256:x";
        assert_eq!(
            same_host_hint("127.0.0.1:7100", join).as_deref(),
            Some("shoal join 127.0.0.1:7100 --token a.b --ca-hash sha256:x --data-dir ./shoal-node-2 --listen 127.0.0.1:7201")
        );
        assert_eq!(same_host_hint("10.0.0.5:7100", join), None);
    }
}
