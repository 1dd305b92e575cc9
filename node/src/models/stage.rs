//! A stage of a split model that is not the head: a worker thread owns the layers and one KV
//! cache per sequence, runs the forward passes that arrive in order, and (on the last stage)
//! samples the next token of each sequence. The data plane relays activations onwards.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_engine::{HiddenStates, KvCache, Llm, SequenceSampler, StageInput, StageOutput};
use shoal_protocol::metric_names as m;
use shoal_protocol::pipeline::ActivationFormat;
use shoal_protocol::{StageForward, StageRows, TensorFrame};
use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::pipeline::Link;
use crate::NodeError;

/// A sequence nobody has touched for this long is dropped (its head died without releasing it).
pub const SEQUENCE_IDLE_EXPIRY: Duration = Duration::from_secs(120);
/// Frames from peers that may wait for this stage's worker; a frame beyond this is refused
/// at once (Overloaded) instead of queuing without limit behind the forward passes.
pub const MAX_QUEUED_FRAMES: usize = 64;

/// Why a frame was not run.
#[derive(Debug, PartialEq, Eq)]
pub enum ForwardError {
    /// [`MAX_QUEUED_FRAMES`] frames are already waiting.
    Overloaded(String),
    /// The stage is stopping, or the forward pass failed.
    Failed(String),
}

/// What a stage's forward pass produced.
pub enum StageOut {
    /// Activations for the next stage.
    Hidden { sequences: Vec<StageRows>, hidden: TensorFrame },
    /// The last stage's sampled tokens.
    Tokens { tokens: Vec<(u64, u32)> },
}

enum Job {
    Forward { frame: StageForward, reply: oneshot::Sender<Result<StageOut, String>> },
    Release(Vec<u64>),
    Stop,
}

/// A handle to a running stage; cheap to clone.
#[derive(Clone)]
pub struct StageHandle {
    tx: std_mpsc::SyncSender<Job>,
    /// Set by [`StageHandle::stop`]; the worker ends at its next job even when the queue is full.
    stopping: Arc<AtomicBool>,
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
        let (tx, rx) = std_mpsc::sync_channel(MAX_QUEUED_FRAMES);
        let sequences = Arc::new(AtomicUsize::new(0));
        let stopping = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            stopping: stopping.clone(),
            llm,
            seqs: HashMap::new(),
            count: sequences.clone(),
            model: model.to_string(),
            stage: index.to_string(),
            activations: link.activations,
        };
        std::thread::Builder::new()
            .name(format!("stage{index}-{model}"))
            .spawn(move || worker.run(rx))
            .map_err(|e| NodeError::io("stage thread", e))?;
        Ok(Self { tx, stopping, sequences, link, index, model: model.to_string() })
    }

    /// Sequences this stage holds state for.
    pub fn outstanding(&self) -> usize {
        self.sequences.load(Ordering::Relaxed)
    }

    /// Runs this stage's layers over a frame (queued behind earlier frames; refused at once
    /// when [`MAX_QUEUED_FRAMES`] are waiting).
    pub async fn forward(&self, frame: StageForward) -> Result<StageOut, ForwardError> {
        let (reply, rx) = oneshot::channel();
        self.submit(Job::Forward { frame, reply })?;
        rx.await.map_err(|_| ForwardError::Failed("the stage is stopping".into()))?.map_err(ForwardError::Failed)
    }

    fn submit(&self, job: Job) -> Result<(), ForwardError> {
        queue(&self.tx, job, || format!("stage {} of '{}'", self.index, self.model))
    }

    /// Forgets sequences (finished or cancelled). When the queue is full the release is
    /// dropped: the sequences expire after [`SEQUENCE_IDLE_EXPIRY`].
    pub fn release(&self, ids: Vec<u64>) {
        let _ = self.submit(Job::Release(ids));
    }

    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        let _ = self.tx.try_send(Job::Stop);
    }
}

/// Queues a job without waiting: refused at once when the queue is full.
fn queue(tx: &std_mpsc::SyncSender<Job>, job: Job, what: impl FnOnce() -> String) -> Result<(), ForwardError> {
    match tx.try_send(job) {
        Ok(()) => Ok(()),
        Err(std_mpsc::TrySendError::Full(_)) => {
            metrics::counter!(m::NODE_REQUESTS_REJECTED, "reason" => "queue_full").increment(1);
            Err(ForwardError::Overloaded(format!("{} has {MAX_QUEUED_FRAMES} frames waiting; retry later", what())))
        }
        Err(std_mpsc::TrySendError::Disconnected(_)) => Err(ForwardError::Failed("the stage is stopping".into())),
    }
}

struct Worker {
    stopping: Arc<AtomicBool>,
    llm: Arc<Llm>,
    seqs: HashMap<u64, Seq>,
    count: Arc<AtomicUsize>,
    model: String,
    stage: String,
    /// How activations go to the next stage.
    activations: ActivationFormat,
}

