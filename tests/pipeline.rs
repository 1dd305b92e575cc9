//! Models split across nodes (pipeline-parallel stages) through real processes: a coordinator
//! and three `shoal join` nodes on loopback, SmolLM2 deployed whole, in 2 and in 3 stages.
//! The split deployments must give exactly the unsplit model's greedy answers (alone and in
//! concurrent streams), free every stage's KV cache when a client goes away, fail a request
//! with a clear error when a stage stalls, and serve again without operator action after a
//! stage's node is killed.

mod support;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

const PROMPTS: [&str; 3] =
    ["What is the capital of France? Answer briefly.", "Write a short poem about the sea.", "List three fruits."];

/// `shoal deploy NAME --source SmolLM2 ARGS --wait-ready 1`; returns its output.
fn deploy(gw: &str, name: &str, args: &[&str]) -> String {
    let gguf = gguf();
    let mut all = vec!["deploy", name, "--source", gguf.to_str().expect("utf8")];
    all.extend(args);
    all.extend(["--wait-ready", "1", "--timeout", "240", "--gateway", gw]);
    let out = run(&all);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "deploy {name} failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    text
}

/// (node name, stage index, [layer start, layer end]) of each placement, by stage.
fn stages(gw: &str, name: &str) -> Vec<(String, u64, Vec<u64>)> {
    let d = get_json(&format!("{gw}/v1/deployments/{name}")).expect("deployment");
    let mut out: Vec<(String, u64, Vec<u64>)> = d["placements"]
        .as_array()
        .expect("placements")
        .iter()
        .filter(|p| !p["stage"].is_null())
        .map(|p| {
            let layers = p["stage"]["layers"].as_array().expect("layers").iter().filter_map(Value::as_u64).collect();
            (p["node_name"].as_str().unwrap_or("").to_string(), p["stage"]["index"].as_u64().unwrap_or(99), layers)
        })
        .collect();
    out.sort_by_key(|s| s.1);
    out
}

fn signal(proc: &Proc, sig: &str) {
    let status = Command::new("kill").args([sig, &proc.child.id().to_string()]).status().expect("kill");
    assert!(status.success(), "kill {sig}");
}

