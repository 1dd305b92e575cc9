//! The web console in a real browser (tests/console/console_test.py: Playwright from PyPI
//! driving Debian's Chromium, headless) against a real cluster: a coordinator and two joined
//! nodes, MiniLM deployed for the knowledge-base upload and search. Screenshots of every page
//! at every size are written to target/console-screenshots (CI output, not committed).
//! `./scripts/test.sh` installs Chromium, Playwright and the console's npm packages (for
//! axe-core); without them the test says SKIPPED and why.

mod support;

use std::path::Path;
use std::time::Duration;

use support::*;

fn missing_tools(root: &Path) -> Option<String> {
    if !Path::new("/usr/bin/chromium").exists() {
        return Some("no /usr/bin/chromium (apt-get install chromium)".into());
    }
    let playwright = std::process::Command::new("python3").args(["-c", "import playwright, jsonschema"]).output();
    if !playwright.is_ok_and(|o| o.status.success()) {
        return Some("no Python playwright or jsonschema (pip install playwright jsonschema)".into());
    }
    if !root.join("console/node_modules/axe-core/axe.min.js").exists() {
        return Some("no console/node_modules/axe-core (cd console && npm ci)".into());
    }
    None
}

#[test]
fn the_console_works_in_a_real_browser_on_every_screen_size() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if let Some(why) = missing_tools(root) {
        println!("SKIPPED the_console_works_in_a_real_browser_on_every_screen_size: {why}");
        return;
    }
    let lease_ms = 3000;
    let mut mesh = Mesh::start(&["keeper", "victim"], lease_ms, &[]);
    let gw = mesh.gateway();
    let minilm = models_dir().join("all-minilm-l6-v2");
    let out = run(&[
        "deploy",
        "all-minilm-l6-v2",
        "--source",
        minilm.to_str().expect("utf8"),
        "--replicas",
        "2",
        "--wait-ready",
        "2",
        "--timeout",
        "240",
        "--gateway",
        &gw,
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A graph run for the runs page: two steps on the echo model, one after the other.
    let out = run(&["deploy", "echo-runs", "--source", "builtin://echo", "--wait-ready", "1", "--gateway", &gw]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let graph = mesh.dir.path().join("console-probe.yaml");
    let yaml = r#"name: console-probe
inputs:
  question: {type: string}
steps:
  - id: draft
    kind: chat
    model: echo-runs
    prompt: "{{ inputs.question }}"
  - id: answer
    kind: chat
    model: echo-runs
    prompt: "Improve: {{ steps.draft.text }}"
outputs:
  answer: ${steps.answer.text}
"#;
    std::fs::write(&graph, yaml).expect("graph");
    let out = run(&["graph", "apply", graph.to_str().expect("utf8"), "--gateway", &gw]);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let out = run(&["graph", "run", "console-probe", "--input", "question=Hello?", "--gateway", &gw]);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let screenshots = root.join("target/console-screenshots");
    let victim = mesh.nodes.iter_mut().find(|m| m.name == "victim").expect("victim");
    let pid = victim.proc.child.id().to_string();
    let script = root.join("tests/console/console_test.py");
    let axe = root.join("console/node_modules/axe-core/axe.min.js");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .args(["--gateway", &gw, "--key", API_KEY, "--victim", "victim", "--victim-pid", &pid])
        .args(["--lease-ms", &lease_ms.to_string()])
        .arg("--screenshots")
        .arg(&screenshots)
        .arg("--axe")
        .arg(&axe)
        .arg("--openapi")
        .arg(root.join("gateway/src/http/openapi.json"))
        .output()
        .expect("python3");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    assert!(out.status.success(), "console checks failed:\n{text}");
    let shots = std::fs::read_dir(&screenshots).map(|d| d.count()).unwrap_or(0);
    assert!(shots >= 24, "expected a screenshot of 8 pages × 3 sizes in {}, found {shots}", screenshots.display());
    // The SIGKILLed node is gone; nothing else should be left running.
    wait_until(Duration::from_secs(10), "the victim is dead in the state", || {
        mesh.coord.node("victim").is_some_and(|n| n["state"] == "dead")
    });
}
