//! Wires a coordinator together: PKI, raft storage and driver, the QUIC control plane
//! (which also streams the cluster view to gateways) and the lease sweeper. The HTTP
//! gateway is a separate crate; `shoal up` and `shoal coordinator` embed one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_protocol::artifact::ArtifactStore;
use shoal_protocol::quic;
use shoal_protocol::tls::Identity;
use shoal_protocol::token::JoinToken;
use tracing::info;

/// How long a leader stopping on purpose waits for another member to take over.
pub const HAND_OVER_WITHIN: Duration = Duration::from_secs(1);

/// How many times start-up retries registering the admin key (through elections).
const BOOTSTRAP_ATTEMPTS: u32 = 300;

use crate::api_keys::{self, KeyHasher};
use crate::clock::Clock;
use crate::config::ClusterConfig;
use crate::control::ControlPlane;
use crate::lease::LeaseTable;
use crate::raft::core::CoreConfig;
use crate::raft::transport::{AddressBook, Faults, Transport};
use crate::raft::wal_store::WalStorage;
use crate::raft::{DriverConfig, RaftHandle};
use crate::state::{ApiKeyRecord, Command, Scope, TokenRecord};
use crate::writer::Writer;
use crate::{pki, telemetry, CoordinatorError};

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
    pub writer: Writer,
    pub ca_hash: String,
    pub quic_addr: SocketAddr,
    /// This member's certificate (its embedded gateway calls nodes with it).
    pub identity: Identity,
    /// The QUIC side: an embedded gateway reads this member's soft state from it.
    pub control: Arc<ControlPlane>,
    /// How API keys are hashed.
    pub key_hasher: KeyHasher,
    /// Test-only fault injection (see the `fault-injection` feature).
    pub faults: Arc<Faults>,
    /// Model files registered through this member, served to nodes by hash.
    pub artifacts: ArtifactStore,
    pub id: u64,
    /// Resolves to the admin key this start generated, if the cluster had none.
    api_key_bootstrap: Option<tokio::task::JoinHandle<Result<Option<String>, CoordinatorError>>>,
    endpoint: quinn::Endpoint,
}

