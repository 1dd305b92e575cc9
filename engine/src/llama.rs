//! Llama-family (llama, qwen2) forward pass over GGUF weights with per-sequence KV caches, batched rows and
//! contiguous layer ranges ("stages") for splitting a model across nodes.

use std::borrow::Cow;
use std::fs::File;
use std::io::BufReader;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{Device, Module, Tensor};
use serde::{Deserialize, Serialize};

use crate::attention::{attention, Heads, MAX_HEAD_DIM};
use crate::error::EngineError;
use crate::half::to_half_precision;
use crate::inspect::{inspect_gguf, md_str, ModelInfo};
use crate::matmul::{BlockMatrix, InputQuant, WeightBlock, WeightMatrix};
use crate::q4::{q4_from_q4_0, q4_from_q4_1};
use crate::q4k::q4k_from_q4_k;
use crate::q5::q5_from_q5_0;
use crate::q6k::q6k_from_q6_k;
use crate::q8::{q8_from_f32, q8_from_q8_0};
use crate::tokenizer::GgufTokenizer;

pub use crate::chat::{ChatMessage, ChatToolCall};

/// How to load a GGUF model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlmOptions {
    /// Only this contiguous range of transformer layers (a pipeline stage); `None` = all layers.
    pub layers: Option<Range<usize>>,
    /// Run all weight matrices on the engine's own batched kernels, which read each weight once per step for all
    /// sequences (much faster on CPU than candle's kernels): Q4_0, Q4_1, Q5_0, Q8_0, Q4_K and Q6_K weights are
    /// read as stored; other types are quantised at load to the engine's 8-bit format (Q8_0). `false` runs
    /// candle's kernels on the file's own quantisation.
    pub requantize: bool,
    /// Compute as llama.cpp's CPU backend does by default, to give its greedy tokens: the inputs of 32-value
    /// weight blocks quantised as GGML's Q8_0 (a half-precision scale; the K-quants' inputs are GGML's Q8_K
    /// either way), a half-precision KV cache (and query and attention weights rounded to half precision where
    /// they meet it), RoPE angles and RMS sums as ggml computes them. Off by default: the engine's own input
    /// quantisation (an f32 scale per 32) and f32 KV cache are more precise.
    pub llama_cpp_numerics: bool,
}

impl Default for LlmOptions {
    fn default() -> Self {
        LlmOptions { layers: None, requantize: true, llama_cpp_numerics: false }
    }
}

/// Hidden states passed between pipeline stages: `data` is row-major `[sum(counts), hidden]` f32, rows of each
/// sequence together and in order; `counts[i]` is the number of rows (tokens) of sequence `i`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HiddenStates {
    pub data: Vec<f32>,
    pub counts: Vec<usize>,
    pub hidden: usize,
}

/// Input of one forward pass over a stage.
#[derive(Debug, Clone, PartialEq)]
pub enum StageInput {
    /// New tokens per sequence (first stage only).
    Tokens(Vec<Vec<u32>>),
    /// Hidden states from the previous stage (any stage but the first).
    Hidden(HiddenStates),
}

/// Output of one forward pass over a stage.
#[derive(Debug, Clone, PartialEq)]
pub enum StageOutput {
    /// Hidden states for the next stage (any stage but the last).
    Hidden(HiddenStates),
    /// The last stage: logits (vocab-sized) of the last new token of each sequence.
    Logits(Vec<Vec<f32>>),
}

/// Per-sequence key/value cache for the layers of one stage: rows `[position][kv_heads * head_dim]`.
#[derive(Debug, Clone)]
pub struct KvCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    len: usize,
    kv_dim: usize,
}

impl KvCache {
    fn new(layers: usize, kv_dim: usize, reserve_tokens: usize) -> Self {
        KvCache {
            k: (0..layers).map(|_| Vec::with_capacity(reserve_tokens * kv_dim)).collect(),
            v: (0..layers).map(|_| Vec::with_capacity(reserve_tokens * kv_dim)).collect(),
            len: 0,
            kv_dim,
        }
    }

    /// Tokens held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forget everything after the first `len` tokens.
    pub fn truncate(&mut self, len: usize) {
        if len < self.len {
            for buf in self.k.iter_mut().chain(self.v.iter_mut()) {
                buf.truncate(len * self.kv_dim);
            }
            self.len = len;
        }
    }

