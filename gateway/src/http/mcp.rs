//! The MCP server at `/mcp`: the Model Context Protocol over its Streamable HTTP transport,
//! served by the official Rust SDK (`rmcp`) inside the gateway's HTTP listener.
//!
//! - **Stateless.** Every POST is answered on its own (no `Mcp-Session-Id`, JSON answers),
//!   so any gateway answers any request, as with the rest of the API.
//! - **Authorized with API keys.** The same `Authorization: Bearer <key>` the OpenAI
//!   endpoints take. Without a valid key the answer is a 401 whose
//!   `WWW-Authenticate: Bearer resource_metadata="…"` names the protected-resource metadata
//!   (RFC 9728) served at `/.well-known/oauth-protected-resource`, as the MCP authorization
//!   spec asks. Per-key limits (models, request rate, token budget) apply as over HTTP.
//! - **Origin checked.** A request whose `Origin` is not this gateway's own host is refused
//!   with 403 (the DNS-rebinding protection the transport spec requires); requests without
//!   an `Origin` (every non-browser client) pass. See [`origin_allowed`].
//! - **Tools:** `list_models`, `chat`, `recall`, and one `graph_<name>` per task graph, read
//!   from the replicated state when the list is asked for (a graph applied later appears
//!   without a restart).
//! - **Prompts:** the registered prompt templates (`/v1/prompts`, `shoal prompt add`), each
//!   with its arguments; `prompts/get` renders one (a missing or unknown argument is an
//!   invalid-params error).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use rmcp::model::{
    CacheScope, CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, GetPromptRequestParams,
    GetPromptResponse, GetPromptResult, Implementation, JsonObject, ListPromptsResult, ListToolsResult,
    PaginatedRequestParams, PromptMessage, Role, ServerCapabilities, ServerConfig, Tool, ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde::Deserialize;
use serde_json::{json, Value};
use shoal_coordinator::state::RunStatus;
use shoal_graph::Graph;
use shoal_protocol::metric_names as m;
use shoal_protocol::{ChatTurn, Prompt};

use super::knowledge::{hit_json, SearchJson};
use super::openai::{chat_turns, ChatMessageIn, SamplingFields};
use super::{ApiError, Caller, GatewayState, MAX_BODY_BYTES};
use crate::retrieval::Search;
use crate::router::GenEvent;

type Gw = Arc<GatewayState>;

/// Where the MCP endpoint is served.
pub const PATH: &str = "/mcp";
/// Where its protected-resource metadata is served (RFC 9728).
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";
/// The prefix of the tools that run task graphs.
pub const GRAPH_TOOL_PREFIX: &str = "graph_";
/// The longest tool name (the MCP tool-name rules: 1 to 128 characters).
pub const MAX_TOOL_NAME: usize = 128;
/// How long a graph tool waits for its run (the run goes on after that; its id is returned).
const RUN_WAIT: Duration = Duration::from_secs(600);

/// The routes: `/mcp` behind its own guard (origin, key, rate, body), and the metadata
/// document, open like the probes. Mounted outside the gateway's key layer, whose 401s
/// carry no MCP challenge.
pub fn router(gw: Gw) -> Router<Gw> {
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_sse_keep_alive(None)
        // `Host` is not checked against a fixed list (the gateway serves under any name it
        // is given); the guard checks `Origin` against this gateway's own host instead.
        .disable_allowed_hosts()
        .disable_allowed_origins()
        .with_max_request_body_bytes(MAX_BODY_BYTES);
    let for_handlers = gw.clone();
    let service = StreamableHttpService::new(
        move || Ok(Shoal { gw: for_handlers.clone() }),
        Arc::new(NeverSessionManager::default()),
        config,
    );
    Router::new()
        .route_service(PATH, service)
        .route_layer(axum::middleware::from_fn_with_state(gw, guard))
        .route(METADATA_PATH, get(resource_metadata))
        .route(&format!("{METADATA_PATH}{PATH}"), get(resource_metadata))
}