impl Coordinator {
    pub async fn start(opts: CoordinatorOptions) -> Result<Self, CoordinatorError> {
        shoal_protocol::install_crypto_provider();
        telemetry::install()?;
        let member = opts.config.member(opts.id).cloned().ok_or_else(|| CoordinatorError::Config {
            path: "--id".into(),
            message: format!("coordinator {} is not listed in the config", opts.id),
        })?;
        let pki = pki::load_or_create(&opts.data_dir.join("pki"), opts.config.pki.ca_dir.as_deref(), opts.id)?;
        let identity = Identity::from_pem(&pki.member.cert_pem, &pki.member.key_pem, &pki.ca.material.cert_pem)?;

        // A member that is not part of the bootstrap group starts empty and waits to be added.
        let voters = if member.initial { opts.config.voter_ids() } else { Vec::new() };
        let storage = WalStorage::open(&opts.data_dir.join("raft"), &voters)?;
        pki::owner_only_tree(&opts.data_dir.join("raft"))?;
        std::fs::set_permissions(&opts.data_dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(|e| CoordinatorError::io(&opts.data_dir, e))?;
        let book: AddressBook =
            Arc::new(std::sync::RwLock::new(opts.config.coordinators.iter().map(|m| (m.id, m.quic.clone())).collect()));
        if let Some(stored) = crate::raft::store::RaftStore::load_state(&storage)? {
            let mut b = book.write().unwrap_or_else(|p| p.into_inner());
            for c in stored.state.coordinators.values() {
                if shoal_protocol::address::split_host_port(&c.quic).is_some() {
                    b.insert(c.id, c.quic.clone());
                }
            }
        }
        let client = Arc::new(identity.client_config()?);
        let faults = Arc::new(Faults::default());
        let (report_tx, report_rx) = tokio::sync::mpsc::channel(1024);
        let transport = Transport::new(opts.id, book.clone(), client.clone(), report_tx, faults.clone());
        let t = &opts.config.timing;
        let driver = DriverConfig {
            core: CoreConfig {
                id: opts.id,
                election_ticks: t.election_ticks,
                heartbeat_ticks: t.heartbeat_ticks,
                compact_after: opts.config.raft.compact_after,
                election_range: None,
                incarnation: rand::random(),
            },
            tick: t.tick(),
            batch_proposals: opts.config.raft.batch_proposals,
        };
        let (raft, _thread) = RaftHandle::start(driver, storage, transport, report_rx)?;
        let writer = Writer::new(raft.clone(), book.clone(), Some(client));

        let clock = Clock::default();
        let artifacts = ArtifactStore::open(opts.data_dir.join("artifacts"))
            .map_err(|e| CoordinatorError::io(opts.data_dir.join("artifacts"), e))?;
        let replica_load = Arc::new(Mutex::new(std::collections::HashMap::new()));
        let keys = KeyHasher::from_ca_key(&pki.ca.material.key_pem);
        let leases = Arc::new(Mutex::new(LeaseTable::default()));
        let control = Arc::new(ControlPlane {
            raft: raft.clone(),
            writer: writer.clone(),
            ca: pki.ca.clone(),
            faults: faults.clone(),
            leases: leases.clone(),
            timing: opts.config.timing.clone(),
            clock,
            coordinators: book.clone(),
            artifacts: artifacts.clone(),
            replica_load,
            key_hasher: keys.clone(),
            configured_http: opts.config.coordinators.iter().map(|c| (c.id, c.http.to_string())).collect(),
        });
        let endpoint =
            quic::server_endpoint_keyed(member.quic_listen(), identity.server_config()?, &identity.reset_secret())?;
        let quic_addr = endpoint.local_addr().map_err(|e| CoordinatorError::io("quic endpoint", e))?;
        {
            let control = control.clone();
            tokio::spawn(quic::serve(endpoint.clone(), move |conn, stream| control.clone().handle(conn, stream)));
        }
        tokio::spawn(control.clone().run_sweeper());
        tokio::spawn(control.clone().run_reconciler());

        info!(id = opts.id, %quic_addr, ca_hash = %pki.ca_hash, "coordinator started");

        let api_key_bootstrap = member
            .initial
            .then(|| tokio::spawn(bootstrap_api_key(raft.clone(), writer.clone(), keys.clone(), opts.api_key)));
        Ok(Self {
            raft,
            writer,
            ca_hash: pki.ca_hash,
            quic_addr,
            identity,
            control,
            key_hasher: keys,
            faults,
            artifacts,
            id: opts.id,
            api_key_bootstrap,
            endpoint,
        })
    }

    /// Waits for the admin-key bootstrap; returns the key if this start generated it
    /// (print it once). Needs a raft leader, so it waits for one.
    pub async fn generated_api_key(&mut self) -> Result<Option<String>, CoordinatorError> {
        match self.api_key_bootstrap.take() {
            None => Ok(None),
            Some(task) => task.await.map_err(|e| CoordinatorError::Metrics(format!("bootstrap task: {e}")))?,
        }
    }

    /// Takes the bootstrap task to await elsewhere.
    pub fn take_api_key_bootstrap(
        &mut self,
    ) -> Option<tokio::task::JoinHandle<Result<Option<String>, CoordinatorError>>> {
        self.api_key_bootstrap.take()
    }

    /// Waits until this replica knows a leader.
    pub async fn wait_for_leader(&self, within: Duration) -> bool {
        let mut rx = self.raft.watch_status();
        let ok = tokio::time::timeout(within, rx.wait_for(|s| s.leader_id != 0)).await.is_ok();
        ok
    }

    /// Creates a join token directly (used by `shoal up` for its own node).
    pub async fn create_join_token(&self, ttl: Duration, description: &str) -> Result<JoinToken, CoordinatorError> {
        let token = JoinToken::generate();
        let now = crate::clock::unix_ms();
        let record = TokenRecord {
            id: token.id.clone(),
            secret_hash: token.secret_hash(),
            created_at_ms: now,
            expires_at_ms: now + ttl.as_millis() as u64,
            description: description.to_string(),
        };
        self.writer.command(Command::CreateToken(record)).await?;
        Ok(token)
    }

    /// Before a planned stop: hands raft leadership to another voter if this member leads
    /// (waits at most [`HAND_OVER_WITHIN`]).
    pub async fn step_down(&self) {
        if self.raft.status().is_leader() {
            self.raft.hand_over(HAND_OVER_WITHIN).await;
        }
    }

    /// Closes every QUIC connection and stops accepting new ones; waits (at most
    /// [`CLOSE_GRACE`]) for the close to go out, so that peers drop their connections to
    /// this run at once instead of sending into them until a timeout.
    pub async fn close(&self) {
        self.endpoint.close(quinn::VarInt::from_u32(0), b"shutting down");
        let _ = tokio::time::timeout(CLOSE_GRACE, self.endpoint.wait_idle()).await;
    }
}

/// How long a stopping coordinator waits for its connections' close to reach its peers.
pub const CLOSE_GRACE: Duration = Duration::from_millis(200);

/// Makes sure an admin key exists: the one given, or a generated one when the cluster has
/// none yet. Goes through the leader wherever it is.
async fn bootstrap_api_key(
    raft: RaftHandle,
    writer: Writer,
    keys: KeyHasher,
    given: Option<String>,
) -> Result<Option<String>, CoordinatorError> {
    let mut attempt = 0;
    loop {
        match try_bootstrap_api_key(&raft, &writer, &keys, given.clone()).await {
            Ok(key) => return Ok(key),
            Err(e) if attempt < BOOTSTRAP_ATTEMPTS => {
                attempt += 1;
                tracing::debug!(error = %e, attempt, "admin key bootstrap failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn try_bootstrap_api_key(
    raft: &RaftHandle,
    writer: &Writer,
    keys: &KeyHasher,
    given: Option<String>,
) -> Result<Option<String>, CoordinatorError> {
    let mut rx = raft.watch_status();
    let _ = rx.wait_for(|s| s.leader_id != 0).await;
    // Let this replica catch up before deciding whether a key exists.
    raft.read_index().await?;
    let (has_admin, has_given) = {
        let state = raft.state().read().unwrap_or_else(|p| p.into_inner());
        let given_hash = given.as_deref().map(|k| keys.hash(k));
        (
            state.api_keys.values().any(|k| k.scope == Scope::Admin),
            given_hash.is_some_and(|h| state.api_keys.contains_key(&h)),
        )
    };
    let (key, generated) = match given {
        Some(_) if has_given => return Ok(None),
        Some(k) => (k, false),
        None if has_admin => return Ok(None),
        None => (api_keys::generate_secret(), true),
    };
    let record = ApiKeyRecord {
        hash: keys.hash(&key),
        id: api_keys::generate_id(),
        name: "admin".into(),
        scope: Scope::Admin,
        created_at_ms: crate::clock::unix_ms(),
        models: vec![],
        rate_per_s: 0,
        tokens_per_minute: 0,
        expires_at_ms: 0,
    };
    writer.command(Command::AddApiKey(record)).await?;
    Ok(generated.then_some(key))
}
