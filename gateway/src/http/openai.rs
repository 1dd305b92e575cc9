//! The OpenAI-compatible endpoints: `/v1/models`, `/v1/chat/completions`,
//! `/v1/completions` (both streaming as server-sent events or not) and `/v1/embeddings`.
//! Request and response shapes follow OpenAI's API so the official SDKs work unchanged.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use shoal_protocol::metric_names as m;
use shoal_protocol::{ChatTurn, Finish, Prompt, SamplingSettings, ToolCallTurn, ToolChat};
use tokio::sync::mpsc;

use super::auth::require;
use super::rag::{self, Citations, RagField};
use super::{ApiError, Body, Caller, GatewayState};
use crate::router::{GenEvent, RouteError};
use crate::state::Scope;
use crate::tools::{self, CallParser, ParsedCall, Piece, Reading};

type Gw = State<Arc<GatewayState>>;

/// The most tokens one request may ask for.
pub const MAX_TOKENS_LIMIT: u32 = 32_768;
/// The most inputs one embeddings request may carry.
pub const MAX_EMBED_INPUTS: usize = 2048;

impl From<RouteError> for ApiError {
    fn from(e: RouteError) -> Self {
        match e {
            RouteError::UnknownModel(msg) => {
                ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", "model_not_found", msg)
            }
            RouteError::WrongKind(msg) | RouteError::BadRequest(msg) => ApiError::bad_request(msg),
            RouteError::NoReplica(msg) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", "no_replica", msg)
            }
            RouteError::Overloaded(msg) => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "server_error", "overloaded", msg)
            }
        }
    }
}

fn unix_secs() -> u64 {
    crate::clock::unix_ms() / 1000
}

fn request_id(prefix: &str) -> String {
    format!("{prefix}-{:024x}", rand::random::<u128>() & ((1u128 << 96) - 1))
}

pub async fn list_models(State(gw): Gw, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let caller = require(&headers, &gw, Scope::User)?;
    let state = gw.cluster.state().read().unwrap_or_else(|p| p.into_inner());
    let data: Vec<Value> = state
        .deployments
        .values()
        .filter(|d| caller.require_model(&d.name).is_ok())
        .map(|d| {
            let v = state.deployed_version(&d.name);
            let ready = state.entry_points(&d.name).len();
            json!({
                "id": d.name,
                "object": "model",
                "created": d.created_at_ms / 1000,
                "owned_by": "shoal",
                "capabilities": v.map(|v| v.capabilities.clone()).unwrap_or_default(),
                "context_length": v.map(|v| v.context_length).unwrap_or(0),
                "recommended_sampling": v.map(|v| v.sampling.json()).unwrap_or(Value::Null),
                "ready_replicas": ready,
            })
        })
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

/// `stop` may be a string or a list of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize, Default)]
pub struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// Sampling fields shared by chat and completions.
#[derive(Debug, Deserialize)]
pub struct SamplingFields {
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<i64>,
    seed: Option<i64>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    stop: Option<StopField>,
    n: Option<u32>,
}

impl SamplingFields {
    pub(crate) fn settings(&self) -> Result<SamplingSettings, ApiError> {
        let max = self.max_completion_tokens.or(self.max_tokens).unwrap_or(256);
        if max < 1 || max > MAX_TOKENS_LIMIT as i64 {
            return Err(ApiError::bad_request(format!(
                "max_tokens must be between 1 and {MAX_TOKENS_LIMIT}, got {max}"
            )));
        }
        let temperature = self.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::bad_request(format!("temperature must be between 0 and 2, got {temperature}")));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::bad_request(format!("top_p must be in (0, 1], got {top_p}")));
        }
        let top_k = self.top_k.unwrap_or(0);
        if top_k < 0 {
            return Err(ApiError::bad_request(format!("top_k must not be negative, got {top_k}")));
        }
        for (name, v) in [("presence_penalty", self.presence_penalty), ("frequency_penalty", self.frequency_penalty)] {
            if let Some(v) = v {
                if !(-2.0..=2.0).contains(&v) {
                    return Err(ApiError::bad_request(format!("{name} must be between -2 and 2, got {v}")));
                }
            }
        }
        if self.n.unwrap_or(1) != 1 {
            return Err(ApiError::bad_request("only n = 1 is supported"));
        }
        let stop = match &self.stop {
            None => vec![],
            Some(StopField::One(s)) => vec![s.clone()],
            Some(StopField::Many(v)) => v.clone(),
        };
        if stop.len() > 4 || stop.iter().any(|s| s.is_empty()) {
            return Err(ApiError::bad_request("stop takes up to 4 non-empty sequences"));
        }
        Ok(SamplingSettings {
            max_tokens: max as u32,
            temperature,
            top_p,
            top_k: top_k.min(u32::MAX as i64) as u32,
            seed: self.seed.map(|s| s as u64),
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            stop,
            constraint: None,
        })
    }
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub(crate) model: String,
    pub(crate) messages: Vec<ChatMessageIn>,
    #[serde(default)]
    pub(crate) stream: bool,
    #[serde(default)]
    pub(crate) stream_options: Option<StreamOptions>,
    /// Shoal's extension: answer from a knowledge base (see `gateway::rag`).
    #[serde(default)]
    pub(crate) knowledge_base: Option<RagField>,
    /// OpenAI tool calling and structured output (see `gateway::tools`).
    #[serde(default)]
    pub(crate) tools: Option<Value>,
    #[serde(default)]
    pub(crate) tool_choice: Option<Value>,
    #[serde(default)]
    pub(crate) parallel_tool_calls: Option<bool>,
    #[serde(default)]
    pub(crate) response_format: Option<Value>,
    #[serde(flatten)]
    pub(crate) sampling: SamplingFields,
}

