//! A raft group of real coordinator processes on loopback: leaders killed with SIGKILL,
//! a leader isolated from its peers, a follower restarted from disk and caught up by
//! snapshot, members added and removed, all while a client keeps writing.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

fn sorted(v: &[Value]) -> Vec<u64> {
    let mut ids: Vec<u64> = v.iter().filter_map(|x| x.as_u64()).collect();
    ids.sort();
    ids
}

/// A client writing (creating tokens) through random live members; records acknowledgements.
fn writer(urls: Vec<String>, stop: Arc<AtomicBool>, acked: Arc<Mutex<Vec<String>>>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut i = 0usize;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            let url = &urls[i % urls.len()];
            if let Some((200, body)) = post_opt(url, json!({"ttl_seconds": 3600})) {
                if let Some(id) = body["token_id"].as_str() {
                    acked.lock().expect("acked").push(id.to_string());
                }
            } else {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    })
}

#[test]
fn three_coordinators_survive_leader_kills_isolation_and_a_follower_restart() {
    let tmp = tempfile::Builder::new()
        .prefix("shoal-raft-")
        .disable_cleanup(std::env::var("SHOAL_KEEP_TEST_DIRS").is_ok())
        .tempdir()
        .expect("tmp");
    let mut g = Group::new(tmp.path(), 3, 0);
    let leader = g.start_all_ready(3);
    // Every member shows the same leader and term.
    let views: Vec<Value> = (1..=3).filter_map(|id| g.cluster(id)).collect();
    assert!(views.iter().all(|v| v["leader_id"] == leader && v["term"] == views[0]["term"]), "{views:?}");

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let urls: Vec<String> = (1..=3).map(|id| g.url(id, "/v1/tokens")).collect();
    let client = writer(urls, stop.clone(), acked.clone());
    let acks = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(20);
        let base = acked.lock().expect("acked").len();
        while acked.lock().expect("acked").len() < base + n {
            assert!(Instant::now() < deadline, "writes stopped being acknowledged");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    acks(10);

    // The leader, killed with SIGKILL three times in a row.
    for round in 0..3 {
        let old = g.wait_leader(Duration::from_secs(20), None);
        let killed_at = Instant::now();
        g.kill(old);
        let new = g.wait_leader(Duration::from_secs(15), Some(old));
        acks(5);
        eprintln!(
            "round {round}: leader {old} killed, {new} leads; writes flowing again after {:?}",
            killed_at.elapsed()
        );
        g.start(old);
        g.wait_leader(Duration::from_secs(20), None);
        g.assert_no_ack_lost(&acked, Duration::from_secs(30));
    }

    // The leader isolated from its peers: the minority cannot commit, the majority goes on.
    let isolated = g.wait_leader(Duration::from_secs(20), None);
    let (status, _) = post_opt(&g.url(isolated, "/v1/debug/faults"), json!({"isolated": true})).expect("faults");
    assert_eq!(status, 200);
    let new = {
        let others: Vec<u64> = g.live().into_iter().filter(|id| *id != isolated).collect();
        let mut leader = 0;
        wait_until(Duration::from_secs(15), "the majority elects a new leader", || {
            leader = others
                .iter()
                .filter_map(|id| g.cluster(*id))
                .filter_map(|c| c["leader_id"].as_u64())
                .find(|l| *l != isolated && *l != 0)
                .unwrap_or(0);
            leader != 0
        });
        leader
    };
    acks(5);
    let (status, body) = post_opt(&g.url(isolated, "/v1/tokens"), json!({"ttl_seconds": 60})).expect("answer");
    assert_ne!(status, 200, "an isolated member must not acknowledge a write: {body}");
    let (status, _) = post_opt(&g.url(isolated, "/v1/debug/faults"), json!({"isolated": false})).expect("faults");
    assert_eq!(status, 200);
    eprintln!("isolated {isolated}; {new} led the majority");
    g.wait_leader(Duration::from_secs(20), None);
    g.assert_no_ack_lost(&acked, Duration::from_secs(30));

    // A follower stopped while the log moves past compaction, then restarted from disk:
    // it catches up from a snapshot.
    let leader = g.wait_leader(Duration::from_secs(20), None);
    let follower = g.live().into_iter().find(|id| *id != leader).expect("a follower");
    g.kill(follower);
    acks(60);
    g.start(follower);
    g.wait_leader(Duration::from_secs(20), None);
    g.assert_no_ack_lost(&acked, Duration::from_secs(30));
    let (_, metrics) = get(&g.url(follower, "/metrics"), None).expect("metrics");
    let installed = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("shoal_raft_snapshots_installed_total").map(|v| v.trim().parse::<f64>().unwrap_or(0.0))
        })
        .unwrap_or(0.0);
    assert!(installed >= 1.0, "the restarted follower should have caught up from a snapshot");

    stop.store(true, Ordering::Relaxed);
    client.join().expect("client");
    // All members agree on the whole state.
    let sets: Vec<BTreeSet<String>> = g.live().iter().map(|id| g.tokens(*id).expect("tokens")).collect();
    assert!(sets.windows(2).all(|w| w[0] == w[1]), "members disagree");
    assert!(sets[0].len() >= acked.lock().expect("acked").len());
}