    #[cfg(test)]
    pub(crate) fn new_for_tests(layers: usize, kv_dim: usize) -> Self {
        KvCache::new(layers, kv_dim, 0)
    }

    /// Appends one position whose keys and values are all `x` (tests).
    #[cfg(test)]
    pub(crate) fn push_for_tests(&mut self, x: f32) {
        for buf in self.k.iter_mut().chain(self.v.iter_mut()) {
            buf.extend(std::iter::repeat_n(x, self.kv_dim));
        }
        self.len += 1;
    }

    /// The first layer's keys, position by position (tests).
    #[cfg(test)]
    pub(crate) fn values_for_tests(&self) -> Vec<f32> {
        self.k[0].chunks(self.kv_dim).map(|c| c[0]).collect()
    }

    /// A copy of the first `len` tokens (all of them when it holds fewer).
    pub(crate) fn prefix(&self, len: usize) -> KvCache {
        let len = len.min(self.len);
        let n = len * self.kv_dim;
        KvCache {
            k: self.k.iter().map(|b| b[..n].to_vec()).collect(),
            v: self.v.iter().map(|b| b[..n].to_vec()).collect(),
            len,
            kv_dim: self.kv_dim,
        }
    }

    /// Bytes of memory held by this cache.
    pub fn bytes(&self) -> usize {
        self.k.iter().chain(self.v.iter()).map(|b| b.capacity() * 4).sum()
    }
}

#[derive(Debug, Clone)]
struct Config {
    n_layer: usize,
    hidden: usize,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
    ffn: usize,
    rope_dim: usize,
    rope_theta: f32,
    rope_neox: bool,
    eps: f32,
    context_length: usize,
    /// `LlmOptions::llama_cpp_numerics`.
    llama_cpp: bool,
}

/// A weight matrix: our own batched kernels on the file's blocks (or on 8-bit blocks quantised at load for the
/// types they do not read), several such matrices of different types stacked along their output rows, or
/// candle's quantized matmul in the file's own format.
#[derive(Clone)]
enum Linear {
    Blocks(Arc<dyn WeightMatrix>),
    /// Matrices with the same input size whose outputs are concatenated (q, k and v stored in different types:
    /// each run of parts of one type is one matrix).
    Stack(Vec<Arc<dyn WeightMatrix>>),
    Candle(QMatMul),
}

impl Linear {
    /// `x @ w^T` for `rows` rows of `x`.
    fn forward(&self, x: Vec<f32>, rows: usize) -> Result<Vec<f32>, EngineError> {
        match self {
            Linear::Blocks(q) => Ok(q.matmul(&x, rows)),
            Linear::Stack(parts) => {
                let outs: Vec<Vec<f32>> = parts.iter().map(|p| p.matmul(&x, rows)).collect();
                let widths: Vec<usize> = parts.iter().map(|p| p.rows()).collect();
                let mut y = Vec::with_capacity(rows * widths.iter().sum::<usize>());
                for r in 0..rows {
                    for (out, &w) in outs.iter().zip(&widths) {
                        y.extend_from_slice(&out[r * w..(r + 1) * w]);
                    }
                }
                Ok(y)
            }
            Linear::Candle(w) => {
                let k = x.len() / rows.max(1);
                let t = Tensor::from_vec(x, (rows, k), &Device::Cpu)?;
                Ok(w.forward(&t)?.flatten_all()?.to_vec1::<f32>()?)
            }
        }
    }

