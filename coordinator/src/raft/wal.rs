//! The raft log's write-ahead file: segments of checksummed frames, each flush one write and
//! one `fdatasync` (as etcd's WAL).
//!
//! A segment is `<seq as 16 hex digits>.wal`, created full of zeros ([`SEGMENT_BYTES`]) so that
//! writing into it does not grow the file and `fdatasync` has no size to record. A flush writes
//! the records made since the last one as one frame:
//!
//! ```text
//! frame:  magic u32 | len u32 | !len u32 | crc32(body) u32 | body (len bytes) | zeros to 16
//! body:   record*           record: payload_len u32 | kind u8 | payload
//! ```
//!
//! All integers little-endian. Frames start at multiples of 16, so a frame header never spans
//! a 512-byte sector: after a crash a header is either whole or zero. Reading stops at a zero
//! header (the unused rest of a segment). In the last segment, a frame whose body is cut
//! short or fails its checksum is the torn write of a flush that never completed — it is the
//! end of the log — provided nothing but zeros follows it; anywhere else, or with data after
//! it, it is corruption and opening fails. Each new segment starts with a frame holding the
//! state so far (see the store), so older segments can be deleted once a checkpoint covers
//! their entries.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::CoordinatorError;

/// Size a segment is created with. A flush that does not fit in what is left starts a new one.
pub const SEGMENT_BYTES: u64 = 8 << 20;

const FRAME_MAGIC: u32 = 0x4657_4853; // "SHWF"
const HEADER: usize = 16;
const ALIGN: usize = 16;

/// What a record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A log entry (protobuf); one at an index at or below the last replaces the tail from it.
    Entry = 1,
    HardState = 2,
    ConfState = 3,
    /// Snapshot metadata (protobuf): the log starts after it. Written at the start of each
    /// segment.
    Compact = 4,
    /// A snapshot from the leader was installed (its metadata, protobuf): every entry before
    /// this record is gone.
    Install = 5,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Kind::Entry,
            2 => Kind::HardState,
            3 => Kind::ConfState,
            4 => Kind::Compact,
            5 => Kind::Install,
            _ => return None,
        })
    }
}

fn corrupt(what: impl std::fmt::Display) -> CoordinatorError {
    CoordinatorError::CorruptStorage(what.to_string())
}

/// Records waiting for the next flush, already laid out as a frame body behind room for the
/// frame's header.
#[derive(Debug)]
pub struct Frame {
    buf: Vec<u8>,
}

impl Default for Frame {
    fn default() -> Self {
        Self { buf: vec![0; HEADER] }
    }
}

impl Frame {
    pub fn push(&mut self, kind: Kind, payload: &[u8]) {
        self.buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        self.buf.push(kind as u8);
        self.buf.extend_from_slice(payload);
    }

    pub fn is_empty(&self) -> bool {
        self.buf.len() == HEADER
    }

    /// The finished frame: header filled in, padded to [`ALIGN`].
    fn seal(&mut self) -> &[u8] {
        let len = (self.buf.len() - HEADER) as u32;
        let crc = crc32fast::hash(&self.buf[HEADER..]);
        self.buf[0..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
        self.buf[4..8].copy_from_slice(&len.to_le_bytes());
        self.buf[8..12].copy_from_slice(&(!len).to_le_bytes());
        self.buf[12..16].copy_from_slice(&crc.to_le_bytes());
        let padded = self.buf.len().next_multiple_of(ALIGN);
        self.buf.resize(padded, 0);
        &self.buf
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.buf.resize(HEADER, 0);
    }
}

/// One record as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub kind: Kind,
    pub payload: Vec<u8>,
}

