//! The embedding engine of one replica: requests are batched dynamically (up to
//! [`MAX_BATCH_INPUTS`] texts or [`MAX_WAIT`] of waiting, whichever comes first) and run on
//! one worker thread.

use std::sync::Arc;
use std::time::Duration;

use shoal_engine::Embedder;
use shoal_protocol::metric_names as m;
use tokio::sync::{mpsc, oneshot};

/// Texts embedded together at most.
pub const MAX_BATCH_INPUTS: usize = 64;
/// How long the first request of a batch waits for company once others are already queued
/// behind it. A lone request on an idle replica does not wait: under load, requests that
/// arrive while a batch runs form the next batch.
pub const MAX_WAIT: Duration = Duration::from_micros(500);
/// Requests that may wait; beyond this they are refused.
pub const MAX_QUEUED: usize = 256;

type Reply = oneshot::Sender<Result<(Vec<Vec<f32>>, usize), String>>;

struct Job {
    inputs: Vec<String>,
    reply: Reply,
}

#[derive(Clone)]
pub struct EmbedHandle {
    tx: mpsc::Sender<Job>,
    pub embedder: Arc<Embedder>,
}

impl EmbedHandle {
    pub fn start(embedder: Arc<Embedder>, model: &str) -> Self {
        let (tx, rx) = mpsc::channel(MAX_QUEUED);
        tokio::spawn(batch_loop(embedder.clone(), rx, model.to_string()));
        Self { tx, embedder }
    }

    /// Requests waiting or running.
    pub fn outstanding(&self) -> usize {
        MAX_QUEUED - self.tx.capacity()
    }

    /// Embeds `inputs`; `Err(None)` when the queue is full.
    pub async fn embed(&self, inputs: Vec<String>) -> Result<(Vec<Vec<f32>>, usize), Option<String>> {
        let (reply, rx) = oneshot::channel();
        if self.tx.try_send(Job { inputs, reply }).is_err() {
            metrics::counter!(m::NODE_REQUESTS_REJECTED, "reason" => "queue_full").increment(1);
            return Err(None);
        }
        match rx.await {
            Ok(r) => r.map_err(Some),
            Err(_) => Err(Some("the embedding worker stopped".into())),
        }
    }
}

async fn batch_loop(embedder: Arc<Embedder>, mut rx: mpsc::Receiver<Job>, model: String) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        let mut n = jobs[0].inputs.len();
        let deadline = tokio::time::Instant::now() + MAX_WAIT;
        let busy = !rx.is_empty();
        while n < MAX_BATCH_INPUTS {
            if !busy {
                match rx.try_recv() {
                    Ok(job) => {
                        n += job.inputs.len();
                        jobs.push(job);
                        continue;
                    }
                    Err(_) => break,
                }
            }
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(job)) => {
                    n += job.inputs.len();
                    jobs.push(job);
                }
                _ => break,
            }
        }
        metrics::histogram!(m::NODE_EMBED_BATCH_SIZE, "model" => model.clone()).record(n as f64);
        let texts: Vec<String> = jobs.iter().flat_map(|j| j.inputs.iter().cloned()).collect();
        let e = embedder.clone();
        let result = tokio::task::spawn_blocking(move || e.embed(&texts)).await;
        match result {
            Ok(Ok(out)) => {
                let mut vectors = out.vectors.into_iter();
                let mut tokens = out.tokens.into_iter();
                for job in jobs {
                    let k = job.inputs.len();
                    let v: Vec<Vec<f32>> = vectors.by_ref().take(k).collect();
                    let t: usize = tokens.by_ref().take(k).sum();
                    let _ = job.reply.send(Ok((v, t)));
                }
            }
            Ok(Err(e)) => {
                for job in jobs {
                    let _ = job.reply.send(Err(e.to_string()));
                }
            }
            Err(e) => {
                for job in jobs {
                    let _ = job.reply.send(Err(format!("embedding worker panicked: {e}")));
                }
            }
        }
    }
}
