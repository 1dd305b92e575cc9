//! `shoal graph`: task graphs — apply a definition, list graphs, run one (streaming its
//! events), list runs, show a run step by step, rerun from a step, cancel.
//!
//! `shoal db`: the databases graphs read (text-to-SQL, read-only).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{anyhow, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::client::GatewayArgs;
use super::format::table;

#[derive(Debug, Subcommand)]
pub enum GraphCommand {
    /// Check a definition (YAML or JSON) and store it as a new version; every problem is
    /// listed when it does not check.
    Apply(ApplyArgs),
    /// List the graphs: built-ins (qa-llm, qa-kb, qa-db, qa-auto) and registered ones.
    List(JsonArgs),
    /// Run a graph and stream its events (steps, tokens, outputs). Interrupting this
    /// command does not cancel the run: `shoal graph cancel RUN` does.
    Run(RunArgs),
    /// List runs, newest first.
    Runs(RunsArgs),
    /// Show a run: every step's status, attempts, timing, where it ran, output and error.
    Show(ShowArgs),
    /// Run again from a step, reusing the committed results of the steps before it.
    Rerun(RerunArgs),
    /// Cancel a running run.
    Cancel(ShowArgs),
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The definition file (YAML or JSON).
    pub file: PathBuf,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

#[derive(Debug, Args)]
pub struct JsonArgs {
    /// Print the raw JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    pub name: String,
    /// An input, `key=value` (repeat it). A value that parses as JSON (a number, true,
    /// a list) is passed as that; anything else as text.
    #[arg(long = "input", short = 'i', value_name = "KEY=VALUE")]
    pub inputs: Vec<String>,
    /// Print only the outputs, as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

#[derive(Debug, Args)]
pub struct RunsArgs {
    /// Only runs of this graph.
    #[arg(long)]
    pub graph: Option<String>,
    /// Only runs in this state: running, succeeded, failed, cancelled.
    #[arg(long)]
    pub status: Option<String>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The run's id (`shoal graph runs` lists them).
    pub run: String,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

#[derive(Debug, Args)]
pub struct RerunArgs {
    pub run: String,
    /// The first step to run again (every step after it runs again too).
    #[arg(long)]
    pub from: String,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

/// `key=value` inputs as a JSON object.
pub fn parse_inputs(pairs: &[String]) -> anyhow::Result<Value> {
    let mut out = serde_json::Map::new();
    for p in pairs {
        let (k, v) = p.split_once('=').ok_or_else(|| anyhow!("--input {p:?}: write it as key=value"))?;
        let value = serde_json::from_str::<Value>(v)
            .ok()
            .filter(|x| !x.is_string() || v.starts_with('"'))
            .unwrap_or_else(|| Value::String(v.to_string()));
        out.insert(k.trim().to_string(), value);
    }
    Ok(Value::Object(out))
}

fn short(v: &Value, max: usize) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let s = s.replace('\n', " ");
    if s.chars().count() > max {
        format!("{}…", s.chars().take(max).collect::<String>())
    } else {
        s
    }
}

pub async fn run(cmd: GraphCommand) -> anyhow::Result<()> {
    match cmd {
        GraphCommand::Apply(a) => {
            let bytes = std::fs::read(&a.file).with_context(|| format!("cannot read {}", a.file.display()))?;
            let ct =
                if a.file.extension().is_some_and(|e| e == "json") { "application/json" } else { "application/yaml" };
            let v = a.gateway.post_bytes("/v1/graphs", ct, bytes).await?;
            let what = if v["created"] == json!(true) { "stored" } else { "unchanged (same definition)" };
            println!("graph {} v{} {what}", v["name"].as_str().unwrap_or("?"), v["version"]);
            Ok(())
        }
        GraphCommand::List(a) => {
            let v = a.gateway.get("/v1/graphs").await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = v["data"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|g| {
                    let inputs: Vec<String> =
                        g["inputs"].as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
                    vec![
                        g["name"].as_str().unwrap_or("").to_string(),
                        if g["builtin"] == json!(true) { "built-in".into() } else { format!("v{}", g["version"]) },
                        inputs.join(", "),
                        g["steps"].as_array().map_or(0, |s| s.len()).to_string(),
                        short(&g["description"], 60),
                    ]
                })
                .collect();
            print!("{}", table(&["NAME", "VERSION", "INPUTS", "STEPS", "DESCRIPTION"], &rows));
            Ok(())
        }
        GraphCommand::Run(a) => {
            let inputs = parse_inputs(&a.inputs)?;
            let path = format!("/v1/graphs/{}/runs", a.name);
            stream(&a.gateway, &path, json!({"inputs": inputs, "stream": true}), a.json).await
        }
        GraphCommand::Rerun(a) => {
            let path = format!("/v1/runs/{}/rerun", a.run);
            stream(&a.gateway, &path, json!({"from": a.from, "stream": true}), a.json).await
        }
        GraphCommand::Runs(a) => {
            let mut q = Vec::new();
            if let Some(g) = &a.graph {
                q.push(format!("graph={g}"));
            }
            if let Some(s) = &a.status {
                q.push(format!("status={s}"));
            }
            let path = if q.is_empty() { "/v1/runs".to_string() } else { format!("/v1/runs?{}", q.join("&")) };
            let v = a.gateway.get(&path).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = v["data"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    let took = r["finished_at_ms"]
                        .as_u64()
                        .unwrap_or(0)
                        .saturating_sub(r["created_at_ms"].as_u64().unwrap_or(0));
                    vec![
                        r["id"].as_str().unwrap_or("").to_string(),
                        r["graph"].as_str().unwrap_or("").to_string(),
                        r["status"].as_str().unwrap_or("").to_string(),
                        r["steps_finished"].to_string(),
                        if r["status"] == "running" { "-".into() } else { format!("{:.1} s", took as f64 / 1000.0) },
                        short(&r["error"], 60),
                    ]
                })
                .collect();
            print!("{}", table(&["RUN", "GRAPH", "STATUS", "STEPS DONE", "TOOK", "ERROR"], &rows));
            Ok(())
        }
        GraphCommand::Show(a) => {
            let v = a.gateway.get(&format!("/v1/runs/{}", a.run)).await?;
            print_run(&v, a.json)
        }
        GraphCommand::Cancel(a) => {
            let v = a.gateway.delete(&format!("/v1/runs/{}", a.run)).await?;
            println!("run {} {}", a.run, v["status"].as_str().unwrap_or("?"));
            Ok(())
        }
    }
}

fn print_run(v: &Value, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        println!("{}", serde_json::to_string_pretty(v)?);
        return Ok(());
    }
    println!(
        "run {}  graph {} v{}  {}",
        v["id"].as_str().unwrap_or(""),
        v["graph"].as_str().unwrap_or(""),
        v["version"],
        v["status"].as_str().unwrap_or("")
    );
    let rows: Vec<Vec<String>> = v["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            vec![
                s["id"].as_str().unwrap_or("").to_string(),
                s["kind"].as_str().unwrap_or("").to_string(),
                s["status"].as_str().unwrap_or("").to_string(),
                s["attempts"].as_u64().map_or(String::new(), |n| n.to_string()),
                s["duration_ms"].as_u64().map_or(String::new(), |n| format!("{n} ms")),
                s["ran_on"].as_str().unwrap_or("").to_string(),
                if s["error"].as_str().is_some_and(|e| !e.is_empty()) {
                    short(&s["error"], 50)
                } else {
                    short(&s["output"], 50)
                },
            ]
        })
        .collect();
    print!("{}", table(&["STEP", "KIND", "STATUS", "TRIES", "TOOK", "RAN ON", "OUTPUT / ERROR"], &rows));
    if !v["outputs"].is_null() {
        println!("outputs: {}", serde_json::to_string_pretty(&v["outputs"])?);
    }
    if v["error"].as_str().is_some_and(|e| !e.is_empty()) {
        println!("error: {}", v["error"].as_str().unwrap_or(""));
    }
    Ok(())
}

