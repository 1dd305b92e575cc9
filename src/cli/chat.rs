use std::io::{BufRead, BufReader, Write};
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::Args;
use serde_json::{json, Value};

use super::client::GatewayArgs;

#[derive(Debug, Args)]
pub struct ChatArgs {
    /// The deployment to talk to.
    pub model: String,
    /// One prompt to answer; without it, an interactive chat reads lines from stdin.
    pub prompt: Option<String>,
    /// Most tokens per answer.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: u32,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    /// A system message.
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

/// Streams one answer to stdout and returns its text.
fn stream_answer(a: &ChatArgs, messages: &[Value]) -> anyhow::Result<String> {
    let key = a.gateway.api_key.clone().ok_or_else(|| anyhow!("no API key: pass --api-key or set SHOAL_API_KEY"))?;
    let url = format!("{}/v1/chat/completions", a.gateway.gateway.trim_end_matches('/'));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(600)))
        .build()
        .into();
    let body = json!({
        "model": a.model, "messages": messages, "stream": true,
        "max_tokens": a.max_tokens, "temperature": a.temperature,
    });
    let mut resp = agent
        .post(&url)
        .header("Authorization", &format!("Bearer {key}"))
        .send_json(body)
        .with_context(|| format!("cannot reach the gateway at {url}"))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let v: Value = resp.body_mut().read_json().unwrap_or(Value::Null);
        return Err(anyhow!("{url} answered {status}: {}", v["error"]["message"].as_str().unwrap_or("no message")));
    }
    let reader = BufReader::new(resp.into_body().into_reader());
    let mut text = String::new();
    let mut out = std::io::stdout();
    for line in reader.lines() {
        let line = line?;
        let Some(data) = line.strip_prefix("data: ") else { continue };
        if data == "[DONE]" {
            break;
        }
        let v: Value = serde_json::from_str(data).context("the gateway sent a malformed event")?;
        if let Some(msg) = v["error"]["message"].as_str() {
            return Err(anyhow!("generation failed: {msg}"));
        }
        if let Some(delta) = v["choices"][0]["delta"]["content"].as_str() {
            print!("{delta}");
            out.flush()?;
            text.push_str(delta);
        }
    }
    println!();
    Ok(text)
}

pub async fn run(a: ChatArgs) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || {
        let mut messages: Vec<Value> = Vec::new();
        if let Some(s) = &a.system {
            messages.push(json!({"role": "system", "content": s}));
        }
        if let Some(p) = &a.prompt {
            messages.push(json!({"role": "user", "content": p}));
            stream_answer(&a, &messages)?;
            return Ok(());
        }
        let stdin = std::io::stdin();
        loop {
            print!("> ");
            std::io::stdout().flush()?;
            let mut line = String::new();
            if stdin.lock().read_line(&mut line)? == 0 {
                return Ok(());
            }
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            messages.push(json!({"role": "user", "content": line}));
            let answer = stream_answer(&a, &messages)?;
            messages.push(json!({"role": "assistant", "content": answer}));
        }
    })
    .await?
}
