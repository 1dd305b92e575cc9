//! The one GGUF header fact candle's reader trusts without checking: `general.alignment`.
//!
//! candle divides by it (a file declaring 0 panics the process), so the header's key/value
//! section is walked here first, allocation-free and bounded by the file's length, and a
//! declared alignment that is not a power of two is refused with a clear error.
//!
//! The walk reads keys the way candle does, so that no file gets past it with a value candle
//! would use: trailing NUL bytes of a key are ignored, a key given twice counts by its last
//! value (candle keeps the last in a map), and arrays nest as deep as candle allows.

use std::io::{Read, Seek, SeekFrom};

const MAGIC: u32 = 0x4655_4747; // "GGUF", little-endian
const KEY: &[u8] = b"general.alignment";
/// candle's own cap on nested arrays (`GGUF_MAX_VALUE_DEPTH`).
const MAX_DEPTH: u32 = 64;

/// The integer value of `general.alignment` when the header declares one (negative values
/// as they are; the last one when it is declared more than once); `None` when it declares
/// none. Where the header is malformed the walk stops, with what it found before (candle's
/// reader then reports the problem). The reader is left where it started.
pub(crate) fn declared_alignment<R: Read + Seek>(reader: &mut R, file_len: u64) -> Option<i128> {
    let start = reader.stream_position().ok()?;
    let found = walk(reader, file_len);
    reader.seek(SeekFrom::Start(start)).ok()?;
    found
}

/// `Err` with the message for a declared alignment candle cannot use.
pub(crate) fn check_alignment<R: Read + Seek>(reader: &mut R, file_len: u64) -> Result<(), String> {
    match declared_alignment(reader, file_len) {
        Some(a) if a <= 0 || (a as u128).count_ones() != 1 => {
            Err(format!("GGUF metadata general.alignment is {a}; it must be a power of two"))
        }
        _ => Ok(()),
    }
}

struct Walker<'r, R> {
    reader: &'r mut R,
    wide: bool,
    file_len: u64,
}

fn walk<R: Read + Seek>(reader: &mut R, file_len: u64) -> Option<i128> {
    if read_u32(reader)? != MAGIC {
        return None;
    }
    let wide = match read_u32(reader)? {
        1 => false,
        2 | 3 => true,
        _ => return None,
    };
    let mut w = Walker { reader, wide, file_len };
    let _tensors = w.length()?;
    let entries = w.length()?;
    let mut found = None;
    for _ in 0..entries {
        let Some(value) = w.entry() else { break };
        if value.is_some() {
            found = value;
        }
    }
    found
}