/// Streams a run's events to the terminal; fails (non-zero exit) when the run does not
/// succeed.
async fn stream(gateway: &GatewayArgs, path: &str, body: Value, as_json: bool) -> anyhow::Result<()> {
    let last = std::sync::Arc::new(std::sync::Mutex::new(Value::Null));
    let seen = last.clone();
    let mut in_tokens = false;
    gateway
        .post_events(path, body, move |ev| {
            let mut out = std::io::stderr();
            match ev["event"].as_str().unwrap_or("") {
                "run_started" if !as_json => {
                    let _ = writeln!(
                        out,
                        "run {} of {} started",
                        ev["run"].as_str().unwrap_or(""),
                        ev["graph"].as_str().unwrap_or("")
                    );
                }
                "step_started" if !as_json => {
                    let _ = writeln!(
                        out,
                        "  {} ({}) …",
                        ev["step"].as_str().unwrap_or(""),
                        ev["kind"].as_str().unwrap_or("")
                    );
                }
                "token" if !as_json => {
                    let _ = write!(out, "{}", ev["text"].as_str().unwrap_or(""));
                    let _ = out.flush();
                    in_tokens = true;
                }
                "step_finished" if !as_json => {
                    if in_tokens {
                        let _ = writeln!(out);
                        in_tokens = false;
                    }
                    let detail = if ev["error"].as_str().is_some_and(|e| !e.is_empty()) {
                        short(&ev["error"], 100)
                    } else {
                        short(&ev["output"], 100)
                    };
                    let _ = writeln!(
                        out,
                        "  {} {}: {detail}",
                        ev["step"].as_str().unwrap_or(""),
                        ev["status"].as_str().unwrap_or("")
                    );
                }
                "run_finished" => *seen.lock().unwrap_or_else(|p| p.into_inner()) = ev,
                _ => {}
            }
        })
        .await?;
    let end = last.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if end.is_null() {
        return Err(anyhow!("the event stream ended before the run did; see `shoal graph runs`"));
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&end["outputs"])?);
    } else {
        println!("run {} {}", end["id"].as_str().unwrap_or(""), end["status"].as_str().unwrap_or(""));
        if !end["outputs"].is_null() {
            println!("{}", serde_json::to_string_pretty(&end["outputs"])?);
        }
    }
    match end["status"].as_str() {
        Some("succeeded") => Ok(()),
        _ => Err(anyhow!(
            "run {} {}: {}",
            end["id"].as_str().unwrap_or(""),
            end["status"].as_str().unwrap_or("?"),
            end["error"].as_str().unwrap_or("")
        )),
    }
}

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Register a database for sql steps and the qa-db graph (read-only: the SQL a model
    /// writes is checked, and runs in a read-only session). It must be reachable.
    Add(DbAddArgs),
    /// List the registered databases (passwords redacted).
    List(JsonArgs),
    /// Unregister a database.
    Rm(DbRmArgs),
}

