//! The Shoal gateway: the HTTP API (OpenAI-compatible endpoints, knowledge bases, keys and
//! admin), API-key auth and quotas, the router, retrieval fan-out and model registration.
//!
//! What it owns: everything between an HTTP client and the nodes. It holds no state of its
//! own: it serves from a replica of the cluster state that a coordinator streams to it
//! ([`cluster`]), so it keeps serving while the coordinators are down, and forwards every
//! write to them. Any number can run; `shoal up` and `shoal coordinator` embed one.
//! What it must not do: decide placements or write the state other than through a proposal.

pub mod audit;
pub mod cluster;
pub mod error;
pub mod graphs;
pub mod history;
pub mod http;
pub mod identity;
pub mod registry;
pub mod retrieval;
pub mod router;
pub mod routing;
pub mod runtime;
pub mod tools;

// The pure parts of the coordinator crate the gateway reads the state with.
pub(crate) use shoal_coordinator::{clock, knowledge, planner, scheduler, state, telemetry};

pub use cluster::Cluster;
pub use error::GatewayError;
pub use runtime::{Gateway, GatewayOptions};
