//! Wires a coordinator together: PKI, raft storage and driver, the QUIC control plane,
//! the lease sweeper and the HTTP gateway.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use shoal_protocol::quic;
use shoal_protocol::tls::Identity;
use shoal_protocol::token::JoinToken;
use tracing::{info, warn};

use crate::clock::Clock;
use crate::config::ClusterConfig;
use crate::control::ControlPlane;
use crate::gateway::{self, GatewayState};
use crate::lease::LeaseTable;
use crate::raft::storage::SledStorage;
use crate::raft::transport::Transport;
use crate::raft::RaftHandle;
use crate::state::{ApiKeyRecord, Command, Scope, TokenRecord};
use crate::{pki, telemetry, CoordinatorError};

/// How long start-up waits for a leader before it gives up on bootstrap chores.
const LEADER_WAIT: Duration = Duration::from_secs(15);

/// What `shoal up` / `shoal coordinator` pass in.
pub struct CoordinatorOptions {
    pub config: ClusterConfig,
    pub id: u64,
    pub data_dir: PathBuf,
    /// An admin API key to make sure exists.
    pub api_key: Option<String>,
}

/// A running coordinator.
pub struct Coordinator {
    pub raft: RaftHandle,
    pub ca_hash: String,
    pub quic_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// Set when this start generated the first admin key (print it once).
    pub generated_api_key: Option<String>,
    endpoint: quinn::Endpoint,
}

impl Coordinator {
    pub async fn start(opts: CoordinatorOptions) -> Result<Self, CoordinatorError> {
        shoal_protocol::install_crypto_provider();
        let prometheus = telemetry::install()?;
        let member =
            opts.config
                .member(opts.id)
                .cloned()
                .ok_or_else(|| CoordinatorError::Config {
                    path: "--id".into(),
                    message: format!("coordinator {} is not listed in the config", opts.id),
                })?;
        let pki = pki::load_or_create(&opts.data_dir.join("pki"), opts.id)?;
        let identity = Identity::from_pem(
            &pki.member.cert_pem,
            &pki.member.key_pem,
            &pki.ca.material.cert_pem,
        )?;

        let storage = SledStorage::open(&opts.data_dir.join("raft"), &opts.config.voter_ids())?;
        let peers: Vec<(u64, SocketAddr)> = opts
            .config
            .coordinators
            .iter()
            .map(|m| (m.id, m.quic))
            .collect();
        let transport = if peers.len() > 1 {
            Transport::start(opts.id, peers, Arc::new(identity.client_config()?))
        } else {
            Transport::none()
        };
        let (raft, _thread) = RaftHandle::start(opts.id, &opts.config.timing, storage, transport)?;

        let clock = Clock::default();
        let leases = Arc::new(Mutex::new(LeaseTable::default()));
        let control = Arc::new(ControlPlane {
            raft: raft.clone(),
            ca: pki.ca.clone(),
            leases: leases.clone(),
            timing: opts.config.timing.clone(),
            clock,
            coordinators: opts
                .config
                .coordinators
                .iter()
                .map(|m| (m.id, m.quic))
                .collect::<HashMap<_, _>>(),
        });
        let endpoint = quic::server_endpoint(member.quic, identity.server_config()?)?;
        let quic_addr = endpoint
            .local_addr()
            .map_err(|e| CoordinatorError::io("quic endpoint", e))?;
        {
            let control = control.clone();
            tokio::spawn(quic::serve(endpoint.clone(), move |conn, stream| {
                control.clone().handle(conn, stream)
            }));
        }
        tokio::spawn(control.clone().run_sweeper());

        let listener = tokio::net::TcpListener::bind(member.http)
            .await
            .map_err(|e| CoordinatorError::io(format!("gateway {}", member.http), e))?;
        let http_addr = listener
            .local_addr()
            .map_err(|e| CoordinatorError::io("gateway", e))?;
        let gw = Arc::new(GatewayState {
            raft: raft.clone(),
            leases,
            prometheus,
            config: opts.config.clone(),
            self_id: opts.id,
            ca_hash: pki.ca_hash.clone(),
            clock,
        });
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, gateway::router(gw)).await {
                warn!(error = %e, "gateway stopped");
            }
        });
        info!(id = opts.id, %quic_addr, %http_addr, ca_hash = %pki.ca_hash, "coordinator started");

        let mut me = Self {
            raft,
            ca_hash: pki.ca_hash,
            quic_addr,
            http_addr,
            generated_api_key: None,
            endpoint,
        };
        me.bootstrap_api_key(opts.api_key).await?;
        Ok(me)
    }

    /// Waits until this replica knows a leader.
    pub async fn wait_for_leader(&self, within: Duration) -> bool {
        let mut rx = self.raft.watch_status();
        let ok = tokio::time::timeout(within, rx.wait_for(|s| s.leader_id != 0))
            .await
            .is_ok();
        ok
    }

    /// Makes sure an admin key exists: the one given, or a generated one when the cluster
    /// has none yet.
    async fn bootstrap_api_key(&mut self, given: Option<String>) -> Result<(), CoordinatorError> {
        if !self.wait_for_leader(LEADER_WAIT).await {
            warn!("no raft leader yet; skipping API key bootstrap");
            return Ok(());
        }
        if !self.raft.status().is_leader() {
            return Ok(());
        }
        let has_admin = {
            let state = self.raft.state().read().unwrap_or_else(|p| p.into_inner());
            state.api_keys.values().any(|k| k.scope == Scope::Admin)
        };
        let key = match given {
            Some(k) => k,
            None if has_admin => return Ok(()),
            None => {
                let k = format!("sk-shoal-{:032x}", rand::rng().random::<u128>());
                self.generated_api_key = Some(k.clone());
                k
            }
        };
        let record = ApiKeyRecord {
            hash: crate::gateway::hash_key(&key),
            name: "admin".into(),
            scope: Scope::Admin,
            created_at_ms: crate::clock::unix_ms(),
        };
        self.raft.propose(Command::AddApiKey(record)).await?;
        Ok(())
    }

    /// Creates a join token directly (used by `shoal up` for its own node).
    pub async fn create_join_token(
        &self,
        ttl: Duration,
        description: &str,
    ) -> Result<JoinToken, CoordinatorError> {
        let token = JoinToken::generate();
        let now = crate::clock::unix_ms();
        let record = TokenRecord {
            id: token.id.clone(),
            secret_hash: token.secret_hash(),
            created_at_ms: now,
            expires_at_ms: now + ttl.as_millis() as u64,
            description: description.to_string(),
        };
        self.raft.propose(Command::CreateToken(record)).await?;
        Ok(token)
    }

    /// Stops accepting QUIC connections.
    pub fn close(&self) {
        self.endpoint
            .close(quinn::VarInt::from_u32(0), b"shutting down");
    }
}
