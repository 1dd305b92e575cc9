//! Shard plans: how a model's transformer layers are cut into contiguous stages across
//! nodes (pipeline parallelism). Pure: model facts and free memory in, a plan out.
//!
//! A stage's memory is its share of the weights, counting the token embedding with the
//! first stage and the output head with the last as one layer's worth each, plus the same
//! headroom and per-replica overhead an unsplit replica gets. Layers are shared out in
//! proportion to the memory each node has left for weights (its free memory less the
//! per-replica overhead), like exo's memory-weighted ring partitioning.

use shoal_protocol::EngineKind;

use crate::scheduler::{replica_bytes, REPLICA_OVERHEAD_BYTES};
use crate::state::ModelVersion;

/// The most stages one copy of a model may be split into.
pub const MAX_SHARDS: u32 = 64;

/// One stage of a planned chain: the node and its layers `[start, end)`.
pub type StagePlan = (String, u32, u32);

/// Bytes a stage of `version` running layers `[layer_start, layer_end)` is expected to hold.
/// The whole range `[0, layers)` needs exactly [`replica_bytes`].
pub fn stage_bytes(version: &ModelVersion, layer_start: u32, layer_end: u32) -> u64 {
    let layer_end = layer_end.min(version.layers);
    let layer_start = layer_start.min(layer_end);
    // The weights in `layers + 2` equal units: the embedding, the layers, the output head.
    let units = u128::from(version.layers) + 2;
    let mut mine = u128::from(layer_end - layer_start);
    if layer_start == 0 {
        mine += 1;
    }
    if layer_end == version.layers {
        mine += 1;
    }
    let weights = u128::from(version.weight_bytes) * mine.min(units) / units;
    // `mine <= units`, so the share never exceeds `weight_bytes`.
    let weights = u64::try_from(weights).unwrap_or(version.weight_bytes);
    weights + weights / 4 + REPLICA_OVERHEAD_BYTES
}

/// Whether a deployment may ask for `shards` stages per copy of `version`.
pub fn check_shards(version: &ModelVersion, shards: u32) -> Result<(), String> {
    if shards > MAX_SHARDS {
        return Err(format!("shards must be at most {MAX_SHARDS}"));
    }
    if shards < 2 {
        return Ok(());
    }
    if version.kind() != EngineKind::Generate {
        return Err("only text-generation models can be split into shards".into());
    }
    if shards > version.layers {
        return Err(format!(
            "the model has {} layers: it cannot be split into {shards} shards (at most one per layer)",
            version.layers
        ));
    }
    Ok(())
}

/// Cuts `layers` into `weights.len()` contiguous ranges of at least one layer each, the
/// units (embedding + layers + head) of each in proportion to its weight. Needs
/// `1 <= weights.len() <= layers`. Rounds to the nearest unit, halves up.
pub fn split_layers(layers: u32, weights: &[u64]) -> Vec<(u32, u32)> {
    let k = weights.len() as u128;
    let mut weights: Vec<u128> = weights.iter().map(|w| u128::from(*w)).collect();
    if weights.iter().all(|w| *w == 0) {
        weights.iter_mut().for_each(|w| *w = 1);
    }
    let total: u128 = weights.iter().sum();
    let units = u128::from(layers) + 2;
    let mut out = Vec::with_capacity(weights.len());
    let (mut start, mut cumulative) = (0u32, 0u128);
    for (i, w) in weights.iter().enumerate() {
        cumulative += w;
        let left_after = (k - 1 - i as u128) as u32;
        let end = if left_after == 0 {
            layers
        } else {
            // Units of stages 0..=i, the first of which is the embedding.
            let through = (units * cumulative + total / 2) / total;
            let ideal = u32::try_from(through.saturating_sub(1)).unwrap_or(layers);
            ideal.max(start + 1).min(layers.saturating_sub(left_after))
        };
        out.push((start, end));
        start = end;
    }
    out
}

