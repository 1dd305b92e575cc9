//! Pure translation between the replicated placements and a node's view of them: the
//! assignments sent with heartbeat acks, and the commands a node's replica reports imply.

use shoal_protocol::{ArtifactSource, Assignment, IndexPeer, IndexShardAssignment, ReplicaReport, StageHop, StageRole};

use crate::state::{ClusterState, Command, NodeState, Placement};

/// A stage placement's role in its chain, with where its activations go next: the
/// placement of the same deployment and version with the same chain and the next index
/// (`None` for the last stage, or while that stage is not placed).
pub fn stage_role(state: &ClusterState, p: &Placement) -> Option<StageRole> {
    let s = p.stage?;
    let next = state
        .placements_of(&p.deployment)
        .find(|q| q.version == p.version && q.stage.is_some_and(|t| t.chain == s.chain && t.index == s.index + 1))
        .and_then(|q| {
            let node = state.nodes.get(&q.node)?;
            Some(StageHop { placement_id: q.id.clone(), node: node.id.clone(), address: node.address.clone() })
        });
    Some(StageRole {
        chain: s.chain,
        index: s.index,
        count: s.count,
        layer_start: s.layer_start,
        layer_end: s.layer_end,
        next,
    })
}

/// What node `id` (incarnation `generation`) should run. `coordinator_address` maps a
/// coordinator id to its QUIC address (for artifact sources).
pub fn assignments_for(
    state: &ClusterState,
    id: &str,
    generation: u64,
    coordinator_address: impl Fn(u64) -> Option<String>,
) -> Vec<Assignment> {
    let mut out = Vec::new();
    for p in state.placements.values().filter(|p| p.node == id && p.node_generation == generation) {
        let Some(version) = state.models.get(&p.model).and_then(|m| m.version(p.version)) else { continue };
        // Peers that already serve this version hold its files; the registering coordinator always does.
        let mut sources: Vec<ArtifactSource> = state
            .placements
            .values()
            .filter(|q| {
                q.model == p.model
                    && q.version == p.version
                    && q.node != id
                    && q.phase == Some(shoal_protocol::ReplicaPhase::Ready)
            })
            .filter_map(|q| state.nodes.get(&q.node))
            .filter(|n| n.state == NodeState::Ready)
            .map(|n| ArtifactSource { address: n.address.clone(), coordinator: false })
            .collect();
        sources.dedup();
        if let Some(addr) = coordinator_address(version.stored_by) {
            sources.push(ArtifactSource { address: addr, coordinator: true });
        }
        out.push(Assignment {
            placement_id: p.id.clone(),
            deployment: p.deployment.clone(),
            model: p.model.clone(),
            version: p.version,
            version_sha256: version.sha256.clone(),
            kind: version.kind(),
            files: version.files.clone(),
            sources,
            stage: stage_role(state, p),
        });
    }
    out
}

/// The index-shard copies node `id` (incarnation `generation`) should hold, each with the
/// other ready copies of its shard to rebuild from.
pub fn index_assignments_for(state: &ClusterState, id: &str, generation: u64) -> Vec<IndexShardAssignment> {
    state
        .index_shards
        .values()
        .filter(|p| p.node == id && p.node_generation == generation)
        .filter_map(|p| {
            let kb = state.knowledge_bases.get(&p.kb)?;
            let peers = state
                .index_shards
                .values()
                .filter(|q| q.kb == p.kb && q.shard == p.shard && q.id != p.id && q.node != id)
                .filter(|q| q.phase == Some(shoal_protocol::ReplicaPhase::Ready))
                .filter_map(|q| {
                    let n = state.nodes.get(&q.node).filter(|n| n.state == NodeState::Ready)?;
                    Some(IndexPeer { id: q.id.clone(), node: n.id.clone(), address: n.address.clone() })
                })
                .collect();
            Some(IndexShardAssignment {
                id: p.id.clone(),
                kb: p.kb.clone(),
                shard: p.shard,
                dimension: kb.dimension,
                peers,
            })
        })
        .collect()
}

/// `ReplicaStatus` commands for reports that differ from the committed placements (model
/// replicas and index-shard copies).
pub fn status_changes(
    state: &ClusterState,
    node: &str,
    generation: u64,
    reports: &[ReplicaReport],
    at_ms: u64,
) -> Vec<Command> {
    reports
        .iter()
        .filter(|r| {
            let model = state.placements.get(&r.placement_id).is_some_and(|p| {
                p.node == node
                    && p.node_generation == generation
                    && (p.phase != Some(r.phase) || p.message != r.message)
            });
            let index = state.index_shards.get(&r.placement_id).is_some_and(|p| {
                p.node == node
                    && p.node_generation == generation
                    && (p.phase != Some(r.phase) || p.message != r.message)
            });
            model || index
        })
        .map(|r| Command::ReplicaStatus {
            id: r.placement_id.clone(),
            node: node.to_string(),
            node_generation: generation,
            phase: r.phase,
            message: r.message.clone(),
            at_ms,
        })
        .collect()
}
