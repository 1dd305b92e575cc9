//! The embedding engine of one replica: one task owns the queue of requests and runs one
//! batch at a time on the engine's thread pool.
//!
//! A request is embedded in pieces: each batch holds at most [`MAX_BATCH_INPUTS`] texts,
//! shared round-robin by every waiting request ([`plan_batch`]), so a small request that
//! arrives behind a huge one is served in the next batch instead of after it. A request whose
//! caller went away (its reply channel closed) is dropped before its next piece is computed.
//! At most [`MAX_QUEUED`] requests wait or run; beyond that a request is refused at once.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use shoal_engine::Embedder;
use shoal_protocol::metric_names as m;
use tokio::sync::{mpsc, oneshot, watch};

/// Texts embedded together at most (one batch).
pub const MAX_BATCH_INPUTS: usize = 64;
/// Requests that may wait or run at once; beyond this they are refused (Overloaded).
pub const MAX_QUEUED: usize = 256;

type Reply = oneshot::Sender<Result<(Vec<Vec<f32>>, usize), String>>;

/// How many inputs each waiting request puts into the next batch, given how many each still
/// has (in queue order): one from each in turn until the batch holds `max` or none is left.
pub fn plan_batch(remaining: &[usize], max: usize) -> Vec<usize> {
    let mut take = vec![0; remaining.len()];
    let mut total = 0;
    loop {
        let mut progressed = false;
        for (t, &r) in take.iter_mut().zip(remaining) {
            if total == max {
                return take;
            }
            if *t < r {
                *t += 1;
                total += 1;
                progressed = true;
            }
        }
        if !progressed {
            return take;
        }
    }
}

/// What a replica's batcher has done so far (a hook for tests and for metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmbedStats {
    /// Batches computed.
    pub batches: u64,
    /// Inputs embedded.
    pub inputs: u64,
    /// Requests dropped because their caller went away.
    pub abandoned: u64,
}

