//! Backups of the replicated state, after etcd's `snapshot save` / `snapshot restore`.
//!
//! A backup file is one JSON header line after a magic line, then sections:
//!
//! ```text
//! SHOAL-BACKUP 1\n
//! {"format":1,"index":…,"sha256":"…","payload_bytes":…,…}\n
//! payload: sections, each [u32 name length][name][u64 length][bytes]
//! ```
//!
//! `sha256` and `payload_bytes` cover the payload, so a corrupt or truncated file is refused
//! before anything is restored. Sections: `state` (the applied state machine at `index`),
//! `ca.crt` and `ca.key` (the cluster CA: restored members keep the cluster's identity, so
//! joined nodes reconnect and API keys stay valid), and `artifact/<sha256>` for each model
//! file when taken with artifacts.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::CoordinatorError;
use crate::raft::storage::StoredState;
use crate::state::ClusterState;

pub const MAGIC: &str = "SHOAL-BACKUP 1";
/// Longest header line read (the header is small; this bounds a hostile file).
const MAX_HEADER: usize = 64 * 1024;
/// Longest section name.
const MAX_NAME: u32 = 4096;

fn bad(why: impl std::fmt::Display) -> CoordinatorError {
    CoordinatorError::Backup(why.to_string())
}

/// What a backup says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub format: u32,
    /// The Shoal version that took it.
    pub shoal: String,
    pub created_at_ms: u64,
    /// The raft log index the state reflects (a linearizable read point).
    pub index: u64,
    /// The raft term at that point.
    pub term: u64,
    pub sha256: String,
    pub payload_bytes: u64,
    /// Counts of what the state holds, by kind.
    pub counts: std::collections::BTreeMap<String, u64>,
    pub artifacts: u64,
}

/// What the state holds, by kind (shown by `shoal backup inspect`).
pub fn counts(s: &ClusterState) -> std::collections::BTreeMap<String, u64> {
    [
        ("nodes", s.nodes.len()),
        ("models", s.models.len()),
        ("model_versions", s.models.values().map(|m| m.versions.len()).sum()),
        ("deployments", s.deployments.len()),
        ("placements", s.placements.len()),
        ("knowledge_bases", s.knowledge_bases.len()),
        ("documents", s.knowledge_bases.values().map(|k| k.documents.len()).sum()),
        ("tokens", s.tokens.len()),
        ("api_keys", s.api_keys.len()),
        ("graphs", s.graphs.len()),
        ("runs", s.runs.len()),
        ("databases", s.databases.len()),
        ("mcp_servers", s.mcp_servers.len()),
        ("prompts", s.prompts.len()),
        ("coordinators", s.coordinators.len()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v as u64))
    .collect()
}

/// Writes sections to `out`, hashing them; the payload's hash and length.
pub struct PayloadWriter<W: Write> {
    out: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> PayloadWriter<W> {
    pub fn new(out: W) -> Self {
        Self { out, hash: Sha256::new(), bytes: 0 }
    }

    fn put(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.out.write_all(b)?;
        self.hash.update(b);
        self.bytes += b.len() as u64;
        Ok(())
    }

    /// One section from memory.
    pub fn section(&mut self, name: &str, data: &[u8]) -> std::io::Result<()> {
        self.put(&(name.len() as u32).to_le_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&(data.len() as u64).to_le_bytes())?;
        self.put(data)
    }

    /// One section from a file, streamed.
    pub fn section_file(&mut self, name: &str, path: &Path) -> std::io::Result<()> {
        let mut f = std::fs::File::open(path)?;
        let len = f.metadata()?.len();
        self.put(&(name.len() as u32).to_le_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&len.to_le_bytes())?;
        let mut buf = vec![0u8; 1 << 20];
        let mut left = len;
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let n = f.read(&mut buf[..want])?;
            if n == 0 {
                return Err(std::io::Error::other(format!("{} shrank while it was read", path.display())));
            }
            self.put(&buf[..n])?;
            left -= n as u64;
        }
        Ok(())
    }

    /// The payload's sha256 and length, and the writer back.
    pub fn finish(mut self) -> std::io::Result<(String, u64, W)> {
        self.out.flush()?;
        Ok((hex::encode(self.hash.finalize()), self.bytes, self.out))
    }
}

