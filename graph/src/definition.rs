//! What a graph definition holds, as users write it (YAML or JSON, one schema).
//!
//! Text parameters are of two sorts:
//! - *templates* (`template`, a chat step's `prompt`/`system`/message contents, a SQL
//!   step's `query`): minijinja, with `inputs`, `steps`, `item` and `index` in scope;
//! - *values* (everything else that names something or carries data): `${EXPR}` is the
//!   expression's value when it is the whole string, and is substituted as text otherwise.
//!
//! Conditions (`when`, a branch case's `when`) and a map's `over` are bare expressions.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A task graph: named inputs, steps, and outputs computed from the steps' results.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Graph {
    /// Lowercase letters, digits and `-`, as other names in Shoal.
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The inputs a run must (or may, with a default) give.
    #[serde(default)]
    pub inputs: BTreeMap<String, InputSpec>,
    /// Each output is a value expression over `inputs` and `steps` (e.g. `${steps.answer.text}`).
    #[serde(default)]
    pub outputs: BTreeMap<String, Value>,
    pub steps: Vec<Step>,
    /// Hosts (`host` or `host:port`) that `http` steps and `mcp` steps (of HTTP servers) may
    /// call. Loopback, link-local and cloud-metadata addresses are refused unless listed here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_hosts: Vec<String>,
}

/// One declared input.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    #[serde(rename = "type", default)]
    pub kind: ValueType,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Used when a run does not give the input; an input without a default is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
}

/// The JSON type of an input or of a step's output field.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ValueType {
    #[default]
    String,
    Number,
    Integer,
    Boolean,
    Object,
    Array,
    Any,
}

impl ValueType {
    pub fn as_str(&self) -> &'static str {
        match self {
            ValueType::String => "string",
            ValueType::Number => "number",
            ValueType::Integer => "integer",
            ValueType::Boolean => "boolean",
            ValueType::Object => "object",
            ValueType::Array => "array",
            ValueType::Any => "any",
        }
    }

    /// Whether `v` is of this type.
    pub fn admits(&self, v: &Value) -> bool {
        match self {
            ValueType::String => v.is_string(),
            ValueType::Number => v.is_number(),
            ValueType::Integer => v.is_i64() || v.is_u64(),
            ValueType::Boolean => v.is_boolean(),
            ValueType::Object => v.is_object(),
            ValueType::Array => v.is_array(),
            ValueType::Any => true,
        }
    }
}

/// One step: an id, what it does, and how it runs.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct Step {
    /// Lowercase letters, digits and `_`; other steps refer to it as `steps.ID`.
    pub id: String,
    #[serde(flatten)]
    pub kind: StepKind,
    /// Steps that must finish first, besides those this step refers to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
    /// Runs only when this expression is true (else the step is skipped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// Whether the step runs when some of the steps it depends on were skipped.
    #[serde(default, skip_serializing_if = "is_default")]
    pub join: Join,
    #[serde(default, skip_serializing_if = "is_default")]
    pub retry: Retry,
    /// Seconds one attempt may take (default: 300 for model steps, 60 for others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<f64>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub on_error: OnError,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// The fields every step may have, whatever its kind.
pub const COMMON_FIELDS: &[&str] = &["id", "kind", "after", "when", "join", "retry", "timeout_s", "on_error"];

/// When a step with skipped dependencies runs.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Join {
    /// Only when none of them was skipped.
    #[default]
    All,
    /// When at least one of them finished (e.g. the step after a branch's arms).
    Any,
}

/// How often and how patiently a failing step is tried.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Retry {
    /// Tries in all (1: no retry).
    pub attempts: u32,
    /// The first pause between tries; doubled each time, with full jitter.
    pub backoff_ms: u64,
    pub max_backoff_ms: u64,
}

impl Default for Retry {
    fn default() -> Self {
        Self { attempts: 1, backoff_ms: 200, max_backoff_ms: 10_000 }
    }
}

impl Retry {
    /// The longest pause before try `attempt` (1-based; the first try has none); the
    /// runner waits a uniformly random share of it (full jitter).
    pub fn ceiling_ms(&self, attempt: u32) -> u64 {
        if attempt <= 1 {
            return 0;
        }
        let doublings = (attempt - 2).min(30);
        self.backoff_ms.saturating_mul(1u64 << doublings).min(self.max_backoff_ms)
    }
}

/// What a step's final failure does to the run.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// The run fails.
    #[default]
    Fail,
    /// The step finishes with this output (and its error recorded).
    Default(Value),
    /// The step finishes with `{"error": MESSAGE}` and these steps run; they are skipped
    /// when the step succeeds.
    Branch(Vec<String>),
}

/// A chat message of a chat step (`content` is a template).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// One arm of a branch.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// An expression; the first true case is taken.
    pub when: String,
    /// The steps that run when this case is taken (the other arms' steps are skipped).
    pub then: Vec<String>,
}

/// How a classify step decides.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClassifyMethod {
    /// A chat model picks one of the labels.
    #[default]
    Llm,
    /// The label whose examples are most similar (cosine of embeddings) wins.
    Embedding,
}

