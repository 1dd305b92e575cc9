//! Task graphs on the gateway: definitions (built-in and registered), the runner actor
//! that executes runs durably on the raft leader's embedded gateway, and the step
//! executor. The pure part (definitions, checks, the planner) is the `shoal-graph` crate.

pub mod agent;
pub mod events;
pub mod mcp;
pub mod runner;
pub mod steps;
pub mod tool;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use shoal_coordinator::state::{
    ClusterState, DatabaseKind, McpServerRecord, McpTransport, RunRecord, RunStatus, StepOutcome, StepRecord,
};
use shoal_graph::plan::{StepResult, StepStatus};
use shoal_graph::{Catalog, Graph};
use shoal_protocol::artifact::ArtifactStore;

use crate::clock::Clock;
use crate::cluster::Cluster;
use crate::retrieval::Retrieval;
use crate::router::Router;

/// Step outputs larger than this go to the artifact store (the state keeps their hash), so
/// a thousand retained runs stay a few megabytes of raft state.
pub const INLINE_OUTPUT_BYTES: usize = 8 * 1024;
/// How long a coordinator may take to accept a connection for a large output.
const CONNECT_WAIT: Duration = Duration::from_secs(3);
/// How long one copy of a large output may take between coordinators.
const TRANSFER_WAIT: Duration = Duration::from_secs(10);
/// How long a step's commit waits for a majority of coordinators to hold its large output.
const REPLICATE_WAIT: Duration = Duration::from_secs(10);

/// How many finished runs the state keeps, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub keep_finished: u32,
    pub max_age_ms: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Self { keep_finished: 1000, max_age_ms: 7 * 24 * 3600 * 1000 }
    }
}

/// What graph handling on a gateway shares.
pub struct Graphs {
    pub cluster: Arc<Cluster>,
    pub router: Arc<Router>,
    pub retrieval: Arc<Retrieval>,
    pub clock: Clock,
    pub events: events::RunEvents,
    pub retention: Retention,
    /// The artifact store for large outputs, and the coordinator it belongs to (embedded
    /// gateways only: standalone ones do not run graphs).
    pub artifacts: Option<(ArtifactStore, u64)>,
    builtins: BTreeMap<String, Graph>,
    /// Large outputs being mirrored from the coordinator that stored them.
    mirroring: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// Why a graph or run cannot be had.
#[derive(Debug, Clone, PartialEq)]
pub enum GraphLookup {
    NotFound(String),
    Corrupt(String),
}

impl std::fmt::Display for GraphLookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GraphLookup::NotFound(s) | GraphLookup::Corrupt(s) => f.write_str(s),
        }
    }
}

impl Graphs {
    pub fn new(
        cluster: Arc<Cluster>,
        router: Arc<Router>,
        retrieval: Arc<Retrieval>,
        clock: Clock,
        artifacts: Option<(ArtifactStore, u64)>,
    ) -> Arc<Self> {
        Arc::new(Self {
            cluster,
            router,
            retrieval,
            clock,
            events: Default::default(),
            retention: Retention::default(),
            artifacts,
            builtins: shoal_graph::builtin::builtins(),
            mirroring: Default::default(),
        })
    }

    /// Where this process is, as runs record it.
    pub fn here(&self) -> String {
        match &self.artifacts {
            Some((_, id)) => format!("coordinator {id}"),
            None => "gateway".into(),
        }
    }

