//! Every metric name Shoal exports, in one place.
//!
//! Rule: `shoal_<subsystem>_<name>_<unit>`; `_total` only on counters. Labels carry
//! low-cardinality reasons, never error text.

pub const FRAMES_RECEIVED: &str = "shoal_protocol_frames_received_total";
pub const FRAMES_REFUSED: &str = "shoal_protocol_frames_refused_total";
pub const STREAMS_OPENED: &str = "shoal_protocol_streams_accepted_total";
pub const CONNECTIONS_ACCEPTED: &str = "shoal_protocol_connections_accepted_total";

pub const RAFT_TERM: &str = "shoal_raft_term";
pub const RAFT_COMMIT_INDEX: &str = "shoal_raft_commit_index";
pub const RAFT_APPLIED_INDEX: &str = "shoal_raft_applied_index";
pub const RAFT_IS_LEADER: &str = "shoal_raft_is_leader";
pub const RAFT_PROPOSALS: &str = "shoal_raft_proposals_total";
pub const RAFT_APPLIED_ENTRIES: &str = "shoal_raft_applied_entries_total";
pub const RAFT_LEADER_CHANGES: &str = "shoal_raft_leader_changes_total";
pub const RAFT_LOG_ENTRIES: &str = "shoal_raft_log_entries";
pub const RAFT_COMMIT_SECONDS: &str = "shoal_raft_commit_duration_seconds";
pub const RAFT_SNAPSHOTS_SENT: &str = "shoal_raft_snapshots_sent_total";
/// Raft messages sent a second time on a new connection after a peer's stateless reset
/// showed the first one went to a connection its previous run had.
pub const RAFT_MESSAGES_RESENT: &str = "shoal_raft_messages_resent_total";
pub const RAFT_SNAPSHOTS_INSTALLED: &str = "shoal_raft_snapshots_installed_total";
pub const RAFT_CHECKPOINTS: &str = "shoal_raft_checkpoints_total";
pub const RAFT_READ_INDEX: &str = "shoal_raft_read_index_total";
pub const RAFT_FORWARDED: &str = "shoal_raft_forwarded_proposals_total";

/// Gateways watching this coordinator's view.
pub const VIEW_WATCHERS: &str = "shoal_view_watchers";
/// Whole states sent to watching gateways (on connect, after a snapshot, or a lagging one).
pub const VIEW_STATES_SENT: &str = "shoal_view_states_sent_total";
/// Whole states a gateway received.
pub const VIEW_STATES_RECEIVED: &str = "shoal_view_states_received_total";
/// The applied index of a gateway's view.
pub const VIEW_INDEX: &str = "shoal_view_applied_index";
/// 1 while a gateway receives its view from a coordinator, 0 while it serves from a cached one.
pub const VIEW_CONNECTED: &str = "shoal_view_connected";
/// Writes a gateway refused because no coordinator answered.
pub const VIEW_WRITES_REFUSED: &str = "shoal_view_writes_refused_total";

pub const NODES: &str = "shoal_cluster_nodes";
pub const HEARTBEATS: &str = "shoal_cluster_heartbeats_total";
pub const HEARTBEATS_REFUSED: &str = "shoal_cluster_heartbeats_refused_total";
pub const LEASES_EXPIRED: &str = "shoal_cluster_leases_expired_total";
pub const JOINS: &str = "shoal_cluster_joins_total";
pub const JOINS_REFUSED: &str = "shoal_cluster_joins_refused_total";

pub const HTTP_REQUESTS: &str = "shoal_gateway_requests_total";
/// Every answered HTTP request, by route (the matched path template, such as
/// `/v1/knowledge-bases/{name}/search`) and status code; unmatched paths are not counted.
pub const HTTP_RESPONSES: &str = "shoal_gateway_http_responses_total";
/// The time between two tokens of one generation, as the gateway passes them on, by model.
pub const INTER_TOKEN_SECONDS: &str = "shoal_gateway_inter_token_seconds";
pub const HTTP_AUTH_REFUSED: &str = "shoal_gateway_auth_refused_total";
/// Requests refused by a per-key limit (`limit`: requests, tokens).
pub const HTTP_RATE_LIMITED: &str = "shoal_gateway_rate_limited_total";
/// HTTP connections open now, and those turned away at the connection cap.
pub const HTTP_CONNECTIONS: &str = "shoal_gateway_http_connections";
pub const HTTP_CONNECTIONS_REFUSED: &str = "shoal_gateway_http_connections_refused_total";
/// Document uploads holding one of the gateway's upload slots now.
pub const UPLOADS_IN_PROGRESS: &str = "shoal_gateway_uploads_in_progress";

