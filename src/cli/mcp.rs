//! `shoal mcp`: the external MCP servers `mcp` graph steps call — add (a Streamable HTTP
//! URL with headers, or a stdio command), list, remove, and list a server's tools. Secrets
//! (header values, a URL's user info and query values) are shown as `***`.

use anyhow::anyhow;
use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

use super::client::GatewayArgs;
use super::format::table;
use super::graph::JsonArgs;

#[derive(Debug, Subcommand)]
pub enum McpCommand {
    /// Register an MCP server (admin). It is connected to and its tools listed; one that
    /// cannot be used is refused.
    Add(AddArgs),
    /// List the registered MCP servers (secrets as ***).
    List(JsonArgs),
    /// Unregister an MCP server.
    Rm(NameArgs),
    /// Connect to a server and list its tools with their input schemas.
    Tools(ToolsArgs),
}

#[derive(Debug, Args)]
pub struct AddArgs {
    pub name: String,
    /// A Streamable HTTP endpoint (http:// or https://); its host must be in a graph's
    /// allow_hosts for the graph to call it.
    #[arg(long, conflicts_with = "command", required_unless_present = "command")]
    pub url: Option<String>,
    /// A header sent with every request, as NAME=VALUE (repeat for more); values are
    /// secrets, shown as ***. Prefer an environment variable to a literal on the command
    /// line (`--header "Authorization=Bearer $TOKEN"`).
    #[arg(long = "header", value_name = "NAME=VALUE", requires = "url")]
    pub headers: Vec<String>,
    /// A stdio server's command line ("CMD ARGS"), run for each call on a node started
    /// with --mcp-stdio (the first such node by name), with a cleared environment plus PATH.
    #[arg(long)]
    pub command: Option<String>,
    #[arg(long, default_value = "")]
    pub description: String,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

#[derive(Debug, Args)]
pub struct NameArgs {
    pub name: String,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

#[derive(Debug, Args)]
pub struct ToolsArgs {
    pub name: String,
    /// Print the raw JSON (with each tool's input schema).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

/// `NAME=VALUE` pairs as a JSON object (a value may hold `=`).
pub fn parse_headers(pairs: &[String]) -> anyhow::Result<Map<String, Value>> {
    let mut out = Map::new();
    for p in pairs {
        let (k, v) = p.split_once('=').ok_or_else(|| anyhow!("--header {:?}: write it as NAME=VALUE", redacted(p)))?;
        if k.trim().is_empty() {
            return Err(anyhow!("--header needs a name before '='"));
        }
        out.insert(k.trim().to_string(), json!(v));
    }
    Ok(out)
}

/// A header argument as an error may quote it: the name only.
fn redacted(pair: &str) -> String {
    match pair.split_once(':') {
        Some((k, _)) => format!("{k}: ***"),
        None => "***".to_string(),
    }
}

pub async fn run(cmd: McpCommand) -> anyhow::Result<()> {
    match cmd {
        McpCommand::Add(a) => {
            let mut body = json!({"name": a.name, "description": a.description});
            if let Some(u) = &a.url {
                body["url"] = json!(u);
                body["headers"] = Value::Object(parse_headers(&a.headers)?);
            }
            if let Some(c) = &a.command {
                body["command"] = json!(c);
            }
            let v = a.gateway.post("/v1/mcp-servers", body).await?;
            let at = v["url"].as_str().or(v["command"].as_str()).unwrap_or("");
            let tools: Vec<&str> = v["tools"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            println!(
                "MCP server {} added ({} {at}); tools: {}",
                a.name,
                v["transport"].as_str().unwrap_or(""),
                tools.join(", ")
            );
            Ok(())
        }
        McpCommand::List(a) => {
            let v = a.gateway.get("/v1/mcp-servers").await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = v["data"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| {
                    let at = s["url"].as_str().or(s["command"].as_str()).unwrap_or("").to_string();
                    let headers: Vec<String> = s["headers"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, v)| format!("{k}: {}", v.as_str().unwrap_or("***")))
                        .collect();
                    vec![
                        s["name"].as_str().unwrap_or("").to_string(),
                        s["transport"].as_str().unwrap_or("").to_string(),
                        at,
                        headers.join(", "),
                        s["description"].as_str().unwrap_or("").to_string(),
                    ]
                })
                .collect();
            print!("{}", table(&["NAME", "TRANSPORT", "URL/COMMAND", "HEADERS", "DESCRIPTION"], &rows));
            Ok(())
        }
        McpCommand::Rm(a) => {
            a.gateway.delete(&format!("/v1/mcp-servers/{}", a.name)).await?;
            println!("MCP server {} removed", a.name);
            Ok(())
        }
        McpCommand::Tools(a) => {
            let v = a.gateway.get(&format!("/v1/mcp-servers/{}/tools", a.name)).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = v["data"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    let schema = &t["input_schema"];
                    let required: Vec<&str> =
                        schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                    let args: Vec<String> = schema["properties"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, p)| {
                            let ty = p["type"].as_str().unwrap_or("any");
                            let opt = if required.contains(&k.as_str()) { "" } else { "?" };
                            format!("{k}{opt}: {ty}")
                        })
                        .collect();
                    vec![
                        t["name"].as_str().unwrap_or("").to_string(),
                        args.join(", "),
                        t["description"].as_str().unwrap_or("").lines().next().unwrap_or("").to_string(),
                    ]
                })
                .collect();
            print!("{}", table(&["TOOL", "ARGUMENTS", "DESCRIPTION"], &rows));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_parse_as_name_value_and_errors_hide_values() {
        let h = parse_headers(&["Authorization=Bearer a=b".into(), " X-Team =blue".into()]).expect("ok");
        assert_eq!(Value::Object(h), json!({"Authorization": "Bearer a=b", "X-Team": "blue"}));
        let e = parse_headers(&["Authorization: Bearer sk-secret".into()]).expect_err("not NAME=VALUE").to_string();
        assert!(e.contains("NAME=VALUE") && e.contains("Authorization") && !e.contains("sk-secret"), "{e}");
        assert!(parse_headers(&["=x".into()]).is_err());
    }
}
