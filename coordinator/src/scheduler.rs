//! The scheduler: a pure function from the replicated state to the commands that move
//! actual placements towards the desired deployments. The leader runs it in a loop
//! (reconciliation); it decides nothing else.

use std::collections::{BTreeMap, BTreeSet};

use shoal_protocol::ReplicaPhase;

use crate::planner::{auto_stages, need_mib, plan_chain, stage_bytes, StagePlan};
use crate::state::{ClusterState, Command, Deployment, ModelVersion, NodeRecord, NodeState, Placement, PlacementStage};

/// Memory a replica (or a stage of one) needs besides its weights (KV caches, activations,
/// runtime).
pub(crate) const REPLICA_OVERHEAD_BYTES: u64 = 256 << 20;

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

/// Bytes a placement is expected to hold: its stage's share of the model, or all of it.
pub fn placement_bytes(state: &ClusterState, p: &Placement) -> u64 {
    let Some(version) = state.version_of(p) else { return 0 };
    match &p.stage {
        Some(s) => stage_bytes(version, s.layer_start, s.layer_end),
        None => replica_bytes(version),
    }
}

/// Free memory per ready node after the placements already there.
pub fn free_memory(state: &ClusterState) -> BTreeMap<&str, u64> {
    let mut free: BTreeMap<&str, u64> =
        state.nodes.values().filter(|n| n.state == NodeState::Ready).map(|n| (n.id.as_str(), node_memory(n))).collect();
    for p in state.placements.values() {
        if let Some(f) = free.get_mut(p.node.as_str()) {
            *f = f.saturating_sub(placement_bytes(state, p));
        }
    }
    free
}

/// How many stages each copy of a deployment has: 1 = unsplit. `current` are its
/// placements at the deployed version. A deployment that leaves it to Shoal keeps the shape
/// it has (unsplit replicas, or chains of as many stages as its first chain) and decides
/// afresh from the free memory only when it has no placements; `None` when nothing fits.
fn stages_for(
    d: &Deployment,
    version: &ModelVersion,
    current: &[&Placement],
    free: &BTreeMap<&str, u64>,
) -> Option<usize> {
    match d.shards {
        0 => {
            if current.iter().any(|p| p.stage.is_none()) {
                return Some(1);
            }
            if let Some(s) = current.iter().filter_map(|p| p.stage).min_by_key(|s| s.chain) {
                return Some(s.count as usize);
            }
            let nodes: Vec<(&str, u64)> = free.iter().map(|(id, f)| (*id, *f)).collect();
            auto_stages(version, &nodes)
        }
        k => Some(k as usize),
    }
}

/// Commands that bring placements closer to the deployments. Deterministic.
pub fn plan(state: &ClusterState, at_ms: u64) -> Vec<Command> {
    let mut out = Vec::new();
    // Free memory per ready node after the replicas already placed there.
    let mut free = free_memory(state);

    for d in state.deployments.values() {
        let Some(version) = state.deployed_version(&d.name) else { continue };
        let mine: Vec<&Placement> = state.placements_of(&d.name).collect();
        // Replicas of another version go (a version change replaces them).
        let old: Vec<&Placement> = mine.iter().copied().filter(|p| p.version != d.version).collect();
        release(state, &old, &mut free, &mut BTreeSet::new(), &mut out);
        let current: Vec<&Placement> = mine.iter().copied().filter(|p| p.version == d.version).collect();
        match stages_for(d, version, &current, &free) {
            None => {}
            Some(1) => plan_whole(state, d, version, &current, &mut free, at_ms, &mut out),
            Some(k) => plan_split(state, d, version, &current, k, &mut free, at_ms, &mut out),
        }
    }
    out
}

