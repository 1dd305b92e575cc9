use thiserror::Error;

/// Everything that can go wrong in the gateway.
#[derive(Debug, Error)]
pub enum GatewayError {
    /// No coordinator answered: writes wait for the control plane to come back.
    #[error("control plane unavailable: {0}")]
    ControlPlaneUnavailable(String),
    #[error("timed out waiting for the write to commit; its outcome is unknown")]
    WriteTimeout,
    #[error("the control plane refused the write: {0}")]
    Refused(String),
    #[error("protocol: {0}")]
    Protocol(#[from] shoal_protocol::ProtocolError),
    #[error("io {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{0}")]
    Model(String),
    #[error("identity {path}: {why}")]
    Identity { path: String, why: String },
    #[error("join refused: {0}")]
    JoinRefused(String),
    #[error("the coordinator presented CA {presented}, not the expected {expected}")]
    CaMismatch { expected: String, presented: String },
    #[error("{0}")]
    Coordinator(#[from] shoal_coordinator::CoordinatorError),
    /// An MCP server could not be reached or used (the message holds none of its secrets).
    #[error("MCP server '{server}': {message}")]
    Mcp { server: String, message: String },
}

impl GatewayError {
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        GatewayError::Io { path: path.as_ref().display().to_string(), source }
    }
}