/// The header line block (`MAGIC\n{json}\n`).
pub fn header_bytes(h: &Header) -> Result<Vec<u8>, CoordinatorError> {
    let json = serde_json::to_string(h).map_err(|e| bad(e.to_string()))?;
    Ok(format!("{MAGIC}\n{json}\n").into_bytes())
}

/// The encoded state section of a backup at `index`.
pub fn state_section(state: &ClusterState, index: u64) -> Result<Vec<u8>, CoordinatorError> {
    StoredState { applied: index, state: state.clone() }.encode()
}

/// A backup file, checked: its header and where each section's bytes are.
pub struct Backup {
    pub path: PathBuf,
    pub header: Header,
    /// `(name, offset in the file, length)`.
    pub sections: Vec<(String, u64, u64)>,
    pub file_bytes: u64,
}

impl Backup {
    /// Opens and verifies a backup: magic, header, payload length and sha256, section
    /// framing. A corrupt or truncated file is an error naming what is wrong.
    pub fn open(path: &Path) -> Result<Self, CoordinatorError> {
        let mut f = std::fs::File::open(path).map_err(|e| CoordinatorError::io(path, e))?;
        let file_bytes = f.metadata().map_err(|e| CoordinatorError::io(path, e))?.len();
        let mut head = vec![0u8; MAX_HEADER.min(file_bytes as usize)];
        f.read_exact(&mut head).map_err(|e| CoordinatorError::io(path, e))?;
        let text_end = |from: usize| head[from..].iter().position(|b| *b == b'\n').map(|p| from + p);
        let Some(magic_end) = text_end(0) else { return Err(bad(format!("{} is not a Shoal backup", path.display()))) };
        if &head[..magic_end] != MAGIC.as_bytes() {
            return Err(bad(format!("{} is not a Shoal backup (it does not start with {MAGIC:?})", path.display())));
        }
        let Some(header_end) = text_end(magic_end + 1) else {
            return Err(bad(format!("{}: the header is cut off", path.display())));
        };
        let header: Header = serde_json::from_slice(&head[magic_end + 1..header_end])
            .map_err(|e| bad(format!("{}: unreadable header: {e}", path.display())))?;
        if header.format != 1 {
            return Err(bad(format!(
                "{}: backup format {} is not supported (this Shoal reads 1)",
                path.display(),
                header.format
            )));
        }
        let start = header_end as u64 + 1;
        let payload = file_bytes.saturating_sub(start);
        if payload != header.payload_bytes {
            return Err(bad(format!(
                "{} is truncated or padded: {payload} payload bytes, the header says {}",
                path.display(),
                header.payload_bytes
            )));
        }
        f.seek(SeekFrom::Start(start)).map_err(|e| CoordinatorError::io(path, e))?;
        let mut hash = Sha256::new();
        let mut sections = Vec::new();
        let mut at = start;
        let read = |n: usize, f: &mut std::fs::File, hash: &mut Sha256| -> Result<Vec<u8>, CoordinatorError> {
            let mut b = vec![0u8; n];
            f.read_exact(&mut b).map_err(|_| bad(format!("{}: a section is cut off", path.display())))?;
            hash.update(&b);
            Ok(b)
        };
        while at < file_bytes {
            let len_name = u32::from_le_bytes(read(4, &mut f, &mut hash)?.try_into().map_err(|_| bad("length"))?);
            if len_name == 0 || len_name > MAX_NAME {
                return Err(bad(format!("{}: a section name of {len_name} bytes", path.display())));
            }
            let name = String::from_utf8(read(len_name as usize, &mut f, &mut hash)?)
                .map_err(|_| bad(format!("{}: a section name is not text", path.display())))?;
            let len = u64::from_le_bytes(read(8, &mut f, &mut hash)?.try_into().map_err(|_| bad("length"))?);
            let data_at = at + 4 + u64::from(len_name) + 8;
            if data_at.checked_add(len).is_none_or(|end| end > file_bytes) {
                return Err(bad(format!("{}: section {name} runs past the end of the file", path.display())));
            }
            let mut left = len;
            let mut buf = vec![0u8; 1 << 20];
            while left > 0 {
                let n = (left.min(buf.len() as u64)) as usize;
                f.read_exact(&mut buf[..n]).map_err(|e| CoordinatorError::io(path, e))?;
                hash.update(&buf[..n]);
                left -= n as u64;
            }
            sections.push((name, data_at, len));
            at = data_at + len;
        }
        let sha = hex::encode(hash.finalize());
        if sha != header.sha256 {
            return Err(bad(format!(
                "{} is corrupt: its payload hashes to {sha}, the header says {}",
                path.display(),
                header.sha256
            )));
        }
        for wanted in ["state", "ca.crt", "ca.key"] {
            if !sections.iter().any(|(n, _, _)| n == wanted) {
                return Err(bad(format!("{}: no {wanted} section", path.display())));
            }
        }
        Ok(Self { path: path.to_path_buf(), header, sections, file_bytes })
    }

