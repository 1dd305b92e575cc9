//! Whole-system tests: real `shoal` processes on loopback.

mod support;

use std::time::Duration;

use support::*;

fn state_of(coord: &Coord, name: &str) -> Option<(String, u64)> {
    coord.node(name).map(|n| (n["state"].as_str().unwrap_or("").to_string(), n["generation"].as_u64().unwrap_or(0)))
}

#[test]
fn nodes_join_report_capacity_die_on_sigkill_return_fenced_and_survive_a_coordinator_restart() {
    let tmp = tempfile::tempdir().expect("tmp");
    let lease_ms = 1500;
    let mut coord = Coord::start(&tmp.path().join("c1"), 300, lease_ms);
    let (token, hash) = coord.token("1h");

    let mut a = join(&coord, tmp.path(), "alpha", Some((&token, &hash)), &["--accelerator", "npu:ascend910b:64GiB"]);
    let _b = join(
        &coord,
        tmp.path(),
        "beta",
        Some((&token, &hash)),
        &["--accelerator", "gpu:nvidia/h100:80GB", "--label", "zone=b"],
    );
    wait_until(Duration::from_secs(20), "both nodes ready", || {
        state_of(&coord, "alpha").map(|s| s.0) == Some("ready".into())
            && state_of(&coord, "beta").map(|s| s.0) == Some("ready".into())
    });

    // Capacity as the node reported it.
    let alpha = coord.node("alpha").expect("alpha listed");
    assert!(alpha["capacity"]["cpu_cores"].as_u64().unwrap_or(0) >= 1, "{alpha}");
    assert!(alpha["capacity"]["memory_total_bytes"].as_u64().unwrap_or(0) > 0, "{alpha}");
    let accel = &alpha["capacity"]["accelerators"][0];
    assert_eq!(accel["kind"], "npu");
    assert_eq!(accel["model"], "ascend910b");
    assert_eq!(accel["memory_total_bytes"], 64u64 * 1024 * 1024 * 1024);
    let beta = coord.node("beta").expect("beta listed");
    assert_eq!(beta["labels"]["zone"], "b");
    assert_eq!(beta["capacity"]["accelerators"][0]["vendor"], "nvidia");
    wait_until(Duration::from_secs(5), "a heartbeat with load", || {
        coord.node("alpha").map(|n| n["last_heartbeat_unix_ms"].as_u64().is_some()).unwrap_or(false)
    });

    // Every node serves its metrics by default (the second on this host on a free port), and
    // Prometheus finds both nodes and the coordinator through HTTP service discovery.
    let groups = get_json(&coord.url("/v1/prometheus/targets")).expect("targets");
    let target = |role: &str, label: &str, value: &str| {
        groups.as_array().and_then(|g| {
            g.iter()
                .find(|t| t["labels"]["shoal_role"] == role && t["labels"][label] == value)
                .and_then(|t| t["targets"][0].as_str().map(String::from))
        })
    };
    assert_eq!(
        target("coordinator", "shoal_coordinator", "1").as_deref(),
        Some(coord.http.to_string().as_str()),
        "{groups}"
    );
    let (alpha_metrics, beta_metrics) = (target("node", "shoal_node", "alpha"), target("node", "shoal_node", "beta"));
    let (alpha_metrics, beta_metrics) =
        (alpha_metrics.expect("alpha is a target"), beta_metrics.expect("beta is a target"));
    assert_ne!(alpha_metrics, beta_metrics);
    for t in [&alpha_metrics, &beta_metrics] {
        let (status, text) = get(&format!("http://{t}/metrics"), None).expect("node metrics");
        assert_eq!(status, 200);
        assert!(text.contains("shoal_node_heartbeats_sent_total"), "{text}");
    }
    assert_eq!(coord.node("alpha").expect("alpha")["metrics"], format!("http://{alpha_metrics}/metrics"));
    let out = run(&["prometheus", "config", "--gateway", &coord.gateway()]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success() && text.contains(&format!("http://{}/v1/prometheus/targets", coord.http)), "{text}");

    // `shoal status` shows the same, as a table.
    let out = run(&["status", "--gateway", &coord.gateway()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("alpha") && text.contains("beta") && text.contains("leader"), "{text}");
    assert!(text.contains("npu ascend910b 64.0GiB"), "{text}");

    // SIGKILL alpha: dead once its lease runs out; beta stays ready.
    let (_, gen1) = state_of(&coord, "alpha").expect("alpha");
    a.kill();
    let killed = std::time::Instant::now();
    wait_until(Duration::from_secs(10), "alpha dead after its lease", || {
        state_of(&coord, "alpha").map(|s| s.0) == Some("dead".into())
    });
    assert!(killed.elapsed() >= Duration::from_millis(lease_ms - 400), "declared dead before its lease ran out");
    assert_eq!(state_of(&coord, "beta").map(|s| s.0), Some("ready".into()));
    assert!(coord.metric("shoal_cluster_nodes{state=\"dead\"}") >= 1.0);

    // Restarted without a token (it keeps its identity): ready under a new generation.
    let _a2 = join(&coord, tmp.path(), "alpha", None, &["--accelerator", "npu:ascend910b:64GiB"]);
    wait_until(
        Duration::from_secs(15),
        "alpha ready again",
        || matches!(state_of(&coord, "alpha"), Some((s, g)) if s == "ready" && g > gen1),
    );
    assert_eq!(coord.nodes().len(), 2, "no ghost node: the same identity came back");

    // The coordinator, SIGKILLed and restarted from its data dir, still knows both nodes.
    let before = coord.nodes();
    coord.restart();
    let after = coord.nodes();
    let ids = |v: &[serde_json::Value]| {
        let mut ids: Vec<String> = v.iter().map(|n| n["id"].as_str().unwrap_or("").to_string()).collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&after), ids(&before), "registry recovered from disk");
    // …and the nodes reconnect on their own (with backoff) and are ready again.
    wait_until(Duration::from_secs(20), "nodes reconnected after the coordinator restart", || {
        let n = coord.nodes();
        n.len() == 2 && n.iter().all(|n| n["state"] == "ready" && n["last_heartbeat_unix_ms"].as_u64().is_some())
    });
}

