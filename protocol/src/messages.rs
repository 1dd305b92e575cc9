//! Every message that crosses a process boundary.
//!
//! A stream starts with the client's [`Hello`]; the server answers [`Response::Welcome`] or
//! [`Response::Refused`]. Then the client sends [`Request`]s and reads [`Response`]s.

use rkyv::{Archive, Deserialize as RkyvDeserialize, Serialize as RkyvSerialize};
use serde::{Deserialize, Serialize};

use crate::pipeline::{StageForward, StageResult};
use crate::recall::{IndexChunk, IndexDocument, IndexExportedDocument, IndexHit, IndexQuery, IndexShardAssignment};
use crate::serving::{Assignment, Finish, GenerateRequest, ReplicaReport};

/// The first frame on every stream.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub version: u32,
    /// Free text naming the sender's software, for logs.
    pub agent: String,
}

/// What kind of accelerator a device is.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AcceleratorKind {
    Gpu,
    Npu,
    Cpu,
}

/// One accelerator a node reports.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Accelerator {
    pub kind: AcceleratorKind,
    pub vendor: String,
    pub model: String,
    pub memory_total_bytes: u64,
    pub memory_free_bytes: u64,
    /// e.g. "9.0" for an H100/H200; empty where it does not apply.
    pub compute_capability: String,
    /// true when discovered on the hardware, false when declared by the operator.
    pub discovered: bool,
}

/// What a node has.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct Capacity {
    pub cpu_cores: u32,
    pub memory_total_bytes: u64,
    pub accelerators: Vec<Accelerator>,
}

/// How busy a node is right now (soft state, never in the raft log).
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct Load {
    pub in_flight: u32,
    pub queue_depth: u32,
    /// 1-minute load average × 1000.
    pub cpu_load_milli: u32,
    pub memory_available_bytes: u64,
    /// Free memory per accelerator, in the order of [`Capacity::accelerators`].
    pub accelerator_free_bytes: Vec<u64>,
    /// The node is shutting down: it finishes what it has and takes nothing new.
    #[serde(default)]
    pub draining: bool,
}

/// A key/value label on a node (e.g. `zone=a`).
#[derive(
    Archive, RkyvSerialize, RkyvDeserialize, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, PartialOrd, Ord,
)]
pub struct Label {
    pub key: String,
    pub value: String,
}

/// What texts are embedded as: a model trained with prefixes (multilingual-e5: `query: `,
/// `passage: `) is given the matching one; other models embed every text as given.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbedAs {
    /// As the caller wrote them (`/v1/embeddings`).
    Given,
    /// Search queries.
    Query,
    /// Documents.
    Passage,
}

/// Why a request was refused.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalCode {
    VersionMismatch,
    InvalidToken,
    ExpiredToken,
    Unauthenticated,
    StaleGeneration,
    UnknownNode,
    NotLeader,
    BadRequest,
    Unavailable,
    /// The replica's queue is full; retry later or elsewhere.
    Overloaded,
    /// No such replica, model or artifact here.
    NotFound,
}

impl RefusalCode {
    /// A fixed label for metrics and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            RefusalCode::VersionMismatch => "version_mismatch",
            RefusalCode::InvalidToken => "invalid_token",
            RefusalCode::ExpiredToken => "expired_token",
            RefusalCode::Unauthenticated => "unauthenticated",
            RefusalCode::StaleGeneration => "stale_generation",
            RefusalCode::UnknownNode => "unknown_node",
            RefusalCode::NotLeader => "not_leader",
            RefusalCode::BadRequest => "bad_request",
            RefusalCode::Unavailable => "unavailable",
            RefusalCode::Overloaded => "overloaded",
            RefusalCode::NotFound => "not_found",
        }
    }
}

/// A node's request to join: proves the token and asks for a certificate.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Debug, Clone, PartialEq, Eq)]
pub struct JoinRequest {
    pub token_id: String,
    pub token_secret: String,
    /// The name the operator gave the node (defaults to its hostname).
    pub name: String,
    /// A PKCS#10 certificate signing request for the node's own key (DER).
    pub csr_der: Vec<u8>,
    /// Join as a gateway (HTTP API, routes from a watched view) instead of a node.
    pub gateway: bool,
}

/// A joined node announcing a new incarnation of itself.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Debug, Clone, PartialEq, Eq)]
pub struct RegisterRequest {
    pub node_id: String,
    pub name: String,
    /// Where the node's data-plane QUIC endpoint listens.
    pub address: String,
    pub capacity: Capacity,
    pub labels: Vec<Label>,
    /// Where the node serves Prometheus metrics (`host:port`); empty when it serves none.
    pub metrics: String,
    /// Random per node process: a reconnect of the same process (e.g. after a coordinator
    /// leader change) keeps its replicas; a restarted process starts empty.
    pub incarnation: u64,
    /// Whether the node runs stdio MCP servers (`Request::McpStdio`): started with
    /// `--mcp-stdio`.
    pub mcp_stdio: bool,
}