#[derive(Debug, Deserialize)]
pub struct ChatMessageIn {
    role: String,
    #[serde(default)]
    content: Option<Value>,
    /// An assistant message's calls: `[{"id", "type": "function", "function": {"name", "arguments"}}]`.
    #[serde(default)]
    tool_calls: Option<Value>,
    /// A tool message's call.
    #[serde(default)]
    tool_call_id: Option<String>,
}

/// An assistant message's `tool_calls`, checked.
fn message_tool_calls(calls: &Option<Value>) -> Result<Vec<ToolCallTurn>, ApiError> {
    let list = match calls {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(ApiError::bad_request("tool_calls must be a list")),
    };
    list.iter()
        .enumerate()
        .map(|(i, c)| {
            let f = c
                .get("function")
                .ok_or_else(|| ApiError::bad_request(format!("tool_calls[{i}].function is missing")))?;
            let name = f
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::bad_request(format!("tool_calls[{i}].function.name is missing")))?;
            let arguments = match f.get("arguments") {
                None | Some(Value::Null) => "{}".to_string(),
                Some(Value::String(a)) => a.clone(),
                Some(a) => a.to_string(),
            };
            let id = c.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
            Ok(ToolCallTurn { id, name: name.to_string(), arguments })
        })
        .collect()
}

/// A message's text: a string, or the text parts of a list of content parts.
pub(crate) fn message_text(content: &Option<Value>) -> Result<String, ApiError> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut out = String::new();
            for p in parts {
                match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(t)) => out.push_str(t),
                    _ => return Err(ApiError::bad_request("only text content parts are supported")),
                }
            }
            Ok(out)
        }
        Some(_) => Err(ApiError::bad_request("message content must be a string or a list of content parts")),
    }
}

/// The conversation of a chat request, checked (`developer` turns become `system` turns).
pub(crate) fn chat_turns(messages: &[ChatMessageIn]) -> Result<Vec<ChatTurn>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::bad_request("messages must not be empty"));
    }
    let mut turns = Vec::with_capacity(messages.len());
    for m in messages {
        if !["system", "user", "assistant", "developer", "tool"].contains(&m.role.as_str()) {
            return Err(ApiError::bad_request(format!("unknown message role '{}'", m.role)));
        }
        let role = if m.role == "developer" { "system".to_string() } else { m.role.clone() };
        let mut turn = ChatTurn::new(role, message_text(&m.content)?);
        if m.role == "assistant" {
            turn.tool_calls = message_tool_calls(&m.tool_calls)?;
        }
        if m.role == "tool" {
            turn.tool_call_id = m.tool_call_id.clone().unwrap_or_default();
        }
        turns.push(turn);
    }
    Ok(turns)
}

