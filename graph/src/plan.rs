//! The planner: what a run does next, as a function of its definition and its committed
//! results. The runner executes what this says and commits each result before asking
//! again, so a run resumes anywhere from its committed state alone.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::definition::{Graph, Join, OnError, StepKind};
use crate::deps::dependencies;
use crate::expr::{holds, resolve};
use crate::validate::Problem;

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepStatus {
    Succeeded,
    /// Its condition was false, its branch was not taken, or what it needed was skipped.
    Skipped,
    /// It failed, and the run fails with it.
    Failed,
    /// It failed and its `on_error` gave a default or took its error branch.
    Recovered,
}

/// A step's committed result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepResult {
    pub status: StepStatus,
    pub output: Value,
}

/// What to do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    Continue {
        /// Steps to execute now.
        ready: Vec<String>,
        /// Steps to commit as skipped now.
        skip: Vec<String>,
        /// Steps to commit as failed now (their condition cannot be evaluated).
        fail: Vec<(String, String)>,
    },
    /// Every step has a result: compute the outputs.
    Done,
    /// A step failed: the run fails.
    Failed { step: String, error: String },
}

/// The scope expressions see: `inputs` and the outputs of steps that ran.
pub fn scope(inputs: &Value, results: &BTreeMap<String, StepResult>) -> Value {
    let steps: Map<String, Value> = results
        .iter()
        .filter(|(_, r)| matches!(r.status, StepStatus::Succeeded | StepStatus::Recovered))
        .map(|(id, r)| (id.clone(), r.output.clone()))
        .collect();
    serde_json::json!({"inputs": inputs, "steps": steps})
}

/// The same scope with a map element in it.
pub fn with_item(scope: &Value, item: &Value, index: usize) -> Value {
    let mut s = scope.clone();
    if let Some(o) = s.as_object_mut() {
        o.insert("item".into(), item.clone());
        o.insert("index".into(), Value::from(index));
    }
    s
}

/// What happens next, given the committed results and the steps executing now.
pub fn next_steps(
    graph: &Graph,
    inputs: &Value,
    results: &BTreeMap<String, StepResult>,
    running: &BTreeSet<String>,
) -> Plan {
    if let Some((id, r)) = results.iter().find(|(_, r)| r.status == StepStatus::Failed) {
        let error = r.output.get("error").and_then(Value::as_str).unwrap_or("failed").to_string();
        return Plan::Failed { step: id.clone(), error };
    }
    if graph.steps.iter().all(|s| results.contains_key(&s.id)) {
        return Plan::Done;
    }
    let deps = dependencies(graph);
    let by_id: BTreeMap<&str, _> = graph.steps.iter().map(|s| (s.id.as_str(), s)).collect();
    let sc = scope(inputs, results);
    let (mut ready, mut skip, mut fail) = (Vec::new(), Vec::new(), Vec::new());
    for step in &graph.steps {
        if results.contains_key(&step.id) || running.contains(&step.id) {
            continue;
        }
        let d = deps.get(&step.id).cloned().unwrap_or_default();
        if !d.all().all(|x| results.contains_key(x)) {
            continue;
        }
        let gated_out = d.gates.iter().any(|gate| {
            let r = &results[gate];
            let Some(g) = by_id.get(gate.as_str()) else { return true };
            let branch_excludes = match &g.kind {
                StepKind::Branch { cases, otherwise }
                    if cases.iter().flat_map(|c| c.then.iter()).chain(otherwise).any(|x| *x == step.id) =>
                {
                    r.status != StepStatus::Succeeded
                        || !r
                            .output
                            .get("taken")
                            .and_then(Value::as_array)
                            .is_some_and(|t| t.iter().any(|x| x == &step.id))
                }
                _ => false,
            };
            let error_branch_excludes = matches!(&g.on_error, OnError::Branch(ids) if ids.contains(&step.id))
                && r.status != StepStatus::Recovered;
            branch_excludes || error_branch_excludes
        });
        let skipped = |x: &String| results.get(x).is_some_and(|r| r.status == StepStatus::Skipped);
        let data_skipped = match step.join {
            Join::All => d.data.iter().any(skipped),
            Join::Any => !d.data.is_empty() && d.data.iter().all(skipped),
        };
        if gated_out || data_skipped {
            skip.push(step.id.clone());
            continue;
        }
        match step.when.as_deref().map(|w| holds(w, &sc)) {
            Some(Ok(false)) => skip.push(step.id.clone()),
            Some(Err(e)) => fail.push((step.id.clone(), format!("condition: {e}"))),
            _ => ready.push(step.id.clone()),
        }
    }
    Plan::Continue { ready, skip, fail }
}

/// The steps a branch takes in a scope: the first true case's, else `else`'s.
pub fn take_branch(kind: &StepKind, scope: &Value) -> Result<Vec<String>, String> {
    let StepKind::Branch { cases, otherwise } = kind else {
        return Err("not a branch".into());
    };
    for c in cases {
        if holds(&c.when, scope)? {
            return Ok(c.then.clone());
        }
    }
    Ok(otherwise.clone())
}

/// The run's outputs once every step has a result.
pub fn outputs(graph: &Graph, inputs: &Value, results: &BTreeMap<String, StepResult>) -> Result<Value, String> {
    let sc = scope(inputs, results);
    let mut out = Map::new();
    for (name, expr) in &graph.outputs {
        out.insert(name.clone(), resolve(expr, &sc).map_err(|e| format!("output {name}: {e}"))?);
    }
    Ok(Value::Object(out))
}

/// A run's inputs: the given ones checked against the declared ones, defaults filled in.
/// Lists every problem.
pub fn bind_inputs(graph: &Graph, given: &Value) -> Result<Value, Vec<Problem>> {
    let empty = Map::new();
    let given = match given {
        Value::Object(o) => o,
        Value::Null => &empty,
        _ => {
            return Err(vec![Problem { at: "inputs".into(), message: "must be an object".into() }]);
        }
    };
    let mut problems = Vec::new();
    let mut out = Map::new();
    for (name, spec) in &graph.inputs {
        match given.get(name).or(spec.default.as_ref()) {
            Some(v) if spec.kind.admits(v) => {
                out.insert(name.clone(), v.clone());
            }
            Some(v) => problems.push(Problem {
                at: format!("inputs.{name}"),
                message: format!("type mismatch: expected a {}, got {v}", spec.kind.as_str()),
            }),
            None => problems.push(Problem { at: format!("inputs.{name}"), message: "missing required input".into() }),
        }
    }
    for name in given.keys().filter(|k| !graph.inputs.contains_key(*k)) {
        problems.push(Problem {
            at: format!("inputs.{name}"),
            message: format!(
                "graph {:?} has no input {name:?} (inputs: {})",
                graph.name,
                graph.inputs.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        });
    }
    if problems.is_empty() {
        Ok(Value::Object(out))
    } else {
        Err(problems)
    }
}
