//! The request router: picks a replica of a deployment by load (power of two choices over
//! outstanding work counted here and reported by nodes), talks to it over QUIC, retries a
//! replica that fails before its first token on another, and resumes a stream cut
//! mid-generation on another replica by replaying the prompt plus the tokens already sent.
//! Routing reads this coordinator's local replica of the state, so it keeps working while
//! the raft group elects a leader.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_protocol::metric_names as m;
use shoal_protocol::pool::{CallError, Pool};
use shoal_protocol::tls::NODE_SERVER_NAME;
use shoal_protocol::{
    EmbedAs, EngineKind, Finish, GenerateRequest, Prompt, RefusalCode, ReplicaPhase, Request, Response,
    SamplingSettings,
};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::cluster::Cluster;
use crate::state::ClusterState;

/// How far each chain of a split deployment is from serving, e.g. "chain 0 has 1 of 2
/// stages ready" (empty when the deployment has no chains).
pub fn chain_progress(state: &ClusterState, deployment: &str) -> String {
    state
        .chains_of(deployment)
        .iter()
        .map(|((_, chain), stages)| {
            let count = stages.iter().filter_map(|p| p.stage).map(|s| s.count).max().unwrap_or(0);
            let ready = stages.iter().filter(|p| state.is_serving(p)).count();
            format!("chain {chain} has {ready} of {count} stages ready")
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Inputs per embedding call to a replica (a node's largest batch).
pub const EMBED_PIECE: usize = 64;
/// "No such model", naming the ones that exist (GET /v1/models lists them all).
pub fn unknown_model(state: &ClusterState, deployment: &str) -> String {
    const SHOWN: usize = 20;
    let names: Vec<&str> = state.deployments.keys().map(String::as_str).take(SHOWN).collect();
    let more = state.deployments.len().saturating_sub(SHOWN);
    let listed = match (names.is_empty(), more) {
        (true, _) => "none is deployed yet".to_string(),
        (false, 0) => format!("models: {}", names.join(", ")),
        (false, n) => format!("models: {} and {n} more (GET /v1/models)", names.join(", ")),
    };
    format!("the model '{deployment}' does not exist ({listed})")
}

/// Why a deployment has no replica to route to: replicas loading, chains incomplete, or the
/// scheduler's shortfall (which names the rule that keeps replicas from being placed).
pub fn not_ready_reason(state: &ClusterState, deployment: &str) -> String {
    if state.deployments.get(deployment).is_some_and(|d| d.replicas == 0) {
        return format!("it is scaled to 0 replicas (scale it up: `shoal deploy {deployment} --replicas 1`)");
    }
    let chains = chain_progress(state, deployment);
    if !chains.is_empty() {
        return chains;
    }
    let loading = state
        .placements_of(deployment)
        .filter(|p| p.stage.is_none() && !matches!(p.phase, Some(ReplicaPhase::Ready | ReplicaPhase::Failed)))
        .count();
    let shortfall = crate::scheduler::shortfall(state, deployment);
    match (loading, shortfall.is_empty()) {
        (0, true) => "no replica is placed".to_string(),
        (0, false) => shortfall,
        (n, true) => format!("{n} loading (wait a moment, or deploy with --wait-ready)"),
        (n, false) => format!("{n} loading (wait a moment, or deploy with --wait-ready); {shortfall}"),
    }
}

/// A stdio MCP server started on a node: the stream that carries its stdin (`Chunk`
/// frames) and its stdout (`StdioOut`, then `StdioExited`).
pub struct StdioSession {
    pub sender: shoal_protocol::quic::ClientSender,
    pub receiver: shoal_protocol::quic::ClientReceiver,
    /// The node's name.
    pub node: String,
    /// The server's process id there.
    pub pid: u32,
}

/// How many replicas one request may try.
const MAX_ATTEMPTS: usize = 4;
/// The longest a replica may stay silent before it is given up on.
const REPLICA_SILENCE: Duration = Duration::from_secs(30);

/// Why a request could not be served.
#[derive(Debug, Clone, PartialEq)]
pub enum RouteError {
    /// No deployment by that name.
    UnknownModel(String),
    /// The deployment cannot do this (e.g. chat on an embedding model).
    WrongKind(String),
    /// No replica is ready, or all failed.
    NoReplica(String),
    /// Every replica tried was full.
    Overloaded(String),
    /// The replica refused the input.
    BadRequest(String),
}

impl std::fmt::Display for RouteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteError::UnknownModel(s)
            | RouteError::WrongKind(s)
            | RouteError::NoReplica(s)
            | RouteError::Overloaded(s)
            | RouteError::BadRequest(s) => f.write_str(s),
        }
    }
}

/// One replica the router can send to.
#[derive(Debug, Clone)]
struct Target {
    placement: String,
    address: SocketAddr,
}

/// What a generation produces, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum GenEvent {
    Started { prompt_tokens: u32 },
    Delta { text: String, tokens: u32 },
    Done { finish: Finish, prompt_tokens: u32, completion_tokens: u32 },
    Failed(RouteError),
}