impl<R: Read + Seek> Walker<'_, R> {
    /// One key/value entry: `Some(Some(v))` for `general.alignment` with an integer value,
    /// `Some(None)` for any other entry, `None` when the header is malformed here.
    fn entry(&mut self) -> Option<Option<i128>> {
        let key_len = self.length()?;
        let is_key = self.key_matches(key_len)?;
        let value_type = read_u32(self.reader)?;
        if is_key {
            if fixed_size(value_type).is_some() {
                return Some(self.integer(value_type));
            }
            self.skip_value(value_type, 0)?;
            return Some(None);
        }
        self.skip_value(value_type, 0)?;
        Some(None)
    }

    /// Reads a key of `len` bytes; whether it is [`KEY`] followed by nothing but NUL bytes
    /// (candle drops trailing NULs from strings).
    fn key_matches(&mut self, len: u64) -> Option<bool> {
        if len < KEY.len() as u64 {
            self.skip(len)?;
            return Some(false);
        }
        let here = self.reader.stream_position().ok()?;
        if here.checked_add(len)? > self.file_len {
            return None;
        }
        let mut head = [0u8; KEY.len()];
        self.reader.read_exact(&mut head).ok()?;
        let mut rest = len - KEY.len() as u64;
        let mut all_nul = true;
        let mut chunk = [0u8; 256];
        while rest > 0 {
            let n = rest.min(chunk.len() as u64) as usize;
            self.reader.read_exact(&mut chunk[..n]).ok()?;
            all_nul &= chunk[..n].iter().all(|&b| b == 0);
            rest -= n as u64;
        }
        Some(head == KEY && all_nul)
    }

    fn length(&mut self) -> Option<u64> {
        if self.wide {
            read_u64(self.reader)
        } else {
            read_u32(self.reader).map(u64::from)
        }
    }

    /// Seek `n` bytes on; `None` once past the end of the file (so loops stay bounded).
    fn skip(&mut self, n: u64) -> Option<()> {
        let here = self.reader.stream_position().ok()?;
        let there = here.checked_add(n)?;
        if there > self.file_len {
            return None;
        }
        self.reader.seek(SeekFrom::Start(there)).ok()?;
        Some(())
    }

    /// The value of a fixed-size entry as an integer; `None` for floats and booleans (candle
    /// ignores those and uses its default) or when the file ends inside it.
    fn integer(&mut self, value_type: u32) -> Option<i128> {
        let mut b = [0u8; 8];
        let n = fixed_size(value_type)?;
        self.reader.read_exact(&mut b[..n as usize]).ok()?;
        Some(match value_type {
            0 => i128::from(b[0]),
            1 => i128::from(b[0] as i8),
            2 => i128::from(u16::from_le_bytes([b[0], b[1]])),
            3 => i128::from(i16::from_le_bytes([b[0], b[1]])),
            4 => i128::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            5 => i128::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            10 => i128::from(u64::from_le_bytes(b)),
            11 => i128::from(i64::from_le_bytes(b)),
            _ => return None,
        })
    }

    fn skip_value(&mut self, value_type: u32, depth: u32) -> Option<()> {
        if let Some(size) = fixed_size(value_type) {
            return self.skip(size);
        }
        match value_type {
            8 => {
                let len = self.length()?;
                self.skip(len)
            }
            9 if depth < MAX_DEPTH => {
                let element_type = read_u32(self.reader)?;
                let count = self.length()?;
                if let Some(size) = fixed_size(element_type) {
                    return self.skip(count.checked_mul(size)?);
                }
                // Strings and arrays take at least 4 bytes each, and `skip` stops at the
                // end of the file, so this loop is bounded by the file's length.
                for _ in 0..count {
                    self.skip_value(element_type, depth + 1)?;
                }
                Some(())
            }
            _ => None,
        }
    }
}

fn fixed_size(value_type: u32) -> Option<u64> {
    match value_type {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

fn read_u32<R: Read>(r: &mut R) -> Option<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b).ok()?;
    Some(u32::from_le_bytes(b))
}