/// Unsplit replicas: one per node, on the nodes with the most free memory.
fn plan_whole<'a>(
    state: &'a ClusterState,
    d: &Deployment,
    version: &ModelVersion,
    current: &[&'a Placement],
    free: &mut BTreeMap<&'a str, u64>,
    at_ms: u64,
    out: &mut Vec<Command>,
) {
    // Stages of a split copy give way to whole replicas.
    let stages: Vec<&Placement> = current.iter().copied().filter(|p| p.stage.is_some()).collect();
    release(state, &stages, free, &mut BTreeSet::new(), out);
    let whole: Vec<&Placement> = current.iter().copied().filter(|p| p.stage.is_none()).collect();
    let mut healthy: Vec<&Placement> =
        whole.iter().copied().filter(|p| p.phase != Some(ReplicaPhase::Failed)).collect();
    let want = d.replicas as usize;
    if healthy.len() >= want {
        // Failed replicas are kept (visible) only while they are needed to explain a shortfall.
        for p in whole.iter().filter(|p| p.phase == Some(ReplicaPhase::Failed)) {
            out.push(Command::Unplace { id: p.id.clone() });
        }
        // Surplus: drop the least advanced replicas first, then the newest.
        healthy.sort_by_key(|p| (p.phase == Some(ReplicaPhase::Ready), std::cmp::Reverse(p.placed_at_ms)));
        for p in healthy.iter().take(healthy.len() - want) {
            out.push(Command::Unplace { id: p.id.clone() });
        }
        return;
    }
    let need = replica_bytes(version);
    // One replica per node: nodes that already hold one (in any phase) are not candidates.
    let mut candidates: Vec<(&str, u64)> = free
        .iter()
        .filter(|(id, f)| **f >= need && !whole.iter().any(|p| p.node == **id))
        .map(|(id, f)| (*id, *f))
        .collect();
    candidates.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    for (id, _) in candidates.into_iter().take(want - healthy.len()) {
        let Some(node) = state.nodes.get(id) else { continue };
        out.push(Command::Place {
            deployment: d.name.clone(),
            node: id.to_string(),
            node_generation: node.generation,
            at_ms,
            stage: None,
        });
        if let Some(f) = free.get_mut(id) {
            *f = f.saturating_sub(need);
        }
    }
}

/// Split copies: `want` chains of `k` stages each. Broken chains are repaired stage by stage
/// where a node has room, dropped whole where not; missing chains are planned afresh.
#[allow(clippy::too_many_arguments)]
fn plan_split<'a>(
    state: &'a ClusterState,
    d: &Deployment,
    version: &ModelVersion,
    current: &[&'a Placement],
    k: usize,
    free: &mut BTreeMap<&'a str, u64>,
    at_ms: u64,
    out: &mut Vec<Command>,
) {
    let place = |out: &mut Vec<Command>, node: &str, stage: PlacementStage| {
        if let Some(n) = state.nodes.get(node) {
            out.push(Command::Place {
                deployment: d.name.clone(),
                node: node.to_string(),
                node_generation: n.generation,
                at_ms,
                stage: Some(stage),
            });
        }
    };
    // Placement ids this round removes.
    let mut gone: BTreeSet<&str> = BTreeSet::new();
    // Whole replicas give way to chains.
    let whole: Vec<&Placement> = current.iter().copied().filter(|p| p.stage.is_none()).collect();
    release(state, &whole, free, &mut gone, out);
    let mut chains: BTreeMap<u32, Vec<&Placement>> = BTreeMap::new();
    for p in current {
        if let Some(s) = &p.stage {
            chains.entry(s.chain).or_default().push(p);
        }
    }
    let want = d.replicas as usize;
    let count = k as u32;
    // Chains that are (or are being made) whole, and chains with a failed stage no node can take.
    let mut healthy: Vec<u32> = Vec::new();
    let mut stuck: Vec<(u32, Vec<&Placement>)> = Vec::new();
    // Nodes holding a stage this round keeps or places.
    let mut busy: BTreeSet<&str> = BTreeSet::new();
    for (chain, stages) in &chains {
        let chain = *chain;
        // Chains of another stage count (the deployment's shards changed) go whole, as do
        // surplus chains (the highest chain ids).
        if stages.iter().any(|p| p.stage.is_some_and(|s| s.count != count)) || healthy.len() >= want {
            release(state, stages, free, &mut gone, out);
            continue;
        }
        // One placement per stage; of duplicates the healthy, then the oldest, stays.
        let mut sorted = stages.clone();
        sorted.sort_by_key(|p| {
            (p.stage.map(|s| s.index), p.phase == Some(ReplicaPhase::Failed), p.placed_at_ms, p.id.clone())
        });
        let mut slots: Vec<Option<&Placement>> = vec![None; k];
        for p in sorted {
            match p.stage.and_then(|s| slots.get_mut(s.index as usize)).filter(|slot| slot.is_none()) {
                Some(slot) => *slot = Some(p),
                None => release(state, &[p], free, &mut gone, out),
            }
        }
        let Some(ranges) = chain_ranges(version.layers, &slots) else {
            release(state, stages, free, &mut gone, out);
            continue;
        };
        // Re-place missing and failed stages on nodes that hold no stage of this chain, the
        // node with the most free memory first.
        let mut room = free.clone();
        let mut hosts: BTreeSet<&str> = slots.iter().flatten().map(|p| p.node.as_str()).collect();
        let mut repairs: Vec<(&str, PlacementStage, Option<&Placement>)> = Vec::new();
        let (mut lost, mut failed) = (false, false);
        for (index, (slot, &(layer_start, layer_end))) in slots.iter().zip(&ranges).enumerate() {
            if slot.is_some_and(|p| p.phase != Some(ReplicaPhase::Failed)) {
                continue;
            }
            let need = stage_bytes(version, layer_start, layer_end);
            let pick = room
                .iter()
                .filter(|(id, f)| **f >= need && !hosts.contains(**id))
                .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
                .map(|(id, _)| *id);
            let Some(node) = pick else {
                match slot {
                    Some(_) => failed = true,
                    None => lost = true,
                }
                continue;
            };
            hosts.insert(node);
            if let Some(f) = room.get_mut(node) {
                *f = f.saturating_sub(need);
            }
            let stage = PlacementStage { chain, index: index as u32, count, layer_start, layer_end };
            repairs.push((node, stage, *slot));
        }
        if lost {
            // A stage is gone and no node can take it: drop the chain, freeing its nodes.
            release(state, stages, free, &mut gone, out);
            continue;
        }
        if failed {
            // Kept (visible) only while it is needed to explain a shortfall, like a failed replica.
            busy.extend(stages.iter().map(|p| p.node.as_str()));
            stuck.push((chain, stages.clone()));
            continue;
        }
        *free = room;
        for (node, stage, broken) in repairs {
            place(out, node, stage);
            if let Some(p) = broken {
                release(state, &[p], free, &mut gone, out);
            }
        }
        busy.extend(hosts);
        healthy.push(chain);
    }
    if healthy.len() >= want {
        for (_, stages) in &stuck {
            release(state, stages, free, &mut gone, out);
        }
        return;
    }
    // New chains, on nodes that hold none of this deployment when there are enough of them.
    let mut used: BTreeSet<u32> = healthy.iter().copied().chain(stuck.iter().map(|(c, _)| *c)).collect();
    for _ in healthy.len()..want {
        let all: Vec<(&str, u64)> = free.iter().map(|(id, f)| (*id, *f)).collect();
        let spare: Vec<(&str, u64)> = all.iter().copied().filter(|(id, _)| !busy.contains(id)).collect();
        let planned: Result<Vec<StagePlan>, String> =
            plan_chain(version, &spare, k).or_else(|_| plan_chain(version, &all, k));
        let Ok(planned) = planned else { break };
        let chain = (0..).find(|c| !used.contains(c)).unwrap_or(0);
        used.insert(chain);
        for (index, (node, layer_start, layer_end)) in planned.into_iter().enumerate() {
            place(out, &node, PlacementStage { chain, index: index as u32, count, layer_start, layer_end });
            if let Some((id, f)) = free.iter_mut().find(|(id, _)| **id == node) {
                *f = f.saturating_sub(stage_bytes(version, layer_start, layer_end));
                busy.insert(*id);
            }
        }
    }
}

