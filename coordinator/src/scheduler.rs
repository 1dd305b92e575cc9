//! The scheduler: a pure function from the replicated state to the commands that move
//! actual placements towards the desired deployments. The leader runs it in a loop
//! (reconciliation); it decides nothing else.

use std::collections::BTreeMap;

use shoal_protocol::ReplicaPhase;

use crate::state::{ClusterState, Command, ModelVersion, NodeRecord, NodeState, Placement};

/// Memory a replica needs besides its weights (KV caches, activations, runtime).
const REPLICA_OVERHEAD_BYTES: u64 = 256 << 20;

/// Bytes a replica of `version` is expected to hold.
pub fn replica_bytes(version: &ModelVersion) -> u64 {
    version.weight_bytes + version.weight_bytes / 4 + REPLICA_OVERHEAD_BYTES
}

/// The memory a node offers to models: its accelerators' free memory when it has any,
/// otherwise its RAM.
pub fn node_memory(node: &NodeRecord) -> u64 {
    if node.capacity.accelerators.is_empty() {
        node.capacity.memory_total_bytes
    } else {
        node.capacity.accelerators.iter().map(|a| a.memory_free_bytes).sum()
    }
}

/// Commands that bring placements closer to the deployments. Deterministic.
pub fn plan(state: &ClusterState, at_ms: u64) -> Vec<Command> {
    let mut out = Vec::new();
    // Free memory per ready node after the replicas already placed there.
    let mut free: BTreeMap<&str, u64> =
        state.nodes.values().filter(|n| n.state == NodeState::Ready).map(|n| (n.id.as_str(), node_memory(n))).collect();
    for p in state.placements.values() {
        let need = state.models.get(&p.model).and_then(|m| m.version(p.version)).map(replica_bytes).unwrap_or(0);
        if let Some(f) = free.get_mut(p.node.as_str()) {
            *f = f.saturating_sub(need);
        }
    }

    for d in state.deployments.values() {
        let Some(version) = state.deployed_version(&d.name) else { continue };
        let mine: Vec<&Placement> = state.placements_of(&d.name).collect();
        // Replicas of another version go (a version change replaces them).
        for p in mine.iter().filter(|p| p.version != d.version) {
            out.push(Command::Unplace { id: p.id.clone() });
        }
        let current: Vec<&Placement> = mine.iter().copied().filter(|p| p.version == d.version).collect();
        let mut healthy: Vec<&Placement> =
            current.iter().copied().filter(|p| p.phase != Some(ReplicaPhase::Failed)).collect();
        let want = d.replicas as usize;
        if healthy.len() >= want {
            // Failed replicas are kept (visible) only while they are needed to explain a shortfall.
            for p in current.iter().filter(|p| p.phase == Some(ReplicaPhase::Failed)) {
                out.push(Command::Unplace { id: p.id.clone() });
            }
            // Surplus: drop the least advanced replicas first, then the newest.
            healthy.sort_by_key(|p| (p.phase == Some(ReplicaPhase::Ready), std::cmp::Reverse(p.placed_at_ms)));
            for p in healthy.iter().take(healthy.len() - want) {
                out.push(Command::Unplace { id: p.id.clone() });
            }
            continue;
        }
        let need = replica_bytes(version);
        // One replica per node: nodes that already hold one (in any phase) are not candidates.
        let mut candidates: Vec<(&str, u64)> = free
            .iter()
            .filter(|(id, f)| **f >= need && !current.iter().any(|p| p.node == **id))
            .map(|(id, f)| (*id, *f))
            .collect();
        candidates.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        for (id, _) in candidates.into_iter().take(want - healthy.len()) {
            let node = &state.nodes[id];
            out.push(Command::Place {
                deployment: d.name.clone(),
                node: id.to_string(),
                node_generation: node.generation,
                at_ms,
            });
            if let Some(f) = free.get_mut(id) {
                *f = f.saturating_sub(need);
            }
        }
    }
    out
}

