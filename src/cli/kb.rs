//! `shoal kb`: knowledge bases — create one bound to an embedding model on the mesh, list
//! them with their documents and index-shard copies, delete one; add, list and remove
//! documents; search.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::client::GatewayArgs;
use super::format::table;

#[derive(Debug, Subcommand)]
pub enum KbCommand {
    /// Create a knowledge base.
    Create(CreateArgs),
    /// List the knowledge bases.
    List(ListArgs),
    /// Delete a knowledge base and its index.
    Delete(DeleteArgs),
    /// Add (or replace) documents: files and folders of .txt, .md, .html and .pdf, with
    /// progress; running it again skips what is already indexed unchanged.
    Add(AddArgs),
    /// List a knowledge base's documents.
    Docs(DocsArgs),
    /// Remove documents (their chunks leave every index copy).
    Rm(RemoveArgs),
    /// Search a knowledge base.
    Search(SearchArgs),
    /// Write every document of a knowledge base, with its chunks and vectors, to a JSON-lines
    /// file (what a `shoal backup` does not hold: the index copies live on the nodes).
    Export(ExportArgs),
    /// Add the documents of an export file to a knowledge base as they are (nothing is
    /// embedded again); documents already there unchanged are skipped.
    Import(ImportArgs),
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    pub kb: String,
    /// The file to write (JSON lines).
    pub file: PathBuf,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The knowledge base to add to (create it first, with the same embedding model).
    pub kb: String,
    /// A file written by `shoal kb export`.
    pub file: PathBuf,
    /// Import into a base whose embedding deployment has another name (it must be the same
    /// model: the vectors are used as they are).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    pub name: String,
    /// The embedding deployment that embeds its chunks and queries (e.g. all-minilm-l6-v2).
    #[arg(long)]
    pub embedding: String,
    /// Index shards (documents are spread over them).
    #[arg(long, default_value_t = 1)]
    pub shards: u32,
    /// Copies of each shard, on distinct nodes.
    #[arg(long, default_value_t = 2)]
    pub replicas: u32,
    /// Chunk size in tokens of the embedding model.
    #[arg(long, default_value_t = 256)]
    pub chunk_tokens: u32,
    /// Tokens shared by consecutive chunks.
    #[arg(long, default_value_t = 32)]
    pub chunk_overlap: u32,
    /// Keep the index in PostgreSQL with pgvector (postgres://user:password@host:port/db)
    /// instead of index shards on the nodes.
    #[arg(long)]
    pub postgres: Option<String>,
    #[arg(long, default_value = "")]
    pub description: String,
    /// Return at once instead of waiting until every shard has a ready copy.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to wait for the copies, in seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print the raw JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    pub name: String,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

/// The knowledge bases as a table: one row per base.
pub fn kb_table(list: &Value) -> String {
    let items = list["data"].as_array().cloned().unwrap_or_default();
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|k| {
            let shards = k["shards"].as_array().cloned().unwrap_or_default();
            let copies: usize = shards.iter().map(|s| s["copies"].as_array().map_or(0, Vec::len)).sum();
            vec![
                k["name"].as_str().unwrap_or("").to_string(),
                k["embedding_model"].as_str().unwrap_or("").to_string(),
                k["backend"]["kind"].as_str().unwrap_or("").to_string(),
                k["documents"].to_string(),
                k["chunks"].to_string(),
                format!("{} × {}", shards.len(), k["replicas"]),
                copies.to_string(),
            ]
        })
        .collect();
    let mut out = format!("KNOWLEDGE BASES ({})\n", items.len());
    out.push_str(&table(&["NAME", "EMBEDDING", "BACKEND", "DOCS", "CHUNKS", "SHARDS", "COPIES PLACED"], &rows));
    out
}

