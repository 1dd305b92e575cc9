//! The `agent` step: a chat model answers a task by calling tools in a loop.
//!
//! Each model turn is shown the tools (rendered through the model's chat template) and
//! either calls some of them or answers. A call's arguments are checked against the tool's
//! schema before anything is called; its result (or the error) goes back to the model as a
//! `tool` message. The loop is bounded by a number of model turns (the last one is asked
//! for the answer without tools) and a budget of generated tokens.
//!
//! Every completed call is committed to the run ([`Command::RecordToolCall`]) before the
//! next turn, and the conversation is rebuilt from the committed calls: a step that is
//! retried, or resumed by the runner of a new leader, continues after its last committed
//! call and never makes a completed call again.
//!
//! The loop ([`run_loop`]) and the conversation it rebuilds ([`conversation`]) are written
//! against [`AgentIo`] (generate, call, record), so they are tested exactly with a scripted
//! model; [`StepIo`] is the real one (the router, MCP servers, graphs, retrieval, raft).
//!
//! [`Command::RecordToolCall`]: shoal_coordinator::state::Command::RecordToolCall

use std::sync::Arc;

use serde_json::{json, Value};
use shoal_coordinator::state::{Command, McpServerRecord, ToolCallRecord};
use shoal_graph::definition::{AgentTool, AgentToolSource};
use shoal_graph::plan::bind_inputs;
use shoal_protocol::{ChatTurn, Prompt, ToolCallTurn, ToolChat};
use shoal_recall::{MetadataFilter, SearchMode};

use super::steps::{generate, recall_context, run_inline, StepContext};
use crate::retrieval::Search;
use crate::tools::{self, CallParser, Piece, Reading};

/// The most characters of a tool's result the model is given back.
pub const MAX_RESULT_CHARS: usize = 8000;
/// The most calls one model turn may make (more are answered with an error).
pub const MAX_CALLS_PER_TURN: usize = 8;
/// The most tokens a turn offered tools may generate (calls are short; a model repeating
/// itself stops here). The last turn, asked for the answer, may use the rest of the budget.
pub const MAX_TOOL_TURN_TOKENS: u32 = 512;

/// A tool as the agent's model sees it, and what it calls.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentToolDef {
    /// The function name shown to the model.
    pub name: String,
    pub description: String,
    /// The JSON Schema of its arguments (an object schema).
    pub parameters: Value,
    pub target: Target,
}

/// What a tool call reaches.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Mcp { server: String, tool: String },
    Graph(String),
    Recall(String),
}

/// One model turn's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    pub text: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

/// What the loop needs from the world.
pub trait AgentIo {
    /// One model turn over `turns`, offered `tools` (OpenAI `tools` entries; `None`: the
    /// answer is asked for, without tools), at most `max_tokens` generated. `required`: the
    /// turn must call one of them (the answer then starts inside the call, its opening
    /// written into the prompt).
    fn generate(
        &mut self,
        turns: Vec<ChatTurn>,
        tools: Option<Vec<Value>>,
        required: bool,
        max_tokens: u32,
    ) -> impl std::future::Future<Output = Result<Generated, String>> + Send;
    /// Calls a tool with checked arguments (`index`: the call's position in the step, the
    /// same when a call not committed is made again); the text the model is given back.
    fn call(
        &mut self,
        tool: &AgentToolDef,
        arguments: &Value,
        index: u32,
    ) -> impl std::future::Future<Output = Result<String, String>> + Send;
    /// Commits a completed call.
    fn record(&mut self, call: &ToolCallRecord) -> impl std::future::Future<Output = Result<(), String>> + Send;
    fn now_ms(&self) -> u64;
}

/// The task, as the step gives it.
#[derive(Debug, Clone)]
pub struct Task {
    pub system: Option<String>,
    pub prompt: String,
    pub max_turns: u32,
    pub max_tokens: u32,
    /// The first turn must call a tool.
    pub first_call_required: bool,
}