#[test]
fn split_models_answer_like_the_whole_model_and_recover_from_lost_stages() {
    // A long lease: a stalled stage must be caught by the stage timeout (2 s), not by the lease.
    let mesh = Mesh::start(&["node-a", "node-b", "node-c"], 6000, &["--stage-timeout", "2"]);
    let gw = mesh.gateway();
    deploy(&gw, "whole", &["--shards", "1"]);
    let two = deploy(&gw, "split2", &["--shards", "2"]);
    assert!(two.contains("split2"), "{two}");
    deploy(&gw, "split3", &["--shards", "3"]);

    // The plans: contiguous layer ranges over distinct nodes, memory-weighted (equal nodes → equal shares).
    let s2 = stages(&gw, "split2");
    assert_eq!(s2.iter().map(|s| s.2.clone()).collect::<Vec<_>>(), vec![vec![0, 15], vec![15, 30]], "{s2:?}");
    let s3 = stages(&gw, "split3");
    assert_eq!(
        s3.iter().map(|s| s.2.clone()).collect::<Vec<_>>(),
        vec![vec![0, 10], vec![10, 20], vec![20, 30]],
        "{s3:?}"
    );
    assert_eq!(s3.iter().map(|s| s.0.clone()).collect::<BTreeSet<_>>().len(), 3, "one stage per node: {s3:?}");
    let status = run(&["status", "--gateway", &gw]);
    let status_text = String::from_utf8_lossy(&status.stdout);
    assert!(status_text.contains("split3") && status_text.contains("10-20"), "{status_text}");

    // Same greedy answers as the unsplit model, prompt by prompt.
    let reference: Vec<String> = PROMPTS.iter().map(|p| chat_once(&gw, "whole", p, 40)).collect();
    assert!(reference[0].contains("Paris"), "{reference:?}");
    for name in ["split2", "split3"] {
        for (p, want) in PROMPTS.iter().zip(&reference) {
            assert_eq!(&chat_once(&gw, name, p, 40), want, "{name} answered '{p}' differently");
        }
    }
    // Concurrent streams: several sequences in flight through the pipeline at once.
    let burst: Vec<_> = (0..6)
        .map(|i| {
            let gw = gw.clone();
            std::thread::spawn(move || (i, stream_chat(&gw, "split3", PROMPTS[i % 3], 40)))
        })
        .collect();
    for h in burst {
        let (i, (text, err)) = h.join().expect("thread");
        assert_eq!(err, None, "stream {i}");
        assert_eq!(text, reference[i % 3], "stream {i} through 3 stages differs from the whole model");
    }
    // Activations crossed the hops; each hop's latency was measured.
    // f32 by default: 4 bytes per value, SmolLM2's 576 values per token.
    let bytes = mesh.node_metric("shoal_node_stage_activation_bytes_total");
    let rows = mesh.node_metric("shoal_node_stage_activation_rows_total");
    assert!(rows > 0.0);
    assert_eq!(bytes / rows, 576.0 * 4.0, "{bytes} bytes for {rows} tokens");
    assert!(mesh.node_metric("shoal_node_stage_hop_duration_seconds_count") > 0.0);
    assert!(mesh.node_metric("shoal_node_stage_forward_duration_seconds_count") > 0.0);

    // A client that hangs up: the sequence stops on every stage and every KV cache empties.
    let cancelled = mesh.node_metric("shoal_node_sequences_cancelled_total");
    abandon_stream(&gw, "split3");
    wait_until(Duration::from_secs(30), "the head cancels the abandoned sequence", || {
        mesh.node_metric("shoal_node_sequences_cancelled_total") > cancelled
    });
    wait_until(Duration::from_secs(30), "every stage frees its KV cache", || {
        mesh.node_metric("shoal_node_kv_cache_tokens") == 0.0
            && mesh.node_metric("shoal_node_stage_kv_cache_tokens") == 0.0
            && mesh.node_metric("shoal_node_stage_sequences") == 0.0
    });

    // A stalled last stage (SIGSTOP): the request fails with a clear error instead of hanging.
    let last = mesh.member(&s3[2].0);
    signal(&last.proc, "-STOP");
    let started = Instant::now();
    let (status, body) = post(
        &format!("{gw}/v1/chat/completions"),
        json!({"model": "split3", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}),
    );
    let waited = started.elapsed();
    signal(&last.proc, "-CONT");
    assert_eq!(status, 503, "{body}");
    let msg = body["error"]["message"].as_str().unwrap_or("").to_string();
    assert!(msg.contains("did not answer within"), "{msg}");
    assert!(waited < Duration::from_secs(15), "the stalled stage held the request for {waited:?}");

    // SIGKILL the node of split2's second stage while streams run: each stream either
    // completes with the reference text or ends with an error; none hangs.
    wait_until(Duration::from_secs(60), "split2 ready again after the stall", || {
        get_json(&format!("{gw}/v1/deployments/split2")).is_some_and(|d| d["ready_replicas"] == 1)
    });
    let s2 = stages(&gw, "split2");
    let victim = s2[1].0.clone();
    let burst: Vec<_> = (0..4)
        .map(|i| {
            let gw = gw.clone();
            std::thread::spawn(move || (i, stream_chat(&gw, "split2", PROMPTS[i % 3], 64)))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(800));
    let victim_proc = &mesh.member(&victim).proc;
    signal(victim_proc, "-KILL");
    for h in burst {
        let (i, (text, err)) = h.join().expect("thread");
        // A stream that finished before the kill is exact; the others end with an error event.
        if err.is_none() {
            assert_eq!(text, reference[i % 3], "stream {i}");
        }
    }
    // The coordinator re-places the lost stage (same layers) on the spare node; serving resumes.
    wait_until(Duration::from_secs(120), "split2 re-placed and ready", || {
        let s = stages(&gw, "split2");
        get_json(&format!("{gw}/v1/deployments/split2")).is_some_and(|d| d["ready_replicas"] == 1)
            && s.len() == 2
            && s.iter().all(|x| x.0 != victim)
    });
    let s2 = stages(&gw, "split2");
    assert_eq!(s2.iter().map(|s| s.2.clone()).collect::<Vec<_>>(), vec![vec![0, 15], vec![15, 30]], "{s2:?}");
    assert_eq!(chat_once(&gw, "split2", PROMPTS[0], 40), reference[0]);
}

#[test]
fn a_model_too_big_for_any_node_is_split_automatically() {
    // Each node declares 350 MiB of accelerator memory: the whole model (≈380 MiB with its
    // overhead) fits on none, two stages fit on two. Activations go in bf16.
    let mesh =
        Mesh::start(&["node-x", "node-y"], 1500, &["--accelerator", "npu:sim:350MiB", "--stage-activations", "bf16"]);
    let gw = mesh.gateway();
    deploy(&gw, "auto", &[]);
    let s = stages(&gw, "auto");
    assert_eq!(s.len(), 2, "{s:?}");
    assert_eq!(s[0].2[0], 0);
    assert_eq!(s[1].2[1], 30);
    assert_eq!(s[0].2[1], s[1].2[0], "contiguous: {s:?}");
    assert!(chat_once(&gw, "auto", PROMPTS[0], 24).contains("Paris"));
    // Half the bytes of f32 per token crossed the hop.
    let bytes = mesh.node_metric("shoal_node_stage_activation_bytes_total");
    let rows = mesh.node_metric("shoal_node_stage_activation_rows_total");
    assert!(rows > 0.0);
    assert_eq!(bytes / rows, 576.0 * 2.0, "{bytes} bytes for {rows} tokens");
}
