//! `mcp` steps and `shoal mcp tools`: the MCP client side. A call connects to a registered
//! server with the official SDK's client (`rmcp`): Streamable HTTP through reqwest (no
//! redirects, the graph's `allow_hosts` checked first, names resolving to loopback,
//! link-local or metadata addresses refused unless listed), or MCP over stdio with a child
//! process that a node started with `--mcp-stdio` runs for the session (a cleared
//! environment plus `PATH`, its own process group, killed when the call ends or times out;
//! its stdin and stdout relayed over a QUIC stream, see `shoal_node::mcp_stdio`). It lists
//! the tools, checks the arguments against the tool's `inputSchema`, calls it, and shapes
//! the result as the step's output.
//!
//! The pure parts (argument validation, output shaping, command splitting) are functions
//! of their inputs, tested below; every error that leaves this module has the server's
//! secrets scrubbed out ([`McpServerRecord::scrub`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue};
use rmcp::model::{CallToolRequestParams, CallToolResult, Tool};
use rmcp::service::RunningService;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{RoleClient, ServiceExt};
use serde_json::{json, Value};
use shoal_coordinator::state::{McpServerRecord, McpTransport};
use shoal_engine::constraint::{JsonGrammar, JsonMatcher};
use shoal_protocol::{Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info_span, Instrument};

use crate::router::{Router, StdioSession};
use crate::GatewayError;

/// The `_meta` key of a tool call's idempotency key (`RUN/STEP`, or `RUN/STEP/CALL` for an
/// agent step's call).
pub const IDEMPOTENCY_KEY_META: &str = "io.shoal/idempotency-key";
/// The largest output an `mcp` step keeps; a larger result fails the step.
pub const MAX_OUTPUT_BYTES: usize = 1024 * 1024;
/// The largest message read from a server: the output's text and structured content may
/// both carry the result, so a little more than twice the output cap, and no more (a
/// larger one closes the connection).
const MAX_MESSAGE_BYTES: usize = 4 * MAX_OUTPUT_BYTES;
/// The longest registering a server or listing its tools may take (within the CLI's 15 s
/// request timeout); a step's calls have the step's timeout instead.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(12);
/// The buffer between the MCP client and the relay of a stdio server's stream.
const RELAY_BUFFER: usize = 256 * 1024;

type Client = RunningService<RoleClient, ()>;

fn fail(server: &McpServerRecord, message: impl AsRef<str>) -> GatewayError {
    GatewayError::Mcp { server: server.name.clone(), message: server.scrub(&tidy(message.as_ref())) }
}

/// An SDK error without the Rust type names it quotes (`Transport [rmcp::…<…>] error`).
fn tidy(message: &str) -> String {
    let mut out = message.to_string();
    while let Some(start) = out.find(" [rmcp::") {
        match out[start..].find(']') {
            Some(len) => out.replace_range(start..start + len + 1, ""),
            None => break,
        }
    }
    out
}

/// A connection to one server, closed when dropped (a stdio server's stream to its node
/// is dropped, and the node kills its process group).
pub struct Connection {
    client: Client,
    record: McpServerRecord,
    /// What a stdio server wrote to stderr and how it exited, once it has.
    stderr: Arc<Mutex<String>>,
    _relay: Option<Relay>,
    /// Where the server runs: its host, or `node NAME` for a stdio server.
    at: String,
}

/// Connects to `record`. With `allow` (a graph's `allow_hosts`), an HTTP server's host must
/// be on it; without (an admin listing tools), any host is reached. A stdio server is
/// started on a node through `router`.
pub async fn connect(
    record: &McpServerRecord,
    allow: Option<&[String]>,
    router: &Router,
) -> Result<Connection, GatewayError> {
    let span = info_span!("mcp.connect", server = %record.name, transport = ?record.transport);
    async move {
        let stderr = Arc::new(Mutex::new(String::new()));
        let (client, relay, at) = match record.transport {
            McpTransport::Http => {
                let host = shoal_graph::hosts::origin(&record.url)
                    .and_then(|o| shoal_graph::hosts::host_port(&o))
                    .map(|(h, _)| h)
                    .unwrap_or_default();
                (connect_http(record, allow).await?, None, host)
            }
            McpTransport::Stdio => {
                let (client, relay, node) = connect_stdio(record, router, stderr.clone()).await?;
                (client, Some(relay), format!("node {node}"))
            }
        };
        Ok(Connection { client, record: record.clone(), stderr, _relay: relay, at })
    }
    .instrument(span)
    .await
}

