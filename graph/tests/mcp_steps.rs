//! `mcp` steps: what a definition may say, and the problems apply lists (unknown servers,
//! a missing tool, a server whose host is not allowed) without quoting a server's secrets.

use std::collections::BTreeMap;

use shoal_graph::definition::StepKind;
use shoal_graph::{check, parse, Catalog};

fn catalog() -> Catalog {
    let mut mcp_servers = BTreeMap::new();
    mcp_servers.insert("calc".to_string(), Some("http://u:hunter22@127.0.0.1:9100/mcp?token=tok-123".to_string()));
    mcp_servers.insert("local".to_string(), None);
    Catalog { mcp_servers, ..Catalog::default() }
}

#[test]
fn an_mcp_step_checks_and_its_output_fields_are_known() {
    let yaml = r#"
name: sum
inputs: {a: {type: integer}, b: {type: integer}}
allow_hosts: ["127.0.0.1:9100"]
steps:
  - {id: add, kind: mcp, server: calc, tool: add, arguments: {a: "${inputs.a}", b: "${inputs.b}"}, timeout_s: 5}
  - {id: say, kind: mcp, server: local, tool: echo, arguments: {text: "sum ${steps.add.text}"}}
outputs: {sum: "${steps.add.json}", said: "${steps.say.text}", failed: "${steps.add.is_error}"}
"#;
    let g = check(&parse(yaml).expect("parses"), &catalog()).unwrap_or_else(|p| panic!("{p:?}"));
    match &g.steps[0].kind {
        StepKind::Mcp { server, tool, arguments } => {
            assert_eq!((server.as_str(), tool.as_str()), ("calc", "add"));
            assert_eq!(arguments["a"], "${inputs.a}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(g.steps[0].timeout_s(), 5.0);
    assert_eq!(g.steps[1].timeout_s(), 60.0, "the default timeout of a tool call");
    let deps = shoal_graph::deps::dependencies(&g);
    assert!(deps["say"].data.contains("add"), "an argument's reference is a dependency");
}

#[test]
fn unknown_servers_missing_tools_and_hosts_not_allowed_are_listed() {
    let yaml = r#"
name: bad
steps:
  - {id: a, kind: mcp, server: nowhere, tool: add}
  - {id: b, kind: mcp, server: calc, tool: ""}
  - {id: c, kind: mcp, server: calc, tool: add, colour: red}
  - {id: d, kind: mcp, tool: add}
  - {id: e, kind: mcp, server: "${inputs.which}", tool: add}
outputs: {x: "${steps.a.txt}"}
"#;
    let problems = check(&parse(yaml).expect("parses"), &catalog()).expect_err("problems");
    let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    for want in [
        "steps[0].server: unknown MCP server \"nowhere\" (registered: calc, local",
        "steps[1].tool: missing tool name",
        "steps[1].server: MCP server \"calc\": host 127.0.0.1:9100 is not in the graph's allow_hosts",
        "steps[2].colour: unknown field for an mcp step (it takes: server, tool, arguments)",
        "steps[3]: missing field `server`",
        "missing input: `inputs.which`",
        "an mcp step's output has no field `txt` (it has: content, text, json, is_error)",
    ] {
        assert!(text.iter().any(|t| t.contains(want)), "no problem {want:?} in {text:#?}");
    }
    let all = text.join("\n");
    assert!(!all.contains("hunter22") && !all.contains("tok-123"), "a problem quotes a secret: {all}");
}