#[test]
fn bad_joins_are_refused_with_one_clear_line_and_counted() {
    let tmp = tempfile::tempdir().expect("tmp");
    let coord = Coord::start(&tmp.path().join("c"), 300, 1500);
    let (token, hash) = coord.token("1h");
    let quic = coord.quic.to_string();
    let try_join = |name: &str, token: &str, hash: &str| {
        let dir = tmp.path().join(name);
        let out = run(&[
            "join",
            &quic,
            "--token",
            token,
            "--ca-hash",
            hash,
            "--data-dir",
            dir.to_str().expect("utf8"),
            "--listen",
            "127.0.0.1:0",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "{name}: join should fail");
        let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(lines.len(), 1, "{name}: one error line expected in: {stderr}");
        assert!(!dir.join("node.conf").exists(), "{name}: no identity saved");
        lines[0].to_string()
    };

    let wrong_secret = format!("{}.{}", &token[..6], "0000000000000000");
    assert!(try_join("wrong-token", &wrong_secret, &hash).contains("join token is not valid"));
    assert!(try_join("unknown-token", "zzzzzz.0123456789abcdef", &hash).contains("join token is not valid"));

    let (short, _) = coord.token("1s");
    std::thread::sleep(Duration::from_millis(1500)); // let the 1 s token expire
    assert!(try_join("expired", &short, &hash).contains("expired"));

    let other_ca = format!("sha256:{}", "ab".repeat(32));
    let line = try_join("wrong-ca", &token, &other_ca);
    assert!(line.contains("does not match --ca-hash"), "{line}");

    assert!(try_join("malformed-token", "not-a-token", &hash).contains("--token"));
    assert!(try_join("malformed-hash", &token, "md5:1234").contains("--ca-hash"));

    assert!(coord.metric("shoal_cluster_joins_refused_total{reason=\"invalid_token\"}") >= 2.0);
    assert!(coord.metric("shoal_cluster_joins_refused_total{reason=\"expired_token\"}") >= 1.0);
    let log = coord.proc.log_text();
    assert!(log.contains("refused a join"), "the coordinator logs refusals");

    // The real token still works afterwards.
    let _ok = join(&coord, tmp.path(), "good", Some((&token, &hash)), &[]);
    wait_until(Duration::from_secs(15), "good node ready", || {
        coord.node("good").map(|n| n["state"] == "ready").unwrap_or(false)
    });
}

#[test]
fn the_gateway_requires_an_api_key_for_admin_endpoints_only() {
    let tmp = tempfile::tempdir().expect("tmp");
    let coord = Coord::start(&tmp.path().join("c"), 300, 1500);
    for open in ["/healthz", "/readyz", "/metrics", "/v1/openapi.json"] {
        assert_eq!(get(&coord.url(open), None).map(|r| r.0), Some(200), "{open}");
    }
    let api: serde_json::Value =
        serde_json::from_str(&get(&coord.url("/v1/openapi.json"), None).expect("openapi").1).expect("json");
    assert!(api["paths"]["/v1/chat/completions"]["post"].is_object(), "{api}");
    for admin in ["/v1/cluster", "/v1/nodes"] {
        let (status, body) = get(&coord.url(admin), None).expect("answer");
        assert_eq!(status, 401, "{admin}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json error");
        assert!(v["error"]["message"].as_str().is_some() && v["error"]["type"] == "authentication_error", "{body}");
        assert_eq!(get(&coord.url(admin), Some("sk-wrong")).map(|r| r.0), Some(401));
        assert_eq!(get(&coord.url(admin), Some(API_KEY)).map(|r| r.0), Some(200));
    }
    let cluster = get_json(&coord.url("/v1/cluster")).expect("cluster");
    assert_eq!(cluster["leader_id"], 1);
    assert!(cluster["term"].as_u64().unwrap_or(0) >= 1);
    assert!(cluster["commit_index"].as_u64() >= Some(1));
    assert_eq!(cluster["applied_index"], cluster["commit_index"]);
    assert_eq!(cluster["members"][0]["quic"], coord.quic.to_string());
    assert_eq!(get(&coord.url("/v1/nodes/n-nope"), Some(API_KEY)).map(|r| r.0), Some(404));
    let metrics = get(&coord.url("/metrics"), None).expect("metrics").1;
    for series in [
        "shoal_raft_term",
        "shoal_raft_commit_index",
        "shoal_raft_applied_index",
        "shoal_cluster_nodes{state=\"ready\"}",
        "shoal_protocol_frames_received_total",
        "shoal_protocol_frames_refused_total",
        "shoal_cluster_heartbeats_total",
    ] {
        assert!(metrics.contains(series), "missing {series} in /metrics");
    }
    // Malformed and out-of-range bodies answer 400 in the OpenAI error shape; still serving.
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    for body in [r#"{"ttl_seconds": "x""#, r#"{"ttl_seconds": 0}"#, r#"{"nope": 1}"#] {
        let mut resp = agent
            .post(&coord.url("/v1/tokens"))
            .header("Authorization", &format!("Bearer {API_KEY}"))
            .header("Content-Type", "application/json")
            .send(body)
            .expect("answer");
        assert_eq!(resp.status().as_u16(), 400, "{body}");
        let v: serde_json::Value = resp.body_mut().read_json().expect("json error");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{body}: {v}");
    }
    // What `curl -d` sends (a form content type), or no content type at all, is read as JSON;
    // a declared non-JSON type is a 415 that names the header to send.
    for content_type in [Some("application/x-www-form-urlencoded"), None] {
        let mut req = agent.post(&coord.url("/v1/tokens")).header("Authorization", &format!("Bearer {API_KEY}"));
        if let Some(t) = content_type {
            req = req.header("Content-Type", t);
        }
        let mut resp = req.send(r#"{"ttl_seconds": 60}"#).expect("answer");
        let v: serde_json::Value = resp.body_mut().read_json().expect("json");
        assert_eq!(resp.status().as_u16(), 200, "{content_type:?}: {v}");
        assert!(v["token"].as_str().is_some(), "{v}");
    }
    // The token list, whole or a page at a time in id order (`limit`, `after`, `next_after`).
    let list = |query: &str| {
        let (status, body) = get(&coord.url(&format!("/v1/tokens{query}")), Some(API_KEY)).expect("answer");
        (status, serde_json::from_str::<serde_json::Value>(&body).unwrap_or(serde_json::Value::Null))
    };
    let ids = |v: &serde_json::Value| -> Vec<String> {
        v["tokens"].as_array().into_iter().flatten().filter_map(|t| t["id"].as_str().map(String::from)).collect()
    };
    let (status, whole) = list("");
    assert_eq!(status, 200);
    let all = ids(&whole);
    assert!(all.len() >= 2 && whole["next_after"].is_null(), "{whole}");
    assert!(all.windows(2).all(|w| w[0] < w[1]), "listed in id order: {all:?}");
    let (mut paged, mut query) = (Vec::new(), "?limit=1".to_string());
    loop {
        let (status, page) = list(&query);
        assert_eq!(status, 200, "{query}");
        assert_eq!(ids(&page).len(), 1, "{query}: {page}");
        paged.extend(ids(&page));
        match page["next_after"].as_str() {
            Some(after) => query = format!("?limit=1&after={after}"),
            None => break,
        }
    }
    assert_eq!(paged, all, "one token a page lists them all once");
    for bad in ["?limit=0", "?limit=10001", "?limit=abc"] {
        assert_eq!(list(bad).0, 400, "{bad}");
    }
    let mut resp = agent
        .post(&coord.url("/v1/tokens"))
        .header("Authorization", &format!("Bearer {API_KEY}"))
        .header("Content-Type", "multipart/form-data; boundary=x")
        .send("--x--")
        .expect("answer");
    assert_eq!(resp.status().as_u16(), 415);
    let v: serde_json::Value = resp.body_mut().read_json().expect("json");
    assert!(v["error"]["message"].as_str().unwrap_or("").contains("Content-Type: application/json"), "{v}");
    assert_eq!(get(&coord.url("/healthz"), None).map(|r| r.0), Some(200));
    // Admin-only: a token needs the admin key.
    let out = run(&["token", "create", "--gateway", &coord.gateway(), "--api-key", "sk-wrong"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
}

#[test]
fn corrupt_coordinator_storage_is_refused_with_a_clear_error() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut coord = Coord::start(&tmp.path().join("c"), 300, 1500);
    coord.token("1h"); // something committed
    coord.proc.kill();
    let db = coord.dir.join("data/raft/wal/0000000000000000.wal");
    let mut bytes = std::fs::read(&db).expect("db file");
    for i in (64..bytes.len().min(8192)).step_by(5) {
        bytes[i] ^= 0xa5;
    }
    std::fs::write(&db, bytes).expect("corrupt");
    let args = coord.args();
    let out = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a corrupt store must not be served");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("corrupt storage") || errors[0].contains("storage:"), "{stderr}");
}

/// Resident memory of a process, in bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// Sends a request with `body` and no key; returns the status, or None when the server
/// closed the connection before answering (also a refusal).
fn post_without_key(url: &str, body: &[u8], content_type: &str) -> Option<u16> {
    let resp = agent(Duration::from_secs(60)).post(url).header("Content-Type", content_type).send(body);
    resp.ok().map(|r| r.status().as_u16())
}

#[test]
fn hostile_clients_are_refused_before_their_bodies_are_read() {
    let tmp = tempfile::tempdir().expect("tmp");
    let coord = Coord::start(&tmp.path().join("c"), 300, 1500);
    // No key is always 401, whatever the body: malformed JSON does not get a 400 naming fields.
    for (path, body) in [("/v1/tokens", r#"{"ttl_seconds": "x""#), ("/v1/embeddings", "{not json"), ("/v1/keys", "")] {
        let (status, v) = post_raw(&coord.url(path), body, None);
        assert_eq!(status, 401, "{path}: {v}");
        assert_eq!(v["error"]["type"], "authentication_error", "{path}: {v}");
    }
    // 8 parallel 40 MB uploads without a key: refused without buffering them.
    let pid = coord.proc.child.id();
    let before = rss_bytes(pid);
    let big = vec![b'a'; 40 << 20];
    let url = coord.url("/v1/knowledge-bases/x/documents/doc.txt");
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| agent(Duration::from_secs(60)).put(&url).send(&big[..]).ok().map(|r| r.status().as_u16()))
            })
            .collect();
        for h in handles {
            let status = h.join().expect("upload thread");
            assert!(matches!(status, Some(401) | None), "{status:?}");
        }
    });
    let grew = rss_bytes(pid).saturating_sub(before);
    assert!(grew < 64 << 20, "the gateway grew by {} MiB refusing unauthenticated uploads", grew >> 20);
    // Over the body limit and without a key: still 401 (or a hang-up before the body is read), never 413.
    let status = post_without_key(&coord.url("/v1/embeddings"), &big[..2 << 20], "application/json");
    assert!(matches!(status, Some(401) | None), "{status:?}");
    assert_eq!(get(&coord.url("/healthz"), None).map(|r| r.0), Some(200));

    // Uploads with a key take one of 8 slots before their body is read: 8 slow uploads hold
    // them all, and a 9th is told 429 at once instead of being buffered too.
    use std::io::Write;
    let slow: Vec<std::net::TcpStream> = (0..8)
        .map(|i| {
            let mut s = std::net::TcpStream::connect(coord.http).expect("connect");
            let head = format!(
                "PUT /v1/knowledge-bases/x/documents/d{i}.txt HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n\
                 Content-Type: text/plain\r\nContent-Length: 30000000\r\n\r\nthe first bytes of a big file"
            );
            s.write_all(head.as_bytes()).expect("send");
            s
        })
        .collect();
    // Every slow upload holds its slot before the 9th is tried (else a 9th could take a slot
    // a slow one then misses).
    wait_until(Duration::from_secs(30), "8 uploads in progress", || {
        coord.metric("shoal_gateway_uploads_in_progress ") == 8.0
    });
    let ninth = || {
        agent(Duration::from_secs(10))
            .put(&coord.url("/v1/knowledge-bases/x/documents/small.txt"))
            .header("Authorization", &format!("Bearer {API_KEY}"))
            .header("Content-Type", "text/plain")
            .send("small")
            .expect("answer")
    };
    wait_until(Duration::from_secs(10), "the 9th upload refused", || ninth().status().as_u16() == 429);
    let refused = ninth();
    assert_eq!(refused.status().as_u16(), 429);
    assert!(refused.headers().get("retry-after").is_some());
    drop(slow);
    // Slots free again once those clients are gone (the knowledge base does not exist: 404).
    wait_until(Duration::from_secs(10), "an upload slot free again", || ninth().status().as_u16() == 404);
}