pub async fn chat_completions(
    State(gw): Gw,
    headers: HeaderMap,
    Body(req): Body<ChatRequest>,
) -> Result<Response, ApiError> {
    let caller = require(&headers, &gw, Scope::User)?;
    if let Some(graph) = req.model.strip_prefix("graph:") {
        let turns = chat_turns(&req.messages)?;
        return super::graphs::chat_with_graph(&gw, &caller.id, graph, &turns, req.stream).await;
    }
    caller.require_model(&req.model)?;
    let mut turns = chat_turns(&req.messages)?;
    let mut sampling = req.sampling.settings()?;
    let plan = tools::plan(
        req.tools.as_ref(),
        req.tool_choice.as_ref(),
        req.parallel_tool_calls,
        req.response_format.as_ref(),
    )
    .map_err(ApiError::bad_request)?;
    let include_usage = req.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let citations = match req.knowledge_base {
        Some(field) => {
            gw.router.check_generate(&req.model)?;
            Some(rag::augment(&gw, field, &mut turns).await?)
        }
        None => None,
    };
    let calls = match &plan.reading {
        Reading::Text => None,
        Reading::Calls { names, forced, single } => Some(CallParser::new(names.clone(), *single, *forced)),
    };
    let prompt = if plan.shown.is_empty() && plan.answer_prefix.is_empty() && !uses_tools(&turns) {
        Prompt::Chat(turns)
    } else {
        Prompt::ToolChat(ToolChat {
            turns,
            tools: if plan.shown.is_empty() { String::new() } else { Value::Array(plan.shown).to_string() },
            answer_prefix: plan.answer_prefix,
        })
    };
    sampling.constraint = plan.constraint;
    let out = Output { stream: req.stream, include_usage, kind: Kind::Chat, citations, calls };
    generate(gw, caller, req.model, prompt, sampling, out).await
}

/// Whether a conversation holds tool calls or tool results (it is rendered with tool support).
fn uses_tools(turns: &[ChatTurn]) -> bool {
    turns.iter().any(|t| !t.tool_calls.is_empty() || t.role == "tool")
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptField {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub(crate) model: String,
    pub(crate) prompt: PromptField,
    #[serde(default)]
    pub(crate) stream: bool,
    #[serde(default)]
    pub(crate) stream_options: Option<StreamOptions>,
    #[serde(flatten)]
    pub(crate) sampling: SamplingFields,
}

/// The one non-empty prompt of a completion request.
pub(crate) fn completion_prompt(prompt: PromptField) -> Result<String, ApiError> {
    let prompt = match prompt {
        PromptField::One(s) => s,
        PromptField::Many(mut v) if v.len() == 1 => v.remove(0),
        PromptField::Many(_) => return Err(ApiError::bad_request("exactly one prompt per request is supported")),
    };
    if prompt.is_empty() {
        return Err(ApiError::bad_request("prompt must not be empty"));
    }
    Ok(prompt)
}

pub async fn completions(
    State(gw): Gw,
    headers: HeaderMap,
    Body(req): Body<CompletionRequest>,
) -> Result<Response, ApiError> {
    let caller = require(&headers, &gw, Scope::User)?;
    caller.require_model(&req.model)?;
    let prompt = completion_prompt(req.prompt)?;
    let sampling = req.sampling.settings()?;
    let include_usage = req.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let out = Output { stream: req.stream, include_usage, kind: Kind::Completion, citations: None, calls: None };
    generate(gw, caller, req.model, Prompt::Text(prompt), sampling, out).await
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Completion,
}

impl Kind {
    fn object(self, streaming: bool) -> &'static str {
        match (self, streaming) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Completion, _) => "text_completion",
        }
    }
    fn id_prefix(self) -> &'static str {
        match self {
            Kind::Chat => "chatcmpl",
            Kind::Completion => "cmpl",
        }
    }
}

fn usage(prompt: u32, completion: u32) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

/// How to answer a generation.
struct Output {
    stream: bool,
    include_usage: bool,
    kind: Kind,
    /// Set for a chat answered from a knowledge base.
    citations: Option<Citations>,
    /// Set when tool calls are read from the answer.
    calls: Option<CallParser>,
}

/// Who asked and how their request is accounted for.
struct Meter {
    gw: Arc<GatewayState>,
    caller: Caller,
    /// The model's metric label (see [`GatewayState::model_label`]).
    label: String,
    started: Instant,
    /// When the last token was passed on (for the inter-token latency).
    last_token: std::sync::Mutex<Option<Instant>>,
}

