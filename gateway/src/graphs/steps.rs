//! Executes one step of a graph: model steps through the router, recalls through
//! retrieval, SQL, HTTP and MCP tool calls here on the runner's process. Pure steps
//! (template, branch) are computed in place. Each returns the step's output and the
//! parameters it ran with.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::{json, Value};
use shoal_graph::definition::{
    ClassifyMethod, Graph, Step, StepKind, AGENT_DEFAULT_TOKENS, AGENT_DEFAULT_TURNS, AGENT_MAX_TURNS,
};
use shoal_graph::expr::{eval, render, resolve, resolve_text};
use shoal_graph::plan::{bind_inputs, next_steps, outputs, take_branch, with_item, Plan, StepResult, StepStatus};
use shoal_protocol::{ChatTurn, EngineKind, OutputConstraint, Prompt, SamplingSettings};
use shoal_recall::{MetadataFilter, SearchMode};

use super::{agent, Graphs};
use crate::retrieval::Search;
use crate::router::{GenEvent, RouteError};

/// Most bytes of an HTTP tool's answer that are read.
pub const MAX_HTTP_BODY: u64 = 1024 * 1024;
/// Sub-graphs nest at most this deep.
pub const MAX_DEPTH: u32 = 8;

/// A finished attempt: the output, and the parameters it ran with.
pub struct Executed {
    pub output: Value,
    pub inputs: Value,
    pub ran_on: String,
}

/// What a step's execution can see besides the scope.
#[derive(Clone)]
pub struct StepContext {
    pub graphs: Arc<Graphs>,
    /// The graph the step belongs to (for `allow_hosts`).
    pub graph: Arc<Graph>,
    pub run: String,
    /// Models the run's API key may use (empty: any).
    pub models: Arc<Vec<String>>,
    pub depth: u32,
    /// Whether the step is one of the run's own (its agent calls are committed one by one);
    /// false inside a map or a sub-graph, whose results are committed only as a whole.
    pub journal: bool,
}

impl StepContext {
    fn allow_model(&self, model: &str) -> Result<(), String> {
        if self.models.is_empty() || self.models.iter().any(|m| m == model) {
            Ok(())
        } else {
            Err(format!("the run's API key may not use the model '{model}'"))
        }
    }
}

