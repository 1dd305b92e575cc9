//! `shoal bench pipeline`: decode through a model split across nodes. Starts `shoal up` (one
//! node) and joins two more `shoal join` nodes on loopback, deploys SmolLM2 whole, in 2 and in
//! 3 stages, and measures each through the gateway in the same run: single-stream and
//! concurrent decode tokens/s, activation bytes per token per hop and the transport time each
//! hop adds (from the nodes' metrics).

use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use serde_json::json;

use super::bench_serve::{
    agent, concurrent_streams, get, post, shoal_command, single_stream, start_up, stream_once, Decode, DecodeArgs,
};
use super::join::StageActivations;

const CHAT: &str = "smollm2-135m-instruct";

#[derive(Debug, Args)]
pub struct PipelineBench {
    #[command(flatten)]
    pub decode: DecodeArgs,
    /// Pin each node process to one CPU core (node i to core i mod cores), so that the nodes
    /// compute side by side like separate machines instead of sharing every core.
    #[arg(long)]
    pub pin: bool,
    /// How the stages send activations (every node's `--stage-activations`).
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = StageActivations::F32)]
    pub stage_activations: StageActivations,
}

struct Joined(Vec<Child>);

impl Drop for Joined {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Sums every series of `name` in a Prometheus text page, by its `stage` label.
fn by_stage(page: &str, name: &str, into: &mut BTreeMap<String, f64>) {
    for line in page.lines().filter(|l| l.starts_with(name) && !l.starts_with('#')) {
        let (series, value) = match line.rsplit_once(' ') {
            Some((s, v)) => (s, v.parse::<f64>().unwrap_or(0.0)),
            None => continue,
        };
        if series.len() > name.len() && !series[name.len()..].starts_with('{') {
            continue; // another metric with this prefix
        }
        let stage = series.split("stage=\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or("?").to_string();
        *into.entry(stage).or_insert(0.0) += value;
    }
}

fn sum_by_stage(pages: &[String], metric: &str) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    for p in pages {
        by_stage(p, metric, &mut m);
    }
    m
}

/// Activation bytes per token and mean transport time of each hop between two snapshots.
fn hop_notes(before: &[String], after: &[String]) -> String {
    let delta = |metric: &str| {
        let (b, a) = (sum_by_stage(before, metric), sum_by_stage(after, metric));
        a.into_iter().map(|(k, v)| (k.clone(), v - b.get(&k).copied().unwrap_or(0.0))).collect::<BTreeMap<_, _>>()
    };
    let (bytes, rows) =
        (delta("shoal_node_stage_activation_bytes_total"), delta("shoal_node_stage_activation_rows_total"));
    let (hop_sum, hop_n) =
        (delta("shoal_node_stage_hop_duration_seconds_sum"), delta("shoal_node_stage_hop_duration_seconds_count"));
    let mut notes = Vec::new();
    for (stage, n) in &hop_n {
        if *n > 0.0 {
            let b = bytes.get(stage).copied().unwrap_or(0.0) / rows.get(stage).copied().unwrap_or(1.0).max(1.0);
            let ms = hop_sum.get(stage).copied().unwrap_or(0.0) / n * 1e3;
            let next = stage.parse::<u32>().unwrap_or(0) + 1;
            notes.push(format!("{stage}→{next}: {b:.0} B/token, {ms:.3} ms"));
        }
    }
    if notes.is_empty() {
        "-".into()
    } else {
        notes.join("; ")
    }
}

fn metrics_pages(urls: &[String]) -> Vec<String> {
    urls.iter()
        .filter_map(|u| {
            let mut r = agent().get(&format!("{u}/metrics")).call().ok()?;
            r.body_mut().read_to_string().ok()
        })
        .collect()
}

pub fn run(a: PipelineBench) -> anyhow::Result<()> {
    let gguf = a.decode.models.join("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !gguf.is_file() {
        bail!("{} is missing: run ./scripts/fetch-models.sh", gguf.display());
    }
    let gguf = std::fs::canonicalize(&gguf)?;
    eprintln!("starting shoal up and joining two more nodes…");
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let core = |i: usize| a.pin.then_some(i % cores);
    let format = a.stage_activations.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default();
    let up = start_up(&a.decode.models, core(0), &["--stage-activations", &format])?;
    let gw = up.gateway.clone();
    let ag = agent();
    let t = post(&ag, &format!("{gw}/v1/tokens"), &json!({"ttl_seconds": 3600}))?;
    let (token, hash) = (t["token"].as_str().unwrap_or_default(), t["ca_hash"].as_str().unwrap_or_default());
    let mut joined = Joined(Vec::new());
    let mut metrics = vec![gw.clone()];
    for i in 0..2 {
        let (listen, m) = (super::bench::free_port(), super::bench::free_port());
        let log = std::fs::File::create(up.dir.path().join(format!("node{i}.log")))?;
        let child = shoal_command(core(i + 1))?
            .args(["join", &up.quic, "--token", token, "--ca-hash", hash, "--data-dir"])
            .arg(up.dir.path().join(format!("node{i}")))
            .args(["--listen", &format!("127.0.0.1:{listen}"), "--metrics", &format!("127.0.0.1:{m}")])
            .args(["--name", &format!("bench-node-{i}"), "--stage-activations", &format])
            .env("SHOAL_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .context("starting shoal join")?;
        joined.0.push(child);
        metrics.push(format!("http://127.0.0.1:{m}"));
    }
    let source = format!("file://{}", gguf.display());
    for (name, shards) in [("split2", 2), ("split3", 3)] {
        let body = json!({"name": name, "source": source, "replicas": 1, "shards": shards});
        let deadline = Instant::now() + Duration::from_secs(120);
        // Wait for the nodes to be ready before planning a chain over them.
        while get(&format!("{gw}/v1/nodes"))
            .and_then(|v| v["nodes"].as_array().map(|n| n.iter().filter(|n| n["state"] == "ready").count()))
            .unwrap_or(0)
            < 3
        {
            if Instant::now() > deadline {
                bail!("the joined nodes did not become ready");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        post(&ag, &format!("{gw}/v1/deployments"), &body)?;
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    for name in ["split2", "split3"] {
        while get(&format!("{gw}/v1/deployments/{name}")).and_then(|d| d["ready_replicas"].as_u64()).unwrap_or(0) < 1 {
            if Instant::now() > deadline {
                bail!("{name} did not become ready within 300 s");
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    let mut results: Vec<(&str, Decode, String, String)> = Vec::new();
    for (name, label) in [(CHAT, "1 stage"), ("split2", "2 stages"), ("split3", "3 stages")] {
        eprintln!("{label}: 1 stream, then {} concurrent streams of {} tokens…", a.decode.streams, a.decode.tokens);
        stream_once(&gw, name, 16)?; // warm
        let before = metrics_pages(&metrics);
        let (single, ttft) = single_stream(&gw, name, a.decode.tokens)?;
        let middle = metrics_pages(&metrics);
        let (aggregate, end_to_end) = concurrent_streams(&gw, name, a.decode.tokens, a.decode.streams)?;
        let after = metrics_pages(&metrics);
        let d = Decode { single, ttft, aggregate, end_to_end };
        results.push((label, d, hop_notes(&before, &middle), hop_notes(&middle, &after)));
    }
    let base = results[0].1.single;
    let base_agg = results[0].1.aggregate;
    println!(
        "decode tokens/s through the gateway; hops ({format} activations): activation bytes per token and mean transport time"
    );
    for (label, d, single_hops, multi_hops) in &results {
        println!(
            "{label:<9} 1 stream {:>6.1} tok/s ({:.2}× 1 stage)   {} streams {:>6.1} tok/s ({:.2}× 1 stage)",
            d.single,
            d.single / base.max(1e-9),
            a.decode.streams,
            d.aggregate,
            d.aggregate / base_agg.max(1e-9),
        );
        println!("          hops alone: {single_hops}");
        println!("          hops with {} streams: {multi_hops}", a.decode.streams);
    }
    println!(
        "TTFT: {}",
        results.iter().map(|(l, d, _, _)| format!("{l} {:.0} ms", d.ttft * 1e3)).collect::<Vec<_>>().join(", ")
    );
    if a.pin {
        println!("(node i pinned to core i mod {cores}: the shoal up node and the 3rd node share core 0)");
    } else {
        println!("(all nodes share this machine's {cores} cores; on separate machines each stage has its own)");
    }
    Ok(())
}