impl Meter {
    fn new(gw: &Arc<GatewayState>, caller: Caller, model: &str) -> Self {
        Self {
            label: gw.model_label(model),
            gw: gw.clone(),
            caller,
            started: Instant::now(),
            last_token: std::sync::Mutex::new(None),
        }
    }
    fn observe(&self, outcome: &'static str) {
        self.gw.history.counters.request(outcome == "ok");
        metrics::histogram!(m::REQUEST_SECONDS, "model" => self.label.clone(), "outcome" => outcome)
            .record(self.started.elapsed().as_secs_f64());
    }
    fn first_token(&self) {
        self.gw.history.counters.first_token(self.started.elapsed());
        metrics::histogram!(m::TTFT_SECONDS, "model" => self.label.clone())
            .record(self.started.elapsed().as_secs_f64());
    }
    fn tokens(&self, n: u32) {
        self.gw.history.counters.tokens(u64::from(n));
        metrics::counter!(m::GATEWAY_TOKENS, "model" => self.label.clone()).increment(u64::from(n));
        let now = Instant::now();
        let previous = self.last_token.lock().unwrap_or_else(|p| p.into_inner()).replace(now);
        if let (Some(previous), Some(n)) = (previous, std::num::NonZeroU32::new(n)) {
            // Tokens that arrive together share the gap.
            let gap = now.duration_since(previous).as_secs_f64() / f64::from(n.get());
            let h = metrics::histogram!(m::INTER_TOKEN_SECONDS, "model" => self.label.clone());
            for _ in 0..n.get() {
                h.record(gap);
            }
        }
    }
    /// Charges the caller's token budget for a finished generation.
    fn spend(&self, prompt_tokens: u32, completion_tokens: u32) {
        let n = u64::from(prompt_tokens) + u64::from(completion_tokens);
        self.gw.quotas.spend_tokens(&self.caller, n, self.gw.clock.unix_ms());
    }
}

async fn generate(
    gw: Arc<GatewayState>,
    caller: Caller,
    model: String,
    prompt: Prompt,
    sampling: SamplingSettings,
    out: Output,
) -> Result<Response, ApiError> {
    gw.router.check_generate(&model)?;
    if let Err(retry_ms) = gw.quotas.admit_tokens(&caller, gw.clock.unix_ms()) {
        metrics::counter!(m::HTTP_RATE_LIMITED, "limit" => "tokens").increment(1);
        let msg = format!("the API key '{}' used its {} tokens this minute", caller.name, caller.tokens_per_minute);
        return Err(ApiError::rate_limited(msg, retry_ms));
    }
    let meter = Meter::new(&gw, caller, &model);
    let mut rx = gw.router.generate(model.clone(), prompt, sampling);
    let id = request_id(out.kind.id_prefix());
    if out.stream {
        // Admission is decided before the first byte: a refusal (full replicas, no replica)
        // is an HTTP status with Retry-After, not a 200 whose stream carries an error.
        let first = match rx.recv().await {
            Some(GenEvent::Failed(e)) => {
                meter.observe("error");
                return Err(e.into());
            }
            Some(ev) => ev,
            None => {
                meter.observe("error");
                return Err(ApiError::unavailable("the generation ended before it started"));
            }
        };
        Ok(stream_response(first, rx, id, model, out, meter).into_response())
    } else {
        collect_response(rx, id, model, out, meter).await
    }
}

async fn collect_response(
    mut rx: mpsc::Receiver<GenEvent>,
    id: String,
    model: String,
    out: Output,
    meter: Meter,
) -> Result<Response, ApiError> {
    let Output { kind, citations, calls: mut parser, .. } = out;
    let mut text = String::new();
    let mut first = true;
    while let Some(ev) = rx.recv().await {
        match ev {
            GenEvent::Started { .. } => {}
            GenEvent::Delta { text: t, tokens } => {
                if first {
                    first = false;
                    meter.first_token();
                }
                meter.tokens(tokens);
                text.push_str(&t);
            }
            GenEvent::Done { finish, prompt_tokens, completion_tokens } => {
                meter.observe("ok");
                meter.spend(prompt_tokens, completion_tokens);
                let mut calls = Vec::new();
                if let Some(parser) = parser.as_mut() {
                    let mut content = String::new();
                    for piece in parser.push(&text).into_iter().chain(parser.finish()) {
                        match piece {
                            Piece::Text(t) => content.push_str(&t),
                            Piece::Call(c) => calls.push(c),
                        }
                    }
                    text = content;
                }
                let choice = match kind {
                    Kind::Chat if !calls.is_empty() => json!({
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": if text.trim().is_empty() { Value::Null } else { json!(text) },
                            "tool_calls": calls.iter().map(call_json).collect::<Vec<_>>(),
                        },
                        "logprobs": null,
                        "finish_reason": "tool_calls",
                    }),
                    Kind::Chat => json!({
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": null,
                        "finish_reason": finish.as_str(),
                    }),
                    Kind::Completion => json!({
                        "index": 0, "text": text, "logprobs": null, "finish_reason": finish.as_str(),
                    }),
                };
                let mut body = json!({
                    "id": id,
                    "object": kind.object(false),
                    "created": unix_secs(),
                    "model": model,
                    "choices": [choice],
                    "usage": usage(prompt_tokens, completion_tokens),
                });
                if let Some(c) = &citations {
                    body["citations"] = c.json(Some(&text));
                }
                return Ok(Json(body).into_response());
            }
            GenEvent::Failed(e) => {
                meter.observe("error");
                return Err(e.into());
            }
        }
    }
    meter.observe("error");
    Err(ApiError::unavailable("the generation ended without an answer"))
}

