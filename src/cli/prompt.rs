//! `shoal prompt`: prompt templates, served as MCP prompts at `/mcp` — add (from the command
//! line or a YAML/JSON file), list, show, render with arguments, remove.

use std::path::PathBuf;

use anyhow::{anyhow, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

use super::client::GatewayArgs;
use super::format::table;
use super::graph::JsonArgs;

#[derive(Debug, Subcommand)]
pub enum PromptCommand {
    /// Add a prompt template, or a new version of one (admin). Its arguments are the
    /// template's variables unless given with --arg.
    Add(AddArgs),
    /// List the prompt templates and their arguments.
    List(JsonArgs),
    /// Show a prompt template's definition.
    Show(NameArgs),
    /// Render a prompt template with arguments (NAME=VALUE) and print its messages.
    Render(RenderArgs),
    /// Remove a prompt template.
    Rm(NameArgs),
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// The prompt's name (with --template).
    #[arg(required_unless_present = "file")]
    pub name: Option<String>,
    /// The prompt as one user message, a minijinja template: `Review this {{ code }}`.
    #[arg(long, conflicts_with = "file", requires = "name")]
    pub template: Option<String>,
    /// A definition file (YAML or JSON): name, description, template or messages, arguments.
    #[arg(long, short = 'f')]
    pub file: Option<PathBuf>,
    #[arg(long, default_value = "", conflicts_with = "file")]
    pub description: String,
    /// An argument, as NAME, NAME:DESCRIPTION, or NAME?:DESCRIPTION for an optional one
    /// (repeat for more).
    #[arg(long = "arg", value_name = "NAME[:DESCRIPTION]", conflicts_with = "file")]
    pub args: Vec<String>,
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
pub struct RenderArgs {
    pub name: String,
    /// Arguments as NAME=VALUE.
    pub arguments: Vec<String>,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

/// `NAME`, `NAME:DESCRIPTION` or `NAME?:DESCRIPTION` as a prompt argument.
pub fn parse_argument(spec: &str) -> Value {
    let (name, description) = spec.split_once(':').unwrap_or((spec, ""));
    let (name, required) = match name.strip_suffix('?') {
        Some(n) => (n, false),
        None => (name, true),
    };
    json!({"name": name.trim(), "description": description.trim(), "required": required})
}

fn pairs(list: &[String]) -> anyhow::Result<Map<String, Value>> {
    let mut out = Map::new();
    for p in list {
        let (k, v) = p.split_once('=').ok_or_else(|| anyhow!("{p:?}: write an argument as NAME=VALUE"))?;
        out.insert(k.trim().to_string(), json!(v));
    }
    Ok(out)
}

pub async fn run(cmd: PromptCommand) -> anyhow::Result<()> {
    match cmd {
        PromptCommand::Add(a) => {
            let v = match (&a.file, &a.template) {
                (Some(file), _) => {
                    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
                    let ct = if file.extension().is_some_and(|e| e == "json") {
                        "application/json"
                    } else {
                        "application/yaml"
                    };
                    a.gateway.post_bytes("/v1/prompts", ct, bytes).await?
                }
                (None, Some(template)) => {
                    let mut body = json!({"name": a.name, "description": a.description, "template": template});
                    if !a.args.is_empty() {
                        body["arguments"] = Value::Array(a.args.iter().map(|s| parse_argument(s)).collect());
                    }
                    a.gateway.post("/v1/prompts", body).await?
                }
                (None, None) => return Err(anyhow!("give --template TEXT or --file FILE")),
            };
            let what = if v["created"] == json!(true) { "stored" } else { "unchanged (same definition)" };
            println!(
                "prompt {} v{} {what}; arguments: {}",
                v["name"].as_str().unwrap_or("?"),
                v["version"],
                arguments(&v)
            );
            Ok(())
        }
        PromptCommand::List(a) => {
            let v = a.gateway.get("/v1/prompts").await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = v["data"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    vec![
                        p["name"].as_str().unwrap_or("").to_string(),
                        format!("v{}", p["version"]),
                        arguments(p),
                        p["description"].as_str().unwrap_or("").to_string(),
                    ]
                })
                .collect();
            print!("{}", table(&["NAME", "VERSION", "ARGUMENTS", "DESCRIPTION"], &rows));
            Ok(())
        }
        PromptCommand::Show(a) => {
            let v = a.gateway.get(&format!("/v1/prompts/{}", a.name)).await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
        PromptCommand::Render(a) => {
            let body = json!({"arguments": pairs(&a.arguments)?});
            let v = a.gateway.post(&format!("/v1/prompts/{}/render", a.name), body).await?;
            for m in v["messages"].as_array().into_iter().flatten() {
                println!("[{}]\n{}", m["role"].as_str().unwrap_or(""), m["content"].as_str().unwrap_or(""));
            }
            Ok(())
        }
        PromptCommand::Rm(a) => {
            a.gateway.delete(&format!("/v1/prompts/{}", a.name)).await?;
            println!("prompt {} removed", a.name);
            Ok(())
        }
    }
}

/// `code, language?` (optional ones marked).
fn arguments(p: &Value) -> String {
    p["arguments"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            let name = a["name"].as_str().unwrap_or("");
            if a["required"] == json!(false) {
                format!("{name}?")
            } else {
                name.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_read_from_the_command_line() {
        assert_eq!(parse_argument("code"), json!({"name": "code", "description": "", "required": true}));
        assert_eq!(
            parse_argument("tone?: how to say it"),
            json!({"name": "tone", "description": "how to say it", "required": false})
        );
        assert_eq!(pairs(&["a=1=2".into()]).expect("ok")["a"], "1=2");
        assert!(pairs(&["nope".into()]).is_err());
        assert_eq!(arguments(&json!({"arguments": [{"name": "a"}, {"name": "b", "required": false}]})), "a, b?");
    }
}
