use clap::Args;
use serde_json::Value;

use super::client::GatewayArgs;
use super::format::{bytes, table};

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the raw JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

fn accel_summary(n: &Value) -> String {
    let accels = n["capacity"]["accelerators"].as_array().cloned().unwrap_or_default();
    if accels.is_empty() {
        return "-".into();
    }
    accels
        .iter()
        .map(|a| {
            format!(
                "{} {} {}",
                a["kind"].as_str().unwrap_or("?"),
                a["model"].as_str().unwrap_or("?"),
                bytes(a["memory_total_bytes"].as_u64().unwrap_or(0))
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A placement's node, with the layers it runs when the model is split:
/// `node-a (name) [layers 0-15, stage 1/2]` (layers as a half-open range).
fn node_cell(p: &Value) -> String {
    let node = format!("{} ({})", p["node"].as_str().unwrap_or(""), p["node_name"].as_str().unwrap_or(""));
    let stage = &p["stage"];
    if stage.is_null() {
        return node;
    }
    format!(
        "{node} [layers {}-{}, stage {}/{}]",
        stage["layers"][0],
        stage["layers"][1],
        stage["index"].as_u64().unwrap_or(0) + 1,
        stage["count"]
    )
}

/// The DEPLOYMENTS section: one row per replica (per stage of a split model).
pub fn deployments_table(deployments: &Value) -> String {
    let list = deployments["data"].as_array().cloned().unwrap_or_default();
    let mut rows: Vec<Vec<String>> = Vec::new();
    for d in &list {
        let name = d["name"].as_str().unwrap_or("").to_string();
        let model = format!("{} v{}", d["model"].as_str().unwrap_or(""), d["version"]);
        let want = format!("{}/{}", d["ready_replicas"], d["replicas"]);
        let placements = d["placements"].as_array().cloned().unwrap_or_default();
        for p in &placements {
            rows.push(vec![
                name.clone(),
                model.clone(),
                want.clone(),
                node_cell(p),
                p["state"].as_str().unwrap_or("").into(),
                p["message"].as_str().unwrap_or("").into(),
            ]);
        }
        // What is still missing (none placed, or only some), and the rule that says why.
        let pending = d["pending"].as_str().unwrap_or("");
        if placements.is_empty() || !pending.is_empty() {
            rows.push(vec![name, model, want, "-".into(), "pending".into(), pending.into()]);
        }
    }
    let mut out = format!("DEPLOYMENTS ({})\n", list.len());
    out.push_str(&table(&["NAME", "MODEL", "READY", "NODE", "STATE", "MESSAGE"], &rows));
    out
}

/// How long `shoal status` waits for a leader before showing what it can.
const STATUS_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

pub async fn run(a: StatusArgs) -> anyhow::Result<()> {
    a.gateway.settle(STATUS_PATIENCE, false).await?;
    let cluster = a.gateway.get("/v1/cluster").await?;
    let nodes = a.gateway.get("/v1/nodes").await?;
    let deployments = a.gateway.get("/v1/deployments").await?;
    if a.json {
        let all = serde_json::json!({"cluster": cluster, "nodes": nodes["nodes"], "deployments": deployments["data"]});
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    let members = cluster["members"].as_array().cloned().unwrap_or_default();
    let rows: Vec<Vec<String>> = members
        .iter()
        .map(|m| {
            let role = if m["leader"].as_bool() == Some(true) {
                "leader"
            } else if m["voter"].as_bool() == Some(true) {
                "voter"
            } else {
                "not a voter"
            };
            vec![
                m["id"].to_string(),
                m["quic"].as_str().unwrap_or("").into(),
                m["http"].as_str().unwrap_or("").into(),
                role.into(),
            ]
        })
        .collect();
    println!("COORDINATORS");
    print!("{}", table(&["ID", "QUIC", "HTTP", "ROLE"], &rows));
    println!(
        "leader {} · term {} · commit {} · applied {}",
        cluster["leader_id"], cluster["term"], cluster["commit_index"], cluster["applied_index"]
    );
    println!();
    let list = nodes["nodes"].as_array().cloned().unwrap_or_default();
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|n| {
            let hb = match n["last_heartbeat_age_ms"].as_u64() {
                Some(ms) => format!("{:.1}s ago", ms as f64 / 1000.0),
                None => "-".into(),
            };
            let load = match n["load"]["cpu_load_milli"].as_u64() {
                Some(l) => format!("{:.2}", l as f64 / 1000.0),
                None => "-".into(),
            };
            vec![
                n["id"].as_str().unwrap_or("").into(),
                n["name"].as_str().unwrap_or("").into(),
                n["state"].as_str().unwrap_or("").into(),
                n["generation"].to_string(),
                n["capacity"]["cpu_cores"].to_string(),
                bytes(n["capacity"]["memory_total_bytes"].as_u64().unwrap_or(0)),
                accel_summary(n),
                load,
                hb,
            ]
        })
        .collect();
    println!("NODES ({})", list.len());
    print!(
        "{}",
        table(&["ID", "NAME", "STATE", "GEN", "CPUS", "RAM", "ACCELERATORS", "LOAD", "LAST HEARTBEAT"], &rows)
    );
    println!();
    print!("{}", deployments_table(&deployments));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn deployments_show_the_layers_each_stage_runs() {
        let stage =
            |index: u32, start: u32, end: u32| json!({"chain": 0, "index": index, "count": 2, "layers": [start, end]});
        let all = json!({"data": [{
            "name": "big", "model": "m", "version": 1, "replicas": 1, "ready_replicas": 0, "shards": 2,
            "placements": [
                {"node": "n1", "node_name": "a", "state": "ready", "message": "", "stage": stage(0, 0, 15)},
                {"node": "n2", "node_name": "b", "state": "loading", "message": "", "stage": stage(1, 15, 30)},
            ],
        }, {
            "name": "small", "model": "s", "version": 2, "replicas": 1, "ready_replicas": 1, "shards": 0,
            "placements": [{"node": "n3", "node_name": "c", "state": "ready", "message": "", "stage": null}],
        }]});
        let text = deployments_table(&all);
        assert!(text.contains("DEPLOYMENTS (2)"), "{text}");
        assert!(text.contains("n1 (a) [layers 0-15, stage 1/2]"), "{text}");
        assert!(text.contains("n2 (b) [layers 15-30, stage 2/2]"), "{text}");
        assert!(text.lines().any(|l| l.contains("n3 (c)") && !l.contains("layers")), "{text}");
        assert!(!text.contains("pending"), "nothing is missing: {text}");
    }

    #[test]
    fn a_partly_placed_deployment_says_what_is_missing() {
        let all = json!({"data": [{
            "name": "d", "model": "m", "version": 1, "replicas": 2, "ready_replicas": 1, "shards": 0,
            "pending": "1 of 2 replicas placed: one replica per node: the 1 ready nodes with room already hold one",
            "placements": [{"node": "n1", "node_name": "a", "state": "ready", "message": "", "stage": null}],
        }]});
        let text = deployments_table(&all);
        assert!(text.lines().any(|l| l.contains("n1 (a)") && l.contains("ready")), "{text}");
        assert!(text.lines().any(|l| l.contains("pending") && l.contains("one replica per node")), "{text}");
    }
}