/// In front of the MCP service: the origin rule, the key (a 401 with the challenge), the
/// key's request rate, and the body read within the gateway's deadline and size cap.
async fn guard(State(gw): State<Gw>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    let origin = headers.get(header::ORIGIN).map(|v| v.to_str().unwrap_or("\u{fffd}"));
    if !origin_allowed(origin, host_header(headers), &known_hosts(&gw)) {
        metrics::counter!(m::HTTP_AUTH_REFUSED, "reason" => "origin").increment(1);
        return ApiError::forbidden(format!(
            "Origin {} is not this gateway's: MCP is served to browser pages of this gateway's own host only",
            origin.unwrap_or_default()
        ))
        .into_response();
    }
    if !gw.cluster.is_loaded() {
        return ApiError::unavailable(
            "this gateway has not received the cluster view from a coordinator yet; retry in a moment",
        )
        .into_response();
    }
    let caller = match super::auth::authenticate(headers, &gw) {
        Ok(c) => c,
        Err(e) => {
            let had_key = headers.contains_key(header::AUTHORIZATION);
            let challenge = challenge(&base_url(headers), had_key);
            let mut response = e.into_response();
            if let Ok(v) = HeaderValue::from_str(&challenge) {
                response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
            return response;
        }
    };
    if let Err(retry_ms) = gw.quotas.admit_request(&caller, gw.clock.unix_ms()) {
        metrics::counter!(m::HTTP_RATE_LIMITED, "limit" => "requests").increment(1);
        return ApiError::rate_limited(
            format!("the API key '{}' is limited to {} requests/s", caller.name, caller.rate_per_s),
            retry_ms,
        )
        .into_response();
    }
    let (mut parts, body) = req.into_parts();
    let read = tokio::time::timeout(super::server::BODY_READ_TIMEOUT, axum::body::to_bytes(body, MAX_BODY_BYTES));
    let bytes = match read.await {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => {
            return ApiError::too_large(format!("the request body is over {MAX_BODY_BYTES} bytes (or was cut off)"))
                .into_response()
        }
        Err(_) => {
            return ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request_error",
                "timeout",
                "the request body did not arrive in time",
            )
            .into_response()
        }
    };
    parts.extensions.insert(caller.clone());
    let mut response = next.run(Request::from_parts(parts, axum::body::Body::from(bytes))).await;
    // The audit layer records who it was.
    response.extensions_mut().insert(caller);
    response
}

/// `GET /.well-known/oauth-protected-resource` (and `…/mcp`): what MCP clients read after a
/// 401. Shoal's keys are issued by the cluster's admins (`shoal key create`), not by an
/// OAuth authorization server, so none is listed.
async fn resource_metadata(headers: HeaderMap) -> Json<Value> {
    Json(metadata(&base_url(&headers)))
}

/// The protected-resource metadata document for a gateway at `base`.
pub fn metadata(base: &str) -> Value {
    json!({
        "resource": format!("{base}{PATH}"),
        "resource_name": "Shoal gateway (MCP)",
        "bearer_methods_supported": ["header"],
    })
}

/// The `WWW-Authenticate` value of a 401 at `/mcp` (RFC 6750, RFC 9728): the metadata's
/// address, and `invalid_token` when a key was given but refused.
pub fn challenge(base: &str, had_key: bool) -> String {
    let mut out = format!("Bearer resource_metadata=\"{base}{METADATA_PATH}\"");
    if had_key {
        out.push_str(", error=\"invalid_token\", error_description=\"the API key is invalid or expired\"");
    }
    out
}

/// The address clients reach this gateway at, as the request names it: `http://<Host>`
/// (`https` behind a proxy that says so with `X-Forwarded-Proto`).
fn base_url(headers: &HeaderMap) -> String {
    let scheme = match headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()) {
        Some(p) if p.eq_ignore_ascii_case("https") => "https",
        _ => "http",
    };
    let host = host_header(headers)
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\'))
        .unwrap_or("localhost");
    format!("{scheme}://{host}")
}

fn host_header(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::HOST).and_then(|v| v.to_str().ok())
}

/// The host names this gateway is known by in the cluster: the HTTP addresses of the
/// coordinators (each embeds a gateway), from the replicated state and the config.
fn known_hosts(gw: &GatewayState) -> Vec<String> {
    let mut out: Vec<String> = gw.configured.iter().map(|(_, _, http)| http.clone()).collect();
    let state = gw.cluster.state().read().unwrap_or_else(|p| p.into_inner());
    out.extend(state.coordinators.values().map(|c| c.http.clone()));
    out
}

/// The host of a `host[:port]` authority or of an origin (`scheme://host[:port]`), lowercase,
/// without IPv6 brackets or a trailing dot.
pub fn host_of(authority_or_origin: &str) -> Option<String> {
    let s = authority_or_origin.trim();
    let rest = match s.split_once("://") {
        Some((scheme, rest)) if !scheme.is_empty() => rest,
        Some(_) => return None,
        None => s,
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split_once(']')?.0
    } else {
        match authority.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => authority,
        }
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    (!host.is_empty()).then_some(host)
}

/// `localhost` (and its subdomains), `127.0.0.0/8`, `::1`.
pub fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host.ends_with(".localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
        || host.parse::<std::net::Ipv6Addr>().is_ok_and(|ip| ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()))
}