    fn rows(&self) -> Result<usize, EngineError> {
        match self {
            Linear::Blocks(q) => Ok(q.rows()),
            Linear::Stack(parts) => Ok(parts.iter().map(|p| p.rows()).sum()),
            Linear::Candle(QMatMul::QTensor(t)) => Ok(t.shape().dims2()?.0),
            Linear::Candle(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => Ok(t.dims2()?.0),
        }
    }

    /// Rows `ids` of the matrix (embedding lookup).
    fn embedding(&self, ids: Vec<u32>) -> Result<Vec<f32>, EngineError> {
        match self {
            Linear::Blocks(q) => {
                let mut out = Vec::new();
                for id in ids {
                    q.row(id as usize, &mut out);
                }
                Ok(out)
            }
            Linear::Stack(_) => Err(EngineError::InvalidRequest("an embedding table is one matrix".into())),
            Linear::Candle(w) => {
                let n = ids.len();
                let ids = Tensor::from_vec(ids, n, &Device::Cpu)?;
                Ok(w.embedding(&ids)?.flatten_all()?.to_vec1::<f32>()?)
            }
        }
    }
}

struct Layer {
    attn_norm: Vec<f32>,
    /// q, k and v projections stacked into one matrix.
    wqkv: Linear,
    bqkv: Option<Vec<f32>>,
    wo: Linear,
    ffn_norm: Vec<f32>,
    /// gate and up projections stacked into one matrix.
    w_gate_up: Linear,
    w_down: Linear,
}

struct Head {
    norm: Vec<f32>,
    output: Linear,
}

/// A loaded llama-family model (or a layer range of it) with its tokenizer and chat template.
pub struct Llm {
    info: ModelInfo,
    cfg: Config,
    range: Range<usize>,
    layers: Vec<Layer>,
    embed: Option<Linear>,
    head: Option<Head>,
    pub(crate) tokenizer: GgufTokenizer,
    template: Option<minijinja::Environment<'static>>,
    /// Whether the chat template reads `tools` itself.
    template_knows_tools: bool,
    bos_token: String,
    eos_token: String,
}

struct Loader<'a> {
    content: &'a gguf_file::Content,
    reader: BufReader<File>,
    path: &'a Path,
    requantize: bool,
    /// `LlmOptions::llama_cpp_numerics`.
    llama_cpp: bool,
}

impl Loader<'_> {
    fn tensor(&mut self, name: &str) -> Result<QTensor, EngineError> {
        if !self.content.tensor_infos.contains_key(name) {
            return Err(EngineError::model(self.path, format!("GGUF has no tensor {name}")));
        }
        self.content
            .tensor(&mut self.reader, name, &Device::Cpu)
            .map_err(|e| EngineError::model(self.path, format!("reading tensor {name}: {e}")))
    }

    fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    fn vector(&mut self, name: &str) -> Result<Vec<f32>, EngineError> {
        let t = self.tensor(name)?;
        Ok(t.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?)
    }

    /// A weight matrix (its blocks as stored where the kernels read its type).
    fn matrix(&mut self, name: &str) -> Result<Linear, EngineError> {
        self.stacked(&[name])
    }

    /// Several weight matrices with the same input size stacked along their output rows.
    fn stacked(&mut self, names: &[&str]) -> Result<Linear, EngineError> {
        let mut parts = Vec::with_capacity(names.len());
        for name in names {
            parts.push(self.tensor(name)?);
        }
        let dtype = parts[0].dtype();
        let same_dtype = parts.iter().all(|p| p.dtype() == dtype);
        let k = parts[0].shape().dims2()?.1;
        let mut rows = 0;
        for p in &parts {
            let (n, pk) = p.shape().dims2()?;
            if pk != k {
                return Err(EngineError::model(self.path, format!("tensors {names:?} have different input sizes")));
            }
            rows += n;
        }
        let input = if self.llama_cpp { InputQuant::LlamaCpp } else { InputQuant::Engine };
        if self.requantize && parts.iter().all(|p| reads_as_stored(p.dtype())) {
            // The file's blocks as they are: fewer bytes to read per token than 8-bit ones, and the
            // values the file holds. Parts of one type are one matrix; parts of different types a stack.
            let unreadable = || EngineError::model(self.path, format!("cannot read the blocks of {names:?}"));
            if same_dtype {
                let mut bytes = Vec::new();
                for p in &parts {
                    bytes.extend_from_slice(&p.data()?);
                }
                return Ok(Linear::Blocks(as_stored(dtype, &bytes, rows, k, input).ok_or_else(unreadable)?));
            }
            let mut stack = Vec::with_capacity(parts.len());
            for run in parts.chunk_by(|a, b| a.dtype() == b.dtype()) {
                let (mut bytes, mut n) = (Vec::new(), 0);
                for p in run {
                    bytes.extend_from_slice(&p.data()?);
                    n += p.shape().dims2()?.0;
                }
                stack.push(as_stored(run[0].dtype(), &bytes, n, k, input).ok_or_else(unreadable)?);
            }
            return Ok(Linear::Stack(stack));
        }
        if (self.requantize || !same_dtype) && k.is_multiple_of(crate::matmul::BLOCK) {
            let mut dense = Vec::with_capacity(rows * k);
            for p in &parts {
                dense.extend(p.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?);
            }
            let q = q8_from_f32(&dense, rows, k)
                .ok_or_else(|| EngineError::model(self.path, format!("cannot quantise {names:?}")))?;
            return Ok(Linear::Blocks(Arc::new(q.with_input(input))));
        }
        if parts.len() == 1 {
            return qmatmul(Arc::new(parts.remove(0)));
        }
        if !same_dtype {
            return Err(EngineError::model(self.path, format!("tensors {names:?} have different types")));
        }
        let mut bytes = Vec::new();
        for p in &parts {
            bytes.extend_from_slice(&p.data()?);
        }
        let storage = QStorage::from_data(Cow::Owned(bytes), &Device::Cpu, dtype)?;
        qmatmul(Arc::new(QTensor::new(storage, (rows, k))?))
    }
}

