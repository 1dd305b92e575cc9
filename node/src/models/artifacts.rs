//! Getting a replica's model files: from the node's content-addressed cache, or fetched by
//! SHA-256 from a peer or the coordinator over QUIC (resumable, verified), then laid out
//! under the names the engine expects.

use std::net::SocketAddr;
use std::path::PathBuf;

use shoal_protocol::metric_names as m;
use shoal_protocol::tls::{COORDINATOR_SERVER_NAME, NODE_SERVER_NAME};
use shoal_protocol::Assignment;
use tracing::{info, warn};

use super::ModelHost;
use crate::NodeError;

/// Attempts per source (a broken transfer resumes where it stopped).
const ATTEMPTS_PER_SOURCE: usize = 2;

/// Makes sure every file of the assignment is in the cache and returns a folder holding
/// them under their names.
pub async fn materialize(host: &ModelHost, a: &Assignment) -> Result<PathBuf, NodeError> {
    for file in &a.files {
        if host.store.has(&file.sha256) {
            continue;
        }
        fetch_one(host, a, &file.sha256, file.size).await?;
    }
    let dir = host.models_dir.join(&a.version_sha256);
    std::fs::create_dir_all(&dir).map_err(|e| NodeError::io(dir.display().to_string(), e))?;
    for file in &a.files {
        if file.name.contains('/') || file.name.contains("..") {
            return Err(NodeError::Artifact(format!("bad file name '{}' in an assignment", file.name)));
        }
        let link = dir.join(&file.name);
        let _ = std::fs::remove_file(&link);
        let target = host.store.path_of(&file.sha256);
        if std::fs::hard_link(&target, &link).is_err() {
            std::fs::copy(&target, &link).map_err(|e| NodeError::io(link.display().to_string(), e))?;
        }
    }
    Ok(dir)
}

async fn fetch_one(host: &ModelHost, a: &Assignment, sha256: &str, size: u64) -> Result<(), NodeError> {
    let mut errors = Vec::new();
    for source in &a.sources {
        let Ok(addr) = source.address.parse::<SocketAddr>() else { continue };
        let name = if source.coordinator { COORDINATOR_SERVER_NAME } else { NODE_SERVER_NAME };
        for _ in 0..ATTEMPTS_PER_SOURCE {
            let progress = |got: u64, total: u64| {
                if got == total || got % (64 << 20) < (1 << 20) {
                    tracing::debug!(sha256, got, total, "fetching");
                }
            };
            let result = async {
                let mut stream = host.pool.open(addr, name).await?;
                host.store.fetch(&mut stream, sha256, size, &progress).await
            }
            .await;
            match result {
                Ok(_) => {
                    info!(sha256, bytes = size, from = %addr, "artifact fetched");
                    return Ok(());
                }
                Err(e) => {
                    metrics::counter!(m::ARTIFACT_FETCH_FAILURES).increment(1);
                    warn!(sha256, from = %addr, error = %e, "artifact fetch failed");
                    host.pool.forget(addr, name);
                    let refused = matches!(e, shoal_protocol::ProtocolError::Refused(_));
                    errors.push(format!("{addr}: {e}"));
                    if refused {
                        break; // that source does not have it; try the next
                    }
                }
            }
        }
    }
    Err(NodeError::Artifact(format!("could not fetch artifact {sha256}: {}", errors.join("; "))))
}
