//! Knowledge bases end to end, through real processes: a coordinator and three `shoal join`
//! nodes on loopback, all-MiniLM-L6-v2 deployed on every node and SmolLM2 on one. A
//! knowledge base with 2 shards × 2 copies is filled with `shoal kb add` from a folder of
//! English and Chinese documents (Markdown, text, HTML, PDF); paraphrased questions must find
//! the right chunk first; RAG chat must answer a fact only the knowledge base holds, with
//! citations; replacing and deleting documents must show in searches; bad uploads get a
//! clear 4xx; and killing nodes that hold shard copies must leave every document findable
//! (failover to the other copy, then a rebuilt copy on the spare node).

mod support;

#[path = "../recall/tests/support/pdf.rs"]
mod pdf;

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use support::*;

const EMBED: &str = "minilm";
const CHAT: &str = "smol";
const KB: &str = "facts";

fn shoal_ok(args: &[&str]) -> String {
    let out = run(args);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "shoal {args:?} failed: {text}");
    text
}

fn write_corpus(dir: &Path) {
    let en = dir.join("en");
    let zh = dir.join("zh");
    std::fs::create_dir_all(&en).expect("dir");
    std::fs::create_dir_all(&zh).expect("dir");
    std::fs::write(
        en.join("lighthouse.md"),
        "# The Harbor Lighthouse\n\nThe Harbor Lighthouse of Port Avel was designed by the engineer Margaret Olsen \
         and first lit in 1887. Its lamp burned whale oil until 1910, when it was converted to electricity.\n\n\
         ## Visiting\n\nThe tower has 212 steps. Visitors may climb it on weekends between May and September.\n",
    )
    .expect("write");
    std::fs::write(
        en.join("volcano.txt"),
        "Mount Keravel is a dormant volcano on the island of Sannet. Its last eruption was in 1783, when ash fell \
         on the fishing villages of the western coast for nine days.\n\nToday the crater holds a green lake that \
         is popular with hikers.",
    )
    .expect("write");
    std::fs::write(
        en.join("bread.html"),
        "<html><head><title>Sourdough basics</title></head><body><h1>Sourdough basics</h1>\
         <p>A sourdough starter is a mix of flour and water fermented by wild yeast and lactic acid bacteria.</p>\
         <p>Feed the starter twice a day and bake when it has doubled in size.</p>\
         <script>var ignored = 'this script text must not be indexed';</script></body></html>",
    )
    .expect("write");
    std::fs::write(
        en.join("festival.pdf"),
        pdf::minimal_pdf(
            "The Zorblat festival",
            &[
                "The Zorblat festival of the town of Quillby is held every year on the fourteenth of March.",
                "During the festival the townspeople paint their doors orange.",
            ],
        ),
    )
    .expect("write");
    std::fs::write(
        zh.join("changcheng.txt"),
        "长城是中国古代的军事防御工程，修筑的历史可以上溯到西周时期。\n\n\
         八达岭长城位于北京市延庆区，是明长城中保存最好、最具代表性的一段，每年接待大量游客。",
    )
    .expect("write");
    std::fs::write(
        zh.join("panda.md"),
        "# 大熊猫\n\n大熊猫是中国特有的物种，主要生活在四川、陕西和甘肃的山区。它们的食物几乎全部是竹子，\
         每天要花十多个小时进食。",
    )
    .expect("write");
}

fn search(gw: &str, query: &str, mode: &str, extra: Value) -> Value {
    let mut body = json!({"query": query, "mode": mode, "top_k": 5});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let (status, v) = post(&format!("{gw}/v1/knowledge-bases/{KB}/search"), body);
    assert_eq!(status, 200, "search {query}: {v}");
    v
}

fn top_doc(v: &Value) -> String {
    v["data"][0]["document_id"].as_str().unwrap_or("").to_string()
}

fn docs_in(v: &Value) -> Vec<String> {
    v["data"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|h| h["document_id"].as_str().map(String::from))
        .collect()
}

/// (copy id, node name, state) of every copy of the knowledge base's shards.
fn copies(gw: &str) -> Vec<(u64, String, String)> {
    let kb = get_json(&format!("{gw}/v1/knowledge-bases/{KB}")).expect("kb");
    let mut out = Vec::new();
    for s in kb["shards"].as_array().cloned().unwrap_or_default() {
        for c in s["copies"].as_array().cloned().unwrap_or_default() {
            out.push((
                s["shard"].as_u64().unwrap_or(99),
                c["node_name"].as_str().unwrap_or("").to_string(),
                c["state"].as_str().unwrap_or("").to_string(),
            ));
        }
    }
    out
}