/// Whether a request with this `Origin` may use `/mcp`.
///
/// No `Origin` (a client that is not a browser): yes. Otherwise the origin's host must be
/// this gateway's own host: the host the request was sent to when that is an IP address or
/// `localhost` (a name that no DNS answer can point elsewhere), or the host of one of the
/// cluster's gateway addresses (`known`); and a loopback origin (`localhost`, `127.0.0.1`,
/// `::1`) stands for any loopback host. The `Host` header alone is not trusted when it is a
/// DNS name: in a DNS-rebinding attack it is the attacker's name, the same as the `Origin`.
pub fn origin_allowed(origin: Option<&str>, host: Option<&str>, known: &[String]) -> bool {
    let Some(origin) = origin else { return true };
    let Some(from) = host_of(origin) else { return false };
    let mut own: BTreeSet<String> = known.iter().filter_map(|k| host_of(k)).collect();
    if let Some(h) = host.and_then(host_of) {
        if h.parse::<IpAddr>().is_ok() || is_loopback(&h) {
            own.insert(h);
        }
    }
    own.contains(&from) || (is_loopback(&from) && own.iter().any(|h| is_loopback(h)))
}

/// A graph's tool name: `graph_` and the name, with every character the MCP tool-name rules
/// do not allow (letters, digits, `_`, `-`, `.`) replaced by `_`, at most 128 characters.
pub fn tool_name(graph: &str) -> String {
    let mut out = String::from(GRAPH_TOOL_PREFIX);
    out.extend(graph.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') { c } else { '_' }));
    out.truncate(MAX_TOOL_NAME);
    out
}

/// A JSON Schema (an object) for a graph's declared inputs: each input's type and
/// description, its default, and the inputs without a default as required.
pub fn input_schema(graph: &Graph) -> JsonObject {
    let mut properties = serde_json::Map::new();
    let mut required = Vec::new();
    for (name, spec) in &graph.inputs {
        let mut p = serde_json::Map::new();
        // `any` admits every JSON value: no `type` at all.
        if spec.kind != shoal_graph::definition::ValueType::Any {
            p.insert("type".into(), json!(spec.kind.as_str()));
        }
        if !spec.description.is_empty() {
            p.insert("description".into(), json!(spec.description));
        }
        match &spec.default {
            Some(d) => {
                p.insert("default".into(), d.clone());
            }
            None => required.push(json!(name)),
        }
        properties.insert(name.clone(), Value::Object(p));
    }
    let mut schema = serde_json::Map::new();
    schema.insert("type".into(), json!("object"));
    schema.insert("properties".into(), Value::Object(properties));
    if !required.is_empty() {
        schema.insert("required".into(), Value::Array(required));
    }
    schema.insert("additionalProperties".into(), json!(false));
    schema
}

fn object(v: Value) -> JsonObject {
    match v {
        Value::Object(o) => o,
        _ => JsonObject::new(),
    }
}

/// The tools that are always there.
fn static_tools() -> Vec<Tool> {
    let read_only = ToolAnnotations::new().read_only(true).destructive(false).open_world(false);
    vec![
        Tool::new(
            "list_models",
            "The models (deployments) this API key may use, with their capabilities, context length and ready \
             replicas.",
            object(json!({"type": "object", "properties": {}, "additionalProperties": false})),
        )
        .annotate(read_only.clone()),
        Tool::new(
            "chat",
            "Generates an answer with a chat model: give `messages` (a conversation) or `prompt` (one user \
             message). Returns the answer text.",
            object(json!({
                "type": "object",
                "properties": {
                    "model": {"type": "string", "description": "a chat model's name (see list_models)"},
                    "messages": {
                        "type": "array",
                        "description": "the conversation, oldest first",
                        "items": {
                            "type": "object",
                            "properties": {
                                "role": {"type": "string", "enum": ["system", "developer", "user", "assistant"]},
                                "content": {"type": "string"}
                            },
                            "required": ["role", "content"]
                        },
                        "minItems": 1
                    },
                    "prompt": {"type": "string", "description": "one user message (instead of messages)"},
                    "max_tokens": {"type": "integer", "minimum": 1, "maximum": super::openai::MAX_TOKENS_LIMIT,
                                   "description": "the most tokens to generate (default 256)"},
                    "temperature": {"type": "number", "minimum": 0, "maximum": 2,
                                    "description": "sampling temperature (default 1; 0 is greedy)"}
                },
                "required": ["model"],
                "additionalProperties": false
            })),
        )
        .annotate(ToolAnnotations::new().read_only(true).destructive(false).open_world(false)),
        Tool::new(
            "recall",
            "Searches a knowledge base: the passages nearest to the query, each with its text, document, \
             and score.",
            object(json!({
                "type": "object",
                "properties": {
                    "knowledge_base": {"type": "string", "description": "the knowledge base's name"},
                    "query": {"type": "string", "description": "what to search for"},
                    "mode": {"type": "string", "enum": ["hybrid", "dense", "sparse"],
                             "description": "dense (embeddings), sparse (BM25) or hybrid (both, fused; the default)"},
                    "top_k": {"type": "integer", "minimum": 1, "description": "how many passages (default 5)"},
                    "filter": {
                        "type": "object",
                        "description": "only passages of these documents, source, tags (any) or metadata",
                        "properties": {
                            "document_ids": {"type": "array", "items": {"type": "string"}},
                            "source": {"type": "string"},
                            "tags": {"type": "array", "items": {"type": "string"}},
                            "metadata": {"type": "object", "additionalProperties": {"type": "string"}}
                        },
                        "additionalProperties": false
                    }
                },
                "required": ["knowledge_base", "query"],
                "additionalProperties": false
            })),
        )
        .annotate(read_only),
    ]
}

/// A graph behind a tool: its name, version (0: built in) and definition.
struct GraphTool {
    graph: String,
    version: u32,
    def: Graph,
}

/// Every graph's tool, by tool name: the built-in graphs, then the registered ones, as the
/// replicated state has them now (the first graph to take a name keeps it).
fn graph_tools(gw: &GatewayState) -> Vec<(String, GraphTool)> {
    let graphs = &gw.graphs;
    let mut found: Vec<(String, GraphTool)> = graphs
        .builtins()
        .iter()
        .map(|(name, def)| (tool_name(name), GraphTool { graph: name.clone(), version: 0, def: def.clone() }))
        .collect();
    let names: Vec<String> =
        gw.cluster.state().read().unwrap_or_else(|p| p.into_inner()).graphs.keys().cloned().collect();
    for name in names {
        // A stored definition that no longer reads is left out (GET /v1/graphs shows why).
        if let Ok((version, def)) = graphs.definition(&name, None) {
            let tool = tool_name(&name);
            if !found.iter().any(|(t, _)| *t == tool) {
                found.push((tool, GraphTool { graph: name, version, def }));
            }
        }
    }
    found
}

fn graph_tool(tool: &str, g: &GraphTool) -> Tool {
    let description = if g.def.description.trim().is_empty() {
        format!("Runs the task graph '{}' and returns its outputs.", g.graph)
    } else {
        let d = g.def.description.trim().trim_end_matches('.');
        format!("{d} (runs the task graph '{}' and returns its outputs).", g.graph)
    };
    let mut t = Tool::new(tool.to_string(), description, input_schema(&g.def))
        .with_title(format!("graph {}", g.graph))
        .annotate(ToolAnnotations::new().read_only(false).destructive(false));
    let mut meta = rmcp::model::MetaObject::new();
    meta.insert("shoal/graph".into(), json!({"name": g.graph, "version": g.version}));
    t.meta = Some(meta);
    t
}

/// A tool call that failed in a way the caller should read (MCP's `isError` result).
fn failed(message: impl Into<String>) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message)])
}

