//! A byte-level BPE tokenizer built from GGUF metadata, plus incremental UTF-8-safe detokenisation.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::gguf_file;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use crate::error::EngineError;
use crate::inspect::md_str;

/// GGUF token type of control tokens (not printed when decoding).
const TOKEN_TYPE_CONTROL: i32 = 3;
/// GGUF token type of user-defined tokens (matched whole in the input).
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

const QWEN2_PATTERN: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Tokenizer for GGUF models whose `tokenizer.ggml.model` is "gpt2" (byte-level BPE).
pub(crate) struct GgufTokenizer {
    tokenizer: Tokenizer,
    /// The raw bytes each token stands for (empty for control tokens).
    token_bytes: Arc<Vec<Vec<u8>>>,
    pub(crate) eos: Vec<u32>,
    pub(crate) bos: Option<u32>,
    pub(crate) add_bos: bool,
}

/// GPT-2's byte <-> printable-char mapping: the char used in the vocabulary for each byte.
fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        let c = if printable {
            char::from(b)
        } else {
            let c = char::from_u32(next).unwrap_or('\0');
            next += 1;
            c
        };
        table[b as usize] = c;
    }
    table
}

fn metadata_strings(content: &gguf_file::Content, key: &str, path: &Path) -> Result<Vec<String>, EngineError> {
    let values = content
        .metadata
        .get(key)
        .and_then(|v| v.to_vec().ok())
        .ok_or_else(|| EngineError::model(path, format!("GGUF metadata has no {key}")))?;
    values
        .iter()
        .map(|v| v.to_string().cloned().map_err(|_| EngineError::model(path, format!("{key} holds a non-string"))))
        .collect()
}