/// A segment as read back: its records, where its log ends, and whether a torn frame was cut.
#[derive(Debug)]
pub struct ReadSegment {
    pub records: Vec<Record>,
    pub end: u64,
    pub torn: bool,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses a segment's bytes. `last` says whether it is the newest segment, the only one that
/// may end in a torn frame.
pub fn parse_segment(bytes: &[u8], last: bool, name: &str) -> Result<ReadSegment, CoordinatorError> {
    let mut records = Vec::new();
    let mut off = 0usize;
    let zeros = |from: usize| bytes.get(from..).is_none_or(|rest| rest.iter().all(|b| *b == 0));
    loop {
        if off + HEADER > bytes.len() {
            if zeros(off) {
                return Ok(ReadSegment { records, end: off as u64, torn: false });
            }
            return Err(corrupt(format!("{name}: stray bytes at its end (offset {off})")));
        }
        let h = &bytes[off..off + HEADER];
        if h.iter().all(|b| *b == 0) {
            return Ok(ReadSegment { records, end: off as u64, torn: false });
        }
        let (magic, len, not_len, crc) = (u32_at(h, 0), u32_at(h, 4), u32_at(h, 8), u32_at(h, 12));
        if magic != FRAME_MAGIC || len != !not_len {
            return Err(corrupt(format!("{name}: damaged frame header at offset {off}")));
        }
        let body = off + HEADER;
        let body_end = body.saturating_add(len as usize);
        let next = body_end.next_multiple_of(ALIGN);
        let whole = body_end <= bytes.len() && crc32fast::hash(&bytes[body..body_end]) == crc;
        if !whole {
            if last && zeros(next) {
                return Ok(ReadSegment { records, end: off as u64, torn: true });
            }
            return Err(corrupt(format!("{name}: frame at offset {off} fails its checksum and is not the last write")));
        }
        let mut at = body;
        while at < body_end {
            if at + 5 > body_end {
                return Err(corrupt(format!("{name}: a record is cut short at offset {at}")));
            }
            let plen = u32_at(bytes, at) as usize;
            let kind = Kind::from_u8(bytes[at + 4])
                .ok_or_else(|| corrupt(format!("{name}: unknown record kind {} at offset {at}", bytes[at + 4])))?;
            let start = at + 5;
            if start + plen > body_end {
                return Err(corrupt(format!("{name}: a record runs past its frame at offset {at}")));
            }
            records.push(Record { kind, payload: bytes[start..start + plen].to_vec() });
            at = start + plen;
        }
        off = next;
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CoordinatorError + '_ {
    move |e| CoordinatorError::io(path, e)
}

fn sync_dir(dir: &Path) -> Result<(), CoordinatorError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

fn segment_name(seq: u64) -> String {
    format!("{seq:016x}.wal")
}

/// A segment kept on disk, with the highest entry index it holds (0: none).
#[derive(Debug, Clone, Copy)]
struct Segment {
    seq: u64,
    max_index: u64,
}

/// The open write-ahead log.
pub struct Wal {
    dir: PathBuf,
    segment_bytes: u64,
    file: File,
    /// Where the next frame goes in the current (last) segment.
    offset: u64,
    /// Where the current segment's first frame (the state it starts from) ends.
    header_end: u64,
    segments: Vec<Segment>,
    pending: Frame,
    pending_max_index: u64,
    spare: Option<std::thread::JoinHandle<Result<File, CoordinatorError>>>,
}

/// Creates a zero-filled segment under a temporary name, syncs it and renames it into place.
fn create_segment(dir: &Path, seq: u64, size: u64) -> Result<File, CoordinatorError> {
    let tmp = dir.join(format!("{}.tmp", segment_name(seq)));
    let f = zero_filled(&tmp, size)?;
    install_segment(dir, &tmp, seq)?;
    Ok(f)
}

/// Renames a finished temporary segment file into place as segment `seq`.
fn install_segment(dir: &Path, tmp: &Path, seq: u64) -> Result<(), CoordinatorError> {
    let path = dir.join(segment_name(seq));
    std::fs::rename(tmp, &path).map_err(io(&path))?;
    sync_dir(dir)
}

/// A file of `size` zeros at `tmp`, synced.
fn zero_filled(tmp: &Path, size: u64) -> Result<File, CoordinatorError> {
    let f =
        OpenOptions::new().read(true).write(true).create(true).truncate(true).mode(0o600).open(tmp).map_err(io(tmp))?;
    let chunk = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < size {
        let n = chunk.len().min((size - at) as usize);
        f.write_all_at(&chunk[..n], at).map_err(io(tmp))?;
        at += n as u64;
    }
    f.sync_all().map_err(io(tmp))?;
    Ok(f)
}

/// The next segment's file, being zero-filled by a thread of its own once the current segment
/// is half full, so that starting a segment (about 10 ms for 8 MiB) does not stall a flush.
/// Named `.tmp` until used: a log opened after a crash deletes it.
const SPARE: &str = "spare.tmp";

impl Wal {
    /// Makes a new log in `dir` (which must not exist) whose first segment starts with
    /// `first`; the folder appears whole or not at all.
    pub fn create(dir: &Path, segment_bytes: u64, first: &mut Frame) -> Result<(), CoordinatorError> {
        let tmp = dir.with_extension("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        let f = create_segment(&tmp, 0, segment_bytes)?;
        let path = tmp.join(segment_name(0));
        f.write_all_at(first.seal(), 0).map_err(io(&path))?;
        f.sync_data().map_err(io(&path))?;
        std::fs::rename(&tmp, dir).map_err(io(dir))?;
        sync_dir(dir.parent().unwrap_or(Path::new(".")))
    }

    /// Opens the log in `dir` and reads every segment, oldest first. The caller tells the log
    /// each segment's highest entry index with [`Wal::set_max_indexes`].
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<(Self, Vec<Vec<Record>>), CoordinatorError> {
        let mut seqs = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let path = entry.map_err(io(dir))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            if name.ends_with(".tmp") {
                // A segment whose creation did not finish: it never held anything.
                std::fs::remove_file(&path).map_err(io(&path))?;
            } else if let Some(hex) = name.strip_suffix(".wal") {
                let seq = u64::from_str_radix(hex, 16)
                    .map_err(|_| corrupt(format!("{}: not a segment name", path.display())))?;
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();
        let Some(&last_seq) = seqs.last() else {
            return Err(corrupt(format!("{} holds no log segment", dir.display())));
        };
        if seqs.windows(2).any(|w| w[1] != w[0] + 1) {
            return Err(corrupt(format!("{}: log segments are missing (found {seqs:?})", dir.display())));
        }
        let mut all = Vec::with_capacity(seqs.len());
        let mut end = 0;
        let mut header_end = 0;
        for &seq in &seqs {
            let path = dir.join(segment_name(seq));
            let bytes = std::fs::read(&path).map_err(io(&path))?;
            let read = parse_segment(&bytes, seq == last_seq, &path.display().to_string())?;
            if seq == last_seq {
                end = read.end;
                header_end = if end > 0 { first_frame_end(&bytes) } else { 0 };
                // Zero whatever a torn write left after the end, so that later frames written
                // here are never followed by stale bytes that could read as a frame.
                if let Some(last_nonzero) = bytes[end as usize..].iter().rposition(|b| *b != 0) {
                    let upto = (end as usize + last_nonzero + 1).next_multiple_of(ALIGN);
                    let f = OpenOptions::new().write(true).open(&path).map_err(io(&path))?;
                    f.write_all_at(&vec![0u8; upto - end as usize], end).map_err(io(&path))?;
                    f.sync_data().map_err(io(&path))?;
                    if read.torn {
                        tracing::warn!(segment = %path.display(), offset = end, "cut a torn write at the log's end");
                    }
                }
            }
            all.push(read.records);
        }
        let path = dir.join(segment_name(last_seq));
        let file = OpenOptions::new().read(true).write(true).open(&path).map_err(io(&path))?;
        let wal = Self {
            dir: dir.to_path_buf(),
            segment_bytes,
            file,
            offset: end,
            header_end,
            segments: seqs.iter().map(|&seq| Segment { seq, max_index: 0 }).collect(),
            pending: Frame::default(),
            pending_max_index: 0,
            spare: None,
        };
        Ok((wal, all))
    }

    /// The highest entry index in each segment, oldest first, as found by replaying them.
    pub fn set_max_indexes(&mut self, max: &[u64]) {
        for (s, m) in self.segments.iter_mut().zip(max) {
            s.max_index = *m;
        }
    }

    pub fn push(&mut self, kind: Kind, payload: &[u8]) {
        self.pending.push(kind, payload);
    }

    pub fn push_entry(&mut self, index: u64, payload: &[u8]) {
        self.pending.push(Kind::Entry, payload);
        self.pending_max_index = self.pending_max_index.max(index);
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Whether the pending frame must go to a new segment (it does not fit in what is left of
    /// this one, and this one holds more than its first frame).
    pub fn must_roll(&self) -> bool {
        let len = (self.pending.buf.len().next_multiple_of(ALIGN)) as u64;
        self.offset + len > self.segment_bytes && self.offset > self.header_end
    }

    /// Starts a new segment whose first frame is `first` (the state so far).
    pub fn roll(&mut self, first: &mut Frame) -> Result<(), CoordinatorError> {
        let seq = self.segments.last().map(|s| s.seq + 1).unwrap_or(0);
        let spare = self.spare.take().and_then(|t| t.join().ok()).and_then(|r| {
            r.map_err(|e| tracing::warn!(error = %e, "the spare log segment could not be made; making one now")).ok()
        });
        let file = match spare {
            Some(f) => {
                install_segment(&self.dir, &self.dir.join(SPARE), seq)?;
                f
            }
            None => create_segment(&self.dir, seq, self.segment_bytes)?,
        };
        let bytes = first.seal();
        let path = self.dir.join(segment_name(seq));
        file.write_all_at(bytes, 0).map_err(io(&path))?;
        self.file = file;
        self.offset = bytes.len() as u64;
        self.header_end = self.offset;
        self.segments.push(Segment { seq, max_index: 0 });
        Ok(())
    }

    /// Writes the pending frame and waits for it to be on disk (`fdatasync`).
    pub fn sync(&mut self) -> Result<(), CoordinatorError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let seq = self.segments.last().map(|s| s.seq).unwrap_or(0);
        let path = self.dir.join(segment_name(seq));
        let bytes = self.pending.seal();
        self.file.write_all_at(bytes, self.offset).map_err(io(&path))?;
        self.file.sync_data().map_err(io(&path))?;
        self.offset += bytes.len() as u64;
        if let Some(s) = self.segments.last_mut() {
            s.max_index = s.max_index.max(self.pending_max_index);
        }
        self.pending.clear();
        self.pending_max_index = 0;
        if self.spare.is_none() && self.offset > self.segment_bytes / 2 {
            let (tmp, size) = (self.dir.join(SPARE), self.segment_bytes);
            self.spare =
                std::thread::Builder::new().name("raft-wal-spare".into()).spawn(move || zero_filled(&tmp, size)).ok();
        }
        Ok(())
    }

    /// Deletes the oldest segments whose entries are all at or below `index` (covered by a
    /// checkpoint); the newest segment always stays. Returns how many went.
    pub fn drop_through(&mut self, index: u64) -> Result<usize, CoordinatorError> {
        let mut n = 0;
        while self.segments.len() > 1 && self.segments[0].max_index <= index {
            let path = self.dir.join(segment_name(self.segments[0].seq));
            std::fs::remove_file(&path).map_err(io(&path))?;
            self.segments.remove(0);
            n += 1;
        }
        if n > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(n)
    }

    /// Where the next frame goes in the newest segment.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
}

/// Where a segment's first frame ends (its header is known to be valid).
fn first_frame_end(bytes: &[u8]) -> u64 {
    ((HEADER + u32_at(bytes, 4) as usize).next_multiple_of(ALIGN)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(records: &[(Kind, &[u8])]) -> Vec<u8> {
        let mut f = Frame::default();
        for (k, p) in records {
            f.push(*k, p);
        }
        f.seal().to_vec()
    }

    fn segment(frames: &[Vec<u8>], size: usize) -> Vec<u8> {
        let mut b: Vec<u8> = frames.concat();
        b.resize(size, 0);
        b
    }

    #[test]
    fn frames_read_back_in_order_and_stop_at_zeros() {
        let bytes =
            segment(&[frame(&[(Kind::HardState, b"hs"), (Kind::Entry, b"e1")]), frame(&[(Kind::Entry, b"")])], 4096);
        let read = parse_segment(&bytes, true, "s").expect("parse");
        let kinds: Vec<_> = read.records.iter().map(|r| (r.kind, r.payload.clone())).collect();
        assert_eq!(
            kinds,
            vec![(Kind::HardState, b"hs".to_vec()), (Kind::Entry, b"e1".to_vec()), (Kind::Entry, vec![])]
        );
        assert!(!read.torn);
        assert_eq!(read.end % 16, 0);
        assert_eq!(read.end as usize, frame(&[(Kind::HardState, b"hs"), (Kind::Entry, b"e1")]).len() + 16 + 16);
    }

    #[test]
    fn a_torn_last_frame_ends_the_log_only_in_the_last_segment() {
        let first = frame(&[(Kind::Entry, b"kept")]);
        let mut torn = frame(&[(Kind::Entry, &[7u8; 600])]);
        // The second half of the write never reached the disk.
        for b in &mut torn[300..] {
            *b = 0;
        }
        let bytes = segment(&[first.clone(), torn], 4096);
        let read = parse_segment(&bytes, true, "s").expect("parse");
        assert!(read.torn);
        assert_eq!(read.end as usize, first.len());
        assert_eq!(read.records.len(), 1);
        let err = parse_segment(&bytes, false, "s").expect_err("an older segment may not be torn");
        assert!(err.to_string().contains("checksum"), "{err}");
    }

    #[test]
    fn a_bad_frame_followed_by_data_is_corruption() {
        let mut a = frame(&[(Kind::Entry, b"acknowledged")]);
        a[20] ^= 0x40;
        let bytes = segment(&[a, frame(&[(Kind::Entry, b"later")])], 4096);
        let err = parse_segment(&bytes, true, "s").expect_err("must refuse");
        assert!(err.to_string().contains("not the last write"), "{err}");
        // A damaged header is never a torn write (headers are written whole or not at all).
        let mut h = frame(&[(Kind::Entry, b"x")]);
        h[5] ^= 1;
        let err = parse_segment(&segment(&[h], 4096), true, "s").expect_err("must refuse");
        assert!(err.to_string().contains("damaged frame header"), "{err}");
    }

    #[test]
    fn segments_roll_and_old_ones_are_dropped_once_covered() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("wal");
        let mut first = Frame::default();
        first.push(Kind::HardState, b"start");
        Wal::create(&dir, 4096, &mut first).expect("create");
        let (mut wal, read) = Wal::open(&dir, 4096).expect("open");
        assert_eq!(read.len(), 1);
        for i in 1..=40u64 {
            wal.push_entry(i, &[i as u8; 300]);
            if wal.must_roll() {
                let mut h = Frame::default();
                h.push(Kind::HardState, format!("at {i}").as_bytes());
                wal.roll(&mut h).expect("roll");
            }
            wal.sync().expect("sync");
        }
        let segments = wal.segment_count();
        assert!(segments >= 3, "{segments}");
        drop(wal);
        let (mut wal, read) = Wal::open(&dir, 4096).expect("reopen");
        let entries: Vec<u8> = read.iter().flatten().filter(|r| r.kind == Kind::Entry).map(|r| r.payload[0]).collect();
        assert_eq!(entries, (1..=40u8).collect::<Vec<_>>());
        let max: Vec<u64> = read
            .iter()
            .map(|rs| rs.iter().filter(|r| r.kind == Kind::Entry).map(|r| r.payload[0] as u64).max().unwrap_or(0))
            .collect();
        wal.set_max_indexes(&max);
        let dropped = wal.drop_through(max[1]).expect("drop");
        assert_eq!(dropped, 2);
        assert_eq!(std::fs::read_dir(&dir).expect("dir").count(), segments - 2);
        // Everything after the dropped segments is still there.
        let (_, read) = Wal::open(&dir, 4096).expect("reopen");
        let first_kept = read.iter().flatten().find(|r| r.kind == Kind::Entry).map(|r| r.payload[0]);
        assert_eq!(first_kept, Some(max[1] as u8 + 1));
    }

    #[test]
    fn the_next_segment_is_made_ahead_and_used_at_the_roll() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("wal");
        Wal::create(&dir, 4096, &mut Frame::default()).expect("create");
        let (mut wal, _) = Wal::open(&dir, 4096).expect("open");
        let mut i = 0;
        while wal.offset() <= 2048 {
            i += 1;
            wal.push_entry(i, &[1u8; 300]);
            wal.sync().expect("sync");
            assert!(wal.spare.is_none() || wal.offset() > 2048, "no spare before half");
        }
        assert!(wal.spare.is_some(), "a spare is being made past half");
        while !wal.must_roll() {
            i += 1;
            wal.push_entry(i, &[1u8; 300]);
            if !wal.must_roll() {
                wal.sync().expect("sync");
            }
        }
        wal.roll(&mut Frame::default()).expect("roll");
        wal.sync().expect("sync");
        assert!(wal.spare.is_none(), "the spare was used");
        assert!(!dir.join(SPARE).exists());
        assert_eq!(std::fs::metadata(dir.join(segment_name(1))).expect("segment 1").len(), 4096);
        drop(wal);
        let (_, read) = Wal::open(&dir, 4096).expect("reopen");
        let n = read.iter().flatten().filter(|r| r.kind == Kind::Entry).count() as u64;
        assert_eq!(n, i);
    }

    #[test]
    fn reopening_after_a_torn_write_zeroes_it_so_new_frames_are_not_followed_by_stale_ones() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("wal");
        Wal::create(&dir, 4096, &mut Frame::default()).expect("create");
        let path = dir.join(segment_name(0));
        // A torn frame after an empty first frame: header whole, part of the body missing.
        let mut torn = frame(&[(Kind::Entry, &[9u8; 200]), (Kind::Entry, &[9u8; 200])]);
        for b in &mut torn[100..200] {
            *b = 0;
        }
        let f = OpenOptions::new().write(true).open(&path).expect("open");
        f.write_all_at(&torn, 16).expect("write");
        drop(f);
        let (mut wal, read) = Wal::open(&dir, 4096).expect("open");
        assert!(read[0].is_empty());
        wal.push_entry(1, b"short");
        wal.sync().expect("sync");
        drop(wal);
        let (_, read) = Wal::open(&dir, 4096).expect("reopen");
        assert_eq!(read[0], vec![Record { kind: Kind::Entry, payload: b"short".to_vec() }]);
    }
}