/// Plans one chain of `stages` stages of `version` over `nodes` (the ready nodes and their
/// free memory): the `stages` nodes with the most free memory (ties by id), in that order,
/// each running a share of the layers proportional to the memory it has for weights.
/// Fails, saying why, when there are too few layers or nodes, or a stage does not fit.
pub fn plan_chain(version: &ModelVersion, nodes: &[(&str, u64)], stages: usize) -> Result<Vec<StagePlan>, String> {
    let layers = version.layers;
    if stages == 0 {
        return Err("a chain needs at least one stage".into());
    }
    if stages > layers as usize {
        return Err(format!("the model has {layers} layers, too few for {stages} stages"));
    }
    let mut chosen: Vec<(&str, u64)> = nodes.to_vec();
    chosen.sort_by(|a, b| a.0.cmp(b.0).then(b.1.cmp(&a.1)));
    chosen.dedup_by(|a, b| a.0 == b.0);
    chosen.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    if chosen.len() < stages {
        let even = split_layers(layers, &vec![1; stages]);
        let biggest = even.iter().map(|(s, e)| stage_bytes(version, *s, *e)).max().unwrap_or(0);
        return Err(format!(
            "{stages} stages of about {} need {stages} ready nodes with room; {} ready {}",
            need_mib(biggest),
            chosen.len(),
            if chosen.len() == 1 { "node" } else { "nodes" }
        ));
    }
    chosen.truncate(stages);
    let room: Vec<u64> = chosen.iter().map(|(_, free)| free.saturating_sub(REPLICA_OVERHEAD_BYTES)).collect();
    let ranges = split_layers(layers, &room);
    let needs: Vec<u64> = ranges.iter().map(|(s, e)| stage_bytes(version, *s, *e)).collect();
    if needs.iter().zip(&chosen).any(|(need, (_, free))| need > free) {
        return Err(format!(
            "{stages} stages need {}; the nodes with the most room offer {}",
            and_list(needs.iter().map(|n| need_mib(*n))),
            and_list(chosen.iter().map(|(_, free)| offer_mib(*free)))
        ));
    }
    Ok(chosen.iter().zip(ranges).map(|((node, _), (s, e))| (node.to_string(), s, e)).collect())
}

/// How many stages a copy of `version` needs on `nodes` (the ready nodes and their free
/// memory) when the deployment leaves it to Shoal: 1 when a node has room for the whole
/// model, else the fewest stages that fit (text-generation models only); `None` when
/// nothing fits.
pub fn auto_stages(version: &ModelVersion, nodes: &[(&str, u64)]) -> Option<usize> {
    let whole = replica_bytes(version);
    if nodes.iter().any(|(_, free)| *free >= whole) {
        return Some(1);
    }
    if version.kind() != EngineKind::Generate {
        return None;
    }
    let most = (version.layers as usize).min(nodes.len()).min(MAX_SHARDS as usize);
    (2..=most).find(|k| plan_chain(version, nodes, *k).is_ok())
}

/// A memory need in MiB, rounded up.
pub fn need_mib(bytes: u64) -> String {
    format!("{} MiB", bytes.div_ceil(1 << 20))
}

/// Memory on offer in MiB, rounded down.
pub fn offer_mib(bytes: u64) -> String {
    format!("{} MiB", bytes >> 20)
}

