//! The crate's single error type.

use std::path::Path;

/// Everything that can go wrong while parsing, chunking, indexing or searching.
///
/// [`RecallError::is_caller_error`] tells the errors caused by what the caller sent (a gateway answers
/// those with a 4xx) from the ones caused by this machine (5xx).
#[derive(Debug, thiserror::Error)]
pub enum RecallError {
    /// The upload's content type or file extension is not one this crate parses.
    #[error("unsupported document type {given:?}: supported are {supported}")]
    UnsupportedType {
        /// The content type or file name that was given.
        given: String,
        /// The supported types, for the message.
        supported: &'static str,
    },
    /// A text format (plain text, Markdown, HTML) whose bytes are not UTF-8.
    #[error("{format} is not valid UTF-8 (first bad byte at offset {offset})")]
    InvalidUtf8 {
        /// The format the bytes were read as.
        format: &'static str,
        /// Byte offset of the first invalid sequence.
        offset: usize,
    },
    /// The document parsed but holds no text.
    #[error("the document holds no text")]
    EmptyDocument,
    /// The document is malformed for its declared format (a corrupt PDF, say).
    #[error("malformed {format}: {message}")]
    Malformed {
        /// The declared format.
        format: &'static str,
        /// What was wrong.
        message: String,
    },
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// A vector whose length is not the index's dimension.
    #[error("vector dimension {got} does not match the index dimension {expected}")]
    DimensionMismatch {
        /// The index's dimension.
        expected: usize,
        /// The vector's length.
        got: usize,
    },
    /// A vector that cannot be indexed (zero, NaN or infinite components).
    #[error("invalid vector: {0}")]
    InvalidVector(String),
    /// A search or upsert request that cannot be served as asked.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A persisted file is not what this crate wrote (wrong magic, version, length or checksum).
    #[error("{path}: corrupt index file: {message}")]
    Corrupt {
        /// The file.
        path: String,
        /// What was wrong.
        message: String,
    },
    /// The chunk store (sled) failed.
    #[error("chunk store: {0}")]
    Store(String),
    /// The BM25 index (tantivy) failed.
    #[error("sparse index: {0}")]
    Sparse(String),
    /// The PostgreSQL backend ([`crate::PgIndex`]) failed: the server cannot be reached, or a statement failed.
    #[error("postgres: {0}")]
    Postgres(String),
    /// An I/O error.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl RecallError {
    /// Whether the caller's input caused this error (a 4xx at a gateway) rather than this machine.
    pub fn is_caller_error(&self) -> bool {
        matches!(
            self,
            RecallError::UnsupportedType { .. }
                | RecallError::InvalidUtf8 { .. }
                | RecallError::EmptyDocument
                | RecallError::Malformed { .. }
                | RecallError::InvalidConfig(_)
                | RecallError::DimensionMismatch { .. }
                | RecallError::InvalidVector(_)
                | RecallError::InvalidRequest(_)
        )
    }

    /// A short, fixed reason for metric labels (never the error text).
    pub fn reason(&self) -> &'static str {
        match self {
            RecallError::UnsupportedType { .. } => "unsupported_type",
            RecallError::InvalidUtf8 { .. } => "invalid_utf8",
            RecallError::EmptyDocument => "empty_document",
            RecallError::Malformed { .. } => "malformed",
            RecallError::InvalidConfig(_) => "invalid_config",
            RecallError::DimensionMismatch { .. } => "dimension_mismatch",
            RecallError::InvalidVector(_) => "invalid_vector",
            RecallError::InvalidRequest(_) => "invalid_request",
            RecallError::Corrupt { .. } => "corrupt",
            RecallError::Store(_) => "store",
            RecallError::Sparse(_) => "sparse",
            RecallError::Postgres(_) => "postgres",
            RecallError::Io(_) => "io",
        }
    }

    /// A corrupt file at `path`.
    pub(crate) fn corrupt(path: &Path, message: impl Into<String>) -> Self {
        RecallError::Corrupt { path: path.display().to_string(), message: message.into() }
    }

    /// A malformed document of `format`.
    pub(crate) fn malformed(format: &'static str, message: impl Into<String>) -> Self {
        RecallError::Malformed { format, message: message.into() }
    }
}

impl From<sled::Error> for RecallError {
    fn from(e: sled::Error) -> Self {
        RecallError::Store(e.to_string())
    }
}

impl From<tantivy::TantivyError> for RecallError {
    fn from(e: tantivy::TantivyError) -> Self {
        RecallError::Sparse(e.to_string())
    }
}

/// The crate's result type.
pub type Result<T, E = RecallError> = std::result::Result<T, E>;