fn all_copies_ready(gw: &str, want: usize) -> bool {
    let c = copies(gw);
    c.len() == want && c.iter().all(|(_, _, s)| s == "ready")
}

/// PUT a raw upload; (status, body).
fn put(gw: &str, id: &str, content_type: &str, body: &[u8], query: &str) -> (u16, Value) {
    let url = format!("{gw}/v1/knowledge-bases/{KB}/documents/{id}{query}");
    let mut resp = agent(Duration::from_secs(120))
        .put(&url)
        .header("Authorization", &format!("Bearer {API_KEY}"))
        .header("Content-Type", content_type)
        .send(body)
        .expect("put");
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[test]
fn knowledge_bases_ingest_search_answer_and_survive_lost_nodes() {
    let Mesh { coord, mut nodes, dir } = Mesh::start(&["n1", "n2", "n3"], 5000, &[]);
    let gw = coord.gateway();
    let minilm = models_dir().join("all-minilm-l6-v2");
    let gguf = gguf();
    for (name, source, replicas) in
        [(EMBED, minilm.to_str().expect("utf8"), "3"), (CHAT, gguf.to_str().expect("utf8"), "1")]
    {
        shoal_ok(&[
            "deploy",
            name,
            "--source",
            source,
            "--replicas",
            replicas,
            "--wait-ready",
            replicas,
            "--timeout",
            "240",
            "--gateway",
            &gw,
        ]);
    }

    // A knowledge base: 2 shards × 2 copies on distinct nodes, small chunks.
    let text = shoal_ok(&[
        "kb",
        "create",
        KB,
        "--embedding",
        EMBED,
        "--shards",
        "2",
        "--replicas",
        "2",
        "--chunk-tokens",
        "48",
        "--chunk-overlap",
        "8",
        "--gateway",
        &gw,
    ]);
    assert!(text.contains("384 dimensions"), "{text}");
    wait_until(Duration::from_secs(30), "4 shard copies ready", || all_copies_ready(&gw, 4));
    for shard in [0, 1] {
        let mut holders: Vec<String> = copies(&gw).into_iter().filter(|c| c.0 == shard).map(|c| c.1).collect();
        holders.dedup();
        assert_eq!(holders.len(), 2, "shard {shard} copies on distinct nodes: {:?}", copies(&gw));
    }

    // Ingest a folder with progress; the same command again changes nothing.
    let corpus = dir.path().join("corpus");
    write_corpus(&corpus);
    let corpus_s = corpus.to_str().expect("utf8").to_string();
    let out = shoal_ok(&["kb", "add", KB, &corpus_s, "--tags", "demo", "--meta", "batch=1", "--gateway", &gw]);
    assert!(out.contains("[1/6]") && out.contains("[6/6]"), "progress per file: {out}");
    assert!(out.contains("6 documents: 6 indexed, 0 unchanged, 0 failed"), "{out}");
    let again = shoal_ok(&["kb", "add", KB, &corpus_s, "--tags", "demo", "--meta", "batch=1", "--gateway", &gw]);
    assert!(again.contains("6 documents: 0 indexed, 6 unchanged, 0 failed"), "idempotent: {again}");
    let docs = get_json(&format!("{gw}/v1/knowledge-bases/{KB}/documents")).expect("docs");
    let ids: Vec<&str> = docs["data"].as_array().expect("list").iter().filter_map(|d| d["id"].as_str()).collect();
    assert_eq!(
        ids,
        ["en/bread.html", "en/festival.pdf", "en/lighthouse.md", "en/volcano.txt", "zh/changcheng.txt", "zh/panda.md"]
    );
    let kb = get_json(&format!("{gw}/v1/knowledge-bases/{KB}")).expect("kb");
    assert_eq!(kb["documents"], 6);
    assert!(kb["chunks"].as_u64().unwrap_or(0) >= 6, "{kb}");
    let titles: Vec<&str> = docs["data"].as_array().expect("list").iter().filter_map(|d| d["title"].as_str()).collect();
    assert!(titles.contains(&"The Harbor Lighthouse") && titles.contains(&"Sourdough basics"), "{titles:?}");
    assert!(titles.contains(&"The Zorblat festival"), "the PDF's title: {titles:?}");

    // Paraphrased questions find the right chunk first, in English and Chinese (all-MiniLM
    // is an English model: Chinese questions rely on the BM25 side with jieba, so they are
    // checked in hybrid and sparse mode).
    let english = [
        ("Who was the engineer behind the old harbour light tower?", "en/lighthouse.md"),
        ("When did the volcano on Sannet last erupt?", "en/volcano.txt"),
        ("How do I keep my bread starter alive?", "en/bread.html"),
    ];
    let chinese = [("北京附近哪一段长城最有名？", "zh/changcheng.txt"), ("熊猫平时吃什么？", "zh/panda.md")];
    let cases = english
        .iter()
        .map(|c| ("dense", *c))
        .chain(english.iter().map(|c| ("hybrid", *c)))
        .chain(chinese.iter().map(|c| ("hybrid", *c)))
        .chain(chinese.iter().map(|c| ("sparse", *c)));
    for (mode, (q, want)) in cases {
        {
            let v = search(&gw, q, mode, json!({}));
            assert_eq!(top_doc(&v), want, "{mode} '{q}': {v}");
            assert_eq!(v["shards"]["answered"], 2, "{v}");
            let hit = &v["data"][0];
            assert!(hit["text"].as_str().is_some_and(|t| !t.is_empty()) && hit["score"].as_f64().is_some(), "{hit}");
            assert!(hit["title"].as_str().is_some() && hit["chunk_id"].as_str().is_some(), "{hit}");
        }
    }
    assert_eq!(top_doc(&search(&gw, "Olsen", "sparse", json!({}))), "en/lighthouse.md");
    assert_eq!(top_doc(&search(&gw, "八达岭", "sparse", json!({}))), "zh/changcheng.txt");
    assert!(docs_in(&search(&gw, "ignored script text", "sparse", json!({}))).is_empty(), "script text is not indexed");
    // Filters: tags, metadata, document ids.
    let v = search(&gw, "volcano", "hybrid", json!({"filter": {"document_ids": ["zh/panda.md"]}}));
    assert!(docs_in(&v).iter().all(|d| d == "zh/panda.md") && !docs_in(&v).is_empty(), "{v}");
    let v = search(&gw, "volcano", "hybrid", json!({"filter": {"tags": ["nope"]}}));
    assert!(docs_in(&v).is_empty(), "{v}");
    let v = search(&gw, "volcano", "hybrid", json!({"filter": {"tags": ["demo"], "metadata": {"batch": "1"}}}));
    assert_eq!(top_doc(&v), "en/volcano.txt", "{v}");
    let out = shoal_ok(&["kb", "search", KB, "harbour lighthouse engineer", "--gateway", &gw]);
    assert!(out.contains("en/lighthouse.md"), "{out}");

    // RAG chat: a fact only the knowledge base holds, with citations.
    let body = json!({
        "model": CHAT,
        "messages": [{"role": "user", "content": "On which day is the Zorblat festival of Quillby held?"}],
        "temperature": 0, "max_tokens": 40,
        "knowledge_base": {"name": KB, "top_k": 3},
    });
    let (status, v) = post(&format!("{gw}/v1/chat/completions"), body.clone());
    assert_eq!(status, 200, "{v}");
    let answer = v["choices"][0]["message"]["content"].as_str().expect("answer").to_lowercase();
    assert!(answer.contains("march") || answer.contains("14"), "RAG answer: {answer}");
    let cites = v["citations"].as_array().expect("citations");
    assert_eq!(cites[0]["document_id"], "en/festival.pdf", "{v}");
    assert!(cites.iter().all(|c| c["cited"].is_boolean() && c["index"].is_u64() && c["text"].is_string()), "{v}");
    // Streaming: the first chunk carries the citations, the last one which were cited.
    let mut stream_body = body.clone();
    stream_body["stream"] = json!(true);
    let resp = agent(Duration::from_secs(120))
        .post(&format!("{gw}/v1/chat/completions"))
        .header("Authorization", &format!("Bearer {API_KEY}"))
        .send_json(stream_body)
        .expect("stream");
    let events: Vec<Value> = std::io::BufRead::lines(std::io::BufReader::new(resp.into_body().into_reader()))
        .map_while(Result::ok)
        .filter_map(|l| l.strip_prefix("data: ").and_then(|d| serde_json::from_str(d).ok()))
        .collect();
    assert_eq!(events[0]["citations"][0]["document_id"], "en/festival.pdf", "{:?}", events.first());
    assert!(events.iter().any(|e| e["cited"].is_array()), "final chunk says which were cited");
    // An unknown knowledge base is a 404.
    let mut bad = body.clone();
    bad["knowledge_base"] = json!("no-such-kb");
    assert_eq!(post(&format!("{gw}/v1/chat/completions"), bad).0, 404);

    // Replacing a document: the new text is found, the old one is gone.
    let (status, v) = put(
        &gw,
        "en%2Fvolcano.txt",
        "text/plain",
        "Mount Keravel is a dormant volcano on the island of Sannet. Its last eruption was in 1921.".as_bytes(),
        "?tags=demo&meta.batch=2",
    );
    assert_eq!((status, v["status"].as_str()), (200, Some("replaced")), "{v}");
    let v = search(&gw, "When did the volcano on Sannet last erupt?", "hybrid", json!({}));
    assert!(v["data"][0]["text"].as_str().unwrap_or("").contains("1921"), "{v}");
    assert!(docs_in(&search(&gw, "ash fell fishing villages nine days", "sparse", json!({})))
        .iter()
        .all(|d| d != "en/volcano.txt"));

    // Deleting a document removes its chunks from every copy.
    shoal_ok(&["kb", "rm", KB, "en/bread.html", "--gateway", &gw]);
    for mode in ["sparse", "dense", "hybrid"] {
        let v = search(&gw, "sourdough starter flour water yeast", mode, json!({}));
        assert!(!docs_in(&v).contains(&"en/bread.html".to_string()), "{mode}: {v}");
    }
    let (status, _) = post(&format!("{gw}/v1/knowledge-bases/{KB}/search"), json!({"query": "x", "mode": "fuzzy"}));
    assert_eq!(status, 400);
    let del = agent(Duration::from_secs(30))
        .delete(&format!("{gw}/v1/knowledge-bases/{KB}/documents/en%2Fbread.html"))
        .header("Authorization", &format!("Bearer {API_KEY}"))
        .call()
        .expect("delete");
    assert_eq!(del.status().as_u16(), 404, "deleting twice");

    // Bad uploads: a clear 4xx each, and nothing changes.
    let before = get_json(&format!("{gw}/v1/knowledge-bases/{KB}")).expect("kb")["documents"].clone();
    for (id, ct, body, want, words) in [
        ("a.zip", "application/zip", b"PK\x03\x04junk".to_vec(), 415, "unsupported"),
        ("b", "application/pdf", b"%PDF-1.4 this is not a pdf".to_vec(), 400, "pdf"),
        ("c", "text/plain", vec![0x66, 0x6f, 0xff, 0xfe, 0x6f], 400, "utf-8"),
        ("d", "text/plain", b"   \n  ".to_vec(), 400, "no text"),
        ("e", "text/html", b"<html><body><script>x()</script></body></html>".to_vec(), 400, "no text"),
    ] {
        let (status, v) = put(&gw, id, ct, &body, "");
        let msg = v["error"]["message"].as_str().unwrap_or("").to_lowercase();
        assert_eq!(status, want, "{id}: {v}");
        assert!(msg.contains(words), "{id}: {msg}");
    }
    let (status, _) = put(&gw, "x", "text/plain", b"hello", "?colour=red");
    assert_eq!(status, 400, "unknown parameter");
    let url = format!("{gw}/v1/knowledge-bases/nope/documents/x");
    let resp = agent(Duration::from_secs(30))
        .put(&url)
        .header("Authorization", &format!("Bearer {API_KEY}"))
        .header("Content-Type", "text/plain")
        .send("hello")
        .expect("put");
    assert_eq!(resp.status().as_u16(), 404);
    let (status, _) = post(&format!("{gw}/v1/knowledge-bases/{KB}/documents"), json!({"id": "j", "colour": 1}));
    assert_eq!(status, 400, "unknown JSON field");
    let after = get_json(&format!("{gw}/v1/knowledge-bases/{KB}")).expect("kb")["documents"].clone();
    assert_eq!(before, after);
    // A JSON document works too.
    let (status, v) = post(
        &format!("{gw}/v1/knowledge-bases/{KB}/documents"),
        json!({"id": "notes/json", "text": "The ferry to Sannet leaves at seven every morning.", "title": "Ferry"}),
    );
    assert_eq!((status, v["status"].as_str()), (200, Some("indexed")), "{v}");
    assert_eq!(top_doc(&search(&gw, "What time does the boat to Sannet depart?", "dense", json!({}))), "notes/json");

    // Export and import (what a control-plane backup does not hold): every document with its
    // chunks and vectors to a file, then into a new base without embedding anything again;
    // the copy answers as the original does.
    let kb_doc = get_json(&format!("{gw}/v1/knowledge-bases/{KB}")).expect("kb");
    let held = kb_doc["documents"].as_u64().or(kb_doc["documents"].as_array().map(|a| a.len() as u64)).expect("count");
    let file = dir.path().join("facts.kb.jsonl");
    let file_s = file.to_str().expect("utf8");
    let out = shoal_ok(&["kb", "export", KB, file_s, "--gateway", &gw]);
    assert!(out.contains(&format!("exported {held} documents of {KB}")), "{out}");
    shoal_ok(&["kb", "create", "facts-copy", "--embedding", EMBED, "--shards", "1", "--gateway", &gw]);
    let out = shoal_ok(&["kb", "import", "facts-copy", file_s, "--gateway", &gw]);
    assert!(out.contains(&format!("imported {held} documents into facts-copy (0 already")), "{out}");
    let out = shoal_ok(&["kb", "import", "facts-copy", file_s, "--gateway", &gw]);
    assert!(out.contains(&format!("imported 0 documents into facts-copy ({held} already there unchanged)")), "{out}");
    for (q, mode) in [("When did the volcano on Sannet last erupt?", "dense"), ("八达岭", "sparse")] {
        let (status, copy) =
            post(&format!("{gw}/v1/knowledge-bases/facts-copy/search"), json!({"query": q, "mode": mode, "top_k": 5}));
        assert_eq!(status, 200, "{copy}");
        assert_eq!(top_doc(&copy), top_doc(&search(&gw, q, mode, json!({}))), "{q}: {copy}");
    }
    // An export cut short is refused before anything is imported, and so are vectors of
    // another dimension.
    let text = std::fs::read_to_string(&file).expect("export");
    let cut = dir.path().join("cut.kb.jsonl");
    std::fs::write(&cut, text.lines().take(3).collect::<Vec<_>>().join("\n")).expect("write");
    let out = run(&["kb", "import", "facts-copy", cut.to_str().expect("utf8"), "--gateway", &gw]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("cut short"), "{err}");
    let mut doc: Value = serde_json::from_str(text.lines().nth(1).expect("a document line")).expect("json");
    doc["id"] = json!("short-vectors");
    doc["chunks"][0]["vector"] = json!([0.5, 0.5]);
    let (status, v) = post(&format!("{gw}/v1/knowledge-bases/facts-copy/import"), doc);
    assert!(status == 400 && v.to_string().contains("2-dimensional"), "{status} {v}");
    shoal_ok(&["kb", "delete", "facts-copy", "--gateway", &gw]);

    // Metrics: ingest progress, index sizes, search latency per mode, copy health.
    assert!(metric_sum(&gw, "shoal_kb_ingest_documents_total") >= 13.0);
    assert!(metric_sum(&gw, "shoal_kb_ingest_chunks_total") >= 7.0);
    assert!(metric_sum(&gw, "shoal_kb_search_duration_seconds_count") > 10.0);
    assert_eq!(metric_sum(&gw, "shoal_kb_shard_ready_copies"), 4.0);
    let node_chunks: f64 = nodes.iter().map(|n| metric_sum(&n.metrics, "shoal_node_index_chunks")).sum();
    assert!(node_chunks >= 2.0 * 6.0, "every chunk is held twice: {node_chunks}");
    // A standalone node's histograms are Prometheus histograms (buckets), as on `shoal up`.
    let (_, node_metrics) = get(&format!("{}/metrics", nodes[0].metrics), None).expect("node metrics");
    assert!(node_metrics.contains("shoal_node_embedding_batch_size_bucket{"), "no histogram buckets on a node");
    assert!(!node_metrics.contains("quantile="), "a node rendered summaries");

    // Lose a node that holds copies of both shards: searches keep answering at once (other copy).
    let all_docs = [
        "en/festival.pdf",
        "en/lighthouse.md",
        "en/volcano.txt",
        "zh/changcheng.txt",
        "zh/panda.md",
        "notes/json",
        "notes/durable",
    ];
    let findable = |gw: &str| {
        for (q, want) in [
            ("Zorblat festival Quillby", "en/festival.pdf"),
            ("Harbor Lighthouse Margaret Olsen", "en/lighthouse.md"),
            ("Mount Keravel volcano", "en/volcano.txt"),
            ("八达岭长城", "zh/changcheng.txt"),
            ("大熊猫 竹子", "zh/panda.md"),
            ("ferry to Sannet", "notes/json"),
            ("Ada Finch wound the tide clock", "notes/durable"),
        ] {
            let v = search(gw, q, "hybrid", json!({}));
            assert_eq!(v["shards"]["answered"], 2, "{q}: {v}");
            assert_eq!(top_doc(&v), want, "{q}: {v}");
        }
    };
    let holders: Vec<String> = copies(&gw).into_iter().map(|c| c.1).collect();
    let victim = ["n1", "n2", "n3"]
        .into_iter()
        .max_by_key(|n| holders.iter().filter(|h| h == n).count())
        .expect("a holder")
        .to_string();
    let idx = nodes.iter().position(|m| m.name == victim).expect("victim");
    // A write is acknowledged only once two copies persisted it: SIGKILL one of them right
    // after the answer and the document is on the other (the victim holds a copy of each shard).
    let (status, v) = post(
        &format!("{gw}/v1/knowledge-bases/{KB}/documents"),
        json!({"id": "notes/durable", "text": "The tide clock of Quillby harbour was wound by Ada Finch every Sunday."}),
    );
    assert_eq!((status, v["status"].as_str(), v["copies_written"].as_u64()), (200, Some("indexed"), Some(2)), "{v}");
    nodes[idx].proc.kill();
    // Right after the loss the dead node's copies are still listed as ready (its lease is
    // 5 s). Searches take turns among a shard's copies, so of two searches in a row one asks
    // the victim first (it holds a copy of both shards) and has to ask the other copy. Sparse
    // searches need no query embedding (a query embedded on the dead node's replica waits
    // for it), so both run well within the lease, each waiting at most 2 s for a dead copy.
    for q in ["Zorblat festival Quillby", "Harbor Lighthouse Margaret Olsen"] {
        let v = search(&gw, q, "sparse", json!({}));
        assert_eq!(v["shards"]["answered"], 2, "{q}: {v}");
    }
    assert!(metric_sum(&gw, "shoal_kb_shard_failovers_total") >= 1.0, "searches failed over");
    findable(&gw);
    // The coordinator notices, places fresh copies on the spare node and they rebuild from the survivors.
    wait_until(Duration::from_secs(60), "copies rebuilt after the node loss", || {
        let c = copies(&gw);
        all_copies_ready(&gw, 4) && !c.iter().any(|(_, n, _)| *n == victim)
    });
    let rebuilt: f64 = nodes
        .iter()
        .filter(|n| n.name != victim)
        .map(|n| metric_sum(&n.metrics, "shoal_node_index_rebuilt_documents_total"))
        .sum();
    assert!(rebuilt >= 1.0, "documents copied from the surviving copies: {rebuilt}");
    // Now lose a second node: every document is still there, on copies that were rebuilt.
    let second = nodes.iter().position(|m| m.name != victim).expect("second");
    let second_name = nodes[second].name.clone();
    nodes[second].proc.kill();
    findable(&gw);
    wait_until(Duration::from_secs(30), "the dead nodes' copies are gone", || {
        copies(&gw).iter().all(|(_, n, s)| *n != victim && *n != second_name && s == "ready")
    });
    findable(&gw);
    let last = nodes.iter().position(|m| m.name != victim && m.name != second_name).expect("survivor");
    let docs_held = metric_sum(&nodes[last].metrics, "shoal_node_index_documents");
    assert_eq!(docs_held, all_docs.len() as f64, "the survivor holds every document once per shard");

    // Restarting the survivor (within its lease) reopens its copies from disk: nothing to copy from.
    let survivor = &mut nodes[last];
    survivor.proc.kill();
    let metrics_addr = survivor.metrics.trim_start_matches("http://").to_string();
    survivor.proc = join(&coord, dir.path(), &survivor.name, None, &["--metrics", &metrics_addr]);
    wait_until(Duration::from_secs(30), "copies ready after the restart", || {
        get(&nodes[last].metrics, None).is_some()
            && metric_sum(&nodes[last].metrics, "shoal_node_index_documents") == all_docs.len() as f64
    });
    // (The new process loads its embedding replica again; the index copies did not wait for it.)
    wait_until(Duration::from_secs(120), "the embedding model is back", || {
        post(&format!("{gw}/v1/knowledge-bases/{KB}/search"), json!({"query": "x", "mode": "dense"})).0 == 200
    });
    findable(&gw);
    let log = nodes[last].proc.log_text();
    assert!(log.contains("reopened from disk"), "{log}");
    let last = &nodes[last];

    // Deleting the knowledge base removes every copy.
    shoal_ok(&["kb", "delete", KB, "--gateway", &gw]);
    wait_until(Duration::from_secs(10), "index copies removed from the node", || {
        metric_sum(&last.metrics, "shoal_node_index_documents") == 0.0
    });
    drop(nodes);
}

use shoal_testkit::pg;

/// The scale-out backend: a knowledge base kept in PostgreSQL with pgvector (a real server
/// started for the test) behaves like the built-in one through the same API and CLI.
#[test]
fn a_knowledge_base_in_postgres_ingests_searches_and_deletes() {
    let server = pg::PgServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let coord = Coord::start(&dir.path().join("coord"), 200, 3000);
    let gw = coord.gateway();
    let (token, hash) = coord.token("1h");
    let _node = join(&coord, dir.path(), "n1", Some((&token, &hash)), &[]);
    wait_until(Duration::from_secs(60), "node ready", || coord.nodes().iter().any(|n| n["state"] == "ready"));
    let minilm = models_dir().join("all-minilm-l6-v2");
    shoal_ok(&[
        "deploy",
        EMBED,
        "--source",
        minilm.to_str().expect("utf8"),
        "--wait-ready",
        "1",
        "--timeout",
        "240",
        "--gateway",
        &gw,
    ]);
    // A database that cannot be reached is refused at creation, with the address and no password.
    let out = run(&[
        "kb",
        "create",
        "bad",
        "--embedding",
        EMBED,
        "--postgres",
        "postgres://u:secret@127.0.0.1:1/db",
        "--gateway",
        &gw,
    ]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success() && text.contains("127.0.0.1:1") && !text.contains("secret"), "{text}");

    let url = server.url();
    let text = shoal_ok(&[
        "kb",
        "create",
        KB,
        "--embedding",
        EMBED,
        "--postgres",
        &url,
        "--chunk-tokens",
        "48",
        "--gateway",
        &gw,
    ]);
    assert!(text.contains("backend postgres"), "{text}");
    let corpus = dir.path().join("corpus");
    write_corpus(&corpus);
    let out = shoal_ok(&["kb", "add", KB, corpus.to_str().expect("utf8"), "--gateway", &gw]);
    assert!(out.contains("6 documents: 6 indexed, 0 unchanged, 0 failed"), "{out}");
    for (mode, q, want) in [
        ("dense", "Who was the engineer behind the old harbour light tower?", "en/lighthouse.md"),
        ("hybrid", "When did the volcano on Sannet last erupt?", "en/volcano.txt"),
        ("sparse", "Olsen", "en/lighthouse.md"),
        ("sparse", "八达岭", "zh/changcheng.txt"),
        ("hybrid", "熊猫平时吃什么？", "zh/panda.md"),
    ] {
        assert_eq!(top_doc(&search(&gw, q, mode, json!({}))), want, "{mode} {q}");
    }
    let v = search(&gw, "volcano", "hybrid", json!({"filter": {"document_ids": ["zh/panda.md"]}}));
    assert!(docs_in(&v).iter().all(|d| d == "zh/panda.md"), "{v}");
    shoal_ok(&["kb", "rm", KB, "en/volcano.txt", "--gateway", &gw]);
    assert!(!docs_in(&search(&gw, "Mount Keravel volcano Sannet", "hybrid", json!({})))
        .contains(&"en/volcano.txt".to_string()));
    // Deleting the knowledge base drops its table.
    shoal_ok(&["kb", "delete", KB, "--gateway", &gw]);
    let out = server.psql("select count(*) from pg_tables where tablename like 'shoal_kb_%'");
    assert_eq!(out.trim(), "0", "{out}");
}