/// An API refusal as a tool error, with the HTTP API's wording.
fn refused(e: ApiError) -> CallToolResult {
    let mut message = e.message;
    if let Some(ms) = e.retry_after_ms {
        message.push_str(&format!(" (retry in {} s)", ms.div_ceil(1000).max(1)));
    }
    failed(message)
}

/// A successful result: its text, and the same as structured content.
fn answered(text: String, structured: Value) -> CallToolResult {
    let mut r = CallToolResult::success(vec![ContentBlock::text(text)]);
    r.structured_content = Some(structured);
    r
}

/// Arguments of a tool read into `T` (unknown fields refused), or the tool error that says
/// what is wrong with them.
fn arguments<T: serde::de::DeserializeOwned>(tool: &str, args: &JsonObject) -> Result<T, CallToolResult> {
    serde_json::from_value(Value::Object(args.clone()))
        .map_err(|e| failed(format!("invalid arguments for {tool}: {e}")))
}

/// The MCP server of one request (stateless: the SDK makes one per request).
#[derive(Clone)]
struct Shoal {
    gw: Gw,
}

impl ServerHandler for Shoal {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().enable_prompts().build())
            .with_server_info(
                Implementation::new("shoal", env!("CARGO_PKG_VERSION"))
                    .with_title("Shoal")
                    .with_description("A distributed compute mesh serving AI models"),
            )
            .with_instructions(
                "Shoal serves models, knowledge bases and task graphs. list_models shows the models this key \
                 may use; chat generates with one; recall searches a knowledge base; each graph_<name> tool \
                 runs a task graph with its declared inputs. The prompts are the cluster's prompt templates.",
            )
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        caller_of(&context)?;
        let prompts: Vec<rmcp::model::Prompt> = super::prompts::all(&self.gw)
            .into_iter()
            .map(|(_, p)| {
                let arguments = p
                    .effective_arguments()
                    .into_iter()
                    .map(|a| {
                        let arg = rmcp::model::PromptArgument::new(a.name).with_required(a.required);
                        if a.description.is_empty() {
                            arg
                        } else {
                            arg.with_description(a.description)
                        }
                    })
                    .collect();
                let description = (!p.description.is_empty()).then(|| p.description.clone());
                rmcp::model::Prompt::new(p.name, description, Some(arguments))
            })
            .collect();
        // Prompts come and go with the replicated state, as graphs do.
        Ok(ListPromptsResult::with_all_items(prompts).with_ttl_ms(0).with_cache_scope(CacheScope::Private))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        caller_of(&context)?;
        let (_, p) =
            super::prompts::prompt(&self.gw, &request.name).map_err(|e| ErrorData::invalid_params(e.message, None))?;
        let args = request.arguments.unwrap_or_default();
        let rendered = p.render(&args).map_err(|e| ErrorData::invalid_params(e, None))?;
        let messages = rendered
            .into_iter()
            .map(|(role, text)| {
                let role = if role == "assistant" { Role::Assistant } else { Role::User };
                PromptMessage::new_text(role, text)
            })
            .collect();
        let mut result = GetPromptResult::new(messages);
        if !p.description.is_empty() {
            result = result.with_description(p.description);
        }
        Ok(result.into())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        caller_of(&context)?;
        let mut tools = static_tools();
        tools.extend(graph_tools(&self.gw).iter().map(|(name, g)| graph_tool(name, g)));
        // Graphs come and go with the replicated state: clients should ask again.
        Ok(ListToolsResult::with_all_items(tools).with_ttl_ms(0).with_cache_scope(CacheScope::Private))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let caller = caller_of(&context)?;
        let args = request.arguments.unwrap_or_default();
        let name = request.name.as_ref();
        tracing::debug!(tool = name, key = %caller.name, "MCP tool call");
        let result = match name {
            "list_models" => list_models(&self.gw, &caller, &args),
            "chat" => chat(&self.gw, &caller, &args).await,
            "recall" => recall(&self.gw, &args).await,
            _ => {
                let found = graph_tools(&self.gw).into_iter().find(|(t, _)| t == name);
                match found {
                    Some((_, g)) => run_graph(&self.gw, &caller, g, &args).await,
                    None => return Err(ErrorData::invalid_params(format!("no tool named '{name}'"), None)),
                }
            }
        };
        Ok(result.into())
    }
}