pub const NODE_HEARTBEATS_SENT: &str = "shoal_node_heartbeats_sent_total";
pub const NODE_RECONNECTS: &str = "shoal_node_reconnects_total";

pub const MODELS_REGISTERED: &str = "shoal_models_registered_total";
pub const DEPLOYMENT_REPLICAS: &str = "shoal_deployment_replicas";
/// The replicas a deployment asks for (compare with [`DEPLOYMENT_REPLICAS`], the ready ones).
pub const DEPLOYMENT_REPLICAS_WANTED: &str = "shoal_deployment_replicas_wanted";
pub const REQUEST_SECONDS: &str = "shoal_gateway_request_duration_seconds";
pub const TTFT_SECONDS: &str = "shoal_gateway_time_to_first_token_seconds";
pub const GATEWAY_TOKENS: &str = "shoal_gateway_tokens_generated_total";
pub const ROUTER_RETRIES: &str = "shoal_router_retries_total";
pub const ROUTER_NO_REPLICA: &str = "shoal_router_no_replica_total";
pub const ROUTER_OUTSTANDING: &str = "shoal_router_outstanding_requests";

pub const NODE_TOKENS: &str = "shoal_node_tokens_generated_total";
pub const NODE_BATCH_SIZE: &str = "shoal_node_batch_size";
pub const NODE_QUEUE_DEPTH: &str = "shoal_node_queue_depth";
pub const NODE_KV_TOKENS: &str = "shoal_node_kv_cache_tokens";
pub const NODE_MODEL_LOAD_SECONDS: &str = "shoal_node_model_load_duration_seconds";
pub const NODE_SEQUENCES_CANCELLED: &str = "shoal_node_sequences_cancelled_total";
pub const NODE_REQUESTS_REJECTED: &str = "shoal_node_requests_rejected_total";
pub const NODE_EMBED_BATCH_SIZE: &str = "shoal_node_embedding_batch_size";
pub const NODE_DECODE_STEP_SECONDS: &str = "shoal_node_decode_step_duration_seconds";
pub const ARTIFACT_BYTES_SENT: &str = "shoal_artifact_bytes_sent_total";
pub const ARTIFACT_BYTES_RECEIVED: &str = "shoal_artifact_bytes_received_total";
pub const ARTIFACT_FETCH_FAILURES: &str = "shoal_artifact_fetch_failures_total";

/// Compute time of one forward pass of a pipeline stage (`stage` = its index in the chain).
pub const STAGE_FORWARD_SECONDS: &str = "shoal_node_stage_forward_duration_seconds";
/// Transport time of one hop to the next stage (round trip minus the compute behind it).
pub const STAGE_HOP_SECONDS: &str = "shoal_node_stage_hop_duration_seconds";
/// Activation bytes sent to the next stage.
pub const STAGE_ACTIVATION_BYTES: &str = "shoal_node_stage_activation_bytes_total";
/// Rows (tokens) whose activations were sent to the next stage.
pub const STAGE_ACTIVATION_ROWS: &str = "shoal_node_stage_activation_rows_total";
/// Sequences a stage holds state for.
pub const STAGE_SEQUENCES: &str = "shoal_node_stage_sequences";
/// Tokens in a non-head stage's KV caches.
pub const STAGE_KV_TOKENS: &str = "shoal_node_stage_kv_cache_tokens";
/// Steps of a stage that failed (timeouts, lost peers, lost state), by reason.
pub const STAGE_FAILURES: &str = "shoal_node_stage_failures_total";