pub struct Router {
    cluster: Arc<Cluster>,
    pool: Pool,
    /// Requests this gateway has in flight per placement.
    outstanding: Mutex<HashMap<String, u32>>,
}

/// Counts a request against a placement while it lives.
struct InFlight<'a> {
    router: &'a Router,
    placement: String,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut o = self.router.outstanding.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = o.get_mut(&self.placement) {
            *n = n.saturating_sub(1);
        }
        metrics::gauge!(m::ROUTER_OUTSTANDING).decrement(1.0);
    }
}

impl Router {
    pub fn new(cluster: Arc<Cluster>, client: quinn::ClientConfig) -> Result<Self, shoal_protocol::ProtocolError> {
        Ok(Self { cluster, pool: Pool::new(client)?, outstanding: Mutex::new(HashMap::new()) })
    }

    /// Ready replicas of `deployment` on ready nodes, checking the deployment serves `kind`.
    fn targets(&self, deployment: &str, kind: EngineKind) -> Result<Vec<Target>, RouteError> {
        let state = self.cluster.state().read().unwrap_or_else(|p| p.into_inner());
        let Some(version) = state.deployed_version(deployment) else {
            return Err(RouteError::UnknownModel(unknown_model(&state, deployment)));
        };
        if !version.kind().serves(kind) {
            let what = match kind {
                EngineKind::Embed => "embeddings",
                EngineKind::Generate | EngineKind::Echo => "text generation",
            };
            return Err(RouteError::WrongKind(format!("the model '{deployment}' does not serve {what}")));
        }
        // Unsplit replicas, and the heads of chains whose every stage is serving; replicas on
        // draining nodes only when nothing else serves (they refuse new work anyway, and
        // the refusal is retried elsewhere).
        let all: Vec<(bool, Target)> = state
            .entry_points(deployment)
            .into_iter()
            .filter_map(|p| {
                let node = state.nodes.get(&p.node)?;
                let target = Target { placement: p.id.clone(), address: node.address.parse().ok()? };
                Some((self.cluster.is_draining(&p.node), target))
            })
            .collect();
        let targets: Vec<Target> = if all.iter().any(|(draining, _)| !draining) {
            all.into_iter().filter(|(draining, _)| !draining).map(|(_, t)| t).collect()
        } else {
            all.into_iter().map(|(_, t)| t).collect()
        };
        if targets.is_empty() {
            return Err(RouteError::NoReplica(format!(
                "no replica of '{deployment}' is ready: {}",
                not_ready_reason(&state, deployment)
            )));
        }
        Ok(targets)
    }

    fn load_of(&self, placement: &str) -> u32 {
        let local = self.outstanding.lock().unwrap_or_else(|p| p.into_inner()).get(placement).copied().unwrap_or(0);
        let reported = self.cluster.reported_load(placement);
        local.max(reported)
    }

    /// The next target to try: [`crate::routing::choose`] over the targets' loads.
    fn pick(&self, targets: &[Target], tried: &[String]) -> Option<Target> {
        let loads: Vec<u32> = targets.iter().map(|t| self.load_of(&t.placement)).collect();
        let skip: Vec<bool> = targets.iter().map(|t| tried.contains(&t.placement)).collect();
        crate::routing::choose(&loads, &skip, &mut rand::rng()).map(|i| targets[i].clone())
    }

