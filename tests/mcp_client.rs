//! The MCP client side through a real `shoal up` (no model needed): a real MCP server on the
//! official Python SDK (`tests/python/mcp_server.py`: `add`, `echo`, `big`, `calls`) over
//! Streamable HTTP behind a bearer token, and the same server over stdio.
//!
//! `shoal mcp add` (the token shown as `***` by `shoal mcp list`, the API, run records and
//! the audit log; a wrong token refused), `shoal mcp tools`; a graph whose `mcp` step's
//! arguments come from its inputs; a graph without the server's host in `allow_hosts`
//! refused at apply; arguments of the wrong type, an unknown tool and an output over the
//! cap failing the step (the first two without the tool being called: the server counts
//! calls); a stdio server refused while no node runs them, then started by a node joined
//! with `--mcp-stdio` (the node process is its parent) with a cleared environment, and
//! killed when its call times out; `shoal mcp rm`.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::*;

fn shoal(gw: &str, args: &[&str]) -> (bool, String) {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--gateway", gw]);
    let out = run(&all);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn apply(gw: &str, yaml: &str) -> (u16, Value) {
    let mut resp = agent(Duration::from_secs(60))
        .post(&format!("{gw}/v1/graphs"))
        .header("Authorization", &format!("Bearer {API_KEY}"))
        .header("Content-Type", "application/yaml")
        .send(yaml)
        .expect("request");
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// `shoal token create`: (token, CA hash).
fn token_and_hash(gw: &str) -> (String, String) {
    let (ok, out) = shoal(gw, &["token", "create"]);
    assert!(ok, "{out}");
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {name} in {out}"))
    };
    (field("token:"), field("ca-hash:"))
}

fn run_graph(gw: &str, name: &str, inputs: Value) -> Value {
    let (s, v) = post(&format!("{gw}/v1/graphs/{name}/runs"), json!({"inputs": inputs}));
    assert_eq!(s, 200, "run {name}: {v}");
    v
}

fn step<'a>(run: &'a Value, id: &str) -> &'a Value {
    run["steps"].as_array().and_then(|s| s.iter().find(|x| x["id"] == id)).unwrap_or(&Value::Null)
}

/// How many times the server's `add` and `echo` ran, asked through a graph.
fn calls(gw: &str) -> u64 {
    let r = run_graph(gw, "count", json!({}));
    assert_eq!(r["status"], "succeeded", "{r}");
    r["outputs"]["n"].as_u64().unwrap_or_else(|| panic!("a count: {r}"))
}

