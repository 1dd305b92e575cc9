//! A stage of a split model that is not the head: a worker thread owns the layers and one KV
//! cache per sequence, runs the forward passes that arrive in order, and (on the last stage)
//! samples the next token of each sequence. The data plane relays activations onwards.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_engine::{HiddenStates, KvCache, Llm, SequenceSampler, StageInput, StageOutput};
use shoal_protocol::metric_names as m;
use shoal_protocol::{StageForward, StageRows, TensorFrame};
use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::pipeline::Link;
use crate::NodeError;

/// A sequence nobody has touched for this long is dropped (its head died without releasing it).
pub const SEQUENCE_IDLE_EXPIRY: Duration = Duration::from_secs(120);

/// What a stage's forward pass produced.
pub enum StageOut {
    /// Activations for the next stage.
    Hidden { sequences: Vec<StageRows>, hidden: TensorFrame, compute_us: u64 },
    /// The last stage's sampled tokens.
    Tokens { tokens: Vec<(u64, u32)>, compute_us: u64 },
}

enum Job {
    Forward { frame: StageForward, reply: oneshot::Sender<Result<StageOut, String>> },
    Release(Vec<u64>),
    Stop,
}

/// A handle to a running stage; cheap to clone.
#[derive(Clone)]
pub struct StageHandle {
    tx: std_mpsc::Sender<Job>,
    sequences: Arc<AtomicUsize>,
    /// Where this stage's output goes.
    pub link: Link,
    /// Position in the chain.
    pub index: u32,
    pub model: String,
}

struct Seq {
    cache: KvCache,
    sampler: Option<SequenceSampler>,
    last_used: Instant,
}

impl StageHandle {
    pub fn start(llm: Arc<Llm>, model: &str, index: u32, link: Link) -> Result<Self, NodeError> {
        let (tx, rx) = std_mpsc::channel();
        let sequences = Arc::new(AtomicUsize::new(0));
        let worker = Worker {
            llm,
            seqs: HashMap::new(),
            count: sequences.clone(),
            model: model.to_string(),
            stage: index.to_string(),
        };
        std::thread::Builder::new()
            .name(format!("stage{index}-{model}"))
            .spawn(move || worker.run(rx))
            .map_err(|e| NodeError::io("stage thread", e))?;
        Ok(Self { tx, sequences, link, index, model: model.to_string() })
    }

    /// Sequences this stage holds state for.
    pub fn outstanding(&self) -> usize {
        self.sequences.load(Ordering::Relaxed)
    }

    /// Runs this stage's layers over a frame (queued behind earlier frames).
    pub async fn forward(&self, frame: StageForward) -> Result<StageOut, String> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Job::Forward { frame, reply }).map_err(|_| "the stage is stopping".to_string())?;
        rx.await.map_err(|_| "the stage is stopping".to_string())?
    }

    /// Forgets sequences (finished or cancelled).
    pub fn release(&self, ids: Vec<u64>) {
        let _ = self.tx.send(Job::Release(ids));
    }

    pub fn stop(&self) {
        let _ = self.tx.send(Job::Stop);
    }
}

struct Worker {
    llm: Arc<Llm>,
    seqs: HashMap<u64, Seq>,
    count: Arc<AtomicUsize>,
    model: String,
    stage: String,
}

