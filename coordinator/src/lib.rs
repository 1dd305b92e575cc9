//! The Shoal coordinator: raft (raft-rs) with sled storage, the pure replicated state
//! machine, node leases, the QUIC control plane and the HTTP gateway.
//!
//! What it owns: the cluster's source of truth and everything that changes it.
//! What it must not do: run models or hold request data; the state machine ([`state`])
//! and lease decisions ([`lease`]) stay free of I/O and clocks.

pub mod assign;
pub mod clock;
pub mod config;
pub mod control;
pub mod error;
pub mod gateway;
pub mod knowledge;
pub mod lease;
pub mod pki;
pub mod planner;
pub mod raft;
pub mod registry;
pub mod retrieval;
pub mod router;
pub mod routing;
pub mod runtime;
pub mod scheduler;
pub mod state;
pub mod telemetry;
pub mod writer;

pub use error::CoordinatorError;
pub use runtime::{Coordinator, CoordinatorOptions};
