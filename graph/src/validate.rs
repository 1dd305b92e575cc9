//! Checks a definition against itself and the cluster's catalog, listing every problem.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;

use crate::definition::{
    AgentToolSource, ClassifyMethod, Graph, OnError, Step, StepKind, ValueType, AGENT_MAX_TURNS, COMMON_FIELDS,
};
use crate::deps::{dependencies, find_cycle, text_references, texts, TextSort};
use crate::expr::{check_expr, check_template, value_expressions, Reference};

/// One thing wrong with a definition: where, and what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// A path into the definition (`steps[2].model`, `outputs.answer`).
    pub at: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

fn problem(at: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem { at: at.into(), message: message.into() }
}

/// What the cluster has, for checking the names a definition uses. Names written as
/// `${…}` are only known at run time and are checked then.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub chat_models: BTreeSet<String>,
    pub embedding_models: BTreeSet<String>,
    pub knowledge_bases: BTreeSet<String>,
    pub databases: BTreeSet<String>,
    /// Registered graphs (for `graph` steps: their inputs, and cycles between graphs).
    pub graphs: BTreeMap<String, Graph>,
    /// Registered MCP servers: the URL of a Streamable HTTP one (its host must be allowed),
    /// `None` for a stdio one.
    pub mcp_servers: BTreeMap<String, Option<String>>,
}

/// Parses YAML or JSON (YAML is a superset) into a JSON value.
pub fn parse(text: &str) -> Result<Value, Problem> {
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        return Ok(v);
    }
    serde_yaml_ng::from_str::<Value>(text).map_err(|e| problem("(document)", format!("not valid YAML or JSON: {e}")))
}

/// Checks a definition; the typed graph, or every problem found.
pub fn check(raw: &Value, catalog: &Catalog) -> Result<Graph, Vec<Problem>> {
    let mut problems = Vec::new();
    let Some(obj) = raw.as_object() else {
        return Err(vec![problem("(document)", "a graph definition is an object with name, inputs, steps, outputs")]);
    };
    const TOP: &[&str] = &["name", "description", "inputs", "outputs", "steps", "allow_hosts"];
    for k in obj.keys().filter(|k| !TOP.contains(&k.as_str())) {
        problems.push(problem(k.clone(), format!("unknown field (a graph has: {})", TOP.join(", "))));
    }
    // Each step on its own, so that one bad step does not hide the others' problems.
    let mut steps = Vec::new();
    let mut positions = Vec::new();
    match obj.get("steps") {
        Some(Value::Array(raw_steps)) if !raw_steps.is_empty() => {
            for (i, s) in raw_steps.iter().enumerate() {
                if let Some(step) = typed_step(s, &format!("steps[{i}]"), &mut problems) {
                    steps.push(step);
                    positions.push(i);
                }
            }
        }
        Some(Value::Array(_)) => problems.push(problem("steps", "a graph needs at least one step")),
        Some(_) => problems.push(problem("steps", "must be a list of steps")),
        None => problems.push(problem("steps", "missing")),
    }
    let mut rest = obj.clone();
    rest.retain(|k, _| TOP.contains(&k.as_str()));
    rest.insert("steps".into(), Value::Array(Vec::new()));
    let graph = match serde_json::from_value::<Graph>(Value::Object(rest)) {
        Ok(mut g) => {
            g.steps = steps;
            Some(g)
        }
        Err(e) => {
            problems.push(problem("(graph)", e.to_string()));
            None
        }
    };
    if let Some(g) = &graph {
        check_graph(g, &positions, catalog, &mut problems);
    }
    match graph {
        Some(g) if problems.is_empty() => Ok(g),
        _ => Err(problems),
    }
}

