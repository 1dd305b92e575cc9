use thiserror::Error;

/// Everything that can go wrong in the coordinator.
#[derive(Debug, Error)]
pub enum CoordinatorError {
    #[error("config {path}: {message}")]
    Config { path: String, message: String },
    #[error("storage: {0}")]
    Storage(#[from] sled::Error),
    #[error("corrupt storage: {0}; refusing to serve from it")]
    CorruptStorage(String),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("not the leader (leader is {leader:?})")]
    NotLeader { leader: Option<u64> },
    #[error("proposal queue is full")]
    Busy,
    #[error("timed out waiting for the proposal to commit; its outcome is unknown")]
    ProposalTimeout,
    #[error("leadership changed before the proposal committed; its outcome is unknown")]
    ProposalDropped,
    #[error("the raft driver has stopped")]
    Stopped,
    #[error("rejected: {0}")]
    Rejected(&'static str),
    #[error("pki {path}: {message}")]
    Pki { path: String, message: String },
    #[error("protocol: {0}")]
    Protocol(#[from] shoal_protocol::ProtocolError),
    #[error("io {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("the leader refused the forwarded write: {0}")]
    Forward(String),
    #[error("{0}")]
    Model(String),
    #[error("backup: {0}")]
    Backup(String),
    #[error("metrics: {0}")]
    Metrics(String),
}

impl CoordinatorError {
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        CoordinatorError::Io { path: path.as_ref().display().to_string(), source }
    }
}
