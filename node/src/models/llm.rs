//! The text-generation engine of one replica: a dedicated thread owns the model and its
//! [`Batcher`] and runs the decode loop. New sequences wait in a bounded queue and join the
//! running batch at the next token boundary; each leaves when it finishes or is cancelled.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Instant;

use shoal_engine::{Batcher, Event, Llm, SamplingParams};
use shoal_protocol::metric_names as m;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::NodeError;

/// Sequences decoded together at most.
pub const MAX_BATCH: usize = 16;
/// The most rows (tokens) one forward pass takes. Longer prompts, or several arriving
/// together, are prefilled in chunks between decode steps, so sequences already answering
/// keep getting tokens (one pass over thousands of prompt rows takes tens of seconds on a
/// small CPU, and the gateway gives up on a replica silent for 30 s).
pub const MAX_STEP_ROWS: usize = 512;
/// Memory for recent prompts' KV caches, from which new sequences sharing their beginning
/// (the same system prompt, tools or conversation so far) start without prefilling it.
pub const PREFIX_CACHE_BYTES: usize = 256 << 20;
/// Sequences that may wait for a place in the batch; beyond this requests are refused.
pub const MAX_QUEUED: usize = 64;
/// Events a sequence's reader may fall behind by. A reader further behind (a client that
/// stopped reading) has its sequence cancelled with [`SeqEvent::Lagged`]: it neither holds
/// back the batch nor grows the node's memory.
pub const SEQ_EVENT_BUFFER: usize = 512;

/// What a sequence's owner hears.
#[derive(Debug)]
pub enum SeqEvent {
    Token {
        token: u32,
        text: String,
    },
    Finished {
        stop: bool,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    /// The request itself cannot be served (e.g. longer than the context).
    Failed(String),
    /// This replica cannot go on (stopping, or a failed step); another replica may.
    Unavailable(String),
    /// The reader fell [`SEQ_EVENT_BUFFER`] events behind; the sequence was cancelled.
    Lagged(String),
}

/// What became of a token offered to a sequence's reader.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    Sent,
    /// The reader is gone.
    Gone,
    /// The reader is too far behind: it was told so ([`SeqEvent::Lagged`]) and must be cancelled.
    Lagged,
}

/// The decode thread's end of a sequence's events: bounded, never blocking. One place is kept
/// back for the last event (finished, failed, or lagged), so it always fits.
#[derive(Debug)]
pub struct EventSender(mpsc::Sender<SeqEvent>);

/// A bounded channel of one sequence's events.
pub fn event_channel() -> (EventSender, mpsc::Receiver<SeqEvent>) {
    let (tx, rx) = mpsc::channel(SEQ_EVENT_BUFFER + 1);
    (EventSender(tx), rx)
}

impl EventSender {
    /// Offers a token without waiting.
    pub fn token(&self, token: u32, text: String) -> Delivery {
        if self.0.is_closed() {
            return Delivery::Gone;
        }
        if self.0.capacity() <= 1 {
            let msg =
                format!("the reader fell {SEQ_EVENT_BUFFER} tokens behind the generation; the sequence was cancelled");
            let _ = self.0.try_send(SeqEvent::Lagged(msg));
            return Delivery::Lagged;
        }
        match self.0.try_send(SeqEvent::Token { token, text }) {
            Ok(()) => Delivery::Sent,
            Err(_) => Delivery::Gone,
        }
    }

    /// Sends the sequence's last event (the place kept back guarantees room).
    pub fn last(&self, ev: SeqEvent) {
        let _ = self.0.try_send(ev);
    }
}

pub(crate) enum Cmd {
    Admit {
        id: u64,
        prompt: Vec<u32>,
        resume: Vec<u32>,
        params: SamplingParams,
        events: EventSender,
    },
    Cancel(u64),
    Stop,
    /// A split model's head: the tokens sampled for micro-batch `group` at the end of the
    /// chain, or why its step failed.
    StageDone {
        group: usize,
        result: Result<Vec<(u64, u32)>, String>,
    },
}

/// A handle to a running generation engine; cheap to clone.
#[derive(Clone)]
pub struct LlmHandle {
    pub llm: Arc<Llm>,
    tx: std_mpsc::Sender<Cmd>,
    outstanding: Arc<AtomicUsize>,
    next_id: Arc<AtomicUsize>,
    model: Arc<str>,
}

/// Refusal reasons for a new sequence.
#[derive(Debug)]
pub enum AdmitError {
    Overloaded(String),
    Stopped,
}

/// Cancels its sequence when dropped (the client went away).
pub struct SeqGuard {
    id: u64,
    tx: std_mpsc::Sender<Cmd>,
}

impl Drop for SeqGuard {
    fn drop(&mut self) {
        let _ = self.tx.send(Cmd::Cancel(self.id));
    }
}