/// Executes a step once in `scope`.
pub fn execute<'a>(cx: &'a StepContext, step: &'a Step, scope: &'a Value) -> BoxFuture<'a, Result<Executed, String>> {
    Box::pin(async move {
        match &step.kind {
            StepKind::Template { template } => {
                let text = render(template, scope)?;
                Ok(Executed { output: json!({"text": text}), inputs: json!({}), ran_on: cx.graphs.here() })
            }
            StepKind::Branch { .. } => {
                let taken = take_branch(&step.kind, scope)?;
                Ok(Executed { output: json!({"taken": taken}), inputs: json!({}), ran_on: cx.graphs.here() })
            }
            StepKind::Chat { model, prompt, system, messages, temperature, max_tokens, output_schema, reasoning } => {
                let model = resolve_text(model, scope)?;
                let mut turns = Vec::new();
                let mut system_text = match system {
                    Some(s) => render(s, scope)?,
                    None => String::new(),
                };
                if *reasoning {
                    system_text.push_str(
                        "\nFirst think step by step inside <think> and </think>. After </think>, give only the final answer.",
                    );
                }
                if let Some(schema) = output_schema {
                    system_text.push_str(&format!(
                        "\nReply with one JSON value and nothing else. It must follow this JSON Schema: {schema}"
                    ));
                }
                if !system_text.trim().is_empty() {
                    turns.push(ChatTurn::new("system", system_text.trim().to_string()));
                }
                for m in messages {
                    turns.push(ChatTurn::new(m.role.clone(), render(&m.content, scope)?));
                }
                if let Some(p) = prompt {
                    turns.push(ChatTurn::new("user", render(p, scope)?));
                }
                let mut sampling = sampling(temperature.unwrap_or(0.0), max_tokens.unwrap_or(512));
                if let Some(schema) = output_schema {
                    // The answer is generated to the schema (its structure; validation keywords
                    // the engine cannot enforce are checked below); after the reasoning when
                    // there is one.
                    let schema = crate::tools::schema::loosen(schema, json!({}));
                    let trigger = if *reasoning { "</think>" } else { "" };
                    sampling.constraint =
                        Some(OutputConstraint { schema: schema.to_string(), trigger: trigger.to_string() });
                }
                let inputs = json!({
                    "model": model,
                    "messages": turns.iter().map(|t| json!({"role": t.role, "content": t.content})).collect::<Vec<_>>(),
                    "temperature": sampling.temperature,
                    "max_tokens": sampling.max_tokens,
                });
                let (text, usage, ran_on) = generate(cx, &step.id, &model, Prompt::Chat(turns), sampling).await?;
                let (reasoning_text, answer) = if *reasoning { split_reasoning(&text) } else { (String::new(), text) };
                let mut output = json!({"text": answer.trim(), "usage": usage});
                if *reasoning {
                    output["reasoning"] = json!(reasoning_text);
                }
                if let Some(schema) = output_schema {
                    let parsed =
                        json_in(&answer).ok_or_else(|| format!("the answer is not JSON: {:?}", clip(&answer)))?;
                    check_schema(schema, &parsed)
                        .map_err(|e| format!("the answer does not follow output_schema: {e}"))?;
                    output["json"] = parsed;
                }
                Ok(Executed { output, inputs, ran_on })
            }
            StepKind::Embed { model, input } => {
                let model = resolve_text(model, scope)?;
                cx.allow_model(&model)?;
                let text = resolve_text(input, scope)?;
                wait_for_replica(cx, &model, EngineKind::Embed).await?;
                let (mut vectors, _) =
                    cx.graphs.router.embed(&model, vec![text.clone()]).await.map_err(|e| e.to_string())?;
                let vector = vectors.pop().unwrap_or_default();
                Ok(Executed {
                    output: json!({"vector": vector, "dimension": vector.len()}),
                    inputs: json!({"model": model, "input": text}),
                    ran_on: format!("deployment {model}"),
                })
            }
            StepKind::Recall { knowledge_base, query, mode, top_k, filter } => {
                let kb = resolve_text(knowledge_base, scope)?;
                let q = resolve_text(query, scope)?;
                let mode: SearchMode = match mode {
                    Some(m) => serde_json::from_value(json!(m))
                        .map_err(|_| format!("unknown mode {m:?} (dense, sparse, hybrid)"))?,
                    None => SearchMode::Hybrid,
                };
                let filter = match filter {
                    Some(f) => {
                        let f: crate::http::knowledge::FilterJson =
                            serde_json::from_value(resolve(f, scope)?).map_err(|e| format!("filter: {e}"))?;
                        f.to_filter()
                    }
                    None => MetadataFilter::default(),
                };
                let k = top_k.unwrap_or(4) as usize;
                let found = cx
                    .graphs
                    .retrieval
                    .search(&kb, Search { query: q.clone(), top_k: k, mode, filter })
                    .await
                    .map_err(|e| e.to_string())?;
                let hits: Vec<Value> = found
                    .hits
                    .iter()
                    .enumerate()
                    .map(|(i, h)| {
                        json!({"index": i + 1, "document_id": h.doc_id, "title": h.title, "source": h.source,
                               "score": h.score, "text": h.text, "chunk_id": h.chunk_id.to_string()})
                    })
                    .collect();
                let context = recall_context(&found.hits);
                Ok(Executed {
                    output: json!({"hits": hits, "context": context}),
                    inputs: json!({"knowledge_base": kb, "query": q, "top_k": k, "mode": mode}),
                    ran_on: format!("knowledge base {kb} ({} shards)", found.shards),
                })
            }
            StepKind::Sql { database, query, schema, max_rows } => {
                let name = resolve_text(database, scope)?;
                let db = cx.graphs.database(&name)?;
                if *schema {
                    let s = shoal_sql::introspect(&db, 3).await.map_err(|e| e.to_string())?;
                    return Ok(Executed {
                        output: json!({"schema": s.prompt_text(), "dialect": db.dialect_name()}),
                        inputs: json!({"database": name}),
                        ran_on: cx.graphs.here(),
                    });
                }
                let text = render(query.as_deref().unwrap_or(""), scope)?;
                let sql = shoal_sql::extract_sql(&text).unwrap_or(text);
                let limits = shoal_sql::Limits {
                    max_rows: max_rows.unwrap_or(200) as usize,
                    timeout: Duration::from_secs_f64(step.timeout_s().min(60.0)),
                };
                let r = shoal_sql::query(&db, &sql, &limits).await.map_err(|e| e.to_string())?;
                Ok(Executed {
                    output: json!({"sql": r.sql, "columns": r.columns, "rows": r.rows, "row_count": r.rows.len(), "truncated": r.truncated}),
                    inputs: json!({"database": name, "sql": sql}),
                    ran_on: cx.graphs.here(),
                })
            }
            StepKind::Http { url, method, headers, body } => {
                let url = resolve_text(url, scope)?;
                let mut hs = BTreeMap::new();
                for (k, v) in headers {
                    hs.insert(k.clone(), resolve_text(v, scope)?);
                }
                let body = match body {
                    Some(b) => Some(resolve(b, scope)?),
                    None => None,
                };
                let key = format!("{}/{}", cx.run, step.id);
                let out =
                    super::tool::call(&cx.graph.allow_hosts, method, &url, &hs, body.as_ref(), &key, step.timeout_s())
                        .await?;
                let (host, _) = shoal_graph::hosts::host_port(&url)?;
                Ok(Executed {
                    output: out,
                    inputs: json!({"method": method, "url": url, "body": body}),
                    ran_on: format!("{} → {host}", cx.graphs.here()),
                })
            }
            StepKind::Classify { input, labels, method, model, examples } => {
                let text = resolve_text(input, scope)?;
                let model = resolve_text(model, scope)?;
                let (label, score, ran_on) = match method {
                    ClassifyMethod::Embedding => classify_by_examples(cx, &model, &text, labels, examples).await?,
                    ClassifyMethod::Llm => classify_by_llm(cx, &step.id, &model, &text, labels, examples).await?,
                };
                Ok(Executed {
                    output: json!({"label": label, "score": score}),
                    inputs: json!({"input": text, "model": model, "labels": labels}),
                    ran_on,
                })
            }
            StepKind::Map { over, step: inner, parallelism } => {
                let items = match eval(over, scope)? {
                    Value::Array(a) => a,
                    Value::Null => Vec::new(),
                    other => return Err(format!("`{over}` is not a list: {}", clip(&other.to_string()))),
                };
                let n = items.len();
                let results = map_items(cx, inner, scope, items, *parallelism as usize).await?;
                Ok(Executed {
                    output: json!({"results": results}),
                    inputs: json!({"items": n}),
                    ran_on: cx.graphs.here(),
                })
            }
            StepKind::Mcp { server, tool, arguments } => {
                let name = resolve_text(server, scope)?;
                let record = cx.graphs.mcp_server(&name)?;
                let tool = resolve_text(tool, scope)?;
                let args = resolve(&Value::Object(arguments.clone().into_iter().collect()), scope)?;
                let key = format!("{}/{}", cx.run, step.id);
                let (output, at) =
                    super::mcp::run_step(&record, &cx.graph.allow_hosts, &cx.graphs.router, &tool, &args, &key)
                        .await
                        .map_err(|e| e.to_string())?;
                Ok(Executed {
                    output,
                    inputs: json!({"server": name, "tool": tool, "arguments": args}),
                    ran_on: format!("{} → mcp {name} ({at})", cx.graphs.here()),
                })
            }
            StepKind::Agent { model, prompt, system, tools, max_turns, max_tokens, temperature, tool_choice } => {
                let model = resolve_text(model, scope)?;
                cx.allow_model(&model)?;
                let task = agent::Task {
                    system: system.as_deref().map(|s| render(s, scope)).transpose()?,
                    prompt: render(prompt, scope)?,
                    max_turns: max_turns.unwrap_or(AGENT_DEFAULT_TURNS).clamp(1, AGENT_MAX_TURNS),
                    max_tokens: max_tokens.unwrap_or(AGENT_DEFAULT_TOKENS).max(1),
                    first_call_required: tool_choice.as_deref() == Some("required"),
                };
                let offered = agent::resolve_tools(cx, tools).await?;
                let recorded = if cx.journal {
                    cx.graphs.run(&cx.run).and_then(|r| r.calls.get(&step.id).cloned()).unwrap_or_default()
                } else {
                    Vec::new()
                };
                let inputs = json!({
                    "model": model, "system": task.system, "prompt": task.prompt,
                    "tools": offered.iter().map(|t| t.name.clone()).collect::<Vec<_>>(),
                    "max_turns": task.max_turns, "max_tokens": task.max_tokens,
                });
                let temperature = temperature.unwrap_or(0.0) as f32;
                let mut io = agent::StepIo { cx, step: &step.id, model: model.clone(), temperature };
                let done = agent::run_loop(&mut io, &task, &offered, recorded).await?;
                Ok(Executed {
                    output: json!({
                        "text": done.text,
                        "calls": agent::calls_json(&done.calls),
                        "turns": done.turns,
                        "usage": {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens},
                    }),
                    inputs,
                    ran_on: format!("deployment {model}"),
                })
            }
            StepKind::Graph { graph, inputs } => {
                if cx.depth >= MAX_DEPTH {
                    return Err(format!("sub-graphs nest more than {MAX_DEPTH} deep"));
                }
                let sub = cx.graphs.definition(graph, None).map_err(|e| e.to_string())?.1;
                let given = resolve(&Value::Object(inputs.clone().into_iter().collect()), scope)?;
                let bound = bind_inputs(&sub, &given)
                    .map_err(|p| p.iter().map(|x| x.to_string()).collect::<Vec<_>>().join("; "))?;
                let sub = Arc::new(sub);
                let inner = StepContext { graph: sub.clone(), depth: cx.depth + 1, journal: false, ..cx.clone() };
                let outs = run_inline(&inner, &sub, &bound).await?;
                Ok(Executed {
                    output: json!({"outputs": outs}),
                    inputs: json!({"graph": graph, "inputs": bound}),
                    ran_on: cx.graphs.here(),
                })
            }
        }
    })
}

