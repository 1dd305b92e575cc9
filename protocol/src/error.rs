use thiserror::Error;

/// Everything that can go wrong on the wire or with identities.
#[derive(Debug, Error)]
pub enum ProtocolError {
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    Oversized { len: usize, max: usize },
    #[error("stream ended in the middle of a frame")]
    Truncated,
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("peer speaks protocol version {theirs}, this process speaks {ours}")]
    VersionMismatch { ours: u32, theirs: u32 },
    #[error("peer refused: {0}")]
    Refused(String),
    #[error("unexpected message: expected {expected}")]
    Unexpected { expected: &'static str },
    #[error("stream closed by peer")]
    Closed,
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("stream error: {0}")]
    Stream(String),
    #[error("tls: {0}")]
    Tls(String),
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("invalid join token: {0}")]
    BadToken(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl ProtocolError {
    /// A short, fixed label for metrics (never error text in a label).
    pub fn reason(&self) -> &'static str {
        match self {
            ProtocolError::Oversized { .. } => "oversized",
            ProtocolError::Truncated => "truncated",
            ProtocolError::Malformed(_) => "malformed",
            ProtocolError::VersionMismatch { .. } => "version",
            ProtocolError::Refused(_) => "refused",
            ProtocolError::Unexpected { .. } => "unexpected",
            ProtocolError::Closed => "closed",
            ProtocolError::Connect(_) => "connect",
            ProtocolError::Stream(_) => "stream",
            ProtocolError::Tls(_) => "tls",
            ProtocolError::Certificate(_) => "certificate",
            ProtocolError::BadToken(_) => "token",
            ProtocolError::Io(_) => "io",
        }
    }

    /// The QUIC application error code a stream is closed with for this error.
    pub fn stream_code(&self) -> u32 {
        match self {
            ProtocolError::Oversized { .. } => crate::frame::codes::OVERSIZED,
            ProtocolError::Truncated => crate::frame::codes::TRUNCATED,
            ProtocolError::Malformed(_) => crate::frame::codes::MALFORMED,
            ProtocolError::VersionMismatch { .. } => crate::frame::codes::VERSION,
            _ => crate::frame::codes::PROTOCOL,
        }
    }
}
