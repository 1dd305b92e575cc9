//! Getting a replica's model files: from the node's content-addressed cache, or fetched by
//! SHA-256 from a peer or the coordinator over QUIC (resumable, verified), then laid out
//! under the names the engine expects.
//!
//! One download per artifact per node: placements that need the same file at once wait on a
//! single fetch ([`Fetches`]), so a `<sha256>.partial` file is never written by two fetches.
//! When that fetch fails the next waiter tries at once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use shoal_protocol::metric_names as m;
use shoal_protocol::tls::{COORDINATOR_SERVER_NAME, NODE_SERVER_NAME};
use shoal_protocol::Assignment;
use tracing::{info, warn};

use super::ModelHost;
use crate::NodeError;

/// Attempts per source (a broken transfer resumes where it stopped).
const ATTEMPTS_PER_SOURCE: usize = 2;

/// The fetches in progress on this node, one lock per artifact hash.
#[derive(Default)]
pub struct Fetches {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Fetches {
    fn lock_of(&self, sha256: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(sha256.to_string()).or_default().clone()
    }

    /// Forgets the lock of `sha256` when nobody else holds or waits on it.
    fn release(&self, sha256: &str, lock: Arc<tokio::sync::Mutex<()>>) {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        // Ours and the map's: no one else cloned it (clones are taken under this lock).
        if Arc::strong_count(&lock) <= 2 {
            locks.remove(sha256);
        }
    }
}

/// Makes sure every file of the assignment is in the cache and returns a folder holding
/// them under their names.
pub async fn materialize(host: &ModelHost, a: &Assignment) -> Result<PathBuf, NodeError> {
    for file in &a.files {
        if host.store.has(&file.sha256) {
            continue;
        }
        let lock = host.fetches.lock_of(&file.sha256);
        let result = {
            let _only = lock.lock().await;
            // Whoever held the lock before may have fetched it.
            if host.store.has(&file.sha256) {
                Ok(())
            } else {
                fetch_one(host, a, &file.sha256, file.size).await
            }
        };
        host.fetches.release(&file.sha256, lock);
        result?;
    }
    let dir = host.models_dir.join(&a.version_sha256);
    std::fs::create_dir_all(&dir).map_err(|e| NodeError::io(dir.display().to_string(), e))?;
    for file in &a.files {
        if file.name.contains('/') || file.name.contains("..") {
            return Err(NodeError::Artifact(format!("bad file name '{}' in an assignment", file.name)));
        }
        place(&host.store.path_of(&file.sha256), &dir.join(&file.name))?;
    }
    Ok(dir)
}

/// Puts a cached file at `link` (a hard link, else a copy) through a temporary name renamed
/// over it, so placements laying out the same folder at once never truncate each other's
/// (or the cache's) file.
fn place(target: &Path, link: &Path) -> Result<(), NodeError> {
    let tmp = link.with_extension(format!("link-{:016x}", rand::random::<u64>()));
    if std::fs::hard_link(target, &tmp).is_err() {
        std::fs::copy(target, &tmp).map_err(|e| NodeError::io(tmp.display().to_string(), e))?;
    }
    std::fs::rename(&tmp, link).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        NodeError::io(link.display().to_string(), e)
    })
}

