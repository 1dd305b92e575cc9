//! The GGUF header reader and model inspection (`shoal_engine::inspect_gguf_bytes`: the code
//! `inspect`/`Llm::load` run on a file) on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = shoal_engine::inspect_gguf_bytes(data);
});
