//! The checks list every problem; the planner is exact on branches, skips, joins, error
//! branches and failures.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};
use shoal_graph::plan::{bind_inputs, outputs, take_branch};
use shoal_graph::{check, next_steps, parse, Catalog, Graph, Plan, StepResult, StepStatus};

fn catalog() -> Catalog {
    Catalog {
        chat_models: ["chat-model".to_string()].into(),
        embedding_models: ["embedder".to_string()].into(),
        knowledge_bases: ["docs".to_string()].into(),
        databases: ["shop".to_string()].into(),
        graphs: shoal_graph::builtin::builtins(),
        mcp_servers: BTreeMap::new(),
    }
}

fn graph(yaml: &str) -> Graph {
    check(&parse(yaml).expect("parses"), &catalog()).unwrap_or_else(|p| panic!("{p:?}"))
}

#[test]
fn a_malformed_graph_gets_every_problem_listed() {
    let yaml = r#"
name: Bad_Name
colour: blue
inputs:
  question: {type: string}
steps:
  - {id: a, kind: chat, model: nope, prompt: "{{ inputs.missing }} {{ steps.b.text }}"}
  - {id: b, kind: template, template: "{{ steps.a.txt }}"}
  - {id: c, kind: teleport}
  - {id: d, kind: sql, database: nodb, query: "select 1", colour: red}
  - {id: e, kind: map, over: steps.a.text, step: {id: inner, kind: template, template: "{{ item }}"}}
  - {id: f, kind: branch, cases: [{when: "inputs.question ==", then: [ghost]}]}
  - {id: g, kind: http, url: "http://169.254.169.254/latest"}
  - {id: a, kind: recall, knowledge_base: nokb, query: x}
outputs:
  answer: ${steps.zz.text}
"#;
    let problems = check(&parse(yaml).expect("ok"), &catalog()).expect_err("an error");
    let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    let expect = [
        "colour: unknown field",
        "name: \"Bad_Name\"",
        "steps[0].model: unknown chat model \"nope\"",
        "missing input: `inputs.missing`",
        "steps[1].template: type mismatch: a chat step's output has no field `txt`",
        "unknown step kind \"teleport\"",
        "steps[3].colour: unknown field for a sql step",
        "type mismatch: `steps.a.text` is a string, a map needs an array",
        "does not parse",
        "unknown step \"ghost\"",
        "host 169.254.169.254:80 is not in the graph's allow_hosts",
        "step id \"a\" is used twice",
        "unknown knowledge base \"nokb\"",
        "unknown step `steps.zz`",
        "the steps form a cycle",
    ];
    for e in expect {
        assert!(text.iter().any(|t| t.contains(e)), "no problem mentioning {e:?} in {text:#?}");
    }
}

fn done(output: Value) -> StepResult {
    StepResult { status: StepStatus::Succeeded, output }
}

fn ready(plan: &Plan) -> (Vec<String>, Vec<String>) {
    match plan {
        Plan::Continue { ready, skip, fail } => {
            assert!(fail.is_empty(), "{fail:?}");
            (ready.clone(), skip.clone())
        }
        other => panic!("expected Continue, got {other:?}"),
    }
}