/// How the loop ended well.
#[derive(Debug, Clone, PartialEq)]
pub struct Answered {
    pub text: String,
    /// Every call, the committed ones it resumed from included.
    pub calls: Vec<ToolCallRecord>,
    pub turns: u32,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

/// What an agent is told when its step gives no `system` message.
pub const DEFAULT_SYSTEM: &str = "You are a helpful assistant with tools. Call a tool when you need \
    information you do not have. Once the tool results answer the question, reply to the user with the \
    answer in plain words, using those results, and call no more tools.";

/// Asked of the last turn (without tools) once tools were called.
pub const ANSWER_NOW: &str = "Now answer my question in plain words, using the tool results above. Do not call tools.";

/// The conversation after `calls`: the system message and the task, then per model turn
/// an assistant message with its calls followed by one `tool` message per result.
pub fn conversation(task: &Task, calls: &[ToolCallRecord]) -> Vec<ChatTurn> {
    let mut turns = Vec::new();
    let system = task.system.as_deref().filter(|s| !s.trim().is_empty()).unwrap_or(DEFAULT_SYSTEM);
    turns.push(ChatTurn::new("system", system.trim()));
    turns.push(ChatTurn::new("user", task.prompt.clone()));
    let mut i = 0;
    while i < calls.len() {
        let turn = calls[i].turn;
        let group: Vec<&ToolCallRecord> = calls[i..].iter().take_while(|c| c.turn == turn).collect();
        i += group.len();
        let mut assistant = ChatTurn::new("assistant", "");
        assistant.tool_calls = group
            .iter()
            .map(|c| ToolCallTurn { id: c.id.clone(), name: c.name.clone(), arguments: c.arguments.clone() })
            .collect();
        turns.push(assistant);
        for c in group {
            let mut result = ChatTurn::new("tool", c.result.clone());
            result.tool_call_id = c.id.clone();
            turns.push(result);
        }
    }
    turns
}

/// The OpenAI `tools` entries for `tools`; `strict` where the schema can be enforced.
/// Schema `title`s are left out of what the model is shown: SDKs title a tool's arguments
/// (`addArguments`), and small models take that title for the tool's name.
pub fn tool_entries(tools: &[AgentToolDef], strict: bool) -> Vec<Value> {
    tools
        .iter()
        .map(|t| {
            let mut parameters = t.parameters.clone();
            strip_titles(&mut parameters);
            let mut f = json!({"name": t.name, "description": t.description, "parameters": parameters});
            if strict && tools::schema::check_strict(&t.parameters).is_ok() {
                f["strict"] = json!(true);
            }
            json!({"type": "function", "function": f})
        })
        .collect()
}

/// Runs the loop from the committed `recorded` calls to an answer.
pub async fn run_loop<Io: AgentIo>(
    io: &mut Io,
    task: &Task,
    tools: &[AgentToolDef],
    recorded: Vec<ToolCallRecord>,
) -> Result<Answered, String> {
    let mut calls = recorded;
    let mut turn = calls.last().map_or(0, |c| c.turn + 1);
    let mut spent: u32 = calls.iter().map(|c| c.completion_tokens).sum();
    let mut prompt_tokens = 0u32;
    let names: Vec<String> = tools.iter().map(|t| t.name.clone()).collect();
    // Set when the model only repeats calls it made, or writes a call it does not make:
    // the next turn is asked for the answer, without tools.
    let mut answer_now = false;
    loop {
        let remaining = task.max_tokens.saturating_sub(spent);
        if remaining == 0 {
            return Err(format!(
                "the agent spent its budget of {} tokens in {turn} turns ({} calls) without answering",
                task.max_tokens,
                calls.len()
            ));
        }
        // The last turn allowed (or any turn after it, when resuming under a smaller bound)
        // is asked for the answer.
        let offered = (!answer_now && turn + 1 < task.max_turns).then(|| tool_entries(tools, true));
        let limit = if offered.is_some() { remaining.min(MAX_TOOL_TURN_TOKENS) } else { remaining };
        let mut turns = conversation(task, &calls);
        if offered.is_none() && !calls.is_empty() {
            turns.push(ChatTurn::new("user", ANSWER_NOW));
        }
        let required = task.first_call_required && calls.is_empty() && offered.is_some();
        let g = io.generate(turns, offered.clone(), required, limit).await?;
        spent = spent.saturating_add(g.completion_tokens);
        prompt_tokens = prompt_tokens.saturating_add(g.prompt_tokens);
        let (text, mut made) =
            if offered.is_some() { read_calls(&g.text, &names, required) } else { (g.text.clone(), Vec::new()) };
        // The same call twice is a model repeating itself: it is made once, and a call made in
        // an earlier turn is not made again (its result is in the conversation).
        let asked = !made.is_empty();
        let mut seen: std::collections::HashSet<(String, String)> =
            calls.iter().map(|c| (c.name.clone(), c.arguments.clone())).collect();
        made.retain(|(_, name, arguments)| seen.insert((name.clone(), arguments.clone())));
        if made.is_empty() && offered.is_some() && (asked || mentions_call(&text, &names)) {
            answer_now = true;
            turn += 1;
            continue;
        }
        if made.is_empty() {
            return Ok(Answered {
                text: text.trim().to_string(),
                calls,
                turns: turn + 1,
                prompt_tokens,
                completion_tokens: spent,
            });
        }
        for (k, (id, name, arguments)) in made.into_iter().enumerate() {
            let started = io.now_ms();
            let tool = tools.iter().find(|t| t.name == name);
            let outcome = match (tool, serde_json::from_str::<Value>(&arguments)) {
                _ if k >= MAX_CALLS_PER_TURN => {
                    Err(format!("at most {MAX_CALLS_PER_TURN} calls per turn: this one was not made"))
                }
                (None, _) => Err(format!("there is no tool named '{name}'")),
                (_, Err(e)) => Err(format!("the arguments are not JSON ({e}); the tool was not called")),
                (Some(tool), Ok(args)) => match super::mcp::validate_arguments(&tool.parameters, &args) {
                    Err(e) => Err(format!("invalid arguments: {e}; the tool was not called")),
                    Ok(()) => io.call(tool, &args, calls.len() as u32).await,
                },
            };
            let (result, error) = match outcome {
                Ok(text) => (clip_result(&text), String::new()),
                Err(e) => (format!("error: {}", clip_result(&e)), e),
            };
            let record = ToolCallRecord {
                index: calls.len() as u32,
                turn,
                id,
                name,
                arguments,
                result,
                error,
                completion_tokens: if k == 0 { g.completion_tokens } else { 0 },
                started_at_ms: started,
                finished_at_ms: io.now_ms(),
            };
            io.record(&record).await?;
            calls.push(record);
        }
        turn += 1;
    }
}

/// Whether `text` holds a JSON object naming one of the tools (a call the model wrote but did
/// not make: mixed with other text, or followed by a result it made up).
fn mentions_call(text: &str, names: &[String]) -> bool {
    text.char_indices().filter(|(_, c)| *c == '{').any(|(i, _)| {
        let mut values = serde_json::Deserializer::from_str(&text[i..]).into_iter::<Value>();
        matches!(values.next(), Some(Ok(v)) if v["name"].as_str().is_some_and(|n| names.iter().any(|x| x == n)))
    })
}

/// The answer's text and the calls it makes (id, name, arguments as JSON text). `in_call`:
/// the answer starts inside a call (its opening was in the prompt).
fn read_calls(text: &str, names: &[String], in_call: bool) -> (String, Vec<(String, String, String)>) {
    let mut parser = CallParser::new(names.to_vec(), in_call, in_call);
    let mut pieces = parser.push(text);
    pieces.extend(parser.finish());
    let mut said = String::new();
    let mut calls = Vec::new();
    for p in pieces {
        match p {
            Piece::Text(t) => said.push_str(&t),
            Piece::Call(c) => calls.push((c.id, c.name, c.arguments)),
        }
    }
    (said, calls)
}

fn clip_result(text: &str) -> String {
    if text.chars().count() <= MAX_RESULT_CHARS {
        return text.to_string();
    }
    let mut out: String = text.chars().take(MAX_RESULT_CHARS).collect();
    out.push_str(" … (cut: the result was longer)");
    out
}

/// A name the chat templates and the call parser accept: letters, digits, `_` and `-`.
pub fn function_name(name: &str) -> String {
    let mut out: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect();
    out.truncate(64);
    out
}

/// The tools an agent step offers, resolved: the MCP servers' tools listed (over the
/// graph's allow-list), the graphs' input schemas, the knowledge bases' search.
pub async fn resolve_tools(cx: &StepContext, entries: &[AgentTool]) -> Result<Vec<AgentToolDef>, String> {
    let mut out: Vec<AgentToolDef> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let mut found = Vec::new();
        match entry.source()? {
            AgentToolSource::Mcp { server, tool } => {
                let record = cx.graphs.mcp_server(server)?;
                let listed = list_mcp_tools(&record, &cx.graph.allow_hosts, &cx.graphs.router).await?;
                if let Some(want) = tool {
                    if !listed.iter().any(|t| t.name == want) {
                        let names: Vec<&str> = listed.iter().map(|t| t.name.as_ref()).collect();
                        return Err(format!(
                            "tools[{i}]: MCP server '{server}' has no tool '{want}' (its tools: {})",
                            names.join(", ")
                        ));
                    }
                }
                for t in listed.iter().filter(|t| tool.is_none_or(|w| t.name == w)) {
                    found.push(AgentToolDef {
                        name: function_name(&t.name),
                        description: t.description.as_deref().unwrap_or_default().to_string(),
                        parameters: Value::Object((*t.input_schema).clone()),
                        target: Target::Mcp { server: server.to_string(), tool: t.name.to_string() },
                    });
                }
            }
            AgentToolSource::Graph(name) => {
                let (_, def) = cx.graphs.definition(name, None).map_err(|e| format!("tools[{i}]: {e}"))?;
                let description = if def.description.trim().is_empty() {
                    format!("Runs the task graph '{name}' and returns its outputs.")
                } else {
                    def.description.trim().to_string()
                };
                found.push(AgentToolDef {
                    name: function_name(name),
                    description,
                    parameters: Value::Object(crate::http::mcp::input_schema(&def)),
                    target: Target::Graph(name.to_string()),
                });
            }
            AgentToolSource::Recall(kb) => found.push(AgentToolDef {
                name: function_name(&format!("search_{kb}")),
                description: format!(
                    "Searches the knowledge base '{kb}' and returns the passages most relevant to the query."
                ),
                parameters: json!({
                    "type": "object",
                    "properties": {"query": {"type": "string", "description": "What to search for"}},
                    "required": ["query"],
                    "additionalProperties": false,
                }),
                target: Target::Recall(kb.to_string()),
            }),
        }
        if let Some(d) = &entry.description {
            for f in &mut found {
                f.description = d.clone();
            }
        }
        for f in found {
            if out.iter().any(|t| t.name == f.name) {
                return Err(format!("tools[{i}]: two tools are named '{}' (list a server's tools one by one)", f.name));
            }
            out.push(f);
        }
    }
    Ok(out)
}