impl Worker {
    fn run(mut self, rx: std_mpsc::Receiver<Job>) {
        loop {
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(Job::Forward { frame, reply }) => {
                    let out = self.forward(frame);
                    let _ = reply.send(out);
                }
                Ok(Job::Release(ids)) => {
                    for id in ids {
                        if self.seqs.remove(&id).is_some() {
                            debug!(id, stage = %self.stage, "sequence released");
                        }
                    }
                }
                Ok(Job::Stop) | Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                    self.seqs.clear();
                    self.publish();
                    return;
                }
                Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            }
            let before = self.seqs.len();
            self.seqs.retain(|_, s| s.last_used.elapsed() < SEQUENCE_IDLE_EXPIRY);
            if self.seqs.len() < before {
                warn!(dropped = before - self.seqs.len(), stage = %self.stage, "dropped sequences nobody released");
            }
            self.publish();
        }
    }

    fn publish(&self) {
        self.count.store(self.seqs.len(), Ordering::Relaxed);
        let labels = [("model", self.model.clone()), ("stage", self.stage.clone())];
        metrics::gauge!(m::STAGE_SEQUENCES, &labels).set(self.seqs.len() as f64);
        let kv: usize = self.seqs.values().map(|s| s.cache.len()).sum();
        metrics::gauge!(m::STAGE_KV_TOKENS, &labels).set(kv as f64);
    }

    fn forward(&mut self, frame: StageForward) -> Result<StageOut, String> {
        let hidden = self.llm.hidden_size();
        let rows = frame.hidden.check_matrix(hidden)?;
        let counts: Vec<usize> = frame.sequences.iter().map(|s| s.rows as usize).collect();
        if frame.sequences.is_empty() || counts.contains(&0) || counts.iter().sum::<usize>() != rows {
            return Err(format!(
                "the frame's {} sequences announce {:?} rows but the tensor has {rows}",
                frame.sequences.len(),
                counts
            ));
        }
        let last = self.llm.is_last_stage();
        // Take each sequence's state out of the map (new ones start fresh), checking positions.
        let mut taken = Vec::with_capacity(frame.sequences.len());
        for r in &frame.sequences {
            let state = if r.start == 0 {
                let sampler = match (&r.begin, last) {
                    (Some(b), true) => Some(SequenceSampler::new(super::sampling_params(&b.sampling), &b.history)),
                    (None, true) => {
                        return Err(format!("sequence {} starts without its sampling settings", r.sequence))
                    }
                    (_, false) => None,
                };
                Seq { cache: self.llm.new_cache(), sampler, last_used: Instant::now() }
            } else {
                match self.seqs.remove(&r.sequence) {
                    Some(s) if s.cache.len() == r.start as usize => s,
                    Some(s) => {
                        let held = s.cache.len();
                        self.seqs.insert(r.sequence, s);
                        return Err(format!(
                            "sequence {} is at position {held} on this stage but the frame continues at {}",
                            r.sequence, r.start
                        ));
                    }
                    None => {
                        return Err(format!(
                            "this stage holds no state for sequence {} (it was restarted or re-placed)",
                            r.sequence
                        ))
                    }
                }
            };
            taken.push((r.sequence, state));
        }
        let started = Instant::now();
        let input = HiddenStates { data: frame.hidden.to_f32(), counts, hidden };
        let mut caches: Vec<&mut KvCache> = taken.iter_mut().map(|(_, s)| &mut s.cache).collect();
        let output = self.llm.forward_stage(&mut caches, StageInput::Hidden(input));
        let compute_us = started.elapsed().as_micros() as u64;
        let labels = [("model", self.model.clone()), ("stage", self.stage.clone())];
        metrics::histogram!(m::STAGE_FORWARD_SECONDS, &labels).record(started.elapsed().as_secs_f64());
        let output = match output {
            Ok(o) => o,
            // The caches may be half-updated: these sequences cannot go on here.
            Err(e) => return Err(format!("stage {} forward failed: {e}", self.stage)),
        };
        let out = match output {
            StageOutput::Hidden(h) => StageOut::Hidden {
                hidden: TensorFrame::from_f32(rows, hidden, &h.data),
                sequences: frame.sequences.clone(),
                compute_us,
            },
            StageOutput::Logits(logits) => {
                let mut tokens = Vec::new();
                for ((r, (_, state)), mut l) in frame.sequences.iter().zip(taken.iter_mut()).zip(logits) {
                    if let (true, Some(s)) = (r.sample, state.sampler.as_mut()) {
                        tokens.push((r.sequence, s.sample(&mut l)));
                    }
                }
                StageOut::Tokens { tokens, compute_us }
            }
        };
        for (id, mut s) in taken {
            s.last_used = Instant::now();
            self.seqs.insert(id, s);
        }
        self.publish();
        Ok(out)
    }
}
