//! `shoal key`: API keys with a scope, the models they may use, and their limits.

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::client::GatewayArgs;
use super::format::{parse_duration_secs, table};

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create an API key and print its secret (shown only this once).
    Create(CreateArgs),
    /// List API keys (ids, names, scopes and limits; never secrets).
    List(ListArgs),
    /// Revoke an API key by its id or its name (`shoal key list` shows both).
    Revoke(RevokeArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// A name for the key (letters, digits, '-', '_', '.').
    #[arg(long)]
    pub name: String,
    /// `user` keys call models and knowledge bases; `admin` keys also manage the cluster.
    #[arg(long, default_value = "user", value_parser = ["user", "admin"])]
    pub scope: String,
    /// Deployments the key may use, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    pub models: Vec<String>,
    /// Requests per second, e.g. 10 or 10/s (default: unlimited).
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<u32>,
    /// Prompt and generated tokens per minute (default: unlimited).
    #[arg(long)]
    pub tokens_per_minute: Option<u64>,
    /// When the key expires: 90s, 30m, 24h, 7d (default: never).
    #[arg(long, value_parser = parse_duration_secs)]
    pub expires: Option<u64>,
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
pub struct RevokeArgs {
    /// The key's id (`key-…`) or its name, if no other key has that name.
    pub id: String,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

/// `10`, `10/s`.
fn parse_rate(s: &str) -> Result<u32, String> {
    let n = s.trim().trim_end_matches("/s");
    n.parse::<u32>().map_err(|_| format!("'{s}' is not a rate: give requests per second, like 10 or 10/s"))
}

pub async fn run(cmd: KeyCommand) -> anyhow::Result<()> {
    match cmd {
        KeyCommand::Create(a) => {
            let body = json!({
                "name": a.name,
                "scope": a.scope,
                "models": a.models,
                "rate_per_s": a.rate.unwrap_or(0),
                "tokens_per_minute": a.tokens_per_minute.unwrap_or(0),
                "expires_in_seconds": a.expires,
            });
            let r = a.gateway.post("/v1/keys", body).await?;
            println!("id:     {}", r["id"].as_str().unwrap_or_default());
            println!("name:   {}", r["name"].as_str().unwrap_or_default());
            println!("scope:  {}", r["scope"].as_str().unwrap_or_default());
            println!("key:    {}", r["key"].as_str().unwrap_or_default());
            println!();
            println!(
                "The key is shown only now. Give it to its user as SHOAL_API_KEY (or in a file for --api-key-file)."
            );
            Ok(())
        }
        KeyCommand::List(a) => {
            let r = a.gateway.get("/v1/keys").await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(());
            }
            let mut rows = Vec::new();
            let limit = |v: &Value| match v.as_u64() {
                Some(0) | None => "-".to_string(),
                Some(n) => n.to_string(),
            };
            for k in r["data"].as_array().into_iter().flatten() {
                let models: Vec<&str> =
                    k["models"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                rows.push(vec![
                    k["id"].as_str().unwrap_or_default().to_string(),
                    k["name"].as_str().unwrap_or_default().to_string(),
                    k["scope"].as_str().unwrap_or_default().to_string(),
                    if models.is_empty() { "all".into() } else { models.join(",") },
                    limit(&k["rate_per_s"]),
                    limit(&k["tokens_per_minute"]),
                    k["expires_at_ms"].as_u64().map_or("never".into(), |ms| format!("unix {}", ms / 1000)),
                ]);
            }
            print!("{}", table(&["ID", "NAME", "SCOPE", "MODELS", "RATE/S", "TOKENS/MIN", "EXPIRES"], &rows));
            Ok(())
        }
        KeyCommand::Revoke(a) => {
            let keys = a.gateway.get("/v1/keys").await?;
            let id = key_id(&keys, &a.id).map_err(|e| anyhow::anyhow!(e))?;
            a.gateway.delete(&format!("/v1/keys/{id}")).await?;
            println!("revoked {id}");
            Ok(())
        }
    }
}

/// The id of the key `given` names: an id, else the one key with that name.
fn key_id(list: &Value, given: &str) -> Result<String, String> {
    let keys: Vec<&Value> = list["data"].as_array().into_iter().flatten().collect();
    if keys.iter().any(|k| k["id"] == given) {
        return Ok(given.to_string());
    }
    let named: Vec<&str> = keys.iter().filter(|k| k["name"] == given).filter_map(|k| k["id"].as_str()).collect();
    match named.as_slice() {
        [id] => Ok(id.to_string()),
        [] => Err(format!("no key has the id or name '{given}' (`shoal key list` shows them)")),
        ids => Err(format!("{} keys are named '{given}': revoke one by its id ({})", ids.len(), ids.join(", "))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_revoked_by_id_or_unique_name() {
        let list = json!({"data": [
            {"id": "key-1", "name": "ci-bot"}, {"id": "key-2", "name": "web"}, {"id": "key-3", "name": "web"}
        ]});
        assert_eq!(key_id(&list, "key-2"), Ok("key-2".into()));
        assert_eq!(key_id(&list, "ci-bot"), Ok("key-1".into()));
        assert_eq!(key_id(&list, "web"), Err("2 keys are named 'web': revoke one by its id (key-2, key-3)".into()));
        assert!(key_id(&list, "nope").unwrap_err().contains("shoal key list"));
    }

    #[test]
    fn rates_read_with_or_without_a_unit() {
        assert_eq!(parse_rate("10"), Ok(10));
        assert_eq!(parse_rate("10/s"), Ok(10));
        assert!(parse_rate("fast").unwrap_err().contains("requests per second"));
    }
}
