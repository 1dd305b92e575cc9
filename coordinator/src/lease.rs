//! Node leases: soft state on the leader, never in the raft log.
//!
//! Pure: time is a monotonic millisecond count passed in. Only the decision that follows
//! from a lease running out (`NodeDead { id, generation }`) becomes a raft command.

use std::collections::HashMap;

use shoal_protocol::Load;

use crate::state::{ClusterState, NodeState};

/// How many leases a node gets from a new leader before its first heartbeat there.
pub const GRACE_LEASES: u64 = 3;

/// The leader's view of one node incarnation's liveness.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub generation: u64,
    pub expires_at_ms: u64,
    /// Wall-clock time of the last heartbeat, for display (0 = none yet).
    pub last_heartbeat_unix_ms: u64,
    pub load: Load,
}

/// Leases of all nodes, keyed by node id.
#[derive(Debug, Default)]
pub struct LeaseTable {
    leases: HashMap<String, Lease>,
}

impl LeaseTable {
    /// Records a heartbeat (or a registration) of `generation`.
    pub fn renew(&mut self, id: &str, generation: u64, now_ms: u64, lease_ms: u64, unix_ms: u64, load: Option<Load>) {
        let entry = self.leases.entry(id.to_string()).or_insert_with(|| Lease {
            generation,
            expires_at_ms: 0,
            last_heartbeat_unix_ms: 0,
            load: Load::default(),
        });
        entry.generation = generation;
        entry.expires_at_ms = now_ms + lease_ms;
        if let Some(load) = load {
            entry.last_heartbeat_unix_ms = unix_ms;
            entry.load = load;
        }
    }

    pub fn get(&self, id: &str) -> Option<&Lease> {
        self.leases.get(id)
    }

    /// Every lease, by node id.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Lease)> {
        self.leases.iter()
    }

    /// Forgets every lease (when this coordinator stops leading).
    pub fn clear(&mut self) {
        self.leases.clear();
    }

    /// Returns the `(id, generation)` of every ready node whose lease has run out. A ready
    /// node with no lease here (a new leader, or a restart) first gets [`GRACE_LEASES`]
    /// leases: its last heartbeat went to the old leader, and it needs time to notice the
    /// change and reconnect (slow on a loaded machine), so a leader change never kills
    /// healthy nodes and they stay routable through the election.
    pub fn sweep(&mut self, state: &ClusterState, now_ms: u64, lease_ms: u64) -> Vec<(String, u64)> {
        let mut expired = Vec::new();
        for node in state.nodes.values().filter(|n| n.state == NodeState::Ready) {
            match self.leases.get(&node.id) {
                Some(l) if l.generation == node.generation => {
                    if l.expires_at_ms <= now_ms {
                        expired.push((node.id.clone(), node.generation));
                    }
                }
                // No lease for this incarnation yet: grant a grace lease.
                _ => self.renew(&node.id, node.generation, now_ms, lease_ms * GRACE_LEASES, 0, None),
            }
        }
        self.leases.retain(|id, _| state.nodes.contains_key(id));
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{apply, Command};

    fn ready_state() -> ClusterState {
        let mut s = ClusterState::default();
        let token = crate::state::TokenRecord {
            id: "t".into(),
            secret_hash: "h".into(),
            created_at_ms: 0,
            expires_at_ms: 10,
            description: String::new(),
        };
        apply(&mut s, &Command::CreateToken(token));
        let admit = Command::AdmitNode {
            id: "a".into(),
            name: "a".into(),
            at_ms: 0,
            token_id: "t".into(),
            secret_hash: "h".into(),
        };
        apply(&mut s, &admit);
        apply(
            &mut s,
            &Command::NodeUp {
                id: "a".into(),
                name: "a".into(),
                address: String::new(),
                capacity: Default::default(),
                labels: vec![],
                metrics: String::new(),
                incarnation: 1,
                mcp_stdio: false,
                at_ms: 0,
            },
        );
        s
    }

    #[test]
    fn a_node_expires_only_after_its_lease() {
        let s = ready_state();
        let mut t = LeaseTable::default();
        t.renew("a", 1, 1_000, 500, 0, Some(Load::default()));
        assert!(t.sweep(&s, 1_499, 500).is_empty());
        assert_eq!(t.sweep(&s, 1_500, 500), vec![("a".to_string(), 1)]);
    }

    #[test]
    fn a_new_leader_grants_grace_before_expiring() {
        let s = ready_state();
        let mut t = LeaseTable::default();
        assert!(t.sweep(&s, 10_000, 500).is_empty(), "no lease yet: grace, not death");
        assert!(t.sweep(&s, 11_499, 500).is_empty(), "three leases of grace");
        assert_eq!(t.sweep(&s, 11_500, 500).len(), 1);
        // Once the node heartbeats, ordinary leases apply.
        t.renew("a", 1, 12_000, 500, 1, Some(Load::default()));
        assert!(t.sweep(&s, 12_499, 500).is_empty());
        assert_eq!(t.sweep(&s, 12_500, 500).len(), 1);
    }

    #[test]
    fn a_lease_of_an_old_generation_does_not_count() {
        let s = ready_state(); // generation 1
        let mut t = LeaseTable::default();
        t.renew("a", 0, 0, 500, 0, None);
        // the old-generation lease is replaced by a grace lease for generation 1
        assert!(t.sweep(&s, 1_000, 500).is_empty());
        assert_eq!(t.get("a").map(|l| l.generation), Some(1));
    }
}