/// A call as a message's `tool_calls` entry.
fn call_json(c: &ParsedCall) -> Value {
    json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}})
}

/// A call as stream chunks (OpenAI's delta shape): the first names it, the second carries
/// its arguments.
fn call_chunks(id: &str, model: &str, c: &ParsedCall) -> [Value; 2] {
    let delta = |d: Value| {
        json!({"id": id, "object": "chat.completion.chunk", "created": unix_secs(), "model": model,
            "choices": [{"index": 0, "delta": {"tool_calls": [d]}, "logprobs": null, "finish_reason": null}]})
    };
    [
        delta(json!({"index": c.index, "id": c.id, "type": "function", "function": {"name": c.name, "arguments": ""}})),
        delta(json!({"index": c.index, "function": {"arguments": c.arguments}})),
    ]
}

fn chunk(id: &str, model: &str, kind: Kind, text: Option<&str>, finish: Option<Finish>, role: bool) -> Value {
    let finish = finish.map(|f| f.as_str());
    let choice = match kind {
        Kind::Chat => {
            let mut delta = serde_json::Map::new();
            if role {
                delta.insert("role".into(), json!("assistant"));
            }
            if let Some(t) = text {
                delta.insert("content".into(), json!(t));
            }
            json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
        }
        Kind::Completion => json!({"index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish}),
    };
    json!({"id": id, "object": kind.object(true), "created": unix_secs(), "model": model, "choices": [choice]})
}

fn stream_response(
    first: GenEvent,
    rx: mpsc::Receiver<GenEvent>,
    id: String,
    model: String,
    out: Output,
    meter: Meter,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    struct S {
        /// The event that arrived before the response began.
        first_event: Option<GenEvent>,
        rx: mpsc::Receiver<GenEvent>,
        pending: std::collections::VecDeque<Event>,
        done: bool,
        first: bool,
        /// The answer so far (kept only for citations).
        text: String,
        /// Reads tool calls out of the answer.
        calls: Option<CallParser>,
    }
    let (kind, include_usage, citations) = (out.kind, out.include_usage, out.citations);
    let init = S {
        first_event: Some(first),
        rx,
        pending: Default::default(),
        done: false,
        first: true,
        text: String::new(),
        calls: out.calls,
    };
    let meter = Arc::new(meter);
    let stream = futures_util::stream::unfold(init, move |mut s| {
        let (id, model, citations, meter) = (id.clone(), model.clone(), citations.clone(), meter.clone());
        async move {
            loop {
                if let Some(ev) = s.pending.pop_front() {
                    return Some((Ok(ev), s));
                }
                if s.done {
                    return None;
                }
                let data = |v: Value| Event::default().data(v.to_string());
                let next = match s.first_event.take() {
                    Some(ev) => Some(ev),
                    None => s.rx.recv().await,
                };
                match next {
                    Some(GenEvent::Started { .. }) => {
                        if kind == Kind::Chat {
                            let mut first = chunk(&id, &model, kind, Some(""), None, true);
                            if let Some(c) = &citations {
                                first["citations"] = c.json(None);
                            }
                            s.pending.push_back(data(first));
                        }
                    }
                    Some(GenEvent::Delta { text, tokens }) => {
                        if s.first {
                            s.first = false;
                            meter.first_token();
                        }
                        meter.tokens(tokens);
                        let pieces = match s.calls.as_mut() {
                            Some(parser) => parser.push(&text),
                            None => vec![Piece::Text(text)],
                        };
                        for piece in pieces {
                            match piece {
                                Piece::Text(text) if !text.is_empty() => {
                                    s.pending.push_back(data(chunk(&id, &model, kind, Some(&text), None, false)));
                                    if citations.is_some() {
                                        s.text.push_str(&text);
                                    }
                                }
                                Piece::Text(_) => {}
                                Piece::Call(c) => s.pending.extend(call_chunks(&id, &model, &c).map(data)),
                            }
                        }
                    }
                    Some(GenEvent::Done { finish, prompt_tokens, completion_tokens }) => {
                        meter.observe("ok");
                        meter.spend(prompt_tokens, completion_tokens);
                        let mut called = false;
                        if let Some(parser) = s.calls.as_mut() {
                            for piece in parser.finish() {
                                match piece {
                                    Piece::Text(text) => {
                                        s.pending.push_back(data(chunk(&id, &model, kind, Some(&text), None, false)))
                                    }
                                    Piece::Call(c) => s.pending.extend(call_chunks(&id, &model, &c).map(data)),
                                }
                            }
                            called = parser.calls() > 0;
                        }
                        let text = if kind == Kind::Chat { None } else { Some("") };
                        let mut last = chunk(&id, &model, kind, text, Some(finish), false);
                        if called {
                            last["choices"][0]["finish_reason"] = json!("tool_calls");
                        }
                        if let Some(c) = &citations {
                            last["cited"] = json!(c.cited(&s.text));
                        }
                        s.pending.push_back(data(last));
                        if include_usage {
                            let u = json!({
                                "id": id, "object": kind.object(true), "created": unix_secs(), "model": model,
                                "choices": [], "usage": usage(prompt_tokens, completion_tokens),
                            });
                            s.pending.push_back(data(u));
                        }
                        s.pending.push_back(Event::default().data("[DONE]"));
                        s.done = true;
                    }
                    Some(GenEvent::Failed(e)) => {
                        meter.observe("error");
                        let err: ApiError = e.into();
                        let body = json!({"error": {"message": err.message, "type": err.kind, "code": err.code}});
                        s.pending.push_back(data(body));
                        s.pending.push_back(Event::default().data("[DONE]"));
                        s.done = true;
                    }
                    None => return None,
                }
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum EmbedInput {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
pub struct EmbeddingRequest {
    pub(crate) model: String,
    pub(crate) input: Value,
    #[serde(default)]
    pub(crate) encoding_format: Option<String>,
    #[serde(default)]
    pub(crate) dimensions: Option<u32>,
}

/// The checked inputs of an embeddings request and whether the answer is base64.
pub(crate) fn embedding_inputs(
    input: Value,
    encoding_format: Option<&str>,
    dimensions: Option<u32>,
) -> Result<(Vec<String>, bool), ApiError> {
    let inputs: Vec<String> = match serde_json::from_value::<EmbedInput>(input) {
        Ok(EmbedInput::One(s)) => vec![s],
        Ok(EmbedInput::Many(v)) => v,
        Err(_) => return Err(ApiError::bad_request("input must be a string or a list of strings")),
    };
    if inputs.is_empty() {
        return Err(ApiError::bad_request("input must hold at least one string"));
    }
    if inputs.len() > MAX_EMBED_INPUTS {
        return Err(ApiError::too_large(format!(
            "input holds {} strings; at most {MAX_EMBED_INPUTS} per request: split it",
            inputs.len()
        )));
    }
    if inputs.iter().any(|s| s.is_empty()) {
        return Err(ApiError::bad_request("input strings must not be empty"));
    }
    let base64 = match encoding_format {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => return Err(ApiError::bad_request(format!("unknown encoding_format '{other}'"))),
    };
    if dimensions.is_some() {
        return Err(ApiError::bad_request("this model does not support choosing dimensions"));
    }
    Ok((inputs, base64))
}

pub async fn embeddings(
    State(gw): Gw,
    headers: HeaderMap,
    Body(req): Body<EmbeddingRequest>,
) -> Result<Json<Value>, ApiError> {
    let caller = require(&headers, &gw, Scope::User)?;
    caller.require_model(&req.model)?;
    let (inputs, base64) = embedding_inputs(req.input, req.encoding_format.as_deref(), req.dimensions)?;
    let meter = Meter::new(&gw, caller, &req.model);
    let (vectors, tokens) = match gw.router.embed(&req.model, inputs).await {
        Ok(v) => v,
        Err(e) => {
            meter.observe("error");
            return Err(e.into());
        }
    };
    meter.observe("ok");
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": req.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })))
}
