//! `GET /v1/backup` (admin): a point-in-time backup of the replicated state at a
//! linearizable read point, with the cluster CA and optionally the model artifacts
//! (see `shoal_coordinator::backup` for the format).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use shoal_coordinator::backup::{counts, header_bytes, state_section, Header, PayloadWriter};
use tokio::io::AsyncReadExt;

use super::auth::require;
use super::{ApiError, GatewayState};
use crate::state::Scope;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupQuery {
    #[serde(default)]
    pub with_artifacts: bool,
}

pub async fn backup(
    State(gw): State<Arc<GatewayState>>,
    headers: HeaderMap,
    Query(q): Query<BackupQuery>,
) -> Result<Response, ApiError> {
    require(&headers, &gw, Scope::Admin)?;
    let Some((ca_crt, ca_key)) = gw.ca_files.clone() else {
        return Err(ApiError::bad_request(
            "this gateway holds no cluster CA: take backups through a coordinator's gateway",
        ));
    };
    // Everything committed before this request is in the backup.
    gw.cluster.read_index().await?;
    let (state, index) = {
        let s = gw.cluster.state().read().unwrap_or_else(|p| p.into_inner());
        (s.clone(), gw.cluster.status().index)
    };
    let term = gw.cluster.status().soft.term;
    let artifacts: Vec<(String, std::path::PathBuf)> = match (&gw.artifacts, q.with_artifacts) {
        (Some((store, _)), true) => {
            let mut shas: Vec<String> = state
                .models
                .values()
                .flat_map(|m| m.versions.iter())
                .flat_map(|v| v.files.iter().map(|f| f.sha256.clone()))
                .collect();
            shas.sort();
            shas.dedup();
            shas.into_iter().filter(|s| store.has(s)).map(|s| (s.clone(), store.path_of(&s))).collect()
        }
        _ => Vec::new(),
    };
    let tmp = std::env::temp_dir().join(format!("shoal-backup-{:016x}.part", rand::random::<u64>()));
    let created_at_ms = gw.clock.unix_ms();
    let tmp_for_write = tmp.clone();
    let n_artifacts = artifacts.len() as u64;
    let header = tokio::task::spawn_blocking(move || -> Result<Header, String> {
        let file = std::fs::File::create(&tmp_for_write).map_err(|e| format!("{}: {e}", tmp_for_write.display()))?;
        let mut w = PayloadWriter::new(std::io::BufWriter::new(file));
        let section = state_section(&state, index).map_err(|e| e.to_string())?;
        w.section("state", &section).map_err(|e| e.to_string())?;
        w.section_file("ca.crt", &ca_crt).map_err(|e| format!("{}: {e}", ca_crt.display()))?;
        w.section_file("ca.key", &ca_key).map_err(|e| format!("{}: {e}", ca_key.display()))?;
        for (sha, path) in &artifacts {
            w.section_file(&format!("artifact/{sha}"), path).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        let (sha256, payload_bytes, _) = w.finish().map_err(|e| e.to_string())?;
        Ok(Header {
            format: 1,
            shoal: env!("CARGO_PKG_VERSION").to_string(),
            created_at_ms,
            index,
            term,
            sha256,
            payload_bytes,
            counts: counts(&state),
            artifacts: n_artifacts,
        })
    })
    .await
    .map_err(|e| ApiError::unavailable(format!("the backup was lost: {e}")))?
    .map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        ApiError::unavailable(format!("writing the backup: {e}"))
    })?;
    let head = header_bytes(&header).map_err(|e| ApiError::unavailable(e.to_string()))?;
    let file = tokio::fs::File::open(&tmp).await.map_err(|e| ApiError::unavailable(format!("backup: {e}")))?;
    // The open file stays readable after its name is gone: nothing is left behind.
    let _ = std::fs::remove_file(&tmp);
    let first = futures_util::stream::once(async move { Ok::<_, std::io::Error>(bytes::Bytes::from(head)) });
    let rest = futures_util::stream::unfold(file, |mut f| async move {
        let mut buf = vec![0u8; 256 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    });
    let body = Body::from_stream(futures_util::StreamExt::chain(first, rest));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"shoal-{index}.backup\"")),
        ],
        body,
    )
        .into_response())
}
