//! Every fenced command example in README.md and docs/*.md, run as written against a real
//! cluster (`shoal up` plus a second node joined to it), in file order, the way a newcomer
//! pastes them. Only host, port, key and temporary paths are substituted; `SHOAL_GATEWAY`
//! points the CLI at the test's gateway. A block is skipped only when the line before its
//! fence says why (`<!-- docs-test: skip: REASON -->`), and every fence must say what it
//! holds (`sh`/`python` run; `text`/`json`/`toml`/`yaml` are shown output or formats).

mod support;

#[path = "../recall/tests/support/pdf.rs"]
mod pdf;

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

const RUNNABLE: &[&str] = &["sh", "python"];
const SHOWN: &[&str] = &["text", "json", "toml", "yaml"];
/// The longest a block may run (a RAG answer from the debug build included).
const BLOCK_LIMIT: Duration = Duration::from_secs(300);

#[derive(Debug)]
struct Block {
    file: String,
    line: usize,
    lang: String,
    text: String,
    skip: Option<String>,
}

/// The fenced blocks of a Markdown file, with their language and skip reason.
fn blocks(file: &str, markdown: &str) -> Result<Vec<Block>, String> {
    let mut out = Vec::new();
    let lines: Vec<&str> = markdown.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let Some(info) = lines[i].strip_prefix("```") else {
            i += 1;
            continue;
        };
        let lang = info.trim().to_string();
        if !RUNNABLE.contains(&lang.as_str()) && !SHOWN.contains(&lang.as_str()) {
            return Err(format!(
                "{file}:{}: a fence tagged '{lang}': tag commands `sh` or `python` (they are run), output `text` or `json`",
                i + 1
            ));
        }
        let before = lines[..i].iter().rev().find(|l| !l.trim().is_empty()).map(|l| l.trim());
        let skip = before
            .and_then(|l| l.strip_prefix("<!-- docs-test: skip:"))
            .and_then(|l| l.strip_suffix("-->"))
            .map(|r| r.trim().to_string());
        let start = i + 1;
        let end = (start..lines.len())
            .find(|j| lines[*j].starts_with("```"))
            .ok_or_else(|| format!("{file}:{}: the fence is never closed", i + 1))?;
        out.push(Block { file: file.to_string(), line: i + 1, lang, text: lines[start..end].join("\n"), skip });
        i = end + 1;
    }
    Ok(out)
}

/// README.md first, then docs/*.md by name.
fn documents() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec!["README.md".to_string()];
    let mut docs: Vec<String> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".md"))
        .map(|n| format!("docs/{n}"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(root.join(&f)).expect("read doc");
            (f, text)
        })
        .collect()
}

#[test]
fn fences_say_what_they_hold_and_skips_say_why() {
    for (file, text) in documents() {
        let found = blocks(&file, &text).unwrap_or_else(|e| panic!("{e}"));
        for b in found {
            if let Some(why) = &b.skip {
                assert!(why.len() >= 10, "{}:{}: a skip needs a reason, not '{why}'", b.file, b.line);
                assert!(RUNNABLE.contains(&b.lang.as_str()), "{}:{}: only commands are skipped", b.file, b.line);
            }
        }
    }
    // The parser itself: an untagged fence is refused, a skip is read.
    assert!(blocks("x.md", "```\nls\n```\n").unwrap_err().contains("x.md:1"));
    let b = blocks("x.md", "a\n<!-- docs-test: skip: needs a GPU box -->\n\n```sh\nls\n```\n").expect("parse");
    assert_eq!((b[0].line, b[0].skip.as_deref(), b[0].text.as_str()), (4, Some("needs a GPU box"), "ls"));
}

/// The working directory the examples run in: a checkout as the README leaves it.
fn workspace(dir: &Path, subst: &BTreeMap<String, String>) -> PathBuf {
    let work = dir.join("work");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for sub in ["target/release", "bin", "cluster-configs", "handbook"] {
        std::fs::create_dir_all(work.join(sub)).expect("mkdir");
    }
    std::os::unix::fs::symlink(BIN, work.join("target/release/shoal")).expect("link");
    std::os::unix::fs::symlink(BIN, work.join("bin/shoal")).expect("link");
    std::os::unix::fs::symlink(models_dir(), work.join("models")).expect("link");
    for cfg in std::fs::read_dir(root.join("cluster-configs")).expect("configs").flatten() {
        if cfg.path().extension().is_some_and(|e| e == "toml") {
            let text = substitute(&std::fs::read_to_string(cfg.path()).expect("config"), subst);
            std::fs::write(work.join("cluster-configs").join(cfg.file_name()), text).expect("write config");
        }
    }
    let files = [
        ("handbook/leave.md", "# Leave\n\nEvery employee gets 25 days of paid leave a year, plus public holidays.\n"),
        ("handbook/old.md", "# Old policy\n\nBefore 2020 the leave was 20 days a year.\n"),
        ("notes.md", "# Notes\n\nThe Zorblat festival is held on the first Tuesday of March.\n"),
    ];
    for (name, text) in files {
        std::fs::write(work.join(name), text).expect("fixture");
    }
    let report =
        pdf::minimal_pdf("Annual report", &["Sales grew by twelve percent in 2024.", "The volcano tour sold out."]);
    std::fs::write(work.join("report.pdf"), report).expect("pdf");
    work
}

fn substitute(text: &str, subst: &BTreeMap<String, String>) -> String {
    subst.iter().fold(text.to_string(), |t, (from, to)| t.replace(from, to))
}

