//! Wire types for serving models: what the coordinator assigns to nodes, what nodes report
//! about their replicas, generation and embedding requests, and artifact transfer.

use rkyv::{Archive, Deserialize as RkyvDeserialize, Serialize as RkyvSerialize};
use serde::{Deserialize, Serialize};

/// The largest piece of an artifact in one frame.
pub const ARTIFACT_CHUNK_BYTES: usize = 1 << 20;

/// The largest artifact a member accepts when another sends it one (`StoreArtifact`).
pub const MAX_STORED_ARTIFACT_BYTES: u64 = 1 << 30;

/// What a model replica does.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// Text generation (chat and completions).
    Generate,
    /// Sentence embeddings.
    Embed,
    /// The built-in no-op model (`builtin://echo`): answers with the prompt's last message.
    /// For smoke tests of the mesh and for measuring what routing adds to a request.
    Echo,
}

impl EngineKind {
    /// Whether a replica of this kind can answer requests for `wanted`.
    /// What it serves, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            EngineKind::Embed => "embeddings",
            EngineKind::Generate | EngineKind::Echo => "text generation (chat, completions)",
        }
    }

    pub fn serves(self, wanted: EngineKind) -> bool {
        self == wanted || (self == EngineKind::Echo && wanted == EngineKind::Generate)
    }
}

/// One file of a model version, addressed by its content.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ArtifactRef {
    /// The name the engine expects (e.g. `model.safetensors`).
    pub name: String,
    /// Lower-case hex SHA-256 of the content.
    pub sha256: String,
    pub size: u64,
}

/// A replica the coordinator wants a node to run.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub placement_id: String,
    pub deployment: String,
    pub model: String,
    pub version: u32,
    /// Identifies the model version's content (a file's hash, or the hash of a folder's manifest).
    pub version_sha256: String,
    pub kind: EngineKind,
    pub files: Vec<ArtifactRef>,
    /// QUIC addresses that hold the files (peers first, then the coordinator that registered it).
    pub sources: Vec<ArtifactSource>,
    /// Set when the model is split across nodes: which layers this replica runs and where
    /// its activations go.
    pub stage: Option<crate::pipeline::StageRole>,
}

/// Where an artifact can be fetched.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Debug, Clone, PartialEq, Eq)]
pub struct ArtifactSource {
    pub address: String,
    /// true for a coordinator, false for a node.
    pub coordinator: bool,
}

/// Where a replica is in its life on the node.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ReplicaPhase {
    /// Fetching artifacts or loading weights.
    Loading,
    Ready,
    Failed,
}

impl ReplicaPhase {
    pub fn as_str(&self) -> &'static str {
        match self {
            ReplicaPhase::Loading => "loading",
            ReplicaPhase::Ready => "ready",
            ReplicaPhase::Failed => "failed",
        }
    }
}

/// A node's report about one of its replicas (sent with every heartbeat).
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Debug, Clone, PartialEq, Eq)]
pub struct ReplicaReport {
    pub placement_id: String,
    pub phase: ReplicaPhase,
    /// Why it failed, or what it is doing.
    pub message: String,
    /// Sequences running or queued.
    pub outstanding: u32,
}

/// One message of a chat.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ChatTurn {
    pub role: String,
    pub content: String,
    /// The tools an assistant turn called (OpenAI `tool_calls`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallTurn>,
    /// For a `tool` turn: the call it answers (OpenAI `tool_call_id`); empty otherwise.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tool_call_id: String,
}

impl ChatTurn {
    /// A plain message: a role and its text.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatTurn {
        ChatTurn { role: role.into(), content: content.into(), tool_calls: Vec::new(), tool_call_id: String::new() }
    }
}

/// A tool call made by an assistant turn.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ToolCallTurn {
    pub id: String,
    /// The function's name.
    pub name: String,
    /// The arguments as JSON text.
    pub arguments: String,
}

/// A chat that offers the model tools, or that starts the answer with given text.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Debug, Clone, PartialEq, Eq)]
pub struct ToolChat {
    pub turns: Vec<ChatTurn>,
    /// The tools offered, as OpenAI's `tools` JSON array (empty: none). Rendered through the
    /// model's chat template (or a generic tool prompt when the template has no tool support).
    pub tools: String,
    /// Text the answer starts with, appended to the rendered prompt (not generated, not
    /// returned): e.g. the opening of a tool call the answer must make.
    pub answer_prefix: String,
}

/// What to generate from.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    /// Rendered through the model's chat template.
    Chat(Vec<ChatTurn>),
    /// A chat with tools (see [`ToolChat`]).
    ToolChat(ToolChat),
    /// Used as is.
    Text(String),
}

/// Sampling settings (OpenAI semantics).
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Debug, Clone, PartialEq)]
pub struct SamplingSettings {
    pub max_tokens: u32,
    pub temperature: f32,
    pub top_p: f32,
    /// 0 = off.
    pub top_k: u32,
    pub seed: Option<u64>,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub stop: Vec<String>,
    /// Constrained generation: the answer must match this (`None`: free text).
    pub constraint: Option<OutputConstraint>,
}

/// What a constrained answer must look like.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct OutputConstraint {
    /// A JSON Schema (as JSON text) the answer's JSON value must satisfy.
    pub schema: String,
    /// Empty: the whole answer is the JSON value and it ends there. Otherwise the text is
    /// free until it ends with this trigger (e.g. `<tool_call>`); then a JSON value must
    /// follow (after at most one space or newline), and the text is free again after it.
    pub trigger: String,
}

/// A generation request to a replica.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    pub placement_id: String,
    pub prompt: Prompt,
    /// Tokens another replica already produced for this request: prefilled, never re-sent.
    pub resume: Vec<u32>,
    pub sampling: SamplingSettings,
}

/// Why a generation ended.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Finish {
    Stop,
    Length,
}

impl Finish {
    pub fn as_str(&self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}
