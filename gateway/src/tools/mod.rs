//! OpenAI tool calling and structured output: planning a request ([`plan`]), the schemas that
//! constrain generation ([`schema`]) and reading calls out of the answer ([`parse`]).

pub mod parse;
pub mod plan;
pub mod schema;

pub use parse::{CallParser, ParsedCall, Piece};
pub use plan::{plan, Reading, ToolPlan};
