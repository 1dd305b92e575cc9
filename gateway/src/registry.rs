//! Model registration: resolve a source, read the model's facts from its files, store the
//! files by hash in this coordinator's artifact store, and describe the version for the
//! replicated registry. Nothing is committed when any step fails.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use shoal_engine::{Capability, ModelFormat};
use shoal_protocol::artifact::ArtifactStore;
use shoal_protocol::ArtifactRef;
use tracing::info;

use crate::state::{ModelVersion, WeightFormat};
use crate::GatewayError;

/// Names of models and deployments: what fits in a URL path and a metric label.
pub fn check_name(kind: &str, name: &str) -> Result<(), GatewayError> {
    shoal_coordinator::names::check_name(kind, name).map_err(GatewayError::Model)
}

/// Reads and stores a model version from `source`. `expected_sha256`, when given, must
/// match the version's hash. Blocking (hashes whole files): call from a blocking thread.
pub fn prepare_version(
    source: &str,
    expected_sha256: Option<&str>,
    store: &ArtifactStore,
    download_dir: &Path,
    coordinator_id: u64,
    now_ms: u64,
) -> Result<ModelVersion, GatewayError> {
    if source == ECHO_SOURCE {
        return Ok(echo_version(coordinator_id, now_ms));
    }
    let path: PathBuf = shoal_engine::resolve_source(source, download_dir).map_err(model_err)?;
    let info = shoal_engine::inspect(&path).map_err(model_err)?;
    let mut files = Vec::new();
    for name in &info.files {
        let file = if path.is_dir() { path.join(name) } else { path.clone() };
        let (sha256, size) = store.put_file(&file).map_err(|e| GatewayError::io(&file, e))?;
        files.push(ArtifactRef { name: name.clone(), sha256, size });
    }
    let sha256 = match (info.format, files.as_slice()) {
        (ModelFormat::Gguf | ModelFormat::E5, [only]) => only.sha256.clone(),
        _ => manifest_hash(&files),
    };
    if let Some(expected) = expected_sha256 {
        let expected = expected.trim().trim_start_matches("sha256:").to_ascii_lowercase();
        if expected != sha256 {
            return Err(GatewayError::Model(format!(
                "{source} has sha256 {sha256}, not the expected {expected}; nothing was registered"
            )));
        }
    }
    let capabilities = info
        .capabilities
        .iter()
        .map(|c| match c {
            Capability::Chat => "chat",
            Capability::Completion => "completion",
            Capability::Embedding => "embedding",
        })
        .map(String::from)
        .collect();
    let version = ModelVersion {
        version: 0,
        source: source.to_string(),
        sha256,
        size: files.iter().map(|f| f.size).sum(),
        format: match info.format {
            ModelFormat::Gguf => WeightFormat::Gguf,
            ModelFormat::Safetensors => WeightFormat::Safetensors,
            ModelFormat::E5 => WeightFormat::E5,
        },
        architecture: info.architecture.clone(),
        capabilities,
        context_length: info.context_length,
        layers: info.layers,
        hidden_size: info.hidden_size,
        weight_bytes: info.weight_bytes,
        files,
        stored_by: coordinator_id,
        registered_at_ms: now_ms,
        sampling: crate::state::SamplingHint::from_floats(
            info.sampling.temperature,
            info.sampling.top_p,
            info.sampling.top_k,
        ),
    };
    info!(source, sha256 = %version.sha256, architecture = %version.architecture, "model files stored");
    Ok(version)
}

/// The source of the built-in no-op model.
pub const ECHO_SOURCE: &str = "builtin://echo";

fn echo_version(coordinator_id: u64, now_ms: u64) -> ModelVersion {
    ModelVersion {
        version: 0,
        source: ECHO_SOURCE.into(),
        sha256: hex::encode(Sha256::digest(ECHO_SOURCE.as_bytes())),
        size: 0,
        format: WeightFormat::Builtin,
        architecture: "echo".into(),
        capabilities: vec!["chat".into(), "completion".into(), "echo".into()],
        context_length: 1 << 20,
        layers: 0,
        hidden_size: 0,
        weight_bytes: 0,
        files: vec![],
        stored_by: coordinator_id,
        registered_at_ms: now_ms,
        sampling: Default::default(),
    }
}