/// Whether the engine's kernels read this GGML type's blocks as stored.
fn reads_as_stored(dtype: GgmlDType) -> bool {
    use GgmlDType::*;
    matches!(dtype, Q4_0 | Q4_1 | Q5_0 | Q8_0 | Q4K | Q6K)
}

/// A `[n, k]` matrix of stored GGML blocks on the engine's kernels (`None`: not such a type, or sizes that do
/// not fit its blocks).
fn as_stored(dtype: GgmlDType, bytes: &[u8], n: usize, k: usize, input: InputQuant) -> Option<Arc<dyn WeightMatrix>> {
    fn shared<B: WeightBlock + 'static>(m: Option<BlockMatrix<B>>, input: InputQuant) -> Option<Arc<dyn WeightMatrix>> {
        m.map(|m| Arc::new(m.with_input(input)) as Arc<dyn WeightMatrix>)
    }
    match dtype {
        GgmlDType::Q4_0 => shared(q4_from_q4_0(bytes, n, k), input),
        GgmlDType::Q4_1 => shared(q4_from_q4_1(bytes, n, k), input),
        GgmlDType::Q5_0 => shared(q5_from_q5_0(bytes, n, k), input),
        GgmlDType::Q8_0 => shared(q8_from_q8_0(bytes, n, k), input),
        GgmlDType::Q4K => shared(q4k_from_q4_k(bytes, n, k), input),
        GgmlDType::Q6K => shared(q6k_from_q6_k(bytes, n, k), input),
        _ => None,
    }
}

fn qmatmul(t: Arc<QTensor>) -> Result<Linear, EngineError> {
    Ok(Linear::Candle(QMatMul::from_arc(t)?))
}