impl LlmHandle {
    /// Starts the decode thread for a loaded model.
    pub fn start(llm: Arc<Llm>, model: &str) -> Result<Self, NodeError> {
        let (tx, rx) = std_mpsc::channel();
        let outstanding = Arc::new(AtomicUsize::new(0));
        let model: Arc<str> = Arc::from(model);
        let loop_llm = llm.clone();
        let loop_out = outstanding.clone();
        let loop_model = model.clone();
        std::thread::Builder::new()
            .name(format!("decode-{model}"))
            .spawn(move || decode_loop(loop_llm, rx, loop_out, loop_model))
            .map_err(|e| NodeError::io("decode thread", e))?;
        Ok(Self { llm, tx, outstanding, next_id: Arc::new(AtomicUsize::new(1)), model })
    }

    /// Starts the decode thread of a split model's head (the stage with layer 0): its tokens
    /// come back from the last stage over `link`.
    pub fn start_head(llm: Arc<Llm>, model: &str, link: super::pipeline::Link) -> Result<Self, NodeError> {
        let (tx, rx) = std_mpsc::channel();
        let outstanding = Arc::new(AtomicUsize::new(0));
        let model: Arc<str> = Arc::from(model);
        let (loop_llm, loop_out, loop_model, loop_tx) = (llm.clone(), outstanding.clone(), model.clone(), tx.clone());
        std::thread::Builder::new()
            .name(format!("head-{model}"))
            .spawn(move || super::pipeline::head_loop(loop_llm, rx, loop_tx, loop_out, loop_model, link))
            .map_err(|e| NodeError::io("decode thread", e))?;
        // Sequence ids must not repeat on the stages after a restart of this process.
        let first = (rand::random::<u32>() as usize) << 16 | 1;
        Ok(Self { llm, tx, outstanding, next_id: Arc::new(AtomicUsize::new(first)), model })
    }

    /// Sequences running or queued.
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Queues a sequence. Refused at once when the queue is full.
    pub fn submit(
        &self,
        prompt: Vec<u32>,
        resume: Vec<u32>,
        params: SamplingParams,
    ) -> Result<(mpsc::Receiver<SeqEvent>, SeqGuard), AdmitError> {
        let now = self.outstanding.fetch_add(1, Ordering::AcqRel);
        if now >= MAX_BATCH + MAX_QUEUED {
            self.outstanding.fetch_sub(1, Ordering::AcqRel);
            metrics::counter!(m::NODE_REQUESTS_REJECTED, "reason" => "queue_full").increment(1);
            return Err(AdmitError::Overloaded(format!(
                "'{}' has {now} sequences running or queued (limit {})",
                self.model,
                MAX_BATCH + MAX_QUEUED
            )));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) as u64;
        let (events, rx) = event_channel();
        if self.tx.send(Cmd::Admit { id, prompt, resume, params, events }).is_err() {
            self.outstanding.fetch_sub(1, Ordering::AcqRel);
            return Err(AdmitError::Stopped);
        }
        Ok((rx, SeqGuard { id, tx: self.tx.clone() }))
    }

    /// Ends the decode thread (when the replica is removed).
    pub fn stop(&self) {
        let _ = self.tx.send(Cmd::Stop);
    }
}

struct Waiting {
    id: u64,
    prompt: Vec<u32>,
    resume: Vec<u32>,
    params: SamplingParams,
}