fn read_u64<R: Read>(r: &mut R) -> Option<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b).ok()?;
    Some(u64::from_le_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A v3 header: no tensors, the given key/value entries (already encoded).
    fn header(entries: &[Vec<u8>]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC.to_le_bytes());
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        b.extend_from_slice(&(entries.len() as u64).to_le_bytes());
        for e in entries {
            b.extend_from_slice(e);
        }
        b
    }

    fn key(name: &str, value_type: u32, value: &[u8]) -> Vec<u8> {
        let mut b = (name.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(name.as_bytes());
        b.extend_from_slice(&value_type.to_le_bytes());
        b.extend_from_slice(value);
        b
    }

    fn string_array(items: &[&str]) -> Vec<u8> {
        let mut b = 8u32.to_le_bytes().to_vec();
        b.extend_from_slice(&(items.len() as u64).to_le_bytes());
        for s in items {
            b.extend_from_slice(&(s.len() as u64).to_le_bytes());
            b.extend_from_slice(s.as_bytes());
        }
        b
    }

    fn alignment_of(bytes: &[u8]) -> Option<i128> {
        let mut c = Cursor::new(bytes);
        let a = declared_alignment(&mut c, bytes.len() as u64);
        assert_eq!(c.position(), 0, "the reader is left where it started");
        a
    }

    #[test]
    fn finds_the_alignment_after_strings_and_arrays() {
        let tokens = key("tokenizer.ggml.tokens", 9, &string_array(&["a", "bc", ""]));
        let arch = key("general.architecture", 8, &[&5u64.to_le_bytes()[..], b"llama"].concat());
        let align = key("general.alignment", 4, &64u32.to_le_bytes());
        assert_eq!(alignment_of(&header(&[tokens, arch, align])), Some(64));
    }

    #[test]
    fn zero_and_odd_alignments_are_refused_and_powers_of_two_pass() {
        for (value, ok) in [(0u32, false), (24, false), (1, true), (32, true)] {
            let bytes = header(&[key("general.alignment", 4, &value.to_le_bytes())]);
            let r = check_alignment(&mut Cursor::new(&bytes[..]), bytes.len() as u64);
            assert_eq!(r.is_ok(), ok, "alignment {value}: {r:?}");
        }
        let negative = header(&[key("general.alignment", 5, &(-32i32).to_le_bytes())]);
        assert!(check_alignment(&mut Cursor::new(&negative[..]), negative.len() as u64).is_err());
    }

    #[test]
    fn no_key_or_a_malformed_header_is_left_to_the_reader() {
        assert_eq!(alignment_of(&header(&[key("general.name", 8, &0u64.to_le_bytes())])), None);
        assert_eq!(alignment_of(b"GGUF"), None);
        // An array claiming 2^60 strings stops at the end of the file.
        let mut huge = 8u32.to_le_bytes().to_vec();
        huge.extend_from_slice(&(1u64 << 60).to_le_bytes());
        assert_eq!(alignment_of(&header(&[key("x", 9, &huge)])), None);
    }

    #[test]
    fn keys_are_read_as_candle_reads_them() {
        // The last of two declarations is the one candle uses.
        let twice = header(&[
            key("general.alignment", 4, &32u32.to_le_bytes()),
            key("general.alignment", 4, &0u32.to_le_bytes()),
        ]);
        assert_eq!(alignment_of(&twice), Some(0));
        // A key followed by NUL bytes is the same key to candle.
        let padded = header(&[key("general.alignment\0\0", 2, &0u16.to_le_bytes())]);
        assert_eq!(alignment_of(&padded), Some(0));
        let longer = header(&[key("general.alignmentx", 2, &0u16.to_le_bytes())]);
        assert_eq!(alignment_of(&longer), None);
        // Arrays nested deeper than a few levels are walked past.
        let mut nested = Vec::new();
        for _ in 0..10 {
            nested.extend_from_slice(&9u32.to_le_bytes());
            nested.extend_from_slice(&1u64.to_le_bytes());
        }
        nested.extend_from_slice(&4u32.to_le_bytes());
        nested.extend_from_slice(&1u64.to_le_bytes());
        nested.extend_from_slice(&7u32.to_le_bytes());
        let deep = header(&[key("x", 9, &nested), key("general.alignment", 4, &0u32.to_le_bytes())]);
        assert_eq!(alignment_of(&deep), Some(0));
        // A float value is not an alignment candle uses, and does not hide a later one.
        let float_then_zero = header(&[
            key("general.alignment", 6, &1.0f32.to_le_bytes()),
            key("general.alignment", 5, &0i32.to_le_bytes()),
        ]);
        assert_eq!(alignment_of(&float_then_zero), Some(0));
        for bytes in [twice, padded] {
            let err = crate::inspect_gguf_bytes(&bytes).expect_err("refused").to_string();
            assert!(err.contains("general.alignment is 0"), "{err}");
        }
    }

    #[test]
    fn inspecting_a_file_declaring_alignment_zero_is_an_error_not_a_panic() {
        // The input the gguf fuzz target found: candle's reader divides by the alignment.
        let bytes = header(&[key("general.alignment", 4, &0u32.to_le_bytes())]);
        let err = crate::inspect_gguf_bytes(&bytes).expect_err("refused").to_string();
        assert!(err.contains("general.alignment is 0"), "{err}");
    }
}