pub(super) fn sampling(temperature: f64, max_tokens: u32) -> SamplingSettings {
    SamplingSettings {
        max_tokens,
        temperature: temperature as f32,
        top_p: 1.0,
        top_k: 0,
        seed: Some(0),
        presence_penalty: 0.0,
        frequency_penalty: 0.0,
        stop: Vec::new(),
        constraint: None,
    }
}

/// How long a model step waits for a replica that is being placed or loaded (after a restart,
/// say) before it fails; the step's own timeout bounds it too.
const REPLICA_WAIT: Duration = Duration::from_secs(180);

async fn wait_for_replica(cx: &StepContext, model: &str, kind: EngineKind) -> Result<(), String> {
    cx.graphs.router.wait_ready(model, kind, REPLICA_WAIT).await.map_err(|e| e.to_string())
}

/// Numbered passages for a prompt: `[1] Title: text` (each at most 2,000 characters).
pub fn recall_context(hits: &[shoal_recall::Hit]) -> String {
    hits.iter()
        .enumerate()
        .map(|(i, h)| {
            let text: String = h.text.chars().take(2000).collect();
            match &h.title {
                Some(t) if !t.is_empty() => format!("[{}] {t}: {}", i + 1, text.trim()),
                _ => format!("[{}] {}", i + 1, text.trim()),
            }
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// Generates on a chat deployment, forwarding tokens as run events: the text, the usage
/// (`prompt_tokens`, `completion_tokens`, `finish_reason`) and where it ran.
pub(super) async fn generate(
    cx: &StepContext,
    step: &str,
    model: &str,
    prompt: Prompt,
    sampling: SamplingSettings,
) -> Result<(String, Value, String), String> {
    cx.allow_model(model)?;
    let give_up = tokio::time::Instant::now() + REPLICA_WAIT;
    loop {
        wait_for_replica(cx, model, EngineKind::Generate).await?;
        let mut rx = cx.graphs.router.generate(model.to_string(), prompt.clone(), sampling.clone());
        let mut text = String::new();
        let failed = loop {
            match rx.recv().await {
                Some(GenEvent::Started { .. }) => {}
                Some(GenEvent::Delta { text: t, .. }) => {
                    cx.graphs.events.token(&cx.run, step, &t);
                    text.push_str(&t);
                }
                Some(GenEvent::Done { finish, prompt_tokens, completion_tokens }) => {
                    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "finish_reason": finish.as_str()});
                    return Ok((text, usage, format!("deployment {model}")));
                }
                Some(GenEvent::Failed(e)) => break e,
                None => return Err("the generation ended without an answer".into()),
            }
        };
        // A replica the view still calls ready may not be loaded yet (the view is older than
        // a node's restart): before any token, try again until the replica wait is spent.
        let retry = text.is_empty()
            && matches!(failed, RouteError::NoReplica(_))
            && tokio::time::Instant::now() + REPLICA_RETRY_PAUSE < give_up;
        if !retry {
            return Err(failed.to_string());
        }
        tracing::debug!(model, error = %failed, "no replica answered yet; trying again");
        tokio::time::sleep(REPLICA_RETRY_PAUSE).await;
    }
}

/// The pause before a model step tries again after every replica refused it.
const REPLICA_RETRY_PAUSE: Duration = Duration::from_millis(500);

/// `(reasoning, answer)` of a chain-of-thought answer: `<think>…</think>` then the answer.
pub fn split_reasoning(text: &str) -> (String, String) {
    let t = text.trim();
    let body = t.strip_prefix("<think>").unwrap_or(t);
    match body.split_once("</think>") {
        Some((r, a)) => (r.trim().to_string(), a.trim().to_string()),
        None => (String::new(), t.to_string()),
    }
}

/// The first JSON object or array in a model's answer (it may be fenced or wrapped in prose).
pub fn json_in(text: &str) -> Option<Value> {
    if let Ok(v) = serde_json::from_str::<Value>(text.trim()) {
        return Some(v);
    }
    for (i, c) in text.char_indices() {
        if c == '{' || c == '[' {
            let mut de = serde_json::Deserializer::from_str(&text[i..]).into_iter::<Value>();
            if let Some(Ok(v)) = de.next() {
                return Some(v);
            }
        }
    }
    None
}

/// A small JSON Schema check: `type`, `required`, `properties`, `items`, `enum`.
pub fn check_schema(schema: &Value, v: &Value) -> Result<(), String> {
    if let Some(t) = schema.get("type").and_then(Value::as_str) {
        let ok = match t {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            "null" => v.is_null(),
            _ => true,
        };
        if !ok {
            return Err(format!("expected {t}, got {}", clip(&v.to_string())));
        }
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array) {
        if !options.contains(v) {
            return Err(format!("{v} is not one of {}", Value::Array(options.clone())));
        }
    }
    if let (Some(req), Some(o)) = (schema.get("required").and_then(Value::as_array), v.as_object()) {
        for k in req.iter().filter_map(Value::as_str) {
            if !o.contains_key(k) {
                return Err(format!("missing property {k:?}"));
            }
        }
    }
    if let (Some(props), Some(o)) = (schema.get("properties").and_then(Value::as_object), v.as_object()) {
        for (k, s) in props {
            if let Some(x) = o.get(k) {
                check_schema(s, x).map_err(|e| format!("{k}: {e}"))?;
            }
        }
    }
    if let (Some(items), Some(a)) = (schema.get("items"), v.as_array()) {
        for (i, x) in a.iter().enumerate() {
            check_schema(items, x).map_err(|e| format!("[{i}]: {e}"))?;
        }
    }
    Ok(())
}

fn clip(s: &str) -> String {
    s.chars().take(200).collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}

/// The label whose closest example is most similar to `text`.
pub fn nearest_label(query: &[f32], examples: &[(String, Vec<f32>)]) -> Option<(String, f32)> {
    examples.iter().map(|(label, v)| (label.clone(), cosine(query, v))).fold(
        None,
        |best: Option<(String, f32)>, (l, s)| match best {
            Some((bl, bs)) if bs >= s => Some((bl, bs)),
            _ => Some((l, s)),
        },
    )
}

async fn classify_by_examples(
    cx: &StepContext,
    model: &str,
    text: &str,
    labels: &[String],
    examples: &BTreeMap<String, Vec<String>>,
) -> Result<(String, f32, String), String> {
    cx.allow_model(model)?;
    let mut inputs = vec![text.to_string()];
    let mut owners = Vec::new();
    for label in labels {
        for e in examples.get(label).into_iter().flatten() {
            inputs.push(e.clone());
            owners.push(label.clone());
        }
    }
    wait_for_replica(cx, model, EngineKind::Embed).await?;
    let (vectors, _) = cx.graphs.router.embed(model, inputs).await.map_err(|e| e.to_string())?;
    let (query, rest) = vectors.split_first().ok_or("the embedding model returned nothing")?;
    let pairs: Vec<(String, Vec<f32>)> = owners.into_iter().zip(rest.iter().cloned()).collect();
    let (label, score) = nearest_label(query, &pairs).ok_or("no examples to compare with")?;
    Ok((label, score, format!("deployment {model}")))
}

async fn classify_by_llm(
    cx: &StepContext,
    step: &str,
    model: &str,
    text: &str,
    labels: &[String],
    examples: &BTreeMap<String, Vec<String>>,
) -> Result<(String, f32, String), String> {
    let mut system = format!(
        "Classify the user's text into exactly one of these labels: {}. Reply with the label only.",
        labels.join(", ")
    );
    for (label, ex) in examples {
        system.push_str(&format!("\nExamples of {label}: {}", ex.join(" | ")));
    }
    let turns = vec![ChatTurn::new("system", system), ChatTurn::new("user", text)];
    let (answer, _, ran_on) = generate(cx, step, model, Prompt::Chat(turns), sampling(0.0, 16)).await?;
    let lower = answer.to_lowercase();
    // The label named first in the answer.
    let found = labels
        .iter()
        .filter_map(|l| lower.find(&l.to_lowercase()).map(|at| (at, l)))
        .min_by_key(|(at, _)| *at)
        .map(|(_, l)| l.clone());
    match found {
        Some(l) => Ok((l, 1.0, ran_on)),
        None => Err(format!("the model answered {:?}, which names none of the labels", clip(&answer))),
    }
}

async fn map_items(
    cx: &StepContext,
    inner: &Step,
    scope: &Value,
    items: Vec<Value>,
    parallelism: usize,
) -> Result<Vec<Value>, String> {
    use futures_util::stream::{self, StreamExt, TryStreamExt};
    let cx = &StepContext { journal: false, ..cx.clone() };
    let futures = items.into_iter().enumerate().map(|(i, item)| {
        let sc = with_item(scope, &item, i);
        async move {
            let (r, _) = super::runner::attempt_with_retries(cx, inner, &sc).await;
            match r {
                Ok(e) => Ok(e.output),
                Err(e) => Err(format!("element {i}: {e}")),
            }
        }
    });
    stream::iter(futures).buffered(parallelism.max(1)).try_collect().await
}

/// Runs a whole graph in memory (a `graph` step's sub-graph): its steps are not committed
/// one by one; the `graph` step's result is.
pub fn run_inline<'a>(
    cx: &'a StepContext,
    graph: &'a Graph,
    inputs: &'a Value,
) -> BoxFuture<'a, Result<Value, String>> {
    Box::pin(async move {
        let mut results: BTreeMap<String, StepResult> = BTreeMap::new();
        loop {
            match next_steps(graph, inputs, &results, &Default::default()) {
                Plan::Done => return outputs(graph, inputs, &results),
                Plan::Failed { step, error } => return Err(format!("step {step} of graph {}: {error}", graph.name)),
                Plan::Continue { ready, skip, fail } => {
                    if ready.is_empty() && skip.is_empty() && fail.is_empty() {
                        return Err(format!("graph {}: no step can run", graph.name));
                    }
                    for id in skip {
                        results.insert(id, StepResult { status: StepStatus::Skipped, output: Value::Null });
                    }
                    for (id, e) in fail {
                        results.insert(id, StepResult { status: StepStatus::Failed, output: json!({"error": e}) });
                    }
                    let scope = shoal_graph::plan::scope(inputs, &results);
                    let steps: Vec<&Step> = graph.steps.iter().filter(|s| ready.contains(&s.id)).collect();
                    let done =
                        futures_util::future::join_all(steps.iter().map(|s| super::runner::finish(cx, s, &scope)))
                            .await;
                    for (s, done) in steps.iter().zip(done) {
                        results.insert(s.id.clone(), done.result);
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasoning_is_kept_apart_from_the_answer() {
        assert_eq!(split_reasoning("<think>2+2 is 4</think> 4"), ("2+2 is 4".into(), "4".into()));
        assert_eq!(split_reasoning("just 4"), (String::new(), "just 4".into()));
    }

    #[test]
    fn json_is_found_in_prose_and_checked_against_the_schema() {
        let v = json_in("Sure! ```json\n{\"city\": \"Paris\", \"n\": 2}\n```").expect("ok");
        let schema = json!({"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}, "n": {"type": "integer"}}});
        assert!(check_schema(&schema, &v).is_ok());
        assert!(check_schema(&schema, &json!({"n": 2})).expect_err("an error").contains("missing property"));
        assert!(check_schema(&schema, &json!({"city": 3})).expect_err("an error").contains("city: expected string"));
        assert_eq!(json_in("no json here"), None);
    }

    #[test]
    fn the_nearest_example_wins() {
        let ex = vec![("db".to_string(), vec![1.0, 0.0]), ("kb".to_string(), vec![0.0, 1.0])];
        assert_eq!(nearest_label(&[0.9, 0.1], &ex).expect("ok").0, "db");
        assert_eq!(nearest_label(&[0.1, 0.9], &ex).expect("ok").0, "kb");
    }
}