impl Llm {
    /// Load a GGUF model (or the layer range in `opts`).
    pub fn load(gguf: &Path, opts: &LlmOptions) -> Result<Llm, EngineError> {
        let started = std::time::Instant::now();
        let (info, content) = inspect_gguf(gguf)?;
        let arch = info.architecture.clone();
        let md = |key: &str| content.metadata.get(&format!("{arch}.{key}"));
        let md_usize = |key: &str| -> Result<usize, EngineError> {
            md(key)
                .and_then(|v| v.to_u32().ok().map(|x| x as usize).or_else(|| v.to_u64().ok().map(|x| x as usize)))
                .ok_or_else(|| EngineError::model(gguf, format!("GGUF metadata has no {arch}.{key}")))
        };
        let hidden = md_usize("embedding_length")?;
        let n_head = md_usize("attention.head_count")?;
        let n_kv_head = md_usize("attention.head_count_kv").unwrap_or(n_head);
        let head_dim = hidden / n_head.max(1);
        let cfg = Config {
            n_layer: md_usize("block_count")?,
            hidden,
            n_head,
            n_kv_head,
            head_dim,
            ffn: md_usize("feed_forward_length")?,
            rope_dim: md_usize("rope.dimension_count").unwrap_or(head_dim),
            rope_theta: md("rope.freq_base").and_then(|v| v.to_f32().ok()).unwrap_or(10_000.0),
            rope_neox: arch == "qwen2",
            eps: md("attention.layer_norm_rms_epsilon").and_then(|v| v.to_f32().ok()).unwrap_or(1e-5),
            context_length: md_usize("context_length")?,
            llama_cpp: opts.llama_cpp_numerics,
        };
        if n_head == 0 || n_kv_head == 0 || n_head % n_kv_head != 0 || hidden % n_head != 0 {
            return Err(EngineError::model(gguf, format!("bad head counts {n_head}/{n_kv_head} for hidden {hidden}")));
        }
        if head_dim > MAX_HEAD_DIM {
            return Err(EngineError::model(
                gguf,
                format!("attention heads of {head_dim} values (at most {MAX_HEAD_DIM})"),
            ));
        }
        let range = opts.layers.clone().unwrap_or(0..cfg.n_layer);
        if range.start >= range.end || range.end > cfg.n_layer {
            return Err(EngineError::InvalidRequest(format!(
                "layer range {range:?} is not a non-empty range within the model's {} layers",
                cfg.n_layer
            )));
        }
        let tokenizer = GgufTokenizer::from_gguf(&content, gguf)?;
        let file = File::open(gguf).map_err(|e| EngineError::model(gguf, format!("cannot open: {e}")))?;
        let mut loader = Loader {
            content: &content,
            reader: BufReader::new(file),
            path: gguf,
            requantize: opts.requantize,
            llama_cpp: opts.llama_cpp_numerics,
        };

        let mut layers = Vec::with_capacity(range.len());
        for i in range.clone() {
            let p = |s: &str| format!("blk.{i}.{s}");
            let bqkv = if loader.has(&p("attn_q.bias")) {
                let mut b = loader.vector(&p("attn_q.bias"))?;
                b.extend(loader.vector(&p("attn_k.bias"))?);
                b.extend(loader.vector(&p("attn_v.bias"))?);
                Some(b)
            } else {
                None
            };
            layers.push(Layer {
                attn_norm: loader.vector(&p("attn_norm.weight"))?,
                wqkv: loader.stacked(&[&p("attn_q.weight"), &p("attn_k.weight"), &p("attn_v.weight")])?,
                bqkv,
                wo: loader.matrix(&p("attn_output.weight"))?,
                ffn_norm: loader.vector(&p("ffn_norm.weight"))?,
                w_gate_up: loader.stacked(&[&p("ffn_gate.weight"), &p("ffn_up.weight")])?,
                w_down: loader.matrix(&p("ffn_down.weight"))?,
            });
        }
        let first = range.start == 0;
        let last = range.end == cfg.n_layer;
        let tied = !loader.has("output.weight");
        let embed_q = if first || (last && tied) { Some(loader.matrix("token_embd.weight")?) } else { None };
        let head = if last {
            let output = if tied {
                embed_q.clone().ok_or_else(|| EngineError::model(gguf, "no token_embd.weight"))?
            } else {
                loader.matrix("output.weight")?
            };
            Some(Head { norm: loader.vector("output_norm.weight")?, output })
        } else {
            None
        };
        let embed = if first { embed_q } else { None };

        let template_src = md_str(&content, "tokenizer.chat_template");
        let template_knows_tools = template_src.is_some_and(|s| crate::chat::template_knows_tools(s));
        let template = match template_src {
            Some(src) => Some(build_template(src.clone())?),
            None => None,
        };
        let token_text = |id: Option<u32>| id.and_then(|i| tokenizer.token_string(i)).unwrap_or_default();
        let bos_token = token_text(tokenizer.bos);
        let eos_token = token_text(tokenizer.eos.first().copied());
        tracing::info!(
            model = %gguf.display(),
            layers = ?range,
            requantize = opts.requantize,
            ms = started.elapsed().as_millis() as u64,
            "loaded GGUF model"
        );
        Ok(Llm {
            info,
            cfg,
            range,
            layers,
            embed,
            head,
            tokenizer,
            template,
            template_knows_tools,
            bos_token,
            eos_token,
        })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The layers this value holds.
    pub fn layer_range(&self) -> Range<usize> {
        self.range.clone()
    }

    /// Whether this stage embeds tokens (holds layer 0).
    pub fn is_first_stage(&self) -> bool {
        self.embed.is_some()
    }

    /// Whether this stage produces logits (holds the last layer).
    pub fn is_last_stage(&self) -> bool {
        self.head.is_some()
    }

    pub fn hidden_size(&self) -> usize {
        self.cfg.hidden
    }

    pub fn context_length(&self) -> usize {
        self.cfg.context_length
    }

    pub fn vocab_size(&self) -> usize {
        self.tokenizer.vocab_size()
    }

    pub fn eos_tokens(&self) -> &[u32] {
        &self.tokenizer.eos
    }

    /// Render the chat template with `add_generation_prompt = true`.
    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String, EngineError> {
        self.render_chat_with_tools(messages, &[])
    }

    /// Render the chat template with `add_generation_prompt = true`, offering `tools` (OpenAI's
    /// `tools` entries). See [`crate::chat`] for templates that do not know tools.
    pub fn render_chat_with_tools(
        &self,
        messages: &[ChatMessage],
        tools: &[serde_json::Value],
    ) -> Result<String, EngineError> {
        let env = self.template.as_ref().ok_or_else(|| {
            EngineError::Template(format!("model {} has no chat template", self.info.files.join(",")))
        })?;
        let tmpl = env.get_template("chat").map_err(|e| EngineError::Template(e.to_string()))?;
        let uses_tools = !tools.is_empty() || messages.iter().any(|m| !m.tool_calls.is_empty() || m.role == "tool");
        let (messages, tools) = if !uses_tools || self.template_knows_tools {
            (crate::chat::template_messages(messages), tools.to_vec())
        } else {
            let plain = crate::chat::messages_without_tool_support(messages, tools);
            (crate::chat::template_messages(&plain), Vec::new())
        };
        let tools = if tools.is_empty() {
            minijinja::Value::from(())
        } else {
            crate::chat::template_value(&serde_json::Value::Array(tools))
        };
        tmpl.render(minijinja::context! {
            messages => crate::chat::template_value(&serde_json::Value::Array(messages)),
            tools => tools,
            add_generation_prompt => true,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        })
        .map_err(|e| EngineError::Template(e.to_string()))
    }

    /// Tokenise text; special tokens written in the text (e.g. `<|im_start|>`) map to their ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        let mut ids = Vec::new();
        if self.tokenizer.add_bos {
            if let Some(bos) = self.tokenizer.bos {
                ids.push(bos);
            }
        }
        ids.extend(self.tokenizer.encode(text)?);
        Ok(ids)
    }