    /// A section's bytes.
    pub fn section(&self, name: &str) -> Result<Vec<u8>, CoordinatorError> {
        let (_, at, len) = self
            .sections
            .iter()
            .find(|(n, _, _)| n == name)
            .ok_or_else(|| bad(format!("{}: no {name} section", self.path.display())))?;
        let mut f = std::fs::File::open(&self.path).map_err(|e| CoordinatorError::io(&self.path, e))?;
        f.seek(SeekFrom::Start(*at)).map_err(|e| CoordinatorError::io(&self.path, e))?;
        let mut b = vec![0u8; *len as usize];
        f.read_exact(&mut b).map_err(|e| CoordinatorError::io(&self.path, e))?;
        Ok(b)
    }

    /// The state in the backup.
    pub fn state(&self) -> Result<StoredState, CoordinatorError> {
        StoredState::decode(&self.section("state")?)
    }

    /// Copies a section to a file.
    pub fn section_to_file(&self, name: &str, dest: &Path) -> Result<(), CoordinatorError> {
        let (_, at, len) = self
            .sections
            .iter()
            .find(|(n, _, _)| n == name)
            .ok_or_else(|| bad(format!("{}: no {name} section", self.path.display())))?;
        let mut f = std::fs::File::open(&self.path).map_err(|e| CoordinatorError::io(&self.path, e))?;
        f.seek(SeekFrom::Start(*at)).map_err(|e| CoordinatorError::io(&self.path, e))?;
        let mut out = std::fs::File::create(dest).map_err(|e| CoordinatorError::io(dest, e))?;
        std::io::copy(&mut f.take(*len), &mut out).map_err(|e| CoordinatorError::io(dest, e))?;
        out.sync_all().map_err(|e| CoordinatorError::io(dest, e))
    }
}

/// What a restore wrote.
#[derive(Debug, Clone)]
pub struct Restored {
    pub voters: Vec<u64>,
    pub ca_written: bool,
    pub artifacts: usize,
}