    pub fn builtins(&self) -> &BTreeMap<String, Graph> {
        &self.builtins
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, ClusterState> {
        self.cluster.state().read().unwrap_or_else(|p| p.into_inner())
    }

    /// A graph's definition: a built-in (version 0), or a registered version (`None`: the
    /// latest).
    pub fn definition(&self, name: &str, version: Option<u32>) -> Result<(u32, Graph), GraphLookup> {
        if let Some(g) = self.builtins.get(name) {
            return Ok((0, g.clone()));
        }
        let state = self.read();
        let record = state.graphs.get(name).ok_or_else(|| GraphLookup::NotFound(format!("no graph named '{name}'")))?;
        let v = match version {
            Some(v) => {
                record.version(v).ok_or_else(|| GraphLookup::NotFound(format!("graph '{name}' has no version {v}")))?
            }
            None => record.latest().ok_or_else(|| GraphLookup::NotFound(format!("graph '{name}' has no versions")))?,
        };
        let g = serde_json::from_str::<Graph>(&v.definition).map_err(|e| {
            GraphLookup::Corrupt(format!("graph '{name}' v{}: stored definition unreadable: {e}", v.version))
        })?;
        Ok((v.version, g))
    }

    /// What the cluster has, for checking definitions.
    pub fn catalog(&self) -> Catalog {
        let state = self.read();
        let mut catalog = Catalog::default();
        for name in state.deployments.keys() {
            match state.deployed_version(name).map(|v| v.kind()) {
                Some(shoal_protocol::EngineKind::Embed) => catalog.embedding_models.insert(name.clone()),
                Some(_) => catalog.chat_models.insert(name.clone()),
                None => false,
            };
        }
        catalog.knowledge_bases = state.knowledge_bases.keys().cloned().collect();
        catalog.databases = state.databases.keys().cloned().collect();
        catalog.mcp_servers = state
            .mcp_servers
            .values()
            .map(|s| (s.name.clone(), (s.transport == McpTransport::Http).then(|| s.url.clone())))
            .collect();
        drop(state);
        catalog.graphs = self.builtins.clone();
        let names: Vec<String> = self.read().graphs.keys().cloned().collect();
        for name in names {
            if let Ok((_, g)) = self.definition(&name, None) {
                catalog.graphs.insert(name, g);
            }
        }
        catalog
    }

    /// A registered database, to connect to.
    pub fn database(&self, name: &str) -> Result<shoal_sql::Database, String> {
        let state = self.read();
        let db = state.databases.get(name).ok_or_else(|| {
            let known: Vec<&String> = state.databases.keys().collect();
            format!("no database named '{name}' (registered: {known:?}; add one with `shoal db add`)")
        })?;
        Ok(match db.kind {
            DatabaseKind::Sqlite => shoal_sql::Database::Sqlite { path: db.location.clone().into() },
            DatabaseKind::Postgres => shoal_sql::Database::Postgres { url: db.location.clone() },
        })
    }

    /// A registered MCP server.
    pub fn mcp_server(&self, name: &str) -> Result<McpServerRecord, String> {
        let state = self.read();
        state.mcp_servers.get(name).cloned().ok_or_else(|| {
            let known: Vec<&String> = state.mcp_servers.keys().collect();
            format!("no MCP server named '{name}' (registered: {known:?}; add one with `shoal mcp add`)")
        })
    }

    /// A run as the view has it.
    pub fn run(&self, id: &str) -> Option<RunRecord> {
        self.read().runs.get(id).cloned()
    }

    /// The committed results of a run's steps (large outputs read back from the artifact
    /// store).
    pub async fn results(&self, run: &RunRecord) -> Result<BTreeMap<String, StepResult>, String> {
        let mut out = BTreeMap::new();
        for (id, s) in &run.steps {
            let status = match s.outcome {
                StepOutcome::Succeeded => StepStatus::Succeeded,
                StepOutcome::Skipped => StepStatus::Skipped,
                StepOutcome::Failed => StepStatus::Failed,
                StepOutcome::Recovered => StepStatus::Recovered,
            };
            let output = self.output_of(s).await?;
            out.insert(id.clone(), StepResult { status, output });
        }
        Ok(out)
    }

    /// A step's output (fetched from the coordinator that stored it when it is large).
    pub async fn output_of(&self, s: &StepRecord) -> Result<Value, String> {
        if s.output_sha256.is_empty() {
            return if s.output.is_empty() {
                Ok(Value::Null)
            } else {
                serde_json::from_str(&s.output).map_err(|e| format!("step {} output unreadable: {e}", s.id))
            };
        }
        let bytes = self.artifact(&s.output_sha256, s.output_bytes, s.output_stored_by).await?;
        serde_json::from_slice(&bytes).map_err(|e| format!("step {} output unreadable: {e}", s.id))
    }

    /// The coordinators other than `me` the view names: id and QUIC address.
    fn other_coordinators(&self, me: u64) -> Vec<(u64, String)> {
        let soft = self.cluster.status().soft;
        soft.coordinators.iter().filter(|(id, _, _)| *id != me).map(|(id, quic, _)| (*id, quic.clone())).collect()
    }

    /// A pooled stream to the coordinator at `quic`. A coordinator that is gone costs [`CONNECT_WAIT`], not a
    /// transfer's whole wait.
    async fn open_coordinator(&self, quic: &str) -> Result<shoal_protocol::quic::ClientStream, String> {
        let addr = shoal_protocol::quic::resolve(quic).await.map_err(|e| e.to_string())?;
        let open = self.cluster.pool().open(addr, shoal_protocol::tls::COORDINATOR_SERVER_NAME);
        tokio::time::timeout(CONNECT_WAIT, open)
            .await
            .map_err(|_| "no connection".to_string())?
            .map_err(|e| e.to_string())
    }

    /// A large output's bytes: from this coordinator's store, else fetched from the one that
    /// stored it, else from any other coordinator that mirrored it.
    async fn artifact(&self, sha256: &str, size: u64, stored_by: u64) -> Result<Vec<u8>, String> {
        let Some((store, me)) = &self.artifacts else {
            return Err("large step outputs are read on coordinators".into());
        };
        if !store.has(sha256) {
            let mut holders = self.other_coordinators(*me);
            holders.sort_by_key(|(id, _)| *id != stored_by);
            let mut why = Vec::new();
            for (id, quic) in holders {
                let fetched = async {
                    let mut stream = self.open_coordinator(&quic).await?;
                    store.fetch(&mut stream, sha256, size, &|_, _| {}).await.map_err(|e| e.to_string())
                };
                match tokio::time::timeout(TRANSFER_WAIT, fetched).await {
                    Ok(Ok(_)) => break,
                    Ok(Err(e)) => why.push(format!("coordinator {id}: {e}")),
                    Err(_) => why.push(format!("coordinator {id}: timed out")),
                }
            }
            if !store.has(sha256) {
                return Err(format!("output {sha256} is on no reachable coordinator ({})", why.join("; ")));
            }
        }
        std::fs::read(store.path_of(sha256)).map_err(|e| format!("reading output {sha256}: {e}"))
    }

    /// Whether this coordinator holds a step's large output.
    pub fn holds_output(&self, s: &StepRecord) -> bool {
        s.output_sha256.is_empty() || self.artifacts.as_ref().is_some_and(|(store, _)| store.has(&s.output_sha256))
    }

    /// Copies the large outputs other coordinators stored into this one's store, so that
    /// one survives the loss of the coordinator that stored it.
    pub fn mirror_outputs(self: &Arc<Self>) {
        let Some((store, _)) = &self.artifacts else { return };
        let wanted: Vec<(String, u64, u64)> = {
            let state = self.read();
            state
                .runs
                .values()
                .flat_map(|r| r.steps.values())
                .filter(|s| !s.output_sha256.is_empty() && !store.has(&s.output_sha256))
                .map(|s| (s.output_sha256.clone(), s.output_bytes, s.output_stored_by))
                .collect()
        };
        for (sha, size, by) in wanted {
            if !self.mirroring.lock().unwrap_or_else(|p| p.into_inner()).insert(sha.clone()) {
                continue;
            }
            let g = self.clone();
            tokio::spawn(async move {
                if let Err(e) = g.artifact(&sha, size, by).await {
                    tracing::debug!(error = %e, "mirroring a large step output");
                }
                g.mirroring.lock().unwrap_or_else(|p| p.into_inner()).remove(&sha);
            });
        }
    }

    /// A step record for `output`: inline when small, else stored by content hash.
    pub fn record_output(&self, record: &mut StepRecord, output: &Value) -> Result<(), String> {
        let text = output.to_string();
        if text.len() <= INLINE_OUTPUT_BYTES {
            record.output = text;
            return Ok(());
        }
        let Some((store, id)) = &self.artifacts else {
            return Err("this process has no artifact store for large outputs".into());
        };
        let tmp = store.dir().join(format!("output-{}.tmp", rand::random::<u64>()));
        std::fs::write(&tmp, text.as_bytes()).map_err(|e| format!("storing a large output: {e}"))?;
        let stored = store.put_file(&tmp);
        let _ = std::fs::remove_file(&tmp);
        let (sha, size) = stored.map_err(|e| format!("storing a large output: {e}"))?;
        record.output_sha256 = sha;
        record.output_bytes = size;
        record.output_stored_by = *id;
        Ok(())
    }

    /// Sends a large output this coordinator stored to the other coordinators, and returns
    /// once a majority of all of them (this one included) holds it, so that the loss of
    /// this coordinator right after the step is committed does not lose the output. Gives
    /// up waiting after [`REPLICATE_WAIT`] (the others then copy it when they see the
    /// commit); the copies still under way go on in the background. Returns how many other
    /// coordinators confirmed a copy in time.
    pub async fn replicate_output(self: &Arc<Self>, sha256: &str) -> usize {
        let Some((store, me)) = &self.artifacts else { return 0 };
        let others = self.other_coordinators(*me);
        // A majority of the group: this coordinator and `need` others.
        let need = others.len().div_ceil(2);
        let (done_tx, mut done) = tokio::sync::mpsc::channel::<bool>(others.len().max(1));
        for (id, quic) in others {
            let (g, store, sha, done_tx) = (self.clone(), store.clone(), sha256.to_string(), done_tx.clone());
            tokio::spawn(async move {
                let pushed = async {
                    let mut stream = g.open_coordinator(&quic).await?;
                    store.push(&mut stream, &sha).await.map_err(|e| e.to_string())
                };
                let ok = match tokio::time::timeout(TRANSFER_WAIT, pushed).await {
                    Ok(Ok(())) => true,
                    Ok(Err(e)) => {
                        tracing::debug!(coordinator = id, error = %e, "sending a large step output");
                        false
                    }
                    Err(_) => false,
                };
                let _ = done_tx.send(ok).await;
            });
        }
        drop(done_tx);
        let mut held = 0;
        let _ = tokio::time::timeout(REPLICATE_WAIT, async {
            while held < need {
                match done.recv().await {
                    Some(true) => held += 1,
                    Some(false) => {}
                    None => break,
                }
            }
        })
        .await;
        if held < need {
            tracing::warn!(
                sha256,
                held,
                need,
                "a large step output is committed before a majority of coordinators hold it"
            );
        }
        held
    }

    /// The runs the view holds, newest first, filtered.
    pub fn runs(&self, graph: Option<&str>, status: Option<RunStatus>) -> Vec<RunRecord> {
        let state = self.read();
        let mut runs: Vec<RunRecord> = state
            .runs
            .values()
            .filter(|r| graph.is_none_or(|g| r.graph == g) && status.is_none_or(|s| r.status == s))
            .cloned()
            .collect();
        runs.sort_by(|a, b| b.created_at_ms.cmp(&a.created_at_ms).then(b.id.cmp(&a.id)));
        runs
    }
}