impl Worker {
    fn run(mut self, rx: std_mpsc::Receiver<Job>) {
        loop {
            let job = rx.recv_timeout(Duration::from_secs(10));
            if self.stopping.load(Ordering::Acquire) {
                // Frames still queued are dropped with the receiver: their callers hear "stopping".
                self.seqs.clear();
                self.publish();
                return;
            }
            match job {
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
                    (Some(b), true) => {
                        let params = super::sampling_params(&b.sampling);
                        Some(SequenceSampler::new(params, &b.history, &self.llm).map_err(|e| e.to_string())?)
                    }
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
        let labels = [("model", self.model.clone()), ("stage", self.stage.clone())];
        metrics::histogram!(m::STAGE_FORWARD_SECONDS, &labels).record(started.elapsed().as_secs_f64());
        let output = match output {
            Ok(o) => o,
            // The caches may be half-updated: these sequences cannot go on here.
            Err(e) => return Err(format!("stage {} forward failed: {e}", self.stage)),
        };
        let out = match output {
            StageOutput::Hidden(h) => StageOut::Hidden {
                hidden: TensorFrame::encode(self.activations, rows, hidden, &h.data),
                sequences: frame.sequences.clone(),
            },
            StageOutput::Logits(logits) => {
                let mut tokens = Vec::new();
                for ((r, (_, state)), mut l) in frame.sequences.iter().zip(taken.iter_mut()).zip(logits) {
                    if let (true, Some(s)) = (r.sample, state.sampler.as_mut()) {
                        tokens.push((r.sequence, s.sample(&mut l)));
                    }
                }
                StageOut::Tokens { tokens }
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

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_engine::LlmOptions;
    use shoal_protocol::{SamplingSettings, SequenceStart, TensorDtype};

    fn last_stage() -> Worker {
        let dir = std::env::var_os("SHOAL_MODELS_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models"));
        let gguf = dir.join("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
        let llm = Llm::load(&gguf, &LlmOptions { layers: Some(20..30), ..Default::default() })
            .expect("load the last 10 layers of SmolLM2 (./scripts/fetch-models.sh)");
        Worker {
            stopping: Arc::new(AtomicBool::new(false)),
            llm: Arc::new(llm),
            seqs: HashMap::new(),
            count: Arc::new(AtomicUsize::new(0)),
            model: "m".into(),
            stage: "2".into(),
            activations: ActivationFormat::F32,
        }
    }

    fn begin() -> Option<SequenceStart> {
        let sampling = SamplingSettings {
            max_tokens: 8,
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            seed: None,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            stop: vec![],
            constraint: None,
        };
        Some(SequenceStart { sampling, history: vec![] })
    }

    fn frame(seq: u64, start: u32, rows: u32, begin: Option<SequenceStart>, hidden: usize) -> StageForward {
        let values: Vec<f32> = (0..rows as usize * hidden).map(|i| ((i % 7) as f32 - 3.0) * 0.01).collect();
        StageForward {
            placement_id: "p".into(),
            sequences: vec![StageRows { sequence: seq, start, rows, sample: true, begin }],
            hidden: TensorFrame::from_f32(rows as usize, hidden, &values),
            budget_ms: 1000,
        }
    }

    #[test]
    fn a_full_frame_queue_refuses_at_once() {
        let (tx, rx) = std_mpsc::sync_channel(MAX_QUEUED_FRAMES);
        for _ in 0..MAX_QUEUED_FRAMES {
            assert_eq!(queue(&tx, Job::Release(vec![1]), || "stage 1".into()), Ok(()));
        }
        let (reply, _rx) = oneshot::channel();
        let job = Job::Forward { frame: frame(1, 0, 1, begin(), 4), reply };
        match queue(&tx, job, || "stage 1 of 'm'".into()) {
            Err(ForwardError::Overloaded(msg)) => {
                assert!(msg.contains("stage 1 of 'm' has 64 frames waiting"), "{msg}")
            }
            other => panic!("expected Overloaded, got {other:?}"),
        }
        // Once the worker took one, there is room again; a stopped worker is not "overloaded".
        assert!(rx.try_recv().is_ok());
        assert_eq!(queue(&tx, Job::Release(vec![2]), || "stage 1".into()), Ok(()));
        drop(rx);
        assert!(matches!(queue(&tx, Job::Stop, || "stage 1".into()), Err(ForwardError::Failed(_))));
    }

    #[test]
    fn frames_are_checked_and_positions_must_follow_the_cache() {
        let mut w = last_stage();
        let h = w.llm.hidden_size();
        // A good first frame: the last stage samples one token and keeps the sequence.
        match w.forward(frame(1, 0, 3, begin(), h)) {
            Ok(StageOut::Tokens { tokens, .. }) => assert_eq!(tokens.len(), 1),
            _ => panic!("the last stage must sample"),
        }
        assert_eq!(w.seqs[&1].cache.len(), 3);
        // The next row continues at position 3.
        assert!(matches!(w.forward(frame(1, 3, 1, None, h)), Ok(StageOut::Tokens { .. })));
        let err = |r: Result<StageOut, String>| r.err().unwrap_or_default();
        assert!(err(w.forward(frame(1, 2, 1, None, h))).contains("at position 4"), "a gap or a replay is refused");
        assert!(err(w.forward(frame(9, 5, 1, None, h))).contains("holds no state"));
        assert!(err(w.forward(frame(2, 0, 1, None, h))).contains("sampling settings"));
        assert!(err(w.forward(frame(3, 0, 2, begin(), h + 1))).contains("columns"));
        let mut f = frame(3, 0, 2, begin(), h);
        f.sequences[0].rows = 3;
        assert!(err(w.forward(f)).contains("rows"));
        let mut f = frame(3, 0, 2, begin(), h);
        f.hidden.data.truncate(10);
        assert!(err(w.forward(f)).contains("bytes"));
        let mut f = frame(3, 0, 1, begin(), h);
        f.hidden.dtype = TensorDtype::Bf16;
        assert!(err(w.forward(f)).contains("bytes"));
        // Refused frames changed nothing.
        assert_eq!(w.seqs.len(), 1);
        assert_eq!(w.seqs[&1].cache.len(), 4);
    }
}