async fn connect_http(record: &McpServerRecord, allow: Option<&[String]>) -> Result<Client, GatewayError> {
    let origin = shoal_graph::hosts::origin(&record.url).map_err(|e| fail(record, e))?;
    let (host, port) = shoal_graph::hosts::host_port(&origin).map_err(|e| fail(record, e))?;
    let mut pinned = Vec::new();
    if let Some(allow) = allow {
        shoal_graph::hosts::check_mcp_url(&record.url, allow).map_err(|e| fail(record, e))?;
        pinned = super::tool::check_resolved(&host, port, allow).await.map_err(|e| fail(record, e))?;
    }
    let mut headers = HashMap::new();
    for h in &record.headers {
        let name =
            HeaderName::try_from(h.name.as_str()).map_err(|_| fail(record, format!("bad header name {:?}", h.name)))?;
        let value = HeaderValue::try_from(h.value.as_str())
            .map_err(|_| fail(record, format!("header {:?} has a value that is not valid in HTTP", h.name)))?;
        headers.insert(name, value);
    }
    shoal_protocol::install_crypto_provider();
    // No redirects: a redirect could leave the allowed host.
    let mut builder =
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).connect_timeout(Duration::from_secs(10));
    if !pinned.is_empty() {
        // Connect to the addresses just checked, not to what the name resolves to later.
        builder = builder.resolve_to_addrs(&host, &pinned);
    }
    let http = builder.build().map_err(|e| fail(record, format!("the HTTP client: {e}")))?;
    let config = StreamableHttpClientTransportConfig::with_uri(record.url.clone())
        .custom_headers(headers)
        .max_json_response_size(MAX_MESSAGE_BYTES)
        .max_sse_event_size(MAX_MESSAGE_BYTES);
    let transport = StreamableHttpClientTransport::with_client(http, config);
    ().serve(transport).await.map_err(|e| fail(record, format!("cannot connect to {}: {e}", record.shown_url())))
}

async fn connect_stdio(
    record: &McpServerRecord,
    router: &Router,
    stderr: Arc<Mutex<String>>,
) -> Result<(Client, Relay, String), GatewayError> {
    if record.command.is_empty() {
        return Err(fail(record, "no command to run"));
    }
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    let session = router
        .start_stdio(&record.name, &record.command, deadline)
        .await
        .map_err(|e| fail(record, format!("cannot start `{}`: {e}", record.command.join(" "))))?;
    let node = session.node.clone();
    let (ours, theirs) = tokio::io::duplex(RELAY_BUFFER);
    let relay = Relay::start(session, ours, stderr.clone());
    match ().serve(tokio::io::split(theirs)).await {
        Ok(c) => Ok((c, relay, node)),
        Err(e) => {
            // Let the relay catch the process's exit and last words.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let said = stderr.lock().unwrap_or_else(|p| p.into_inner()).trim().to_string();
            let said = if said.is_empty() { String::new() } else { format!("; it wrote: {said}") };
            Err(fail(
                record,
                format!("`{}` did not start as an MCP server on node {node}: {e}{said}", record.command.join(" ")),
            ))
        }
    }
}

/// Relays a stdio server's stream to the MCP client's end of a pipe: the client's messages
/// become `Chunk` frames (its stdin), `StdioOut` frames become the client's input, and
/// `StdioExited` keeps the server's stderr and exit status for error messages. Dropping it
/// drops the stream, and the node kills the server.
struct Relay {
    tasks: [tokio::task::JoinHandle<()>; 2],
}

