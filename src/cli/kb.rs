//! `shoal kb`: knowledge bases — create one bound to an embedding model on the mesh, list
//! them with their documents and index-shard copies, delete one.

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
    }
}
