//! `http` steps: calls to allow-listed hosts only, with a timeout and a cap on the answer.

use std::collections::BTreeMap;
use std::io::Read;
use std::time::Duration;

use serde_json::{json, Value};
use shoal_graph::hosts::{allowed, host_port, is_sensitive};

use super::steps::MAX_HTTP_BODY;

/// Calls `url`; the answer as `{status, body, json}`. A status of 400 or more is an error
/// (so retries and `on_error` apply). `idempotency_key` is sent as `Idempotency-Key`, the
/// same on every attempt of the step, so a tool can recognise a repeated call.
pub async fn call(
    allow: &[String],
    method: &str,
    url: &str,
    headers: &BTreeMap<String, String>,
    body: Option<&Value>,
    idempotency_key: &str,
    timeout_s: f64,
) -> Result<Value, String> {
    shoal_graph::hosts::check_url(url, allow)?;
    let (host, port) = host_port(url)?;
    check_resolved(&host, port, allow).await?;
    let (method, url) = (method.to_string(), url.to_string());
    let headers = headers.clone();
    let body = body.cloned();
    let key = idempotency_key.to_string();
    let timeout = Duration::from_secs_f64(timeout_s.clamp(0.1, 600.0));
    tokio::task::spawn_blocking(move || blocking_call(&method, &url, &headers, body.as_ref(), &key, timeout))
        .await
        .map_err(|e| format!("the call was lost: {e}"))?
}

/// A name may resolve to a loopback, link-local or metadata address (DNS rebinding): only
/// an address listed itself may be one. The addresses the name resolved to (none for an IP
/// address), so a caller can connect to exactly those.
pub async fn check_resolved(host: &str, port: u16, allow: &[String]) -> Result<Vec<std::net::SocketAddr>, String> {
    if host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>().is_ok() {
        return Ok(Vec::new());
    }
    let addrs: Vec<std::net::SocketAddr> =
        tokio::net::lookup_host((host, port)).await.map_err(|e| format!("cannot resolve {host}: {e}"))?.collect();
    for a in &addrs {
        if is_sensitive(a.ip()) && !allowed(&a.ip().to_string(), port, allow) {
            return Err(format!("{host} resolves to {}, which is not allowed unless listed in allow_hosts", a.ip()));
        }
    }
    Ok(addrs)
}

fn blocking_call(
    method: &str,
    url: &str,
    headers: &BTreeMap<String, String>,
    body: Option<&Value>,
    key: &str,
    timeout: Duration,
) -> Result<Value, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    let mut req = ureq::http::Request::builder().method(method).uri(url).header("Idempotency-Key", key);
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let result = match body {
        Some(b) => {
            let req = req.header("Content-Type", "application/json").body(b.to_string()).map_err(|e| e.to_string())?;
            agent.run(req)
        }
        None => agent.run(req.body(()).map_err(|e| e.to_string())?),
    };
    let response = result.map_err(|e| format!("{url}: {e}"))?;
    let status = response.status().as_u16();
    let mut text = String::new();
    response
        .into_body()
        .into_reader()
        .take(MAX_HTTP_BODY)
        .read_to_string(&mut text)
        .map_err(|e| format!("reading the answer of {url}: {e}"))?;
    if status >= 400 {
        return Err(format!("{url} answered {status}: {}", text.chars().take(300).collect::<String>()));
    }
    let parsed = serde_json::from_str::<Value>(&text).unwrap_or(Value::Null);
    Ok(json!({"status": status, "body": text, "json": parsed}))
}