impl Relay {
    fn start(session: StdioSession, ours: tokio::io::DuplexStream, stderr: Arc<Mutex<String>>) -> Self {
        let StdioSession { mut sender, mut receiver, .. } = session;
        let (mut from_client, mut to_client) = tokio::io::split(ours);
        let stdin = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match from_client.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if sender.send(&Request::Chunk { data: buf[..n].to_vec(), last: false }).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = sender.send(&Request::Chunk { data: Vec::new(), last: true }).await;
            // Keep the stream open (the server may still be writing) until the relay is dropped.
            std::future::pending::<()>().await;
        });
        let stdout = tokio::spawn(async move {
            loop {
                match receiver.recv().await {
                    Ok(Response::StdioOut { data }) => {
                        if to_client.write_all(&data).await.is_err() {
                            break;
                        }
                    }
                    Ok(Response::StdioExited { status, stderr: said }) => {
                        let said = said.trim();
                        let text = if said.is_empty() { format!("[{status}]") } else { format!("{said} [{status}]") };
                        *stderr.lock().unwrap_or_else(|p| p.into_inner()) = text;
                        break;
                    }
                    Ok(_) | Err(_) => break,
                }
            }
            // The client reads the end of its input: the server is gone.
            let _ = to_client.shutdown().await;
        });
        Self { tasks: [stdin, stdout] }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Connection {
    /// Where the server runs: its host, or `node NAME` for a stdio server.
    pub fn at(&self) -> &str {
        &self.at
    }

    /// Every tool the server has.
    pub async fn tools(&self) -> Result<Vec<Tool>, GatewayError> {
        self.client.list_all_tools().await.map_err(|e| self.fail(format!("listing its tools: {e}")))
    }

    /// Calls `tool` with `arguments` (an object), as they are. The request's `_meta` carries
    /// `idempotency_key` as [`IDEMPOTENCY_KEY_META`] (the same for every try of the same call
    /// in a run), so a server can tell a call made again after a failover from a new one.
    pub async fn call(
        &self,
        tool: &str,
        arguments: &Value,
        idempotency_key: &str,
    ) -> Result<CallToolResult, GatewayError> {
        let mut params = CallToolRequestParams::new(tool.to_string());
        params.arguments = arguments.as_object().cloned();
        let mut meta = rmcp::model::MetaObject::new();
        meta.insert(IDEMPOTENCY_KEY_META.into(), json!(idempotency_key));
        params.meta = Some(rmcp::model::RequestMetaObject(meta));
        self.client.call_tool(params).await.map_err(|e| {
            let hint = if e.to_string().contains("closed") {
                format!(
                    " (a message over {} MiB closes the connection; an mcp step's output is capped at {} MiB)",
                    MAX_MESSAGE_BYTES >> 20,
                    MAX_OUTPUT_BYTES >> 20
                )
            } else {
                String::new()
            };
            self.fail(format!("calling tool '{tool}': {e}{hint}"))
        })
    }

    fn fail(&self, message: String) -> GatewayError {
        let said = self.stderr.lock().unwrap_or_else(|p| p.into_inner()).trim().to_string();
        if said.is_empty() || self.record.transport != McpTransport::Stdio {
            fail(&self.record, message)
        } else {
            fail(&self.record, format!("{message}; the server wrote: {said}"))
        }
    }

    /// Closes the session (an HTTP server is told; a stdio server's stdin is closed and it
    /// is killed if it lingers).
    pub async fn close(self) {
        let name = self.record.name.clone();
        match tokio::time::timeout(Duration::from_secs(5), self.client.cancel()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => debug!(server = %name, error = %e, "closing an MCP session"),
            Err(_) => debug!(server = %name, "closing an MCP session timed out; dropped"),
        }
    }
}

/// A tool as `GET /v1/mcp-servers/{name}/tools` shows it.
pub fn tool_json(t: &Tool) -> Value {
    json!({"name": t.name, "description": t.description, "input_schema": Value::Object((*t.input_schema).clone())})
}

/// One `mcp` step: connect, find the tool, check the arguments, call, shape the output.
/// Nothing is called when the tool is unknown or the arguments do not follow its schema.
pub async fn run_step(
    record: &McpServerRecord,
    allow: &[String],
    router: &Router,
    tool: &str,
    arguments: &Value,
    idempotency_key: &str,
) -> Result<(Value, String), GatewayError> {
    let span = info_span!("mcp.call", server = %record.name, tool = %tool);
    async move {
        if !arguments.is_object() {
            return Err(fail(record, "arguments must be an object"));
        }
        let conn = connect(record, Some(allow), router).await?;
        let result = async {
            let tools = conn.tools().await?;
            let Some(found) = tools.iter().find(|t| t.name == tool) else {
                let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
                return Err(fail(record, format!("has no tool '{tool}' (its tools: {})", names.join(", "))));
            };
            validate_arguments(&Value::Object((*found.input_schema).clone()), arguments).map_err(|e| {
                fail(record, format!("invalid arguments for tool '{tool}': {e} (the tool was not called)"))
            })?;
            let called = conn.call(tool, arguments, idempotency_key).await?;
            let output = shape_output(&called);
            let size = serde_json::to_vec(&output).map(|b| b.len()).unwrap_or(usize::MAX);
            if size > MAX_OUTPUT_BYTES {
                return Err(fail(
                    record,
                    format!(
                        "tool '{tool}' returned {size} bytes, over the {} MiB cap on an mcp step's output",
                        MAX_OUTPUT_BYTES / (1024 * 1024)
                    ),
                ));
            }
            Ok(output)
        }
        .await;
        let at = conn.at().to_string();
        conn.close().await;
        result.map(|output| (output, at))
    }
    .instrument(span)
    .await
}

