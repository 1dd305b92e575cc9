//! Recall@10 and queries per second of the dense (HNSW) index against exact brute-force search, in one run.
//!
//! Builds the index over N random-but-clustered unit vectors, then answers Q held-out queries from the same
//! distribution with both, and prints recall@10 (the share of the exact top 10 the index returns) and each one's
//! queries per second, for several `ef_search` values over the same graph.
//!
//! The vectors imitate sentence embeddings: topics (random directions), clusters inside each topic (the topic
//! plus a random offset), and points that spread around their cluster along a few cluster-specific directions
//! plus isotropic noise. The defaults (100 topics × 10 clusters, rank 16, spread 60 %, noise 30 %) give nearest
//! neighbours at cosine ≈ 0.8 and same-topic pairs at ≈ 0.4, as a small sentence-embedding model does; the run
//! prints the actual figures. Larger `--rank`/`--noise` make the data harder (higher intrinsic dimension).
//!
//! ```text
//! cargo run --release -p shoal-recall --example recall_at_10 -- [--n 100000] [--queries 1000] [--dim 384]
//!     [--m 16] [--ef-construction 100] [--ef-search 32,64,128,256] [--seed 1]
//!     [--topics 100] [--clusters 1000] [--topic-spread 70] [--rank 16] [--spread 60] [--noise 30] [--batch 10000]
//! ```

use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shoal_recall::{DenseConfig, DenseIndex};

const K: usize = 10;

struct Args {
    n: usize,
    queries: usize,
    dim: usize,
    m: usize,
    ef_construction: usize,
    /// Candidate list sizes to measure, each against the same graph.
    ef_search: Vec<usize>,
    seed: u64,
    /// Vectors per insert_batch call.
    batch: usize,
    /// Number of topics.
    topics: usize,
    /// Number of clusters, spread evenly over the topics.
    clusters: usize,
    /// Length of a cluster centre's offset from its topic, in percent.
    topic_spread: usize,
    /// Rank of the spread around each cluster centre.
    rank: usize,
    /// Length of the within-cluster spread relative to the (unit) centre, in percent.
    spread: usize,
    /// Length of the isotropic noise relative to the centre, in percent.
    noise: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        n: 100_000,
        queries: 1_000,
        dim: 384,
        m: 16,
        ef_construction: 100,
        ef_search: vec![32, 64, 128, 256],
        seed: 1,
        batch: 10_000,
        topics: 100,
        clusters: 1000,
        topic_spread: 70,
        rank: 16,
        spread: 60,
        noise: 30,
    };
    let raw: Vec<String> = std::env::args().skip(1).collect();
    for pair in raw.chunks(2) {
        let value = || -> usize {
            pair.get(1).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{} needs a number", pair[0]))
        };
        match pair[0].as_str() {
            "--n" => args.n = value(),
            "--queries" => args.queries = value(),
            "--dim" => args.dim = value(),
            "--m" => args.m = value(),
            "--ef-construction" => args.ef_construction = value(),
            "--ef-search" => {
                args.ef_search = pair
                    .get(1)
                    .map(|list| list.split(',').filter_map(|v| v.parse().ok()).collect())
                    .filter(|list: &Vec<usize>| !list.is_empty())
                    .unwrap_or_else(|| panic!("--ef-search needs numbers, comma-separated"))
            }
            "--seed" => args.seed = value() as u64,
            "--batch" => args.batch = value().max(1),
            "--topics" => args.topics = value().max(1),
            "--clusters" => args.clusters = value().max(1),
            "--topic-spread" => args.topic_spread = value(),
            "--rank" => args.rank = value(),
            "--spread" => args.spread = value(),
            "--noise" => args.noise = value(),
            other => panic!("unknown argument {other}"),
        }
    }
    args
}

/// A standard normal sample (Box–Muller).
fn gaussian(rng: &mut StdRng) -> f32 {
    let u1: f32 = rng.random_range(f32::EPSILON..1.0);
    let u2: f32 = rng.random::<f32>();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

fn random_direction(rng: &mut StdRng, dim: usize) -> Vec<f32> {
    let v: Vec<f32> = (0..dim).map(|_| gaussian(rng)).collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / norm).collect()
}

/// Cluster centres (each near a topic), and for each a basis of `rank` random directions along which its points
/// spread.
struct Clusters {
    centres: Vec<Vec<f32>>,
    bases: Vec<Vec<Vec<f32>>>,
    spread: f32,
    noise: f32,
}

