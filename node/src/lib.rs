//! A Shoal node: the agent (a ractor supervisor), hardware discovery, the join, the
//! control session with the coordinator, and the node's data-plane endpoint.
//!
//! What it owns: this machine's capacity and the work placed on it.
//! What it must not do: decide placement or cluster membership; that is the coordinator's.

pub mod agent;
pub mod dataplane;
pub mod discovery;
pub mod error;
pub mod gpu;
pub mod identity;
pub mod index;
pub mod mcp_stdio;
pub mod models;
pub mod session;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ractor::{Actor, ActorRef};
use shoal_protocol::quic;
use shoal_protocol::token::JoinToken;
use shoal_protocol::{Accelerator, Capacity, Label};
use tracing::info;

pub use agent::{AgentMsg, AgentStatus};
pub use error::NodeError;
pub use identity::NodeIdentity;

/// How a node is started (`shoal join`, or the node inside `shoal up`).
pub struct NodeOptions {
    pub data_dir: PathBuf,
    /// The coordinator's QUIC address, host:port.
    pub coordinator: String,
    /// Needed only the first time (no identity in `data_dir` yet).
    pub token: Option<JoinToken>,
    pub ca_hash: Option<String>,
    pub name: String,
    /// Where the data-plane endpoint listens.
    pub listen: SocketAddr,
    pub accelerators: Vec<Accelerator>,
    pub labels: Vec<Label>,
    /// Where this node serves Prometheus metrics, reported to the coordinators so that
    /// `GET /v1/prometheus/targets` lists it (`None`: it serves none of its own).
    pub metrics: Option<SocketAddr>,
    /// How long one step of a split model may take from this node's stage to the end of its chain.
    pub stage_timeout: std::time::Duration,
    /// How this node's stages send activations to the next stage.
    pub stage_activations: shoal_protocol::pipeline::ActivationFormat,
    /// Run stdio MCP servers for the gateways (`--mcp-stdio`).
    pub mcp_stdio: bool,
}

/// A running node.
pub struct Node {
    pub node_id: String,
    pub data_addr: SocketAddr,
    pub capacity: Capacity,
    pub agent: ActorRef<AgentMsg>,
    pub host: Arc<models::ModelHost>,
    endpoint: quinn::Endpoint,
}

impl Node {
    /// Joins if needed, discovers capacity, opens the data plane and starts the agent.
    pub async fn start(opts: NodeOptions) -> Result<Self, NodeError> {
        shoal_protocol::install_crypto_provider();
        // Visible at zero before the first reconnect (dashboards and alerts read it).
        metrics::counter!(shoal_protocol::metric_names::NODE_RECONNECTS).increment(0);
        let identity = match NodeIdentity::load(&opts.data_dir)? {
            Some(id) => {
                info!(node = %id.node_id, "using the identity in {}", opts.data_dir.display());
                id
            }
            None => {
                let (Some(token), Some(ca_hash)) = (&opts.token, &opts.ca_hash) else {
                    return Err(NodeError::JoinRefused(format!(
                        "{} holds no node identity: pass --token and --ca-hash (from `shoal token create`)",
                        opts.data_dir.display()
                    )));
                };
                let id = identity::join(&opts.coordinator, token, ca_hash, &opts.name).await?;
                id.save(&opts.data_dir)?;
                id
            }
        };
        let tls = identity.tls()?;
        let capacity = discovery::discover(&opts.accelerators);
        let endpoint = quic::server_endpoint_keyed(opts.listen, tls.server_config()?, &tls.reset_secret())?;
        let data_addr = endpoint.local_addr().map_err(|e| NodeError::io("data-plane endpoint", e))?;
        let host =
            models::ModelHost::new(&opts.data_dir, tls.client_config()?, opts.stage_timeout, opts.stage_activations)?;
        {
            let host = host.clone();
            let mcp_stdio = opts.mcp_stdio;
            tokio::spawn(quic::serve(endpoint.clone(), move |conn, stream| {
                dataplane::handle(host.clone(), mcp_stdio, conn, stream)
            }));
        }
        let ctx = Arc::new(session::SessionContext {
            client: tls.client_config()?,
            identity: identity.clone(),
            coordinator: opts.coordinator,
            name: opts.name,
            data_address: data_addr.to_string(),
            capacity: capacity.clone(),
            labels: opts.labels,
            mcp_stdio: opts.mcp_stdio,
            metrics: opts.metrics.map(|a| a.to_string()).unwrap_or_default(),
            host: host.clone(),
            incarnation: rand::random::<u64>() | 1,
            known_coordinators: Default::default(),
            suspect: Default::default(),
        });
        let (agent, _) = Actor::spawn(Some(format!("node-agent-{}", identity.node_id)), agent::NodeAgent, ctx)
            .await
            .map_err(|e| NodeError::Actor(e.to_string()))?;
        Ok(Self { node_id: identity.node_id, data_addr, capacity, agent, host, endpoint })
    }

    pub async fn status(&self) -> Result<AgentStatus, NodeError> {
        ractor::call!(self.agent, AgentMsg::Status).map_err(|e| NodeError::Actor(e.to_string()))
    }

    /// Drains the node before it stops: new sequences and embeddings are refused (the
    /// router sends them elsewhere), heartbeats tell the coordinators (gateways stop
    /// routing here), and what is running finishes, for at most `grace`. Returns the
    /// number of requests still running when it gave up waiting (0: a clean drain).
    pub async fn drain(&self, grace: std::time::Duration) -> u32 {
        self.host.drain();
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let left = self.host.in_flight();
            if left == 0 || tokio::time::Instant::now() >= deadline {
                return left;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    pub fn stop(&self) {
        self.agent.stop(None);
        self.endpoint.close(0u32.into(), b"stopping");
    }
}