    /// Detokenise (control tokens are left out).
    pub fn decode(&self, ids: &[u32]) -> Result<String, EngineError> {
        self.tokenizer.decode(ids)
    }

    /// The raw bytes a token stands for (empty for control tokens).
    /// Every token's bytes, by id (for samplers that constrain the output).
    pub(crate) fn token_table(&self) -> Arc<Vec<Vec<u8>>> {
        self.tokenizer.table()
    }

    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.tokenizer.bytes(id)
    }

    /// An empty KV cache for this stage's layers.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers.len(), self.cfg.n_kv_head * self.cfg.head_dim, 64)
    }

    /// Run this stage's layers over new rows of several sequences, each with its own cache (caches and the
    /// sequences of `input` correspond by index). The first stage takes tokens, the others hidden states; the
    /// last stage returns the logits of each sequence's last new token, the others hidden states.
    pub fn forward_stage(&self, caches: &mut [&mut KvCache], input: StageInput) -> Result<StageOutput, EngineError> {
        // Run the whole pass on a pool thread: its many parallel matmuls then fork from inside the pool (cheap
        // work stealing) instead of each waking the pool from outside and putting this thread to sleep.
        rayon::scope(|_| self.forward_in_pool(caches, input))
    }

    fn forward_in_pool(&self, caches: &mut [&mut KvCache], input: StageInput) -> Result<StageOutput, EngineError> {
        let cfg = &self.cfg;
        let (mut x, counts) = match input {
            StageInput::Tokens(seqs) => {
                let embed = self.embed.as_ref().ok_or_else(|| {
                    EngineError::InvalidRequest(format!(
                        "stage with layers {:?} takes hidden states, not tokens",
                        self.range
                    ))
                })?;
                let counts: Vec<usize> = seqs.iter().map(Vec::len).collect();
                let ids: Vec<u32> = seqs.into_iter().flatten().collect();
                let vocab = embed.rows()?;
                if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
                    return Err(EngineError::InvalidRequest(format!("token id {bad} is outside the vocabulary")));
                }
                (embed.embedding(ids)?, counts)
            }
            StageInput::Hidden(h) => {
                if self.embed.is_some() {
                    return Err(EngineError::InvalidRequest("the first stage takes tokens, not hidden states".into()));
                }
                let rows: usize = h.counts.iter().sum();
                if h.hidden != cfg.hidden || h.data.len() != rows * cfg.hidden {
                    return Err(EngineError::InvalidRequest(format!(
                        "hidden states have {} values for {rows} rows of {} (model hidden size {})",
                        h.data.len(),
                        h.hidden,
                        cfg.hidden
                    )));
                }
                (h.data, h.counts)
            }
        };
        if caches.len() != counts.len() {
            return Err(EngineError::InvalidRequest(format!("{} caches for {} sequences", caches.len(), counts.len())));
        }
        for (cache, &c) in caches.iter().zip(counts.iter()) {
            if c == 0 {
                return Err(EngineError::InvalidRequest("a sequence has no new tokens".into()));
            }
            if cache.k.len() != self.layers.len() {
                return Err(EngineError::InvalidRequest("KV cache belongs to a different stage".into()));
            }
            if cache.len + c > cfg.context_length {
                return Err(EngineError::InvalidRequest(format!(
                    "{} tokens exceed the context length {}",
                    cache.len + c,
                    cfg.context_length
                )));
            }
        }
        let n: usize = counts.iter().sum();
        // Row -> (sequence, position).
        let mut row_seq = Vec::with_capacity(n);
        let mut row_pos = Vec::with_capacity(n);
        for (s, (&c, cache)) in counts.iter().zip(caches.iter()).enumerate() {
            for i in 0..c {
                row_seq.push(s);
                row_pos.push(cache.len + i);
            }
        }
        let rope = RopeTable::new(cfg, &row_pos);
        let (nh, nkv, hd) = (cfg.n_head, cfg.n_kv_head, cfg.head_dim);
        let q_dim = nh * hd;
        let kv_dim = nkv * hd;
        let qkv_dim = q_dim + 2 * kv_dim;

        for (li, layer) in self.layers.iter().enumerate() {
            let h = rms_norm(&x, &layer.attn_norm, cfg);
            let mut qkv = layer.wqkv.forward(h, n)?;
            if let Some(b) = &layer.bqkv {
                for row in qkv.chunks_exact_mut(qkv_dim) {
                    for (v, b) in row.iter_mut().zip(b) {
                        *v += b;
                    }
                }
            }
            for (r, row) in qkv.chunks_exact_mut(qkv_dim).enumerate() {
                let (q, rest) = row.split_at_mut(q_dim);
                let k = &mut rest[..kv_dim];
                for head in q.chunks_exact_mut(hd).chain(k.chunks_exact_mut(hd)) {
                    rope.apply(r, head);
                }
            }
            // Append the new keys and values to each sequence's cache (rounded to half precision, llama.cpp's
            // default cache type, with `llama_cpp_numerics`).
            for (r, row) in qkv.chunks_exact(qkv_dim).enumerate() {
                let cache = &mut caches[row_seq[r]];
                let (k, v) = (&row[q_dim..q_dim + kv_dim], &row[q_dim + kv_dim..]);
                if cfg.llama_cpp {
                    cache.k[li].extend(k.iter().map(|&v| to_half_precision(v)));
                    cache.v[li].extend(v.iter().map(|&v| to_half_precision(v)));
                } else {
                    cache.k[li].extend_from_slice(k);
                    cache.v[li].extend_from_slice(v);
                }
            }
            let kv: Vec<(&[f32], &[f32])> = caches.iter().map(|c| (c.k[li].as_slice(), c.v[li].as_slice())).collect();
            let heads = Heads { query: nh, kv: nkv, dim: hd, half_precision: cfg.llama_cpp };
            let attn = attention(heads, &qkv, &kv, &row_seq, &row_pos);
            let o = layer.wo.forward(attn, n)?;
            add_in_place(&mut x, &o);

            let h = rms_norm(&x, &layer.ffn_norm, cfg);
            let gu = layer.w_gate_up.forward(h, n)?;
            let ffn = cfg.ffn;
            let mut act = vec![0f32; n * ffn];
            crate::matmul::vectorized_wide(SwiGlu { gate_up: &gu, ffn, exact_exp: cfg.llama_cpp, out: &mut act });
            let d = layer.w_down.forward(act, n)?;
            add_in_place(&mut x, &d);
        }
        for (cache, &c) in caches.iter_mut().zip(counts.iter()) {
            cache.len += c;
        }

        match &self.head {
            None => Ok(StageOutput::Hidden(HiddenStates { data: x, counts, hidden: cfg.hidden })),
            Some(head) => {
                let hsz = cfg.hidden;
                let mut last_rows = Vec::with_capacity(counts.len() * hsz);
                let mut end = 0;
                for &c in &counts {
                    end += c;
                    last_rows.extend_from_slice(&x[(end - 1) * hsz..end * hsz]);
                }
                let h = rms_norm(&last_rows, &head.norm, cfg);
                let logits = head.output.forward(h, counts.len())?;
                let vocab = logits.len() / counts.len();
                Ok(StageOutput::Logits(logits.chunks_exact(vocab).map(<[f32]>::to_vec).collect()))
            }
        }
    }
}