/// The key the guard admitted the request with.
fn caller_of(context: &RequestContext<RoleServer>) -> Result<Caller, ErrorData> {
    context
        .extensions
        .get::<axum::http::request::Parts>()
        .and_then(|p| p.extensions.get::<Caller>())
        .cloned()
        .ok_or_else(|| ErrorData::internal_error("the request carries no checked API key", None))
}

fn list_models(gw: &GatewayState, caller: &Caller, args: &JsonObject) -> CallToolResult {
    if let Some(extra) = args.keys().next() {
        return failed(format!("invalid arguments for list_models: it takes none (got '{extra}')"));
    }
    let state = gw.cluster.state().read().unwrap_or_else(|p| p.into_inner());
    let models: Vec<Value> = state
        .deployments
        .values()
        .filter(|d| caller.require_model(&d.name).is_ok())
        .map(|d| {
            let v = state.deployed_version(&d.name);
            json!({
                "id": d.name,
                "capabilities": v.map(|v| v.capabilities.clone()).unwrap_or_default(),
                "context_length": v.map(|v| v.context_length).unwrap_or(0),
                "ready_replicas": state.entry_points(&d.name).len(),
            })
        })
        .collect();
    let text = serde_json::to_string_pretty(&models).unwrap_or_default();
    answered(text, json!({ "models": models }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatArgs {
    model: String,
    #[serde(default)]
    messages: Option<Vec<ChatMessageIn>>,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    max_tokens: Option<i64>,
    #[serde(default)]
    temperature: Option<f64>,
}

async fn chat(gw: &Gw, caller: &Caller, args: &JsonObject) -> CallToolResult {
    let a: ChatArgs = match arguments("chat", args) {
        Ok(a) => a,
        Err(e) => return e,
    };
    let turns = match (&a.messages, &a.prompt) {
        (Some(_), Some(_)) => return failed("invalid arguments for chat: give messages or prompt, not both"),
        (None, None) => return failed("invalid arguments for chat: give messages (a list) or prompt (a string)"),
        (None, Some(p)) if p.trim().is_empty() => return failed("invalid arguments for chat: prompt is empty"),
        (None, Some(p)) => vec![ChatTurn::new("user", p.clone())],
        (Some(list), None) => match chat_turns(list) {
            Ok(t) => t,
            Err(e) => return failed(format!("invalid arguments for chat: {}", e.message)),
        },
    };
    // The OpenAI endpoints' checks of the same fields.
    let sampling = serde_json::from_value::<SamplingFields>(json!({
        "max_tokens": a.max_tokens,
        "temperature": a.temperature,
    }))
    .map_err(|e| ApiError::bad_request(e.to_string()))
    .and_then(|f| f.settings());
    let sampling = match sampling {
        Ok(s) => s,
        Err(e) => return failed(format!("invalid arguments for chat: {}", e.message)),
    };
    match generate(gw, caller, &a.model, Prompt::Chat(turns), sampling).await {
        Ok(answer) => answer,
        Err(e) => refused(e),
    }
}

/// One non-streaming generation, with the checks and accounting of the OpenAI endpoints:
/// the key's models, the deployment, the key's token budget.
async fn generate(
    gw: &Gw,
    caller: &Caller,
    model: &str,
    prompt: Prompt,
    sampling: shoal_protocol::SamplingSettings,
) -> Result<CallToolResult, ApiError> {
    caller.require_model(model)?;
    gw.router.check_generate(model)?;
    if let Err(retry_ms) = gw.quotas.admit_tokens(caller, gw.clock.unix_ms()) {
        metrics::counter!(m::HTTP_RATE_LIMITED, "limit" => "tokens").increment(1);
        let msg = format!("the API key '{}' used its {} tokens this minute", caller.name, caller.tokens_per_minute);
        return Err(ApiError::rate_limited(msg, retry_ms));
    }
    let label = gw.model_label(model);
    let started = Instant::now();
    let observe = |outcome: &'static str| {
        gw.history.counters.request(outcome == "ok");
        metrics::histogram!(m::REQUEST_SECONDS, "model" => label.clone(), "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
    };
    let mut rx = gw.router.generate(model.to_string(), prompt, sampling);
    let mut text = String::new();
    let mut first = true;
    while let Some(ev) = rx.recv().await {
        match ev {
            GenEvent::Started { .. } => {}
            GenEvent::Delta { text: t, tokens } => {
                if first {
                    first = false;
                    gw.history.counters.first_token(started.elapsed());
                }
                gw.history.counters.tokens(u64::from(tokens));
                metrics::counter!(m::GATEWAY_TOKENS, "model" => label.clone()).increment(u64::from(tokens));
                text.push_str(&t);
            }
            GenEvent::Done { finish, prompt_tokens, completion_tokens } => {
                observe("ok");
                let used = u64::from(prompt_tokens) + u64::from(completion_tokens);
                gw.quotas.spend_tokens(caller, used, gw.clock.unix_ms());
                let structured = json!({
                    "model": model,
                    "text": text,
                    "finish_reason": finish.as_str(),
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                              "total_tokens": prompt_tokens + completion_tokens},
                });
                return Ok(answered(text, structured));
            }
            GenEvent::Failed(e) => {
                observe("error");
                return Err(e.into());
            }
        }
    }
    observe("error");
    Err(ApiError::unavailable("the generation ended without an answer"))
}

async fn recall(gw: &Gw, args: &JsonObject) -> CallToolResult {
    let mut rest = args.clone();
    let kb = match rest.remove("knowledge_base") {
        Some(Value::String(s)) if !s.trim().is_empty() => s,
        Some(_) => return failed("invalid arguments for recall: knowledge_base must be a knowledge base's name"),
        None => return failed("invalid arguments for recall: missing field `knowledge_base`"),
    };
    // `POST /v1/knowledge-bases/{kb}/search`'s body, with its defaults and checks.
    let req: SearchJson = match arguments("recall", &rest) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let mode = req.mode;
    let search = Search { query: req.query, top_k: req.top_k, mode, filter: req.filter.to_filter() };
    let found = match gw.retrieval.search(&kb, search).await {
        Ok(f) => f,
        Err(e) => return refused(e.into()),
    };
    let hits: Vec<Value> = found.hits.iter().map(hit_json).collect();
    let mut text = String::new();
    for (i, h) in found.hits.iter().enumerate() {
        let title = h.title.as_deref().filter(|t| !t.is_empty()).unwrap_or(h.doc_id.as_str());
        text.push_str(&format!("[{}] {} (document {}, score {:.4})\n{}\n\n", i + 1, title, h.doc_id, h.score, h.text));
    }
    if found.hits.is_empty() {
        text.push_str("no passages found\n");
    }
    if !found.failed.is_empty() {
        text.push_str(&format!("({} of {} shards did not answer)\n", found.failed.len(), found.shards));
    }
    let structured = json!({
        "knowledge_base": kb,
        "mode": mode,
        "hits": hits,
        "shards": {"total": found.shards, "answered": found.shards as usize - found.failed.len(), "failed": found.failed},
    });
    answered(text.trim_end().to_string(), structured)
}

async fn run_graph(gw: &Gw, caller: &Caller, g: GraphTool, args: &JsonObject) -> CallToolResult {
    let given = Value::Object(args.clone());
    if let Err(problems) = shoal_graph::plan::bind_inputs(&g.def, &given) {
        let list: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        return failed(format!("invalid arguments for graph '{}': {}", g.graph, list.join("; ")));
    }
    let version = Some(g.version).filter(|v| *v != 0);
    let run = match super::graphs::start_run(gw, &caller.id, &g.graph, version, &given).await {
        Ok(Ok(run)) => run,
        Ok(Err(_)) => return failed(format!("graph '{}' refused the inputs", g.graph)),
        Err(e) => return refused(e),
    };
    let Some(run) = super::graphs::wait_run(gw, &run.id, RUN_WAIT).await else {
        return failed(format!("run {} is gone (pruned)", run.id));
    };
    let body = super::graphs::run_json(gw, &run).await;
    match run.status {
        RunStatus::Succeeded => {
            let outputs = body["outputs"].clone();
            let text = serde_json::to_string_pretty(&outputs).unwrap_or_default();
            let structured = json!({"run": run.id, "graph": g.graph, "outputs": outputs});
            answered(text, structured)
        }
        RunStatus::Running => answered(
            format!("run {} is still running; GET /v1/runs/{} shows its progress", run.id, run.id),
            json!({"run": run.id, "graph": g.graph, "status": "running"}),
        ),
        RunStatus::Failed | RunStatus::Cancelled => {
            let mut r = failed(format!("run {} of graph '{}' {}: {}", run.id, g.graph, run.status.as_str(), run.error));
            r.structured_content = Some(json!({"run": run.id, "graph": g.graph, "status": run.status.as_str(),
                                                "error": run.error}));
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(yaml: &str) -> Graph {
        let raw = shoal_graph::parse(yaml).expect("parses");
        shoal_graph::check(&raw, &shoal_graph::Catalog::default()).expect("checks")
    }

    #[test]
    fn a_graphs_inputs_become_a_json_schema() {
        let g = graph(
            r#"
name: typed
inputs:
  word: {type: string, description: the word}
  times: {type: integer, default: 2}
  ratio: {type: number}
  loud: {type: boolean, default: false}
  extra: {type: object}
  items: {type: array}
  anything: {type: any}
steps:
  - {id: up, kind: template, template: "{{ inputs.word | upper }}"}
outputs: {loud: "${steps.up.text}"}
"#,
        );
        let schema = Value::Object(input_schema(&g));
        assert_eq!(schema["type"], "object");
        assert_eq!(schema["additionalProperties"], false);
        let p = &schema["properties"];
        assert_eq!(p["word"], json!({"type": "string", "description": "the word"}));
        assert_eq!(p["times"], json!({"type": "integer", "default": 2}));
        assert_eq!(p["ratio"], json!({"type": "number"}));
        assert_eq!(p["loud"], json!({"type": "boolean", "default": false}));
        assert_eq!(p["extra"], json!({"type": "object"}));
        assert_eq!(p["items"], json!({"type": "array"}));
        assert_eq!(p["anything"], json!({}), "any: no type constraint");
        let mut required: Vec<&str> =
            schema["required"].as_array().expect("required").iter().filter_map(Value::as_str).collect();
        required.sort_unstable();
        assert_eq!(required, ["anything", "extra", "items", "ratio", "word"]);
    }

    #[test]
    fn a_graph_without_inputs_takes_an_empty_object() {
        let g = graph(
            "name: none\nsteps:\n  - {id: a, kind: template, template: \"hi\"}\noutputs: {text: \"${steps.a.text}\"}\n",
        );
        let schema = Value::Object(input_schema(&g));
        assert_eq!(schema, json!({"type": "object", "properties": {}, "additionalProperties": false}));
    }

    #[test]
    fn every_builtin_graph_gets_a_valid_tool() {
        for (name, g) in shoal_graph::builtin::builtins() {
            let t = tool_name(&name);
            assert!(t.starts_with("graph_") && t.len() <= MAX_TOOL_NAME, "{t}");
            let schema = Value::Object(input_schema(&g));
            assert_eq!(schema["type"], "object", "{name}");
        }
    }

    #[test]
    fn tool_names_follow_the_mcp_rules() {
        assert_eq!(tool_name("tiny"), "graph_tiny");
        assert_eq!(tool_name("qa-kb"), "graph_qa-kb");
        assert_eq!(tool_name("a b/c:d.e"), "graph_a_b_c_d.e");
        assert_eq!(tool_name("héllo"), "graph_h_llo");
        let long = tool_name(&"x".repeat(300));
        assert_eq!(long.len(), MAX_TOOL_NAME);
        for name in ["tiny", "qa-auto", "a b", "ünï", &"y".repeat(200)] {
            let t = tool_name(name);
            assert!(!t.is_empty() && t.len() <= 128);
            assert!(t.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')), "{t}");
        }
        for fixed in static_tools() {
            assert!(!fixed.name.starts_with(GRAPH_TOOL_PREFIX), "no graph tool can take {}", fixed.name);
        }
    }

    #[test]
    fn hosts_are_read_from_authorities_and_origins() {
        assert_eq!(host_of("127.0.0.1:8090").as_deref(), Some("127.0.0.1"));
        assert_eq!(host_of("http://LocalHost:3000").as_deref(), Some("localhost"));
        assert_eq!(host_of("https://[::1]:8443").as_deref(), Some("::1"));
        assert_eq!(host_of("[::1]").as_deref(), Some("::1"));
        assert_eq!(host_of("http://gw.example.com.").as_deref(), Some("gw.example.com"));
        assert_eq!(host_of("http://gw.example.com/path?q").as_deref(), Some("gw.example.com"));
        assert_eq!(host_of("null").as_deref(), Some("null"));
        assert_eq!(host_of("http://"), None);
        assert_eq!(host_of("://x"), None);
    }

    #[test]
    fn loopback_hosts() {
        for h in ["localhost", "app.localhost", "127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["10.0.0.1", "example.com", "localhost.example.com", "::2", "0.0.0.0"] {
            assert!(!is_loopback(h), "{h}");
        }
    }

    #[test]
    fn the_origin_rule() {
        let none: Vec<String> = vec![];
        // No Origin: a client that is not a browser.
        assert!(origin_allowed(None, Some("127.0.0.1:8090"), &none));
        assert!(origin_allowed(None, None, &none));
        // This gateway's own host, and its loopback equivalents.
        assert!(origin_allowed(Some("http://127.0.0.1:8090"), Some("127.0.0.1:8090"), &none));
        assert!(origin_allowed(Some("http://localhost:8090"), Some("127.0.0.1:8090"), &none));
        assert!(origin_allowed(Some("http://[::1]:8090"), Some("localhost:8090"), &none));
        assert!(origin_allowed(Some("http://10.1.2.3:8090"), Some("10.1.2.3:8090"), &none));
        // Another host.
        assert!(!origin_allowed(Some("http://evil.example"), Some("127.0.0.1:8090"), &none));
        assert!(!origin_allowed(Some("http://10.9.9.9:8090"), Some("10.1.2.3:8090"), &none));
        assert!(!origin_allowed(Some("http://localhost:8090"), Some("10.1.2.3:8090"), &none));
        assert!(!origin_allowed(Some("null"), Some("127.0.0.1:8090"), &none));
        assert!(!origin_allowed(Some("not an origin ::"), Some("127.0.0.1:8090"), &none));
        // DNS rebinding: the page's name now points at the gateway; Host and Origin agree,
        // but a DNS name is this gateway's only when the cluster knows it by that name.
        assert!(!origin_allowed(Some("http://rebound.example:8090"), Some("rebound.example:8090"), &none));
        let known = vec!["gw.example.com:8090".to_string(), "10.0.0.7:8090".to_string()];
        assert!(origin_allowed(Some("https://gw.example.com"), Some("gw.example.com:8090"), &known));
        assert!(origin_allowed(Some("http://10.0.0.7:8090"), Some("gw.example.com:8090"), &known));
        assert!(!origin_allowed(Some("http://rebound.example:8090"), Some("rebound.example:8090"), &known));
    }

    #[test]
    fn the_401_challenge_names_the_metadata() {
        assert_eq!(
            challenge("http://127.0.0.1:8090", false),
            "Bearer resource_metadata=\"http://127.0.0.1:8090/.well-known/oauth-protected-resource\""
        );
        assert!(challenge("http://h", true).contains("error=\"invalid_token\""));
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("gw.example.com:8090"));
        assert_eq!(base_url(&headers), "http://gw.example.com:8090");
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert_eq!(base_url(&headers), "https://gw.example.com:8090");
        headers.insert(header::HOST, HeaderValue::from_static("bad\"host"));
        assert_eq!(base_url(&headers), "https://localhost", "a Host that would break the header is not echoed");
        let doc = metadata("http://127.0.0.1:8090");
        assert_eq!(doc["resource"], "http://127.0.0.1:8090/mcp");
        assert_eq!(doc["bearer_methods_supported"], json!(["header"]));
    }
}