#[test]
fn the_planner_follows_a_branch_skips_the_other_arm_and_joins() {
    let g = graph(
        r#"
name: routed
inputs: {n: {type: integer}}
steps:
  - {id: start, kind: template, template: "{{ inputs.n }}"}
  - id: pick
    kind: branch
    cases: [{when: "inputs.n > 10", then: [big]}]
    else: [small]
  - {id: big, kind: template, template: "big {{ steps.start.text }}"}
  - {id: small, kind: template, template: "small"}
  - {id: after_big, kind: template, template: "{{ steps.big.text }}"}
  - {id: end, kind: template, template: "{{ steps.big.text or steps.small.text }}", join: any}
outputs:
  text: ${steps.end.text}
"#,
    );
    let inputs = bind_inputs(&g, &json!({"n": 3})).expect("ok");
    let mut results = BTreeMap::new();
    let none = BTreeSet::new();
    assert_eq!(ready(&next_steps(&g, &inputs, &results, &none)), (vec!["start".into(), "pick".into()], vec![]));
    // Nothing is planned twice while it runs.
    let running: BTreeSet<String> = ["start".to_string(), "pick".to_string()].into();
    assert_eq!(ready(&next_steps(&g, &inputs, &results, &running)), (vec![], vec![]));
    results.insert("start".into(), done(json!({"text": "3"})));
    let taken = take_branch(&g.steps[1].kind, &shoal_graph::plan::scope(&inputs, &results)).expect("ok");
    assert_eq!(taken, vec!["small".to_string()]);
    results.insert("pick".into(), done(json!({"taken": taken})));
    assert_eq!(ready(&next_steps(&g, &inputs, &results, &none)), (vec!["small".into()], vec!["big".into()]));
    results.insert("big".into(), StepResult { status: StepStatus::Skipped, output: Value::Null });
    results.insert("small".into(), done(json!({"text": "small"})));
    // after_big needs big (skipped) → skipped; end joins any → runs.
    assert_eq!(ready(&next_steps(&g, &inputs, &results, &none)), (vec!["end".into()], vec!["after_big".into()]));
    results.insert("after_big".into(), StepResult { status: StepStatus::Skipped, output: Value::Null });
    results.insert("end".into(), done(json!({"text": "small"})));
    assert_eq!(next_steps(&g, &inputs, &results, &none), Plan::Done);
    assert_eq!(outputs(&g, &inputs, &results).expect("ok"), json!({"text": "small"}));
}

#[test]
fn an_error_branch_runs_only_on_failure_and_a_failed_step_fails_the_run() {
    let g = graph(
        r#"
name: guarded
steps:
  - {id: call, kind: http, url: "http://127.0.0.1:9/x", on_error: {branch: [fallback]}}
  - {id: fallback, kind: template, template: "fallback: {{ steps.call.error }}"}
  - {id: strict, kind: template, template: "x", after: [call], when: "steps.call.status == 200"}
outputs:
  text: ${steps.fallback.text or steps.call.body}
allow_hosts: ["127.0.0.1:9"]
"#,
    );
    let inputs = bind_inputs(&g, &Value::Null).expect("ok");
    let none = BTreeSet::new();
    let mut results = BTreeMap::new();
    results
        .insert("call".to_string(), StepResult { status: StepStatus::Recovered, output: json!({"error": "refused"}) });
    assert_eq!(ready(&next_steps(&g, &inputs, &results, &none)), (vec!["fallback".into()], vec!["strict".into()]));
    results.insert("call".into(), done(json!({"status": 200, "body": "ok"})));
    assert_eq!(ready(&next_steps(&g, &inputs, &results, &none)), (vec!["strict".into()], vec!["fallback".into()]));
    results.insert("strict".into(), StepResult { status: StepStatus::Failed, output: json!({"error": "boom"}) });
    assert_eq!(next_steps(&g, &inputs, &results, &none), Plan::Failed { step: "strict".into(), error: "boom".into() });
}

#[test]
fn inputs_are_checked_defaulted_and_unknown_ones_refused() {
    let g = graph(
        r#"
name: typed
inputs:
  q: {type: string}
  k: {type: integer, default: 4}
steps: [{id: t, kind: template, template: "{{ inputs.q }} {{ inputs.k }}"}]
outputs: {text: "${steps.t.text}"}
"#,
    );
    assert_eq!(bind_inputs(&g, &json!({"q": "hi"})).expect("ok"), json!({"q": "hi", "k": 4}));
    let problems = bind_inputs(&g, &json!({"k": "four", "z": 1})).expect_err("an error");
    let text = format!("{problems:?}");
    assert!(
        text.contains("missing required input")
            && text.contains("expected a integer")
            && text.contains("no input \\\"z\\\""),
        "{text}"
    );
}

#[test]
fn the_schema_describes_every_step_kind() {
    let schema = shoal_graph::json_schema().to_string();
    for kind in shoal_graph::StepKind::NAMES {
        assert!(schema.contains(&format!("\"{kind}\"")), "{kind} missing from the schema");
    }
}