/// The step's output: `content` (the blocks as sent), `text` (the text blocks joined by
/// newlines), `json` (the structured content; else the text parsed as JSON when it parses;
/// else null), `is_error`.
pub fn shape_output(result: &CallToolResult) -> Value {
    let content = serde_json::to_value(&result.content).unwrap_or(Value::Array(Vec::new()));
    let text = content
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["type"] == "text")
        .filter_map(|c| c["text"].as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let parsed = match &result.structured_content {
        Some(v) => v.clone(),
        None => serde_json::from_str::<Value>(text.trim()).unwrap_or(Value::Null),
    };
    json!({"content": content, "text": text, "json": parsed, "is_error": result.is_error.unwrap_or(false)})
}

/// Checks `arguments` against a tool's `inputSchema`: first structurally (types, required
/// properties, enums, nested properties and items: the message says where), then, when the
/// schema is in the subset the engine's JSON matcher compiles, exactly by that matcher over
/// the arguments' JSON text. A schema the matcher refuses is checked structurally only.
pub fn validate_arguments(schema: &Value, arguments: &Value) -> Result<(), String> {
    super::steps::check_schema(schema, arguments)?;
    let mut open = schema.clone();
    open_objects(&mut open);
    let Ok(grammar) = JsonGrammar::compile(&open) else {
        return Ok(());
    };
    let text = serde_json::to_string(arguments).map_err(|e| e.to_string())?;
    let mut matcher = JsonMatcher::new(Arc::new(grammar));
    for (i, b) in text.bytes().enumerate() {
        if !matcher.feed(&[b]) {
            let upto: String =
                text[..text.len().min(i + 1)].chars().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect();
            return Err(format!("they do not follow its inputSchema (refused at byte {i}: `{upto}`)"));
        }
    }
    if !matcher.is_complete() {
        return Err("they do not follow its inputSchema (incomplete)".into());
    }
    Ok(())
}

/// JSON Schema lets an object have properties it does not list unless
/// `additionalProperties` says otherwise; the engine's matcher is strict by default, so the
/// default is written out before compiling.
fn open_objects(schema: &mut Value) {
    for_each_schema(schema, 0, &mut |map| {
        if map.contains_key("properties") && !map.contains_key("additionalProperties") {
            map.insert("additionalProperties".into(), Value::Bool(true));
        }
    });
}

/// Calls `f` on a schema object and then on each of its subschemas (properties,
/// definitions, items, alternatives…), at most 64 deep.
pub fn for_each_schema(schema: &mut Value, depth: usize, f: &mut impl FnMut(&mut serde_json::Map<String, Value>)) {
    let Value::Object(map) = schema else { return };
    if depth > 64 {
        return;
    }
    f(map);
    for key in ["properties", "$defs", "definitions", "patternProperties"] {
        if let Some(Value::Object(children)) = map.get_mut(key) {
            children.values_mut().for_each(|c| for_each_schema(c, depth + 1, f));
        }
    }
    for key in ["items", "additionalProperties", "not"] {
        if let Some(child) = map.get_mut(key) {
            for_each_schema(child, depth + 1, f);
        }
    }
    for key in ["anyOf", "oneOf", "allOf", "prefixItems"] {
        if let Some(Value::Array(list)) = map.get_mut(key) {
            list.iter_mut().for_each(|c| for_each_schema(c, depth + 1, f));
        }
    }
}

