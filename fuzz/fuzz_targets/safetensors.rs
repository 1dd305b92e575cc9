//! The safetensors header check (`shoal_engine::safetensors_weight_bytes_of`: the code model
//! inspection runs on each `*.safetensors` file) on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(end) = shoal_engine::safetensors_weight_bytes_of(data) {
        // Accepted: all tensor data lies inside the file.
        assert!(data.len() >= 8 && end <= data.len() as u64 - 8);
    }
});