/// The periodic liveness and load report of one node incarnation.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    pub node_id: String,
    pub generation: u64,
    pub seq: u64,
    pub load: Load,
    /// The state of every replica this node runs or is loading, and of every index-shard
    /// copy it holds (by copy id).
    pub replicas: Vec<ReplicaReport>,
}

/// One applied log entry as a gateway's view applies it (the data is encoded by the
/// coordinator).
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Debug, Clone, PartialEq)]
pub struct ViewEntry {
    pub index: u64,
    pub data: Vec<u8>,
}

/// Client → server.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Debug, Clone, PartialEq)]
pub enum Request {
    Join(JoinRequest),
    Register(RegisterRequest),
    Heartbeat(Heartbeat),
    /// Echo, for liveness checks and round-trip benchmarks.
    Ping {
        seq: u64,
        payload: Vec<u8>,
    },
    /// A raft-rs message (protobuf bytes) between coordinators.
    Raft {
        from: u64,
        message: Vec<u8>,
    },
    /// A raft snapshot message whose data (`total_bytes`) follows in `Chunk` frames.
    RaftSnapshot {
        from: u64,
        message: Vec<u8>,
        total_bytes: u64,
    },
    /// A piece of a larger payload announced by the previous frame.
    Chunk {
        data: Vec<u8>,
        last: bool,
    },
    /// A write (an encoded coordinator proposal) from a follower or a gateway; committed
    /// through the leader and answered by `Proposed`.
    Propose {
        proposal: Vec<u8>,
    },
    /// A gateway asking for the cluster view: `ViewState` frames (the applied state at
    /// some index), then `ViewChanges` as entries are applied and `ViewSoft` every so often.
    Watch {
        /// The applied index the gateway already holds (0: none).
        from: u64,
    },
    /// A linearizable read point: answered by `ReadIndexed` once the coordinator has
    /// applied everything committed when it was asked.
    ReadIndex,
    /// Generate text on a replica; answered by `Generated` frames until `GenerationDone`.
    Generate(GenerateRequest),
    /// Embed texts on a replica; answered by `Embedded`.
    Embed {
        placement_id: String,
        inputs: Vec<String>,
        purpose: EmbedAs,
    },
    /// Send the artifact with this SHA-256 from byte `offset`: `Artifact` then `ArtifactChunk`s.
    FetchArtifact {
        sha256: String,
        offset: u64,
    },
    /// Activations for the next stage of a split model; answered by `StageDone` once the
    /// last stage has sampled (each stage relays the request onwards and the answer back).
    StageForward(StageForward),
    /// Forget these sequences (finished or cancelled) on stage `placement_id` and every
    /// stage after it; answered by `StageReleased`.
    StageRelease {
        placement_id: String,
        sequences: Vec<u64>,
    },
    /// Split `text` into chunks of at most `max_tokens` tokens of the embedding model
    /// (`overlap_tokens` shared between neighbours) and embed each; answered by
    /// `EmbeddedChunks`.
    EmbedDocument {
        placement_id: String,
        text: String,
        max_tokens: u32,
        overlap_tokens: u32,
    },
    /// Write a document into index-shard copy `shard_id`, replacing an earlier version
    /// (a document's chunks take at most [`crate::MAX_DOCUMENT_CHUNK_BYTES`]). Answered by
    /// `IndexWritten`.
    IndexUpsert {
        shard_id: String,
        document: IndexDocument,
        chunks: Vec<IndexChunk>,
    },
    /// Remove a document from index-shard copy `shard_id`; answered by `IndexWritten`.
    IndexDelete {
        shard_id: String,
        doc_id: String,
    },
    /// Search index-shard copy `shard_id`; answered by `IndexHits`.
    IndexSearch {
        shard_id: String,
        query: IndexQuery,
    },
    /// Send every document of index-shard copy `shard_id` (to rebuild another copy);
    /// answered by `IndexExported` frames until one has `last: true`.
    IndexExport {
        shard_id: String,
    },
    /// Start the stdio MCP server `server` (`command`: the program and its arguments) on
    /// this node for the caller's session; answered by `StdioStarted`. The stream then
    /// carries the server's stdin as `Chunk` frames (`last`: stdin is closed) and its
    /// stdout as `StdioOut` frames, until `StdioExited`. The process is killed when the
    /// caller ends the stream. Only nodes started with `--mcp-stdio` run them.
    McpStdio {
        server: String,
        command: Vec<String>,
    },
    /// Keep a copy of the artifact with this SHA-256 (`size` bytes). Answered by
    /// `ArtifactHeld` at once when this member holds it already, else by `ArtifactWanted`;
    /// the bytes then follow as `Chunk` frames and are answered by `ArtifactHeld` once they
    /// are verified against the hash and stored. Coordinators send each other large graph-step
    /// outputs this way before the step's result is committed.
    StoreArtifact {
        sha256: String,
        size: u64,
    },
}