fn typed_step(s: &Value, at: &str, problems: &mut Vec<Problem>) -> Option<Step> {
    let Some(o) = s.as_object() else {
        problems.push(problem(at, "a step is an object with id and kind"));
        return None;
    };
    let kind = o.get("kind").and_then(Value::as_str).unwrap_or("");
    if !StepKind::NAMES.contains(&kind) {
        problems.push(problem(
            format!("{at}.kind"),
            format!("unknown step kind {kind:?} (kinds: {})", StepKind::NAMES.join(", ")),
        ));
        return None;
    }
    let mut ok = true;
    for k in o.keys() {
        if !COMMON_FIELDS.contains(&k.as_str()) && !StepKind::fields(kind).contains(&k.as_str()) {
            problems.push(problem(
                format!("{at}.{k}"),
                format!(
                    "unknown field for {} {kind} step (it takes: {})",
                    article(kind),
                    StepKind::fields(kind).join(", ")
                ),
            ));
            ok = false;
        }
    }
    if let (Some(inner), "map") = (o.get("step"), kind) {
        let before = problems.len();
        typed_step(inner, &format!("{at}.step"), problems);
        ok &= problems.len() == before;
    }
    match serde_json::from_value::<Step>(s.clone()) {
        Ok(step) if ok => Some(step),
        Ok(_) => None,
        Err(e) => {
            problems.push(problem(at, e.to_string()));
            None
        }
    }
}

/// `a` or `an` before a step kind's name (`an mcp step`: the letter is read as a name).
fn article(kind: &str) -> &'static str {
    if kind == "mcp" || kind.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// Names: lowercase letters, digits and `-` (graphs); step ids and inputs: `_` instead.
fn valid_id(s: &str, sep: char) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && s.len() <= 63
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == sep)
}

fn check_graph(g: &Graph, positions: &[usize], catalog: &Catalog, problems: &mut Vec<Problem>) {
    if !valid_id(&g.name, '-') {
        problems.push(problem("name", format!("{:?}: use lowercase letters, digits and '-' (at most 63)", g.name)));
    }
    for (name, spec) in &g.inputs {
        if !valid_id(name, '_') {
            problems.push(problem(format!("inputs.{name}"), "use lowercase letters, digits and '_'"));
        }
        if let Some(d) = &spec.default {
            if !spec.kind.admits(d) {
                problems.push(problem(format!("inputs.{name}.default"), format!("is not a {}", spec.kind.as_str())));
            }
        }
    }
    let mut ids: BTreeMap<&str, &Step> = BTreeMap::new();
    let at = |n: usize| positions.get(n).copied().unwrap_or(n);
    for (n, s) in g.steps.iter().enumerate() {
        let i = at(n);
        if !valid_id(&s.id, '_') {
            problems
                .push(problem(format!("steps[{i}].id"), format!("{:?}: use lowercase letters, digits and '_'", s.id)));
        }
        if ids.contains_key(s.id.as_str()) {
            problems.push(problem(format!("steps[{i}].id"), format!("step id {:?} is used twice", s.id)));
        } else {
            ids.insert(&s.id, s);
        }
    }
    for (n, s) in g.steps.iter().enumerate() {
        check_step(g, s, &format!("steps[{}]", at(n)), &ids, catalog, problems, false);
    }
    for (name, v) in &g.outputs {
        let mut strings = Vec::new();
        collect(v, &mut strings);
        for text in strings {
            check_text(g, &ids, &format!("outputs.{name}"), TextSort::Value, &text, None, problems);
        }
    }
    if g.outputs.is_empty() {
        problems.push(problem("outputs", "a graph needs at least one output"));
    }
    if let Some(cycle) = find_cycle(&dependencies(g)) {
        problems.push(problem("steps", format!("the steps form a cycle: {}", cycle.join(" -> "))));
    }
}

fn collect(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| collect(x, out)),
        Value::Object(o) => o.values().for_each(|x| collect(x, out)),
        _ => {}
    }
}

/// A literal name (no `${…}`), to check against the catalog now.
fn literal(s: &str) -> Option<&str> {
    (!s.contains("${")).then_some(s)
}

