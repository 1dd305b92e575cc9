//! The crate's single error type.

use std::path::Path;

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A model's files are missing, corrupt, truncated, of an unknown format or an unsupported architecture.
    #[error("{path}: {message}")]
    Model { path: String, message: String },
    /// Tokenizer construction, encoding or decoding failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template could not be parsed or rendered.
    #[error("chat template: {0}")]
    Template(String),
    /// A request the engine cannot serve (empty prompt, too long for the context, batch full...).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A model source URI could not be resolved or downloaded.
    #[error("model source: {0}")]
    Source(String),
    /// An error from the tensor library.
    #[error("tensor: {0}")]
    Candle(#[from] candle_core::Error),
    /// An I/O error.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl EngineError {
    /// A problem with the model files at `path`.
    pub fn model(path: &Path, message: impl Into<String>) -> Self {
        EngineError::Model { path: path.display().to_string(), message: message.into() }
    }
}
