//! `shoal bench tools`: what constrained decoding costs, and how often tool calls come out
//! valid, through a real `shoal up` and beside llama.cpp's own `llama-server --jinja` with
//! the same GGUF file in the same run.
//!
//! - **Cost of constraints**: the same extraction prompts answered with and without a strict
//!   `json_schema` response format, one stream at a time, greedy; decode tokens/s (after the
//!   first token) of each.
//! - **Validity**: generated prompts that each need one of two tools (`get_weather`,
//!   `book_flight`), sent with `tool_choice` `auto` (the tools not strict, then strict) and
//!   `required` to Shoal, and `auto` and `required` to llama-server. A call is valid when it
//!   names one of the tools and its arguments parse and satisfy that tool's JSON Schema
//!   (checked with the engine's schema matcher, on the compact form of the arguments).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use serde_json::{json, Value};
use shoal_engine::constraint::{JsonGrammar, JsonMatcher};

use super::bench_serve::{agent, start_up};

const KEY: &str = "sk-bench-local-admin";

#[derive(Debug, Args)]
pub struct ToolsBench {
    /// The folder with the models (`./scripts/fetch-models.sh`).
    #[arg(long, default_value = "./models")]
    pub models: PathBuf,
    /// The chat model (a folder name in --models; its GGUF file is what llama-server loads).
    #[arg(long, default_value = "qwen2.5-coder-0.5b-instruct")]
    pub model: String,
    /// Generated tool prompts per configuration.
    #[arg(long, default_value_t = 200)]
    pub prompts: usize,
    /// Requests in flight at once for the validity runs (llama-server gets as many slots).
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Extraction prompts for the cost of constraints (each answered both ways).
    #[arg(long, default_value_t = 8)]
    pub decode_prompts: usize,
    /// llama.cpp's server (`scripts/compare/build-llama-server.sh` builds it); its columns
    /// are skipped when it is missing.
    #[arg(long, default_value = "./.bench-venv/llama-server/build/bin/llama-server")]
    pub llama_server: PathBuf,
    /// Threads for llama-server (Shoal uses every core of this machine).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

fn weather_params() -> Value {
    json!({"type": "object", "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city"]})
}

fn flight_params() -> Value {
    json!({"type": "object", "properties": {
        "origin": {"type": "string"}, "destination": {"type": "string"},
        "passengers": {"type": "integer"},
        "cabin": {"type": "string", "enum": ["economy", "business", "first"]},
        "dates": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 2}},
        "required": ["origin", "destination", "passengers", "cabin", "dates"],
        "additionalProperties": false})
}

fn tools(strict: bool) -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a city.",
            "strict": strict, "parameters": weather_params()}},
        {"type": "function", "function": {"name": "book_flight", "description": "Book a flight between two cities.",
            "strict": strict, "parameters": flight_params()}},
    ])
}

/// `n` prompts, each asking for one of the two tools, worded in varied ways.
fn prompts(n: usize) -> Vec<String> {
    const CITIES: &[&str] =
        &["Paris", "Tokyo", "Lagos", "Lima", "Oslo", "Hanoi", "Quito", "Perth", "Cairo", "Dublin", "Seoul", "Denver"];
    const WEATHER: &[&str] = &[
        "What's the weather in {a} {when}?",
        "Is it raining in {a} {when}?",
        "Tell me the temperature in {a} {when}, in fahrenheit.",
        "Should I bring a coat to {a} {when}?",
        "How hot is it in {a} {when}, in celsius?",
    ];
    const WHEN: &[&str] = &["right now", "this morning", "tonight", "this afternoon"];
    const FLIGHT: &[&str] = &[
        "Book {p} economy seats from {a} to {b} on 2027-03-{d}.",
        "I need a business class flight for {p} from {a} to {b}, leaving 2027-05-{d}.",
        "Please get {p} first class tickets {a} to {b} on June {d} and back on June 28.",
        "Fly me from {a} to {b} on 2027-01-{d}, {p} passengers, cheapest cabin.",
    ];
    // Even prompts need get_weather, odd ones book_flight; each kind's k-th prompt differs
    // from its others (city, wording, time or route, passengers and day).
    (0..n)
        .map(|i| {
            let k = i / 2;
            let a = CITIES[k % CITIES.len()];
            let b = CITIES[(k * 5 + 3) % CITIES.len()];
            let template = if i % 2 == 0 {
                WEATHER[k / CITIES.len() % WEATHER.len()]
            } else {
                FLIGHT[k / CITIES.len() % FLIGHT.len()]
            };
            template
                .replace("{a}", a)
                .replace("{b}", b)
                .replace("{when}", WHEN[k / (CITIES.len() * WEATHER.len()) % WHEN.len()])
                .replace("{p}", &(k % 4 + 1).to_string())
                .replace("{d}", &format!("{:02}", k % 27 + 1))
        })
        .collect()
}

