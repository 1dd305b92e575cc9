//! Shoal's task graphs, the pure part: what a definition holds ([`definition`]), its
//! checks ([`validate`]), the expressions and templates its steps use ([`expr`]), which
//! steps wait for which ([`deps`]), which hosts `http` steps may call ([`hosts`]), the
//! planner that says what a run does next ([`plan`]), and the built-in QA graphs
//! ([`builtin`]). Executing steps is the gateway's runner's job.

pub mod builtin;
pub mod definition;
pub mod deps;
pub mod expr;
pub mod hosts;
pub mod plan;
pub mod prompt;
pub mod validate;

pub use definition::{Graph, Step, StepKind};
pub use plan::{next_steps, Plan, StepResult, StepStatus};
pub use validate::{check, parse, Catalog, Problem};

/// The JSON Schema of a graph definition (`GET /v1/graphs/schema`).
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(Graph)).unwrap_or_default()
}