/// Splits a command line as a POSIX shell would for plain words: whitespace separates,
/// `'…'` and `"…"` quote, `\` escapes (outside single quotes). No expansion of any kind.
pub fn split_command(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(x) => word.push(x),
                        None => return Err("unclosed ' in the command".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(x @ ('"' | '\\' | '$' | '`')) => word.push(x),
                            Some(x) => {
                                word.push('\\');
                                word.push(x);
                            }
                            None => return Err("unclosed \" in the command".into()),
                        },
                        Some(x) => word.push(x),
                        None => return Err("unclosed \" in the command".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(x) => word.push(x),
                    None => return Err("a trailing \\ in the command".into()),
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        out.push(word);
    }
    if out.is_empty() {
        return Err("the command is empty".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::model::ContentBlock as Content;

    fn add_schema() -> Value {
        // As the Python SDK writes it for `def add(a: int, b: int)`.
        json!({"type": "object", "title": "addArguments",
               "properties": {"a": {"type": "integer", "title": "A"}, "b": {"type": "integer", "title": "B"}},
               "required": ["a", "b"]})
    }

    #[test]
    fn arguments_follow_the_tools_schema() {
        assert!(validate_arguments(&add_schema(), &json!({"a": 2, "b": 40})).is_ok());
        let e = validate_arguments(&add_schema(), &json!({"a": "two", "b": 40})).expect_err("a string for an int");
        assert!(e.contains("a: expected integer"), "{e}");
        let e = validate_arguments(&add_schema(), &json!({"a": 2})).expect_err("b is required");
        assert!(e.contains("missing property \"b\""), "{e}");
        // Properties the schema does not list are allowed (JSON Schema's default).
        assert!(validate_arguments(&add_schema(), &json!({"a": 1, "b": 2, "note": "x"})).is_ok());
        // ... unless it says otherwise.
        let mut closed = add_schema();
        closed["additionalProperties"] = json!(false);
        let e = validate_arguments(&closed, &json!({"a": 1, "b": 2, "note": "x"})).expect_err("closed");
        assert!(e.contains("inputSchema"), "{e}");
    }

    #[test]
    fn what_only_the_matcher_sees_is_refused_too() {
        let schema = json!({"type": "object", "properties": {"word": {"type": "string", "maxLength": 3}}});
        assert!(validate_arguments(&schema, &json!({"word": "abc"})).is_ok());
        let e = validate_arguments(&schema, &json!({"word": "abcdef"})).expect_err("too long");
        assert!(e.contains("refused at byte"), "{e}");
        // A schema outside the matcher's subset is checked structurally only.
        let odd =
            json!({"type": "object", "properties": {"w": {"type": "string", "pattern": "^a"}}, "required": ["w"]});
        assert!(validate_arguments(&odd, &json!({"w": "zzz"})).is_ok());
        assert!(validate_arguments(&odd, &json!({})).is_err());
    }

    #[test]
    fn outputs_join_text_and_parse_json() {
        let r = CallToolResult::success(vec![Content::text("{\"sum\": 42}")]);
        let out = shape_output(&r);
        assert_eq!(out["text"], "{\"sum\": 42}");
        assert_eq!(out["json"], json!({"sum": 42}));
        assert_eq!(out["is_error"], false);
        assert_eq!(out["content"][0]["type"], "text");

        let two = CallToolResult::success(vec![Content::text("hello"), Content::text("world")]);
        let out = shape_output(&two);
        assert_eq!((out["text"].as_str(), &out["json"]), (Some("hello\nworld"), &Value::Null));

        let mut structured = CallToolResult::success(vec![Content::text("42")]);
        structured.structured_content = Some(json!({"result": 42}));
        assert_eq!(shape_output(&structured)["json"], json!({"result": 42}));

        let failed = CallToolResult::error(vec![Content::text("boom")]);
        assert_eq!(shape_output(&failed)["is_error"], true);
    }

    #[test]
    fn errors_lose_the_sdks_type_names() {
        let e = "Send message error Transport [rmcp::transport::worker::WorkerTransport<rmcp::X<reqwest::Client>>] \
                 error: unexpected server response: HTTP 401 Unauthorized";
        assert_eq!(tidy(e), "Send message error Transport error: unexpected server response: HTTP 401 Unauthorized");
        assert_eq!(tidy("plain"), "plain");
    }

    #[test]
    fn commands_split_like_a_shell_without_expansion() {
        assert_eq!(split_command("python3 server.py").expect("ok"), ["python3", "server.py"]);
        assert_eq!(
            split_command(r#"  node "my server.js" --name 'a b' x\ y "q\"t" $HOME "#).expect("ok"),
            ["node", "my server.js", "--name", "a b", "x y", "q\"t", "$HOME"]
        );
        assert_eq!(split_command("a ''").expect("ok"), ["a", ""]);
        assert!(split_command("   ").is_err());
        assert!(split_command("a 'b").expect_err("unclosed").contains("unclosed"));
    }
}