/// "a", "a and b", "a, b and c".
fn and_list(items: impl Iterator<Item = String>) -> String {
    let items: Vec<String> = items.collect();
    match items.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::state::WeightFormat;

    const MIB: u64 = 1 << 20;

    /// A GGUF chat model with these weights and layers (for the planner's and scheduler's tests).
    pub(crate) fn version(weight_bytes: u64, layers: u32) -> ModelVersion {
        ModelVersion {
            version: 1,
            source: "file:///m.gguf".into(),
            sha256: "ab".into(),
            size: weight_bytes,
            format: WeightFormat::Gguf,
            architecture: "llama".into(),
            capabilities: vec!["chat".into(), "completion".into()],
            context_length: 2048,
            layers,
            hidden_size: 576,
            weight_bytes,
            files: vec![],
            stored_by: 1,
            registered_at_ms: 0,
            sampling: Default::default(),
        }
    }

    fn ranges(plan: &[StagePlan]) -> Vec<(u32, u32)> {
        plan.iter().map(|(_, s, e)| (*s, *e)).collect()
    }

    #[test]
    fn stage_bytes_share_the_weights_with_embedding_and_head() {
        let v = version(320 * MIB, 30);
        // 32 units of 10 MiB: the embedding, 30 layers, the head.
        assert_eq!(stage_bytes(&v, 0, 30), replica_bytes(&v));
        assert_eq!(stage_bytes(&v, 0, 15), 160 * MIB + 40 * MIB + REPLICA_OVERHEAD_BYTES);
        assert_eq!(stage_bytes(&v, 15, 30), 160 * MIB + 40 * MIB + REPLICA_OVERHEAD_BYTES);
        assert_eq!(stage_bytes(&v, 10, 20), 100 * MIB + 25 * MIB + REPLICA_OVERHEAD_BYTES);
        // Out-of-range ends are clamped rather than overflowing.
        assert_eq!(stage_bytes(&v, 0, 99), replica_bytes(&v));
    }

    #[test]
    fn equal_memory_splits_equally() {
        let v = version(98 * MIB, 30);
        let two = plan_chain(&v, &[("b", 350 * MIB), ("a", 350 * MIB)], 2).expect("fits");
        assert_eq!(two, vec![("a".to_string(), 0, 15), ("b".to_string(), 15, 30)]);
        let three = plan_chain(&v, &[("c", 350 * MIB), ("a", 350 * MIB), ("b", 350 * MIB)], 3).expect("fits");
        assert_eq!(ranges(&three), vec![(0, 10), (10, 20), (20, 30)]);
        assert_eq!(three.iter().map(|p| p.0.as_str()).collect::<Vec<_>>(), vec!["a", "b", "c"]);
    }

    #[test]
    fn layers_follow_the_memory_left_for_weights() {
        let v = version(98 * MIB, 30);
        // 1:2 of the memory beyond the per-stage overhead; the bigger node goes first.
        let small = REPLICA_OVERHEAD_BYTES + 300 * MIB;
        let big = REPLICA_OVERHEAD_BYTES + 600 * MIB;
        let plan = plan_chain(&v, &[("a", small), ("b", big)], 2).expect("fits");
        assert_eq!(plan, vec![("b".to_string(), 0, 20), ("a".to_string(), 20, 30)]);
        // Only the nodes with the most memory are used.
        let plan = plan_chain(&v, &[("a", small), ("b", big), ("c", big)], 2).expect("fits");
        assert_eq!(ranges(&plan), vec![(0, 15), (15, 30)]);
        assert_eq!(plan[0].0, "b");
        assert_eq!(plan[1].0, "c");
    }

    #[test]
    fn every_stage_gets_a_layer_and_the_ranges_cover_the_model() {
        let v = version(98 * MIB, 4);
        let plan = plan_chain(&v, &[("a", 100_000 * MIB), ("b", 300 * MIB), ("c", 300 * MIB)], 3).expect("fits");
        assert_eq!(ranges(&plan), vec![(0, 2), (2, 3), (3, 4)]);
        for (layers, weights) in [(30u32, vec![1u64, 1, 1, 1, 1, 1, 1]), (7, vec![0, 0, 0]), (5, vec![9, 1, 1, 1, 1])] {
            let split = split_layers(layers, &weights);
            assert_eq!(split.len(), weights.len());
            assert_eq!(split.first().map(|r| r.0), Some(0));
            assert_eq!(split.last().map(|r| r.1), Some(layers));
            assert!(split.windows(2).all(|w| w[0].1 == w[1].0), "{split:?}");
            assert!(split.iter().all(|(s, e)| s < e), "{split:?}");
        }
    }

    #[test]
    fn impossible_chains_say_why() {
        let v = version(98 * MIB, 30);
        let too_many = plan_chain(&v, &[("a", 1 << 40)], 31).expect_err("refused");
        assert!(too_many.contains("30 layers"), "{too_many}");
        let few_nodes = plan_chain(&v, &[("a", 1 << 40)], 2).expect_err("refused");
        assert!(
            few_nodes.contains("2 stages of about 318 MiB need 2 ready nodes with room; 1 ready node"),
            "{few_nodes}"
        );
        let small = plan_chain(&v, &[("a", 200 * MIB), ("b", 300 * MIB)], 2).expect_err("refused");
        // The node with 200 MiB has nothing beyond the overhead: it gets one layer (and the head).
        assert_eq!(small, "2 stages need 371 MiB and 264 MiB; the nodes with the most room offer 300 MiB and 200 MiB");
        assert!(plan_chain(&v, &[("a", 1 << 40)], 0).is_err());
    }

    #[test]
    fn auto_stages_splits_only_when_the_whole_model_fits_nowhere() {
        let v = version(98 * MIB, 30);
        // A replica needs 98 × 1.25 + 256 = 378.5 MiB; half the model 317.25 MiB; a third 298.2 MiB.
        assert_eq!(auto_stages(&v, &[("a", 379 * MIB), ("b", 100 * MIB)]), Some(1));
        assert_eq!(auto_stages(&v, &[("a", 350 * MIB), ("b", 350 * MIB)]), Some(2));
        assert_eq!(auto_stages(&v, &[("a", 310 * MIB), ("b", 310 * MIB), ("c", 310 * MIB)]), Some(3));
        assert_eq!(auto_stages(&v, &[("a", 310 * MIB), ("b", 310 * MIB)]), None);
        assert_eq!(auto_stages(&v, &[("a", 350 * MIB)]), None);
        let mut embed = version(98 * MIB, 30);
        embed.capabilities = vec!["embedding".into()];
        assert_eq!(auto_stages(&embed, &[("a", 350 * MIB), ("b", 350 * MIB)]), None);
    }

    #[test]
    fn shard_settings_are_checked() {
        let v = version(98 * MIB, 30);
        assert!(check_shards(&v, 0).is_ok() && check_shards(&v, 1).is_ok() && check_shards(&v, 30).is_ok());
        assert!(check_shards(&v, 31).expect_err("refused").contains("30 layers"));
        assert!(check_shards(&v, 65).expect_err("refused").contains("at most 64"));
        let mut echo = version(0, 0);
        echo.capabilities.push("echo".into());
        assert!(check_shards(&echo, 1).is_ok());
        assert_eq!(
            check_shards(&echo, 2).expect_err("refused"),
            "only text-generation models can be split into shards"
        );
    }
}