/// The hash of a multi-file model: SHA-256 over its sorted `name sha256` lines.
pub fn manifest_hash(files: &[ArtifactRef]) -> String {
    let mut lines: Vec<String> = files.iter().map(|f| format!("{} {}\n", f.name, f.sha256)).collect();
    lines.sort();
    hex::encode(Sha256::digest(lines.concat().as_bytes()))
}

fn model_err(e: shoal_engine::EngineError) -> GatewayError {
    GatewayError::Model(e.to_string())
}

/// Lists the models in a folder: `*.gguf` files (at the top or one folder down) and
/// folders holding `config.json` with safetensors. Returns `(name, file:// source)`.
pub fn discover_models(dir: &Path) -> std::io::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for entry in entries {
        let stem = entry.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_ascii_lowercase();
        if entry.is_file() && entry.extension().is_some_and(|e| e == "gguf") {
            out.push((stem, source_uri(&entry)));
        } else if entry.is_dir() {
            let name = entry.file_name().and_then(|s| s.to_str()).unwrap_or_default().to_ascii_lowercase();
            if entry.join("config.json").is_file() {
                out.push((name, source_uri(&entry)));
                continue;
            }
            // A GGUF file, or a packed e5 file (`E5S1`).
            let mut ggufs: Vec<PathBuf> = std::fs::read_dir(&entry)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "gguf") || shoal_engine::e5::is_e5_file(p))
                .collect();
            ggufs.sort();
            if let Some(first) = ggufs.first() {
                out.push((name, source_uri(first)));
            }
        }
    }
    Ok(out)
}