/// Writes a new data dir for member `id` of `config` from a verified backup: the raft store
/// starts from the backup's state (every member restored from the same file starts from the
/// same state; membership comes from the config), the cluster CA is put where the config
/// keeps it, and the artifacts in the backup go to the artifact store. Refuses a data dir
/// that exists and is not empty, and a CA directory holding another CA.
pub fn restore(
    backup: &Backup,
    config: &crate::config::ClusterConfig,
    id: u64,
    data_dir: &Path,
) -> Result<Restored, CoordinatorError> {
    let member = config.member(id).ok_or_else(|| bad(format!("coordinator {id} is not in the config")))?;
    if std::fs::read_dir(data_dir).map(|mut d| d.next().is_some()).unwrap_or(false) {
        return Err(bad(format!(
            "{} exists and is not empty: restore writes a new data dir (move the old one away first)",
            data_dir.display()
        )));
    }
    let voters: Vec<u64> = if member.initial {
        config.coordinators.iter().filter(|c| c.initial).map(|c| c.id).collect()
    } else {
        Vec::new()
    };
    let stored = backup.state()?;
    let mut state = stored.state;
    // Membership comes from the config, not from the old group.
    state.coordinators.clear();
    std::fs::create_dir_all(data_dir).map_err(|e| CoordinatorError::io(data_dir, e))?;
    crate::pki::owner_only_dir(data_dir)?;
    let pki_dir = data_dir.join("pki");
    crate::pki::owner_only_dir(&pki_dir)?;
    let ca_home = config.pki.ca_dir.clone().unwrap_or_else(|| pki_dir.clone());
    crate::pki::owner_only_dir(&ca_home)?;
    let (crt, key) = (backup.section("ca.crt")?, backup.section("ca.key")?);
    let (crt_text, key_text) = (
        String::from_utf8(crt).map_err(|_| bad("ca.crt is not PEM text"))?,
        String::from_utf8(key).map_err(|_| bad("ca.key is not PEM text"))?,
    );
    let ca_crt = ca_home.join("ca.crt");
    let ca_written = if ca_crt.exists() {
        let present = std::fs::read_to_string(&ca_crt).map_err(|e| CoordinatorError::io(&ca_crt, e))?;
        if present.trim() != crt_text.trim() {
            return Err(bad(format!(
                "{} holds another cluster CA than the backup's; restore into a config whose ca_dir is empty or holds the backup's CA",
                ca_home.display()
            )));
        }
        false
    } else {
        crate::pki::write_private(&ca_home.join("ca.key"), &key_text, 0o600)?;
        crate::pki::write_private(&ca_crt, &crt_text, 0o644)?;
        true
    };
    let artifacts_dir = data_dir.join("artifacts");
    std::fs::create_dir_all(&artifacts_dir).map_err(|e| CoordinatorError::io(&artifacts_dir, e))?;
    let mut artifacts = 0;
    for (name, _, _) in &backup.sections {
        if let Some(sha) = name.strip_prefix("artifact/") {
            if !shoal_protocol::artifact::is_sha256(sha) {
                return Err(bad(format!("section {name} does not name a sha256")));
            }
            let tmp = artifacts_dir.join(format!("{sha}.restore"));
            backup.section_to_file(name, &tmp)?;
            let (got, _) = shoal_protocol::artifact::hash_file(&tmp).map_err(|e| CoordinatorError::io(&tmp, e))?;
            if got != sha {
                return Err(bad(format!("artifact {sha} in the backup hashes to {got}")));
            }
            std::fs::rename(&tmp, artifacts_dir.join(sha)).map_err(|e| CoordinatorError::io(&tmp, e))?;
            artifacts += 1;
        }
    }
    let raft_dir = data_dir.join("raft");
    {
        // A fresh store is written and flushed when it opens.
        let _storage = crate::raft::wal_store::WalStorage::open_with(&raft_dir, &voters, state)?;
    }
    crate::pki::owner_only_tree(&raft_dir)?;
    Ok(Restored { voters, ca_written, artifacts })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dir: &Path) -> PathBuf {
        let mut state = ClusterState::default();
        state.tokens.insert(
            "t".into(),
            crate::state::TokenRecord {
                id: "t".into(),
                secret_hash: "h".into(),
                created_at_ms: 1,
                expires_at_ms: 2,
                description: String::new(),
            },
        );
        let payload_path = dir.join("payload");
        let mut w = PayloadWriter::new(std::fs::File::create(&payload_path).expect("create"));
        w.section("state", &state_section(&state, 42).expect("state")).expect("w");
        w.section("ca.crt", b"CERT").expect("w");
        w.section("ca.key", b"KEY").expect("w");
        let (sha256, payload_bytes, _) = w.finish().expect("finish");
        let header = Header {
            format: 1,
            shoal: "test".into(),
            created_at_ms: 1,
            index: 42,
            term: 3,
            sha256,
            payload_bytes,
            counts: counts(&state),
            artifacts: 0,
        };
        let path = dir.join("b.shoal");
        let mut out = header_bytes(&header).expect("header");
        out.extend(std::fs::read(&payload_path).expect("payload"));
        std::fs::write(&path, out).expect("write");
        path
    }

    #[test]
    fn a_backup_reads_back_and_damage_is_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = sample(dir.path());
        let b = Backup::open(&path).expect("valid");
        assert_eq!(b.header.index, 42);
        assert_eq!(b.header.counts["tokens"], 1);
        assert_eq!(b.state().expect("state").state.tokens.len(), 1);
        assert_eq!(b.section("ca.key").expect("key"), b"KEY");
        let bytes = std::fs::read(&path).expect("read");
        // Truncated.
        std::fs::write(&path, &bytes[..bytes.len() - 3]).expect("w");
        assert!(Backup::open(&path).err().expect("refused").to_string().contains("truncated"));
        // A flipped byte in the payload.
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        std::fs::write(&path, &flipped).expect("w");
        assert!(Backup::open(&path).err().expect("refused").to_string().contains("corrupt"));
        // Not a backup at all.
        std::fs::write(&path, b"hello\nworld\n").expect("w");
        assert!(Backup::open(&path).err().expect("refused").to_string().contains("not a Shoal backup"));
        std::fs::write(&path, b"").expect("w");
        assert!(Backup::open(&path).is_err());
    }
}