/// What one configuration's answers held.
#[derive(Debug, Default, Clone)]
struct Tally {
    prompts: usize,
    /// Answers with at least one call.
    called: usize,
    /// Calls that name a tool and whose arguments satisfy its schema.
    valid: usize,
    invalid: usize,
    /// Requests that failed (HTTP error).
    errors: usize,
    seconds: f64,
    /// A few invalid calls, for the report.
    examples: Vec<String>,
}
/// Whether `arguments` (JSON text) satisfy the schema of tool `name`.
fn valid_call(name: &str, arguments: &str) -> bool {
    let schema = match name {
        "get_weather" => weather_params(),
        "book_flight" => flight_params(),
        _ => return false,
    };
    let Ok(args) = serde_json::from_str::<Value>(arguments) else { return false };
    let Ok(grammar) = JsonGrammar::compile(&schema) else { return false };
    let mut m = JsonMatcher::new(Arc::new(grammar));
    m.feed(args.to_string().as_bytes()) && m.is_complete()
}

/// Sends every prompt to `url` (an OpenAI chat endpoint) with `extra` fields, `concurrency`
/// at a time, and tallies the calls.
fn validity(url: &str, model: &str, prompts: &[String], extra: &Value, concurrency: usize) -> Tally {
    let next = AtomicUsize::new(0);
    let tally = Mutex::new(Tally { prompts: prompts.len(), ..Default::default() });
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..concurrency.max(1) {
            s.spawn(|| {
                let agent = agent();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(p) = prompts.get(i) else { break };
                    let mut body = json!({"model": model, "messages": [{"role": "user", "content": p}],
                        "temperature": 0, "max_tokens": 160});
                    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
                        b.extend(e.clone());
                    }
                    let answer = agent
                        .post(url)
                        .header("Authorization", &format!("Bearer {KEY}"))
                        .send_json(&body)
                        .ok()
                        .filter(|r| r.status().is_success())
                        .and_then(|mut r| r.body_mut().read_json::<Value>().ok());
                    let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
                    let Some(v) = answer else {
                        t.errors += 1;
                        continue;
                    };
                    let calls = v["choices"][0]["message"]["tool_calls"].as_array().cloned().unwrap_or_default();
                    if !calls.is_empty() {
                        t.called += 1;
                    }
                    for c in calls {
                        let name = c["function"]["name"].as_str().unwrap_or("");
                        let args = c["function"]["arguments"].as_str().unwrap_or("");
                        if valid_call(name, args) {
                            t.valid += 1;
                        } else {
                            t.invalid += 1;
                            if t.examples.len() < 3 {
                                t.examples.push(format!("{name}({args})"));
                            }
                        }
                    }
                }
            });
        }
    });
    let mut t = tally.into_inner().unwrap_or_else(|e| e.into_inner());
    t.seconds = started.elapsed().as_secs_f64();
    t
}

/// One streamed answer: (completion tokens, decode tokens/s after the first token).
fn stream_rate(url: &str, body: &Value) -> anyhow::Result<(u64, f64)> {
    let (tokens, _, first, last) = super::bench_serve::stream_chat(url, body)?;
    let secs = (last - first).as_secs_f64();
    Ok((tokens, if secs > 0.0 { tokens.saturating_sub(1) as f64 / secs } else { 0.0 }))
}