/// Unplaces `placements` (once each) and counts their memory as free again for what this
/// round plans after.
fn release<'a>(
    state: &ClusterState,
    placements: &[&'a Placement],
    free: &mut BTreeMap<&str, u64>,
    gone: &mut BTreeSet<&'a str>,
    out: &mut Vec<Command>,
) {
    for p in placements {
        if !gone.insert(p.id.as_str()) {
            continue;
        }
        out.push(Command::Unplace { id: p.id.clone() });
        let (Some(f), Some(node)) = (free.get_mut(p.node.as_str()), state.nodes.get(&p.node)) else { continue };
        *f = f.saturating_add(placement_bytes(state, p)).min(node_memory(node));
    }
}

/// The layer ranges of a chain's stages: those of the stages present, and for runs of
/// missing ones the gap between their neighbours shared out evenly. `None` when the present
/// stages do not tile `0..layers` or a gap has fewer layers than missing stages.
fn chain_ranges(layers: u32, slots: &[Option<&Placement>]) -> Option<Vec<(u32, u32)>> {
    let k = slots.len();
    let known: Vec<Option<(u32, u32)>> =
        slots.iter().map(|p| p.and_then(|p| p.stage).map(|s| (s.layer_start, s.layer_end))).collect();
    let mut out = Vec::with_capacity(k);
    let mut i = 0;
    while i < k {
        if let Some((s, e)) = known[i] {
            let start = out.last().map(|r: &(u32, u32)| r.1).unwrap_or(0);
            if s != start || s >= e || e > layers {
                return None;
            }
            out.push((s, e));
            i += 1;
            continue;
        }
        // A run of missing stages i..j between known neighbours (or the model's ends).
        let j = (i..k).find(|j| known[*j].is_some()).unwrap_or(k);
        let left = out.last().map(|r| r.1).unwrap_or(0);
        let right = known.get(j).copied().flatten().map(|r| r.0).unwrap_or(layers);
        let missing = (j - i) as u32;
        if right < left || right - left < missing {
            return None;
        }
        for n in 0..missing {
            let span = right - left;
            out.push((left + span * n / missing, left + span * (n + 1) / missing));
        }
        i = j;
    }
    (out.last().map(|r| r.1) == Some(layers)).then_some(out)
}