async fn list_mcp_tools(
    record: &McpServerRecord,
    allow: &[String],
    router: &crate::router::Router,
) -> Result<Vec<rmcp::model::Tool>, String> {
    let conn = super::mcp::connect(record, Some(allow), router).await.map_err(|e| e.to_string())?;
    let listed = conn.tools().await.map_err(|e| e.to_string());
    conn.close().await;
    listed
}

/// The real world of an agent step on the runner.
pub struct StepIo<'a> {
    pub cx: &'a StepContext,
    pub step: &'a str,
    pub model: String,
    pub temperature: f32,
}

impl AgentIo for StepIo<'_> {
    async fn generate(
        &mut self,
        turns: Vec<ChatTurn>,
        offered: Option<Vec<Value>>,
        required: bool,
        max_tokens: u32,
    ) -> Result<Generated, String> {
        let (tools_json, choice) = match &offered {
            Some(entries) if required => (Some(Value::Array(entries.clone())), json!("required")),
            Some(entries) => (Some(Value::Array(entries.clone())), json!("auto")),
            None => (None, json!("none")),
        };
        // Strict tools constrain the calls to their schemas; when their schemas cannot be
        // enforced together, the calls are generated freely (and checked before calling).
        let plan = match tools::plan(tools_json.as_ref(), Some(&choice), None, None) {
            Ok(p) => p,
            Err(_) => {
                let loose = tools_json.map(|v| strip_strict(&v));
                tools::plan(loose.as_ref(), Some(&choice), None, None)?
            }
        };
        debug_assert!(matches!(plan.reading, Reading::Calls { .. }) == offered.is_some());
        let prompt = Prompt::ToolChat(ToolChat {
            turns,
            tools: if plan.shown.is_empty() { String::new() } else { Value::Array(plan.shown).to_string() },
            answer_prefix: plan.answer_prefix,
        });
        let mut sampling = super::steps::sampling(f64::from(self.temperature), max_tokens);
        sampling.constraint = plan.constraint;
        let (text, usage, _) = generate(self.cx, self.step, &self.model, prompt, sampling).await?;
        Ok(Generated {
            text,
            prompt_tokens: usage["prompt_tokens"].as_u64().unwrap_or(0) as u32,
            completion_tokens: usage["completion_tokens"].as_u64().unwrap_or(0) as u32,
        })
    }

    async fn call(&mut self, tool: &AgentToolDef, arguments: &Value, index: u32) -> Result<String, String> {
        let cx = self.cx;
        match &tool.target {
            Target::Mcp { server, tool: name } => {
                let record = cx.graphs.mcp_server(server)?;
                let key = format!("{}/{}/{index}", cx.run, self.step);
                let (out, _) =
                    super::mcp::run_step(&record, &cx.graph.allow_hosts, &cx.graphs.router, name, arguments, &key)
                        .await
                        .map_err(|e| e.to_string())?;
                let text = match out["text"].as_str() {
                    Some(t) if !t.is_empty() => t.to_string(),
                    _ => out["content"].to_string(),
                };
                if out["is_error"] == json!(true) {
                    Err(text)
                } else {
                    Ok(text)
                }
            }
            Target::Graph(name) => {
                if cx.depth >= super::steps::MAX_DEPTH {
                    return Err(format!("sub-graphs nest more than {} deep", super::steps::MAX_DEPTH));
                }
                let (_, sub) = cx.graphs.definition(name, None).map_err(|e| e.to_string())?;
                let bound = bind_inputs(&sub, arguments)
                    .map_err(|p| p.iter().map(|x| x.to_string()).collect::<Vec<_>>().join("; "))?;
                let sub = Arc::new(sub);
                let inner = StepContext { graph: sub.clone(), depth: cx.depth + 1, journal: false, ..cx.clone() };
                let outs = run_inline(&inner, &sub, &bound).await?;
                Ok(outs.to_string())
            }
            Target::Recall(kb) => {
                let query = arguments["query"].as_str().unwrap_or_default().to_string();
                let search = Search { query, top_k: 4, mode: SearchMode::Hybrid, filter: MetadataFilter::default() };
                let found = cx.graphs.retrieval.search(kb, search).await.map_err(|e| e.to_string())?;
                let context = recall_context(&found.hits);
                Ok(if context.is_empty() { "nothing found".to_string() } else { context })
            }
        }
    }

    async fn record(&mut self, call: &ToolCallRecord) -> Result<(), String> {
        if !self.cx.journal {
            return Ok(());
        }
        let cmd = Command::RecordToolCall {
            run: self.cx.run.clone(),
            step: self.step.to_string(),
            call: Box::new(call.clone()),
        };
        self.cx
            .graphs
            .cluster
            .command(cmd)
            .await
            .map(|_| ())
            .map_err(|e| format!("committing tool call {} ({}): {e}", call.index, call.name))
    }

    fn now_ms(&self) -> u64 {
        self.cx.graphs.clock.unix_ms()
    }
}

