//! The dense index's file: a versioned binary list of (chunk id, unit vector), written atomically.
//!
//! Layout, little-endian:
//!
//! ```text
//! magic   8 bytes  "SHOALDNS"
//! version u32      FORMAT_VERSION
//! dimension, max_connections, ef_construction, ef_search, exact_search_below: u32 each
//! count   u64
//! count × (id u64, dimension × f32)
//! crc32   u32      of every byte before it
//! ```
//!
//! The HNSW graph is not stored: it is rebuilt from the vectors on load (hnsw_rs's own dump reloads into a
//! structure that borrows from its loader, which does not fit an index that lives on its own).

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::DenseConfig;
use crate::error::{RecallError, Result};

/// The file's name inside the index directory.
pub(crate) const FILE_NAME: &str = "dense.vectors";
const MAGIC: &[u8; 8] = b"SHOALDNS";
const FORMAT_VERSION: u32 = 1;
/// magic + version + five u32 settings + count.
const HEADER_BYTES: usize = 8 + 4 + 5 * 4 + 8;

/// The path of the index file in `dir`.
pub(crate) fn path_in(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// Writes `config` and the `(id, vector)` entries to `dir` (created if missing): a temporary file, flushed and
/// synced, renamed over the old one, then the directory synced. A crash leaves the old file or the new one.
pub(crate) fn write<'a>(
    dir: &Path,
    config: &DenseConfig,
    count: usize,
    entries: impl Iterator<Item = (u64, &'a [f32])>,
) -> Result<()> {
    fs::create_dir_all(dir)?;
    let final_path = path_in(dir);
    let tmp_path = dir.join(format!("{FILE_NAME}.tmp"));
    let file = File::create(&tmp_path)?;
    let mut out = CrcWriter { inner: BufWriter::new(file), crc: crc32fast::Hasher::new() };
    out.write_all(MAGIC)?;
    out.write_all(&FORMAT_VERSION.to_le_bytes())?;
    for setting in
        [config.dimension, config.max_connections, config.ef_construction, config.ef_search, config.exact_search_below]
    {
        out.write_all(&to_u32(setting, "setting")?.to_le_bytes())?;
    }
    out.write_all(&(count as u64).to_le_bytes())?;
    let mut written = 0usize;
    let mut record = Vec::with_capacity(8 + 4 * config.dimension);
    for (id, vector) in entries {
        if vector.len() != config.dimension {
            return Err(RecallError::DimensionMismatch { expected: config.dimension, got: vector.len() });
        }
        record.clear();
        record.extend_from_slice(&id.to_le_bytes());
        for x in vector {
            record.extend_from_slice(&x.to_le_bytes());
        }
        out.write_all(&record)?;
        written += 1;
    }
    if written != count {
        return Err(RecallError::InvalidRequest(format!("dense save: {written} vectors written, {count} announced")));
    }
    let crc = out.crc.clone().finalize();
    out.inner.write_all(&crc.to_le_bytes())?;
    let file = out.inner.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp_path, &final_path)?;
    crate::fsutil::sync_dir(dir)
}

/// Saved `(id, vector)` entries.
pub(crate) type Entries = Vec<(u64, Vec<f32>)>;

/// Reads the file in `dir`: the saved configuration and the entries.
pub(crate) fn read(dir: &Path) -> Result<(DenseConfig, Entries)> {
    let path = path_in(dir);
    let bytes = fs::read(&path)?;
    let corrupt = |message: &str| RecallError::corrupt(&path, message);
    if bytes.len() < HEADER_BYTES + 4 {
        return Err(corrupt("shorter than its header"));
    }
    let (body, crc_bytes) = bytes.split_at(bytes.len() - 4);
    let stored_crc = u32::from_le_bytes(crc_bytes.try_into().map_err(|_| corrupt("checksum"))?);
    if crc32fast::hash(body) != stored_crc {
        return Err(corrupt("checksum mismatch"));
    }
    let mut reader = Reader { bytes: body, at: 0 };
    if reader.take(8).ok_or_else(|| corrupt("magic"))? != MAGIC {
        return Err(corrupt("not a Shoal dense index file"));
    }
    let version = reader.u32().ok_or_else(|| corrupt("version"))?;
    if version != FORMAT_VERSION {
        return Err(corrupt(&format!("format version {version}, this build reads {FORMAT_VERSION}")));
    }
    let mut settings = [0usize; 5];
    for s in settings.iter_mut() {
        *s = reader.u32().ok_or_else(|| corrupt("settings"))? as usize;
    }
    let [dimension, max_connections, ef_construction, ef_search, exact_search_below] = settings;
    let config = DenseConfig { dimension, max_connections, ef_construction, ef_search, exact_search_below };
    config.validate().map_err(|e| corrupt(&e.to_string()))?;
    let count = reader.u64().ok_or_else(|| corrupt("count"))?;
    let record = 8 + 4 * dimension as u64;
    if count.checked_mul(record) != Some((body.len() - HEADER_BYTES) as u64) {
        return Err(corrupt("length does not match the vector count"));
    }
    let mut entries = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let id = reader.u64().ok_or_else(|| corrupt("record"))?;
        let raw = reader.take(4 * dimension).ok_or_else(|| corrupt("record"))?;
        let vector: Vec<f32> = raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        entries.push((id, vector));
    }
    Ok((config, entries))
}

fn to_u32(value: usize, what: &str) -> Result<u32> {
    u32::try_from(value).map_err(|_| RecallError::InvalidConfig(format!("{what} {value} does not fit in 32 bits")))
}

/// A writer that checksums what passes through it.
struct CrcWriter<W: Write> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Little-endian reads from a byte slice.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let slice = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(slice)
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Option<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(u64::from_le_bytes(a))
    }
}