pub async fn run(cmd: KbCommand) -> anyhow::Result<()> {
    match cmd {
        KbCommand::Create(a) => {
            a.gateway.wait_ready(Duration::from_secs(60)).await?;
            let body = json!({
                "name": a.name, "embedding_model": a.embedding, "shards": a.shards, "replicas": a.replicas,
                "chunk_tokens": a.chunk_tokens, "chunk_overlap": a.chunk_overlap, "postgres_url": a.postgres,
                "description": a.description,
            });
            let k = a.gateway.post("/v1/knowledge-bases", body).await?;
            println!(
                "created knowledge base {} (embedding {}, {} dimensions, backend {})",
                k["name"].as_str().unwrap_or(""),
                k["embedding_model"].as_str().unwrap_or(""),
                k["dimension"],
                k["backend"]["kind"].as_str().unwrap_or("")
            );
            if !a.no_wait {
                wait_ready(&a.gateway, &a.name, Duration::from_secs(a.timeout)).await?;
            }
            Ok(())
        }
        KbCommand::List(a) => {
            let list = a.gateway.get("/v1/knowledge-bases").await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print!("{}", kb_table(&list));
            }
            Ok(())
        }
        KbCommand::Delete(a) => {
            a.gateway.delete(&format!("/v1/knowledge-bases/{}", a.name)).await?;
            println!("deleted knowledge base {}", a.name);
            Ok(())
        }
        KbCommand::Add(a) => add(a).await,
        KbCommand::Docs(a) => {
            let list = a.gateway.get(&format!("/v1/knowledge-bases/{}/documents", encode_segment(&a.kb))).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                let items = list["data"].as_array().cloned().unwrap_or_default();
                let rows: Vec<Vec<String>> = items
                    .iter()
                    .map(|d| {
                        vec![
                            d["id"].as_str().unwrap_or("").to_string(),
                            d["title"].as_str().unwrap_or("").to_string(),
                            d["chunks"].to_string(),
                            d["bytes"].to_string(),
                            d["tags"]
                                .as_array()
                                .map(|t| t.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","))
                                .unwrap_or_default(),
                        ]
                    })
                    .collect();
                println!("DOCUMENTS ({})", items.len());
                print!("{}", table(&["ID", "TITLE", "CHUNKS", "BYTES", "TAGS"], &rows));
            }
            Ok(())
        }
        KbCommand::Rm(a) => {
            for id in &a.ids {
                let route = format!("/v1/knowledge-bases/{}/documents/{}", encode_segment(&a.kb), encode_segment(id));
                a.gateway.delete(&route).await?;
                println!("removed {id}");
            }
            Ok(())
        }
        KbCommand::Export(a) => {
            let tmp = a.file.with_extension("partial");
            let bytes = a.gateway.download(&format!("/v1/knowledge-bases/{}/export", a.kb), tmp.clone()).await?;
            let checked = check_export(&tmp);
            let summary = match checked {
                Ok(s) => s,
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e.context("the export was cut short; nothing was written"));
                }
            };
            std::fs::rename(&tmp, &a.file).with_context(|| format!("cannot write {}", a.file.display()))?;
            println!(
                "exported {} documents of {} (embedding {}, {} dimensions) to {} ({bytes} bytes)",
                summary.documents.len(),
                a.kb,
                summary.embedding,
                summary.dimension,
                a.file.display()
            );
            Ok(())
        }
        KbCommand::Import(a) => {
            let summary = check_export(&a.file)?;
            let path = match a.force {
                true => format!("/v1/knowledge-bases/{}/import", a.kb),
                false => format!("/v1/knowledge-bases/{}/import?embedding={}", a.kb, summary.embedding),
            };
            let text = std::fs::read_to_string(&a.file).with_context(|| format!("cannot read {}", a.file.display()))?;
            let (mut added, mut unchanged) = (0, 0);
            let total = summary.documents.len();
            for (i, l) in text.lines().skip(1).take(total).enumerate() {
                let doc: Value = serde_json::from_str(l).with_context(|| format!("line {}", i + 2))?;
                let r =
                    a.gateway.post(&path, doc).await.with_context(|| format!("document {}", summary.documents[i]))?;
                if r["status"] == "unchanged" {
                    unchanged += 1;
                } else {
                    added += 1;
                }
                eprint!("\r{}/{total} documents", i + 1);
            }
            if total > 0 {
                eprintln!();
            }
            println!("imported {added} documents into {} ({unchanged} already there unchanged)", a.kb);
            Ok(())
        }
        KbCommand::Search(a) => {
            let body = json!({"query": a.query, "top_k": a.top_k, "mode": a.mode});
            let v = a.gateway.post(&format!("/v1/knowledge-bases/{}/search", encode_segment(&a.kb)), body).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if v["data"].as_array().is_none_or(Vec::is_empty) {
                let docs = v["documents"].as_u64().map(|n| format!(" ({n} documents)")).unwrap_or_default();
                println!("no hits in '{}'{docs} for that query", a.kb);
            } else {
                print!("{}", hits_text(&v));
            }
            Ok(())
        }
    }
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// The knowledge base.
    pub kb: String,
    /// Files or folders (folders are walked for .txt, .md, .html and .pdf files).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Document title (default: the document's own title, else the file name).
    #[arg(long)]
    pub title: Option<String>,
    /// Where the document comes from (default: the file name).
    #[arg(long)]
    pub source: Option<String>,
    /// Comma-separated tags.
    #[arg(long)]
    pub tags: Option<String>,
    /// Metadata KEY=VALUE (repeatable); searches can filter on it.
    #[arg(long = "meta")]
    pub meta: Vec<String>,
    /// Fail at once when the base cannot take documents yet, instead of waiting up to a
    /// minute for its copies and embedding model.
    #[arg(long)]
    pub no_wait: bool,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