fn check_step(
    g: &Graph,
    s: &Step,
    at: &str,
    ids: &BTreeMap<&str, &Step>,
    catalog: &Catalog,
    problems: &mut Vec<Problem>,
    inner: bool,
) {
    let here = if inner { None } else { Some(s.id.as_str()) };
    for (field, sort, text) in texts(s) {
        if field.starts_with("step.") {
            continue; // checked with the inner step
        }
        check_text(g, ids, &format!("{at}.{field}"), sort, &text, here, problems);
    }
    let names_step = |list: &[String], field: &str, problems: &mut Vec<Problem>| {
        for id in list {
            if !ids.contains_key(id.as_str()) {
                problems.push(problem(format!("{at}.{field}"), format!("unknown step {id:?}")));
            } else if *id == s.id {
                problems.push(problem(format!("{at}.{field}"), "a step cannot name itself"));
            }
        }
    };
    names_step(&s.after, "after", problems);
    if let OnError::Branch(list) = &s.on_error {
        names_step(list, "on_error.branch", problems);
    }
    if s.retry.attempts == 0 || s.retry.attempts > 20 {
        problems.push(problem(format!("{at}.retry.attempts"), "must be 1 to 20"));
    }
    if let Some(t) = s.timeout_s {
        if !(t > 0.0 && t <= 86_400.0) {
            problems.push(problem(format!("{at}.timeout_s"), "must be more than 0 and at most 86400"));
        }
    }
    match &s.kind {
        StepKind::Chat { model, prompt, messages, output_schema, max_tokens, .. } => {
            check_model(model, &catalog.chat_models, "chat", &format!("{at}.model"), problems);
            if prompt.is_none() && messages.is_empty() {
                problems.push(problem(at, "a chat step needs a prompt or messages"));
            }
            for (i, m) in messages.iter().enumerate() {
                if !["system", "user", "assistant"].contains(&m.role.as_str()) {
                    problems.push(problem(format!("{at}.messages[{i}].role"), "must be system, user or assistant"));
                }
            }
            if let Some(schema) = output_schema {
                if !schema.is_object() {
                    problems.push(problem(format!("{at}.output_schema"), "must be a JSON Schema object"));
                }
            }
            if max_tokens == &Some(0) {
                problems.push(problem(format!("{at}.max_tokens"), "must be at least 1"));
            }
        }
        StepKind::Embed { model, .. } => {
            check_model(model, &catalog.embedding_models, "embedding", &format!("{at}.model"), problems)
        }
        StepKind::Recall { knowledge_base, top_k, .. } => {
            if let Some(kb) = literal(knowledge_base) {
                if !catalog.knowledge_bases.contains(kb) {
                    problems.push(problem(format!("{at}.knowledge_base"), format!("unknown knowledge base {kb:?}")));
                }
            }
            if matches!(top_k, Some(0) | Some(101..)) {
                problems.push(problem(format!("{at}.top_k"), "must be 1 to 100"));
            }
        }
        StepKind::Sql { database, query, schema, .. } => {
            if let Some(db) = literal(database) {
                if !catalog.databases.contains(db) {
                    problems.push(problem(format!("{at}.database"), format!("unknown database {db:?}")));
                }
            }
            if query.is_some() == *schema {
                problems.push(problem(at, "a sql step takes either query or schema: true"));
            }
        }
        StepKind::Http { url, method, .. } => {
            if !["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"].contains(&method.as_str()) {
                problems.push(problem(format!("{at}.method"), format!("unknown method {method:?}")));
            }
            if let Some(u) = literal(url) {
                if let Err(e) = crate::hosts::check_url(u, &g.allow_hosts) {
                    problems.push(problem(format!("{at}.url"), e));
                }
            }
        }
        StepKind::Classify { labels, method, model, examples, .. } => {
            if labels.len() < 2 {
                problems.push(problem(format!("{at}.labels"), "give at least two labels"));
            }
            let (models, what) = match method {
                ClassifyMethod::Llm => (&catalog.chat_models, "chat"),
                ClassifyMethod::Embedding => (&catalog.embedding_models, "embedding"),
            };
            check_model(model, models, what, &format!("{at}.model"), problems);
            for label in examples.keys().filter(|l| !labels.contains(l)) {
                problems.push(problem(format!("{at}.examples.{label}"), "is not one of the labels"));
            }
            if *method == ClassifyMethod::Embedding {
                for label in labels.iter().filter(|l| examples.get(*l).is_none_or(|e| e.is_empty())) {
                    problems.push(problem(format!("{at}.examples"), format!("label {label:?} has no examples")));
                }
            }
        }
        StepKind::Branch { cases, otherwise } => {
            if cases.is_empty() {
                problems.push(problem(format!("{at}.cases"), "a branch needs at least one case"));
            }
            for (i, c) in cases.iter().enumerate() {
                names_step(&c.then, &format!("cases[{i}].then"), problems);
            }
            names_step(otherwise, "else", problems);
        }
        StepKind::Map { over, step, parallelism } => {
            if !(1..=64).contains(parallelism) {
                problems.push(problem(format!("{at}.parallelism"), "must be 1 to 64"));
            }
            if matches!(step.kind, StepKind::Map { .. } | StepKind::Branch { .. }) {
                problems.push(problem(format!("{at}.step"), "a map's step cannot be a map or a branch"));
            }
            if let Some(t) = reference_type(g, ids, over) {
                if t != ValueType::Array && t != ValueType::Any {
                    problems.push(problem(
                        format!("{at}.over"),
                        format!("type mismatch: `{over}` is a {}, a map needs an array", t.as_str()),
                    ));
                }
            }
            // The inner step sees `item`/`index` and the same inputs and steps.
            for (field, sort, text) in texts(step) {
                check_text(g, ids, &format!("{at}.step.{field}"), sort, &text, Some(&s.id), problems);
            }
            check_step(g, step, &format!("{at}.step"), ids, catalog, problems, true);
        }
        StepKind::Graph { graph, inputs } => match catalog.graphs.get(graph) {
            _ if *graph == g.name => problems.push(problem(format!("{at}.graph"), "a graph cannot run itself")),
            None => problems.push(problem(format!("{at}.graph"), format!("unknown graph {graph:?}"))),
            Some(sub) => {
                if graph_calls(catalog, graph, &g.name, &mut BTreeSet::new()) {
                    problems.push(problem(format!("{at}.graph"), format!("graph {graph:?} runs {:?} in turn", g.name)));
                }
                for (name, spec) in &sub.inputs {
                    if spec.default.is_none() && !inputs.contains_key(name) {
                        problems.push(problem(
                            format!("{at}.inputs"),
                            format!("missing input {name:?} of graph {graph:?}"),
                        ));
                    }
                }
                for name in inputs.keys().filter(|n| !sub.inputs.contains_key(*n)) {
                    problems.push(problem(format!("{at}.inputs.{name}"), format!("graph {graph:?} has no such input")));
                }
            }
        },
        StepKind::Mcp { server, tool, .. } => {
            if tool.trim().is_empty() {
                problems.push(problem(format!("{at}.tool"), "missing tool name: give the name of the tool to call"));
            }
            if let Some(name) = literal(server) {
                check_mcp_server(g, catalog, name, &format!("{at}.server"), problems);
            }
        }
        StepKind::Agent { model, tools, max_turns, max_tokens, temperature, tool_choice, .. } => {
            if tool_choice.as_deref().is_some_and(|c| c != "auto" && c != "required") {
                problems.push(problem(format!("{at}.tool_choice"), "must be auto or required"));
            }
            check_model(model, &catalog.chat_models, "chat", &format!("{at}.model"), problems);
            if tools.is_empty() {
                problems.push(problem(format!("{at}.tools"), "an agent step needs at least one tool"));
            }
            if tools.len() > 64 {
                problems.push(problem(format!("{at}.tools"), "at most 64 tool entries"));
            }
            for (i, t) in tools.iter().enumerate() {
                let here = format!("{at}.tools[{i}]");
                match t.source() {
                    Err(e) => problems.push(problem(here, e)),
                    Ok(AgentToolSource::Mcp { server, .. }) => check_mcp_server(g, catalog, server, &here, problems),
                    Ok(AgentToolSource::Graph(name)) => match catalog.graphs.get(name) {
                        _ if name == g.name => problems.push(problem(here, "a graph cannot run itself")),
                        None => problems.push(problem(here, format!("unknown graph {name:?}"))),
                        Some(_) if graph_calls(catalog, name, &g.name, &mut BTreeSet::new()) => {
                            problems.push(problem(here, format!("graph {name:?} runs {:?} in turn", g.name)))
                        }
                        Some(_) => {}
                    },
                    Ok(AgentToolSource::Recall(kb)) => {
                        if !catalog.knowledge_bases.contains(kb) {
                            problems.push(problem(here, format!("unknown knowledge base {kb:?}")));
                        }
                    }
                }
            }
            if matches!(max_turns, Some(0)) || max_turns.is_some_and(|n| n > AGENT_MAX_TURNS) {
                problems.push(problem(format!("{at}.max_turns"), format!("must be 1 to {AGENT_MAX_TURNS}")));
            }
            if matches!(max_tokens, Some(0)) {
                problems.push(problem(format!("{at}.max_tokens"), "must be at least 1"));
            }
            if temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
                problems.push(problem(format!("{at}.temperature"), "must be 0 to 2"));
            }
        }
        StepKind::Template { .. } => {}
    }
}

