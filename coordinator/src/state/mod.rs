//! The replicated state machine: a pure `apply(state, command)`.
//!
//! Everything here is deterministic: commands carry the times and ids they need (the
//! leader chooses them when it proposes), so every coordinator that applies the same log
//! reaches the same state.

mod apply;
mod graphs;
mod knowledge;
mod mcp;
mod synthetic;
mod types;

pub use apply::apply;
pub use graphs::{
    DatabaseKind, DatabaseRecord, GraphRecord, GraphVersion, PromptRecord, RunRecord, RunStatus, StepOutcome,
    StepRecord, ToolCallRecord,
};
pub use knowledge::*;
pub use mcp::{redact_url, McpHeader, McpServerRecord, McpTransport, REDACTED};
pub use synthetic::{synthetic_cluster, synthetic_state};
pub use types::*;
