//! The tokenizer the engine builds from GGUF metadata (the real SmolLM2 GGUF, loaded once as
//! `Llm::load` loads it): encoding arbitrary text, decoding arbitrary token ids (whole and
//! streamed through the generator's `Utf8Stream`), and rendering the chat template.
//! The model comes from `$SHOAL_MODELS_DIR` (default `../models`, as ./scripts/fetch-models.sh
//! leaves it).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use shoal_engine::{ChatMessage, Llm, LlmOptions, Utf8Stream};

const GGUF: &str = "smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf";

fn llm() -> &'static Llm {
    static LLM: OnceLock<Llm> = OnceLock::new();
    LLM.get_or_init(|| {
        let dir = std::env::var_os("SHOAL_MODELS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../models")));
        let path = dir.join(GGUF);
        // Only the first layer: the tokenizer and template are the whole model's; the
        // weights are not used here.
        let opts = LlmOptions { layers: Some(0..1), requantize: true, llama_cpp_numerics: false };
        Llm::load(&path, &opts)
            .unwrap_or_else(|e| panic!("cannot load {} (run ./scripts/fetch-models.sh): {e}", path.display()))
    })
}

/// Which bytes have a token of their own (byte-level BPE can spell any text with only those).
fn byte_tokens() -> &'static [bool; 256] {
    static BYTES: OnceLock<[bool; 256]> = OnceLock::new();
    BYTES.get_or_init(|| {
        let llm = llm();
        let mut has = [false; 256];
        for id in 0..llm.vocab_size() as u32 {
            if let [b] = llm.token_bytes(id) {
                has[*b as usize] = true;
            }
        }
        let missing: Vec<String> = (0..256).filter(|&b| !has[b]).map(|b| format!("{b:#04x}")).collect();
        eprintln!("tokenizer: {} bytes have no token of their own: {}", missing.len(), missing.join(" "));
        has
    })
}

fuzz_target!(
    init: {
        byte_tokens();
    },
    |data: &[u8]| {
    let llm = llm();
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 3 {
        0 => {
            // Encode text; byte-level BPE must give the text back, except for special tokens
            // (control tokens decode to nothing) and bytes the vocabulary has no token for
            // (encode drops them without an error: see docs/fuzzing.md).
            let text = String::from_utf8_lossy(rest);
            let ids = llm.encode(&text).expect("encode");
            let back = llm.decode(&ids).expect("decode what encode gave");
            let covered = byte_tokens();
            let plain = !text.contains('<') && text.bytes().all(|b| covered[b as usize]);
            if plain {
                assert_eq!(back, text, "decode(encode(text)) differs");
            }
        }
        1 => {
            // Decode ids (some past the vocabulary); streaming must agree with the whole.
            let vocab = llm.vocab_size() as u32 + 4;
            let ids: Vec<u32> = rest
                .chunks_exact(2)
                .map(|c| u32::from(u16::from_le_bytes([c[0], c[1]])) % vocab)
                .collect();
            let whole = llm.decode(&ids);
            let mut stream = Utf8Stream::default();
            let mut streamed = String::new();
            for &id in &ids {
                streamed.push_str(&stream.push(llm.token_bytes(id)));
            }
            streamed.push_str(&stream.flush());
            if let Ok(whole) = whole {
                assert_eq!(streamed, whole, "streamed text differs from the whole decode");
            }
        }
        _ => {
            // A conversation: NUL-separated role, content, role, content, ...
            let text = String::from_utf8_lossy(rest);
            let parts: Vec<&str> = text.split('\0').collect();
            let messages: Vec<ChatMessage> =
                parts.chunks(2).map(|p| ChatMessage::new(p[0], p.get(1).copied().unwrap_or(""))).collect();
            if let Ok(prompt) = llm.render_chat(&messages) {
                let _ = llm.encode(&prompt);
            }
        }
    }
}
);
