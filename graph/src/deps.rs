//! Which texts a step holds, and which steps it depends on.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::definition::{Graph, OnError, Step, StepKind};
use crate::expr::{references, value_expressions, Reference};

/// How a text of a definition is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextSort {
    Template,
    Value,
    Expression,
}

/// Every text of a step (with the field it sits in), inner map steps included.
pub fn texts(step: &Step) -> Vec<(String, TextSort, String)> {
    let mut out = Vec::new();
    let value = |field: &str, v: &Value, out: &mut Vec<(String, TextSort, String)>| {
        collect_strings(v, &mut |s| out.push((field.to_string(), TextSort::Value, s.to_string())));
    };
    if let Some(w) = &step.when {
        out.push(("when".into(), TextSort::Expression, w.clone()));
    }
    if let OnError::Default(v) = &step.on_error {
        value("on_error.default", v, &mut out);
    }
    let t = |f: &str, s: &str| (f.to_string(), TextSort::Template, s.to_string());
    let v = |f: &str, s: &str| (f.to_string(), TextSort::Value, s.to_string());
    match &step.kind {
        StepKind::Template { template } => out.push(t("template", template)),
        StepKind::Chat { model, prompt, system, messages, .. } => {
            out.push(v("model", model));
            out.extend(prompt.iter().map(|p| t("prompt", p)));
            out.extend(system.iter().map(|p| t("system", p)));
            out.extend(messages.iter().enumerate().map(|(i, m)| t(&format!("messages[{i}].content"), &m.content)));
        }
        StepKind::Embed { model, input } => {
            out.push(v("model", model));
            out.push(v("input", input));
        }
        StepKind::Recall { knowledge_base, query, filter, .. } => {
            out.push(v("knowledge_base", knowledge_base));
            out.push(v("query", query));
            if let Some(f) = filter {
                value("filter", f, &mut out);
            }
        }
        StepKind::Sql { database, query, .. } => {
            out.push(v("database", database));
            out.extend(query.iter().map(|q| t("query", q)));
        }
        StepKind::Http { url, headers, body, .. } => {
            out.push(v("url", url));
            out.extend(headers.iter().map(|(k, h)| v(&format!("headers.{k}"), h)));
            if let Some(b) = body {
                value("body", b, &mut out);
            }
        }
        StepKind::Classify { input, model, .. } => {
            out.push(v("input", input));
            out.push(v("model", model));
        }
        StepKind::Branch { cases, .. } => {
            out.extend(
                cases
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (format!("cases[{i}].when"), TextSort::Expression, c.when.clone())),
            );
        }
        StepKind::Map { over, step, .. } => {
            out.push(("over".into(), TextSort::Expression, over.clone()));
            out.extend(texts(step).into_iter().map(|(f, s, x)| (format!("step.{f}"), s, x)));
        }
        StepKind::Mcp { server, tool, arguments } => {
            out.push(v("server", server));
            out.push(v("tool", tool));
            for (k, x) in arguments {
                value(&format!("arguments.{k}"), x, &mut out);
            }
        }
        StepKind::Agent { model, prompt, system, .. } => {
            out.push(v("model", model));
            out.push(t("prompt", prompt));
            out.extend(system.iter().map(|p| t("system", p)));
            // Its tools are names as written, not values (checked when the graph is applied).
        }
        StepKind::Graph { inputs, .. } => {
            for (k, x) in inputs {
                value(&format!("inputs.{k}"), x, &mut out);
            }
        }
    }
    out
}

fn collect_strings(v: &Value, f: &mut impl FnMut(&str)) {
    match v {
        Value::String(s) => f(s),
        Value::Array(a) => a.iter().for_each(|x| collect_strings(x, f)),
        Value::Object(o) => o.values().for_each(|x| collect_strings(x, f)),
        _ => {}
    }
}

/// The references of one text.
pub fn text_references(sort: TextSort, text: &str) -> Vec<Reference> {
    match sort {
        TextSort::Value => value_expressions(text).unwrap_or_default().into_iter().flat_map(references).collect(),
        TextSort::Template | TextSort::Expression => references(text),
    }
}

/// What a step waits for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deps {
    /// Steps whose results it reads, or that it is ordered after.
    pub data: BTreeSet<String>,
    /// Branch steps (and steps with an error branch) that decide whether it runs at all.
    pub gates: BTreeSet<String>,
}

impl Deps {
    pub fn all(&self) -> impl Iterator<Item = &String> {
        self.data.iter().chain(self.gates.iter())
    }
}

/// Each step's dependencies (references to unknown steps are kept: validation reports them).
pub fn dependencies(graph: &Graph) -> BTreeMap<String, Deps> {
    let mut out: BTreeMap<String, Deps> = BTreeMap::new();
    for step in &graph.steps {
        let d = out.entry(step.id.clone()).or_default();
        for (_, sort, text) in texts(step) {
            for r in text_references(sort, &text) {
                if r.root == "steps" && r.name != step.id {
                    d.data.insert(r.name);
                }
            }
        }
        d.data.extend(step.after.iter().cloned());
    }
    for step in &graph.steps {
        let mut gated: Vec<&String> = Vec::new();
        if let StepKind::Branch { cases, otherwise } = &step.kind {
            gated.extend(cases.iter().flat_map(|c| c.then.iter()).chain(otherwise.iter()));
        }
        if let OnError::Branch(ids) = &step.on_error {
            gated.extend(ids.iter());
        }
        for id in gated {
            if let Some(d) = out.get_mut(id) {
                if *id != step.id {
                    d.gates.insert(step.id.clone());
                }
            }
        }
    }
    out
}

/// A dependency cycle, as the ids along it (first repeated at the end), if there is one.
pub fn find_cycle(deps: &BTreeMap<String, Deps>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        id: &str,
        deps: &BTreeMap<String, Deps>,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(id) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let from = path.iter().position(|p| p == id).unwrap_or(0);
                let mut cycle = path[from..].to_vec();
                cycle.push(id.to_string());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(id.to_string(), Mark::Open);
        path.push(id.to_string());
        if let Some(d) = deps.get(id) {
            for next in d.all() {
                if deps.contains_key(next) {
                    if let Some(c) = visit(next, deps, marks, path) {
                        return Some(c);
                    }
                }
            }
        }
        path.pop();
        marks.insert(id.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for id in deps.keys() {
        if let Some(c) = visit(id, deps, &mut marks, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}
