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
    /// Sampling temperature (0 = greedy); default: the model's recommended setting, else 0.7.
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Nucleus sampling; default: the model's recommended setting, else 0.9.
    #[arg(long)]
    pub top_p: Option<f32>,
    /// A system message.
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

/// Sampling used when neither the command line nor the model says (a chat model answers
/// sensibly with these; the API's own default, temperature 1, rambles on small models).
pub const FALLBACK_TEMPERATURE: f32 = 0.7;
pub const FALLBACK_TOP_P: f32 = 0.9;

/// The sampling a chat uses.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    pub temperature: f32,
    pub top_p: f32,
}

/// Flags first, then the model's recommendation (`recommended_sampling` of `/v1/models`),
/// then the fallback.
pub fn choose_sampling(temperature: Option<f32>, top_p: Option<f32>, recommended: &Value) -> Sampling {
    let hint = |k: &str| recommended[k].as_f64().map(|v| v as f32);
    Sampling {
        temperature: temperature.or_else(|| hint("temperature")).unwrap_or(FALLBACK_TEMPERATURE),
        top_p: top_p.or_else(|| hint("top_p")).unwrap_or(FALLBACK_TOP_P),
    }
}

/// Streams one answer to stdout and returns its text.
fn stream_answer(a: &ChatArgs, sampling: &Sampling, messages: &[Value]) -> anyhow::Result<String> {
    let key = a.gateway.key()?;
    let url = format!("{}/v1/chat/completions", a.gateway.gateway.trim_end_matches('/'));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(600)))
        .build()
        .into();
    let body = json!({
        "model": a.model, "messages": messages, "stream": true,
        "max_tokens": a.max_tokens, "temperature": sampling.temperature, "top_p": sampling.top_p,
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
    a.gateway.wait_ready(std::time::Duration::from_secs(60)).await?;
    // The model, once it has a replica ready (right after `shoal up` it may still load).
    let started = std::time::Instant::now();
    let mut said = false;
    let model = loop {
        let models = a.gateway.get("/v1/models").await?;
        let list = models["data"].as_array().cloned().unwrap_or_default();
        let Some(m) = list.iter().find(|m| m["id"] == a.model.as_str()).cloned() else {
            let names: Vec<&str> = list.iter().filter_map(|m| m["id"].as_str()).collect();
            let known = if names.is_empty() { "none yet".to_string() } else { names.join(", ") };
            // `shoal chat "a question"`: the question came where the model goes.
            if a.prompt.is_none() && a.model.contains(char::is_whitespace) {
                let chats = |m: &&Value| {
                    m["capabilities"].as_array().is_some_and(|c| c.iter().any(|c| c.as_str() == Some("chat")))
                };
                let first = list.iter().find(chats).and_then(|m| m["id"].as_str()).unwrap_or("MODEL");
                return Err(anyhow!(
                    "'{}' is not a model: name the model first, then the question, e.g. `shoal chat {first} \"{}\"` (models: {known})",
                    a.model,
                    a.model.replace('"', "\\\"")
                ));
            }
            return Err(anyhow!(
                "no model named '{}' (models: {known}); deploy one with `shoal deploy NAME --source URI`",
                a.model
            ));
        };
        if m["ready_replicas"].as_u64().unwrap_or(0) > 0 || started.elapsed() > std::time::Duration::from_secs(60) {
            break m;
        }
        if !said {
            eprintln!("waiting for a replica of '{}' to load…", a.model);
            said = true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    let recommended = model["recommended_sampling"].clone();
    let sampling = choose_sampling(a.temperature, a.top_p, &recommended);
    tokio::task::spawn_blocking(move || {
        let mut messages: Vec<Value> = Vec::new();
        if let Some(s) = &a.system {
            messages.push(json!({"role": "system", "content": s}));
        }
        if let Some(p) = &a.prompt {
            messages.push(json!({"role": "user", "content": p}));
            stream_answer(&a, &sampling, &messages)?;
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
            let answer = stream_answer(&a, &sampling, &messages)?;
            messages.push(json!({"role": "assistant", "content": answer}));
        }
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_then_the_model_then_the_fallback() {
        let none = Value::Null;
        assert_eq!(choose_sampling(None, None, &none), Sampling { temperature: 0.7, top_p: 0.9 });
        let rec = json!({"temperature": 0.3, "top_p": 0.8, "top_k": 20});
        assert_eq!(choose_sampling(None, None, &rec), Sampling { temperature: 0.3, top_p: 0.8 });
        assert_eq!(choose_sampling(Some(0.0), None, &rec), Sampling { temperature: 0.0, top_p: 0.8 });
        let partial = json!({"temperature": 1.0, "top_p": null});
        assert_eq!(choose_sampling(None, Some(0.5), &partial), Sampling { temperature: 1.0, top_p: 0.5 });
        assert_eq!(choose_sampling(None, None, &partial), Sampling { temperature: 1.0, top_p: 0.9 });
    }
}
