//! Task graphs end to end, through real processes.
//!
//! - One `shoal up` with the real models: a graph with every step kind; an agent step
//!   answering with two tool calls (an MCP server's and a graph); malformed graphs
//!   (400 listing every problem); the built-in QA graphs (`qa-db` on SQLite and on
//!   PostgreSQL answering a counting question, `qa-auto` routing a knowledge question to
//!   the knowledge base and a numbers question to the database); read-only SQL (every
//!   bypass refused, the database unchanged); rerun from a step (earlier outputs reused);
//!   a client that disconnects (the run still completes); cancellation; `graph:NAME` chat.
//! - Three coordinators: the leader is SIGKILLed during a 5-step run of HTTP tool calls;
//!   the run finishes on the new leader and no step committed before the kill ran twice.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

/// A local HTTP tool: counts calls by path (and by `Idempotency-Key`), answers
/// `{"path": …, "n": calls so far}`; `/slow/...` paths take `slow_ms`.
struct Tool {
    port: u16,
    calls: Arc<Mutex<BTreeMap<String, u32>>>,
}

impl Tool {
    fn start(slow_ms: u64) -> Tool {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let calls: Arc<Mutex<BTreeMap<String, u32>>> = Arc::default();
        let seen = calls.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let seen = seen.clone();
                std::thread::spawn(move || serve(conn, &seen, slow_ms));
            }
        });
        Tool { port, calls }
    }

    fn count(&self, path: &str) -> u32 {
        self.calls.lock().expect("lock").get(path).copied().unwrap_or(0)
    }
}

fn serve(conn: TcpStream, calls: &Mutex<BTreeMap<String, u32>>, slow_ms: u64) {
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let mut first = String::new();
    if reader.read_line(&mut first).is_err() {
        return;
    }
    let path = first.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; length];
    let _ = reader.read_exact(&mut body);
    if path.starts_with("/slow") {
        std::thread::sleep(Duration::from_millis(slow_ms));
    }
    let n = {
        let mut c = calls.lock().expect("lock");
        let n = c.entry(path.clone()).or_insert(0);
        *n += 1;
        *n
    };
    let (status, answer) = if path.starts_with("/fail") {
        ("500 Internal Server Error", json!({"error": "always fails"}))
    } else {
        ("200 OK", json!({"path": path, "n": n, "weather": "sunny", "items": ["a", "b", "c"]}))
    };
    let text = answer.to_string();
    let mut out = conn;
    let _ = write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
}

fn apply(gw: &str, yaml: &str) -> (u16, Value) {
    post_raw_ct(&format!("{gw}/v1/graphs"), yaml, "application/yaml")
}

fn post_raw_ct(url: &str, body: &str, ct: &str) -> (u16, Value) {
    let mut resp = agent(Duration::from_secs(60))
        .post(url)
        .header("Authorization", &format!("Bearer {API_KEY}"))
        .header("Content-Type", ct)
        .send(body)
        .expect("request");
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn run_graph(gw: &str, name: &str, inputs: Value) -> Value {
    let mut resp = agent(Duration::from_secs(600))
        .post(&format!("{gw}/v1/graphs/{name}/runs"))
        .header("Authorization", &format!("Bearer {API_KEY}"))
        .send_json(json!({"inputs": inputs}))
        .expect("run");
    let status = resp.status().as_u16();
    let v: Value = resp.body_mut().read_json().expect("json");
    assert_eq!(status, 200, "run {name}: {v}");
    v
}

fn step<'a>(run: &'a Value, id: &str) -> &'a Value {
    run["steps"].as_array().and_then(|s| s.iter().find(|x| x["id"] == id)).unwrap_or(&Value::Null)
}