/// Frees a place in the queue when the request is answered or dropped.
struct Place(Arc<AtomicUsize>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

struct Job {
    inputs: Vec<String>,
    reply: Reply,
    _place: Place,
}

/// A request being embedded piece by piece.
struct Running {
    job: Job,
    next: usize,
    vectors: Vec<Vec<f32>>,
    tokens: usize,
}

impl Running {
    fn remaining(&self) -> usize {
        self.job.inputs.len() - self.next
    }

    /// Answers the caller, its place in the queue freed first.
    fn answer(self, result: Result<(Vec<Vec<f32>>, usize), String>) {
        let Job { reply, _place, .. } = self.job;
        drop(_place);
        let _ = reply.send(result);
    }
}

#[derive(Clone)]
pub struct EmbedHandle {
    tx: mpsc::Sender<Job>,
    queued: Arc<AtomicUsize>,
    stats: watch::Receiver<EmbedStats>,
    pub embedder: Arc<Embedder>,
}

impl EmbedHandle {
    pub fn start(embedder: Arc<Embedder>, model: &str) -> Self {
        let (tx, rx) = mpsc::channel(MAX_QUEUED);
        let (stats_tx, stats) = watch::channel(EmbedStats::default());
        tokio::spawn(batch_loop(embedder.clone(), rx, model.to_string(), stats_tx));
        Self { tx, queued: Arc::new(AtomicUsize::new(0)), stats, embedder }
    }

    /// Requests waiting or running.
    pub fn outstanding(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// What the batcher has done so far; `changed()` fires after every batch.
    pub fn stats(&self) -> watch::Receiver<EmbedStats> {
        self.stats.clone()
    }

    /// Embeds `inputs`; `Err(None)` when the queue is full. Dropping the future abandons the
    /// request: its pieces not yet computed are not computed.
    pub async fn embed(&self, inputs: Vec<String>) -> Result<(Vec<Vec<f32>>, usize), Option<String>> {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= MAX_QUEUED {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            metrics::counter!(m::NODE_REQUESTS_REJECTED, "reason" => "queue_full").increment(1);
            return Err(None);
        }
        let place = Place(self.queued.clone());
        if inputs.is_empty() {
            return Ok((Vec::new(), 0));
        }
        let (reply, rx) = oneshot::channel();
        if self.tx.try_send(Job { inputs, reply, _place: place }).is_err() {
            return Err(Some("the embedding worker stopped".into()));
        }
        match rx.await {
            Ok(r) => r.map_err(Some),
            Err(_) => Err(Some("the embedding worker stopped".into())),
        }
    }
}

/// One piece's vectors and per-input token counts, or why it failed.
type PieceResult = Result<(Vec<Vec<f32>>, Vec<usize>), String>;

async fn run(embedder: &Arc<Embedder>, texts: Vec<String>) -> Result<(Vec<Vec<f32>>, Vec<usize>), String> {
    let (tx, rx) = oneshot::channel();
    embedder.embed_then(texts, move |result| {
        let _ = tx.send(result);
    });
    match rx.await {
        Ok(Ok(out)) => Ok((out.vectors, out.tokens)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("the embedding worker stopped".into()),
    }
}

/// Embeds every piece of a batch together; when that fails and several requests share the
/// batch, each piece again on its own, so one bad input fails only its own request.
async fn run_pieces(embedder: &Arc<Embedder>, pieces: Vec<Vec<String>>) -> Vec<PieceResult> {
    let counts: Vec<usize> = pieces.iter().map(Vec::len).collect();
    let all: Vec<String> = pieces.iter().flatten().cloned().collect();
    match run(embedder, all).await {
        Ok((vectors, tokens)) => {
            let (mut vectors, mut tokens) = (vectors.into_iter(), tokens.into_iter());
            counts
                .iter()
                .map(|&k| Ok((vectors.by_ref().take(k).collect(), tokens.by_ref().take(k).collect())))
                .collect()
        }
        Err(e) if pieces.len() == 1 => vec![Err(e)],
        Err(_) => {
            let mut out = Vec::with_capacity(pieces.len());
            for p in pieces {
                out.push(run(embedder, p).await);
            }
            out
        }
    }
}

async fn batch_loop(
    embedder: Arc<Embedder>,
    mut rx: mpsc::Receiver<Job>,
    model: String,
    stats_tx: watch::Sender<EmbedStats>,
) {
    let mut queue: VecDeque<Running> = VecDeque::new();
    let mut stats = EmbedStats::default();
    let start = |job| Running { job, next: 0, vectors: Vec::new(), tokens: 0 };
    loop {
        if queue.is_empty() {
            match rx.recv().await {
                Some(job) => queue.push_back(start(job)),
                None => return,
            }
        }
        // Requests that arrived while the last batch ran share the next one.
        while let Ok(job) = rx.try_recv() {
            queue.push_back(start(job));
        }
        // Work for callers that went away is dropped before it is computed.
        let before = queue.len();
        queue.retain(|r| !r.job.reply.is_closed());
        if queue.len() < before {
            let n = (before - queue.len()) as u64;
            stats.abandoned += n;
            metrics::counter!(m::NODE_SEQUENCES_CANCELLED, "model" => model.clone()).increment(n);
        }
        if queue.is_empty() {
            stats_tx.send_replace(stats);
            continue;
        }
        let remaining: Vec<usize> = queue.iter().map(Running::remaining).collect();
        let take = plan_batch(&remaining, MAX_BATCH_INPUTS);
        let pieces: Vec<Vec<String>> = queue
            .iter()
            .zip(&take)
            .filter(|(_, &k)| k > 0)
            .map(|(r, &k)| r.job.inputs[r.next..r.next + k].to_vec())
            .collect();
        let n: usize = take.iter().sum();
        metrics::histogram!(m::NODE_EMBED_BATCH_SIZE, "model" => model.clone()).record(n as f64);
        let mut results = run_pieces(&embedder, pieces).await.into_iter();
        stats.batches += 1;
        stats.inputs += n as u64;
        // Finished requests are answered; those served that still have inputs go to the back.
        let mut waiting = VecDeque::with_capacity(queue.len());
        let mut served = VecDeque::new();
        for (mut r, k) in queue.drain(..).zip(take) {
            if k == 0 {
                waiting.push_back(r);
                continue;
            }
            match results.next().unwrap_or_else(|| Err("the batch lost a piece".into())) {
                Ok((vectors, tokens)) => {
                    r.vectors.extend(vectors);
                    r.tokens += tokens.iter().sum::<usize>();
                    r.next += k;
                    if r.remaining() == 0 {
                        let (vectors, tokens) = (std::mem::take(&mut r.vectors), r.tokens);
                        r.answer(Ok((vectors, tokens)));
                    } else {
                        served.push_back(r);
                    }
                }
                Err(e) => r.answer(Err(e)),
            }
        }
        waiting.extend(served);
        queue = waiting;
        stats_tx.send_replace(stats);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_shared_round_robin_and_capped() {
        // A huge request alone fills a batch; a small one behind it gets all it needs at once.
        assert_eq!(plan_batch(&[2048], 64), [64]);
        assert_eq!(plan_batch(&[1000, 3], 64), [61, 3]);
        assert_eq!(plan_batch(&[3, 1000], 64), [3, 61]);
        // Two huge requests split evenly; an odd place goes to the first in the queue.
        assert_eq!(plan_batch(&[500, 500], 64), [32, 32]);
        assert_eq!(plan_batch(&[500, 500, 500], 64), [22, 21, 21]);
        // Less than a batch in all: everything goes.
        assert_eq!(plan_batch(&[5, 1, 7], 64), [5, 1, 7]);
        // More requests than places: one each, in queue order.
        assert_eq!(plan_batch(&[2; 70], 64), [vec![1; 64], vec![0; 6]].concat());
        // Nothing waiting, or requests with nothing left.
        assert_eq!(plan_batch(&[], 64), Vec::<usize>::new());
        assert_eq!(plan_batch(&[0, 4], 64), [0, 4]);
    }

    fn embedder() -> Arc<Embedder> {
        let dir = std::env::var_os("SHOAL_MODELS_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models"));
        Arc::new(Embedder::load(&dir.join("all-minilm-l6-v2")).expect("load MiniLM (./scripts/fetch-models.sh)"))
    }

    fn texts(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix} sentence number {i} about lighthouses")).collect()
    }

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
        dot / (na * nb)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_small_request_behind_a_huge_one_finishes_first_and_abandoned_work_is_dropped() {
        let e = embedder();
        let h = EmbedHandle::start(e.clone(), "minilm");
        let mut stats = h.stats();
        let (done_tx, mut done) = mpsc::unbounded_channel();

        // 1,000 inputs, then 3 behind them: the small one finishes first, within two batches.
        let big_inputs = texts("big", 1000);
        let big = tokio::spawn({
            let (h, inputs, done_tx) = (h.clone(), big_inputs.clone(), done_tx.clone());
            async move {
                let r = h.embed(inputs).await;
                let _ = done_tx.send("big");
                r
            }
        });
        stats.wait_for(|s| s.batches >= 1).await.expect("stats");
        let small = h.embed(texts("small", 3)).await.expect("small");
        let _ = done_tx.send("small");
        assert_eq!(small.0.len(), 3);
        let (vectors, tokens) = big.await.expect("join").expect("big");
        assert_eq!(done.recv().await, Some("small"));
        assert_eq!(done.recv().await, Some("big"));
        // Every vector came back in its input's place, no batch was larger than 64.
        assert_eq!(vectors.len(), 1000);
        assert!(tokens > 1000);
        for i in [0, 63, 64, 500, 999] {
            let alone = e.embed(&big_inputs[i..=i]).expect("embed alone");
            assert!(cosine(&vectors[i], &alone.vectors[0]) > 0.999, "input {i} answered in order");
        }
        let s = *h.stats().borrow();
        assert_eq!(s.inputs, 1003);
        assert!(s.batches >= 1003u64.div_ceil(64), "{s:?}");

        // A caller that gives up: the rest of its request is never computed.
        let before = *h.stats().borrow();
        let gone = tokio::spawn({
            let h = h.clone();
            async move { h.embed(texts("gone", 1000)).await }
        });
        stats.wait_for(|s| s.batches > before.batches).await.expect("stats");
        gone.abort();
        let _ = gone.await;
        // The next request is answered after at most the batch in flight.
        let after = h.embed(texts("after", 2)).await.expect("after");
        assert_eq!(after.0.len(), 2);
        // `after` may share a batch with the abandoned request's next piece; the batcher
        // drops the abandoned request when it plans the batch after that one.
        let waited =
            tokio::time::timeout(std::time::Duration::from_secs(30), stats.wait_for(|s| s.abandoned >= 1)).await;
        assert!(waited.is_ok(), "the abandoned request was never dropped: {:?}", *h.stats().borrow());
        let s = *h.stats().borrow();
        assert_eq!(s.abandoned, 1, "{s:?}");
        let computed_for_gone = s.inputs - before.inputs - 2;
        assert!(computed_for_gone <= 2 * MAX_BATCH_INPUTS as u64, "only what was in flight: {s:?}");
        assert_eq!(h.outstanding(), 0, "the abandoned request left the queue");
    }

    #[tokio::test]
    async fn a_full_queue_is_refused_at_once() {
        let e = embedder();
        let h = EmbedHandle::start(e, "minilm");
        h.queued.store(MAX_QUEUED, Ordering::Release);
        assert_eq!(h.embed(vec!["x".into()]).await, Err(None));
        h.queued.store(0, Ordering::Release);
        assert_eq!(h.embed(Vec::new()).await, Ok((Vec::new(), 0)));
        assert_eq!(h.outstanding(), 0);
    }
}