fn source_uri(path: &Path) -> String {
    let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    format!("file://{}", abs.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_finds_gguf_files_model_folders_and_e5_files() {
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path();
        std::fs::write(d.join("Tiny.gguf"), b"GGUF").expect("write");
        std::fs::create_dir_all(d.join("bert")).expect("dir");
        std::fs::write(d.join("bert/config.json"), b"{}").expect("write");
        std::fs::create_dir_all(d.join("qwen")).expect("dir");
        std::fs::write(d.join("qwen/b.gguf"), b"GGUF").expect("write");
        std::fs::write(d.join("qwen/a.gguf"), b"GGUF").expect("write");
        std::fs::create_dir_all(d.join("e5")).expect("dir");
        std::fs::write(d.join("e5/e5-small-q4.bin"), b"E5S1\x01\0\0\0").expect("write");
        std::fs::create_dir_all(d.join("junk")).expect("dir");
        std::fs::write(d.join("junk/notes.bin"), b"not a model").expect("write");
        let found = discover_models(d).expect("discover");
        let names: Vec<(&str, &str)> =
            found.iter().map(|(n, s)| (n.as_str(), s.rsplit('/').next().unwrap_or_default())).collect();
        // In path order (upper case first); names in lower case.
        assert_eq!(names, vec![("tiny", "Tiny.gguf"), ("bert", "bert"), ("e5", "e5-small-q4.bin"), ("qwen", "a.gguf")]);
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("model", "smollm2-135m.q4").is_ok());
        for bad in ["", ".hidden", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_name("model", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn manifest_hash_ignores_order() {
        let a = ArtifactRef { name: "a".into(), sha256: "1".into(), size: 1 };
        let b = ArtifactRef { name: "b".into(), sha256: "2".into(), size: 1 };
        assert_eq!(manifest_hash(&[a.clone(), b.clone()]), manifest_hash(&[b, a]));
    }

    #[test]
    fn a_sha256_needs_a_file_source() {
        let req = |source: Option<&str>, sha: Option<&str>| DeployRequest {
            name: "d".into(),
            model: None,
            source: source.map(String::from),
            replicas: 1,
            shards: 0,
            sha256: sha.map(String::from),
            force: false,
        };
        let err = |r: DeployRequest| check_deploy(&r).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err(req(Some(ECHO_SOURCE), Some("ab"))).contains("builtin:// source has no file to check"));
        assert!(err(req(None, Some("ab"))).contains("give --source"));
        assert!(check_deploy(&req(Some(ECHO_SOURCE), None)).is_ok());
        assert!(check_deploy(&req(Some("file:///m.gguf"), Some("ab"))).is_ok());
    }
}

/// What `shoal deploy` / `POST /v1/deployments` ask for.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct DeployRequest {
    pub name: String,
    /// The registered model to serve; defaults to `name`.
    #[serde(default)]
    pub model: Option<String>,
    /// Registers a new version from here first (`file://…`, `hf://…`).
    #[serde(default)]
    pub source: Option<String>,
    /// Copies of the model (chains of stages when it is split).
    #[serde(default = "one")]
    pub replicas: u32,
    /// Stages each copy's layers are split across: 0 (the default) = only when no single
    /// node has the memory for the whole model, 1 = never, K >= 2 = always K.
    #[serde(default)]
    pub shards: u32,
    /// The SHA-256 the source must have.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Allow the deployment to change what it serves (chat to embeddings or back).
    #[serde(default)]
    pub force: bool,
}

fn one() -> u32 {
    1
}

/// The most replicas one deployment may ask for.
pub const MAX_REPLICAS: u32 = 256;

/// Checks a deploy request's names and counts; returns the model it names.
pub fn check_deploy(req: &DeployRequest) -> Result<String, GatewayError> {
    check_name("deployment", &req.name)?;
    let model = req.model.clone().unwrap_or_else(|| req.name.clone());
    check_name("model", &model)?;
    if req.replicas > MAX_REPLICAS {
        return Err(GatewayError::Model(format!("replicas must be at most {MAX_REPLICAS}")));
    }
    if req.shards > crate::planner::MAX_SHARDS {
        return Err(GatewayError::Model(format!("shards must be at most {}", crate::planner::MAX_SHARDS)));
    }
    if req.sha256.is_some() && req.source.as_deref().is_some_and(|s| s.starts_with("builtin://")) {
        return Err(GatewayError::Model("a builtin:// source has no file to check: drop the sha256 (--sha256)".into()));
    }
    if req.sha256.is_some() && req.source.is_none() {
        return Err(GatewayError::Model("a sha256 checks a source: give --source with it".into()));
    }
    Ok(model)
}

/// Registers (when a source is given) and deploys. Changes nothing if any step fails
/// before the commit.
pub async fn deploy(
    cluster: &crate::cluster::Cluster,
    artifacts: Option<&(ArtifactStore, u64)>,
    downloads: &Path,
    req: DeployRequest,
) -> Result<(String, u32), GatewayError> {
    use crate::state::{Command, Outcome};
    let model = check_deploy(&req)?;
    let mut version = 0;
    if let Some(source) = req.source.clone() {
        let now = crate::clock::unix_ms();
        let prepared = match artifacts {
            _ if source == ECHO_SOURCE => echo_version(0, now),
            None => {
                return Err(GatewayError::Model(format!(
                    "this gateway stores no model files, so it cannot register {source}: register the model \
                     through a coordinator's gateway (the one `shoal up` or `shoal coordinator` serves), then \
                     deploy it here by name"
                )))
            }
            Some((store, coordinator_id)) => {
                let (store, downloads, sha, id) =
                    (store.clone(), downloads.to_path_buf(), req.sha256.clone(), *coordinator_id);
                tokio::task::spawn_blocking(move || {
                    prepare_version(&source, sha.as_deref(), &store, &downloads, id, now)
                })
                .await
                .map_err(|e| GatewayError::Model(format!("registration task failed: {e}")))??
            }
        };
        match cluster.command(Command::RegisterModel { name: model.clone(), version: prepared }).await? {
            Outcome::ModelVersion { version: v, existed } => {
                metrics::counter!(shoal_protocol::metric_names::MODELS_REGISTERED).increment(u64::from(!existed));
                version = v;
            }
            other => return Err(GatewayError::Model(format!("registration refused: {other:?}"))),
        }
    }
    let cmd = Command::Deploy {
        name: req.name.clone(),
        model: model.clone(),
        version,
        replicas: req.replicas,
        shards: req.shards,
        at_ms: crate::clock::unix_ms(),
        force: req.force,
    };
    // The state machine checks `shards` against the version it resolves (layers, kind).
    match cluster.command(cmd).await? {
        Outcome::ModelVersion { version, .. } => Ok((model, version)),
        Outcome::Rejected(why) | Outcome::Ignored(why) => Err(GatewayError::Model(why)),
        other => Err(GatewayError::Model(format!("deployment refused: {other:?}"))),
    }
}