fn decode_loop(llm: Arc<Llm>, rx: std_mpsc::Receiver<Cmd>, outstanding: Arc<AtomicUsize>, model: Arc<str>) {
    // The most KV entries the batch can hold: every row at the model's full context.
    let kv_capacity = (MAX_BATCH * llm.context_length()) as f64;
    let mut batcher = Batcher::new(llm, MAX_BATCH).with_max_rows(MAX_STEP_ROWS).with_prefix_cache(PREFIX_CACHE_BYTES);
    let mut queue: VecDeque<Waiting> = VecDeque::new();
    let mut owners: HashMap<u64, EventSender> = HashMap::new();
    let label = model.to_string();
    metrics::gauge!(m::NODE_KV_CAPACITY_TOKENS, "model" => label.clone()).set(kv_capacity);
    let finish = |owners: &mut HashMap<u64, EventSender>, id: u64, ev: Option<SeqEvent>| {
        if let Some(tx) = owners.remove(&id) {
            if let Some(ev) = ev {
                tx.last(ev);
            }
            outstanding.fetch_sub(1, Ordering::AcqRel);
        }
    };
    loop {
        // Wait for work when idle; otherwise take what arrived without blocking.
        let mut cmds = Vec::new();
        if batcher.is_idle() && queue.is_empty() {
            match rx.recv() {
                Ok(c) => cmds.push(c),
                Err(_) => return,
            }
        }
        while let Ok(c) = rx.try_recv() {
            cmds.push(c);
        }
        for c in cmds {
            match c {
                Cmd::Admit { id, prompt, resume, params, events } => {
                    owners.insert(id, events);
                    queue.push_back(Waiting { id, prompt, resume, params });
                }
                Cmd::Cancel(id) => {
                    if owners.contains_key(&id) {
                        debug!(id, "sequence cancelled");
                        metrics::counter!(m::NODE_SEQUENCES_CANCELLED, "model" => label.clone()).increment(1);
                        batcher.cancel(id);
                        queue.retain(|w| w.id != id);
                        finish(&mut owners, id, None);
                    }
                }
                Cmd::StageDone { .. } => {}
                Cmd::Stop => {
                    for (_, tx) in owners.drain() {
                        tx.last(SeqEvent::Unavailable("the replica is stopping".into()));
                    }
                    return;
                }
            }
        }
        // Sequences join at this token boundary while the batch has room.
        while batcher.running() < MAX_BATCH {
            let Some(w) = queue.pop_front() else { break };
            if let Err(e) = batcher.admit(w.id, w.prompt, w.resume, w.params) {
                finish(&mut owners, w.id, Some(SeqEvent::Failed(e.to_string())));
            }
        }
        metrics::gauge!(m::NODE_QUEUE_DEPTH, "model" => label.clone()).set(queue.len() as f64);
        metrics::gauge!(m::NODE_KV_TOKENS, "model" => label.clone()).set(batcher.kv_tokens() as f64);
        if batcher.is_idle() {
            continue;
        }
        metrics::histogram!(m::NODE_BATCH_SIZE, "model" => label.clone()).record(batcher.running() as f64);
        let started = Instant::now();
        let events = match batcher.step() {
            Ok(ev) => ev,
            Err(e) => {
                warn!(error = %e, "decode step failed; failing the batch");
                let ids: Vec<u64> = owners.keys().copied().collect();
                for id in ids {
                    batcher.cancel(id);
                    finish(&mut owners, id, Some(SeqEvent::Unavailable(format!("decode failed: {e}"))));
                }
                continue;
            }
        };
        metrics::histogram!(m::NODE_DECODE_STEP_SECONDS, "model" => label.clone())
            .record(started.elapsed().as_secs_f64());
        metrics::gauge!(m::NODE_KV_TOKENS, "model" => label.clone()).set(batcher.kv_tokens() as f64);
        for ev in events {
            match ev {
                Event::Token { id, token, text } => {
                    metrics::counter!(m::NODE_TOKENS, "model" => label.clone()).increment(1);
                    let delivery = owners.get(&id).map(|tx| tx.token(token, text));
                    if delivery == Some(Delivery::Lagged) {
                        warn!(id, model = %label, "a reader fell too far behind; cancelling its sequence");
                    }
                    if matches!(delivery, Some(Delivery::Gone | Delivery::Lagged)) {
                        metrics::counter!(m::NODE_SEQUENCES_CANCELLED, "model" => label.clone()).increment(1);
                        batcher.cancel(id);
                        finish(&mut owners, id, None);
                    }
                }
                Event::Finished { id, reason, prompt_tokens, completion_tokens } => {
                    let stop = reason == shoal_engine::FinishReason::Stop;
                    finish(&mut owners, id, Some(SeqEvent::Finished { stop, prompt_tokens, completion_tokens }));
                }
                Event::Failed { id, message } => finish(&mut owners, id, Some(SeqEvent::Failed(message))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_too_far_behind_is_told_and_its_sequence_cancelled() {
        let (tx, mut rx) = event_channel();
        for i in 0..SEQ_EVENT_BUFFER as u32 {
            assert_eq!(tx.token(i, "x".into()), Delivery::Sent);
        }
        // The buffer is full: the token is not queued, the reader hears why instead.
        assert_eq!(tx.token(9999, "y".into()), Delivery::Lagged);
        for i in 0..SEQ_EVENT_BUFFER as u32 {
            assert!(matches!(rx.try_recv(), Ok(SeqEvent::Token { token, .. }) if token == i));
        }
        match rx.try_recv() {
            Ok(SeqEvent::Lagged(msg)) => assert!(msg.contains("512 tokens behind"), "{msg}"),
            other => panic!("expected Lagged, got {other:?}"),
        }
        assert!(rx.try_recv().is_err(), "nothing after the last event");
        drop(rx);
        assert_eq!(tx.token(1, "z".into()), Delivery::Gone);
    }

    #[test]
    fn the_last_event_always_fits() {
        let (tx, mut rx) = event_channel();
        for i in 0..SEQ_EVENT_BUFFER as u32 - 1 {
            assert_eq!(tx.token(i, "x".into()), Delivery::Sent);
        }
        tx.last(SeqEvent::Finished { stop: true, prompt_tokens: 3, completion_tokens: 511 });
        let mut n = 0;
        while let Ok(ev) = rx.try_recv() {
            n += 1;
            if n == SEQ_EVENT_BUFFER {
                assert!(matches!(ev, SeqEvent::Finished { completion_tokens: 511, .. }), "{ev:?}");
            }
        }
        assert_eq!(n, SEQ_EVENT_BUFFER);
    }
}
