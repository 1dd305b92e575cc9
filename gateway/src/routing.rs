//! The router's choice of a replica, as a pure function of the candidates, their loads, the
//! ones already tried and a random source: power of two choices (two untried candidates
//! drawn at random, the less loaded one wins; the first drawn on a tie). The router feeds it
//! loads it counts itself and loads nodes report; tests feed it seeded generators.

use rand::Rng;

/// The index in `loads` of the candidate to try next, or `None` when every one was tried.
/// `loads[i]` is candidate `i`'s outstanding work; `tried[i]` says it was already tried.
pub fn choose(loads: &[u32], tried: &[bool], rng: &mut impl Rng) -> Option<usize> {
    let fresh: Vec<usize> = (0..loads.len()).filter(|i| !tried.get(*i).copied().unwrap_or(false)).collect();
    match fresh.len() {
        0 => None,
        1 => Some(fresh[0]),
        n => {
            let a = rng.random_range(0..n);
            let mut b = rng.random_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            let (a, b) = (fresh[a], fresh[b]);
            Some(if loads[b] < loads[a] { b } else { a })
        }
    }
}

/// A node as [`stdio_hosts`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToolHost<'a> {
    pub name: &'a str,
    /// Its lease is live.
    pub ready: bool,
    /// It was started with `--mcp-stdio`.
    pub mcp_stdio: bool,
    pub draining: bool,
}

/// The nodes to try, in order, for starting a stdio MCP server: ready, started with
/// `--mcp-stdio`, not draining, by name (so a server starts on the same node while that
/// node is up), then by position for equal names.
pub fn stdio_hosts(nodes: &[ToolHost<'_>]) -> Vec<usize> {
    let mut order: Vec<usize> =
        (0..nodes.len()).filter(|&i| nodes[i].ready && nodes[i].mcp_stdio && !nodes[i].draining).collect();
    order.sort_by(|&a, &b| nodes[a].name.cmp(nodes[b].name).then(a.cmp(&b)));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdio_servers_start_on_ready_opted_in_nodes_by_name() {
        let host = |name, ready, mcp_stdio, draining| ToolHost { name, ready, mcp_stdio, draining };
        assert!(stdio_hosts(&[]).is_empty());
        let nodes = [
            host("gpu-2", true, true, false),
            host("gpu-1", true, false, false),
            host("cpu-9", false, true, false),
            host("cpu-1", true, true, true),
            host("cpu-3", true, true, false),
            host("gpu-2", true, true, false),
        ];
        assert_eq!(stdio_hosts(&nodes), vec![4, 0, 5]);
        assert!(stdio_hosts(&nodes[1..4]).is_empty(), "not opted in, down, or draining");
    }
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn nothing_left_to_try_is_none_and_a_single_candidate_is_taken() {
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(choose(&[], &[], &mut rng), None);
        assert_eq!(choose(&[5, 0], &[true, true], &mut rng), None);
        assert_eq!(choose(&[5, 0], &[false, true], &mut rng), Some(0));
        assert_eq!(choose(&[7], &[], &mut rng), Some(0));
    }

    #[test]
    fn of_two_the_less_loaded_wins_whatever_the_draw() {
        for seed in 0..50 {
            let mut rng = StdRng::seed_from_u64(seed);
            assert_eq!(choose(&[3, 1], &[false, false], &mut rng), Some(1));
            assert_eq!(choose(&[0, 9, 4], &[false, true, false], &mut rng), Some(0));
        }
    }

    #[test]
    fn the_most_loaded_of_many_is_never_chosen_and_draws_follow_the_seed() {
        let loads = [4, 4, 4, 9];
        let picks: Vec<usize> = {
            let mut rng = StdRng::seed_from_u64(7);
            (0..400).map(|_| choose(&loads, &[], &mut rng).expect("a pick")).collect()
        };
        assert!(!picks.contains(&3), "the busiest replica was chosen");
        // Equal loads share the work: each of the three gets a fair part of 400 picks.
        for i in 0..3 {
            let n = picks.iter().filter(|p| **p == i).count();
            assert!((90..=180).contains(&n), "candidate {i} chosen {n} times");
        }
        // Exactly reproducible from the seed.
        let mut rng = StdRng::seed_from_u64(7);
        let again: Vec<usize> = (0..400).map(|_| choose(&loads, &[], &mut rng).expect("a pick")).collect();
        assert_eq!(picks, again);
    }

    #[test]
    fn ties_go_to_the_first_drawn() {
        // With two equal candidates the first draw decides; over seeds both are used.
        let firsts: Vec<usize> =
            (0..40).map(|seed| choose(&[2, 2], &[], &mut StdRng::seed_from_u64(seed)).expect("a pick")).collect();
        assert!(firsts.contains(&0) && firsts.contains(&1));
    }
}
