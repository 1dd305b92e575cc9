//! The coordinator's certificates on disk: the cluster CA (created at bootstrap) and the
//! coordinator's own member certificate. Private keys are written owner-only (0600) in an
//! owner-only directory (0700), atomically (temp file + rename).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use shoal_protocol::tls::{ClusterCa, KeyedCert, MemberRole};

use crate::CoordinatorError;

/// The CA and this coordinator's identity.
pub struct CoordinatorPki {
    pub ca: ClusterCa,
    pub ca_hash: String,
    pub member: KeyedCert,
}

fn pki_err(path: &Path, message: impl std::fmt::Display) -> CoordinatorError {
    CoordinatorError::Pki { path: path.display().to_string(), message: message.to_string() }
}

/// Writes `contents` to `path` atomically with the given mode.
pub fn write_private(path: &Path, contents: &str, mode: u32) -> Result<(), CoordinatorError> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| CoordinatorError::io(&tmp, e))?;
    f.write_all(contents.as_bytes()).map_err(|e| CoordinatorError::io(&tmp, e))?;
    f.sync_all().map_err(|e| CoordinatorError::io(&tmp, e))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(|e| CoordinatorError::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| CoordinatorError::io(path, e))
}

fn read(path: &Path) -> Result<String, CoordinatorError> {
    fs::read_to_string(path).map_err(|e| CoordinatorError::io(path, e))
}

/// Makes `dir` owner-only (0700) and every file below it 0600 (the raft database holds API
/// key hashes and the cluster's catalog; files sled makes later sit inside the 0700 folder).
pub fn owner_only_tree(dir: &Path) -> Result<(), CoordinatorError> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| CoordinatorError::io(dir, e))?;
    for entry in fs::read_dir(dir).map_err(|e| CoordinatorError::io(dir, e))? {
        let path = entry.map_err(|e| CoordinatorError::io(dir, e))?.path();
        if path.is_dir() {
            owner_only_tree(&path)?;
        } else {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                .map_err(|e| CoordinatorError::io(&path, e))?;
        }
    }
    Ok(())
}