/// What a step does.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StepKind {
    /// Renders a minijinja template. Output: `text`.
    Template { template: String },
    /// Asks a chat model. Output: `text`, `reasoning` (with `reasoning: true`), `json`
    /// (with `output_schema`), `usage`.
    Chat {
        model: String,
        /// A single user message (a template); or give `messages`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prompt: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        system: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        messages: Vec<Message>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        temperature: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_tokens: Option<u32>,
        /// A JSON Schema the answer must follow; the answer is parsed into `json`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output_schema: Option<Value>,
        /// Chain of thought: the model reasons first, and the reasoning is kept apart
        /// from the answer (`reasoning` vs `text`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        reasoning: bool,
    },
    /// Embeds text. Output: `vector`, `dimension`.
    Embed { model: String, input: String },
    /// Searches a knowledge base. Output: `hits` (document, title, text, score), `context`
    /// (the hits as numbered passages for a prompt).
    Recall {
        knowledge_base: String,
        query: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        top_k: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        filter: Option<Value>,
    },
    /// Reads a registered database, read-only. With `schema: true`, output `schema` (the
    /// tables as prompt text); with `query` (a template; SQL is extracted from a model's
    /// answer), output `sql`, `columns`, `rows`, `row_count`, `truncated`.
    Sql {
        database: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        query: Option<String>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        schema: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_rows: Option<u32>,
    },
    /// Calls an HTTP tool on an allowed host. Output: `status`, `body`, `json`.
    Http {
        url: String,
        #[serde(default = "get")]
        method: String,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        headers: BTreeMap<String, String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<Value>,
    },
    /// Routes by meaning: picks one of `labels` for `input`. Output: `label`, `score`.
    Classify {
        input: String,
        labels: Vec<String>,
        #[serde(default)]
        method: ClassifyMethod,
        /// A chat model (`llm`) or an embedding model (`embedding`).
        model: String,
        /// Labelled examples (`embedding`; optional hints for `llm`).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        examples: BTreeMap<String, Vec<String>>,
    },
    /// Takes the first case whose condition holds. Output: `taken` (the steps it runs).
    Branch {
        cases: Vec<Case>,
        #[serde(rename = "else", default, skip_serializing_if = "Vec::is_empty")]
        otherwise: Vec<String>,
    },
    /// Runs `step` once per element of `over` (`item`, `index` in scope), at most
    /// `parallelism` at a time. Output: `results` (each element's output, in order).
    Map {
        over: String,
        step: Box<Step>,
        #[serde(default = "one")]
        parallelism: u32,
    },
    /// Calls a tool of a registered MCP server (`shoal mcp add`). The arguments are checked
    /// against the tool's `inputSchema` before the call. Output: `content` (the result's
    /// content blocks), `text` (its text parts joined), `json` (the structured content, or the
    /// text parsed as JSON when it parses), `is_error`.
    Mcp {
        server: String,
        tool: String,
        /// Values (`${…}`), as other steps' values.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        arguments: BTreeMap<String, Value>,
    },
    /// Lets a chat model answer `prompt` by calling tools from `tools` (MCP tools, graphs,
    /// knowledge-base searches) in a loop: each model turn either calls tools (their results
    /// go back to the model) or answers. Bounded by `max_turns` model turns and a budget of
    /// `max_tokens` generated tokens; the last allowed turn is asked for the answer without
    /// tools. Every call and its result is committed to the run as it completes, so a
    /// completed call is never made again, after a retry or a leader change. Output: `text`
    /// (the answer), `calls` (name, arguments, result, error of each call, in order),
    /// `turns`, `usage`.
    Agent {
        model: String,
        /// The question or task (a template).
        prompt: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        system: Option<String>,
        tools: Vec<AgentTool>,
        /// Model turns at most (default 6, at most 32).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_turns: Option<u32>,
        /// Generated tokens at most, over all turns (default 2048).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_tokens: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        temperature: Option<f64>,
        /// `auto` (the default: the model decides) or `required` (its first turn must call a
        /// tool, generated to the tools' schemas: for models that answer from memory).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tool_choice: Option<String>,
    },
    /// Runs another graph. Output: `outputs` (its outputs).
    Graph {
        graph: String,
        #[serde(default)]
        inputs: BTreeMap<String, Value>,
    },
}