impl Clusters {
    fn new(rng: &mut StdRng, args: &Args) -> Self {
        let topics: Vec<Vec<f32>> = (0..args.topics).map(|_| random_direction(rng, args.dim)).collect();
        let offset = args.topic_spread as f32 / 100.0;
        let centres = (0..args.clusters)
            .map(|c| {
                let topic = &topics[c % topics.len()];
                let direction = random_direction(rng, args.dim);
                let centre: Vec<f32> = topic.iter().zip(&direction).map(|(t, d)| t + offset * d).collect();
                let norm = centre.iter().map(|x| x * x).sum::<f32>().sqrt();
                centre.into_iter().map(|x| x / norm).collect()
            })
            .collect();
        let bases =
            (0..args.clusters).map(|_| (0..args.rank).map(|_| random_direction(rng, args.dim)).collect()).collect();
        Clusters { centres, bases, spread: args.spread as f32 / 100.0, noise: args.noise as f32 / 100.0 }
    }

    fn sample(&self, rng: &mut StdRng) -> Vec<f32> {
        let c = rng.random_range(0..self.centres.len());
        let dim = self.centres[c].len();
        let mut v = self.centres[c].clone();
        let scale = self.spread / (self.bases[c].len().max(1) as f32).sqrt();
        for direction in &self.bases[c] {
            let a = gaussian(rng) * scale;
            for (x, d) in v.iter_mut().zip(direction) {
                *x += a * d;
            }
        }
        let noise = self.noise / (dim as f32).sqrt();
        for x in v.iter_mut() {
            *x += gaussian(rng) * noise;
        }
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / norm).collect()
    }
}

fn main() -> Result<(), shoal_recall::RecallError> {
    let args = parse_args();
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!(
        "dense recall@{K}: n={} queries={} dim={} M={} ef_construction={} ef_search={:?} topics={} clusters={} \
         topic_spread={}% rank={} spread={}% noise={}% threads={threads}",
        args.n,
        args.queries,
        args.dim,
        args.m,
        args.ef_construction,
        args.ef_search,
        args.topics,
        args.clusters,
        args.topic_spread,
        args.rank,
        args.spread,
        args.noise
    );
    let mut rng = StdRng::seed_from_u64(args.seed);
    let clusters = Clusters::new(&mut rng, &args);
    let data: Vec<(u64, Vec<f32>)> = (0..args.n as u64).map(|id| (id, clusters.sample(&mut rng))).collect();
    let queries: Vec<Vec<f32>> = (0..args.queries).map(|_| clusters.sample(&mut rng)).collect();

    let config = DenseConfig {
        dimension: args.dim,
        max_connections: args.m,
        ef_construction: args.ef_construction,
        ef_search: args.ef_search[0],
        exact_search_below: 0,
    };
    let mut index = DenseIndex::new(config)?;
    let start = Instant::now();
    for batch in data.chunks(args.batch) {
        index.insert_batch(batch)?;
    }
    let build = start.elapsed().as_secs_f64();
    println!("build: {build:.1} s ({:.0} vectors/s)", args.n as f64 / build);

    let all = |_: u64| true;
    let start = Instant::now();
    let mut exact = Vec::with_capacity(queries.len());
    for q in &queries {
        exact.push(index.brute_force_search(q, K, &all)?);
    }
    let exact_qps = queries.len() as f64 / start.elapsed().as_secs_f64();
    let mean_cosine = |rank: usize| {
        exact.iter().filter_map(|hits| hits.get(rank).map(|h| h.1)).sum::<f32>() / exact.len().max(1) as f32
    };
    println!("data: mean cosine of the nearest neighbour {:.3}, of the 10th {:.3}", mean_cosine(0), mean_cosine(K - 1));
    println!(
        "brute force:          {exact_qps:>8.0} QPS ({:.3} ms/query, one thread), recall 1 by definition",
        1000.0 / exact_qps
    );

    for &ef in &args.ef_search {
        index.set_ef_search(ef);
        let start = Instant::now();
        let mut approximate = Vec::with_capacity(queries.len());
        for q in &queries {
            approximate.push(index.search(q, K, &all)?);
        }
        let hnsw_qps = queries.len() as f64 / start.elapsed().as_secs_f64();
        let found: usize = approximate
            .iter()
            .zip(&exact)
            .map(|(a, e)| a.iter().filter(|(id, _)| e.iter().any(|(x, _)| x == id)).count())
            .sum();
        let recall = found as f64 / (queries.len() * K) as f64;
        println!(
            "hnsw ef_search={ef:<4}: {hnsw_qps:>8.0} QPS ({:.3} ms/query, one thread), recall@{K} {recall:.4}, {:.1}x brute force",
            1000.0 / hnsw_qps,
            hnsw_qps / exact_qps
        );
    }
    Ok(())
}
