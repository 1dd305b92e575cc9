//! Shoal model engines: GGUF llama-family text generation (own forward with per-sequence KV caches, batched
//! decoding and layer-range stages) and BERT-family sentence embeddings.

mod amx;
mod attention;
mod chat;
pub mod constraint;
mod dense;
pub mod e5;
mod embed;
mod encoder;
mod error;
mod fastmath;
mod generate;
mod gguf_alignment;
mod guided;
mod half;
mod inspect;
mod llama;
mod matmul;
mod prefix_cache;
mod q4;
mod q4k;
mod q5;
mod q6k;
mod q8;
mod sampling;
mod sgemm;
mod source;
mod tokenizer;

pub use dense::encoder_path;
pub use embed::{Embedder, Embeddings, Purpose};
pub use error::EngineError;
pub use generate::{Batcher, Event, FinishReason, ForwardStep, StepRows};
pub use guided::ConstraintSpec;
pub use inspect::{
    inspect, inspect_gguf_bytes, safetensors_weight_bytes_of, Capability, ModelFormat, ModelInfo, RecommendedSampling,
};
pub use llama::{ChatMessage, ChatToolCall, HiddenStates, KvCache, Llm, LlmOptions, StageInput, StageOutput};
pub use matmul::kernel_path;
pub use sampling::{SamplingParams, SequenceSampler};
pub use source::{resolve_source, resolve_source_with_endpoint, HfUri};
pub use tokenizer::Utf8Stream;
