//! The cluster view that coordinators stream to gateways: the applied state once, then every
//! applied entry as the change it makes ([`ViewChange`]), plus soft state every so often
//! ([`SoftView`]). A gateway applies the changes with [`apply_change`], the same pure state
//! machine the coordinators run, so its replica equals theirs at the same index.
//!
//! Pure: encoding and applying only. The stream itself is served by [`crate::watch`].

use rkyv::{Archive, Deserialize as RkyvDeserialize, Serialize as RkyvSerialize};
use shoal_protocol::Load;

use crate::state::{apply, ClusterState, Command, CoordinatorRecord};

/// What one applied log entry does to the state.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Debug, Clone, PartialEq, Eq)]
pub enum ViewChange {
    /// A command, applied with [`crate::state::apply`].
    Command(Command),
    /// A membership change: the coordinator records after it.
    Coordinators(Vec<CoordinatorRecord>),
    /// An entry that changes nothing (a new leader's empty entry), so that a replica's index
    /// follows every applied entry.
    Nothing,
}

/// Applies one change to a gateway's replica.
pub fn apply_change(state: &mut ClusterState, change: &ViewChange) {
    match change {
        ViewChange::Command(cmd) => {
            apply(state, cmd);
        }
        ViewChange::Coordinators(members) => {
            state.coordinators = members.iter().map(|m| (m.id, m.clone())).collect();
        }
        ViewChange::Nothing => {}
    }
}

/// A node's liveness as the leader sees it.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Debug, Clone, PartialEq, Eq)]
pub struct LeaseView {
    pub node: String,
    pub generation: u64,
    /// Wall-clock time of the last heartbeat (0: none yet).
    pub last_heartbeat_unix_ms: u64,
    pub load: Load,
}

/// Soft state a watched coordinator sends every [`SOFT_EVERY`]: its raft status, where the
/// coordinators are, and (on the leader, which receives heartbeats) nodes' load reports.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct SoftView {
    /// The coordinator that sent this.
    pub coordinator_id: u64,
    /// 0 when no leader is known.
    pub leader_id: u64,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    pub role: String,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    pub first_index: u64,
    pub last_index: u64,
    /// Every coordinator's id, QUIC address and HTTP address (empty when unknown).
    pub coordinators: Vec<(u64, String, String)>,
    /// Outstanding work per placement, as nodes report it.
    pub loads: Vec<(String, u32)>,
    pub leases: Vec<LeaseView>,
}

/// How often a watched coordinator sends [`SoftView`].
pub const SOFT_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// The largest piece of state or batch of changes in one frame (under the frame limit).
pub const PIECE_BYTES: usize = 4 << 20;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::synthetic_state;

    #[test]
    fn a_replica_fed_the_changes_equals_the_state_that_made_them() {
        // The coordinators' state after some commands, and a gateway's replica that starts
        // from an earlier copy and applies the same changes.
        let mut coordinator = synthetic_state(5, 20);
        let mut replica = coordinator.clone();
        let changes = vec![
            ViewChange::Command(Command::DeleteDeployment { name: "nothing".into() }),
            ViewChange::Nothing,
            ViewChange::Coordinators(vec![CoordinatorRecord {
                id: 2,
                quic: "127.0.0.1:7101".into(),
                http: "127.0.0.1:8081".into(),
            }]),
        ];
        for c in &changes {
            match c {
                ViewChange::Command(cmd) => {
                    apply(&mut coordinator, cmd);
                }
                ViewChange::Coordinators(m) => {
                    coordinator.coordinators = m.iter().map(|r| (r.id, r.clone())).collect();
                }
                ViewChange::Nothing => {}
            }
        }
        for c in &changes {
            let bytes = shoal_protocol::frame::to_payload(c).expect("encode");
            let back: ViewChange = shoal_protocol::frame::decode(&bytes).expect("decode");
            apply_change(&mut replica, &back);
        }
        assert_eq!(replica, coordinator);
        assert_eq!(replica.coordinators.len(), 1);
    }
}