/// A registered MCP server whose host (of an HTTP one) the graph allows.
fn check_mcp_server(g: &Graph, catalog: &Catalog, name: &str, at: &str, problems: &mut Vec<Problem>) {
    match catalog.mcp_servers.get(name) {
        None => {
            let known = if catalog.mcp_servers.is_empty() {
                "none registered".to_string()
            } else {
                catalog.mcp_servers.keys().cloned().collect::<Vec<_>>().join(", ")
            };
            problems.push(problem(
                at,
                format!("unknown MCP server {name:?} (registered: {known}; add one with `shoal mcp add`)"),
            ));
        }
        Some(Some(url)) => {
            if let Err(e) = crate::hosts::check_mcp_url(url, &g.allow_hosts) {
                problems.push(problem(at, format!("MCP server {name:?}: {e}")));
            }
        }
        Some(None) => {}
    }
}

/// Whether graph `from` runs graph `target`, directly or through others.
fn graph_calls(catalog: &Catalog, from: &str, target: &str, seen: &mut BTreeSet<String>) -> bool {
    if !seen.insert(from.to_string()) {
        return false;
    }
    let Some(g) = catalog.graphs.get(from) else { return false };
    let runs = |graph: &str, seen: &mut BTreeSet<String>| graph == target || graph_calls(catalog, graph, target, seen);
    g.steps.iter().any(|s| match &s.kind {
        StepKind::Graph { graph, .. } => runs(graph, seen),
        StepKind::Agent { tools, .. } => tools.iter().filter_map(|t| t.graph.as_deref()).any(|graph| runs(graph, seen)),
        _ => false,
    })
}