impl GgufTokenizer {
    pub(crate) fn from_gguf(content: &gguf_file::Content, path: &Path) -> Result<Self, EngineError> {
        let model = md_str(content, "tokenizer.ggml.model").map(String::as_str).unwrap_or("");
        if model != "gpt2" {
            return Err(EngineError::model(
                path,
                format!("unsupported tokenizer model {model:?} (only byte-level BPE \"gpt2\" is supported)"),
            ));
        }
        let tokens = metadata_strings(content, "tokenizer.ggml.tokens", path)?;
        let merges = metadata_strings(content, "tokenizer.ggml.merges", path)?;
        let types: Vec<i32> = match content.metadata.get("tokenizer.ggml.token_type").and_then(|v| v.to_vec().ok()) {
            Some(v) => v.iter().map(|t| t.to_i32().unwrap_or(1)).collect(),
            None => vec![1; tokens.len()],
        };
        let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let merges: Vec<(String, String)> =
            merges.iter().filter_map(|m| m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string()))).collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| EngineError::Tokenizer(format!("building BPE: {e}")))?;
        let mut tokenizer = Tokenizer::new(bpe);
        let pre = md_str(content, "tokenizer.ggml.pre").map(String::as_str).unwrap_or("default");
        let pre_tokenizer: PreTokenizerWrapper = match pre {
            "smollm" => Sequence::new(vec![Digits::new(true).into(), ByteLevel::new(false, true, true).into()]).into(),
            "qwen2" | "llama-bpe" | "llama3" => {
                let pattern = if pre == "qwen2" { QWEN2_PATTERN } else { LLAMA3_PATTERN };
                let split =
                    Split::new(SplitPattern::Regex(pattern.to_string()), SplitDelimiterBehavior::Isolated, false)
                        .map_err(|e| EngineError::Tokenizer(format!("pre-tokenizer regex: {e}")))?;
                Sequence::new(vec![split.into(), ByteLevel::new(false, true, false).into()]).into()
            }
            other => {
                tracing::warn!(pre = other, "unknown tokenizer.ggml.pre, using the GPT-2 byte-level pre-tokenizer");
                ByteLevel::new(false, true, true).into()
            }
        };
        tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
        let special: Vec<AddedToken> = tokens
            .iter()
            .zip(types.iter())
            .filter(|(_, &t)| t == TOKEN_TYPE_CONTROL || t == TOKEN_TYPE_USER_DEFINED)
            .map(|(s, _)| AddedToken::from(s.clone(), true))
            .collect();
        tokenizer
            .add_special_tokens(special)
            .map_err(|e| EngineError::Tokenizer(format!("adding special tokens: {e}")))?;

        let table = byte_to_char_table();
        let char_to_byte: HashMap<char, u8> = table.iter().enumerate().map(|(b, &c)| (c, b as u8)).collect();
        let token_bytes: Vec<Vec<u8>> = tokens
            .iter()
            .zip(types.iter())
            .map(|(tok, &ty)| match ty {
                TOKEN_TYPE_CONTROL => Vec::new(),
                TOKEN_TYPE_USER_DEFINED => tok.as_bytes().to_vec(),
                _ => {
                    let mut out = Vec::with_capacity(tok.len());
                    for c in tok.chars() {
                        match char_to_byte.get(&c) {
                            Some(&b) => out.push(b),
                            None => {
                                let mut buf = [0u8; 4];
                                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                            }
                        }
                    }
                    out
                }
            })
            .collect();

        let id_of = |key: &str| content.metadata.get(key).and_then(|v| v.to_u32().ok());
        let mut eos = Vec::new();
        if let Some(id) = id_of("tokenizer.ggml.eos_token_id") {
            eos.push(id);
        }
        for name in ["<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<|end|>", "<end_of_turn>"] {
            if let Some(id) = tokens.iter().position(|t| t == name) {
                let id = id as u32;
                if !eos.contains(&id) {
                    eos.push(id);
                }
            }
        }
        let bos = id_of("tokenizer.ggml.bos_token_id");
        let add_bos =
            content.metadata.get("tokenizer.ggml.add_bos_token").and_then(|v| v.to_bool().ok()).unwrap_or(false);
        Ok(GgufTokenizer { tokenizer, token_bytes: Arc::new(token_bytes), eos, bos, add_bos })
    }

    pub(crate) fn token_string(&self, id: u32) -> Option<String> {
        self.tokenizer.id_to_token(id)
    }

    pub(crate) fn encode(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        let enc = self.tokenizer.encode(text, false).map_err(|e| EngineError::Tokenizer(format!("encode: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The raw bytes of a token (empty for control tokens and unknown ids).
    pub(crate) fn bytes(&self, id: u32) -> &[u8] {
        self.token_bytes.get(id as usize).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Every token's bytes, by id (shared with samplers that constrain the output).
    pub(crate) fn table(&self) -> Arc<Vec<Vec<u8>>> {
        Arc::clone(&self.token_bytes)
    }

    pub(crate) fn vocab_size(&self) -> usize {
        self.token_bytes.len()
    }

    pub(crate) fn decode(&self, ids: &[u32]) -> Result<String, EngineError> {
        let mut bytes = Vec::new();
        for &id in ids {
            if id as usize >= self.token_bytes.len() {
                return Err(EngineError::Tokenizer(format!("token id {id} is outside the vocabulary")));
            }
            bytes.extend_from_slice(self.bytes(id));
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// Incremental detokeniser: collects token bytes and hands out only complete UTF-8 text.
#[derive(Debug, Default, Clone)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Add bytes; returns the text that is now complete (invalid sequences become U+FFFD; an incomplete
    /// multi-byte character at the end is kept for later).
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[start..start + valid]).unwrap_or_default());
                    match e.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            start += valid + bad;
                        }
                        None => {
                            start += valid;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        out
    }

    /// Text for whatever incomplete bytes are left (at the end of a stream).
    pub fn flush(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_stream_never_splits_a_character() {
        let text = "héllo 😀 wörld";
        let bytes = text.as_bytes();
        let mut stream = Utf8Stream::default();
        let mut out = String::new();
        for b in bytes {
            let piece = stream.push(std::slice::from_ref(b));
            assert!(!piece.contains(char::REPLACEMENT_CHARACTER));
            out.push_str(&piece);
        }
        out.push_str(&stream.flush());
        assert_eq!(out, text);
        // The emoji's 4 bytes produce nothing until the last one arrives.
        let emoji = "😀".as_bytes();
        let mut s = Utf8Stream::default();
        assert_eq!(s.push(&emoji[..1]), "");
        assert_eq!(s.push(&emoji[1..3]), "");
        assert_eq!(s.push(&emoji[3..]), "😀");
    }

    #[test]
    fn utf8_stream_replaces_invalid_bytes() {
        let mut s = Utf8Stream::default();
        assert_eq!(s.push(&[b'a', 0xFF, b'b']), "a\u{FFFD}b");
        assert_eq!(s.push(&[0xE2, 0x82]), "");
        assert_eq!(s.flush(), "\u{FFFD}");
    }

    #[test]
    fn byte_table_is_a_bijection() {
        let table = byte_to_char_table();
        let set: std::collections::HashSet<char> = table.iter().copied().collect();
        assert_eq!(set.len(), 256);
        assert_eq!(table[b' ' as usize], 'Ġ');
        assert_eq!(table[b'\n' as usize], 'Ċ');
    }
}