/// Documents in an index-shard copy on this node (`kb`, `shard`).
pub const NODE_INDEX_DOCUMENTS: &str = "shoal_node_index_documents";
/// Chunks in an index-shard copy on this node.
pub const NODE_INDEX_CHUNKS: &str = "shoal_node_index_chunks";
/// Bytes on disk of an index-shard copy on this node.
pub const NODE_INDEX_BYTES: &str = "shoal_node_index_disk_bytes";
/// Writes (upserts and deletes) applied to index-shard copies, by `op`.
pub const NODE_INDEX_WRITES: &str = "shoal_node_index_writes_total";
/// Time one index-shard copy took to answer a search, by `mode`.
pub const NODE_INDEX_SEARCH_SECONDS: &str = "shoal_node_index_search_duration_seconds";
/// Documents copied from a peer to rebuild an index-shard copy.
pub const NODE_INDEX_REBUILT_DOCUMENTS: &str = "shoal_node_index_rebuilt_documents_total";

/// Documents ingested into knowledge bases through this gateway, by `kb` and `outcome`
/// (`indexed`, `unchanged`, `failed`).
pub const KB_INGEST_DOCUMENTS: &str = "shoal_kb_ingest_documents_total";
/// Chunks embedded and indexed through this gateway, by `kb`.
pub const KB_INGEST_CHUNKS: &str = "shoal_kb_ingest_chunks_total";
/// Documents being ingested right now through this gateway.
pub const KB_INGEST_IN_PROGRESS: &str = "shoal_kb_ingest_in_progress";
/// Time to ingest one document (parse, chunk, embed, write every copy, commit).
pub const KB_INGEST_SECONDS: &str = "shoal_kb_ingest_duration_seconds";
/// Knowledge-base search latency at the gateway (embedding included), by `mode`.
pub const KB_SEARCH_SECONDS: &str = "shoal_kb_search_duration_seconds";
/// Shard searches that failed on one copy and were retried on another, by `kb`.
pub const KB_SHARD_FAILOVERS: &str = "shoal_kb_shard_failovers_total";
/// Ready copies of each index shard (`kb`, `shard`), as the leader sees them.
pub const KB_SHARD_READY_COPIES: &str = "shoal_kb_shard_ready_copies";
/// The copies each shard of a knowledge base should have (its `replicas`).
pub const KB_SHARD_WANTED_COPIES: &str = "shoal_kb_shard_wanted_copies";
/// Documents and chunks in each knowledge base's catalog (`kb`).
pub const KB_DOCUMENTS: &str = "shoal_kb_documents";
pub const KB_CHUNKS: &str = "shoal_kb_chunks";

/// Graph runs that ended, by `graph` (built-in names, else `registered`) and `status`.
pub const GRAPH_RUNS: &str = "shoal_graph_runs_total";
/// Graph runs running now (on the leader).
pub const GRAPH_RUNS_IN_FLIGHT: &str = "shoal_graph_runs_in_flight";
/// Time to a step's final result (all its tries), by step `kind`.
pub const GRAPH_STEP_SECONDS: &str = "shoal_graph_step_duration_seconds";
/// Step tries after the first, by step `kind`.
pub const GRAPH_STEP_RETRIES: &str = "shoal_graph_step_retries_total";
/// Audit records dropped (the writer's queue was full, or the disk refused them).
pub const AUDIT_DROPPED: &str = "shoal_audit_dropped_total";
/// The most KV-cache entries a replica's batch can hold (every row at full context), by
/// `model`: `shoal_node_kv_cache_tokens / this` is the KV cache's use.
pub const NODE_KV_CAPACITY_TOKENS: &str = "shoal_node_kv_cache_capacity_tokens";
/// Seconds since each ready node's last heartbeat, by `node` (the leader's view).
pub const NODE_HEARTBEAT_AGE: &str = "shoal_cluster_node_heartbeat_age_seconds";
/// Accelerators of ready nodes, by `kind` and `vendor`.
pub const ACCELERATORS: &str = "shoal_cluster_accelerators";
/// Replicas (and stages) placed on each node, by `node` and `phase`.
pub const NODE_REPLICAS: &str = "shoal_cluster_node_replicas";
