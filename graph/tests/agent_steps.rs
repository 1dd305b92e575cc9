//! `agent` steps: what a definition may say (tools from MCP servers, graphs and knowledge
//! bases; bounds) and the problems apply lists.

use std::collections::BTreeMap;

use shoal_graph::definition::{AgentToolSource, StepKind};
use shoal_graph::{check, parse, Catalog};

fn catalog() -> Catalog {
    let mut c = Catalog::default();
    c.chat_models.insert("qwen".into());
    c.knowledge_bases.insert("handbook".into());
    c.mcp_servers = BTreeMap::from([
        ("calc".to_string(), Some("http://127.0.0.1:9100/mcp".to_string())),
        ("local".to_string(), None),
    ]);
    let sum = "name: sum\ninputs: {a: {type: integer}}\nsteps:\n  - {id: t, kind: template, template: x}\noutputs: {s: '${steps.t.text}'}";
    c.graphs.insert("sum".into(), check(&parse(sum).expect("parses"), &Catalog::default()).expect("good"));
    c
}

#[test]
fn an_agent_step_checks_and_names_its_tools() {
    let yaml = r#"
name: helper
inputs: {question: {type: string}}
allow_hosts: ["127.0.0.1:9100"]
steps:
  - id: solve
    kind: agent
    model: qwen
    prompt: "{{ inputs.question }}"
    tools: [{mcp: calc, tool: add}, {mcp: local}, {graph: sum}, {recall: handbook, description: "the staff handbook"}]
    max_turns: 4
    max_tokens: 512
  - {id: say, kind: template, template: "{{ steps.solve.text }} ({{ steps.solve.calls | length }} calls, {{ steps.solve.turns }} turns)"}
outputs: {answer: "${steps.say.text}"}
"#;
    let g = check(&parse(yaml).expect("parses"), &catalog()).unwrap_or_else(|p| panic!("{p:?}"));
    let StepKind::Agent { tools, max_turns, .. } = &g.steps[0].kind else { panic!("{:?}", g.steps[0].kind) };
    assert_eq!(*max_turns, Some(4));
    let sources: Vec<AgentToolSource<'_>> = tools.iter().map(|t| t.source().expect("one source")).collect();
    assert_eq!(
        sources,
        vec![
            AgentToolSource::Mcp { server: "calc", tool: Some("add") },
            AgentToolSource::Mcp { server: "local", tool: None },
            AgentToolSource::Graph("sum"),
            AgentToolSource::Recall("handbook"),
        ]
    );
    assert_eq!(g.steps[0].timeout_s(), 300.0, "a model step's default timeout");
    assert!(shoal_graph::deps::dependencies(&g)["say"].data.contains("solve"));
}

#[test]
fn bad_tools_and_bounds_are_listed() {
    let yaml = r#"
name: helper
steps:
  - id: a
    kind: agent
    model: nope
    prompt: hi
    tools: [{mcp: calc}, {graph: helper}, {graph: missing}, {recall: nowhere}, {mcp: calc, graph: sum}, {tool: add}, {}]
    max_turns: 40
    max_tokens: 0
    tool_choice: always
  - {id: b, kind: agent, model: qwen, prompt: hi, tools: []}
outputs: {x: "${steps.a.answer}"}
"#;
    let problems = check(&parse(yaml).expect("parses"), &catalog()).expect_err("problems");
    let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    for want in [
        "steps[0].model: unknown chat model \"nope\"",
        "steps[0].tools[0]: MCP server \"calc\": host 127.0.0.1:9100 is not in the graph's allow_hosts",
        "steps[0].tools[1]: a graph cannot run itself",
        "steps[0].tools[2]: unknown graph \"missing\"",
        "steps[0].tools[3]: unknown knowledge base \"nowhere\"",
        "steps[0].tools[4]: give exactly one of mcp",
        "steps[0].tools[5]: give exactly one of mcp",
        "steps[0].tools[6]: give exactly one of mcp",
        "steps[0].max_turns: must be 1 to 32",
        "steps[0].max_tokens: must be at least 1",
        "steps[0].tool_choice: must be auto or required",
        "steps[1].tools: an agent step needs at least one tool",
        "an agent step's output has no field `answer` (it has: text, calls, turns, usage)",
    ] {
        assert!(text.iter().any(|t| t.contains(want)), "no problem {want:?} in {text:#?}");
    }
}
