use thiserror::Error;

/// Everything that can go wrong in a node.
#[derive(Debug, Error)]
pub enum NodeError {
    #[error("bad --accelerator '{spec}': {why}")]
    AcceleratorSpec { spec: String, why: String },
    #[error("bad --label '{0}': expected key=value")]
    LabelSpec(String),
    #[error("coordinator address '{0}' is not host:port")]
    Address(String),
    #[error("{0}")]
    Protocol(#[from] shoal_protocol::ProtocolError),
    #[error("join refused: {0}")]
    JoinRefused(String),
    #[error("the coordinator's CA does not match --ca-hash {expected} (it presented {presented}); is this the right cluster?")]
    CaMismatch { expected: String, presented: String },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("identity in {path} is unreadable: {why}")]
    Identity { path: String, why: String },
    #[error("registration refused: {0}")]
    Refused(String),
    #[error("the coordinator redirected us to the leader at {0}")]
    Redirect(String),
    #[error("model: {0}")]
    Engine(#[from] shoal_engine::EngineError),
    #[error("{0}")]
    Artifact(String),
    #[error("actor: {0}")]
    Actor(String),
}

impl NodeError {
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        NodeError::Io { path: path.as_ref().display().to_string(), source }
    }
}