    fn begin(&self, placement: &str) -> InFlight<'_> {
        *self.outstanding.lock().unwrap_or_else(|p| p.into_inner()).entry(placement.to_string()).or_insert(0) += 1;
        metrics::gauge!(m::ROUTER_OUTSTANDING).increment(1.0);
        InFlight { router: self, placement: placement.to_string() }
    }

    /// Embeds `inputs` on replicas of `deployment`, [`EMBED_PIECE`] inputs per call, so a
    /// large request never occupies a replica as one batch: other callers' work interleaves
    /// with its pieces at the node, each piece may go to another replica, and when the caller
    /// leaves (this future is dropped) the pieces not yet sent are never computed.
    pub async fn embed(&self, deployment: &str, inputs: Vec<String>) -> Result<(Vec<Vec<f32>>, u32), RouteError> {
        let mut vectors = Vec::with_capacity(inputs.len());
        let mut tokens = 0u32;
        for piece in inputs.chunks(EMBED_PIECE) {
            let (v, t) = self.embed_within(deployment, piece.to_vec(), EmbedAs::Given, REPLICA_SILENCE).await?;
            vectors.extend(v);
            tokens = tokens.saturating_add(t);
        }
        Ok((vectors, tokens))
    }

    /// Like [`Router::embed`] for inputs used as `purpose` (a search's queries: see
    /// [`EmbedAs`]), moving to another replica when one is silent for `patience` (short for
    /// a search's query, so a replica on a node that just died costs little).
    pub async fn embed_within(
        &self,
        deployment: &str,
        inputs: Vec<String>,
        purpose: EmbedAs,
        patience: Duration,
    ) -> Result<(Vec<Vec<f32>>, u32), RouteError> {
        let make = |placement_id: String| Request::Embed { placement_id, inputs: inputs.clone(), purpose };
        match self.embedding_call(deployment, make, patience).await? {
            Response::Embedded { vectors, tokens } => Ok((vectors, tokens)),
            other => Err(RouteError::NoReplica(format!("replica answered {other:?}"))),
        }
    }

    /// Chunks a document's `text` with `deployment`'s tokenizer and embeds every chunk, on
    /// one replica (others tried if it fails). Large documents take a while on a CPU, hence
    /// the long `patience`.
    pub async fn embed_document(
        &self,
        deployment: &str,
        text: String,
        max_tokens: u32,
        overlap_tokens: u32,
        patience: Duration,
    ) -> Result<(Vec<shoal_protocol::IndexChunk>, u32), RouteError> {
        let make = |placement_id: String| Request::EmbedDocument {
            placement_id,
            text: text.clone(),
            max_tokens,
            overlap_tokens,
        };
        match self.embedding_call(deployment, make, patience).await? {
            Response::EmbeddedChunks { chunks, tokens } => Ok((chunks, tokens)),
            other => Err(RouteError::NoReplica(format!("replica answered {other:?}"))),
        }
    }

    /// Sends the request `make` builds for a placement to one embedding replica of
    /// `deployment`, trying others when one fails, is full or does not answer in `patience`.
    async fn embedding_call(
        &self,
        deployment: &str,
        make: impl Fn(String) -> Request,
        patience: Duration,
    ) -> Result<Response, RouteError> {
        let mut tried = Vec::new();
        let mut last = RouteError::NoReplica(format!("no replica of '{deployment}' answered"));
        for _ in 0..MAX_ATTEMPTS {
            let targets = self.targets(deployment, EngineKind::Embed)?;
            let Some(t) = self.pick(&targets, &tried) else { break };
            tried.push(t.placement.clone());
            let _guard = self.begin(&t.placement);
            let req = make(t.placement.clone());
            let deadline = tokio::time::Instant::now() + patience;
            match self.pool.call(t.address, NODE_SERVER_NAME, &req, deadline).await {
                Err(CallError::Refused { code: RefusalCode::BadRequest, message, .. }) => {
                    return Err(RouteError::BadRequest(message))
                }
                Err(CallError::Refused { code: RefusalCode::Overloaded, message, .. }) => {
                    last = RouteError::Overloaded(message)
                }
                Err(CallError::Refused { message, .. }) => {
                    last = RouteError::NoReplica(format!("replica {} refused: {message}", t.placement))
                }
                Err(e) => last = RouteError::NoReplica(format!("replica {} failed: {e}", t.placement)),
                Ok(answer) => return Ok(answer),
            }
            metrics::counter!(m::ROUTER_RETRIES, "kind" => "embed").increment(1);
            debug!(placement = %t.placement, error = %last, "embedding attempt failed");
        }
        if matches!(last, RouteError::NoReplica(_)) {
            metrics::counter!(m::ROUTER_NO_REPLICA).increment(1);
        }
        Err(last)
    }

    /// Waits up to `within` for a ready replica of `deployment` serving `kind` (a replica
    /// being placed or loaded, e.g. after a restart); an unknown model or a wrong kind is
    /// answered at once, no replica after `within` with why.
    pub async fn wait_ready(&self, deployment: &str, kind: EngineKind, within: Duration) -> Result<(), RouteError> {
        let deadline = tokio::time::Instant::now() + within;
        let mut changes = self.cluster.index_changes();
        loop {
            match self.targets(deployment, kind) {
                Err(RouteError::NoReplica(why)) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(deployment, why = %why, "waiting for a ready replica");
                    tokio::select! {
                        _ = changes.changed() => {}
                        _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    }
                }
                other => return other.map(|_| ()),
            }
        }
    }

    /// Starts stdio MCP server `server` (`command`) on a node started with `--mcp-stdio`,
    /// trying them in [`crate::routing::stdio_hosts`] order until one has started it or
    /// `deadline` passes.
    pub async fn start_stdio(
        &self,
        server: &str,
        command: &[String],
        deadline: tokio::time::Instant,
    ) -> Result<StdioSession, String> {
        let hosts: Vec<(String, Option<SocketAddr>)> = {
            let state = self.cluster.state().read().unwrap_or_else(|p| p.into_inner());
            let nodes: Vec<&crate::state::NodeRecord> = state.nodes.values().collect();
            let seen: Vec<crate::routing::ToolHost<'_>> = nodes
                .iter()
                .map(|n| crate::routing::ToolHost {
                    name: &n.name,
                    ready: n.state == crate::state::NodeState::Ready,
                    mcp_stdio: n.mcp_stdio,
                    draining: self.cluster.is_draining(&n.id),
                })
                .collect();
            crate::routing::stdio_hosts(&seen)
                .into_iter()
                .map(|i| (nodes[i].name.clone(), nodes[i].address.parse().ok()))
                .collect()
        };
        if hosts.is_empty() {
            return Err("no node runs stdio MCP servers: start one with `shoal join --mcp-stdio` \
                        (or `shoal up --mcp-stdio`)"
                .into());
        }
        let request = Request::McpStdio { server: server.to_string(), command: command.to_vec() };
        let mut failures = Vec::new();
        for (node, addr) in hosts {
            let Some(addr) = addr else {
                failures.push(format!("node {node}: no address"));
                continue;
            };
            let started = async {
                let mut stream = self.pool.send(addr, NODE_SERVER_NAME, &request).await.map_err(|e| e.to_string())?;
                match stream.recv().await {
                    Ok(Response::StdioStarted { pid }) => Ok((stream, pid)),
                    Ok(Response::Refused { message, .. }) => Err(message),
                    Ok(other) => Err(format!("answered {other:?}")),
                    Err(e) => Err(e.to_string()),
                }
            };
            match tokio::time::timeout_at(deadline, started).await {
                Ok(Ok((stream, pid))) => {
                    debug!(server, node = %node, pid, "stdio MCP server started");
                    let (sender, receiver) = stream.split();
                    return Ok(StdioSession { sender, receiver, node, pid });
                }
                Ok(Err(why)) => failures.push(format!("node {node}: {why}")),
                Err(_) => {
                    failures.push(format!("node {node}: no answer in time"));
                    break;
                }
            }
        }
        Err(failures.join("; "))
    }

    /// Checks a generation request can be routed at all (unknown model, wrong kind, no replica).
    pub fn check_generate(&self, deployment: &str) -> Result<(), RouteError> {
        let r = self.targets(deployment, EngineKind::Generate).map(|_| ());
        if matches!(r, Err(RouteError::NoReplica(_))) {
            metrics::counter!(m::ROUTER_NO_REPLICA).increment(1);
        }
        r
    }

    /// Starts a generation; its events arrive on the returned channel. Dropping the
    /// receiver cancels the generation on the node.
    pub fn generate(
        self: &Arc<Self>,
        deployment: String,
        prompt: Prompt,
        sampling: SamplingSettings,
    ) -> mpsc::Receiver<GenEvent> {
        let (tx, rx) = mpsc::channel(64);
        let router = self.clone();
        tokio::spawn(async move {
            let result = router.run_generation(&deployment, prompt, sampling, &tx).await;
            if let Err(e) = result {
                if matches!(e, RouteError::NoReplica(_)) {
                    metrics::counter!(m::ROUTER_NO_REPLICA).increment(1);
                }
                let _ = tx.send(GenEvent::Failed(e)).await;
            }
        });
        rx
    }

    async fn run_generation(
        &self,
        deployment: &str,
        prompt: Prompt,
        sampling: SamplingSettings,
        tx: &mpsc::Sender<GenEvent>,
    ) -> Result<(), RouteError> {
        let mut tried: Vec<String> = Vec::new();
        let mut produced: Vec<u32> = Vec::new();
        let mut started = false;
        let mut last = RouteError::NoReplica(format!("no replica of '{deployment}' answered"));
        for attempt in 0..MAX_ATTEMPTS {
            // On a retry, the failed replica's reason says more than "nothing is ready now".
            let targets = match self.targets(deployment, EngineKind::Generate) {
                Ok(t) => t,
                Err(_) if attempt > 0 => break,
                Err(e) => return Err(e),
            };
            let Some(t) = self.pick(&targets, &tried) else { break };
            tried.push(t.placement.clone());
            if attempt > 0 {
                metrics::counter!(m::ROUTER_RETRIES, "kind" => "generate").increment(1);
                debug!(placement = %t.placement, resumed_tokens = produced.len(), "retrying on another replica");
            }
            let _guard = self.begin(&t.placement);
            let req = Request::Generate(GenerateRequest {
                placement_id: t.placement.clone(),
                prompt: prompt.clone(),
                resume: produced.clone(),
                sampling: sampling.clone(),
            });
            let mut stream = match self.pool.send(t.address, NODE_SERVER_NAME, &req).await {
                Ok(s) => s,
                Err(e) => {
                    last = RouteError::NoReplica(format!("replica {} unreachable: {e}", t.placement));
                    continue;
                }
            };
            loop {
                let next = tokio::select! {
                    next = tokio::time::timeout(REPLICA_SILENCE, stream.recv()) => next,
                    // The client left (even before the first token): dropping the stream
                    // cancels the sequence on the node.
                    _ = tx.closed() => return Ok(()),
                };
                let frame = match next {
                    Ok(Ok(f)) => f,
                    Ok(Err(e)) => {
                        warn!(placement = %t.placement, error = %e, tokens = produced.len(), "replica stream broke");
                        self.pool.forget(t.address, NODE_SERVER_NAME);
                        last = RouteError::NoReplica(format!("replica {} failed: {e}", t.placement));
                        break;
                    }
                    Err(_) => {
                        self.pool.forget(t.address, NODE_SERVER_NAME);
                        last = RouteError::NoReplica(format!("replica {} went silent", t.placement));
                        break;
                    }
                };
                match frame {
                    Response::GenerationStarted { prompt_tokens } => {
                        if !started {
                            started = true;
                            if tx.send(GenEvent::Started { prompt_tokens }).await.is_err() {
                                return Ok(());
                            }
                        }
                    }
                    Response::Generated { tokens, text } => {
                        let n = tokens.len() as u32;
                        produced.extend(tokens);
                        if tx.send(GenEvent::Delta { text, tokens: n }).await.is_err() {
                            return Ok(()); // the client went away: dropping the stream cancels on the node
                        }
                    }
                    Response::GenerationDone { finish, prompt_tokens, completion_tokens } => {
                        let _ = tx.send(GenEvent::Done { finish, prompt_tokens, completion_tokens }).await;
                        return Ok(());
                    }
                    Response::Refused { code: RefusalCode::BadRequest, message } => {
                        return Err(RouteError::BadRequest(message))
                    }
                    Response::Refused { code: RefusalCode::Overloaded, message } => {
                        last = RouteError::Overloaded(message);
                        break;
                    }
                    Response::Refused { message, .. } => {
                        last = RouteError::NoReplica(format!("replica {} refused: {message}", t.placement));
                        break;
                    }
                    other => {
                        last = RouteError::NoReplica(format!("replica {} answered {other:?}", t.placement));
                        break;
                    }
                }
            }
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_model_names_the_ones_that_exist() {
        let mut s = ClusterState::default();
        assert_eq!(unknown_model(&s, "gpt-4"), "the model 'gpt-4' does not exist (none is deployed yet)");
        for name in ["chat", "embed"] {
            s.deployments.insert(
                name.into(),
                crate::state::Deployment {
                    name: name.into(),
                    model: name.into(),
                    version: 1,
                    replicas: 1,
                    shards: 0,
                    created_at_ms: 0,
                    updated_at_ms: 0,
                },
            );
        }
        assert_eq!(unknown_model(&s, "gpt-4"), "the model 'gpt-4' does not exist (models: chat, embed)");
    }
}
