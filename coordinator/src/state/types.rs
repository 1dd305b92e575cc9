use std::collections::BTreeMap;

use rkyv::{Archive, Deserialize as RkyvDeserialize, Serialize as RkyvSerialize};
use serde::Serialize;
use shoal_protocol::{Capacity, Label};

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
    pub state: NodeState,
    /// Incremented on every registration; fences everything addressed to older ones.
    pub generation: u64,
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

/// An API key, stored by the SHA-256 of the key.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub hash: String,
    pub name: String,
    pub scope: Scope,
    pub created_at_ms: u64,
}

/// A coordinator of the raft group and where it listens.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Serialize, Debug, Clone, PartialEq, Eq)]
pub struct CoordinatorRecord {
    pub id: u64,
    pub quic: String,
    pub http: String,
}

/// The whole replicated state.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterState {
    /// Coordinators added at runtime (the bootstrap members are in the config file).
    pub coordinators: BTreeMap<u64, CoordinatorRecord>,
    pub nodes: BTreeMap<String, NodeRecord>,
    pub tokens: BTreeMap<String, TokenRecord>,
    pub api_keys: BTreeMap<String, ApiKeyRecord>,
}

impl ClusterState {
    pub fn count_nodes(&self, state: NodeState) -> usize {
        self.nodes.values().filter(|n| n.state == state).count()
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
        at_ms: u64,
    },
    /// The lease of incarnation `generation` ran out.
    NodeDead {
        id: String,
        generation: u64,
        at_ms: u64,
    },
    AddApiKey(ApiKeyRecord),
    /// Appended by a new leader; changes nothing.
    Noop,
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
            Command::Noop => "noop",
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
