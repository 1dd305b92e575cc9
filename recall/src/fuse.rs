//! Reciprocal rank fusion of ranked lists, and the search modes.
//!
//! RRF scores an item `Σ 1 / (k + rank)` over the lists it appears in (ranks from 1), so lists whose scores
//! are not comparable (cosine similarity, BM25) merge on rank alone. `k = 60` is the constant of Cormack,
//! Clarke and Büttcher (2009), also the default of Elasticsearch and OpenSearch.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::query::Hit;

/// The usual RRF constant.
pub const DEFAULT_RRF_K: f32 = 60.0;

/// Which index a search consults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SearchMode {
    /// Nearest neighbours of the query embedding (cosine similarity).
    Dense,
    /// BM25 over the query text.
    Sparse,
    /// Both, merged by reciprocal rank fusion.
    #[default]
    Hybrid,
}

/// One item of a fused list.
#[derive(Debug, Clone, PartialEq)]
pub struct Fused {
    /// The item.
    pub id: u64,
    /// Its RRF score.
    pub score: f32,
    /// Its 1-based rank in each input list, in the order the lists were given; `None` where absent.
    pub ranks: Vec<Option<usize>>,
}

/// Fuses ranked lists of ids (best first) with reciprocal rank fusion and returns the best `limit`.
///
/// An id repeated within one list counts at its best rank only. Ties go to the item with the better best rank,
/// then to the smaller id, so the result is deterministic.
pub fn reciprocal_rank_fusion(lists: &[&[u64]], k: f32, limit: usize) -> Vec<Fused> {
    let mut by_id: HashMap<u64, Fused> = HashMap::new();
    for (list_index, list) in lists.iter().enumerate() {
        for (position, &id) in list.iter().enumerate() {
            let entry = by_id.entry(id).or_insert_with(|| Fused { id, score: 0.0, ranks: vec![None; lists.len()] });
            if entry.ranks[list_index].is_none() {
                let rank = position + 1;
                entry.ranks[list_index] = Some(rank);
                entry.score += 1.0 / (k + rank as f32);
            }
        }
    }
    let mut fused: Vec<Fused> = by_id.into_values().collect();
    fused.sort_by(|a, b| {
        b.score.total_cmp(&a.score).then_with(|| best_rank(a).cmp(&best_rank(b))).then_with(|| a.id.cmp(&b.id))
    });
    fused.truncate(limit);
    fused
}

fn best_rank(f: &Fused) -> usize {
    f.ranks.iter().flatten().copied().min().unwrap_or(usize::MAX)
}

/// Merges the answers of several shards (each already ranked by [`crate::IndexShard::search`]) into the best
/// `k` overall, as the gather step of a scattered search.
///
/// Dense answers merge by cosine similarity and sparse ones by BM25 score (comparable enough across shards of
/// one knowledge base); hybrid answers are re-fused: one global list by dense score, one by BM25 score, then
/// reciprocal rank fusion. Ranks and scores in the result are the global ones. A chunk answered by two
/// replicas counts once.
pub fn merge_shard_hits(mode: SearchMode, shards: Vec<Vec<Hit>>, k: usize) -> Vec<Hit> {
    let mut by_chunk: HashMap<u64, Hit> = HashMap::new();
    for hit in shards.into_iter().flatten() {
        by_chunk.entry(hit.chunk_id).or_insert(hit);
    }
    // Chunk ids ordered best first by one of the two scores.
    let ranked_by = |score: fn(&Hit) -> Option<f32>| -> Vec<u64> {
        let mut scored: Vec<(u64, f32)> = by_chunk.values().filter_map(|h| score(h).map(|s| (h.chunk_id, s))).collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        scored.into_iter().map(|(id, _)| id).collect()
    };
    let dense = ranked_by(|h| h.dense_score);
    let sparse = ranked_by(|h| h.sparse_score);
    let rank_of = |list: &[u64], id: u64| list.iter().position(|&x| x == id).map(|p| p + 1);
    let chosen: Vec<(u64, f32)> = match mode {
        SearchMode::Dense => dense.iter().map(|&id| (id, by_chunk[&id].dense_score.unwrap_or_default())).collect(),
        SearchMode::Sparse => sparse.iter().map(|&id| (id, by_chunk[&id].sparse_score.unwrap_or_default())).collect(),
        SearchMode::Hybrid => reciprocal_rank_fusion(&[&dense, &sparse], DEFAULT_RRF_K, usize::MAX)
            .into_iter()
            .map(|f| (f.id, f.score))
            .collect(),
    };
    let mut out = Vec::with_capacity(k.min(chosen.len()));
    for (id, score) in chosen.into_iter().take(k) {
        if let Some(mut hit) = by_chunk.remove(&id) {
            hit.score = score;
            hit.dense_rank = rank_of(&dense, id);
            hit.sparse_rank = rank_of(&sparse, id);
            out.push(hit);
        }
    }
    out
}

/// One index's ranked list for a query, best first, as (chunk id, score).
pub type RankedList = Vec<(u64, f32)>;

/// How a query's hits were ranked: the final order with scores, and each chunk's 1-based
/// rank and score in the dense and the sparse list (for [`Hit`]'s rank and score fields).
#[derive(Debug, Clone, Default)]
pub struct Ranking {
    pub order: RankedList,
    pub dense: HashMap<u64, (usize, f32)>,
    pub sparse: HashMap<u64, (usize, f32)>,
}

