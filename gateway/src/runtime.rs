//! Wires a gateway together: the cluster view, the router, retrieval, and the HTTP server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use metrics_exporter_prometheus::PrometheusHandle;
use shoal_coordinator::api_keys::KeyHasher;
use shoal_coordinator::raft::transport::Faults;
use shoal_protocol::artifact::ArtifactStore;
use tracing::info;

use crate::clock::Clock;
use crate::cluster::{Cluster, Source};
use crate::http::{self, GatewayState};
use crate::GatewayError;

/// What `shoal gateway` (standalone) or `shoal up` / `shoal coordinator` (embedded) pass in.
pub struct GatewayOptions {
    /// Where the HTTP API listens.
    pub http: SocketAddr,
    /// Which coordinators stream the view.
    pub source: Source,
    /// The certificate this gateway talks to coordinators and nodes with.
    pub client: quinn::ClientConfig,
    pub keys: KeyHasher,
    pub ca_hash: String,
    pub prometheus: PrometheusHandle,
    /// `/readyz` answers 503 with this reason until [`Gateway::ready`] is called.
    pub hold_ready: Option<String>,
    /// Test-only fault injection of an embedded gateway's coordinator.
    pub faults: Option<Arc<Faults>>,
    /// The artifact store of an embedded gateway's coordinator, and its id.
    pub artifacts: Option<(ArtifactStore, u64)>,
    /// Coordinators from the cluster config: `(id, quic, http)`.
    pub configured: Vec<(u64, String, String)>,
    /// Where `hf://` sources are downloaded.
    pub downloads: PathBuf,
    /// Where the audit log is kept (`None`: no audit log).
    pub audit_dir: Option<PathBuf>,
    /// The cluster CA's certificate and key (a coordinator's embedded gateway), for backups.
    pub ca_files: Option<(PathBuf, PathBuf)>,
}

/// A running gateway.
pub struct Gateway {
    pub http_addr: SocketAddr,
    pub cluster: Arc<Cluster>,
    held: Arc<Mutex<Option<String>>>,
    artifacts: Option<(ArtifactStore, u64)>,
    downloads: PathBuf,
}

impl Gateway {
    pub async fn start(opts: GatewayOptions) -> Result<Self, GatewayError> {
        shoal_protocol::install_crypto_provider();
        let cluster = Cluster::new(opts.source.clone(), opts.client.clone())?;
        tokio::spawn(cluster.clone().run());
        let listener = tokio::net::TcpListener::bind(opts.http)
            .await
            .map_err(|e| GatewayError::io(format!("http {}", opts.http), e))?;
        let http_addr = listener.local_addr().map_err(|e| GatewayError::io("http", e))?;
        let clock = Clock::default();
        let router = Arc::new(crate::router::Router::new(cluster.clone(), opts.client.clone())?);
        let retrieval =
            Arc::new(crate::retrieval::Retrieval::new(cluster.clone(), router.clone(), opts.client.clone(), clock)?);
        let held = Arc::new(Mutex::new(opts.hold_ready.clone()));
        let audit = match &opts.audit_dir {
            Some(dir) => Some(crate::audit::AuditLog::open(dir).map_err(|e| GatewayError::io(dir, e))?),
            None => None,
        };
        let graphs = crate::graphs::Graphs::new(
            cluster.clone(),
            router.clone(),
            retrieval.clone(),
            clock,
            opts.artifacts.clone(),
        );
        if matches!(opts.source, Source::Embedded { .. }) {
            // Runs execute on the leader's embedded gateway; the runner idles elsewhere.
            tokio::spawn(crate::graphs::runner::run(graphs.clone()));
        }
        let history = Arc::new(crate::history::History::default());
        tokio::spawn(sample_history(history.clone(), cluster.clone(), clock));
        let gw = Arc::new(GatewayState {
            cluster: cluster.clone(),
            faults: opts.faults,
            keys: opts.keys,
            quotas: Default::default(),
            uploads: Arc::new(tokio::sync::Semaphore::new(http::knowledge::MAX_CONCURRENT_UPLOADS)),
            held: held.clone(),
            prometheus: opts.prometheus,
            configured: opts.configured,
            ca_hash: opts.ca_hash,
            clock,
            router,
            retrieval,
            artifacts: opts.artifacts.clone(),
            downloads: opts.downloads.clone(),
            graphs,
            audit,
            ca_files: opts.ca_files.clone(),
            history,
        });
        tokio::spawn(async move {
            http::server::serve(listener, http::router(gw), http::server::HttpLimits::default()).await;
        });
        info!(%http_addr, source = ?opts.source, "gateway started");
        Ok(Self { http_addr, cluster, held, artifacts: opts.artifacts, downloads: opts.downloads })
    }

    /// The gateway a coordinator embeds: it watches that coordinator only (same process),
    /// shares its artifact store, and listens on the member's HTTP address from `config`.
    pub async fn embedded(
        coord: &shoal_coordinator::Coordinator,
        config: &shoal_coordinator::config::ClusterConfig,
        data_dir: &std::path::Path,
        hold_ready: Option<String>,
        fault_injection: bool,
    ) -> Result<Self, GatewayError> {
        let member = config
            .member(coord.id)
            .ok_or_else(|| GatewayError::Model(format!("coordinator {} is not listed in the config", coord.id)))?;
        Self::start(GatewayOptions {
            http: member.http_listen(),
            source: Source::Embedded {
                quic: coord.quic_addr,
                writer: coord.writer.clone(),
                control: coord.control.clone(),
            },
            client: coord.identity.client_config()?,
            keys: coord.key_hasher.clone(),
            ca_hash: coord.ca_hash.clone(),
            prometheus: shoal_coordinator::telemetry::install()?,
            hold_ready,
            faults: fault_injection.then(|| coord.faults.clone()),
            artifacts: Some((coord.artifacts.clone(), coord.id)),
            configured: config.coordinators.iter().map(|c| (c.id, c.quic.to_string(), c.http.to_string())).collect(),
            downloads: data_dir.join("downloads"),
            audit_dir: Some(data_dir.join("audit")),
            ca_files: {
                let home = config.pki.ca_dir.clone().unwrap_or_else(|| data_dir.join("pki"));
                Some((home.join("ca.crt"), home.join("ca.key")))
            },
        })
        .await
    }

    /// Lets `/readyz` answer ready (see [`GatewayOptions::hold_ready`]).
    pub fn ready(&self) {
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Registers (if `source` is given) and deploys a model, as `POST /v1/deployments` does.
    pub async fn deploy(&self, req: crate::registry::DeployRequest) -> Result<(String, u32), GatewayError> {
        crate::registry::deploy(&self.cluster, self.artifacts.as_ref(), &self.downloads, req).await
    }
}

/// Samples the gateway's counters and the nodes' load for the console's charts.
async fn sample_history(history: Arc<crate::history::History>, cluster: Arc<Cluster>, clock: Clock) {
    let mut tick = tokio::time::interval(crate::history::SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let soft = cluster.status().soft;
        let nodes = {
            let state = cluster.state().read().unwrap_or_else(|p| p.into_inner());
            soft.leases
                .iter()
                .map(|l| crate::history::NodeLoad {
                    node: state.nodes.get(&l.node).map(|n| n.name.clone()).unwrap_or_else(|| l.node.clone()),
                    cpu_load: f64::from(l.load.cpu_load_milli) / 1000.0,
                    in_flight: l.load.in_flight,
                    queue_depth: l.load.queue_depth,
                })
                .collect()
        };
        history.sample(clock.unix_ms(), nodes);
    }
}