async fn fetch_one(host: &ModelHost, a: &Assignment, sha256: &str, size: u64) -> Result<(), NodeError> {
    let mut errors = Vec::new();
    for source in &a.sources {
        let addr = match shoal_protocol::quic::resolve(&source.address).await {
            Ok(a) => a,
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use shoal_protocol::artifact::{hash_file, ArtifactStore};
    use shoal_protocol::quic::{self, ServerStream};
    use shoal_protocol::tls::{ClusterCa, Identity, MemberRole};
    use shoal_protocol::{ArtifactRef, ArtifactSource, EngineKind, RefusalCode, Request};

    /// A peer holding `store` that refuses the first `refuse_first` fetches; counts the fetches.
    async fn source(
        ca: &ClusterCa,
        store: ArtifactStore,
        refuse_first: usize,
    ) -> (quinn::Endpoint, std::net::SocketAddr, Arc<AtomicUsize>) {
        let cert = ca.issue_with_new_key(MemberRole::Node, "holder", &[]).expect("cert");
        let id = Identity::from_pem(&cert.cert_pem, &cert.key_pem, &ca.material.cert_pem).expect("id");
        let endpoint = quic::server_endpoint("127.0.0.1:0".parse().expect("addr"), id.server_config().expect("cfg"))
            .expect("bind");
        let addr = endpoint.local_addr().expect("addr");
        let (store, served) = (Arc::new(store), Arc::new(AtomicUsize::new(0)));
        let count = served.clone();
        tokio::spawn(quic::serve(endpoint.clone(), move |_conn, mut s: ServerStream| {
            let (store, count) = (store.clone(), count.clone());
            async move {
                if let Ok(Some(Request::FetchArtifact { sha256, offset })) = s.recv().await {
                    if count.fetch_add(1, Ordering::SeqCst) < refuse_first {
                        return s.refuse(RefusalCode::Unavailable, "not now").await;
                    }
                    store.serve(&mut s, &sha256, offset).await;
                }
            }
        }));
        (endpoint, addr, served)
    }

    async fn concurrent_materializations(refuse_first: usize) -> (Vec<Result<PathBuf, NodeError>>, usize, String) {
        shoal_protocol::install_crypto_provider();
        let tmp = tempfile::tempdir().expect("tmp");
        let data: Vec<u8> = (0..(3u32 << 20) + 777).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        std::fs::write(tmp.path().join("w.bin"), &data).expect("write");
        let holder = ArtifactStore::open(tmp.path().join("holder")).expect("store");
        let (sha, size) = holder.put_file(&tmp.path().join("w.bin")).expect("put");
        let ca = ClusterCa::generate().expect("ca");
        let (_endpoint, addr, served) = source(&ca, holder, refuse_first).await;
        let cert = ca.issue_with_new_key(MemberRole::Node, "fetcher", &[]).expect("cert");
        let id = Identity::from_pem(&cert.cert_pem, &cert.key_pem, &ca.material.cert_pem).expect("id");
        let host = ModelHost::new(
            &tmp.path().join("node"),
            id.client_config().expect("cfg"),
            Duration::from_secs(10),
            Default::default(),
        )
        .expect("host");
        let a = Assignment {
            placement_id: "p".into(),
            deployment: "d".into(),
            model: "m".into(),
            version: 1,
            version_sha256: sha.clone(),
            kind: EngineKind::Embed,
            files: vec![ArtifactRef { name: "model.safetensors".into(), sha256: sha.clone(), size }],
            sources: vec![ArtifactSource { address: addr.to_string(), coordinator: false }],
            stage: None,
        };
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (host, a) = (host.clone(), a.clone());
            tasks.spawn(async move { materialize(&host, &a).await });
        }
        let mut results = Vec::new();
        while let Some(r) = tasks.join_next().await {
            results.push(r.expect("join"));
        }
        for dir in results.iter().flatten() {
            let (got, len) = hash_file(&dir.join("model.safetensors")).expect("hash");
            assert_eq!((got.as_str(), len), (sha.as_str(), size), "every placement sees the whole file");
        }
        assert!(!host.store.dir().join(format!("{sha}.partial")).exists());
        assert!(host.fetches.locks.lock().expect("locks").is_empty(), "no lock left behind");
        (results, served.load(Ordering::SeqCst), sha)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn placements_that_need_one_file_at_once_share_one_download() {
        let (results, served, _) = concurrent_materializations(0).await;
        assert!(
            results.iter().all(Result::is_ok),
            "{:?}",
            results.iter().filter_map(|r| r.as_ref().err()).collect::<Vec<_>>()
        );
        assert_eq!(served, 1, "one transfer for eight placements");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_download_lets_the_next_waiter_try_at_once() {
        let (results, served, _) = concurrent_materializations(1).await;
        let failed: Vec<String> = results.iter().filter_map(|r| r.as_ref().err().map(|e| e.to_string())).collect();
        assert_eq!(failed.len(), 1, "only the placement whose fetch was refused fails: {failed:?}");
        assert!(failed[0].contains("not now"), "{failed:?}");
        assert_eq!(served, 2, "the next waiter fetched it, the rest found it in the cache");
    }
}