/// Why a deployment has fewer replicas than asked, for operators (empty when it has them all).
pub fn shortfall(state: &ClusterState, deployment: &str) -> String {
    let Some(d) = state.deployments.get(deployment) else { return String::new() };
    let Some(version) = state.deployed_version(deployment) else {
        return format!("model '{}' version {} is not registered", d.model, d.version);
    };
    let placed = state.placements_of(deployment).filter(|p| p.phase != Some(ReplicaPhase::Failed)).count();
    if placed >= d.replicas as usize {
        return String::new();
    }
    let ready = state.count_nodes(NodeState::Ready);
    let need = replica_bytes(version);
    let roomy = state.nodes.values().filter(|n| n.state == NodeState::Ready && node_memory(n) >= need).count();
    format!(
        "{placed} of {} replicas placed: {ready} ready nodes, {roomy} with the {} MiB a replica needs",
        d.replicas,
        need >> 20
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{apply, Deployment, ModelRecord, Outcome, WeightFormat};
    use shoal_protocol::{Accelerator, AcceleratorKind, Capacity};

    fn version(weight_bytes: u64) -> ModelVersion {
        ModelVersion {
            version: 1,
            source: "file:///m.gguf".into(),
            sha256: "ab".into(),
            size: weight_bytes,
            format: WeightFormat::Gguf,
            architecture: "llama".into(),
            capabilities: vec!["chat".into(), "completion".into()],
            context_length: 2048,
            layers: 30,
            hidden_size: 576,
            weight_bytes,
            files: vec![],
            stored_by: 1,
            registered_at_ms: 0,
        }
    }

    fn node(id: &str, mem_gib: u64) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            name: id.into(),
            address: "127.0.0.1:1".into(),
            capacity: Capacity { cpu_cores: 2, memory_total_bytes: mem_gib << 30, accelerators: vec![] },
            labels: vec![],
            state: NodeState::Ready,
            generation: 1,
            incarnation: 1,
            joined_at_ms: 0,
            state_changed_at_ms: 0,
        }
    }

    fn cluster(nodes: &[(&str, u64)], replicas: u32, weight_bytes: u64) -> ClusterState {
        let mut s = ClusterState::default();
        for (id, mem) in nodes {
            s.nodes.insert(id.to_string(), node(id, *mem));
        }
        s.models.insert("m".into(), ModelRecord { name: "m".into(), versions: vec![version(weight_bytes)] });
        s.deployments.insert(
            "d".into(),
            Deployment {
                name: "d".into(),
                model: "m".into(),
                version: 1,
                replicas,
                created_at_ms: 0,
                updated_at_ms: 0,
            },
        );
        s
    }

    /// Runs the scheduler to a fixed point, as the leader's loop does.
    fn converge(s: &mut ClusterState) {
        for _ in 0..10 {
            let cmds = plan(s, 5);
            if cmds.is_empty() {
                return;
            }
            for c in cmds {
                apply(s, &c);
            }
        }
        panic!("the scheduler did not converge");
    }

    fn nodes_of(s: &ClusterState) -> Vec<String> {
        let mut v: Vec<String> = s.placements_of("d").map(|p| p.node.clone()).collect();
        v.sort();
        v
    }

    #[test]
    fn places_replicas_on_the_nodes_with_most_free_memory_one_per_node() {
        let mut s = cluster(&[("a", 4), ("b", 16), ("c", 8)], 2, 1 << 30);
        converge(&mut s);
        assert_eq!(nodes_of(&s), vec!["b", "c"]);
    }

    #[test]
    fn a_node_without_the_memory_gets_nothing() {
        let mut s = cluster(&[("a", 1), ("b", 16)], 2, 2 << 30);
        converge(&mut s);
        assert_eq!(nodes_of(&s), vec!["b"]);
        assert!(shortfall(&s, "d").contains("1 of 2 replicas placed"), "{}", shortfall(&s, "d"));
    }

    #[test]
    fn declared_accelerator_memory_is_what_counts_when_present() {
        let mut s = cluster(&[("a", 64), ("b", 64)], 1, 2 << 30);
        s.nodes.get_mut("a").expect("a").capacity.accelerators.push(Accelerator {
            kind: AcceleratorKind::Npu,
            vendor: "x".into(),
            model: "y".into(),
            memory_total_bytes: 1 << 30,
            memory_free_bytes: 1 << 30,
            compute_capability: String::new(),
            discovered: false,
        });
        converge(&mut s);
        assert_eq!(nodes_of(&s), vec!["b"]);
    }

    #[test]
    fn a_dead_node_loses_its_replicas_and_they_move() {
        let mut s = cluster(&[("a", 8), ("b", 16), ("c", 4)], 2, 1 << 30);
        converge(&mut s);
        assert_eq!(nodes_of(&s), vec!["a", "b"]);
        assert_eq!(apply(&mut s, &Command::NodeDead { id: "b".into(), generation: 1, at_ms: 9 }), Outcome::Applied);
        assert_eq!(nodes_of(&s), vec!["a"]);
        converge(&mut s);
        assert_eq!(nodes_of(&s), vec!["a", "c"]);
    }

    #[test]
    fn failed_replicas_are_replaced_elsewhere_and_kept_visible_until_then() {
        let mut s = cluster(&[("a", 8), ("b", 4)], 1, 1 << 30);
        converge(&mut s);
        let id = s.placements_of("d").next().expect("placed").id.clone();
        let failed = Command::ReplicaStatus {
            id: id.clone(),
            node: "a".into(),
            node_generation: 1,
            phase: ReplicaPhase::Failed,
            message: "bad weights".into(),
            at_ms: 6,
        };
        assert_eq!(apply(&mut s, &failed), Outcome::Applied);
        let cmds = plan(&s, 7);
        assert!(matches!(&cmds[..], [Command::Place { node, .. }] if node == "b"), "{cmds:?}");
        for c in cmds {
            apply(&mut s, &c);
        }
        converge(&mut s);
        assert_eq!(nodes_of(&s), vec!["b"]);
    }

    #[test]
    fn scaling_down_removes_surplus_and_version_change_replaces() {
        let mut s = cluster(&[("a", 8), ("b", 8), ("c", 8)], 3, 1 << 30);
        converge(&mut s);
        assert_eq!(s.placements_of("d").count(), 3);
        s.deployments.get_mut("d").expect("d").replicas = 1;
        converge(&mut s);
        assert_eq!(s.placements_of("d").count(), 1);
        let mut v2 = version(1 << 30);
        v2.sha256 = "cd".into();
        apply(&mut s, &Command::RegisterModel { name: "m".into(), version: v2 });
        let deploy = Command::Deploy { name: "d".into(), model: "m".into(), version: 0, replicas: 1, at_ms: 8 };
        assert_eq!(apply(&mut s, &deploy), Outcome::ModelVersion { version: 2, existed: true });
        converge(&mut s);
        assert!(s.placements_of("d").all(|p| p.version == 2));
        assert_eq!(s.placements_of("d").count(), 1);
    }

    #[test]
    fn a_reconnect_of_the_same_process_keeps_its_replicas_and_a_restart_drops_them() {
        let mut s = cluster(&[("a", 8)], 1, 1 << 30);
        converge(&mut s);
        let id = s.placements_of("d").next().expect("placed").id.clone();
        let up = |incarnation| Command::NodeUp {
            id: "a".into(),
            name: "a".into(),
            address: "127.0.0.1:1".into(),
            capacity: s.nodes["a"].capacity.clone(),
            labels: vec![],
            incarnation,
            at_ms: 9,
        };
        let (same, other) = (up(1), up(2));
        assert_eq!(apply(&mut s, &same), Outcome::NodeUp { generation: 2 });
        assert_eq!(s.placements[&id].node_generation, 2, "kept under the new generation");
        assert_eq!(apply(&mut s, &other), Outcome::NodeUp { generation: 3 });
        assert!(s.placements.is_empty(), "a restarted process has no replicas");
        converge(&mut s);
        assert_eq!(s.placements_of("d").count(), 1);
    }

    #[test]
    fn a_stale_incarnations_report_is_ignored() {
        let mut s = cluster(&[("a", 8)], 1, 1 << 30);
        converge(&mut s);
        let id = s.placements_of("d").next().expect("placed").id.clone();
        let stale = Command::ReplicaStatus {
            id,
            node: "a".into(),
            node_generation: 0,
            phase: ReplicaPhase::Ready,
            message: String::new(),
            at_ms: 6,
        };
        assert!(matches!(apply(&mut s, &stale), Outcome::Ignored(_)));
    }
}
