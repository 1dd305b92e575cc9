//! Small file-system helpers: atomic writes, directory sync, sizes.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use crate::error::Result;

/// Syncs a directory so that a rename in it survives a crash. Platforms that refuse to sync a directory are
/// tolerated: the rename has been done either way.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    let d = File::open(dir)?;
    let _ = d.sync_all();
    Ok(())
}

/// Writes `bytes` to `path` through a synced temporary file renamed over it.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    fs::create_dir_all(dir)?;
    let mut tmp_name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)?;
    sync_dir(dir)
}

/// Total size of the files under `dir` (0 when it does not exist). Walks iteratively; symlinks are not followed.
pub(crate) fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let Ok(entries) = fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                pending.push(entry.path());
            } else if meta.is_file() {
                total += meta.len();
            }
        }
    }
    total
}
