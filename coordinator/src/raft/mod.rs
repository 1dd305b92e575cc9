//! The raft plane: raft-rs's `RawNode` driven by its own task, sled as its storage, and
//! raft messages carried between coordinators in QUIC frames.

pub mod driver;
mod logger;
pub mod storage;
pub mod transport;

pub use driver::{RaftHandle, RaftStatus};