/// Why a deployment has fewer replicas than asked, for operators (empty when it has them all).
pub fn shortfall(state: &ClusterState, deployment: &str) -> String {
    let Some(d) = state.deployments.get(deployment) else { return String::new() };
    let Some(version) = state.deployed_version(deployment) else {
        return format!("model '{}' version {} is not registered", d.model, d.version);
    };
    let current: Vec<&Placement> = state.placements_of(deployment).filter(|p| p.version == d.version).collect();
    let free = free_memory(state);
    let nodes: Vec<(&str, u64)> = free.iter().map(|(id, f)| (*id, *f)).collect();
    let ready = state.count_nodes(NodeState::Ready);
    let need = replica_bytes(version);
    match stages_for(d, version, &current, &free) {
        Some(1) => {
            let placed = state
                .placements_of(deployment)
                .filter(|p| p.stage.is_none() && p.phase != Some(ReplicaPhase::Failed))
                .count();
            if placed >= d.replicas as usize {
                return String::new();
            }
            let holders: Vec<&str> = state
                .placements_of(deployment)
                .filter(|p| p.stage.is_none() && p.phase != Some(ReplicaPhase::Failed))
                .map(|p| p.node.as_str())
                .collect();
            // Nodes with room now, and those among them that hold no replica of this yet.
            let roomy = nodes.iter().filter(|(_, f)| *f >= need).count();
            let open = nodes.iter().filter(|(id, f)| *f >= need && !holders.contains(id)).count();
            let why = if ready == 0 {
                "no node is ready (add one: `shoal token create`, then `shoal join` on the machine)".to_string()
            } else if roomy == 0 {
                let most = nodes.iter().map(|(_, f)| *f).max().unwrap_or(0);
                format!(
                    "no ready node has the {} MiB a replica needs free (the most free on one node: {} MiB)",
                    need >> 20,
                    most >> 20
                )
            } else if open == 0 {
                format!(
                    "one replica per node: the {roomy} ready nodes with room already hold one (join more nodes, or ask for fewer replicas)"
                )
            } else {
                format!("{open} ready nodes have room; the replicas are being placed now")
            };
            format!("{placed} of {} replicas placed: {why}", d.replicas)
        }
        Some(k) => {
            let count = k as u32;
            let (mut complete, mut broken) = (0, Vec::new());
            for ((v, chain), stages) in state.chains_of(deployment) {
                if v != d.version || stages.iter().any(|p| p.stage.is_some_and(|s| s.count != count)) {
                    continue;
                }
                let slots: Vec<Option<&Placement>> = (0..count)
                    .map(|i| stages.iter().copied().find(|p| p.stage.is_some_and(|s| s.index == i)))
                    .collect();
                let Some(ranges) = chain_ranges(version.layers, &slots) else {
                    broken.push(format!("chain {chain} is being replaced"));
                    continue;
                };
                let waiting: Vec<String> = slots
                    .iter()
                    .zip(&ranges)
                    .enumerate()
                    .filter(|(_, (slot, _))| slot.is_none_or(|p| p.phase == Some(ReplicaPhase::Failed)))
                    .map(|(i, (slot, (start, end)))| {
                        let what = if slot.is_some() { "failed" } else { "unplaced" };
                        let need = need_mib(stage_bytes(version, *start, *end));
                        format!("stage {}/{k} (layers {start}-{end}, {need}) {what}", i + 1)
                    })
                    .collect();
                if waiting.is_empty() {
                    complete += 1;
                } else {
                    broken.push(format!("chain {chain} has {}", waiting.join(", ")));
                }
            }
            if complete >= d.replicas as usize {
                return String::new();
            }
            if complete + broken.len() < d.replicas as usize {
                broken.push(match plan_chain(version, &nodes, k) {
                    Err(why) => why,
                    Ok(_) => "new chains are being placed".to_string(),
                });
            }
            format!("{complete} of {} chains complete: {}", d.replicas, broken.join("; "))
        }
        None => {
            let most = (version.layers as usize).min(nodes.len()).min(crate::planner::MAX_SHARDS as usize);
            let split = if version.kind() != shoal_protocol::EngineKind::Generate {
                String::new()
            } else if most < 2 {
                " and a split needs at least 2 ready nodes".to_string()
            } else {
                match plan_chain(version, &nodes, most) {
                    Err(why) => format!(" and split {most} ways it does not fit either ({why})"),
                    Ok(_) => String::new(),
                }
            };
            format!(
                "0 of {} replicas placed: no ready node has the {} the whole model needs{split}; {ready} ready {}",
                d.replicas,
                need_mib(need),
                if ready == 1 { "node" } else { "nodes" }
            )
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::state::{apply, Deployment, ModelRecord, Outcome};
    use shoal_protocol::{Accelerator, AcceleratorKind, Capacity};

    fn version(weight_bytes: u64) -> ModelVersion {
        crate::planner::tests::version(weight_bytes, 30)
    }

    /// A ready node (generation 1) with `mem_gib` GiB of RAM and no accelerators.
    pub(crate) fn node(id: &str, mem_gib: u64) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            name: id.into(),
            address: "127.0.0.1:1".into(),
            capacity: Capacity { cpu_cores: 2, memory_total_bytes: mem_gib << 30, accelerators: vec![] },
            labels: vec![],
            metrics: String::new(),
            state: NodeState::Ready,
            generation: 1,
            incarnation: 1,
            mcp_stdio: false,
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
                shards: 1,
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
        assert_eq!(
            shortfall(&s, "d"),
            "1 of 2 replicas placed: one replica per node: the 1 ready nodes with room already hold one \
             (join more nodes, or ask for fewer replicas)"
        );
    }

    #[test]
    fn shortfalls_name_the_rule_that_applies() {
        // Nothing placed yet, room on both nodes: the reconciler is about to place them.
        let s = cluster(&[("a", 16), ("b", 16)], 2, 1 << 30);
        assert_eq!(
            shortfall(&s, "d"),
            "0 of 2 replicas placed: 2 ready nodes have room; the replicas are being placed now"
        );
        // No room anywhere.
        let mut s = cluster(&[("a", 1), ("b", 1)], 1, 2 << 30);
        converge(&mut s);
        assert!(
            shortfall(&s, "d").starts_with("0 of 1 replicas placed: no ready node has the"),
            "{}",
            shortfall(&s, "d")
        );
        // No nodes.
        let s = cluster(&[], 1, 1 << 30);
        assert!(shortfall(&s, "d").contains("no node is ready"), "{}", shortfall(&s, "d"));
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
        let deploy = Command::Deploy {
            name: "d".into(),
            model: "m".into(),
            version: 0,
            replicas: 1,
            shards: 1,
            at_ms: 8,
            force: false,
        };
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
            metrics: String::new(),
            incarnation,
            mcp_stdio: false,
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

    const MIB: u64 = 1 << 20;

    /// Adds a ready node declaring `mib` MiB of accelerator memory.
    fn add_accel_node(s: &mut ClusterState, id: &str, mib: u64) {
        let mut n = node(id, 64);
        n.capacity.accelerators.push(Accelerator {
            kind: AcceleratorKind::Gpu,
            vendor: "x".into(),
            model: "y".into(),
            memory_total_bytes: mib * MIB,
            memory_free_bytes: mib * MIB,
            compute_capability: String::new(),
            discovered: false,
        });
        s.nodes.insert(id.to_string(), n);
    }

    /// A 30-layer model with 98 MiB of weights (a replica needs 378.5 MiB, half of it
    /// 317.25 MiB) deployed with `shards` on nodes declaring accelerator memory in MiB.
    fn split_cluster(nodes: &[(&str, u64)], replicas: u32, shards: u32) -> ClusterState {
        let mut s = cluster(&[], replicas, 98 * MIB);
        for (id, mib) in nodes {
            add_accel_node(&mut s, id, *mib);
        }
        s.deployments.get_mut("d").expect("d").shards = shards;
        s
    }

    /// `(node, chain, index, layer_start, layer_end)` of every stage of "d", by chain and index.
    fn stages(s: &ClusterState) -> Vec<(String, u32, u32, u32, u32)> {
        let mut v: Vec<_> = s
            .placements_of("d")
            .filter_map(|p| p.stage.map(|st| (p.node.clone(), st.chain, st.index, st.layer_start, st.layer_end)))
            .collect();
        v.sort_by_key(|x| (x.1, x.2));
        v
    }

    fn stage(node: &str, chain: u32, index: u32, start: u32, end: u32) -> (String, u32, u32, u32, u32) {
        (node.to_string(), chain, index, start, end)
    }

    fn id_on(s: &ClusterState, node: &str) -> String {
        s.placements_of("d").find(|p| p.node == node).map(|p| p.id.clone()).expect("a placement on the node")
    }

    fn report(s: &mut ClusterState, node: &str, phase: ReplicaPhase) {
        let id = id_on(s, node);
        let cmd = Command::ReplicaStatus {
            id,
            node: node.into(),
            node_generation: s.nodes[node].generation,
            phase,
            message: "boom".into(),
            at_ms: 6,
        };
        assert_eq!(apply(s, &cmd), Outcome::Applied);
    }

    #[test]
    fn explicit_splits_cut_the_layers_evenly_on_distinct_equal_nodes() {
        let mut s = split_cluster(&[("a", 1024), ("b", 1024), ("c", 1024), ("e", 1024)], 1, 2);
        converge(&mut s);
        assert_eq!(stages(&s), vec![stage("a", 0, 0, 0, 15), stage("b", 0, 1, 15, 30)]);
        assert!(s.placements_of("d").all(|p| p.stage.is_some_and(|st| st.count == 2)));
        let mut s = split_cluster(&[("a", 1024), ("b", 1024), ("c", 1024), ("e", 1024)], 1, 3);
        converge(&mut s);
        assert_eq!(stages(&s), vec![stage("a", 0, 0, 0, 10), stage("b", 0, 1, 10, 20), stage("c", 0, 2, 20, 30)]);
        assert_eq!(shortfall(&s, "d"), "");
    }

    #[test]
    fn automatic_shards_split_only_when_no_node_fits_the_whole_model() {
        let mut s = split_cluster(&[("a", 350), ("b", 350), ("c", 350)], 1, 0);
        let before = plan(&s, 5);
        assert_eq!(before.len(), 2, "{before:?}");
        converge(&mut s);
        assert_eq!(stages(&s), vec![stage("a", 0, 0, 0, 15), stage("b", 0, 1, 15, 30)]);
        let mut s = split_cluster(&[("a", 350), ("b", 400)], 1, 0);
        converge(&mut s);
        assert_eq!(nodes_of(&s), vec!["b"]);
        assert!(s.placements_of("d").all(|p| p.stage.is_none()));
        // Never splits: nothing fits.
        let mut s = split_cluster(&[("a", 350), ("b", 350)], 1, 1);
        converge(&mut s);
        assert_eq!(s.placements_of("d").count(), 0);
        assert!(shortfall(&s, "d").contains("0 of 1 replicas placed"), "{}", shortfall(&s, "d"));
    }

    #[test]
    fn a_dead_nodes_stage_moves_to_a_spare_node_and_the_rest_of_the_chain_stays() {
        let mut s = split_cluster(&[("a", 350), ("b", 350), ("c", 350)], 1, 0);
        converge(&mut s);
        let head = id_on(&s, "a");
        assert_eq!(apply(&mut s, &Command::NodeDead { id: "b".into(), generation: 1, at_ms: 9 }), Outcome::Applied);
        assert!(shortfall(&s, "d").contains("0 of 1 chains complete"), "{}", shortfall(&s, "d"));
        converge(&mut s);
        assert_eq!(stages(&s), vec![stage("a", 0, 0, 0, 15), stage("c", 0, 1, 15, 30)]);
        assert_eq!(id_on(&s, "a"), head, "the surviving stage is untouched");
    }

    #[test]
    fn a_chain_missing_several_stages_gets_back_the_same_layers() {
        let mut s = split_cluster(&[("a", 1024), ("b", 1024), ("c", 1024), ("e", 400), ("f", 400)], 1, 3);
        converge(&mut s);
        for id in ["b", "c"] {
            apply(&mut s, &Command::NodeDead { id: id.into(), generation: 1, at_ms: 9 });
        }
        converge(&mut s);
        assert_eq!(stages(&s), vec![stage("a", 0, 0, 0, 10), stage("e", 0, 1, 10, 20), stage("f", 0, 2, 20, 30)]);
    }

    #[test]
    fn a_chain_that_cannot_be_repaired_is_dropped_and_planned_again_later() {
        let mut s = split_cluster(&[("a", 350), ("b", 350)], 1, 0);
        converge(&mut s);
        let capacity = s.nodes["b"].capacity.clone();
        apply(&mut s, &Command::NodeDead { id: "b".into(), generation: 1, at_ms: 9 });
        converge(&mut s);
        assert_eq!(s.placements_of("d").count(), 0, "the half chain is dropped");
        let why = shortfall(&s, "d");
        assert!(why.contains("no ready node has the 379 MiB the whole model needs"), "{why}");
        let up = Command::NodeUp {
            id: "b".into(),
            name: "b".into(),
            address: "127.0.0.1:2".into(),
            capacity,
            labels: vec![],
            metrics: String::new(),
            incarnation: 7,
            mcp_stdio: false,
            at_ms: 10,
        };
        assert_eq!(apply(&mut s, &up), Outcome::NodeUp { generation: 2 });
        converge(&mut s);
        assert_eq!(stages(&s), vec![stage("a", 0, 0, 0, 15), stage("b", 0, 1, 15, 30)]);
        // With the split asked for explicitly the shortfall says what a chain needs.
        s.deployments.get_mut("d").expect("d").shards = 2;
        apply(&mut s, &Command::NodeDead { id: "b".into(), generation: 2, at_ms: 11 });
        converge(&mut s);
        assert_eq!(
            shortfall(&s, "d"),
            "0 of 1 chains complete: 2 stages of about 318 MiB need 2 ready nodes with room; 1 ready node"
        );
    }

    #[test]
    fn a_failed_stage_is_replaced_elsewhere_or_kept_visible() {
        let mut s = split_cluster(&[("a", 350), ("b", 350), ("c", 350)], 1, 2);
        converge(&mut s);
        let failed = id_on(&s, "b");
        report(&mut s, "b", ReplicaPhase::Failed);
        let cmds = plan(&s, 7);
        assert!(
            matches!(&cmds[..], [Command::Place { node, stage: Some(st), .. }, Command::Unplace { id }]
                if node == "c" && st.index == 1 && st.layer_start == 15 && id == &failed),
            "{cmds:?}"
        );
        converge(&mut s);
        assert_eq!(stages(&s), vec![stage("a", 0, 0, 0, 15), stage("c", 0, 1, 15, 30)]);
        // No node to take it: the failed stage stays, so its message can be read.
        let mut s = split_cluster(&[("a", 350), ("b", 350)], 1, 2);
        converge(&mut s);
        report(&mut s, "b", ReplicaPhase::Failed);
        assert_eq!(plan(&s, 7), vec![]);
        assert_eq!(stages(&s), vec![stage("a", 0, 0, 0, 15), stage("b", 0, 1, 15, 30)]);
        assert_eq!(shortfall(&s, "d"), "0 of 1 chains complete: chain 0 has stage 2/2 (layers 15-30, 318 MiB) failed");
        // A node with room comes: the stage moves there and the failed one goes.
        add_accel_node(&mut s, "c", 350);
        converge(&mut s);
        assert_eq!(stages(&s), vec![stage("a", 0, 0, 0, 15), stage("c", 0, 1, 15, 30)]);
        assert_eq!(shortfall(&s, "d"), "");
    }

    #[test]
    fn changing_shards_replaces_the_chains() {
        let mut s = split_cluster(&[("a", 1024), ("b", 1024), ("c", 1024)], 1, 2);
        converge(&mut s);
        let old: Vec<String> = s.placements_of("d").map(|p| p.id.clone()).collect();
        let deploy = |shards| Command::Deploy {
            name: "d".into(),
            model: "m".into(),
            version: 0,
            replicas: 1,
            shards,
            at_ms: 8,
            force: false,
        };
        assert_eq!(apply(&mut s, &deploy(3)), Outcome::ModelVersion { version: 1, existed: true });
        converge(&mut s);
        assert_eq!(stages(&s), vec![stage("a", 0, 0, 0, 10), stage("b", 0, 1, 10, 20), stage("c", 0, 2, 20, 30)]);
        assert!(s.placements_of("d").all(|p| !old.contains(&p.id)));
        apply(&mut s, &deploy(1));
        converge(&mut s);
        assert_eq!(s.placements_of("d").count(), 1);
        assert!(s.placements_of("d").all(|p| p.stage.is_none()));
        // Automatic keeps what exists.
        apply(&mut s, &deploy(0));
        assert!(plan(&s, 9).is_empty());
    }

    #[test]
    fn replicas_of_a_split_model_are_whole_chains() {
        let mut s = split_cluster(&[("a", 1024), ("b", 1024), ("c", 1024), ("e", 1024)], 2, 2);
        converge(&mut s);
        assert_eq!(
            stages(&s),
            vec![stage("a", 0, 0, 0, 15), stage("b", 0, 1, 15, 30), stage("c", 1, 0, 0, 15), stage("e", 1, 1, 15, 30)]
        );
        s.deployments.get_mut("d").expect("d").replicas = 1;
        converge(&mut s);
        assert_eq!(stages(&s), vec![stage("a", 0, 0, 0, 15), stage("b", 0, 1, 15, 30)]);
    }

    #[test]
    fn only_complete_ready_chains_take_requests_and_stages_know_their_next_hop() {
        let mut s = split_cluster(&[("a", 350), ("b", 350)], 1, 2);
        s.nodes.get_mut("b").expect("b").address = "127.0.0.1:2".into();
        converge(&mut s);
        let (head, tail) = (id_on(&s, "a"), id_on(&s, "b"));
        let role = |s: &ClusterState, node: &str| {
            crate::assign::assignments_for(s, node, 1, |_| None).pop().and_then(|a| a.stage).expect("a stage")
        };
        let first = role(&s, "a");
        assert_eq!((first.index, first.count, first.layer_start, first.layer_end), (0, 2, 0, 15));
        let next = first.next.expect("a next hop");
        assert_eq!(
            (next.placement_id.as_str(), next.node.as_str(), next.address.as_str()),
            (tail.as_str(), "b", "127.0.0.1:2")
        );
        assert_eq!(role(&s, "b").next, None);
        report(&mut s, "a", ReplicaPhase::Ready);
        assert!(s.entry_points("d").is_empty());
        report(&mut s, "b", ReplicaPhase::Ready);
        let entries: Vec<&str> = s.entry_points("d").iter().map(|p| p.id.as_str()).collect();
        assert_eq!(entries, vec![head.as_str()]);
    }

    /// No node holds more than it offers; every chain has its `count` stages, on distinct
    /// nodes, tiling the model's layers; no more copies than asked.
    fn check_invariants(s: &ClusterState) -> Result<(), String> {
        for n in s.nodes.values() {
            let held: u64 = s.placements.values().filter(|p| p.node == n.id).map(|p| placement_bytes(s, p)).sum();
            if held > node_memory(n) {
                return Err(format!("{} holds {held} of {}", n.id, node_memory(n)));
            }
        }
        let d = &s.deployments["d"];
        let chains = s.chains_of("d");
        let whole = s.placements_of("d").filter(|p| p.stage.is_none()).count();
        if chains.len() + whole > d.replicas as usize || (whole > 0 && !chains.is_empty()) {
            return Err(format!("{} chains and {whole} whole replicas for {} replicas", chains.len(), d.replicas));
        }
        for stages in chains.values() {
            let count = stages[0].stage.map(|st| st.count).unwrap_or(0);
            let ranges: Vec<(u32, u32)> =
                stages.iter().filter_map(|p| p.stage.map(|st| (st.layer_start, st.layer_end))).collect();
            let nodes: BTreeSet<&str> = stages.iter().map(|p| p.node.as_str()).collect();
            let tiled = ranges.first().map(|r| r.0) == Some(0)
                && ranges.last().map(|r| r.1) == Some(30)
                && ranges.windows(2).all(|w| w[0].1 == w[1].0);
            if stages.len() != count as usize || nodes.len() != stages.len() || !tiled {
                return Err(format!("bad chain: {stages:?}"));
            }
        }
        Ok(())
    }

    proptest::proptest! {
        /// Whatever the nodes, the shard setting and the deaths, the scheduler reaches a fixed
        /// point that keeps the invariants.
        #[test]
        fn split_plans_converge_within_memory(
            mems in proptest::collection::vec(250u64..1300, 1..6),
            replicas in 0u32..3,
            shards in 0u32..4,
            deaths in proptest::collection::vec(0usize..6, 0..3),
        ) {
            let names = ["a", "b", "c", "e", "f", "g"];
            let nodes: Vec<(&str, u64)> = names.iter().copied().zip(mems.iter().copied()).collect();
            let mut s = split_cluster(&nodes, replicas, shards);
            converge(&mut s);
            proptest::prop_assert_eq!(check_invariants(&s), Ok(()));
            for i in deaths {
                let Some(id) = names.get(i).filter(|id| s.nodes.contains_key(**id)) else { continue };
                let generation = s.nodes[*id].generation;
                apply(&mut s, &Command::NodeDead { id: id.to_string(), generation, at_ms: 9 });
                converge(&mut s);
                proptest::prop_assert_eq!(check_invariants(&s), Ok(()));
            }
        }
    }
}
