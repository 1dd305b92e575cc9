//! The Shoal coordinator: raft (raft-rs) on a write-ahead log of its own, the pure replicated state
//! machine, node leases, the QUIC control plane, and the view it streams to gateways.
//!
//! What it owns: the cluster's source of truth and everything that changes it.
//! What it must not do: run models, serve HTTP or hold request data (that is the gateway's);
//! the state machine ([`state`]) and lease decisions ([`lease`]) stay free of I/O and clocks.

pub mod api_keys;
pub mod assign;
pub mod backup;
pub mod clock;
pub mod config;
pub mod control;
pub mod error;
pub mod knowledge;
pub mod lease;
pub mod names;
pub mod pki;
pub mod planner;
pub mod raft;
pub mod runtime;
pub mod scheduler;
pub mod state;
pub mod telemetry;
pub mod view;
pub mod watch;
pub mod writer;

pub use error::CoordinatorError;
pub use runtime::{Coordinator, CoordinatorOptions};
