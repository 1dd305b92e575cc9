//! The inside of a JSON string, one byte at a time: escapes, `\uXXXX` (surrogate pairs included)
//! and UTF-8 validation, with the decoded bytes handed back for key matching.

/// Where the lexer is inside a string (after the opening quote).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lex {
    /// Between characters.
    Normal,
    /// After a backslash.
    Escape,
    /// After `\u` and `n` hex digits whose value so far is `cp`.
    Hex { n: u8, cp: u16 },
    /// After a high surrogate escape: a `\` must follow.
    LowEscape { hi: u16 },
    /// After a high surrogate escape and `\`: a `u` must follow.
    LowU { hi: u16 },
    /// Inside the low surrogate escape that completes `hi`.
    LowHex { hi: u16, n: u8, cp: u16 },
    /// Inside a multi-byte UTF-8 sequence: `left` continuation bytes to come, the next in `lo..=hi`.
    Cont { left: u8, lo: u8, hi: u8 },
}

/// Up to four bytes of decoded string content (the UTF-8 of what a byte completed).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Decoded {
    bytes: [u8; 4],
    len: u8,
}

impl Decoded {
    fn one(b: u8) -> Decoded {
        Decoded { bytes: [b, 0, 0, 0], len: 1 }
    }

    fn char(c: char) -> Decoded {
        let mut bytes = [0; 4];
        let len = c.encode_utf8(&mut bytes).len() as u8;
        Decoded { bytes, len }
    }

    /// The decoded bytes.
    pub(crate) fn as_slice(&self) -> &[u8] {
        self.bytes.get(..self.len as usize).unwrap_or(&[])
    }
}

/// What one byte does to a string.
#[derive(Clone, Copy, Debug)]
pub(crate) enum LexStep {
    /// Not allowed here.
    Reject,
    /// Accepted: the new lexer state, whether this byte starts a character (for length limits)
    /// and the decoded content it completed (often none, e.g. inside an escape).
    Char { next: Lex, new_char: bool, out: Decoded },
    /// The closing quote.
    Close,
}

fn hex_value(b: u8) -> Option<u16> {
    match b {
        b'0'..=b'9' => Some(u16::from(b - b'0')),
        b'a'..=b'f' => Some(u16::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u16::from(b - b'A' + 10)),
        _ => None,
    }
}

fn accepted(next: Lex, new_char: bool, out: Decoded) -> LexStep {
    LexStep::Char { next, new_char, out }
}

fn code_point(next: Lex, cp: u32) -> LexStep {
    match char::from_u32(cp) {
        Some(c) => accepted(next, false, Decoded::char(c)),
        None => LexStep::Reject,
    }
}

impl Lex {
    /// Feed one byte.
    pub(crate) fn step(self, b: u8) -> LexStep {
        match self {
            Lex::Normal => match b {
                b'"' => LexStep::Close,
                b'\\' => accepted(Lex::Escape, true, Decoded::default()),
                0x00..=0x1F => LexStep::Reject,
                0x20..=0x7F => accepted(Lex::Normal, true, Decoded::one(b)),
                0xC2..=0xDF => accepted(Lex::Cont { left: 1, lo: 0x80, hi: 0xBF }, true, Decoded::one(b)),
                0xE0 => accepted(Lex::Cont { left: 2, lo: 0xA0, hi: 0xBF }, true, Decoded::one(b)),
                0xE1..=0xEC | 0xEE..=0xEF => accepted(Lex::Cont { left: 2, lo: 0x80, hi: 0xBF }, true, Decoded::one(b)),
                // 0xED 0xA0.. would encode a surrogate.
                0xED => accepted(Lex::Cont { left: 2, lo: 0x80, hi: 0x9F }, true, Decoded::one(b)),
                0xF0 => accepted(Lex::Cont { left: 3, lo: 0x90, hi: 0xBF }, true, Decoded::one(b)),
                0xF1..=0xF3 => accepted(Lex::Cont { left: 3, lo: 0x80, hi: 0xBF }, true, Decoded::one(b)),
                0xF4 => accepted(Lex::Cont { left: 3, lo: 0x80, hi: 0x8F }, true, Decoded::one(b)),
                // Stray continuation bytes, overlong leads (0xC0, 0xC1) and 0xF5.. are never valid.
                _ => LexStep::Reject,
            },
            Lex::Cont { left, lo, hi } => {
                if b < lo || b > hi {
                    return LexStep::Reject;
                }
                let next = if left <= 1 { Lex::Normal } else { Lex::Cont { left: left - 1, lo: 0x80, hi: 0xBF } };
                accepted(next, false, Decoded::one(b))
            }
            Lex::Escape => {
                let c = match b {
                    b'"' => b'"',
                    b'\\' => b'\\',
                    b'/' => b'/',
                    b'b' => 0x08,
                    b'f' => 0x0C,
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'u' => return accepted(Lex::Hex { n: 0, cp: 0 }, false, Decoded::default()),
                    _ => return LexStep::Reject,
                };
                accepted(Lex::Normal, false, Decoded::one(c))
            }
            Lex::Hex { n, cp } => {
                let Some(v) = hex_value(b) else { return LexStep::Reject };
                let cp = (cp << 4) | v;
                let n = n + 1;
                // `\uDC..`-`\uDF..` can only become a lone low surrogate: refuse it at once.
                if n == 2 && (0xDC..=0xDF).contains(&cp) {
                    return LexStep::Reject;
                }
                if n < 4 {
                    return accepted(Lex::Hex { n, cp }, false, Decoded::default());
                }
                match cp {
                    0xD800..=0xDBFF => accepted(Lex::LowEscape { hi: cp }, false, Decoded::default()),
                    0xDC00..=0xDFFF => LexStep::Reject,
                    _ => code_point(Lex::Normal, u32::from(cp)),
                }
            }
            Lex::LowEscape { hi } => match b {
                b'\\' => accepted(Lex::LowU { hi }, false, Decoded::default()),
                _ => LexStep::Reject,
            },
            Lex::LowU { hi } => match b {
                b'u' => accepted(Lex::LowHex { hi, n: 0, cp: 0 }, false, Decoded::default()),
                _ => LexStep::Reject,
            },
            Lex::LowHex { hi, n, cp } => {
                let Some(v) = hex_value(b) else { return LexStep::Reject };
                let cp = (cp << 4) | v;
                let n = n + 1;
                let fits = match n {
                    1 => cp == 0xD,
                    2 => (0xDC..=0xDF).contains(&cp),
                    _ => true,
                };
                if !fits {
                    return LexStep::Reject;
                }
                if n < 4 {
                    return accepted(Lex::LowHex { hi, n, cp }, false, Decoded::default());
                }
                let high = u32::from(hi).wrapping_sub(0xD800);
                let low = u32::from(cp).wrapping_sub(0xDC00);
                code_point(Lex::Normal, 0x10000 + (high << 10) + low)
            }
        }
    }
}

/// FNV-1a offset basis: the hash of no bytes.
pub(crate) const HASH_START: u64 = 0xcbf2_9ce4_8422_2325;

/// Extend an FNV-1a 64-bit hash with `bytes`.
pub(crate) fn hash_bytes(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
