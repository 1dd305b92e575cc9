//! The gateway client the CLI commands share.

use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::Args;
use serde_json::Value;

pub const DEFAULT_GATEWAY: &str = "http://127.0.0.1:8080";

/// How long a command waits for a gateway that does not answer at all: one started a
/// moment ago (a pasted procedure) binds its port within this.
pub const START_GRACE: Duration = Duration::from_secs(10);

/// `--gateway` and `--api-key`, shared by every command that talks to a cluster.
#[derive(Debug, Clone, Args)]
pub struct GatewayArgs {
    /// The coordinator gateway's URL.
    #[arg(long, env = "SHOAL_GATEWAY", default_value = DEFAULT_GATEWAY)]
    pub gateway: String,
    /// An API key (admin scope for admin commands). Prefer SHOAL_API_KEY or --api-key-file:
    /// a key on the command line is visible to other users in `ps`.
    #[arg(long, env = "SHOAL_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// A file holding the API key (its first line).
    #[arg(long, env = "SHOAL_API_KEY_FILE", conflicts_with = "api_key")]
    pub api_key_file: Option<std::path::PathBuf>,
}

/// `--gateway` must be an http(s) URL; `127.0.0.1:8080` gets the fix spelled out.
pub fn check_gateway_url(url: &str) -> anyhow::Result<()> {
    if url.starts_with("http://") || url.starts_with("https://") {
        return Ok(());
    }
    if url.contains("://") {
        return Err(anyhow!("--gateway {url}: only http:// and https:// gateways exist"));
    }
    Err(anyhow!("--gateway {url} has no scheme: use --gateway http://{url}"))
}

/// The key from `--api-key`/SHOAL_API_KEY, or the first line of `--api-key-file`.
pub fn resolve_key(key: Option<&str>, file: Option<&std::path::Path>) -> anyhow::Result<Option<String>> {
    if let Some(k) = key {
        return Ok(Some(k.trim().to_string()));
    }
    let Some(path) = file else { return Ok(None) };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read the API key file {}", path.display()))?;
    match text.lines().next().map(str::trim).filter(|k| !k.is_empty()) {
        Some(k) => Ok(Some(k.to_string())),
        None => Err(anyhow!("the API key file {} is empty", path.display())),
    }
}

/// The fewest characters an admin key given to `shoal up`/`shoal coordinator` may have.
pub const MIN_ADMIN_KEY_CHARS: usize = 16;

/// The admin key a server is started with ([`resolve_key`]), refused when it is too short
/// to be a secret (a placeholder left in a manifest, say).
pub fn admin_key(key: Option<&str>, file: Option<&std::path::Path>) -> anyhow::Result<Option<String>> {
    let key = resolve_key(key, file)?;
    if let Some(k) = &key {
        if k.chars().count() < MIN_ADMIN_KEY_CHARS {
            return Err(anyhow!(
                "the admin API key (SHOAL_API_KEY, --api-key or --api-key-file) is {} characters; it needs at \
                 least {MIN_ADMIN_KEY_CHARS}: generate one with `openssl rand -hex 24`",
                k.chars().count()
            ));
        }
    }
    Ok(key)
}