#[derive(Debug, Args)]
pub struct DbAddArgs {
    pub name: String,
    /// A SQLite file (its path as the coordinators see it).
    #[arg(long, conflicts_with = "postgres", required_unless_present = "postgres")]
    pub sqlite: Option<PathBuf>,
    /// A PostgreSQL URL (postgres://user:password@host:port/db); use a role that can only read.
    #[arg(long)]
    pub postgres: Option<String>,
    #[arg(long, default_value = "")]
    pub description: String,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

#[derive(Debug, Args)]
pub struct DbRmArgs {
    pub name: String,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

pub async fn run_db(cmd: DbCommand) -> anyhow::Result<()> {
    match cmd {
        DbCommand::Add(a) => {
            let mut body = json!({"name": a.name, "description": a.description});
            if let Some(p) = &a.sqlite {
                let abs = std::path::absolute(p).with_context(|| format!("{}", p.display()))?;
                body["sqlite"] = json!(abs.display().to_string());
            }
            if let Some(u) = &a.postgres {
                body["postgres"] = json!(u);
            }
            let v = a.gateway.post("/v1/databases", body).await?;
            println!(
                "database {} added ({} {})",
                a.name,
                v["kind"].as_str().unwrap_or(""),
                v["location"].as_str().unwrap_or("")
            );
            Ok(())
        }
        DbCommand::List(a) => {
            let v = a.gateway.get("/v1/databases").await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = v["data"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|d| {
                    ["name", "kind", "location", "description"]
                        .iter()
                        .map(|k| d[*k].as_str().unwrap_or("").to_string())
                        .collect()
                })
                .collect();
            print!("{}", table(&["NAME", "KIND", "LOCATION", "DESCRIPTION"], &rows));
            Ok(())
        }
        DbCommand::Rm(a) => {
            a.gateway.delete(&format!("/v1/databases/{}", a.name)).await?;
            println!("database {} removed", a.name);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_json_when_they_parse_and_text_otherwise() {
        let v = parse_inputs(&[
            "q=How many?".into(),
            "k=3".into(),
            "flag=true".into(),
            "list=[1,2]".into(),
            "s=\"x\"".into(),
        ])
        .expect("ok");
        assert_eq!(v, json!({"q": "How many?", "k": 3, "flag": true, "list": [1, 2], "s": "x"}));
        assert!(parse_inputs(&["novalue".into()]).expect_err("an error").to_string().contains("key=value"));
    }
}