/// A tool an `agent` step may call: exactly one of `mcp` (a registered MCP server: all its
/// tools, or only `tool`), `graph` (a graph, with its inputs as the arguments) or `recall`
/// (a knowledge base, searched with a `query`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct AgentTool {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp: Option<String>,
    /// With `mcp`: only this tool of the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recall: Option<String>,
    /// What the model is told the tool does (default: the tool's, the graph's or the
    /// knowledge base's own description).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl AgentTool {
    /// What the entry names, or why it is malformed.
    pub fn source(&self) -> Result<AgentToolSource<'_>, String> {
        let given = [self.mcp.is_some(), self.graph.is_some(), self.recall.is_some()];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err("give exactly one of mcp (a server), graph or recall (a knowledge base)".into());
        }
        if self.tool.is_some() && self.mcp.is_none() {
            return Err("`tool` goes with `mcp` (a tool of that server)".into());
        }
        Ok(match (&self.mcp, &self.graph, &self.recall) {
            (Some(server), _, _) => AgentToolSource::Mcp { server, tool: self.tool.as_deref() },
            (_, Some(graph), _) => AgentToolSource::Graph(graph),
            (_, _, Some(kb)) => AgentToolSource::Recall(kb),
            _ => unreachable!("exactly one is set"),
        })
    }
}

/// What an [`AgentTool`] entry names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentToolSource<'a> {
    Mcp { server: &'a str, tool: Option<&'a str> },
    Graph(&'a str),
    Recall(&'a str),
}

/// Model turns of an agent step at most, and by default.
pub const AGENT_MAX_TURNS: u32 = 32;
pub const AGENT_DEFAULT_TURNS: u32 = 6;
/// Generated tokens of an agent step by default.
pub const AGENT_DEFAULT_TOKENS: u32 = 2048;

fn get() -> String {
    "GET".into()
}

fn one() -> u32 {
    1
}

impl StepKind {
    pub fn name(&self) -> &'static str {
        match self {
            StepKind::Template { .. } => "template",
            StepKind::Chat { .. } => "chat",
            StepKind::Embed { .. } => "embed",
            StepKind::Recall { .. } => "recall",
            StepKind::Sql { .. } => "sql",
            StepKind::Http { .. } => "http",
            StepKind::Classify { .. } => "classify",
            StepKind::Branch { .. } => "branch",
            StepKind::Map { .. } => "map",
            StepKind::Mcp { .. } => "mcp",
            StepKind::Agent { .. } => "agent",
            StepKind::Graph { .. } => "graph",
        }
    }

    /// Every kind's name.
    pub const NAMES: [&'static str; 12] =
        ["template", "chat", "embed", "recall", "sql", "http", "classify", "branch", "map", "mcp", "agent", "graph"];

    /// The fields a kind's step may have besides [`COMMON_FIELDS`].
    pub fn fields(kind: &str) -> &'static [&'static str] {
        match kind {
            "template" => &["template"],
            "chat" => {
                &["model", "prompt", "system", "messages", "temperature", "max_tokens", "output_schema", "reasoning"]
            }
            "embed" => &["model", "input"],
            "recall" => &["knowledge_base", "query", "mode", "top_k", "filter"],
            "sql" => &["database", "query", "schema", "max_rows"],
            "http" => &["url", "method", "headers", "body"],
            "classify" => &["input", "labels", "method", "model", "examples"],
            "branch" => &["cases", "else"],
            "map" => &["over", "step", "parallelism"],
            "mcp" => &["server", "tool", "arguments"],
            "agent" => &["model", "prompt", "system", "tools", "max_turns", "max_tokens", "temperature", "tool_choice"],
            "graph" => &["graph", "inputs"],
            _ => &[],
        }
    }

    /// The fields of this kind's output, and their types (`None`: any field, e.g. a
    /// sub-graph's outputs).
    pub fn output_fields(&self) -> Option<&'static [(&'static str, ValueType)]> {
        use ValueType::*;
        Some(match self {
            StepKind::Template { .. } => &[("text", String)],
            StepKind::Chat { .. } => &[("text", String), ("reasoning", String), ("json", Any), ("usage", Object)],
            StepKind::Embed { .. } => &[("vector", Array), ("dimension", Integer)],
            StepKind::Recall { .. } => &[("hits", Array), ("context", String)],
            StepKind::Sql { .. } => &[
                ("sql", String),
                ("columns", Array),
                ("rows", Array),
                ("row_count", Integer),
                ("truncated", Boolean),
                ("schema", String),
                ("dialect", String),
            ],
            StepKind::Http { .. } => &[("status", Integer), ("body", String), ("json", Any)],
            StepKind::Classify { .. } => &[("label", String), ("score", Number)],
            StepKind::Branch { .. } => &[("taken", Array)],
            StepKind::Map { .. } => &[("results", Array)],
            StepKind::Mcp { .. } => &[("content", Array), ("text", String), ("json", Any), ("is_error", Boolean)],
            StepKind::Agent { .. } => &[("text", String), ("calls", Array), ("turns", Integer), ("usage", Object)],
            StepKind::Graph { .. } => return None,
        })
    }

    /// Whether the step asks a model (its default timeout is longer).
    pub fn uses_model(&self) -> bool {
        matches!(
            self,
            StepKind::Chat { .. } | StepKind::Classify { .. } | StepKind::Embed { .. } | StepKind::Agent { .. }
        )
    }
}

impl Step {
    /// Seconds one attempt may take.
    pub fn timeout_s(&self) -> f64 {
        self.timeout_s.unwrap_or(if self.kind.uses_model() { 300.0 } else { 60.0 })
    }
}