/// What the docs use, mapped to this run's addresses, key and directories.
fn substitutions(gateway: &str, quic: &str, tmp: &Path) -> BTreeMap<String, String> {
    let mut s = BTreeMap::new();
    s.insert("127.0.0.1:8080".to_string(), gateway.to_string());
    s.insert("localhost:8080".to_string(), gateway.to_string());
    s.insert("127.0.0.1:7100".to_string(), quic.to_string());
    s.insert("sk-shoal-…".to_string(), API_KEY.to_string());
    s.insert("/tmp/shoal-".to_string(), format!("{}/shoal-", tmp.display()));
    // The raft-group configs' fixed ports, moved to free ones.
    for port in (7101..=7105).chain(8081..=8085) {
        s.insert(format!("127.0.0.1:{port}"), addr(free_port()).to_string());
    }
    s
}

/// Runs one block in its own process group (background members it starts are killed after
/// it); returns its output on failure.
fn run_block(b: &Block, work: &Path, gateway: &str, subst: &BTreeMap<String, String>) -> Result<(), String> {
    let body = substitute(&b.text, subst);
    let (script, mut cmd) = match b.lang.as_str() {
        "python" => {
            let path = work.join("example.py");
            std::fs::write(&path, &body).expect("script");
            (body, Command::new("python3"))
        }
        _ => {
            let preamble = "set -eo pipefail\n\
                 # HTTP errors fail the example, showing the body, as a reader would see them.\n\
                 curl() { command curl --fail-with-body -sS --max-time 300 \"$@\"; echo; }\n";
            std::fs::write(work.join("example.sh"), format!("{preamble}{body}\n")).expect("script");
            (body, Command::new("bash"))
        }
    };
    cmd.arg(if b.lang == "python" { "example.py" } else { "example.sh" });
    let out = work.join(format!("{}-{}.out", b.file.replace('/', "_"), b.line));
    let file = std::fs::File::create(&out).expect("out");
    let path = format!("{}:{}", work.join("bin").display(), std::env::var("PATH").unwrap_or_default());
    let mut child = cmd
        .current_dir(work)
        .env("PATH", path)
        .env("SHOAL_API_KEY", API_KEY)
        .env("KEY", API_KEY)
        .env("SHOAL_GATEWAY", gateway)
        .stdin(Stdio::null())
        .stdout(Stdio::from(file.try_clone().expect("clone")))
        .stderr(Stdio::from(file))
        .process_group(0)
        .spawn()
        .expect("spawn the example");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if started.elapsed() > BLOCK_LIMIT {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // The block's background processes (coordinators started with `&`) end with it.
    let _ = Command::new("kill").args(["-9", "--", &format!("-{}", child.id())]).stderr(Stdio::null()).status();
    let _ = child.wait();
    let output = std::fs::read_to_string(&out).unwrap_or_default();
    match status {
        Some(s) if s.success() => Ok(()),
        other => Err(format!(
            "{}:{} ({}) {}:\n--- as run ---\n{script}\n--- output ---\n{output}",
            b.file,
            b.line,
            b.lang,
            match other {
                Some(s) => format!("failed ({s})"),
                None => format!("ran past {BLOCK_LIMIT:?}"),
            }
        )),
    }
}

fn ready_replicas(gateway: &str, name: &str) -> u64 {
    get_json(&format!("{gateway}/v1/deployments/{name}")).and_then(|d| d["ready_replicas"].as_u64()).unwrap_or(0)
}

#[test]
fn every_documented_example_runs_as_written() {
    let tmp = tempfile::Builder::new()
        .prefix("shoal-docs-")
        .disable_cleanup(std::env::var("SHOAL_KEEP_TEST_DIRS").is_ok())
        .tempdir()
        .expect("tmp");
    // The README's main job, on this run's ports.
    let up = start_up(&tmp.path().join("up"), &models_dir());
    let (http, quic) = (up.http, up.quic);
    let gateway = format!("http://{http}");
    let subst = substitutions(&http.to_string(), &quic.to_string(), tmp.path());
    let work = workspace(tmp.path(), &subst);
    wait_until(Duration::from_secs(240), "shoal up serves every model in ./models", || {
        ["qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct", "all-minilm-l6-v2"]
            .iter()
            .all(|m| ready_replicas(&gateway, m) == 1)
    });
    // A second node, joined as the README describes, so that two-copy examples have room; it
    // runs stdio MCP servers, as docs/graphs.md asks of one node.
    let out = run(&["token", "create", "--gateway", &gateway]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let field = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_string());
    let (token, hash) = (field("token:").expect("token"), field("ca-hash:").expect("ca hash"));
    let _second = join_at(&quic.to_string(), tmp.path(), "second", Some((&token, &hash)), &["--mcp-stdio"]);
    wait_until(Duration::from_secs(60), "the second node is ready", || {
        get_json(&format!("{gateway}/v1/nodes"))
            .and_then(|v| v["nodes"].as_array().cloned())
            .is_some_and(|n| n.iter().filter(|n| n["state"] == "ready").count() == 2)
    });

    let mut ran = 0;
    let mut failures = Vec::new();
    for (file, text) in documents() {
        for b in blocks(&file, &text).expect("blocks") {
            if !RUNNABLE.contains(&b.lang.as_str()) || b.skip.is_some() {
                continue;
            }
            ran += 1;
            let started = Instant::now();
            let result = run_block(&b, &work, &gateway, &subst);
            eprintln!(
                "{}:{} {} in {:.1} s",
                b.file,
                b.line,
                if result.is_ok() { "ran" } else { "FAILED" },
                started.elapsed().as_secs_f64()
            );
            if let Err(e) = result {
                failures.push(e);
            }
        }
    }
    assert!(ran >= 10, "only {ran} examples found");
    assert!(
        failures.is_empty(),
        "{} of {ran} documented examples failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