fn make_sqlite(path: &Path) {
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import sqlite3\ndb = sqlite3.connect({:?})\n\
             db.executescript('''CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT NOT NULL);\n\
             CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL REFERENCES customers(id), total REAL NOT NULL);''')\n\
             db.executemany('INSERT INTO customers VALUES (?,?,?)', [(i, 'customer%d' % i, ['Oslo','Lima','Pune'][i % 3]) for i in range(1, 8)])\n\
             db.executemany('INSERT INTO orders VALUES (?,?,?)', [(i, 1 + i % 7, 10.0 * i) for i in range(1, 13)])\n\
             db.commit()\n",
            path.display().to_string()
        ))
        .output()
        .expect("python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

const EVERY_KIND: &str = r#"
name: every-kind
description: one step of every kind
inputs:
  question: {type: string}
  city: {type: string, default: Oslo}
allow_hosts: ["127.0.0.1:TOOLPORT"]
steps:
  - id: greet
    kind: template
    template: "Hello {{ inputs.city }}"
  - id: weather
    kind: http
    url: "http://127.0.0.1:TOOLPORT/weather?city=${inputs.city}"
  - id: vector
    kind: embed
    model: minilm
    input: ${inputs.question}
  - id: search
    kind: recall
    knowledge_base: facts
    query: ${inputs.question}
    top_k: 2
  - id: count
    kind: sql
    database: shop
    query: "SELECT COUNT(*) AS n FROM customers WHERE city = '{{ inputs.city }}'"
  - id: route
    kind: classify
    method: embedding
    model: minilm
    input: ${inputs.question}
    labels: [lighthouse, food]
    examples:
      lighthouse: [When was the lighthouse lit?, Who designed the tower?]
      food: [How do I bake bread?, What is a good recipe?]
  - id: pick
    kind: branch
    cases:
      - {when: "steps.route.label == 'lighthouse'", then: [answer]}
    else: [nothing]
  - id: answer
    kind: chat
    model: smol
    max_tokens: 24
    prompt: "{{ steps.search.context }}\n\nQuestion: {{ inputs.question }}"
  - id: nothing
    kind: template
    template: "not taken"
  - id: each
    kind: map
    over: steps.weather.json["items"]
    parallelism: 2
    step: {id: one, kind: template, template: "{{ index }}={{ item }}"}
  - id: sub
    kind: graph
    graph: tiny
    inputs: {word: "${steps.greet.text}"}
outputs:
  greeting: ${steps.greet.text}
  weather: ${steps.weather.json.weather}
  dimension: ${steps.vector.dimension}
  top_document: ${steps.search.hits[0].document_id}
  customers_in_city: ${steps.count.rows[0][0]}
  route: ${steps.route.label}
  answer: ${steps.answer.text or steps.nothing.text}
  mapped: ${steps.each.results | map(attribute='text') | list}
  shouted: ${steps.sub.outputs.loud}
"#;

const TINY: &str = r#"
name: tiny
inputs: {word: {type: string}}
steps:
  - {id: up, kind: template, template: "{{ inputs.word | upper }}"}
outputs: {loud: "${steps.up.text}"}
"#;

#[test]
fn graphs_on_one_process() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut up = start_up_models(dir.path());
    let gw = format!("http://{}", up.http);
    let tool = Tool::start(3000);
    deploy_and_wait(&gw);

    // A knowledge base and a database for the steps to use.
    let (s, v) =
        post(&format!("{gw}/v1/knowledge-bases"), json!({"name": "facts", "embedding_model": "minilm", "replicas": 1}));
    assert_eq!(s, 201, "{v}");
    wait_until(Duration::from_secs(60), "the knowledge base's copy is ready", || {
        get_json(&format!("{gw}/v1/knowledge-bases/facts")).is_some_and(|kb| {
            kb["shards"].as_array().is_some_and(|s| {
                s.iter().all(|x| x["copies"].as_array().is_some_and(|c| c.iter().any(|c| c["state"] == "ready")))
            })
        })
    });
    let doc = "The Harbor Lighthouse of Port Avel was designed by the engineer Margaret Olsen and first lit in 1887.";
    let (s, v) = post(
        &format!("{gw}/v1/knowledge-bases/facts/documents"),
        json!({"id": "lighthouse", "title": "The Harbor Lighthouse", "text": doc}),
    );
    assert!(s == 200 || s == 201, "{v}");
    let db_path = dir.path().join("shop.db");
    make_sqlite(&db_path);
    let before = std::fs::read(&db_path).expect("db");
    let (s, v) = post(&format!("{gw}/v1/databases"), json!({"name": "shop", "sqlite": db_path.to_str().expect("ok")}));
    assert_eq!(s, 201, "{v}");
    let (s, v) = post(&format!("{gw}/v1/databases"), json!({"name": "nowhere", "sqlite": "/no/such/file.db"}));
    assert_eq!(s, 400, "an unreachable database is refused: {v}");

    // Malformed graphs: 400 listing every problem.
    let (s, v) = apply(
        &gw,
        "name: broken\nsteps:\n  - {id: a, kind: chat, model: nope, prompt: '{{ steps.b.text }}'}\n  - {id: b, kind: template, template: '{{ steps.a.text }}'}\n  - {id: c, kind: warp}\noutputs: {x: '${inputs.missing}'}\n",
    );
    assert_eq!(s, 400, "{v}");
    let problems: Vec<String> = v["error"]["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .map(|p| p["message"].as_str().unwrap_or("").to_string())
        .collect();
    for want in ["unknown chat model \"nope\"", "cycle", "unknown step kind \"warp\"", "missing input"] {
        assert!(problems.iter().any(|p| p.contains(want)), "no problem about {want}: {problems:?}");
    }

    // Every step kind, end to end.
    let (s, v) = apply(&gw, TINY);
    assert_eq!(s, 201, "{v}");
    let (s, v) = apply(&gw, &EVERY_KIND.replace("TOOLPORT", &tool.port.to_string()));
    assert_eq!(s, 201, "{v}");
    let run = run_graph(&gw, "every-kind", json!({"question": "When was the lighthouse first lit?"}));
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let out = &run["outputs"];
    assert_eq!(out["greeting"], "Hello Oslo");
    assert_eq!(out["weather"], "sunny");
    assert_eq!(out["dimension"], 384);
    assert_eq!(out["top_document"], "lighthouse");
    assert_eq!(out["customers_in_city"], 2, "customers 3 and 6 live in Oslo");
    assert_eq!(out["route"], "lighthouse");
    assert!(out["answer"].as_str().is_some_and(|a| !a.is_empty() && a != "not taken"), "{out}");
    assert_eq!(out["mapped"], json!(["0=a", "1=b", "2=c"]));
    assert_eq!(out["shouted"], "HELLO OSLO");
    assert_eq!(step(&run, "nothing")["status"], "skipped");
    assert_eq!(step(&run, "answer")["ran_on"], "deployment smol");
    assert!(step(&run, "answer")["inputs"]["messages"][0]["content"].as_str().unwrap_or("").contains("Margaret Olsen"));
    assert_eq!(tool.count("/weather?city=Oslo"), 1);

    // A chat step with an output schema is generated to it: even the 135M model, which on its
    // own answers in prose, gives JSON that follows the schema.
    let structured = r#"
name: structured
inputs: {fact: {type: string}}
steps:
  - id: extract
    kind: chat
    model: smol
    prompt: "{{ inputs.fact }} Give the place and the year."
    output_schema: {type: object, properties: {place: {type: string, maxLength: 60}, year: {type: integer}}, required: [place, year]}
outputs:
  place: "${steps.extract.json.place}"
  year: "${steps.extract.json.year}"
"#;
    let (s, v) = apply(&gw, structured);
    assert_eq!(s, 201, "{v}");
    let extracted = run_graph(&gw, "structured", json!({"fact": doc}));
    assert_eq!(extracted["status"], "succeeded", "{extracted:#}");
    let out = &extracted["outputs"];
    assert!(out["year"].is_i64(), "{extracted:#}");
    assert!(out["place"].as_str().is_some_and(|p| !p.is_empty() && p.chars().count() <= 60), "{extracted:#}");

    // An agent answers a question that needs two tool calls (an MCP server's tool and a
    // graph), each committed to the run as it completes.
    let calc = start_mcp_server(dir.path());
    let (s, v) = post(
        &format!("{gw}/v1/mcp-servers"),
        json!({"name": "calc", "url": calc.url(), "headers": {"Authorization": format!("Bearer {}", calc.token)}}),
    );
    assert_eq!(s, 201, "{v}");
    let forecast = format!(
        "name: city-weather\ndescription: Tells the weather in a city.\ninputs: {{city: {{type: string}}}}\n\
         allow_hosts: ['127.0.0.1:{p}']\nsteps:\n  - {{id: w, kind: http, url: 'http://127.0.0.1:{p}/forecast?city=${{inputs.city}}'}}\n\
         outputs: {{weather: '${{steps.w.json.weather}}'}}\n",
        p = tool.port
    );
    let (s, v) = apply(&gw, &forecast);
    assert_eq!(s, 201, "{v}");
    let assistant = format!(
        r#"
name: assistant
inputs: {{question: {{type: string}}}}
allow_hosts: ["127.0.0.1:{port}"]
steps:
  - id: solve
    kind: agent
    model: qwen2.5-coder-0.5b-instruct
    prompt: "{{{{ inputs.question }}}}"
    tools: [{{mcp: calc, tool: add}}, {{graph: city-weather}}]
    max_turns: 4
outputs: {{answer: "${{steps.solve.text}}", calls: "${{steps.solve.calls}}"}}
"#,
        port = calc.port
    );
    let (s, v) = apply(&gw, &assistant);
    assert_eq!(s, 201, "{v}");
    let asked = run_graph(&gw, "assistant", json!({"question": "What is 17 + 25? And what is the weather in Oslo?"}));
    assert_eq!(asked["status"], "succeeded", "{asked:#}");
    let calls = asked["outputs"]["calls"].as_array().cloned().unwrap_or_default();
    let made = |name: &str| calls.iter().find(|c| c["name"] == name).cloned().unwrap_or(Value::Null);
    assert_eq!(made("add")["arguments"], json!({"a": 17, "b": 25}), "{asked:#}");
    assert_eq!(made("add")["result"], "42", "{asked:#}");
    assert_eq!(made("city-weather")["arguments"], json!({"city": "Oslo"}), "{asked:#}");
    assert!(made("city-weather")["result"].as_str().unwrap_or("").contains("sunny"), "{asked:#}");
    assert_eq!(tool.count("/forecast?city=Oslo"), 1);
    // The answer is in plain words and uses the tools' results (the 0.5B model, greedy,
    // answers "The weather in Oslo is sunny.").
    let answer = asked["outputs"]["answer"].as_str().unwrap_or("");
    assert!(!answer.starts_with('{') && (answer.contains("42") || answer.contains("sunny")), "{asked:#}");
    assert!(step(&asked, "solve")["output"]["turns"].as_u64() >= Some(2), "{asked:#}");
    // A tool the step names that does not exist is refused when the graph is applied.
    let (s, v) = apply(&gw, &assistant.replace("{graph: city-weather}", "{graph: no-such-graph}"));
    assert_eq!(s, 400, "{v}");
    assert!(v["error"]["message"].as_str().unwrap_or("").contains("unknown graph \"no-such-graph\""), "{v}");

    // The same definition again is the same version; a changed one is version 2.
    let (s, v) = apply(&gw, TINY);
    assert_eq!((s, v["version"].as_u64()), (200, Some(1)), "{v}");

    // Rerun from a step reuses the earlier outputs: the tool is not called again.
    let (s, rerun) = post(&format!("{gw}/v1/runs/{}/rerun", run["id"].as_str().expect("ok")), json!({"from": "each"}));
    assert_eq!(s, 200, "{rerun}");
    assert_eq!(rerun["status"], "succeeded");
    assert_eq!(rerun["outputs"], run["outputs"]);
    assert_eq!(tool.count("/weather?city=Oslo"), 1, "the http step's committed result was reused");
    assert_eq!(step(&rerun, "weather")["finished_at_ms"], step(&run, "weather")["finished_at_ms"]);
    assert_ne!(step(&rerun, "each")["finished_at_ms"], step(&run, "each")["finished_at_ms"]);

    // Read-only SQL: every bypass is refused with its rule, and the database is unchanged.
    let bypasses = [
        ("SELECT 1; DROP TABLE customers", "one_statement"),
        ("DELETE FROM customers", "not_a_query"),
        ("UPDATE customers SET name = 'x'", "not_a_query"),
        ("WITH gone AS (DELETE FROM orders RETURNING *) SELECT COUNT(*) FROM gone", "data_modifying_cte"),
        ("SELECT * INTO copy FROM customers", "select_into"),
        ("SELECT * FROM customers FOR UPDATE", "locking_clause"),
        ("ATTACH DATABASE '/tmp/x.db' AS x", "not_a_query"),
        ("PRAGMA writable_schema = ON", "parse"),
        ("COPY customers TO '/tmp/x'", "not_a_query"),
        ("SELECT pg_sleep(10)", "denied_function"),
        ("SELECT load_extension('/tmp/evil')", "denied_function"),
        ("EXPLAIN ANALYZE WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d", "not_a_query"),
    ];
    for (sql, rule) in bypasses {
        let (s, v) = post(&format!("{gw}/v1/databases/shop/query"), json!({"sql": sql}));
        assert_eq!(s, 400, "{sql}: {v}");
        assert_eq!(v["error"]["rule"], rule, "{sql}: {v}");
    }
    let (s, v) = post(&format!("{gw}/v1/databases/shop/query"), json!({"sql": "SELECT COUNT(*) FROM orders"}));
    assert_eq!((s, &v["rows"]), (200, &json!([[12]])), "{v}");
    assert_eq!(std::fs::read(&db_path).expect("db"), before, "the database file is unchanged");

    // The LLM + database mode: a counting question answered from the rows.
    let run = run_graph(&gw, "qa-db", json!({"question": "How many customers are there?", "database": "shop"}));
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(run["outputs"]["rows"], json!([[7]]), "sql: {}", run["outputs"]["sql"]);
    assert!(run["outputs"]["answer"].as_str().unwrap_or("").contains('7'), "{}", run["outputs"]);

    // The same on PostgreSQL.
    let pg = shoal_testkit::pg::PgServer::start();
    pg.psql(
        "CREATE TABLE customers (id integer PRIMARY KEY, name text NOT NULL, city text NOT NULL); \
         INSERT INTO customers SELECT i, 'customer' || i, (ARRAY['Oslo','Lima','Pune'])[1 + i % 3] FROM generate_series(1, 9) i;",
    );
    let (s, v) = post(&format!("{gw}/v1/databases"), json!({"name": "pgshop", "postgres": pg.url()}));
    assert_eq!(s, 201, "{v}");
    let run = run_graph(&gw, "qa-db", json!({"question": "How many customers are there?", "database": "pgshop"}));
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(run["outputs"]["rows"], json!([[9]]), "sql: {}", run["outputs"]["sql"]);

    // qa-auto routes a knowledge question to the knowledge base and a numbers question to
    // the database.
    let both = json!({"knowledge_base": "facts", "database": "shop", "embedding_model": "minilm"});
    let mut inputs = both.clone();
    inputs["question"] = json!("Who designed the Harbor Lighthouse?");
    let run = run_graph(&gw, "qa-auto", inputs);
    assert_eq!((run["status"].as_str(), run["outputs"]["route"].as_str()), (Some("succeeded"), Some("kb")), "{run:#}");
    assert_eq!(run["outputs"]["citations"][0]["document_id"], "lighthouse");
    let mut inputs = both.clone();
    inputs["question"] = json!("How many customers are there?");
    let run = run_graph(&gw, "qa-auto", inputs);
    assert_eq!((run["status"].as_str(), run["outputs"]["route"].as_str()), (Some("succeeded"), Some("db")), "{run:#}");
    assert_eq!(run["outputs"]["rows"], json!([[7]]));

    // A client that disconnects does not cancel the run.
    let slow = format!(
        "name: slow\nallow_hosts: ['127.0.0.1:{p}']\nsteps:\n  - {{id: wait, kind: http, url: 'http://127.0.0.1:{p}/slow/one'}}\n  - {{id: after, kind: template, template: 'done after {{{{ steps.wait.json.n }}}}'}}\noutputs: {{text: '${{steps.after.text}}'}}\n",
        p = tool.port
    );
    let (s, v) = apply(&gw, &slow);
    assert_eq!(s, 201, "{v}");
    let run_id = start_and_hang_up(&gw, "slow");
    wait_until(Duration::from_secs(30), "the abandoned run finishes", || {
        get_json(&format!("{gw}/v1/runs/{run_id}")).is_some_and(|r| r["status"] == "succeeded")
    });
    let r = get_json(&format!("{gw}/v1/runs/{run_id}")).expect("run");
    assert_eq!(r["outputs"]["text"], "done after 1");

    // Only DELETE cancels.
    let run_id = start_and_hang_up(&gw, "slow");
    let (s, v) = delete(&format!("{gw}/v1/runs/{run_id}"));
    assert_eq!((s, v["status"].as_str()), (200, Some("cancelled")), "{v}");
    std::thread::sleep(Duration::from_secs(4));
    let r = get_json(&format!("{gw}/v1/runs/{run_id}")).expect("run");
    assert_eq!(r["status"], "cancelled");
    assert_eq!(step(&r, "after")["status"], "not_run", "nothing ran after the cancel: {r}");

    // A failing step: retries, then the run fails with the step's error recorded.
    let failing = format!(
        "name: failing\nallow_hosts: ['127.0.0.1:{p}']\nsteps:\n  - {{id: call, kind: http, url: 'http://127.0.0.1:{p}/fail', retry: {{attempts: 3, backoff_ms: 10}}}}\noutputs: {{x: '${{steps.call.body}}'}}\n",
        p = tool.port
    );
    assert_eq!(apply(&gw, &failing).0, 201);
    let (s, r) = post(&format!("{gw}/v1/graphs/failing/runs"), json!({}));
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["status"], "failed");
    assert_eq!(step(&r, "call")["attempts"], 3);
    assert!(step(&r, "call")["error"].as_str().unwrap_or("").contains("500"), "{r}");
    assert_eq!(tool.count("/fail"), 3);

    // An allow-list violation is refused when the graph is applied.
    let (s, v) = apply(&gw, "name: snoop\nsteps:\n  - {id: x, kind: http, url: 'http://169.254.169.254/latest/meta-data'}\noutputs: {x: '${steps.x.body}'}\n");
    assert_eq!(s, 400, "{v}");
    assert!(v["error"]["message"].as_str().unwrap_or("").contains("allow_hosts"), "{v}");

    // OpenAI chat runs a graph with "model": "graph:NAME".
    let (s, v) = post(
        &format!("{gw}/v1/chat/completions"),
        json!({"model": "graph:tiny-chat", "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(s, 404, "an unknown graph: {v}");
    assert_eq!(
        apply(&gw, "name: tiny-chat\ninputs: {question: {type: string}}\nsteps:\n  - {id: t, kind: template, template: 'you said {{ inputs.question }}'}\noutputs: {answer: '${steps.t.text}'}\n").0,
        201
    );
    let (s, v) = post(
        &format!("{gw}/v1/chat/completions"),
        json!({"model": "graph:tiny-chat", "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], "you said hi");
    assert!(v["graph_run"]["id"].as_str().is_some());

    // Listing: built-ins and registered graphs; runs by graph and status.
    let list = get_json(&format!("{gw}/v1/graphs")).expect("graphs");
    let names: Vec<&str> = list["data"].as_array().expect("ok").iter().filter_map(|g| g["name"].as_str()).collect();
    for n in ["qa-llm", "qa-kb", "qa-db", "qa-auto", "every-kind", "tiny"] {
        assert!(names.contains(&n), "{n} not in {names:?}");
    }
    let failed = get_json(&format!("{gw}/v1/runs?graph=failing&status=failed")).expect("runs");
    assert_eq!(failed["data"].as_array().map(Vec::len), Some(1));
    let schema = get_json(&format!("{gw}/v1/graphs/schema")).expect("schema");
    assert!(schema.to_string().contains("\"recall\""));
    assert!(metric_sum(&gw, "shoal_graph_runs_total") >= 8.0);

    // A crash in the middle of an agent step: `shoal up` is SIGKILLed as soon as the step's
    // first call (a graph on a path that takes 3 s) is committed, and started again on the
    // same data dir. The run goes on from the committed call, which is not made again.
    let slow = forecast.replace("city-weather", "slow-weather").replace("/forecast?", "/slow/forecast?");
    assert_eq!(apply(&gw, &slow).0, 201);
    let crashy = "name: crashy\nsteps:\n  - id: solve\n    kind: agent\n    model: qwen2.5-coder-0.5b-instruct\n    \
                  prompt: What is the weather in Oslo, and in Bergen?\n    tools: [{graph: slow-weather}]\n    max_turns: 4\n\
                  outputs: {answer: '${steps.solve.text}'}\n";
    assert_eq!(apply(&gw, crashy).0, 201);
    let run_id = start_and_hang_up(&gw, "crashy");
    let first_call = || -> Option<Value> {
        let r = get_json(&format!("{gw}/v1/runs/{run_id}"))?;
        let s = step(&r, "solve");
        s["calls"].get(0).or_else(|| s["output"]["calls"].get(0)).cloned()
    };
    wait_until(Duration::from_secs(300), "the agent's first call is committed", || first_call().is_some());
    let before = first_call().expect("a call");
    up.crash_and_restart();
    wait_until(Duration::from_secs(120), "shoal up serves again", || {
        matches!(get(&format!("{gw}/readyz"), None), Some((200, _)))
    });
    wait_until(Duration::from_secs(400), "the agent's run finishes after the restart", || {
        get_json(&format!("{gw}/v1/runs/{run_id}")).is_some_and(|r| r["status"] != "running")
    });
    let after = get_json(&format!("{gw}/v1/runs/{run_id}")).expect("run");
    assert_eq!(after["status"], "succeeded", "{after:#}");
    let calls = step(&after, "solve")["output"]["calls"].as_array().cloned().unwrap_or_default();
    assert_eq!(calls.first(), Some(&before), "the committed call is kept as it was: {after:#}");
    let city = before["arguments"]["city"].as_str().expect("a city").to_string();
    assert_eq!(tool.count(&format!("/slow/forecast?city={city}")), 1, "the committed call was made again: {after:#}");
}

/// Starts a streaming run, reads its first event, and hangs up; the run's id.
fn start_and_hang_up(gw: &str, graph: &str) -> String {
    let host = gw.trim_start_matches("http://");
    let mut conn = TcpStream::connect(host).expect("connect");
    let body = json!({"inputs": {}, "stream": true}).to_string();
    write!(
        conn,
        "POST /v1/graphs/{graph}/runs HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut reader = BufReader::new(conn);
    let started = Instant::now();
    loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).expect("read") > 0, "the stream ended early");
        if let Some(data) = line.strip_prefix("data: ") {
            let v: Value = serde_json::from_str(data.trim()).expect("event");
            if v["event"] == "run_started" {
                return v["run"].as_str().expect("run id").to_string();
            }
        }
        assert!(started.elapsed() < Duration::from_secs(20), "no run_started event");
    }
}

fn delete(url: &str) -> (u16, Value) {
    let mut resp = agent(Duration::from_secs(20))
        .delete(url)
        .header("Authorization", &format!("Bearer {API_KEY}"))
        .call()
        .expect("delete");
    (resp.status().as_u16(), resp.body_mut().read_json().unwrap_or(Value::Null))
}

/// `shoal up` with SmolLM2 (as `smol`), MiniLM (as `minilm`) and Qwen2.5-Coder-0.5B (the
/// built-in graphs' default chat model) deployed from the models folder.
fn start_up_models(dir: &Path) -> Up {
    let models = dir.join("models");
    std::fs::create_dir_all(&models).expect("dir");
    let real = models_dir();
    for (name, from) in [
        ("smol", "smollm2-135m-instruct"),
        ("minilm", "all-minilm-l6-v2"),
        ("qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-0.5b-instruct"),
    ] {
        std::os::unix::fs::symlink(real.join(from), models.join(name)).expect("symlink");
    }
    let up = start_up(dir, &models);
    let url = format!("http://{}/readyz", up.http);
    wait_until(Duration::from_secs(300), "shoal up ready", || matches!(get(&url, None), Some((200, _))));
    up
}

fn deploy_and_wait(gw: &str) {
    wait_until(Duration::from_secs(300), "every model serving", || {
        let Some(v) = get_json(&format!("{gw}/v1/deployments")) else { return false };
        let ready = |n: &str| {
            v["data"]
                .as_array()
                .is_some_and(|d| d.iter().any(|x| x["name"] == n && x["ready_replicas"].as_u64() >= Some(1)))
        };
        ready("smol") && ready("minilm") && ready("qwen2.5-coder-0.5b-instruct")
    });
}

const FIVE_STEPS: &str = r#"
name: five
allow_hosts: ["127.0.0.1:TOOLPORT"]
steps:
  - {id: s1, kind: http, url: "http://127.0.0.1:TOOLPORT/slow/s1"}
  - {id: big, kind: template, template: "{% for i in range(2000) %}0123456789{% endfor %}", after: [s1]}
  - {id: s2, kind: http, url: "http://127.0.0.1:TOOLPORT/slow/s2", after: [big]}
  - {id: s3, kind: http, url: "http://127.0.0.1:TOOLPORT/slow/s3", after: [s2]}
  - {id: s4, kind: http, url: "http://127.0.0.1:TOOLPORT/slow/s4", after: [s3]}
  - {id: s5, kind: http, url: "http://127.0.0.1:TOOLPORT/slow/s5", after: [s4]}
outputs:
  calls: "${[steps.s1.json.n, steps.s2.json.n, steps.s3.json.n, steps.s4.json.n, steps.s5.json.n]}"
  big: "${steps.big.text | length}"
"#;

#[test]
fn a_run_survives_the_leader_being_killed() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut group = Group::new(dir.path(), 3, 0);
    let leader = group.start_all_ready(3);
    let tool = Tool::start(1200);
    let any = group.live().into_iter().find(|id| *id != leader).expect("a follower");
    let gw = format!("http://{}", group.member(any).http);
    let (s, v) = apply(&gw, &FIVE_STEPS.replace("TOOLPORT", &tool.port.to_string()));
    assert_eq!(s, 201, "{v}");
    // Started through a follower's gateway (and its client gone at once); it executes on
    // the leader.
    let run_id = start_and_hang_up(&gw, "five");
    // Kill the leader once two steps are committed (one of them with an output too large
    // for the raft state: it lives in the leader's artifact store, mirrored by the others).
    wait_until(Duration::from_secs(30), "two steps committed", || {
        get_json(&format!("{gw}/v1/runs/{run_id}")).is_some_and(|r| {
            r["steps"].as_array().is_some_and(|s| s.iter().filter(|x| x["status"] == "succeeded").count() >= 2)
        })
    });
    let before = get_json(&format!("{gw}/v1/runs/{run_id}")).expect("run");
    let committed: Vec<String> = before["steps"]
        .as_array()
        .expect("ok")
        .iter()
        .filter(|x| x["status"] == "succeeded")
        .map(|x| x["id"].as_str().expect("ok").to_string())
        .collect();
    // The large output was on a majority of the coordinators before its result committed.
    let holders = (1..=3)
        .filter(|id| {
            std::fs::read_dir(dir.path().join(format!("c{id}/artifacts")))
                .is_ok_and(|d| d.flatten().any(|e| e.file_name().len() == 64))
        })
        .count();
    assert!(holders >= 2, "the large output is on {holders} of 3 coordinators at its commit");
    group.kill(leader);
    let new_leader = group.wait_leader(Duration::from_secs(20), Some(leader));
    assert_ne!(new_leader, leader);
    // Polled by hand, so that a failure shows how far the run got.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    while !last.as_ref().is_some_and(|r: &Value| r["status"] == "succeeded") {
        assert!(Instant::now() < deadline, "the run did not finish on the new leader {new_leader} in 60 s: {last:?}");
        std::thread::sleep(Duration::from_millis(100));
        last = get_json(&format!("{gw}/v1/runs/{run_id}")).or(last);
    }
    let after = get_json(&format!("{gw}/v1/runs/{run_id}")).expect("run");
    assert_eq!(after["outputs"]["big"], 20_000, "{after}");
    assert_eq!(step(&after, "big")["output_bytes"], 20_011, "the large output went to the artifact store");
    for s in &committed {
        if s != "big" {
            assert_eq!(tool.count(&format!("/slow/{s}")), 1, "step {s} was committed before the kill and ran again");
        }
        assert_eq!(step(&after, s)["finished_at_ms"], step(&before, s)["finished_at_ms"], "step {s} ran again");
    }
    for s in ["s1", "s2", "s3", "s4", "s5"] {
        let n = tool.count(&format!("/slow/{s}"));
        assert!((1..=2).contains(&n), "step {s} called {n} times");
    }
    let ran_on: Vec<&str> =
        after["steps"].as_array().expect("ok").iter().filter_map(|x| x["ran_on"].as_str()).collect();
    assert!(ran_on.iter().any(|r| r.contains(&format!("coordinator {new_leader}"))), "{ran_on:?}");
}