/// Removes the `title` keyword from a schema and its subschemas (a property *named* `title`
/// stays).
fn strip_titles(schema: &mut Value) {
    super::mcp::for_each_schema(schema, 0, &mut |map| {
        map.remove("title");
    });
}

fn strip_strict(tools: &Value) -> Value {
    let mut v = tools.clone();
    if let Value::Array(list) = &mut v {
        for t in list {
            if let Some(f) = t.get_mut("function").and_then(Value::as_object_mut) {
                f.remove("strict");
            }
        }
    }
    v
}

/// The calls as a step's output shows them.
pub fn calls_json(calls: &[ToolCallRecord]) -> Value {
    Value::Array(
        calls
            .iter()
            .map(|c| {
                json!({
                    "index": c.index, "turn": c.turn, "id": c.id, "name": c.name,
                    "arguments": serde_json::from_str::<Value>(&c.arguments).unwrap_or(Value::Null),
                    "result": c.result, "error": c.error,
                    "started_at_ms": c.started_at_ms, "finished_at_ms": c.finished_at_ms,
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A scripted model and tools: answers in order, records what it was asked.
    struct Script {
        answers: VecDeque<&'static str>,
        offered: Vec<bool>,
        required: Vec<bool>,
        conversations: Vec<Vec<ChatTurn>>,
        called: Vec<(String, Value)>,
        recorded: Vec<ToolCallRecord>,
        fail_record_after: Option<usize>,
    }

    impl Script {
        fn new(answers: &[&'static str]) -> Script {
            Script {
                answers: answers.iter().copied().collect(),
                offered: Vec::new(),
                required: Vec::new(),
                conversations: Vec::new(),
                called: Vec::new(),
                recorded: Vec::new(),
                fail_record_after: None,
            }
        }
    }

    impl AgentIo for Script {
        async fn generate(
            &mut self,
            turns: Vec<ChatTurn>,
            tools: Option<Vec<Value>>,
            required: bool,
            _max: u32,
        ) -> Result<Generated, String> {
            self.required.push(required);
            self.offered.push(tools.is_some());
            self.conversations.push(turns);
            let text = self.answers.pop_front().ok_or("the script ran out")?.to_string();
            Ok(Generated { completion_tokens: text.len() as u32, prompt_tokens: 100, text })
        }
        async fn call(&mut self, tool: &AgentToolDef, arguments: &Value, _index: u32) -> Result<String, String> {
            self.called.push((tool.name.clone(), arguments.clone()));
            match tool.name.as_str() {
                "add" => Ok((arguments["a"].as_i64().unwrap_or(0) + arguments["b"].as_i64().unwrap_or(0)).to_string()),
                _ => Err("the weather service is down".into()),
            }
        }
        async fn record(&mut self, call: &ToolCallRecord) -> Result<(), String> {
            if self.fail_record_after.is_some_and(|n| self.recorded.len() >= n) {
                return Err("not the leader any more".into());
            }
            self.recorded.push(call.clone());
            Ok(())
        }
        fn now_ms(&self) -> u64 {
            7
        }
    }

    fn tools() -> Vec<AgentToolDef> {
        let int = json!({"type": "integer"});
        vec![
            AgentToolDef {
                name: "add".into(),
                description: "Adds".into(),
                parameters: json!({"type": "object", "properties": {"a": int, "b": int}, "required": ["a", "b"]}),
                target: Target::Mcp { server: "calc".into(), tool: "add".into() },
            },
            AgentToolDef {
                name: "weather".into(),
                description: "Weather".into(),
                parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
                target: Target::Graph("weather".into()),
            },
        ]
    }

    fn task(max_turns: u32, max_tokens: u32) -> Task {
        Task {
            system: None,
            prompt: "What is (17 + 25) + 8?".into(),
            max_turns,
            max_tokens,
            first_call_required: false,
        }
    }

    const ADD_1: &str = "<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 17, \"b\": 25}}\n</tool_call>";
    const ADD_2: &str = "<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 42, \"b\": 8}}\n</tool_call>";

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().expect("runtime").block_on(f)
    }

    #[test]
    fn two_calls_in_two_turns_then_the_answer() {
        let mut io = Script::new(&[ADD_1, ADD_2, "The answer is 50."]);
        let done = block_on(run_loop(&mut io, &task(6, 1000), &tools(), Vec::new())).expect("answered");
        assert_eq!(done.text, "The answer is 50.");
        assert_eq!(done.turns, 3);
        assert_eq!(
            io.called,
            vec![("add".into(), json!({"a": 17, "b": 25})), ("add".into(), json!({"a": 42, "b": 8}))]
        );
        assert_eq!(
            io.recorded.iter().map(|c| (c.index, c.turn, c.result.as_str())).collect::<Vec<_>>(),
            vec![(0, 0, "42"), (1, 1, "50")]
        );
        // The third turn saw both calls and both results, paired by id.
        let last = &io.conversations[2];
        let roles: Vec<&str> = last.iter().map(|t| t.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "tool", "assistant", "tool"]);
        assert_eq!(last[0].content, DEFAULT_SYSTEM);
        assert_eq!(last[2].tool_calls[0].id, last[3].tool_call_id);
        assert!(!last[2].tool_calls[0].id.is_empty());
        assert_eq!(last[5].content, "50");
        assert_eq!(done.completion_tokens, (ADD_1.len() + ADD_2.len() + "The answer is 50.".len()) as u32);
    }

    #[test]
    fn resuming_from_committed_calls_never_makes_them_again() {
        let mut first = Script::new(&[ADD_1, ADD_2]);
        first.fail_record_after = Some(1);
        let lost = block_on(run_loop(&mut first, &task(6, 1000), &tools(), Vec::new()));
        assert!(lost.expect_err("the second commit failed").contains("not the leader"));
        assert_eq!(first.recorded.len(), 1);
        // The new leader starts from what was committed: the model continues after call 0.
        let mut second = Script::new(&[ADD_2, "50"]);
        let done = block_on(run_loop(&mut second, &task(6, 1000), &tools(), first.recorded.clone())).expect("answered");
        assert_eq!(second.called, vec![("add".into(), json!({"a": 42, "b": 8}))], "call 0 was not made again");
        assert_eq!(second.conversations[0].len(), 4, "system, user, the committed call, its result");
        assert_eq!(done.calls.len(), 2);
        assert_eq!(done.calls[1].turn, 1);
        assert_eq!(done.turns, 3);
    }

    #[test]
    fn bad_calls_are_answered_with_errors_and_not_made() {
        let bad_args = "<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": \"x\"}}\n</tool_call>";
        let failing = "<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>";
        let mut io = Script::new(&[bad_args, failing, "I could not find out."]);
        let done = block_on(run_loop(&mut io, &task(6, 1000), &tools(), Vec::new())).expect("answered");
        assert_eq!(io.called.len(), 1, "only the valid call was made: {:?}", io.called);
        assert!(done.calls[0].error.contains("invalid arguments") && done.calls[0].result.starts_with("error: "));
        assert_eq!(done.calls[1].error, "the weather service is down");
        assert_eq!(done.text, "I could not find out.");
    }

    #[test]
    fn the_last_turn_is_offered_no_tools_and_the_budget_is_kept() {
        let mut io = Script::new(&[ADD_1, ADD_2]);
        let done = block_on(run_loop(&mut io, &task(2, 1000), &tools(), Vec::new())).expect("answered");
        assert_eq!(io.offered, vec![true, false]);
        // Offered no tools, the text is the answer even when it looks like a call.
        assert_eq!(done.text, ADD_2);
        assert_eq!(done.calls.len(), 1);

        let mut io = Script::new(&[ADD_1, ADD_2, "50"]);
        let spent = block_on(run_loop(&mut io, &task(6, ADD_1.len() as u32), &tools(), Vec::new()));
        assert!(spent.expect_err("over budget").contains("budget of"), "stops once the budget is spent");
        assert_eq!(io.called.len(), 1);
    }

    #[test]
    fn a_call_repeated_in_one_turn_is_made_once() {
        let twice: &'static str = "{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}\n{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}\n{\"name\": \"add\", \"arguments\": {\"a\": 2, \"b\": 2}}";
        let mut io = Script::new(&[twice, "3 and 4"]);
        let done = block_on(run_loop(&mut io, &task(6, 1000), &tools(), Vec::new())).expect("answered");
        assert_eq!(io.called.len(), 2, "{:?}", io.called);
        assert_eq!(done.calls.iter().map(|c| c.result.as_str()).collect::<Vec<_>>(), ["3", "4"]);
    }

    #[test]
    fn repeated_or_unmade_calls_lead_to_the_answer_without_tools() {
        // Turn 1 adds; turn 2 asks for the same call again: not made, the answer is asked for.
        let mut io = Script::new(&[ADD_1, ADD_1, "42"]);
        let done = block_on(run_loop(&mut io, &task(6, 1000), &tools(), Vec::new())).expect("answered");
        assert_eq!((io.called.len(), done.text.as_str(), done.turns), (1, "42", 3));
        assert_eq!(io.offered, vec![true, true, false]);
        assert_eq!(io.conversations[2].last().map(|t| t.content.as_str()), Some(ANSWER_NOW));
        // A call written among other text (with a result the model made up) is not made.
        let mixed = "{\"name\": \"weather\", \"arguments\": {\"city\": \"Oslo\"}}\n{\"weather\": \"sunny\"}";
        let mut io = Script::new(&[mixed, "It is sunny."]);
        let done = block_on(run_loop(&mut io, &task(6, 1000), &tools(), Vec::new())).expect("answered");
        assert_eq!((io.called.len(), done.text.as_str()), (0, "It is sunny."));
        assert_eq!(io.offered, vec![true, false]);
        assert!(!mentions_call("{\"name\": \"Ada\"} is not a tool", &["add".to_string()]));
    }

    #[test]
    fn a_required_first_call_is_read_from_inside_the_call() {
        // With the call's opening in the prompt, the answer is the rest of the call.
        let inside: &'static str = "{\"name\": \"add\", \"arguments\": {\"a\": 2, \"b\": 3}}\n</tool_call>";
        let mut io = Script::new(&[inside, "5"]);
        let t = Task { first_call_required: true, ..task(6, 1000) };
        let done = block_on(run_loop(&mut io, &t, &tools(), Vec::new())).expect("answered");
        assert_eq!(io.required, vec![true, false], "only the first turn must call");
        assert_eq!((io.called.len(), done.text.as_str()), (1, "5"));
    }

    #[test]
    fn an_answer_without_calls_ends_at_once() {
        let mut io = Script::new(&["Just 50."]);
        let done = block_on(run_loop(&mut io, &task(6, 1000), &tools(), Vec::new())).expect("answered");
        assert_eq!((done.text.as_str(), done.turns, done.calls.len()), ("Just 50.", 1, 0));
        assert!(io.called.is_empty());
    }

    #[test]
    fn schema_titles_are_not_shown_to_the_model() {
        let mut t = tools();
        t[0].parameters = json!({"title": "addArguments", "type": "object",
            "properties": {"a": {"title": "A", "type": "integer"}, "title": {"title": "Title", "type": "string"}}});
        let shown = &tool_entries(&t, false)[0]["function"]["parameters"];
        assert_eq!(
            shown,
            &json!({"type": "object", "properties": {"a": {"type": "integer"}, "title": {"type": "string"}}})
        );
        assert_eq!(t[0].parameters["title"], "addArguments", "the tool's own schema is kept for checking");
    }

    #[test]
    fn tool_names_are_made_callable() {
        assert_eq!(function_name("search_docs.v2"), "search_docs_v2");
        assert_eq!(function_name("qa-db"), "qa-db");
        let entries = tool_entries(&tools(), true);
        assert_eq!(entries[0]["function"]["name"], "add");
        assert_eq!(entries[0]["type"], "function");
    }
}