pub fn owner_only_dir(dir: &Path) -> Result<(), CoordinatorError> {
    fs::create_dir_all(dir).map_err(|e| CoordinatorError::io(dir, e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| CoordinatorError::io(dir, e))
}

/// Makes sure a CA exists in the shared `ca_dir`. Several coordinators may start at once:
/// the CA is written to a private temporary directory and renamed into place, so exactly
/// one of them creates it and the others load that one.
fn ensure_shared_ca(ca_dir: &Path) -> Result<(), CoordinatorError> {
    if ca_dir.join("ca.crt").exists() {
        return Ok(());
    }
    let parent = ca_dir.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(|e| CoordinatorError::io(parent, e))?;
    let tmp = parent.join(format!(".shoal-ca-{}-{}", std::process::id(), rand::random::<u32>()));
    owner_only_dir(&tmp)?;
    let ca = ClusterCa::generate().map_err(|e| pki_err(&tmp, e))?;
    write_private(&tmp.join("ca.key"), &ca.material.key_pem, 0o600)?;
    write_private(&tmp.join("ca.crt"), &ca.material.cert_pem, 0o644)?;
    match fs::rename(&tmp, ca_dir) {
        Ok(()) => {
            tracing::info!(path = %ca_dir.display(), "created the shared cluster CA");
            Ok(())
        }
        Err(_) if ca_dir.join("ca.crt").exists() => {
            let _ = fs::remove_dir_all(&tmp);
            Ok(()) // another coordinator won the race
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            Err(CoordinatorError::io(ca_dir, e))
        }
    }
}

/// Creates a cluster CA in `ca_dir` (for `[pki] ca_dir`, e.g. to put in a Kubernetes
/// Secret) and returns its hash; refuses a directory that already holds one.
pub fn create_ca(ca_dir: &Path) -> Result<String, CoordinatorError> {
    if ca_dir.join("ca.crt").exists() || ca_dir.join("ca.key").exists() {
        return Err(pki_err(ca_dir, "already holds a CA; it is kept as it is"));
    }
    if ca_dir.exists() && fs::read_dir(ca_dir).map_err(|e| CoordinatorError::io(ca_dir, e))?.next().is_some() {
        return Err(pki_err(ca_dir, "exists and is not empty; name a new directory"));
    }
    if ca_dir.exists() {
        fs::remove_dir(ca_dir).map_err(|e| CoordinatorError::io(ca_dir, e))?;
    }
    ensure_shared_ca(ca_dir)?;
    let ca = ClusterCa::from_pem(read(&ca_dir.join("ca.crt"))?, read(&ca_dir.join("ca.key"))?)
        .map_err(|e| pki_err(ca_dir, e))?;
    ca.hash().map_err(|e| pki_err(ca_dir, e))
}

/// Loads the PKI in `dir`, creating the CA (in `dir`, or in the shared `ca_dir`) and the
/// member certificate on first start.
pub fn load_or_create(dir: &Path, ca_dir: Option<&Path>, id: u64) -> Result<CoordinatorPki, CoordinatorError> {
    owner_only_dir(dir)?;
    if let Some(shared) = ca_dir {
        ensure_shared_ca(shared)?;
    }
    let ca_home = ca_dir.unwrap_or(dir);
    let p = |name: &str| -> PathBuf { dir.join(name) };
    let (ca_crt, ca_key) = (ca_home.join("ca.crt"), ca_home.join("ca.key"));
    let ca = if ca_crt.exists() {
        let mode = fs::metadata(&ca_key).map_err(|e| CoordinatorError::io(&ca_key, e))?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(pki_err(
                &ca_key,
                format!("mode {:o} lets others read the CA key; run chmod 600", mode & 0o777),
            ));
        }
        ClusterCa::from_pem(read(&ca_crt)?, read(&ca_key)?).map_err(|e| pki_err(&ca_crt, e))?
    } else {
        let ca = ClusterCa::generate().map_err(|e| pki_err(&ca_crt, e))?;
        write_private(&ca_key, &ca.material.key_pem, 0o600)?;
        write_private(&ca_crt, &ca.material.cert_pem, 0o644)?;
        tracing::info!(path = %ca_crt.display(), "created the cluster CA");
        ca
    };
    let ca_hash = ca.hash().map_err(|e| pki_err(&ca_crt, e))?;
    let (crt, key) = (p("coordinator.crt"), p("coordinator.key"));
    let member = if crt.exists() {
        KeyedCert { cert_pem: read(&crt)?, key_pem: read(&key)? }
    } else {
        let m = ca.issue_with_new_key(MemberRole::Coordinator, &id.to_string(), &[]).map_err(|e| pki_err(&crt, e))?;
        write_private(&key, &m.key_pem, 0o600)?;
        write_private(&crt, &m.cert_pem, 0o644)?;
        m
    };
    Ok(CoordinatorPki { ca, ca_hash, member })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_key_is_owner_only_and_reloads_with_the_same_hash() {
        let dir = tempfile::tempdir().expect("tmp");
        let a = load_or_create(dir.path(), None, 1).expect("create");
        let mode = fs::metadata(dir.path().join("ca.key")).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = load_or_create(dir.path(), None, 1).expect("reload");
        assert_eq!(a.ca_hash, b.ca_hash);
    }

    #[test]
    fn coordinators_sharing_a_ca_dir_share_one_ca() {
        let dir = tempfile::tempdir().expect("tmp");
        let shared = dir.path().join("ca");
        let handles: Vec<_> = (1..=3u64)
            .map(|id| {
                let (d, s) = (dir.path().join(format!("c{id}")), shared.clone());
                std::thread::spawn(move || load_or_create(&d, Some(&s), id).map(|p| p.ca_hash))
            })
            .collect();
        let hashes: Vec<String> = handles.into_iter().map(|h| h.join().expect("thread").expect("pki")).collect();
        assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
    }

    #[test]
    fn a_created_ca_is_the_one_coordinators_load_and_is_not_overwritten() {
        let dir = tempfile::tempdir().expect("tmp");
        let shared = dir.path().join("ca");
        let hash = create_ca(&shared).expect("create");
        let loaded = load_or_create(&dir.path().join("c1"), Some(&shared), 1).expect("load");
        assert_eq!(loaded.ca_hash, hash);
        let again = create_ca(&shared).expect_err("a second CA over the first");
        assert!(again.to_string().contains("already holds a CA"), "{again}");
        assert_eq!(load_or_create(&dir.path().join("c2"), Some(&shared), 2).expect("load").ca_hash, hash);
    }

    #[test]
    fn a_world_readable_ca_key_is_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        load_or_create(dir.path(), None, 1).expect("create");
        fs::set_permissions(dir.path().join("ca.key"), fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = load_or_create(dir.path(), None, 1).err().expect("refused");
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}