impl GatewayArgs {
    fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(15)))
            .build()
            .into()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.gateway.trim_end_matches('/'), path)
    }

    /// Checks `--gateway` is a URL before anything is sent.
    pub fn check(&self) -> anyhow::Result<()> {
        check_gateway_url(&self.gateway)
    }

    /// The API key to send.
    pub fn key(&self) -> anyhow::Result<String> {
        self.check()?;
        resolve_key(self.api_key.as_deref(), self.api_key_file.as_deref())?
            .ok_or_else(|| anyhow!("no API key: set SHOAL_API_KEY, or pass --api-key-file FILE (or --api-key KEY)"))
    }

    /// Waits (up to `within`) while the gateway's `/readyz` says it is still starting (a
    /// `shoal up` registering its models, a coordinator without a leader yet), saying why.
    /// A gateway that does not answer at all is waited for at most [`START_GRACE`].
    pub async fn wait_ready(&self, within: Duration) -> anyhow::Result<()> {
        self.settle(within, true).await
    }

    /// Like [`wait_ready`](Self::wait_ready), but a gateway that stays unready is only
    /// warned about (`shoal status` shows what it can of a cluster without a leader).
    pub async fn settle(&self, within: Duration, strict: bool) -> anyhow::Result<()> {
        self.check()?;
        let (url, gateway) = (self.url("/readyz"), self.gateway.clone());
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let mut said = String::new();
            loop {
                let why = match Self::agent().get(&url).call() {
                    Ok(resp) if resp.status().is_success() => return Ok(()),
                    Ok(mut resp) => resp.body_mut().read_to_string().unwrap_or_default().trim().to_string(),
                    Err(e) if started.elapsed() >= START_GRACE.min(within) => {
                        return Err(anyhow!(
                            "nothing answers at {gateway} ({e}): start `shoal up` (or a coordinator), or pass \
                             --gateway with the address it printed"
                        ));
                    }
                    Err(_) => format!("nothing answers at {gateway} yet"),
                };
                if started.elapsed() >= within {
                    if strict {
                        return Err(anyhow!("the gateway is not ready after {} s: {why}", within.as_secs()));
                    }
                    eprintln!("warning: the gateway is not ready: {why}");
                    return Ok(());
                }
                if why != said {
                    eprintln!("waiting for the gateway: {why}");
                    said = why;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        })
        .await?
    }

    /// GET a JSON document.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let (url, key) = (self.url(path), self.key()?);
        tokio::task::spawn_blocking(move || {
            let resp = Self::agent().get(&url).header("Authorization", &format!("Bearer {key}")).call();
            finish(&url, resp)
        })
        .await?
    }

    /// DELETE, read a JSON answer.
    pub async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        let (url, key) = (self.url(path), self.key()?);
        tokio::task::spawn_blocking(move || {
            let resp = Self::agent().delete(&url).header("Authorization", &format!("Bearer {key}")).call();
            finish(&url, resp)
        })
        .await?
    }

    /// PUT raw bytes with query parameters, read a JSON answer. Uploads may take minutes
    /// (the document is chunked and embedded before the answer).
    pub async fn put_bytes(
        &self,
        path: &str,
        query: Vec<(String, String)>,
        content_type: &str,
        bytes: Vec<u8>,
    ) -> anyhow::Result<Value> {
        let (url, key, ct) = (self.url(path), self.key()?, content_type.to_string());
        tokio::task::spawn_blocking(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(900)))
                .build()
                .into();
            let mut req = agent.put(&url).header("Authorization", &format!("Bearer {key}")).header("Content-Type", &ct);
            for (k, v) in &query {
                req = req.query(k, v);
            }
            finish(&url, req.send(&bytes[..]))
        })
        .await?
    }

    /// GET a binary document into `dest` (no overall timeout: a backup with artifacts is
    /// large); the bytes written.
    pub async fn download(&self, path: &str, dest: std::path::PathBuf) -> anyhow::Result<u64> {
        let (url, key) = (self.url(path), self.key()?);
        tokio::task::spawn_blocking(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
            let resp = agent.get(&url).header("Authorization", &format!("Bearer {key}")).call();
            let mut resp = resp.with_context(|| format!("cannot reach the gateway at {url}"))?;
            if !resp.status().is_success() {
                return finish(&url, Ok(resp)).map(|_| 0);
            }
            let mut out = std::fs::File::create(&dest).with_context(|| format!("cannot write {}", dest.display()))?;
            let n = std::io::copy(&mut resp.body_mut().as_reader(), &mut out)
                .with_context(|| format!("downloading {url} into {}", dest.display()))?;
            out.sync_all()?;
            Ok(n)
        })
        .await?
    }

    /// POST raw bytes (e.g. a YAML document), read a JSON answer.
    pub async fn post_bytes(&self, path: &str, content_type: &str, bytes: Vec<u8>) -> anyhow::Result<Value> {
        let (url, key, ct) = (self.url(path), self.key()?, content_type.to_string());
        tokio::task::spawn_blocking(move || {
            let resp = Self::agent()
                .post(&url)
                .header("Authorization", &format!("Bearer {key}"))
                .header("Content-Type", &ct)
                .send(&bytes[..]);
            finish(&url, resp)
        })
        .await?
    }

    /// POST a JSON body and read the server-sent events of the answer, calling `on_event`
    /// with each event's JSON data until `[DONE]`; no overall timeout (a run may be long).
    pub async fn post_events(
        &self,
        path: &str,
        body: Value,
        mut on_event: impl FnMut(Value) + Send + 'static,
    ) -> anyhow::Result<()> {
        let (url, key) = (self.url(path), self.key()?);
        tokio::task::spawn_blocking(move || {
            use std::io::BufRead;
            let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
            let resp = agent.post(&url).header("Authorization", &format!("Bearer {key}")).send_json(body);
            let mut resp = resp.with_context(|| format!("cannot reach the gateway at {url}"))?;
            if !resp.status().is_success() {
                return finish(&url, Ok(resp)).map(|_| ());
            }
            let reader = std::io::BufReader::new(resp.body_mut().as_reader());
            for line in reader.lines() {
                let line = line.with_context(|| format!("reading the events of {url}"))?;
                let Some(data) = line.strip_prefix("data:") else { continue };
                let data = data.trim();
                if data == "[DONE]" {
                    return Ok(());
                }
                if let Ok(v) = serde_json::from_str::<Value>(data) {
                    on_event(v);
                }
            }
            Ok(())
        })
        .await?
    }

    /// POST a JSON body, read a JSON answer.
    pub async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let (url, key) = (self.url(path), self.key()?);
        tokio::task::spawn_blocking(move || {
            let resp = Self::agent().post(&url).header("Authorization", &format!("Bearer {key}")).send_json(body);
            finish(&url, resp)
        })
        .await?
    }
}

fn finish(url: &str, resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> anyhow::Result<Value> {
    let mut resp = resp.with_context(|| format!("cannot reach the gateway at {url}"))?;
    let status = resp.status();
    let body: Value =
        resp.body_mut().read_json().with_context(|| format!("{url} answered {status} without a JSON body"))?;
    if !status.is_success() {
        if let Some(problems) = body["error"]["problems"].as_array() {
            let list: Vec<String> = problems
                .iter()
                .map(|p| format!("  - {}: {}", p["at"].as_str().unwrap_or("?"), p["message"].as_str().unwrap_or("?")))
                .collect();
            return Err(anyhow!("{url} answered {status}: {} problem(s):\n{}", list.len(), list.join("\n")));
        }
        let msg = body["error"]["message"].as_str().unwrap_or("no error message");
        return Err(anyhow!("{url} answered {status}: {msg}"));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_urls_need_a_scheme() {
        assert!(check_gateway_url("http://127.0.0.1:8080").is_ok());
        assert!(check_gateway_url("https://gw.example").is_ok());
        let e = check_gateway_url("127.0.0.1:8080").unwrap_err().to_string();
        assert_eq!(e, "--gateway 127.0.0.1:8080 has no scheme: use --gateway http://127.0.0.1:8080");
        assert!(check_gateway_url("ftp://x").unwrap_err().to_string().contains("only http://"));
    }
}
