//! `shoal gateway`: a standalone gateway. It joins like a node (token + CA hash) and gets a
//! certificate with the gateway role, then serves the HTTP API from the cluster view the
//! coordinators stream to it. It restarts with `--data-dir` alone.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{anyhow, Context};
use clap::Args;
use shoal_coordinator::api_keys::KeyHasher;
use shoal_gateway::cluster::Source;
use shoal_gateway::identity::{self, GatewayIdentity};
use shoal_gateway::{Gateway, GatewayOptions};
use shoal_protocol::token::JoinToken;

#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// The coordinators' QUIC addresses, comma-separated (as `shoal token create` prints them).
    #[arg(long, value_delimiter = ',', value_parser = host_port)]
    pub coordinators: Vec<String>,
    /// A join token from `shoal token create` (first start only).
    #[arg(long, env = "SHOAL_JOIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The cluster CA's hash from `shoal token create` (first start only).
    #[arg(long, env = "SHOAL_CA_HASH")]
    pub ca_hash: Option<String>,
    /// Where the HTTP API listens (first start; saved for restarts).
    #[arg(long)]
    pub http: Option<SocketAddr>,
    /// Where the gateway's certificate and settings live.
    #[arg(long, default_value = "./shoal-gateway")]
    pub data_dir: PathBuf,
    /// A name for this gateway (defaults to the host name).
    #[arg(long)]
    pub name: Option<String>,
}

pub async fn run(a: GatewayArgs) -> anyhow::Result<()> {
    let _lock = super::preflight::lock_data_dir(&a.data_dir, "--data-dir")?;
    let id = match GatewayIdentity::load(&a.data_dir)? {
        Some(mut saved) => {
            // Flags given again override what was saved.
            if !a.coordinators.is_empty() {
                saved.coordinators = a.coordinators.clone();
            }
            if let Some(http) = a.http {
                saved.http = http;
            }
            saved.save(&a.data_dir)?;
            saved
        }
        None => {
            let missing = |what: &str| {
                anyhow!(
                    "{what} is needed the first time a gateway starts: run `shoal token create` on the cluster \
                     and pass what it prints (--coordinators, --token, --ca-hash)"
                )
            };
            if a.coordinators.is_empty() {
                return Err(missing("--coordinators"));
            }
            let token = JoinToken::parse(a.token.as_deref().ok_or_else(|| missing("--token"))?).context("--token")?;
            let ca_hash = a.ca_hash.as_deref().ok_or_else(|| missing("--ca-hash"))?;
            let http = a.http.unwrap_or_else(|| "127.0.0.1:8090".parse().expect("a valid address"));
            let name = a.name.clone().unwrap_or_else(super::join::hostname);
            let joined = identity::join(&a.coordinators, &token, ca_hash, &name, http)
                .await
                .context("joining the cluster as a gateway")?;
            joined.save(&a.data_dir)?;
            joined
        }
    };
    super::preflight::check_tcp(id.http, "gateway", "--http")?;
    let keys = KeyHasher::from_secret(&id.key_secret)
        .ok_or_else(|| anyhow!("{}: the API-key secret is damaged; join again", a.data_dir.display()))?;
    let gateway = Gateway::start(GatewayOptions {
        http: id.http,
        source: Source::Any(id.coordinators.clone()),
        client: id.tls()?.client_config()?,
        keys,
        ca_hash: id.ca_hash()?,
        prometheus: shoal_coordinator::telemetry::install()?,
        hold_ready: None,
        faults: None,
        artifacts: None,
        configured: Vec::new(),
        downloads: a.data_dir.join("downloads"),
        audit_dir: Some(a.data_dir.join("audit")),
        ca_files: None,
    })
    .await
    .context("the gateway failed to start")?;
    println!("gateway {} serving http://{}", id.gateway_id, gateway.http_addr);
    let coordinators: Vec<String> = id.coordinators.iter().map(|c| c.to_string()).collect();
    println!("  cluster view from {}", coordinators.join(", "));
    super::shutdown_signal().await;
    Ok(())
}

/// A `host:port` argument (an IP address or a DNS name).
pub fn host_port(s: &str) -> Result<String, String> {
    shoal_protocol::address::check_host_port(s).map(|()| s.to_string())
}