#[test]
fn made_up_names_do_not_grow_the_metrics() {
    let tmp = tempfile::tempdir().expect("tmp");
    let coord = Coord::start(&tmp.path().join("c"), 300, 1500);
    // Series by name and labels (values dropped).
    let series = |coord: &Coord| -> std::collections::BTreeSet<String> {
        let (_, text) = get(&coord.url("/metrics"), None).expect("metrics");
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| l.rsplit_once(' ').map_or(l, |(k, _)| k).to_string())
            .collect()
    };
    let flood = |coord: &Coord, n: usize| {
        for i in 0..n {
            let model = format!("made-up-{i}-{}", "x".repeat(i % 7 * 50));
            post(&coord.url("/v1/embeddings"), serde_json::json!({"model": model, "input": "hi"}));
            post(
                &coord.url("/v1/chat/completions"),
                serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
            );
            post(&coord.url(&format!("/v1/knowledge-bases/kb-{i}/search")), serde_json::json!({"query": "q"}));
            post(
                &coord.url(&format!("/v1/knowledge-bases/kb-{i}/documents")),
                serde_json::json!({"id": "d", "text": "t"}),
            );
        }
    };
    // The first round creates the `other` series; the next ones must add none.
    flood(&coord, 20);
    let after_first = series(&coord);
    flood(&coord, 300);
    let after_many = series(&coord);
    // Series that appear with time (a raft checkpoint, a histogram's first sample of some
    // unrelated kind) may come; none may be keyed by a requested name.
    let added: Vec<&String> = after_many.difference(&after_first).collect();
    assert!(
        added.iter().all(|s| !s.contains("model=") && !s.contains("kb=") && !s.contains("deployment=")),
        "300 more made-up model and knowledge-base names added series: {added:?}"
    );
    assert!(added.len() <= 3, "300 more made-up names added {} series: {added:?}", added.len());
    let (_, text) = get(&coord.url("/metrics"), None).expect("metrics");
    assert!(!text.contains("made-up-") && !text.contains("kb-1"), "a made-up name became a label");
    assert!(text.contains(r#"model="other""#), "unknown models are counted under other");
    // Responses are counted by route template and status, never by the path asked for.
    assert!(
        text.lines().any(|l| l.starts_with("shoal_gateway_http_responses_total{")
            && l.contains(r#"route="/v1/knowledge-bases/{name}/search""#)
            && l.contains(r#"code="4"#)),
        "no refused search counted by its route: {}",
        text.lines().filter(|l| l.contains("http_responses")).collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn keys_have_scopes_models_limits_and_can_be_revoked() {
    let tmp = tempfile::tempdir().expect("tmp");
    let coord = Coord::start(&tmp.path().join("c"), 300, 1500);
    let gw = coord.gateway();
    // The stored database is owner-only.
    use std::os::unix::fs::PermissionsExt;
    let raft_dir = coord.dir.join("data/raft");
    for entry in walk(&raft_dir) {
        let mode = std::fs::metadata(&entry).expect("meta").permissions().mode() & 0o777;
        let want = if entry.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode, want, "{} is {mode:o}", entry.display());
    }
    let out = run(&["key", "create", "--name", "app", "--models", "echo", "--rate", "3/s", "--gateway", &gw]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let field = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_string()).expect(name);
    let (id, key) = (field("id:"), field("key:"));
    assert!(key.starts_with("sk-shoal-") && id.starts_with("key-"), "{text}");
    // Listed without its secret.
    let out = run(&["key", "list", "--gateway", &gw]);
    let listed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        listed.contains(&id) && listed.contains("app") && listed.contains("user") && !listed.contains(&key),
        "{listed}"
    );
    // A user key: no admin routes; only its models.
    assert_eq!(get(&coord.url("/v1/keys"), Some(&key)).map(|r| r.0), Some(403));
    let (status, v) = post_raw(&coord.url("/v1/tokens"), "{}", Some(&key));
    assert_eq!(status, 403, "{v}");
    let (status, v) = post_raw(&coord.url("/v1/embeddings"), r#"{"model": "other", "input": "x"}"#, Some(&key));
    assert_eq!((status, v["error"]["code"].as_str()), (403, Some("forbidden")), "{v}");
    // Its rate: 3 requests/s with a burst of 3; the 4th in a row is 429 with Retry-After.
    let mut limited = None;
    for _ in 0..8 {
        let resp = agent(Duration::from_secs(10))
            .get(&coord.url("/v1/models"))
            .header("Authorization", &format!("Bearer {key}"))
            .call()
            .expect("answer");
        if resp.status().as_u16() == 429 {
            limited = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
            break;
        }
    }
    assert_eq!(limited.as_deref(), Some("1"), "8 requests in a row at 3/s were never limited");
    // A key from a file works like the environment variable.
    let key_file = tmp.path().join("key");
    std::fs::write(&key_file, format!("{API_KEY}\n")).expect("key file");
    let out = std::process::Command::new(BIN)
        .args(["key", "list", "--gateway", &gw, "--api-key-file", key_file.to_str().expect("utf8")])
        .env_remove("SHOAL_API_KEY")
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Revoked: 401 from then on; the last admin key cannot be revoked.
    let out = run(&["key", "revoke", &id, "--gateway", &gw]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(get(&coord.url("/v1/models"), Some(&key)).map(|r| r.0), Some(401));
    let keys = get_json(&coord.url("/v1/keys")).expect("keys");
    let admin_id = keys["data"][0]["id"].as_str().expect("admin id").to_string();
    let out = run(&["key", "revoke", &admin_id, "--gateway", &gw]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("last admin key"));

    // The audit log recorded the mutations, the admin reads and every refusal, with the
    // key's id and name, and never a secret.
    let audit = || get_json(&coord.url("/v1/audit")).expect("audit")["data"].as_array().cloned().unwrap_or_default();
    wait_until(Duration::from_secs(10), "the revocation is in the audit log", || {
        audit().iter().any(|r| r["uri"] == format!("/v1/keys/{id}") && r["verb"] == "delete" && r["code"] == 200)
    });
    let records = audit();
    let has = |pred: &dyn Fn(&serde_json::Value) -> bool, what: &str| {
        assert!(records.iter().any(pred), "no audit record of {what} in {records:#?}");
    };
    has(
        &|r| r["uri"] == "/v1/keys" && r["method"] == "POST" && r["code"] == 201 && r["key_id"] == admin_id,
        "the key creation",
    );
    has(
        &|r| r["uri"] == "/v1/keys" && r["code"] == 403 && r["key_name"] == "app" && r["reason"] == "auth_failure",
        "the user key's admin read",
    );
    has(&|r| r["uri"] == "/v1/tokens" && r["code"] == 403 && r["key_id"] == id, "the user key's token request");
    has(&|r| r["uri"] == "/v1/models" && r["code"] == 401 && r["key_id"] == "", "the revoked key");
    has(
        &|r| r["uri"] == "/v1/keys" && r["method"] == "GET" && r["code"] == 200 && r["reason"] == "admin_read",
        "an admin read",
    );
    has(&|r| r["uri"] == format!("/v1/keys/{admin_id}") && r["code"].as_u64() >= Some(400), "the refused revocation");
    assert!(records.iter().all(|r| r["source"].as_str().is_some_and(|s| s.starts_with("127.0.0.1:"))), "{records:#?}");
    assert!(!records.iter().any(|r| r["uri"] == "/v1/models" && r["code"] == 200), "plain reads are not audited");
    let out = run(&["audit", "--failed", "--key", "app", "--gateway", &gw]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("/v1/tokens") && text.contains("403") && !text.contains(" 201 "), "{text}");
    let files: Vec<_> = walk(&coord.dir).into_iter().filter(|p| p.to_string_lossy().contains("audit.jsonl")).collect();
    assert!(!files.is_empty(), "no audit file under {}", coord.dir.display());
    for f in files {
        let text = std::fs::read_to_string(&f).expect("audit file");
        assert!(!text.contains(&key) && !text.contains(API_KEY), "a secret in {}", f.display());
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    for e in std::fs::read_dir(dir).expect("dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn slow_clients_are_cut_off_and_others_stay_served() {
    use std::io::{Read, Write};
    let tmp = tempfile::tempdir().expect("tmp");
    let coord = Coord::start(&tmp.path().join("c"), 300, 1500);
    // 300 connections that send half a request line and then nothing.
    let mut slow: Vec<std::net::TcpStream> = (0..300)
        .filter_map(|_| std::net::TcpStream::connect(coord.http).ok())
        .map(|mut s| {
            let _ = s.write_all(b"GET /v1/cluster HTTP/1.1\r\nHost: x\r\n");
            s
        })
        .collect();
    assert_eq!(slow.len(), 300);
    // A normal client is served meanwhile.
    for _ in 0..5 {
        assert_eq!(get(&coord.url("/v1/cluster"), Some(API_KEY)).map(|r| r.0), Some(200));
    }
    // The server hangs up on them once the header deadline passes (10 s).
    let first = &mut slow[0];
    first.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let mut buf = [0u8; 256];
    let n = first.read(&mut buf).unwrap_or(0);
    let answer = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(n == 0 || answer.starts_with("HTTP/1.1 408"), "a slow client got: {answer}");
    assert_eq!(get(&coord.url("/healthz"), None).map(|r| r.0), Some(200));
}

#[test]
fn command_line_mistakes_get_one_line_with_the_fix() {
    let tmp = tempfile::tempdir().expect("tmp");
    let coord = Coord::start(&tmp.path().join("c"), 300, 1500);
    let one_error = |args: &[&str]| {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "{args:?} succeeded");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
        assert_eq!(errors.len(), 1, "{args:?}: {stderr}");
        stderr
    };
    let bare = coord.http.to_string();
    let e = one_error(&["status", "--gateway", &bare]);
    assert!(e.contains(&format!("use --gateway http://{bare}")), "{e}");
    let e = one_error(&["kb", "search", "docs", "q", "--mode", "fuzzy", "--gateway", &coord.gateway()]);
    assert!(e.contains("dense") && e.contains("sparse") && e.contains("hybrid"), "{e}");
    let note = tmp.path().join("n.txt");
    std::fs::write(&note, "text").expect("note");
    let e = one_error(&["kb", "add", "nope", note.to_str().expect("utf8"), "--gateway", &coord.gateway()]);
    assert!(e.contains("shoal kb create nope --embedding MODEL"), "{e}");
    // Joining the HTTP port by mistake: the hint says which address to give.
    let (token, hash) = coord.token("1h");
    let data = tmp.path().join("wrong-port");
    let e =
        one_error(&["join", &bare, "--token", &token, "--ca-hash", &hash, "--data-dir", data.to_str().expect("utf8")]);
    assert!(e.contains("not its HTTP port"), "{e}");
    // A placeholder admin key (as left in a manifest) is refused before anything starts.
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/cluster-configs/local-1.toml");
    let data = tmp.path().join("short-key");
    let data = data.to_str().expect("utf8");
    let e = one_error(&["coordinator", "--config", config, "--id", "1", "--data-dir", data, "--api-key", "replace-me"]);
    assert!(e.contains("is 10 characters; it needs at least 16") && e.contains("openssl rand"), "{e}");
    // A reader that went away before the output (`| true` closes the pipe at once; `| head -1`
    // does the same once it has its line): quiet, no panic.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("'{BIN}' status --gateway {} | true", coord.gateway()))
        .env("SHOAL_API_KEY", API_KEY)
        .output()
        .expect("sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{stderr}");
}

#[test]
fn a_second_node_on_one_host_finds_a_port_and_a_busy_data_dir_is_named() {
    let tmp = tempfile::tempdir().expect("tmp");
    let coord = Coord::start(&tmp.path().join("c"), 300, 1500);
    let (token, hash) = coord.token("1h");
    // Something already holds the default data-plane port, as a first node would.
    let _first = std::net::UdpSocket::bind("127.0.0.1:7200");
    let quic = coord.quic.to_string();
    let data = tmp.path().join("n2");
    let data_s = data.to_str().expect("utf8").to_string();
    let args =
        ["join", quic.as_str(), "--data-dir", &data_s, "--name", "second", "--token", &token, "--ca-hash", &hash];
    let mut node = spawn(&args, &tmp.path().join("n2.log"));
    wait_until(Duration::from_secs(30), "the second node ready", || {
        state_of(&coord, "second").is_some_and(|s| s.0 == "ready")
    });
    let log = node.log_text();
    assert!(log.contains("127.0.0.1:7200 is taken") && log.contains("listening on 127.0.0.1:"), "{log}");
    let chosen = std::fs::read_to_string(data.join("listen")).expect("remembered listen address");
    assert_eq!(coord.node("second").expect("node")["address"], chosen.trim());
    // The same data dir twice: one line naming the process that has it; no ghost node.
    let out =
        run(&["join", quic.as_str(), "--data-dir", &data_s, "--name", "ghost", "--token", &token, "--ca-hash", &hash]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("(pid {})", node.child.id())) && stderr.contains("another --data-dir"),
        "{stderr}"
    );
    assert!(coord.node("ghost").is_none(), "a refused join left a node behind");
    // The documented restart, `shoal join ADDR --data-dir D`, comes back on the remembered port.
    node.kill();
    let mut again = spawn(&["join", quic.as_str(), "--data-dir", &data_s], &tmp.path().join("n2b.log"));
    wait_until(Duration::from_secs(30), "the node back", || {
        coord.node("second").is_some_and(|n| n["state"] == "ready" && n["address"] == chosen.trim())
    });
    again.kill();
}