fn build_template(src: String) -> Result<minijinja::Environment<'static>, EngineError> {
    let mut env = minijinja::Environment::new();
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> Result<String, minijinja::Error> {
        Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
    });
    env.add_function("strftime_now", |_fmt: String| -> String { String::new() });
    env.add_template_owned("chat", src).map_err(|e| EngineError::Template(e.to_string()))?;
    Ok(env)
}

fn add_in_place(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

fn rms_norm(x: &[f32], w: &[f32], cfg: &Config) -> Vec<f32> {
    let d = w.len();
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks_exact(d) {
        let mean = if cfg.llama_cpp {
            // The sum of squares in f64, as llama.cpp takes it.
            (row.iter().map(|&v| (v * v) as f64).sum::<f64>() / d as f64) as f32
        } else {
            dot(row, row) / d as f32
        };
        let scale = 1.0 / (mean + cfg.eps).sqrt();
        out.extend(row.iter().zip(w).map(|(&v, &w)| v * scale * w));
    }
    out
}

/// Dot product written so that it vectorises (8 independent accumulators).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Cos/sin of each row's position for the rotary embedding.
struct RopeTable {
    half: usize,
    neox: bool,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    fn new(cfg: &Config, positions: &[usize]) -> Self {
        let half = cfg.rope_dim / 2;
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        if cfg.llama_cpp {
            // As llama.cpp computes the angles: in f32, each frequency the previous one times a constant.
            let step = cfg.rope_theta.powf(-2.0 / cfg.rope_dim as f32);
            for &p in positions {
                let mut angle = p as f32;
                for _ in 0..half {
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                    angle *= step;
                }
            }
        } else {
            let inv: Vec<f64> =
                (0..half).map(|i| 1.0 / (cfg.rope_theta as f64).powf(2.0 * i as f64 / cfg.rope_dim as f64)).collect();
            for &p in positions {
                for f in &inv {
                    let a = (p as f64 * f) as f32;
                    cos.push(a.cos());
                    sin.push(a.sin());
                }
            }
        }
        RopeTable { half, neox: cfg.rope_neox, cos, sin }
    }

    fn apply(&self, row: usize, head: &mut [f32]) {
        let cos = &self.cos[row * self.half..(row + 1) * self.half];
        let sin = &self.sin[row * self.half..(row + 1) * self.half];
        if self.neox {
            let (a, b) = head.split_at_mut(self.half);
            for i in 0..self.half {
                let (x0, x1) = (a[i], b[i]);
                a[i] = x0 * cos[i] - x1 * sin[i];
                b[i] = x0 * sin[i] + x1 * cos[i];
            }
        } else {
            for (i, pair) in head[..2 * self.half].chunks_exact_mut(2).enumerate() {
                let (x0, x1) = (pair[0], pair[1]);
                pair[0] = x0 * cos[i] - x1 * sin[i];
                pair[1] = x0 * sin[i] + x1 * cos[i];
            }
        }
    }
}

/// `silu(gate) * up` for rows of `[gate | up]`, as an operation for `vectorized_wide`: `exp` from
/// `fastmath` (vectorised), or the standard library's with `exact_exp` (`llama_cpp_numerics`).
struct SwiGlu<'a> {
    gate_up: &'a [f32],
    ffn: usize,
    exact_exp: bool,
    out: &'a mut [f32],
}

impl pulp::NullaryFnOnce for SwiGlu<'_> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        let SwiGlu { gate_up, ffn, exact_exp, out } = self;
        for (row, o) in gate_up.chunks_exact(2 * ffn).zip(out.chunks_exact_mut(ffn)) {
            let (g, u) = row.split_at(ffn);
            if exact_exp {
                for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                    *o = g / (1.0 + (-g).exp()) * u;
                }
            } else {
                for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                    *o = g / (1.0 + crate::fastmath::exp(-g)) * u;
                }
            }
        }
    }
}