fn check_model(model: &str, known: &BTreeSet<String>, what: &str, at: &str, problems: &mut Vec<Problem>) {
    if let Some(m) = literal(model) {
        if !known.contains(m) {
            let list = if known.is_empty() {
                "none deployed".to_string()
            } else {
                known.iter().cloned().collect::<Vec<_>>().join(", ")
            };
            problems.push(problem(at, format!("unknown {what} model {m:?} (deployed {what} models: {list})")));
        }
    }
}

/// The type of an expression that is one plain reference (`steps.x.rows`, `inputs.list`).
fn reference_type(g: &Graph, ids: &BTreeMap<&str, &Step>, expr: &str) -> Option<ValueType> {
    let e = expr.trim();
    if !e.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.') {
        return None;
    }
    let parts: Vec<&str> = e.split('.').collect();
    match parts.as_slice() {
        ["inputs", name] => g.inputs.get(*name).map(|s| s.kind),
        ["steps", id, field] => {
            let fields = ids.get(id)?.kind.output_fields()?;
            fields.iter().find(|(f, _)| f == field).map(|(_, t)| *t)
        }
        _ => None,
    }
}

fn check_text(
    g: &Graph,
    ids: &BTreeMap<&str, &Step>,
    at: &str,
    sort: TextSort,
    text: &str,
    this: Option<&str>,
    problems: &mut Vec<Problem>,
) {
    let compiled = match sort {
        TextSort::Template => check_template(text),
        TextSort::Expression => check_expr(text),
        TextSort::Value => match value_expressions(text) {
            Ok(exprs) => exprs.into_iter().try_for_each(check_expr),
            Err(e) => Err(e),
        },
    };
    if let Err(e) = compiled {
        problems.push(problem(at, format!("does not parse: {e}")));
        return;
    }
    for Reference { root, name, field } in text_references(sort, text) {
        if root == "inputs" {
            if !g.inputs.contains_key(&name) {
                problems.push(problem(at, format!("missing input: `inputs.{name}` is not declared in inputs")));
            }
            continue;
        }
        if Some(name.as_str()) == this {
            problems.push(problem(at, format!("step {name:?} refers to its own output")));
            continue;
        }
        let Some(step) = ids.get(name.as_str()) else {
            problems.push(problem(at, format!("unknown step `steps.{name}`")));
            continue;
        };
        if let (Some(field), Some(fields)) = (field, step.kind.output_fields()) {
            if field != "error" && !fields.iter().any(|(f, _)| *f == field) {
                let has: Vec<&str> = fields.iter().map(|(f, _)| *f).collect();
                problems.push(problem(
                    at,
                    format!(
                        "type mismatch: {} {} step's output has no field `{field}` (it has: {})",
                        article(step.kind.name()),
                        step.kind.name(),
                        has.join(", ")
                    ),
                ));
            }
        }
    }
}
