//! A state of a chosen size, built through [`apply`] exactly as a real cluster's log would
//! build it: `nodes` admitted nodes (registered, then lost, so that nothing routes to them
//! or expects their heartbeats) and one knowledge base of `documents` catalog entries. For
//! benchmarks that show what the size of the state costs (`shoal bench raft --prefill`).

use std::collections::BTreeMap;

use super::{apply, ClusterState, Command, IndexBackend, KbDocument, KnowledgeBase, Outcome, TokenRecord};

/// The state after admitting `nodes` nodes and adding `documents` documents.
pub fn synthetic_state(nodes: usize, documents: usize) -> ClusterState {
    let mut s = ClusterState::default();
    let run = |s: &mut ClusterState, cmd: Command| {
        let outcome = apply(s, &cmd);
        debug_assert!(matches!(outcome, Outcome::Applied | Outcome::NodeUp { .. }), "{cmd:?}: {outcome:?}");
    };
    for id in admit_nodes(&mut s, nodes, 64, 256 << 30) {
        let generation = s.nodes.get(&id).map(|n| n.generation).unwrap_or(0);
        run(&mut s, Command::NodeDead { id, generation, at_ms: 3 });
    }
    if documents > 0 {
        let kb = KnowledgeBase {
            name: "synthetic".into(),
            embedding: "synthetic-embedding".into(),
            dimension: 384,
            backend: IndexBackend::Builtin,
            shards: 8,
            replicas: 2,
            chunk_tokens: 256,
            chunk_overlap: 32,
            description: "synthetic state".into(),
            created_at_ms: 4,
            documents: BTreeMap::new(),
        };
        run(&mut s, Command::CreateKnowledgeBase(kb));
        for i in 0..documents {
            let document = KbDocument {
                id: format!("docs/{i:07}.md"),
                title: format!("Document {i}"),
                source: format!("{i:07}.md"),
                tags: vec!["synthetic".into()],
                sha256: format!("{:064x}", (i as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                chunks: 12,
                bytes: 6_000,
                updated_at_ms: 5,
            };
            run(&mut s, Command::PutDocument { kb: "synthetic".into(), document });
        }
    }
    s
}

/// A cluster of `nodes` ready nodes (8 cores, 32 GiB each) and `deployments` deployments of
/// one registered 400 MB chat model, one replica each, nothing placed yet: what the scheduler
/// has in front of it when a large cluster is asked for many deployments at once
/// (`shoal bench scale`).
pub fn synthetic_cluster(nodes: usize, deployments: usize) -> ClusterState {
    let mut s = ClusterState::default();
    let run = |s: &mut ClusterState, cmd: Command| {
        let outcome = apply(s, &cmd);
        debug_assert!(!matches!(outcome, Outcome::Rejected(_)), "{cmd:?}: {outcome:?}");
    };
    admit_nodes(&mut s, nodes, 8, 32 << 30);
    let version = super::ModelVersion {
        version: 0,
        source: "file:///synthetic.gguf".into(),
        sha256: "5e".repeat(32),
        size: 400 << 20,
        format: super::WeightFormat::Gguf,
        architecture: "qwen2".into(),
        capabilities: vec!["chat".into(), "completion".into()],
        context_length: 32768,
        layers: 24,
        hidden_size: 896,
        weight_bytes: 400 << 20,
        files: vec![],
        stored_by: 1,
        registered_at_ms: 3,
        sampling: Default::default(),
    };
    run(&mut s, Command::RegisterModel { name: "synthetic".into(), version });
    for i in 0..deployments {
        let deploy = Command::Deploy {
            name: format!("d-{i:05}"),
            model: "synthetic".into(),
            version: 0,
            replicas: 1,
            shards: 0,
            at_ms: 4,
            force: false,
        };
        run(&mut s, deploy);
    }
    s
}

/// Creates the synthetic join token and admits `nodes` ready nodes of the given capacity
/// through [`apply`], as joins and registrations would; returns their ids.
fn admit_nodes(s: &mut ClusterState, nodes: usize, cpu_cores: u32, memory_total_bytes: u64) -> Vec<String> {
    let token = TokenRecord {
        id: "synthetic".into(),
        secret_hash: "synthetic".into(),
        created_at_ms: 0,
        expires_at_ms: u64::MAX,
        description: "synthetic state".into(),
    };
    apply(s, &Command::CreateToken(token));
    (0..nodes)
        .map(|i| {
            let id = format!("n-synthetic-{i:06}");
            let name = format!("synthetic-{i}");
            let admit = Command::AdmitNode {
                id: id.clone(),
                name: name.clone(),
                at_ms: 1,
                token_id: "synthetic".into(),
                secret_hash: "synthetic".into(),
            };
            apply(s, &admit);
            let capacity =
                shoal_protocol::messages::Capacity { cpu_cores, memory_total_bytes, accelerators: Vec::new() };
            let address = format!("10.{}.{}.{}:7200", i >> 16 & 255, i >> 8 & 255, i & 255);
            let up = Command::NodeUp {
                id: id.clone(),
                name,
                address,
                capacity,
                labels: vec![],
                metrics: String::new(),
                incarnation: 1,
                mcp_stdio: false,
                at_ms: 2,
            };
            apply(s, &up);
            id
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::NodeState;

    #[test]
    fn the_state_has_the_size_asked_for_and_nothing_live() {
        let s = synthetic_state(30, 200);
        assert_eq!(s.nodes.len(), 30);
        assert_eq!(s.count_nodes(NodeState::Dead), 30);
        assert_eq!(s.knowledge_bases["synthetic"].documents.len(), 200);
        assert!(s.placements.is_empty() && s.index_shards.is_empty());
    }

    #[test]
    fn the_scheduler_places_every_deployment_of_a_synthetic_cluster() {
        let mut s = synthetic_cluster(50, 20);
        assert_eq!((s.count_nodes(NodeState::Ready), s.deployments.len()), (50, 20));
        for _ in 0..10 {
            let commands = crate::scheduler::plan(&s, 10);
            if commands.is_empty() {
                break;
            }
            for c in &commands {
                apply(&mut s, c);
            }
        }
        assert_eq!(s.placements.len(), 20, "one replica per deployment");
        let nodes: std::collections::BTreeSet<&str> = s.placements.values().map(|p| p.node.as_str()).collect();
        assert!(nodes.len() > 1, "spread over nodes: {nodes:?}");
    }
}
