//! The raft plane: raft-rs's `RawNode` in a pure core ([`core`]), driven by its own thread
//! ([`driver`]), with a write-ahead log and checkpoint file as its storage ([`wal`],
//! [`wal_store`]; [`storage`] reads the sled format of older data folders) and raft messages
//! carried between coordinators in QUIC frames ([`transport`]).

pub mod core;
pub mod driver;
pub mod log_tail;
mod logger;
pub mod mem_store;
pub mod storage;
pub mod store;
pub mod transport;
pub mod wal;
pub mod wal_store;

pub use driver::{DriverConfig, RaftHandle, RaftStatus};

use crate::state::{Command, CoordinatorRecord};

/// Something the leader can be asked to commit.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Proposal {
    Command(Command),
    /// Adds a coordinator as a voter.
    AddMember(CoordinatorRecord),
    RemoveMember {
        id: u64,
    },
}

impl Proposal {
    pub fn kind(&self) -> &'static str {
        match self {
            Proposal::Command(c) => c.kind(),
            Proposal::AddMember(_) => "add_member",
            Proposal::RemoveMember { .. } => "remove_member",
        }
    }
}