impl Request {
    /// A fixed label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Join(_) => "join",
            Request::Register(_) => "register",
            Request::Heartbeat(_) => "heartbeat",
            Request::Ping { .. } => "ping",
            Request::Raft { .. } => "raft",
            Request::RaftSnapshot { .. } => "raft_snapshot",
            Request::Chunk { .. } => "chunk",
            Request::Propose { .. } => "propose",
            Request::Watch { .. } => "watch",
            Request::ReadIndex => "read_index",
            Request::Generate(_) => "generate",
            Request::Embed { .. } => "embed",
            Request::FetchArtifact { .. } => "fetch_artifact",
            Request::StageForward(_) => "stage_forward",
            Request::StageRelease { .. } => "stage_release",
            Request::EmbedDocument { .. } => "embed_document",
            Request::IndexUpsert { .. } => "index_upsert",
            Request::IndexDelete { .. } => "index_delete",
            Request::IndexSearch { .. } => "index_search",
            Request::IndexExport { .. } => "index_export",
            Request::McpStdio { .. } => "mcp_stdio",
            Request::StoreArtifact { .. } => "store_artifact",
        }
    }
}

/// Server → client.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Debug, Clone, PartialEq)]
pub enum Response {
    Welcome {
        version: u32,
    },
    Refused {
        code: RefusalCode,
        message: String,
    },
    Joined {
        node_id: String,
        cert_pem: String,
        ca_pem: String,
    },
    Registered {
        generation: u64,
        heartbeat_interval_ms: u32,
        lease_ms: u32,
        /// The QUIC addresses of every coordinator, for the node to fail over to.
        coordinators: Vec<String>,
    },
    HeartbeatAck {
        generation: u64,
        seq: u64,
        /// Every replica the coordinator wants this node to run.
        assignments: Vec<Assignment>,
        /// Every index-shard copy the coordinator wants this node to hold.
        index_shards: Vec<IndexShardAssignment>,
    },
    /// This coordinator is not the leader; talk to the one at `leader_address`.
    Redirect {
        leader_address: String,
    },
    Pong {
        seq: u64,
        payload: Vec<u8>,
    },
    RaftAck,
    /// The outcome of a forwarded proposal (encoded by the coordinator) and the log index
    /// it was applied at (a gateway waits for its view to reach it: read your writes).
    Proposed {
        outcome: Vec<u8>,
        index: u64,
    },
    /// A gateway's credentials, and the secret API keys are hashed with.
    GatewayJoined {
        gateway_id: String,
        cert_pem: String,
        ca_pem: String,
        key_secret: Vec<u8>,
    },
    /// A piece of the applied state (encoded by the coordinator) at log index `index`;
    /// the pieces concatenate until `last`.
    ViewState {
        index: u64,
        data: Vec<u8>,
        last: bool,
    },
    /// Entries applied after the state last sent, in order (encoded by the coordinator).
    ViewChanges {
        entries: Vec<ViewEntry>,
    },
    /// Soft state (raft status, coordinator addresses, load reports; encoded by the
    /// coordinator), sent every so often.
    ViewSoft {
        data: Vec<u8>,
    },
    /// Everything committed up to `index` is applied on the coordinator that answers.
    ReadIndexed {
        index: u64,
    },
    /// The prompt was accepted: its length in tokens. Repeated every 10 s until the first
    /// token (queued or prefilling: busy, not silent); receivers act on the first only.
    GenerationStarted {
        prompt_tokens: u32,
    },
    /// New tokens and the text they add (may be empty while bytes are held back).
    Generated {
        tokens: Vec<u32>,
        text: String,
    },
    GenerationDone {
        finish: Finish,
        prompt_tokens: u32,
        completion_tokens: u32,
    },
    Embedded {
        vectors: Vec<Vec<f32>>,
        tokens: u32,
    },
    /// The artifact follows from `offset`; `size` is its whole length.
    Artifact {
        size: u64,
    },
    ArtifactChunk {
        data: Vec<u8>,
        last: bool,
    },
    StageDone(StageResult),
    StageReleased,
    /// A document's chunks (in order) with their embeddings, and the tokens embedded.
    EmbeddedChunks {
        chunks: Vec<IndexChunk>,
        tokens: u32,
    },
    /// A write was applied: the document's chunks now (0 after a delete), whether the same
    /// content was already there, and whether a deleted document existed.
    IndexWritten {
        chunks: u32,
        unchanged: bool,
        existed: bool,
    },
    IndexHits {
        hits: Vec<IndexHit>,
    },
    IndexExported {
        documents: Vec<IndexExportedDocument>,
        last: bool,
    },
    /// A stdio MCP server started (its process id on the node).
    StdioStarted {
        pid: u32,
    },
    /// Bytes the stdio MCP server wrote to its stdout.
    StdioOut {
        data: Vec<u8>,
    },
    /// The stdio MCP server exited: how (`exit status 1`, `signal 9`), and the end of what
    /// it wrote to stderr.
    StdioExited {
        status: String,
        stderr: String,
    },
    /// `StoreArtifact`: send the bytes (as `Chunk` frames).
    ArtifactWanted,
    /// `StoreArtifact`: this member holds the artifact (verified and on disk).
    ArtifactHeld,
}

impl Response {
    pub fn refused(code: RefusalCode, message: impl Into<String>) -> Self {
        Response::Refused { code, message: message.into() }
    }
}
