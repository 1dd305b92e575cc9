//! Where a model's files come from: local paths or the Hugging Face hub (`hf://org/repo[@rev][/file]`).

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::EngineError;

/// Files of a safetensors model folder fetched for `hf://org/repo`.
const FOLDER_FILES: &[&str] = &["config.json", "tokenizer.json", "model.safetensors"];
const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// A parsed `hf://` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfUri {
    /// "org/repo".
    pub repo: String,
    /// Branch, tag or commit ("main" unless `@rev` is given).
    pub revision: String,
    /// A single file in the repository, or `None` for a safetensors model folder.
    pub file: Option<String>,
}

impl HfUri {
    /// Parse `hf://org/repo[@revision][/path/to/file]`.
    pub fn parse(uri: &str) -> Result<HfUri, EngineError> {
        let rest = uri
            .strip_prefix("hf://")
            .ok_or_else(|| EngineError::Source(format!("{uri}: not an hf:// URI")))?
            .trim_end_matches('/');
        let mut parts = rest.splitn(3, '/');
        let org = parts.next().unwrap_or("");
        let repo_rev = parts.next().unwrap_or("");
        let file = parts.next().map(str::to_string);
        let (repo, revision) = match repo_rev.split_once('@') {
            Some((r, rev)) => (r, rev.to_string()),
            None => (repo_rev, "main".to_string()),
        };
        let valid = |s: &str| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if !valid(org) || !valid(repo) || !valid(&revision) {
            return Err(EngineError::Source(format!("{uri}: expected hf://org/repo[@revision][/file]")));
        }
        if let Some(f) = &file {
            if f.split('/').any(|seg| !valid(seg)) {
                return Err(EngineError::Source(format!("{uri}: invalid file path {f:?} in the repository")));
            }
        }
        Ok(HfUri { repo: format!("{org}/{repo}"), revision, file })
    }
}

/// Resolve a model source to a local path: `file:///abs/path` or a plain path (must exist), or `hf://...`
/// downloaded from the hub (`HF_ENDPOINT`, default https://huggingface.co; `HF_TOKEN` if set) into `cache_dir`.
pub fn resolve_source(uri: &str, cache_dir: &Path) -> Result<PathBuf, EngineError> {
    let endpoint = std::env::var("HF_ENDPOINT").unwrap_or_else(|_| DEFAULT_ENDPOINT.to_string());
    resolve_source_with_endpoint(uri, cache_dir, &endpoint)
}

/// [`resolve_source`] against an explicit hub endpoint (e.g. a mirror).
pub fn resolve_source_with_endpoint(uri: &str, cache_dir: &Path, endpoint: &str) -> Result<PathBuf, EngineError> {
    if uri.starts_with("hf://") {
        let hf = HfUri::parse(uri)?;
        return download(&hf, cache_dir, endpoint);
    }
    let path = if let Some(p) = uri.strip_prefix("file://") {
        PathBuf::from(p)
    } else if let Some((scheme, _)) = uri.split_once("://") {
        return Err(EngineError::Source(format!(
            "{uri}: unsupported scheme {scheme:?} (use a path, file:///abs/path or hf://org/repo[/file])"
        )));
    } else {
        PathBuf::from(uri)
    };
    if !path.exists() {
        return Err(EngineError::Source(format!("{}: no such file or folder", path.display())));
    }
    Ok(path)
}

fn download(hf: &HfUri, cache_dir: &Path, endpoint: &str) -> Result<PathBuf, EngineError> {
    let dir = cache_dir.join("hf").join(&hf.repo).join(&hf.revision);
    let files: Vec<String> = match &hf.file {
        Some(f) => vec![f.clone()],
        None => FOLDER_FILES.iter().map(|s| s.to_string()).collect(),
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(20)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .http_status_as_error(false)
        .build()
        .into();
    let token = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty());
    for file in &files {
        let target = dir.join(file);
        if target.is_file() {
            continue;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let url = format!("{}/{}/resolve/{}/{}", endpoint.trim_end_matches('/'), hf.repo, hf.revision, file);
        tracing::info!(%url, "downloading model file");
        let mut req = agent.get(&url);
        if let Some(t) = &token {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        let mut resp = req.call().map_err(|e| EngineError::Source(format!("{url}: hub unreachable: {e}")))?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(EngineError::Source(format!("{url}: hub answered HTTP {status}")));
        }
        let part = target.with_extension("part");
        let mut out = File::create(&part)?;
        let mut reader = resp.body_mut().with_config().limit(u64::MAX).reader();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = reader.read(&mut buf).map_err(|e| EngineError::Source(format!("{url}: download failed: {e}")))?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])?;
            total += n as u64;
        }
        out.sync_all()?;
        std::fs::rename(&part, &target)?;
        tracing::info!(%url, bytes = total, "downloaded model file");
    }
    Ok(match &hf.file {
        Some(f) => dir.join(f),
        None => dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hf_uris() {
        let u = HfUri::parse("hf://HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/smollm2.Q4_1.gguf").expect("parse");
        assert_eq!(u.repo, "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF");
        assert_eq!(u.revision, "main");
        assert_eq!(u.file.as_deref(), Some("smollm2.Q4_1.gguf"));
        let u = HfUri::parse("hf://sentence-transformers/all-MiniLM-L6-v2").expect("parse");
        assert_eq!(u.file, None);
        let u = HfUri::parse("hf://org/repo@v1.0/sub/dir/f.gguf").expect("parse");
        assert_eq!((u.revision.as_str(), u.file.as_deref()), ("v1.0", Some("sub/dir/f.gguf")));
        assert!(HfUri::parse("hf://org").is_err());
        assert!(HfUri::parse("hf://org/repo/../etc/passwd").is_err());
    }

    #[test]
    fn local_paths_and_bad_schemes() {
        let dir = std::env::temp_dir();
        let cache = dir.join("shoal-source-test");
        let p = resolve_source(&format!("file://{}", dir.display()), &cache).expect("file uri");
        assert_eq!(p, dir);
        assert_eq!(resolve_source(&dir.display().to_string(), &cache).expect("plain path"), dir);
        let err = resolve_source("/no/such/model.gguf", &cache).expect_err("missing");
        assert!(err.to_string().contains("no such file"), "{err}");
        let err = resolve_source("s3://bucket/model.gguf", &cache).expect_err("scheme");
        assert!(err.to_string().contains("unsupported scheme"), "{err}");
    }

    #[test]
    fn unreachable_hub_is_a_clear_error() {
        let cache = tempfile_dir();
        let err =
            resolve_source_with_endpoint("hf://org/repo/model.gguf", &cache, "http://127.0.0.1:9").expect_err("no hub");
        let msg = err.to_string();
        assert!(
            msg.contains("hub unreachable") && msg.contains("http://127.0.0.1:9/org/repo/resolve/main/model.gguf"),
            "{msg}"
        );
        let _ = std::fs::remove_dir_all(&cache);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("shoal-source-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&d);
        d
    }
}