fn person_schema() -> Value {
    json!({"type": "object", "properties": {
        "name": {"type": "string"}, "age": {"type": "integer"},
        "languages": {"type": "array", "items": {"type": "string"}},
        "city": {"type": "string"}, "employed": {"type": "boolean"}},
        "required": ["name", "age", "languages", "city", "employed"], "additionalProperties": false})
}

const PEOPLE: &[&str] = &[
    "Ada is 36, lives in London, speaks English and French and works as an engineer.",
    "Kenji, 19, is a student in Osaka who speaks Japanese and a little Korean.",
    "Maria (52) from Porto speaks Portuguese, Spanish and Italian; she is retired.",
    "Tom is 41 and unemployed; he lives in Berlin and speaks German and English.",
    "Amina, a 28-year-old nurse in Nairobi, speaks Swahili, English and Arabic.",
    "Lucas, 33, a teacher in Montreal, speaks French and English.",
    "Priya is 45, a doctor in Pune who speaks Marathi, Hindi and English.",
    "Olek, 60, retired in Gdansk, speaks Polish and Russian.",
];

/// Mean decode tokens/s without and with the schema, and the answers' mean lengths.
fn constraint_cost(url: &str, model: &str, n: usize) -> anyhow::Result<[(f64, f64); 2]> {
    let mut out = [(0.0, 0.0); 2];
    for (k, constrained) in [false, true].into_iter().enumerate() {
        let (mut rate, mut len) = (0.0, 0.0);
        for i in 0..n {
            let person = PEOPLE[i % PEOPLE.len()];
            let mut body = json!({"model": model, "temperature": 0, "max_tokens": 96, "stream": true,
                "stream_options": {"include_usage": true},
                "messages": [{"role": "user", "content": format!(
                    "Extract name, age, languages, city and employed (true/false) as a JSON object: {person}")}]});
            if constrained {
                body["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "person", "strict": true, "schema": person_schema()}});
            }
            let (tokens, r) = stream_rate(url, &body)?;
            rate += r;
            len += tokens as f64;
        }
        out[k] = (rate / n as f64, len / n as f64);
    }
    Ok(out)
}

/// llama.cpp's server on a free port with the model's GGUF file and its Jinja template.
struct LlamaServer {
    child: Child,
    url: String,
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_llama_server(bin: &Path, gguf: &Path, threads: usize, slots: usize) -> anyhow::Result<LlamaServer> {
    let port = super::bench::free_port();
    let child = Command::new(bin)
        .arg("-m")
        .arg(gguf)
        .args(["--jinja", "--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["-t", &threads.to_string(), "-np", &slots.to_string(), "-c", &(2048 * slots).to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let server = LlamaServer { child, url: format!("http://127.0.0.1:{port}") };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ok = agent().get(&format!("{}/health", server.url)).call().is_ok_and(|r| r.status().is_success());
        if ok {
            return Ok(server);
        }
        if Instant::now() > deadline {
            bail!("llama-server did not become healthy within 120 s");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn gguf_of(models: &Path, model: &str) -> anyhow::Result<PathBuf> {
    let dir = models.join(model);
    std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "gguf"))
        .ok_or_else(|| anyhow!("no .gguf file in {}", dir.display()))
}

fn line(what: &str, t: &Tally) {
    let rate = |n: usize| if t.prompts == 0 { 0.0 } else { 100.0 * n as f64 / t.prompts as f64 };
    let calls = t.valid + t.invalid;
    println!(
        "{what:<34} {:>4}/{:<4} called ({:>5.1}%)   {:>4}/{:<4} calls valid   {:>3} errors   {:>6.1} s",
        t.called,
        t.prompts,
        rate(t.called),
        t.valid,
        calls,
        t.errors,
        t.seconds
    );
    for e in &t.examples {
        println!("{:<34}   invalid: {}", "", e.chars().take(160).collect::<String>());
    }
}

pub fn run(a: ToolsBench) -> anyhow::Result<()> {
    let gguf = gguf_of(&a.models, &a.model)?;
    let cpu = super::bench::cpu_name();
    println!(
        "model {} ({}), {} prompts per configuration, {} in flight; CPU: {cpu}, {} cores",
        a.model,
        gguf.display(),
        a.prompts,
        a.concurrency,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let prompts = prompts(a.prompts);

    eprintln!("starting shoal up…");
    let up = start_up(&a.models, None, &[])?;
    let url = format!("{}/v1/chat/completions", up.gateway);
    let deadline = Instant::now() + Duration::from_secs(300);
    while super::bench_serve::get(&format!("{}/v1/deployments/{}", up.gateway, a.model))
        .and_then(|d| d["ready_replicas"].as_u64())
        .unwrap_or(0)
        == 0
    {
        if Instant::now() > deadline {
            bail!("{} did not become ready", a.model);
        }
        std::thread::sleep(Duration::from_millis(300));
    }

    eprintln!("cost of constraints (Shoal)…");
    let [(free_rate, free_len), (json_rate, json_len)] = constraint_cost(&url, &a.model, a.decode_prompts)?;
    println!("\ncost of constraints (Shoal, 1 stream, greedy, {} extraction prompts):", a.decode_prompts);
    println!("  unconstrained            {free_rate:>6.1} tok/s decode   ({free_len:.0} tokens per answer)");
    println!(
        "  json_schema (strict)     {json_rate:>6.1} tok/s decode   ({json_len:.0} tokens per answer)   {:.2}x",
        json_rate / free_rate.max(1e-9)
    );

    println!("\ntool-call validity ({} prompts needing get_weather or book_flight):", prompts.len());
    let configs: [(&str, Value); 3] = [
        ("shoal auto", json!({"tools": tools(false)})),
        ("shoal auto, strict tools", json!({"tools": tools(true)})),
        ("shoal required", json!({"tools": tools(false), "tool_choice": "required"})),
    ];
    for (what, extra) in &configs {
        eprintln!("{what}…");
        line(what, &validity(&url, &a.model, &prompts, extra, a.concurrency));
    }
    drop(up);

    if !a.llama_server.exists() {
        println!(
            "llama-server: skipped ({} is missing; scripts/compare/build-llama-server.sh builds it)",
            a.llama_server.display()
        );
        return Ok(());
    }
    eprintln!("starting llama-server…");
    let server = start_llama_server(&a.llama_server, &gguf, a.threads, a.concurrency)?;
    let lurl = format!("{}/v1/chat/completions", server.url);
    for (what, extra) in [
        ("llama.cpp auto (--jinja)", json!({"tools": tools(false)})),
        ("llama.cpp required (--jinja)", json!({"tools": tools(false), "tool_choice": "required"})),
    ] {
        eprintln!("{what}…");
        line(what, &validity(&lurl, &a.model, &prompts, &extra, a.concurrency));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_vary_and_the_validator_checks_the_schemas() {
        let p = prompts(200);
        assert_eq!(p.len(), 200);
        let distinct: std::collections::HashSet<&String> = p.iter().collect();
        assert!(distinct.len() >= 150, "{} distinct", distinct.len());
        assert!(p.iter().all(|s| !s.contains('{')), "every placeholder filled");
        assert!(valid_call("get_weather", r#"{"city": "Paris"}"#));
        assert!(valid_call("get_weather", r#"{"unit":"celsius","city":"Oslo"}"#));
        assert!(!valid_call("get_weather", r#"{"unit": "kelvin", "city": "Oslo"}"#));
        assert!(!valid_call("get_weather", r#"{}"#));
        assert!(!valid_call("launch", r#"{}"#));
        let flight =
            r#"{"origin":"Oslo","destination":"Lima","passengers":2,"cabin":"economy","dates":["2027-03-01"]}"#;
        assert!(valid_call("book_flight", flight));
        assert!(!valid_call("book_flight", &flight.replace("2,", "\"two\",")));
        assert!(!valid_call("book_flight", "not json"));
    }
}