impl Ranking {
    /// Ranks by one list (dense or sparse mode) or fuses both (hybrid), keeping the best `k`.
    pub fn new(mode: SearchMode, dense: RankedList, sparse: RankedList, k: usize) -> Ranking {
        let ranks = |list: &RankedList| -> HashMap<u64, (usize, f32)> {
            list.iter().enumerate().map(|(i, &(id, s))| (id, (i + 1, s))).collect()
        };
        let (dense_ranks, sparse_ranks) = (ranks(&dense), ranks(&sparse));
        let mut order: RankedList = match mode {
            SearchMode::Dense => dense,
            SearchMode::Sparse => sparse,
            SearchMode::Hybrid => {
                let dense_ids: Vec<u64> = dense.iter().map(|h| h.0).collect();
                let sparse_ids: Vec<u64> = sparse.iter().map(|h| h.0).collect();
                reciprocal_rank_fusion(&[&dense_ids, &sparse_ids], DEFAULT_RRF_K, k)
                    .into_iter()
                    .map(|f| (f.id, f.score))
                    .collect()
            }
        };
        order.truncate(k);
        Ranking { order, dense: dense_ranks, sparse: sparse_ranks }
    }

    /// (dense rank, sparse rank, dense score, sparse score) of a chunk.
    pub fn of(&self, chunk_id: u64) -> (Option<usize>, Option<usize>, Option<f32>, Option<f32>) {
        let (d, s) = (self.dense.get(&chunk_id), self.sparse.get(&chunk_id));
        (d.map(|r| r.0), s.map(|r| r.0), d.map(|r| r.1), s.map(|r| r.1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_in_both_lists_rise() {
        let dense = [1, 2, 3, 4];
        let sparse = [3, 5, 1];
        let fused = reciprocal_rank_fusion(&[&dense, &sparse], DEFAULT_RRF_K, 10);
        let ids: Vec<u64> = fused.iter().map(|f| f.id).collect();
        assert_eq!(ids, [1, 3, 2, 5, 4]);
        assert_eq!(fused[0].ranks, [Some(1), Some(3)]);
        assert!((fused[0].score - (1.0 / 61.0 + 1.0 / 63.0)).abs() < 1e-6);
        assert_eq!(fused[3].ranks, [None, Some(2)]);
    }

    #[test]
    fn ties_are_deterministic_and_limit_applies() {
        let a = [7, 8];
        let b = [8, 7];
        let fused = reciprocal_rank_fusion(&[&a, &b], DEFAULT_RRF_K, 1);
        assert_eq!(fused.len(), 1);
        assert_eq!(fused[0].id, 7);
        assert!(reciprocal_rank_fusion(&[], DEFAULT_RRF_K, 5).is_empty());
        // A repeat within a list counts once, at its best rank.
        let fused = reciprocal_rank_fusion(&[&[9, 9, 4]], DEFAULT_RRF_K, 5);
        assert_eq!(fused[0].ranks, [Some(1)]);
        assert_eq!(fused[1].ranks, [Some(3)]);
    }

    fn hit(chunk_id: u64, dense: Option<f32>, sparse: Option<f32>) -> Hit {
        Hit {
            chunk_id,
            doc_id: format!("d{chunk_id}"),
            title: None,
            source: None,
            metadata: Default::default(),
            position: 0,
            text: String::new(),
            score: 0.0,
            dense_rank: None,
            sparse_rank: None,
            dense_score: dense,
            sparse_score: sparse,
        }
    }

    #[test]
    fn shard_answers_merge_by_global_rank() {
        let shard_a = vec![hit(1, Some(0.9), Some(2.0)), hit(2, Some(0.5), None)];
        let shard_b = vec![hit(3, Some(0.8), Some(7.0)), hit(4, None, Some(1.0)), hit(1, Some(0.9), Some(2.0))];
        let ids = |hits: &[Hit]| hits.iter().map(|h| h.chunk_id).collect::<Vec<_>>();
        let dense = merge_shard_hits(SearchMode::Dense, vec![shard_a.clone(), shard_b.clone()], 3);
        assert_eq!(ids(&dense), [1, 3, 2]);
        assert_eq!(dense[1].dense_rank, Some(2));
        assert!((dense[1].score - 0.8).abs() < 1e-6);
        let sparse = merge_shard_hits(SearchMode::Sparse, vec![shard_a.clone(), shard_b.clone()], 10);
        assert_eq!(ids(&sparse), [3, 1, 4]);
        let hybrid = merge_shard_hits(SearchMode::Hybrid, vec![shard_a, shard_b], 2);
        // 1: dense 1, sparse 2; 3: dense 2, sparse 1 — equal RRF, tie to the smaller id.
        assert_eq!(ids(&hybrid), [1, 3]);
        assert_eq!((hybrid[0].dense_rank, hybrid[0].sparse_rank), (Some(1), Some(2)));
    }

    #[test]
    fn search_mode_is_lowercase_json() {
        assert_eq!(serde_json::to_string(&SearchMode::Hybrid).ok().as_deref(), Some("\"hybrid\""));
        assert_eq!(serde_json::from_str::<SearchMode>("\"sparse\"").ok(), Some(SearchMode::Sparse));
        assert!(serde_json::from_str::<SearchMode>("\"Dense\"").is_err());
    }
}
