//! Content-addressed artifact store and its transfer over QUIC.
//!
//! Files are stored under `<dir>/<sha256>`; a download in progress is
//! `<dir>/<sha256>.partial` and resumes from its length. A finished download is verified
//! against its hash before it is renamed into place, so the store never holds a file whose
//! name lies about its content.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::metric_names as m;
use crate::quic::{ClientStream, ServerStream};
use crate::serving::{ARTIFACT_CHUNK_BYTES, MAX_STORED_ARTIFACT_BYTES};
use crate::{ProtocolError, RefusalCode, Request, Response};

/// A folder of files named by their SHA-256.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    dir: PathBuf,
}

/// True for 64 lower-case hex digits.
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// SHA-256 and length of a file.
pub fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let r = f.read(&mut buf)?;
        if r == 0 {
            break;
        }
        h.update(&buf[..r]);
        n += r as u64;
    }
    Ok((hex::encode(h.finalize()), n))
}

impl ArtifactStore {
    pub fn open(dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        // Copies being received when the process stopped: the sender sends again.
        for entry in std::fs::read_dir(&dir)?.flatten() {
            if entry.file_name().to_string_lossy().ends_with(".incoming") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(Self { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the artifact lives (whether or not it is there).
    pub fn path_of(&self, sha256: &str) -> PathBuf {
        self.dir.join(sha256)
    }

    pub fn has(&self, sha256: &str) -> bool {
        is_sha256(sha256) && self.path_of(sha256).is_file()
    }

    /// Adds a local file (hard-linked when possible, else copied) and returns its hash and size.
    /// The hash is of what was stored.
    pub fn put_file(&self, src: &Path) -> std::io::Result<(String, u64)> {
        let (sha, size) = hash_file(src)?;
        let dest = self.path_of(&sha);
        if dest.is_file() {
            return Ok((sha, size));
        }
        let tmp = self.dir.join(format!("{sha}.import"));
        let _ = std::fs::remove_file(&tmp);
        if std::fs::hard_link(src, &tmp).is_err() {
            std::fs::copy(src, &tmp)?;
        }
        // The source may have changed between hashing and linking: check what we hold.
        let (again, _) = hash_file(&tmp)?;
        if again != sha {
            let _ = std::fs::remove_file(&tmp);
            return Err(std::io::Error::other(format!("{} changed while it was being stored", src.display())));
        }
        std::fs::rename(&tmp, &dest)?;
        Ok((sha, size))
    }

    /// Bytes of a partial download already here.
    fn partial_len(&self, sha256: &str) -> u64 {
        std::fs::metadata(self.dir.join(format!("{sha256}.partial"))).map(|m| m.len()).unwrap_or(0)
    }

    /// Downloads `sha256` over an open stream to a member that holds it, resuming a partial
    /// download. On a hash mismatch the partial file is deleted and an error returned.
    pub async fn fetch(
        &self,
        stream: &mut ClientStream,
        sha256: &str,
        expected_size: u64,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<PathBuf, ProtocolError> {
        if !is_sha256(sha256) {
            return Err(ProtocolError::Malformed(format!("'{sha256}' is not a sha256")));
        }
        let dest = self.path_of(sha256);
        if dest.is_file() {
            return Ok(dest);
        }
        let partial = self.dir.join(format!("{sha256}.partial"));
        let mut offset = self.partial_len(sha256);
        if offset > expected_size {
            std::fs::remove_file(&partial)?;
            offset = 0;
        }
        match stream.call(&Request::FetchArtifact { sha256: sha256.to_string(), offset }).await? {
            Response::Artifact { size } if size == expected_size => {}
            Response::Artifact { size } => {
                return Err(ProtocolError::Malformed(format!(
                    "peer offers {size} bytes for {sha256}, the registry says {expected_size}"
                )))
            }
            Response::Refused { message, .. } => return Err(ProtocolError::Refused(message)),
            _ => return Err(ProtocolError::Unexpected { expected: "artifact" }),
        }
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&partial)?;
        let mut got = offset;
        loop {
            match stream.recv().await? {
                Response::ArtifactChunk { data, last } => {
                    if got + data.len() as u64 > expected_size {
                        drop(file);
                        let _ = std::fs::remove_file(&partial);
                        return Err(ProtocolError::Malformed("artifact longer than announced".into()));
                    }
                    file.write_all(&data)?;
                    got += data.len() as u64;
                    metrics::counter!(m::ARTIFACT_BYTES_RECEIVED).increment(data.len() as u64);
                    progress(got, expected_size);
                    if last {
                        break;
                    }
                }
                Response::Refused { message, .. } => return Err(ProtocolError::Refused(message)),
                _ => return Err(ProtocolError::Unexpected { expected: "artifact chunk" }),
            }
        }
        file.sync_all()?;
        drop(file);
        let (actual, len) = hash_file(&partial)?;
        if actual != sha256 || len != expected_size {
            let _ = std::fs::remove_file(&partial);
            return Err(ProtocolError::Malformed(format!(
                "artifact {sha256} arrived with sha256 {actual} ({len} bytes); discarded"
            )));
        }
        std::fs::rename(&partial, &dest)?;
        Ok(dest)
    }

    /// Answers a `FetchArtifact` request on a server stream.
    pub async fn serve(&self, stream: &mut ServerStream, sha256: &str, offset: u64) {
        if !self.has(sha256) {
            return stream.refuse(RefusalCode::NotFound, format!("no artifact {sha256} here")).await;
        }
        let path = self.path_of(sha256);
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) => return stream.refuse(RefusalCode::Unavailable, e.to_string()).await,
        };
        let size = match file.metadata().await {
            Ok(m) => m.len(),
            Err(e) => return stream.refuse(RefusalCode::Unavailable, e.to_string()).await,
        };
        if offset > size {
            return stream.refuse(RefusalCode::BadRequest, format!("offset {offset} is past the end ({size})")).await;
        }
        if file.seek(std::io::SeekFrom::Start(offset)).await.is_err()
            || stream.send(&Response::Artifact { size }).await.is_err()
        {
            return;
        }
        let mut sent = offset;
        let mut buf = vec![0u8; ARTIFACT_CHUNK_BYTES];
        loop {
            let want = ((size - sent) as usize).min(ARTIFACT_CHUNK_BYTES);
            if let Err(e) = file.read_exact(&mut buf[..want]).await {
                return stream.refuse(RefusalCode::Unavailable, e.to_string()).await;
            }
            sent += want as u64;
            let last = sent == size;
            if stream.send(&Response::ArtifactChunk { data: buf[..want].to_vec(), last }).await.is_err() {
                return;
            }
            metrics::counter!(m::ARTIFACT_BYTES_SENT).increment(want as u64);
            if last {
                break;
            }
        }
        stream.finish();
    }

    /// Sends artifact `sha256` from this store to a member over an open stream
    /// (`StoreArtifact`) and returns once the member holds it, verified.
    pub async fn push(&self, stream: &mut ClientStream, sha256: &str) -> Result<(), ProtocolError> {
        if !self.has(sha256) {
            return Err(ProtocolError::Malformed(format!("no artifact {sha256} here to send")));
        }
        let mut file = tokio::fs::File::open(self.path_of(sha256)).await?;
        let size = file.metadata().await?.len();
        match stream.call(&Request::StoreArtifact { sha256: sha256.to_string(), size }).await? {
            Response::ArtifactHeld => return Ok(()),
            Response::ArtifactWanted => {}
            Response::Refused { message, .. } => return Err(ProtocolError::Refused(message)),
            _ => return Err(ProtocolError::Unexpected { expected: "artifact wanted" }),
        }
        let mut sent = 0u64;
        let mut buf = vec![0u8; ARTIFACT_CHUNK_BYTES];
        loop {
            let want = ((size - sent) as usize).min(ARTIFACT_CHUNK_BYTES);
            file.read_exact(&mut buf[..want]).await?;
            sent += want as u64;
            let last = sent == size;
            stream.send(&Request::Chunk { data: buf[..want].to_vec(), last }).await?;
            metrics::counter!(m::ARTIFACT_BYTES_SENT).increment(want as u64);
            if last {
                break;
            }
        }
        match stream.recv().await? {
            Response::ArtifactHeld => Ok(()),
            Response::Refused { message, .. } => Err(ProtocolError::Refused(message)),
            _ => Err(ProtocolError::Unexpected { expected: "artifact held" }),
        }
    }

    /// Answers a `StoreArtifact` request on a server stream: receives the bytes into a file
    /// of its own, checks them against the hash and size, and only then names the file by
    /// its hash. A copy that does not match is discarded and refused.
    pub async fn receive(&self, stream: &mut ServerStream, sha256: &str, size: u64) {
        if !is_sha256(sha256) {
            return stream.refuse(RefusalCode::BadRequest, format!("'{sha256}' is not a sha256")).await;
        }
        if size > MAX_STORED_ARTIFACT_BYTES {
            let msg = format!("an artifact of {size} bytes is over the {MAX_STORED_ARTIFACT_BYTES}-byte limit");
            return stream.refuse(RefusalCode::BadRequest, msg).await;
        }
        if self.has(sha256) {
            let _ = stream.send(&Response::ArtifactHeld).await;
            return stream.finish();
        }
        if stream.send(&Response::ArtifactWanted).await.is_err() {
            return;
        }
        let incoming = self.dir.join(format!("{sha256}.{:016x}.incoming", rand::random::<u64>()));
        match self.receive_into(stream, &incoming, sha256, size).await {
            Ok(()) => {
                let _ = stream.send(&Response::ArtifactHeld).await;
                stream.finish();
            }
            Err((code, message)) => {
                let _ = std::fs::remove_file(&incoming);
                if !message.is_empty() {
                    stream.refuse(code, message).await;
                }
            }
        }
    }

    /// The `Chunk` frames of a `StoreArtifact` into `incoming`, verified and renamed into
    /// place. The error's message is empty when the sender went away.
    async fn receive_into(
        &self,
        stream: &mut ServerStream,
        incoming: &Path,
        sha256: &str,
        size: u64,
    ) -> Result<(), (RefusalCode, String)> {
        let io = |e: std::io::Error| (RefusalCode::Unavailable, format!("storing artifact {sha256}: {e}"));
        let mut file = std::fs::File::create(incoming).map_err(io)?;
        let mut got = 0u64;
        loop {
            match stream.recv().await {
                Ok(Some(Request::Chunk { data, last })) => {
                    if got + data.len() as u64 > size {
                        return Err((RefusalCode::BadRequest, "artifact longer than announced".into()));
                    }
                    file.write_all(&data).map_err(io)?;
                    got += data.len() as u64;
                    metrics::counter!(m::ARTIFACT_BYTES_RECEIVED).increment(data.len() as u64);
                    if last {
                        break;
                    }
                }
                Ok(Some(_)) => return Err((RefusalCode::BadRequest, "expected the artifact's chunks".into())),
                Ok(None) | Err(_) => return Err((RefusalCode::BadRequest, String::new())),
            }
        }
        file.sync_all().map_err(io)?;
        drop(file);
        let (actual, len) = hash_file(incoming).map_err(io)?;
        if actual != sha256 || len != size {
            let msg = format!("artifact {sha256} arrived with sha256 {actual} ({len} bytes); discarded");
            return Err((RefusalCode::BadRequest, msg));
        }
        std::fs::rename(incoming, self.path_of(sha256)).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_file_names_the_file_by_its_hash() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("w.bin");
        std::fs::write(&src, b"weights").expect("write");
        let store = ArtifactStore::open(dir.path().join("store")).expect("store");
        let (sha, size) = store.put_file(&src).expect("put");
        assert_eq!(size, 7);
        assert!(is_sha256(&sha));
        assert!(store.has(&sha));
        assert_eq!(hash_file(&store.path_of(&sha)).expect("hash").0, sha);
        assert!(!store.has("../etc/passwd"));
    }
}
