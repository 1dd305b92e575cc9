//! The gateway's own recent history for the console's charts (requests/s, errors, time to
//! first token, tokens/s, node load over the last 15 minutes), so that the console needs no
//! Prometheus: cumulative counters bumped where requests are metered, sampled every
//! [`SAMPLE_EVERY`] into a ring of [`KEEP`] samples. The ring is pure (tested here); the
//! sampling task reads the clock and the cluster view.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

/// How often a sample is taken.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Samples kept: 15 minutes.
pub const KEEP: usize = 180;

/// Totals since the gateway started.
#[derive(Debug, Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub tokens: AtomicU64,
    pub ttft_micros: AtomicU64,
    pub ttft_count: AtomicU64,
}

impl Counters {
    pub fn request(&self, ok: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    pub fn first_token(&self, after: Duration) {
        self.ttft_micros.fetch_add(after.as_micros() as u64, Ordering::Relaxed);
        self.ttft_count.fetch_add(1, Ordering::Relaxed);
    }
    pub fn tokens(&self, n: u64) {
        self.tokens.fetch_add(n, Ordering::Relaxed);
    }
}

/// One node's load when a sample was taken.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NodeLoad {
    pub node: String,
    /// 1-minute load average.
    pub cpu_load: f64,
    pub in_flight: u32,
    pub queue_depth: u32,
}

/// The counters' totals and the nodes' load at one moment.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Sample {
    pub at_ms: u64,
    pub requests: u64,
    pub errors: u64,
    pub tokens: u64,
    pub ttft_seconds_sum: f64,
    pub ttft_count: u64,
    pub nodes: Vec<NodeLoad>,
}

/// One interval between two samples, as rates.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Point {
    pub at_ms: u64,
    pub requests_per_s: f64,
    pub errors_per_s: f64,
    pub tokens_per_s: f64,
    /// Mean time to first token of the requests that got one in the interval (None: none did).
    pub ttft_seconds: Option<f64>,
    pub nodes: Vec<NodeLoad>,
}

/// The last [`KEEP`] samples.
#[derive(Debug, Default)]
pub struct History {
    pub counters: Counters,
    samples: Mutex<VecDeque<Sample>>,
}

impl History {
    /// Takes a sample of the counters now.
    pub fn sample(&self, at_ms: u64, nodes: Vec<NodeLoad>) {
        let c = &self.counters;
        let s = Sample {
            at_ms,
            requests: c.requests.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            tokens: c.tokens.load(Ordering::Relaxed),
            ttft_seconds_sum: c.ttft_micros.load(Ordering::Relaxed) as f64 / 1e6,
            ttft_count: c.ttft_count.load(Ordering::Relaxed),
            nodes,
        };
        push(&mut self.samples.lock().unwrap_or_else(|p| p.into_inner()), s);
    }

    /// The rates between consecutive samples, oldest first.
    pub fn points(&self) -> Vec<Point> {
        let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        rates(samples.iter())
    }
}

/// Appends a sample, dropping the oldest beyond [`KEEP`].
pub fn push(ring: &mut VecDeque<Sample>, s: Sample) {
    ring.push_back(s);
    while ring.len() > KEEP {
        ring.pop_front();
    }
}

/// Rates over each interval of consecutive samples.
pub fn rates<'a>(samples: impl Iterator<Item = &'a Sample>) -> Vec<Point> {
    let samples: Vec<&Sample> = samples.collect();
    samples
        .windows(2)
        .filter_map(|w| {
            let (a, b) = (w[0], w[1]);
            let secs = b.at_ms.checked_sub(a.at_ms).filter(|ms| *ms > 0)? as f64 / 1000.0;
            let per_s = |x: u64, y: u64| y.saturating_sub(x) as f64 / secs;
            let first_tokens = b.ttft_count.saturating_sub(a.ttft_count);
            Some(Point {
                at_ms: b.at_ms,
                requests_per_s: per_s(a.requests, b.requests),
                errors_per_s: per_s(a.errors, b.errors),
                tokens_per_s: per_s(a.tokens, b.tokens),
                ttft_seconds: (first_tokens > 0)
                    .then(|| (b.ttft_seconds_sum - a.ttft_seconds_sum).max(0.0) / first_tokens as f64),
                nodes: b.nodes.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: u64, requests: u64, tokens: u64, ttft_sum: f64, ttft_count: u64) -> Sample {
        Sample { at_ms, requests, errors: 0, tokens, ttft_seconds_sum: ttft_sum, ttft_count, nodes: Vec::new() }
    }

    #[test]
    fn rates_are_per_second_over_each_interval() {
        let s = [sample(0, 0, 0, 0.0, 0), sample(5_000, 10, 500, 2.0, 10), sample(10_000, 10, 500, 2.0, 10)];
        let p = rates(s.iter());
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].requests_per_s, p[0].tokens_per_s, p[0].ttft_seconds), (2.0, 100.0, Some(0.2)));
        assert_eq!((p[1].requests_per_s, p[1].ttft_seconds), (0.0, None));
    }

    #[test]
    fn the_ring_keeps_fifteen_minutes_and_skips_bad_intervals() {
        let mut ring = VecDeque::new();
        for i in 0..(KEEP as u64 + 20) {
            push(&mut ring, sample(i * 5_000, i, 0, 0.0, 0));
        }
        assert_eq!(ring.len(), KEEP);
        assert_eq!(ring.front().map(|s| s.at_ms), Some(20 * 5_000));
        // A clock that did not move gives no point rather than a division by zero.
        let same = [sample(1_000, 0, 0, 0.0, 0), sample(1_000, 5, 0, 0.0, 0)];
        assert!(rates(same.iter()).is_empty());
    }
}