#[derive(Debug, Args)]
pub struct DocsArgs {
    pub kb: String,
    /// Print the raw JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

#[derive(Debug, Args)]
pub struct RemoveArgs {
    pub kb: String,
    /// Document ids (as `shoal kb docs` shows them).
    #[arg(required = true)]
    pub ids: Vec<String>,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

#[derive(Debug, Args)]
pub struct SearchArgs {
    pub kb: String,
    pub query: String,
    /// dense, sparse or hybrid.
    #[arg(long, default_value = "hybrid", value_parser = ["dense", "sparse", "hybrid"])]
    pub mode: String,
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    /// Print the raw JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

/// File extensions `kb add` picks up in folders.
const INGESTED_EXTENSIONS: &[&str] = &["txt", "text", "md", "markdown", "html", "htm", "pdf"];

/// Files to upload with their document ids, and files skipped in folders.
pub type Collected = (Vec<(PathBuf, String)>, Vec<PathBuf>);

/// The files to upload with their document ids: a file given by itself is named by its file
/// name, a file found in a folder by its path below that folder. Files in folders with other
/// extensions are returned second, to be listed as skipped.
pub fn collect_files(paths: &[PathBuf]) -> anyhow::Result<Collected> {
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut stack = vec![p.clone()];
            while let Some(dir) = stack.pop() {
                let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
                    .with_context(|| format!("cannot read {}", dir.display()))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .collect();
                entries.sort();
                for e in entries {
                    if e.is_dir() {
                        stack.push(e);
                    } else if e
                        .extension()
                        .and_then(|x| x.to_str())
                        .is_some_and(|x| INGESTED_EXTENSIONS.contains(&x.to_ascii_lowercase().as_str()))
                    {
                        let id = e.strip_prefix(p).unwrap_or(&e).to_string_lossy().replace('\\', "/");
                        out.push((e, id));
                    } else {
                        skipped.push(e);
                    }
                }
            }
        } else if p.is_file() {
            let id = p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            out.push((p.clone(), id));
        } else {
            anyhow::bail!("{} is not a file or folder", p.display());
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    skipped.sort();
    Ok((out, skipped))
}

/// Percent-encodes a path segment.
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn content_type_of(path: &std::path::Path) -> &'static str {
    match path.extension().and_then(|x| x.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("md" | "markdown") => "text/markdown",
        Some("html" | "htm") => "text/html",
        Some("pdf") => "application/pdf",
        Some("txt" | "text") => "text/plain",
        _ => "application/octet-stream",
    }
}

async fn add(a: AddArgs) -> anyhow::Result<()> {
    a.gateway.wait_ready(Duration::from_secs(60)).await?;
    let (files, skipped) = collect_files(&a.paths)?;
    for s in &skipped {
        println!("skipped {} (only .txt, .md, .html and .pdf files are added)", s.display());
    }
    if files.is_empty() {
        anyhow::bail!("no .txt, .md, .html or .pdf files under the given paths");
    }
    // A base that does not exist is one error, not one per file.
    let route = format!("/v1/knowledge-bases/{}", encode_segment(&a.kb));
    if let Err(e) = a.gateway.get(&route).await {
        if format!("{e:#}").contains("404") {
            anyhow::bail!(
                "no knowledge base named '{}': create it first with `shoal kb create {} --embedding MODEL`",
                a.kb,
                a.kb
            );
        }
        return Err(e);
    }
    let mut query = Vec::new();
    for (k, v) in [("title", &a.title), ("source", &a.source), ("tags", &a.tags)] {
        if let Some(v) = v {
            query.push((k.to_string(), v.clone()));
        }
    }
    for m in &a.meta {
        let (k, v) = m.split_once('=').ok_or_else(|| anyhow::anyhow!("--meta takes KEY=VALUE, got '{m}'"))?;
        query.push((format!("meta.{k}"), v.to_string()));
    }
    if a.no_wait {
        query.push(("wait".into(), "false".into()));
    }
    let started = Instant::now();
    let (n, mut chunks, mut failed, mut unchanged) = (files.len(), 0u64, 0usize, 0usize);
    for (i, (path, id)) in files.iter().enumerate() {
        let t = Instant::now();
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut q = query.clone();
        q.push(("file_name".into(), path.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default()));
        let route = format!("/v1/knowledge-bases/{}/documents/{}", encode_segment(&a.kb), encode_segment(id));
        match a.gateway.put_bytes(&route, q, content_type_of(path), bytes).await {
            Ok(d) => {
                let status = d["status"].as_str().unwrap_or("");
                if status == "unchanged" {
                    unchanged += 1;
                } else {
                    chunks += d["chunks"].as_u64().unwrap_or(0);
                }
                println!("[{}/{n}] {id}: {} chunks, {status} ({:.1} s)", i + 1, d["chunks"], t.elapsed().as_secs_f64());
            }
            Err(e) => {
                failed += 1;
                println!("[{}/{n}] {id}: FAILED: {e:#}", i + 1);
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{} documents: {} indexed, {unchanged} unchanged, {failed} failed; {chunks} chunks in {secs:.1} s ({:.1} chunks/s)",
        n,
        n - failed - unchanged,
        chunks as f64 / secs.max(1e-9)
    );
    if failed > 0 {
        anyhow::bail!(
            "{failed} of {n} documents failed (running the same command again retries them; the others are skipped)"
        );
    }
    Ok(())
}

/// What `kb create` prints once a base stops being `pending`.
pub fn readiness_line(k: &Value) -> String {
    let copies: Vec<String> =
        k["ready_copies"].as_array().into_iter().flatten().map(|c| c.as_u64().unwrap_or(0).to_string()).collect();
    match k["status"].as_str().unwrap_or("") {
        "degraded" => format!(
            "degraded: ready copies per shard [{}] of {} wanted ({} ready nodes); documents can be added now, \
             and the missing copies are placed when more nodes join",
            copies.join(", "),
            k["replicas"],
            k["ready_nodes"]
        ),
        "ready" => format!("ready: {} shards × {} copies", copies.len(), k["replicas"]),
        other => format!("{other}: {}", k["status_reason"].as_str().unwrap_or("")),
    }
}

/// Waits until every shard of `name` has a ready copy, printing what it waits for.
async fn wait_ready(gateway: &GatewayArgs, name: &str, timeout: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    let route = format!("/v1/knowledge-bases/{}", encode_segment(name));
    let mut said = String::new();
    loop {
        let k = gateway.get(&route).await?;
        if k["status"] != "pending" {
            println!("{}", readiness_line(&k));
            return Ok(());
        }
        let why = k["status_reason"].as_str().unwrap_or("").to_string();
        if started.elapsed() >= timeout {
            anyhow::bail!(
                "'{name}' is not ready after {} s: {why} (it stays; check `shoal status`, or wait longer with --timeout)",
                timeout.as_secs()
            );
        }
        if why != said {
            println!("waiting: {why}");
            said = why;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Search hits as text: rank, score, document, title and the start of the chunk.
pub fn hits_text(v: &Value) -> String {
    let mut out = String::new();
    for (i, h) in v["data"].as_array().cloned().unwrap_or_default().iter().enumerate() {
        let text: String = h["text"].as_str().unwrap_or("").chars().take(160).collect();
        out.push_str(&format!(
            "{}. [{:.4}] {} — {}\n   {}\n",
            i + 1,
            h["score"].as_f64().unwrap_or(0.0),
            h["document_id"].as_str().unwrap_or(""),
            h["title"].as_str().unwrap_or(""),
            text.replace('\n', " ")
        ));
    }
    if let Some(failed) = v["shards"]["failed"].as_array().filter(|f| !f.is_empty()) {
        out.push_str(&format!("(partial: {} shards did not answer)\n", failed.len()));
    }
    out
}

/// What a whole export file holds, read before anything is imported.
#[derive(Debug)]
pub struct ExportSummary {
    pub embedding: String,
    pub dimension: u64,
    /// Document ids, in file order.
    pub documents: Vec<String>,
}

/// Checks an export file: the header first, one document per line, the end line last with
/// the count of documents. A file cut short (no end line) or changed is refused whole.
pub fn check_export(path: &std::path::Path) -> anyhow::Result<ExportSummary> {
    use std::io::BufRead;
    let file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut lines = std::io::BufReader::new(file).lines().enumerate();
    let bad = |n: usize, why: &str| anyhow!("{} line {}: {why}", path.display(), n + 1);
    let (n, head) = lines.next().ok_or_else(|| anyhow!("{} is empty", path.display()))?;
    let head: String = head?;
    let head: Value = serde_json::from_str(&head).map_err(|e| bad(n, &e.to_string()))?;
    if head["object"] != "shoal.knowledge_base.export" {
        return Err(bad(n, "not a `shoal kb export` file (no export header)"));
    }
    let mut summary = ExportSummary {
        embedding: head["embedding"].as_str().unwrap_or_default().to_string(),
        dimension: head["dimension"].as_u64().unwrap_or(0),
        documents: Vec::new(),
    };
    for (n, l) in lines {
        let l: String = l?;
        let v: Value = serde_json::from_str(&l).map_err(|e| bad(n, &e.to_string()))?;
        if v["object"] == "shoal.knowledge_base.export_end" {
            if v["documents"].as_u64() != Some(summary.documents.len() as u64) {
                return Err(bad(
                    n,
                    &format!(
                        "the end line counts {} documents; the file holds {}",
                        v["documents"],
                        summary.documents.len()
                    ),
                ));
            }
            return Ok(summary);
        }
        let id = v["id"].as_str().ok_or_else(|| bad(n, "a document line without an id"))?;
        summary.documents.push(id.to_string());
    }
    Err(anyhow!("{} has no end line: the export was cut short", path.display()))
}
