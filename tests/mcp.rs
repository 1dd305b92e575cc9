//! The MCP server (`/mcp`) through a real `shoal up`, driven by the official Python MCP SDK
//! (`tests/python/mcp_client.py`): tools listed and called with API keys (the echo model,
//! MiniLM for a knowledge base, a `template`-only graph), a graph applied later appearing
//! without a restart, a key limited to one model, the 401 challenge and its metadata, and
//! the Origin rule.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use support::*;

/// The SDK version `scripts/test.sh` installs.
const MCP_SDK: &str = "mcp==2.3.0";

const TINY: &str = r#"
name: tiny
description: shouts a word
inputs: {word: {type: string}}
steps:
  - {id: up, kind: template, template: "{{ inputs.word | upper }}"}
outputs: {loud: "${steps.up.text}"}
"#;

fn post_yaml(url: &str, yaml: &str) -> (u16, Value) {
    let mut resp = agent(Duration::from_secs(60))
        .post(url)
        .header("Authorization", &format!("Bearer {API_KEY}"))
        .header("Content-Type", "application/yaml")
        .send(yaml)
        .expect("request");
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn ready(gw: &str, name: &str) -> bool {
    get_json(&format!("{gw}/v1/deployments/{name}")).is_some_and(|d| d["ready_replicas"].as_u64() >= Some(1))
}

#[test]
fn mcp_tools_auth_and_origin_through_the_python_sdk() {
    let import = Command::new("python3").args(["-c", "import mcp, httpx2"]).output().expect("python3");
    assert!(
        import.status.success(),
        "the Python MCP SDK is not importable ({}): install it with `python3 -m pip install {MCP_SDK}` \
         (scripts/test.sh does)",
        String::from_utf8_lossy(&import.stderr).trim()
    );

    // `shoal up` with only MiniLM in its models folder (as `minilm`), and the echo model.
    let dir = tempfile::tempdir().expect("tmp");
    let models = dir.path().join("models");
    std::fs::create_dir_all(&models).expect("dir");
    std::os::unix::fs::symlink(models_dir().join("all-minilm-l6-v2"), models.join("minilm")).expect("symlink");
    let up = start_up(dir.path(), &models);
    let gw = format!("http://{}", up.http);
    wait_until(Duration::from_secs(120), "shoal up ready", || {
        matches!(get(&format!("{gw}/readyz"), None), Some((200, _)))
    });
    let (s, v) = post(&format!("{gw}/v1/deployments"), json!({"name": "echo", "source": "builtin://echo"}));
    assert!(s == 200 || s == 201, "{v}");
    wait_until(Duration::from_secs(240), "echo and minilm serving", || ready(&gw, "echo") && ready(&gw, "minilm"));

    // A knowledge base with one document.
    let (s, v) =
        post(&format!("{gw}/v1/knowledge-bases"), json!({"name": "facts", "embedding_model": "minilm", "replicas": 1}));
    assert_eq!(s, 201, "{v}");
    wait_until(Duration::from_secs(60), "the knowledge base's copy is ready", || {
        get_json(&format!("{gw}/v1/knowledge-bases/facts")).is_some_and(|kb| {
            kb["shards"].as_array().is_some_and(|s| {
                s.iter().all(|x| x["copies"].as_array().is_some_and(|c| c.iter().any(|c| c["state"] == "ready")))
            })
        })
    });
    let doc = "The Harbor Lighthouse of Port Avel was designed by the engineer Margaret Olsen and first lit in 1887.";
    let (s, v) = post(
        &format!("{gw}/v1/knowledge-bases/facts/documents"),
        json!({"id": "lighthouse", "title": "The Harbor Lighthouse", "text": doc}),
    );
    assert!(s == 200 || s == 201, "{v}");
    let (s, v) = post(
        &format!("{gw}/v1/knowledge-bases/facts/documents"),
        json!({"id": "bread", "title": "Bread", "text": "To bake bread, knead flour, water, salt and yeast."}),
    );
    assert!(s == 200 || s == 201, "{v}");

    // A graph that needs no model, and a key limited to the echo model.
    let (s, v) = post_yaml(&format!("{gw}/v1/graphs"), TINY);
    assert!(s == 200 || s == 201, "{v}");
    let (s, v) = post(&format!("{gw}/v1/keys"), json!({"name": "echo-only", "models": ["echo"]}));
    assert_eq!(s, 201, "{v}");
    let limited = v["key"].as_str().expect("the new key").to_string();

    // A prompt template, added with the CLI (its arguments declared, one optional).
    let out = run(&[
        "prompt",
        "add",
        "review",
        "--description",
        "Reviews code",
        "--template",
        "Review this {{ language }} code:\n{{ code }}",
        "--arg",
        "code:the code",
        "--arg",
        "language?:its language",
        "--gateway",
        &gw,
    ]);
    let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.contains("prompt review v1 stored; arguments: code, language?"), "{said}");
    let out = run(&["prompt", "render", "review", "code=x = 1", "language=Python", "--gateway", &gw]);
    let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.contains("[user]\nReview this Python code:\nx = 1"), "{said}");
    let (s, v) = post(&format!("{gw}/v1/prompts/review/render"), json!({"arguments": {}}));
    assert!(s == 400 && v["error"]["message"].as_str().unwrap_or("").contains("missing argument 'code'"), "{v}");
    let (s, v) = post_yaml(&format!("{gw}/v1/prompts"), "name: Bad Name\ntemplate: '{{ x'\n");
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["problems"].as_array().map(Vec::len), Some(2), "both problems listed: {v}");

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/mcp_client.py");
    let out = Command::new("python3").arg(&script).args([&gw, API_KEY, &limited, "facts"]).output().expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("all MCP checks passed"),
        "MCP SDK checks failed:\n{stdout}\n{}\n--- shoal up log (tail) ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        up.proc.log_text().lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    println!("{stdout}");

    // The refusals are in the audit log, like any other 401 and 403.
    let audit = get_json(&format!("{gw}/v1/audit?failed=true")).expect("audit");
    let refused = |code: u64| {
        audit["data"]
            .as_array()
            .is_some_and(|d| d.iter().any(|r| r["uri"] == "/mcp" && r["code"].as_u64() == Some(code)))
    };
    assert!(refused(401) && refused(403), "the audit log records the refused MCP requests: {audit}");
}