#[test]
fn mcp_servers_registered_listed_and_called_from_graph_steps() {
    let dir = tempfile::tempdir().expect("tmp");

    // The server, behind a bearer token.
    let server = start_mcp_server(dir.path());
    let (port, token) = (server.port, server.token.clone());

    let models = dir.path().join("models");
    std::fs::create_dir_all(&models).expect("dir");
    let up = start_up(dir.path(), &models);
    let gw = format!("http://{}", up.http);
    wait_until(Duration::from_secs(120), "shoal up ready", || {
        matches!(get(&format!("{gw}/readyz"), None), Some((200, _)))
    });
    let url = format!("http://127.0.0.1:{port}/mcp");
    let log_tail = || {
        up.proc.log_text().lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    };

    // Registered with the token; a wrong one is refused, and not quoted back either.
    let (ok, out) =
        shoal(&gw, &["mcp", "add", "calc", "--url", &url, "--header", &format!("Authorization=Bearer {token}")]);
    assert!(ok && out.contains("add") && out.contains("echo"), "{out}\n{}", log_tail());
    assert!(!out.contains(&token), "{out}");
    let wrong = "wrong-token-abcdef";
    let (ok, out) =
        shoal(&gw, &["mcp", "add", "calc2", "--url", &url, "--header", &format!("Authorization=Bearer {wrong}")]);
    assert!(!ok && !out.contains(wrong), "a wrong token is refused without being quoted: {out}");

    // Listed with the secret as `***`, by the CLI and the API.
    let (ok, out) = shoal(&gw, &["mcp", "list"]);
    assert!(ok && out.contains("calc") && out.contains("Authorization: ***") && !out.contains(&token), "{out}");
    let listed = get_json(&format!("{gw}/v1/mcp-servers")).expect("list");
    assert_eq!(listed["data"][0]["headers"]["Authorization"], "***", "{listed}");
    assert!(!listed.to_string().contains(&token));
    let (ok, out) = shoal(&gw, &["mcp", "tools", "calc"]);
    assert!(ok && out.contains("a: integer, b: integer") && out.contains("Adds two integers"), "{out}");

    // A graph whose step's arguments come from its inputs.
    let sum = format!(
        r#"
name: sum
inputs: {{a: {{type: integer}}, b: {{type: integer}}}}
allow_hosts: ["127.0.0.1:{port}"]
steps:
  - {{id: add, kind: mcp, server: calc, tool: add, arguments: {{a: "${{inputs.a}}", b: "${{inputs.b}}"}}, timeout_s: 30}}
  - {{id: say, kind: mcp, server: calc, tool: echo, arguments: {{text: "the sum is ${{steps.add.text}}"}}}}
outputs: {{sum: "${{steps.add.text}}", json: "${{steps.add.json}}", said: "${{steps.say.json.text}}"}}
"#
    );
    let (s, v) = apply(&gw, &sum);
    assert!(s == 200 || s == 201, "{v}");
    let counting = format!(
        "name: count\nallow_hosts: [\"127.0.0.1:{port}\"]\nsteps:\n  - {{id: n, kind: mcp, server: calc, tool: calls}}\n\
         outputs: {{n: \"${{steps.n.json.result}}\"}}\n"
    );
    let (s, v) = apply(&gw, &counting);
    assert!(s == 200 || s == 201, "{v}");
    let r = run_graph(&gw, "sum", json!({"a": 2, "b": 40}));
    assert_eq!(r["status"], "succeeded", "{r}\n{}", log_tail());
    assert_eq!(r["outputs"]["sum"], "42", "{r}");
    assert_eq!(r["outputs"]["json"], json!({"result": 42}), "structured content: {r}");
    assert_eq!(r["outputs"]["said"], "the sum is 42", "{r}");
    let add = step(&r, "add");
    assert_eq!(add["output"]["is_error"], false, "{add}");
    assert_eq!(add["output"]["content"][0]["type"], "text", "{add}");
    assert_eq!(add["inputs"]["arguments"], json!({"a": 2, "b": 40}), "{add}");
    assert!(add["ran_on"].as_str().is_some_and(|s| s.contains("mcp calc")), "{add}");
    assert_eq!(calls(&gw), 2);
    // The call carried its idempotency key (the run and the step) in its `_meta`.
    let keyed = format!(
        "name: key\nallow_hosts: [\"127.0.0.1:{port}\"]\nsteps:\n  - {{id: k, kind: mcp, server: calc, tool: last_key}}\n\
         outputs: {{key: \"${{steps.k.text}}\"}}\n"
    );
    let (s, v) = apply(&gw, &keyed);
    assert!(s == 200 || s == 201, "{v}");
    let k = run_graph(&gw, "key", json!({}));
    assert_eq!(k["outputs"]["key"], format!("{}/add", r["id"].as_str().unwrap_or("?")), "{k}");

    // Not on the allow-list: refused when applied.
    let (s, v) =
        apply(&gw, &sum.replace(&format!("allow_hosts: [\"127.0.0.1:{port}\"]"), "allow_hosts: [\"example.com\"]"));
    assert_eq!(s, 400, "{v}");
    let msg = v["error"]["message"].as_str().unwrap_or("");
    assert!(msg.contains(&format!("host 127.0.0.1:{port} is not in the graph's allow_hosts")), "{msg}");

    // Arguments of the wrong type, and an unknown tool: the step fails, nothing is called.
    let loose = format!(
        r#"
name: loose
inputs: {{a: {{type: any}}, tool: {{type: string, default: add}}}}
allow_hosts: ["127.0.0.1:{port}"]
steps:
  - {{id: add, kind: mcp, server: calc, tool: "${{inputs.tool}}", arguments: {{a: "${{inputs.a}}", b: 1}}}}
outputs: {{sum: "${{steps.add.text}}"}}
"#
    );
    let (s, v) = apply(&gw, &loose);
    assert!(s == 200 || s == 201, "{v}");
    let r = run_graph(&gw, "loose", json!({"a": "two"}));
    assert_eq!(r["status"], "failed", "{r}");
    let error = step(&r, "add")["error"].as_str().unwrap_or("").to_string();
    assert!(
        error.contains("invalid arguments for tool 'add'")
            && error.contains("expected integer")
            && error.contains("not called"),
        "{error}"
    );
    let r = run_graph(&gw, "loose", json!({"a": 1, "tool": "subtract"}));
    let error = step(&r, "add")["error"].as_str().unwrap_or("").to_string();
    assert!(error.contains("has no tool 'subtract'") && error.contains("add, echo"), "{error}");
    assert_eq!(calls(&gw), 2, "refused calls never reached the server");

    // An answer over the cap fails its step, naming the cap.
    let big = format!(
        "name: big\ninputs: {{n: {{type: integer}}}}\nallow_hosts: [\"127.0.0.1:{port}\"]\nsteps:\n  - {{id: b, kind: mcp, server: calc, tool: big, arguments: {{n: \"${{inputs.n}}\"}}}}\n\
         outputs: {{text: \"${{steps.b.text}}\"}}\n"
    );
    let (s, v) = apply(&gw, &big);
    assert!(s == 200 || s == 201, "{v}");
    let r = run_graph(&gw, "big", json!({"n": 1_200_000}));
    let error = step(&r, "b")["error"].as_str().unwrap_or("").to_string();
    assert!(r["status"] == "failed" && error.contains("1 MiB cap"), "{error}");
    let r = run_graph(&gw, "big", json!({"n": 20_000}));
    assert_eq!(r["status"], "succeeded", "an output over 8 KiB (kept as an artifact) is fine: {r}");

    // A stdio server runs on a node started with --mcp-stdio, and on no other: `shoal up`'s
    // own node was not, so it is refused until one that is joins.
    let command = format!("python3 {} stdio", mcp_server_script().display());
    let (ok, out) = shoal(&gw, &["mcp", "add", "local", "--command", &command, "--description", "stdio tools"]);
    assert!(!ok && out.contains("no node runs stdio MCP servers") && out.contains("--mcp-stdio"), "{out}");
    let (join_token, ca_hash) = token_and_hash(&gw);
    let tools_node =
        join_at(&up.quic.to_string(), dir.path(), "tools", Some((&join_token, &ca_hash)), &["--mcp-stdio"]);
    wait_until(Duration::from_secs(60), "the tools node is ready", || {
        get_json(&format!("{gw}/v1/nodes")).is_some_and(|v| {
            v["nodes"].as_array().into_iter().flatten().any(|n| n["name"] == "tools" && n["mcp_stdio"] == true)
        })
    });
    let (ok, out) = shoal(&gw, &["mcp", "add", "local", "--command", &command, "--description", "stdio tools"]);
    assert!(ok && out.contains("echo"), "{out}\n{}\n{}", log_tail(), tools_node.log_text());
    // One that dies at start is refused, quoting its stderr and exit status from the node.
    let broken = r#"python3 -c "import sys; sys.exit('no config file at /etc/calc.toml')""#;
    let (ok, out) = shoal(&gw, &["mcp", "add", "broken", "--command", broken]);
    assert!(
        !ok && out.contains("on node tools")
            && out.contains("no config file at /etc/calc.toml")
            && out.contains("exit status 1"),
        "{out}"
    );
    let stdio = "name: local\ninputs: {text: {type: string}}\nsteps:\n  - {id: e, kind: mcp, server: local, tool: echo, arguments: {text: \"${inputs.text}\"}}\n\
                 outputs: {echo: \"${steps.e.json}\"}\n";
    let (s, v) = apply(&gw, stdio);
    assert!(s == 200 || s == 201, "{v}");
    let r = run_graph(&gw, "local", json!({"text": "hi"}));
    assert_eq!(r["status"], "succeeded", "{r}\n{}", log_tail());
    assert_eq!(r["outputs"]["echo"]["text"], "hi", "{r}");
    let env: Vec<&str> =
        r["outputs"]["echo"]["env"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    assert!(env.contains(&"PATH") && !env.contains(&"SHOAL_API_KEY"), "a cleared environment plus PATH: {env:?}");
    assert_eq!(r["outputs"]["echo"]["ppid"], tools_node.child.id(), "the node process started it: {r}");
    assert!(step(&r, "e")["ran_on"].as_str().unwrap_or("").contains("node tools"), "{r}");

    // A call past its step's timeout fails the step, and the stdio server is killed.
    let pid_file = dir.path().join("sleeper.pid");
    let slow = format!(
        "name: slow\nsteps:\n  - {{id: s, kind: mcp, server: local, tool: sleep, timeout_s: 2, arguments: {{seconds: 60, pid_file: {:?}}}}}\n\
         outputs: {{r: \"${{steps.s.text}}\"}}\n",
        pid_file.display().to_string()
    );
    let (s, v) = apply(&gw, &slow);
    assert!(s == 200 || s == 201, "{v}");
    let r = run_graph(&gw, "slow", json!({}));
    let error = step(&r, "s")["error"].as_str().unwrap_or("").to_string();
    assert!(r["status"] == "failed" && error.contains("timed out after 2.0 s"), "{r}");
    let pid = std::fs::read_to_string(&pid_file).expect("the server wrote its pid").trim().to_string();
    wait_until(Duration::from_secs(10), "the timed-out stdio server is gone", || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z "))
    });

    // The secret is nowhere: run records, the audit log.
    let runs = get_json(&format!("{gw}/v1/runs")).expect("runs");
    let audit = get_json(&format!("{gw}/v1/audit")).expect("audit");
    assert!(audit.to_string().contains("mcp-servers"), "registrations are audited: {audit}");
    for (what, v) in [("runs", &runs), ("audit", &audit)] {
        assert!(!v.to_string().contains(&token), "the token is in the {what}");
    }

    // Removed.
    let (ok, out) = shoal(&gw, &["mcp", "rm", "calc"]);
    assert!(ok, "{out}");
    let (ok, out) = shoal(&gw, &["mcp", "list"]);
    assert!(ok && !out.contains("calc") && out.contains("local"), "{out}");
    drop(server);
}