/// The members are named by DNS name (`localhost:PORT`, as a Kubernetes StatefulSet names
/// its pods): raft, forwarding, joining, redirects and membership changes all go by name.
#[test]
fn coordinators_are_added_and_removed_while_serving() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut g = Group::new_named(tmp.path(), 3, 1);
    for id in 1..=4 {
        g.start(id);
    }
    let mut leader = 0;
    wait_until(Duration::from_secs(20), "a leader among the first three", || {
        leader = g.cluster(1).and_then(|c| c["leader_id"].as_u64()).unwrap_or(0);
        leader != 0
    });
    for _ in 0..5 {
        let answer = post_opt(&g.url(1, "/v1/tokens"), json!({}));
        assert_eq!(answer.as_ref().map(|r| r.0), Some(200), "{answer:?}");
    }
    // A node pointed at a follower is redirected to the leader, joins and registers.
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let (_, tok) = post_opt(&g.url(follower, "/v1/tokens"), json!({})).expect("token");
    let (token, hash) = (tok["token"].as_str().expect("token"), tok["ca_hash"].as_str().expect("hash"));
    let (quic, _) = g.advertised(follower);
    assert!(quic.starts_with("localhost:"), "{quic}");
    let _node = join_at(&quic, &g.dir, "via-follower", Some((token, hash)), &[]);
    wait_until(Duration::from_secs(20), "the node joined through a follower is ready", || {
        get_json(&g.url(follower, "/v1/nodes?consistent=true"))
            .and_then(|v| v["nodes"].as_array().cloned())
            .is_some_and(|n| n.iter().any(|n| n["name"] == "via-follower" && n["state"] == "ready"))
    });
    let gw = format!("http://{}", g.member(2).http);
    // A member that was never started is refused unless forced, with the procedure named.
    let (q5, h5) = (addr(free_port()).to_string(), addr(free_port()).to_string());
    let out = run(&["coordinator", "add", "5", "--quic", &q5, "--http", &h5, "--gateway", &gw]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("does not answer") && stderr.contains("--force"), "{stderr}");
    // Member 4 runs (started with the others, `initial = false`) before it is added, as the
    // procedure says; its log is shown if it never came up.
    let health = g.url(4, "/healthz");
    if !(0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        get(&health, None).is_some()
    }) {
        let log = std::fs::read_to_string(g.dir.join("c4.log")).unwrap_or_default();
        panic!("member 4 never answered at {health}; its log:\n{log}");
    }
    let (quic4, http4) = g.advertised(4);
    let out = run(&["coordinator", "add", "4", "--quic", &quic4, "--http", &http4, "--gateway", &gw]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The membership printed is the committed one, even through a follower.
    let printed = |out: &std::process::Output| -> Vec<u64> {
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let list = text.split("voters now ").nth(1).unwrap_or("").trim().to_string();
        let v: serde_json::Value = serde_json::from_str(&list).unwrap_or_default();
        sorted(v.as_array().map(Vec::as_slice).unwrap_or(&[]))
    };
    assert_eq!(printed(&out), vec![1, 2, 3, 4]);
    wait_until(Duration::from_secs(20), "member 4 is a voter and has the data", || {
        let voters = g.cluster(4).map(|c| c["voters"].clone());
        voters.as_ref().and_then(|v| v.as_array()).map(|v| sorted(v)) == Some(vec![1, 2, 3, 4])
            && g.tokens(4).is_some_and(|t| t.len() >= 5)
    });
    let status = run(&["status", "--gateway", &gw]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains(&quic4), "{text}");

    let out = run(&["coordinator", "remove", "2", "--gateway", &format!("http://{}", g.member(1).http)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(printed(&out), vec![1, 3, 4]);
    wait_until(Duration::from_secs(20), "member 2 removed", || {
        g.cluster(1).and_then(|c| c["voters"].as_array().map(|v| sorted(v))) == Some(vec![1, 3, 4])
    });
    g.kill(2);
    // Still serving writes with 3 of the 4 voters left.
    for _ in 0..3 {
        let url = g.url(4, "/v1/tokens");
        let mut ok = false;
        wait_until(Duration::from_secs(15), "a write after the removal", || {
            ok = post_opt(&url, json!({})).map(|r| r.0) == Some(200);
            ok
        });
    }
    // A leader stopped on purpose (SIGTERM) hands leadership to another voter before it
    // exits, instead of leaving the others to wait out an election timeout.
    let leader = g.wait_leader(Duration::from_secs(20), None);
    let m = g.members.iter_mut().find(|m| m.id == leader).expect("member");
    let mut proc = m.proc.take().expect("the leader runs");
    assert!(proc.terminate().success(), "{}", proc.log_text());
    let log = proc.log_text();
    assert!(log.contains("handed leadership over before stopping"), "{log}");
    let next = g.wait_leader(Duration::from_secs(20), Some(leader));
    assert!(next != leader);
    let url = g.url(next, "/v1/tokens");
    wait_until(Duration::from_secs(15), "a write after the hand-over", || {
        post_opt(&url, json!({})).map(|r| r.0) == Some(200)
    });
}

/// Routing reads each coordinator's local replica of the state, and a node that reconnects
/// to a new leader keeps its replicas: requests through a follower's gateway keep being
/// answered while the leader is killed and a new one elected.
#[test]
fn requests_keep_flowing_through_a_leader_election() {
    let tmp = tempfile::Builder::new().prefix("shoal-route-").tempdir().expect("tmp");
    let mut g = Group::new(tmp.path(), 3, 0);
    let leader = g.start_all_ready(3);
    let gw = format!("http://{}", g.member(leader).http);
    let out = run(&["token", "create", "--gateway", &gw, "--ttl", "1h"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let field = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_string());
    let (token, hash) = (field("token:").expect("token"), field("ca-hash:").expect("hash"));
    // The node is given the leader's address only; it learns the others at registration and
    // fails over to them when the leader dies.
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let quic = g.member(leader).quic.to_string();
    let _node = join_at(&quic, tmp.path(), "node-1", Some((&token, &hash)), &[]);
    let (status, v) = post_opt(&g.url(leader, "/v1/deployments"), json!({"name": "echo", "source": "builtin://echo"}))
        .expect("deploy");
    assert_eq!(status, 201, "{v}");
    let ready = |id: u64| {
        get_json(&g.url(id, "/v1/deployments/echo")).and_then(|d| d["ready_replicas"].as_u64()).unwrap_or(0) == 1
    };
    wait_until(Duration::from_secs(30), "the echo replica ready", || ready(follower));
    let placement = get_json(&g.url(follower, "/v1/deployments/echo")).expect("d")["placements"][0]["id"].clone();

    let stop = Arc::new(AtomicBool::new(false));
    let results = Arc::new(Mutex::new(Vec::new()));
    let client = {
        let (stop, results) = (stop.clone(), results.clone());
        let url = g.url(follower, "/v1/chat/completions");
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let body = json!({"model": "echo", "messages": [{"role": "user", "content": format!("ping {i}")}]});
                let answer = post_opt(&url, body);
                let ok =
                    matches!(&answer, Some((200, v)) if v["choices"][0]["message"]["content"] == format!("ping {i}"));
                results.lock().expect("results").push((ok, format!("{answer:?}")));
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    g.kill(leader);
    let new_leader = g.wait_leader(Duration::from_secs(20), Some(leader));
    // Let the node find the new leader and re-register while requests continue.
    wait_until(Duration::from_secs(20), "the node re-registered with the new leader", || {
        get_json(&g.url(new_leader, "/v1/nodes"))
            .and_then(|v| v["nodes"].as_array().cloned())
            .is_some_and(|n| n.iter().any(|n| n["generation"].as_u64().unwrap_or(0) >= 2 && n["state"] == "ready"))
    });
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    client.join().expect("client");
    let results = results.lock().expect("results");
    let failed: Vec<&String> = results.iter().filter(|(ok, _)| !ok).map(|(_, a)| a).collect();
    assert!(results.len() > 50, "only {} requests were made", results.len());
    assert!(failed.is_empty(), "{} of {} requests failed, first: {:?}", failed.len(), results.len(), failed.first());
    // The replica was kept across the re-registration (same placement, not reloaded).
    let after = get_json(&g.url(new_leader, "/v1/deployments/echo")).expect("d");
    assert_eq!(after["placements"][0]["id"], placement, "{after}");
    assert_eq!(after["ready_replicas"], 1, "{after}");
}

/// `shoal gateway` with the token, CA hash and coordinators `shoal token create` printed.
fn standalone_gateway(dir: &Path, name: &str, http: std::net::SocketAddr, join: Option<(&str, &str, &str)>) -> Proc {
    let data = dir.join(name);
    let h = http.to_string();
    let mut args = vec!["gateway", "--data-dir", data.to_str().expect("utf8")];
    if let Some((coordinators, token, hash)) = join {
        args.extend(["--coordinators", coordinators, "--token", token, "--ca-hash", hash, "--http", &h]);
    }
    spawn(&args, &dir.join(format!("{name}.log")))
}

fn call(url: &str, body: Value) -> (u16, Value) {
    post_opt(url, body).unwrap_or((0, Value::Null))
}

#[test]
fn standalone_gateways_serve_with_every_coordinator_down_and_refuse_writes() {
    let tmp = tempfile::Builder::new().prefix("shoal-gateways-").tempdir().expect("tmp");
    let mut g = Group::new(tmp.path(), 3, 0);
    let leader = g.start_all_ready(3);
    let embedded = format!("http://{}", g.member(leader).http);
    let out = run(&["token", "create", "--gateway", &embedded, "--ttl", "1h"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let field = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_string());
    let (token, hash) = (field("token:").expect("token"), field("ca-hash:").expect("hash"));
    // The form `token create` prints for a gateway names every coordinator.
    let printed = text.lines().find(|l| l.trim_start().starts_with("shoal gateway ")).expect("gateway command");
    let coordinators: Vec<String> = (1..=3).map(|id| g.member(id).quic.to_string()).collect();
    for c in &coordinators {
        assert!(printed.contains(c.as_str()), "{printed} names {c}");
    }
    let list = coordinators.join(",");
    let _node = join_at(&coordinators[0], tmp.path(), "node-1", Some((&token, &hash)), &[]);
    let minilm = models_dir().join("all-minilm-l6-v2");
    for (name, source) in [("echo", "builtin://echo".to_string()), ("minilm", minilm.display().to_string())] {
        // Registration hashes the model's files: slow on a loaded machine (2 minutes allowed).
        let (status, v) = post(&g.url(leader, "/v1/deployments"), json!({"name": name, "source": source}));
        assert_eq!(status, 201, "{v}");
    }
    let ready = |url: String| get_json(&url).and_then(|d| d["ready_replicas"].as_u64()).unwrap_or(0) == 1;
    for name in ["echo", "minilm"] {
        wait_until(Duration::from_secs(120), &format!("{name} ready"), || {
            ready(g.url(leader, &format!("/v1/deployments/{name}")))
        });
    }
    let (status, v) = post(
        &g.url(leader, "/v1/knowledge-bases"),
        json!({"name": "docs", "embedding_model": "minilm", "replicas": 1}),
    );
    assert_eq!(status, 201, "{v}");
    let doc = json!({"id": "otters", "text": "Sea otters hold hands while they sleep so they do not drift apart."});
    wait_until(Duration::from_secs(60), "the document indexed", || {
        call(&g.url(leader, "/v1/knowledge-bases/docs/documents"), doc.clone()).0 == 200
    });

    // Two standalone gateways join with what `token create` printed.
    let (h1, h2) = (addr(free_port()), addr(free_port()));
    let mut gw1 = standalone_gateway(tmp.path(), "gw-1", h1, Some((&list, &token, &hash)));
    let _gw2 = standalone_gateway(tmp.path(), "gw-2", h2, Some((&list, &token, &hash)));
    let urls = [format!("http://{h1}"), format!("http://{h2}")];
    for u in &urls {
        wait_until(Duration::from_secs(30), &format!("{u} ready"), || {
            matches!(get(&format!("{u}/readyz"), None), Some((200, _)))
        });
    }
    let serves = |u: &str| {
        let chat = call(
            &format!("{u}/v1/chat/completions"),
            json!({"model": "echo", "messages": [{"role": "user", "content": "still here"}]}),
        );
        let embed = call(&format!("{u}/v1/embeddings"), json!({"model": "minilm", "input": ["otters"]}));
        let search =
            call(&format!("{u}/v1/knowledge-bases/docs/search"), json!({"query": "which animal sleeps holding hands"}));
        assert_eq!(chat.0, 200, "chat through {u}: {:?}", chat.1);
        assert_eq!(chat.1["choices"][0]["message"]["content"], "still here");
        assert_eq!(embed.0, 200, "embeddings through {u}: {:?}", embed.1);
        assert_eq!(embed.1["data"][0]["embedding"].as_array().map(|e| e.len()), Some(384));
        assert_eq!(search.0, 200, "search through {u}: {:?}", search.1);
        let hits = search.1["hits"].as_array().cloned().or_else(|| search.1["data"].as_array().cloned());
        assert!(format!("{hits:?}").contains("otters"), "search through {u}: {:?}", search.1);
    };
    for u in &urls {
        serves(u);
        // Its view comes from the leader (the only member that hears heartbeats), so it
        // shows the node's last heartbeat.
        wait_until(Duration::from_secs(15), &format!("{u} watches the leader"), || {
            get_json(&format!("{u}/v1/cluster")).is_some_and(|c| c["gateway"]["watching"] == c["leader_id"])
        });
        wait_until(Duration::from_secs(10), &format!("{u} shows heartbeats"), || {
            get_json(&format!("{u}/v1/nodes")).is_some_and(|v| v["nodes"][0]["last_heartbeat_age_ms"].is_u64())
        });
    }
    // A write through a standalone gateway is committed and visible there at once.
    let (status, v) = call(&format!("{}/v1/keys", urls[0]), json!({"name": "through-gw-1"}));
    assert_eq!(status, 201, "{v}");
    let key = v["key"].as_str().expect("key").to_string();
    let models = |u: &str, k: &str| {
        agent(Duration::from_secs(5))
            .get(&format!("{u}/v1/models"))
            .header("Authorization", &format!("Bearer {k}"))
            .call()
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    assert_eq!(models(&urls[0], &key), 200);
    wait_until(Duration::from_secs(5), "the key on the other gateway", || models(&urls[1], &key) == 200);

    // Every coordinator (and with it every embedded gateway) is SIGKILLed.
    for id in 1..=3 {
        g.kill(id);
    }
    std::thread::sleep(Duration::from_secs(1));
    for u in &urls {
        serves(u);
        // Keys keep working from the cached view.
        assert_eq!(models(u, &key), 200);
        let (status, v) = call(&format!("{u}/v1/keys"), json!({"name": "while-down"}));
        assert_eq!(status, 503, "a write with no control plane: {v}");
        assert!(v["error"]["message"].as_str().unwrap_or("").contains("control plane unavailable"), "{v}");
        let ready = get(&format!("{u}/readyz"), None).expect("readyz");
        assert_eq!(ready.0, 200, "{ready:?}");
    }
    // A gateway restarted while the control plane is down comes back from --data-dir alone,
    // but has no view to serve from until a coordinator answers.
    gw1.kill();
    let mut gw1 = standalone_gateway(tmp.path(), "gw-1", h1, None);
    wait_until(Duration::from_secs(20), "the restarted gateway listening", || {
        matches!(get(&format!("{}/healthz", urls[0]), None), Some((200, _)))
    });
    assert_eq!(get(&format!("{}/readyz", urls[0]), None).map(|r| r.0), Some(503));

    // The coordinators return: the views resume without a restart and writes go through.
    for id in 1..=3 {
        g.start(id);
    }
    g.wait_leader(Duration::from_secs(30), None);
    for u in &urls {
        wait_until(Duration::from_secs(30), &format!("a write through {u}"), || {
            call(&format!("{u}/v1/keys"), json!({"name": format!("after-{}", rand_suffix())})).0 == 201
        });
        serves(u);
    }
    gw1.kill();
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64 % 1_000_000)
        .unwrap_or(0)
}

/// What a user sees of the replicated state, for comparing before and after a restore.
fn visible_state(url: &dyn Fn(&str) -> String) -> Value {
    let names = |path: &str, list: &str, field: &str| -> Vec<String> {
        let v = get_json(&url(path)).unwrap_or(Value::Null);
        let mut out: Vec<String> = v[list]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|x| x[field].as_str().map(String::from))
            .collect();
        out.sort();
        out
    };
    json!({
        "deployments": names("/v1/deployments", "data", "name"),
        "models": names("/v1/models", "data", "id"),
        "keys": names("/v1/keys", "data", "id"),
        "tokens": names("/v1/tokens", "data", "id"),
        "knowledge_bases": names("/v1/knowledge-bases", "data", "name"),
        "nodes": names("/v1/nodes", "nodes", "name"),
    })
}

#[test]
fn a_group_destroyed_entirely_is_restored_from_a_backup() {
    let tmp = tempfile::Builder::new().prefix("shoal-backup-").tempdir().expect("tmp");
    let mut g = Group::new(tmp.path(), 3, 0);
    let leader = g.start_all_ready(3);
    let gw = format!("http://{}", g.member(leader).http);
    let out = run(&["token", "create", "--gateway", &gw, "--ttl", "1h"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let field = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_string());
    let (token, hash) = (field("token:").expect("token"), field("ca-hash:").expect("hash"));
    let _node = join_at(&g.member(leader).quic.to_string(), tmp.path(), "node-1", Some((&token, &hash)), &[]);
    let minilm = models_dir().join("all-minilm-l6-v2");
    for (name, source) in [("echo", "builtin://echo".to_string()), ("minilm", minilm.display().to_string())] {
        let (status, v) = post(&format!("{gw}/v1/deployments"), json!({"name": name, "source": source}));
        assert_eq!(status, 201, "{v}");
    }
    for name in ["echo", "minilm"] {
        wait_until(Duration::from_secs(120), &format!("{name} ready"), || {
            get_json(&format!("{gw}/v1/deployments/{name}")).and_then(|d| d["ready_replicas"].as_u64()) == Some(1)
        });
    }
    let (status, v) =
        post(&format!("{gw}/v1/knowledge-bases"), json!({"name": "docs", "embedding_model": "minilm", "replicas": 1}));
    assert_eq!(status, 201, "{v}");
    let (status, v) = post(&format!("{gw}/v1/keys"), json!({"name": "app", "models": ["echo"]}));
    assert_eq!(status, 201, "{v}");
    let user_key = v["key"].as_str().expect("key").to_string();
    let chat = |base: &str| {
        post_raw(
            &format!("{base}/v1/chat/completions"),
            &json!({"model": "echo", "messages": [{"role": "user", "content": "restored"}]}).to_string(),
            Some(&user_key),
        )
    };
    assert_eq!(chat(&gw).0, 200);
    let before = visible_state(&|p| format!("{gw}{p}"));

    // A backup with the model files; it verifies, and a damaged copy does not.
    let file = tmp.path().join("cluster.backup");
    let out = run(&["backup", file.to_str().expect("utf8"), "--with-artifacts", "--gateway", &gw]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("(verified)") && text.contains("deployments 2") && text.contains("api_keys 2"), "{text}");
    let out = run(&["backup", "inspect", file.to_str().expect("utf8")]);
    assert!(out.status.success());
    let damaged = tmp.path().join("damaged.backup");
    let mut bytes = std::fs::read(&file).expect("backup");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&damaged, &bytes).expect("write");
    let out = run(&["backup", "inspect", damaged.to_str().expect("utf8")]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("corrupt"));
    std::fs::write(&damaged, &bytes[..mid]).expect("write");
    let out = run(&["backup", "inspect", damaged.to_str().expect("utf8")]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("truncated"));

    // Every coordinator destroyed: processes, data dirs and the shared CA.
    for id in 1..=3 {
        g.kill(id);
        std::fs::remove_dir_all(tmp.path().join(format!("c{id}"))).expect("remove data dir");
    }
    std::fs::remove_dir_all(tmp.path().join("ca")).expect("remove the CA");
    // A fresh group from the same file; an existing data dir is refused.
    let config = g.config.to_str().expect("utf8").to_string();
    let existing = tmp.path().join("busy");
    std::fs::create_dir_all(existing.join("x")).expect("dir");
    let out = run(&[
        "restore",
        file.to_str().expect("utf8"),
        "--config",
        &config,
        "--id",
        "1",
        "--data-dir",
        existing.to_str().expect("utf8"),
    ]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not empty"));
    for id in 1..=3 {
        let dir = tmp.path().join(format!("c{id}"));
        let out = run(&[
            "restore",
            file.to_str().expect("utf8"),
            "--config",
            &config,
            "--id",
            &id.to_string(),
            "--data-dir",
            dir.to_str().expect("utf8"),
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let leader = g.start_all_ready(3);
    let gw = format!("http://{}", g.member(leader).http);
    // The node reconnects by itself (same CA, same addresses), and serving resumes with
    // the keys from before.
    wait_until(Duration::from_secs(60), "the node is back and echo serves", || chat(&gw).0 == 200);
    let (status, v) = chat(&gw);
    assert_eq!((status, v["choices"][0]["message"]["content"].as_str()), (200, Some("restored")), "{v}");
    let after = visible_state(&|p| format!("{gw}{p}"));
    assert_eq!(after, before, "the restored state differs");
    wait_until(Duration::from_secs(60), "minilm serves again", || {
        post(&format!("{gw}/v1/embeddings"), json!({"model": "minilm", "input": ["x"]})).0 == 200
    });
}

#[test]
fn a_rolling_restart_of_every_coordinator_and_node_fails_no_request() {
    let tmp = tempfile::Builder::new().prefix("shoal-rolling-").tempdir().expect("tmp");
    let mut g = Group::new(tmp.path(), 3, 0);
    let leader = g.start_all_ready(3);
    let embedded = format!("http://{}", g.member(leader).http);
    let out = run(&["token", "create", "--gateway", &embedded, "--ttl", "1h"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let field = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_string());
    let (token, hash) = (field("token:").expect("token"), field("ca-hash:").expect("hash"));
    let coordinators: Vec<String> = (1..=3).map(|id| g.member(id).quic.to_string()).collect();
    let mut nodes: Vec<Proc> = ["node-1", "node-2"]
        .iter()
        .enumerate()
        .map(|(i, name)| join_at(&coordinators[i], tmp.path(), name, Some((&token, &hash)), &[]))
        .collect();
    let (status, v) =
        post(&format!("{embedded}/v1/deployments"), json!({"name": "echo", "source": "builtin://echo", "replicas": 2}));
    assert_eq!(status, 201, "{v}");
    let replicas_ready =
        |url: &str| get_json(&format!("{url}/v1/deployments/echo")).and_then(|d| d["ready_replicas"].as_u64());
    wait_until(Duration::from_secs(60), "two echo replicas", || replicas_ready(&embedded) == Some(2));
    // The steady client talks to a standalone gateway (it outlives every coordinator restart).
    let h = addr(free_port());
    let _gw = standalone_gateway(tmp.path(), "gw", h, Some((&coordinators.join(","), &token, &hash)));
    let gw = format!("http://{h}");
    wait_until(Duration::from_secs(30), "the gateway ready", || {
        matches!(get(&format!("{gw}/readyz"), None), Some((200, _)))
    });
    let stop = Arc::new(AtomicBool::new(false));
    let results: Arc<Mutex<Vec<(u16, String)>>> = Arc::default();
    let client = {
        let (stop, results, gw) = (stop.clone(), results.clone(), gw.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let body = json!({"model": "echo", "messages": [{"role": "user", "content": format!("request {i}")}]});
                let (status, v) = call(&format!("{gw}/v1/chat/completions"), body);
                let ok = status == 200 && v["choices"][0]["message"]["content"] == format!("request {i}");
                results.lock().expect("results").push((if ok { 200 } else { status }, v.to_string()));
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    // Coordinators one by one: SIGTERM (a leader hands over first), restart, wait for the
    // group to agree on a leader again.
    for id in 1..=3 {
        let status = g.terminate(id).expect("running");
        assert!(status.success() || status.code().is_some(), "coordinator {id} exited: {status:?}");
        g.start(id);
        let url = g.url(id, "/readyz");
        wait_until(Duration::from_secs(30), "the member ready again", || matches!(get(&url, None), Some((200, _))));
        g.wait_leader(Duration::from_secs(20), None);
    }
    // Nodes one by one: SIGTERM drains (no new work, running work finishes), restart from
    // the data dir, wait until both replicas serve again.
    for (i, name) in ["node-1", "node-2"].iter().enumerate() {
        let status = nodes[i].terminate();
        assert!(status.success(), "{name} did not drain cleanly: {status:?}\n{}", nodes[i].log_text());
        assert!(nodes[i].log_text().contains("drained"), "{}", nodes[i].log_text());
        nodes[i] = join_at(&coordinators[i], tmp.path(), name, None, &[]);
        wait_until(Duration::from_secs(60), "both replicas serving again", || replicas_ready(&gw) == Some(2));
    }
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    client.join().expect("client");
    let results = results.lock().expect("results");
    let failed: Vec<&(u16, String)> = results.iter().filter(|(s, _)| *s != 200).collect();
    assert!(results.len() > 50, "only {} requests were made", results.len());
    assert!(failed.is_empty(), "{} of {} requests failed, first: {:?}", failed.len(), results.len(), failed.first());
}

/// Failure-only dashboard panels this test does not provoke, with why. Every other panel
/// must return data from a real Prometheus scraping a real cluster.
const NOT_PROVOKED: &[(&str, &str)] = &[
    ("Gateways serving from a cached view", "needs a standalone gateway cut off from every coordinator (standalone_gateways_serve_with_every_coordinator_down_and_refuse_writes)"),
    ("Writes refused with no coordinator", "the same"),
    ("Artifact fetch failures", "needs an artifact lost from every coordinator"),
    ("Failed ingests by knowledge base", "needs a node failing mid-ingest"),
    ("Shard failovers by knowledge base", "needs a copy failing mid-search"),
    ("Shards with no ready copy", "needs every copy of a shard lost"),
    ("Documents rebuilt from peers", "needs a copy rebuilt on a spare node (tests/knowledge.rs)"),
    ("Stage failures", "needs a split model losing a stage mid-generation (tests/pipeline.rs)"),
    ("Sequences cancelled by model", "needs a client leaving mid-generation"),
    ("Requests refused by nodes", "needs a full replica queue"),
    ("HTTP connections refused at the cap", "needs more connections than the gateway's cap"),
    ("Audit records dropped", "needs a full audit queue or disk"),
];

#[test]
fn prometheus_scrapes_the_cluster_and_every_dashboard_panel_has_data() {
    let Some(prometheus) =
        ["/usr/bin/prometheus", "/usr/local/bin/prometheus"].into_iter().find(|p| Path::new(p).exists())
    else {
        eprintln!("SKIPPED: no prometheus binary (apt-get install prometheus; scripts/test.sh installs it as root)");
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The alert rules: valid, and their unit tests pass.
    for args in [
        vec!["check", "rules", "cluster-configs/prometheus/alerts.yml"],
        vec!["test", "rules", "cluster-configs/prometheus/alerts_test.yml"],
    ] {
        let out = std::process::Command::new("promtool").args(&args).current_dir(root).output().expect("promtool");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "promtool {args:?}: {text}");
    }

    let tmp = tempfile::Builder::new().prefix("shoal-prometheus-").tempdir().expect("tmp");
    let mut g = Group::new(tmp.path(), 3, 0);
    let first = g.start_all_ready(3);
    // A leader change (SIGTERM: it hands over) before anything else, so that the member the
    // load goes through keeps its counters.
    g.terminate(first);
    let leader = g.wait_leader(Duration::from_secs(20), Some(first));
    g.start(first);
    let url = g.url(first, "/readyz");
    wait_until(Duration::from_secs(30), "the old leader back", || matches!(get(&url, None), Some((200, _))));
    let gw = format!("http://{}", g.member(leader).http);
    let out = run(&["token", "create", "--gateway", &gw, "--ttl", "1h"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let field = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_string());
    let (token, hash) = (field("token:").expect("token"), field("ca-hash:").expect("hash"));
    let quic = g.member(leader).quic.to_string();
    let accel = ["--accelerator", "npu:ascend910b:64GiB"];
    let _n1 = join_at(&quic, tmp.path(), "node-1", Some((&token, &hash)), &accel);
    let mut n2 = join_at(&quic, tmp.path(), "node-2", Some((&token, &hash)), &[]);
    let minilm = models_dir().join("all-minilm-l6-v2").display().to_string();
    let smol = gguf().display().to_string();
    for (name, source, replicas, shards) in [
        ("echo", "builtin://echo", 2, 0),
        ("minilm", minilm.as_str(), 1, 0),
        ("smol", smol.as_str(), 1, 0),
        ("smol-split", smol.as_str(), 1, 2),
    ] {
        let body = json!({"name": name, "source": source, "replicas": replicas, "shards": shards});
        let (status, v) = post(&format!("{gw}/v1/deployments"), body);
        assert_eq!(status, 201, "{v}");
    }
    for (name, n) in [("echo", 2), ("minilm", 1), ("smol", 1), ("smol-split", 1)] {
        wait_until(Duration::from_secs(120), &format!("{name} ready"), || {
            get_json(&format!("{gw}/v1/deployments/{name}")).and_then(|d| d["ready_replicas"].as_u64()) == Some(n)
        });
    }
    let kb = json!({"name": "docs", "embedding_model": "minilm", "replicas": 1});
    let (status, v) = post(&format!("{gw}/v1/knowledge-bases"), kb);
    assert_eq!(status, 201, "{v}");
    let doc = json!({"id": "otters", "text": "Sea otters hold hands while they sleep so they do not drift apart."});
    wait_until(Duration::from_secs(60), "the document indexed", || {
        call(&format!("{gw}/v1/knowledge-bases/docs/documents"), doc.clone()).0 == 200
    });
    let closed = free_port();
    let probe = format!(
        "name: probe\nallow_hosts: ['127.0.0.1:{closed}']\nsteps:\n  - {{id: t, kind: template, template: hi}}\n  - {{id: c, kind: http, url: 'http://127.0.0.1:{closed}/x', retry: {{attempts: 2, backoff_ms: 10}}, on_error: {{default: {{}}}}}}\noutputs: {{x: '${{steps.t.text}}'}}\n"
    );
    let broken = format!(
        "name: broken\nallow_hosts: ['127.0.0.1:{closed}']\nsteps:\n  - {{id: c, kind: http, url: 'http://127.0.0.1:{closed}/x'}}\noutputs: {{x: '${{steps.c.body}}'}}\n"
    );
    for def in [&probe, &broken] {
        let mut resp = agent(Duration::from_secs(30))
            .post(&format!("{gw}/v1/graphs"))
            .header("Authorization", &format!("Bearer {API_KEY}"))
            .header("Content-Type", "application/yaml")
            .send(def.as_str())
            .expect("apply");
        assert_eq!(resp.status().as_u16(), 201, "{}", resp.body_mut().read_to_string().unwrap_or_default());
    }
    let (status, v) = post(&format!("{gw}/v1/keys"), json!({"name": "slow", "rate_per_s": 1}));
    assert_eq!(status, 201, "{v}");
    let slow_key = v["key"].as_str().expect("key").to_string();
    // A standalone gateway (the view panels).
    let h = addr(free_port());
    let coordinators: Vec<String> = (1..=3).map(|id| g.member(id).quic.to_string()).collect();
    let _standalone = standalone_gateway(tmp.path(), "gw", h, Some((&coordinators.join(","), &token, &hash)));
    wait_until(Duration::from_secs(30), "the standalone gateway ready", || {
        matches!(get(&format!("http://{h}/readyz"), None), Some((200, _)))
    });

    // Prometheus, finding the targets through every coordinator's gateway.
    let key_file = tmp.path().join("api-key");
    std::fs::write(&key_file, API_KEY).expect("key file");
    let mut sd = String::new();
    for id in 1..=3 {
        sd += &format!(
            "      - url: http://{}/v1/prometheus/targets\n        refresh_interval: 2s\n        authorization:\n          type: Bearer\n          credentials_file: {}\n",
            g.member(id).http,
            key_file.display()
        );
    }
    std::fs::copy(root.join("cluster-configs/prometheus/alerts.yml"), tmp.path().join("alerts.yml")).expect("rules");
    let config = tmp.path().join("prometheus.yml");
    let yml = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - alerts.yml\nscrape_configs:\n  - job_name: shoal\n    http_sd_configs:\n{sd}    static_configs:\n      - targets: ['{h}']\n        labels: {{shoal_role: gateway}}\n"
    );
    std::fs::write(&config, yml).expect("config");
    let prom_addr = addr(free_port());
    let prom_args = [
        format!("--config.file={}", config.display()),
        format!("--storage.tsdb.path={}", tmp.path().join("tsdb").display()),
        format!("--web.listen-address={prom_addr}"),
    ];
    let child = std::process::Command::new(prometheus)
        .args(&prom_args)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(tmp.path().join("prometheus.log")).expect("log"))
        .spawn()
        .expect("prometheus");
    let _prom = Proc { child, log: tmp.path().join("prometheus.log") };
    let prom = format!("http://{prom_addr}");
    wait_until(Duration::from_secs(30), "prometheus ready", || {
        matches!(get(&format!("{prom}/-/ready"), None), Some((200, _)))
    });
    let query = |expr: &str| -> Value {
        let mut resp = agent(Duration::from_secs(10))
            .get(&format!("{prom}/api/v1/query"))
            .query("query", expr)
            .call()
            .expect("query");
        resp.body_mut().read_json().unwrap_or(Value::Null)
    };
    wait_until(Duration::from_secs(30), "every coordinator and node scraped", || {
        query("count(up{job=\"shoal\"} == 1)")["data"]["result"][0]["value"][1] == "6"
    });

    // A short load of everything the dashboards show, then the failures they watch for.
    for model in ["smol", "smol-split"] {
        for i in 0..3 {
            let msg = json!([{"role": "user", "content": format!("Count to {i}.")}]);
            let (status, v) =
                call(&format!("{gw}/v1/chat/completions"), json!({"model": model, "messages": msg, "max_tokens": 8}));
            assert_eq!(status, 200, "{model}: {v}");
        }
    }
    // An error at the replica: a prompt longer than the model's context.
    let long = json!([{"role": "user", "content": "word ".repeat(20_000)}]);
    let (status, _) =
        call(&format!("{gw}/v1/chat/completions"), json!({"model": "smol", "messages": long, "max_tokens": 4}));
    assert!(status >= 400, "an over-long prompt is refused");
    let user = |key: &str, path: &str, body: Value| post_raw(&format!("{gw}{path}"), &body.to_string(), Some(key));
    for i in 0..40 {
        let msg = json!([{"role": "user", "content": format!("hi {i}")}]);
        call(&format!("{gw}/v1/chat/completions"), json!({"model": "echo", "messages": msg}));
        call(&format!("{gw}/v1/embeddings"), json!({"model": "minilm", "input": ["otters"]}));
        for mode in ["dense", "sparse", "hybrid"] {
            call(&format!("{gw}/v1/knowledge-bases/docs/search"), json!({"query": "otters sleeping", "mode": mode}));
        }
        call(&format!("{gw}/v1/tokens"), json!({"ttl_seconds": 60}));
        if i % 10 == 0 {
            call(&format!("{gw}/v1/graphs/probe/runs"), json!({}));
            call(&format!("{gw}/v1/graphs/broken/runs"), json!({}));
            let d = json!({"id": format!("d{i}"), "text": format!("document number {i} about otters")});
            call(&format!("{gw}/v1/knowledge-bases/docs/documents"), d);
        }
        user("sk-wrong", "/v1/models", json!({}));
        user(&slow_key, "/v1/embeddings", json!({"model": "minilm", "input": ["x"]}));
        std::thread::sleep(Duration::from_millis(100));
    }
    // Every panel's query parses and returns data: the panels of a healthy cluster now,
    // the failure-only ones after the failures.
    let panels = |failure: bool| -> (Vec<String>, std::collections::BTreeSet<String>, usize) {
        let mut empty = Vec::new();
        let mut titles = std::collections::BTreeSet::new();
        let mut checked = 0;
        for entry in std::fs::read_dir(root.join("cluster-configs/grafana")).expect("dashboards") {
            let path = entry.expect("entry").path();
            let dash: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
            let file = path.file_name().and_then(|n| n.to_str()).unwrap_or("").to_string();
            for panel in dash["panels"].as_array().expect("panels") {
                let title = panel["title"].as_str().unwrap_or("").to_string();
                if panel["description"].as_str().unwrap_or("").contains("only under failure") != failure {
                    continue;
                }
                titles.insert(title.clone());
                for t in panel["targets"].as_array().cloned().unwrap_or_default() {
                    let expr = t["expr"]
                        .as_str()
                        .unwrap_or("")
                        .replace("$__rate_interval", "30s")
                        .replace("$__range", "5m")
                        .replace("$__interval", "5s");
                    let v = query(&expr);
                    assert_eq!(v["status"], "success", "{file}: {title}: {expr}: {v}");
                    checked += 1;
                    if v["data"]["result"].as_array().is_none_or(|r| r.is_empty()) {
                        empty.push(format!("{file} / {title}: {expr}"));
                    }
                }
            }
        }
        (empty, titles, checked)
    };
    std::thread::sleep(Duration::from_secs(3));
    let (empty, _, healthy_checked) = panels(false);
    assert!(empty.is_empty(), "panels without data on a healthy, loaded cluster:\n{}", empty.join("\n"));
    let intruder = tmp.path().join("intruder");
    let bad = run(&[
        "join",
        &quic,
        "--token",
        "abcdef.0123456789abcdef",
        "--ca-hash",
        &hash,
        "--data-dir",
        intruder.to_str().expect("utf8"),
    ]);
    assert!(!bad.status.success());
    // node-2 stopped past its lease (its incarnation is fenced: its next heartbeats are
    // refused and it registers again), then killed: requests in that moment are retried on
    // node-1, and the split model is left without a replica.
    let pid = n2.child.id().to_string();
    std::process::Command::new("kill").args(["-STOP", &pid]).status().expect("stop");
    std::thread::sleep(Duration::from_millis(3000));
    std::process::Command::new("kill").args(["-CONT", &pid]).status().expect("cont");
    std::thread::sleep(Duration::from_millis(2000));
    n2.kill();
    for i in 0..20 {
        let msg = json!([{"role": "user", "content": format!("after {i}")}]);
        call(&format!("{gw}/v1/chat/completions"), json!({"model": "echo", "messages": msg}));
    }
    wait_until(Duration::from_secs(20), "the split model has no replica", || {
        let msg = json!([{"role": "user", "content": "x"}]);
        call(&format!("{gw}/v1/chat/completions"), json!({"model": "smol-split", "messages": msg, "max_tokens": 2})).0
            == 503
    });
    wait_until(Duration::from_secs(30), "the dead node counted", || {
        query("max(shoal_cluster_nodes{state=\"dead\"})")["data"]["result"][0]["value"][1] == "1"
    });
    std::thread::sleep(Duration::from_secs(5));

    let (empty, failure_only, failure_checked) = panels(true);
    assert!(healthy_checked + failure_checked > 100, "only {} queries", healthy_checked + failure_checked);
    let exempt: Vec<&str> = NOT_PROVOKED.iter().map(|(t, _)| *t).collect();
    for t in &exempt {
        assert!(failure_only.contains(*t), "{t} is exempt but not a failure-only panel");
    }
    let unexplained: Vec<&String> =
        empty.iter().filter(|e| !exempt.iter().any(|t| e.contains(&format!("/ {t}:")))).collect();
    let list: Vec<&str> = unexplained.iter().map(|s| s.as_str()).collect();
    assert!(unexplained.is_empty(), "failure-only panels without data after the failures:\n{}", list.join("\n"));
}
