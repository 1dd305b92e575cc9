//! The head of a split model: the replica that holds layer 0 takes generation requests like
//! any replica, runs its layers and streams activations down the chain; the last stage's
//! sampled tokens come back and the head turns them into text, stop checks and events.
//!
//! To keep every stage busy the head splits its sequences into as many micro-batches
//! ("groups") as the chain has stages: while one group's activations are on the next nodes
//! the head computes another. A group whose frame fails (a stage timed out, was lost or lost
//! its state) fails its sequences as unavailable, and the router retries them elsewhere.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_engine::{Batcher, Event, Llm, SamplingParams, StageOutput};
use shoal_protocol::metric_names as m;
use shoal_protocol::pipeline::ActivationFormat;
use shoal_protocol::pool::{CallError, Pool};
use shoal_protocol::quic::{ClientReceiver, ClientSender};
use shoal_protocol::tls::NODE_SERVER_NAME;
use shoal_protocol::{
    OutputConstraint, Request, Response, SamplingSettings, SequenceStart, StageForward, StageHop, StageResult,
    StageRows, TensorFrame,
};
use tracing::{debug, warn};

use super::llm::{Cmd, SeqEvent, MAX_BATCH};

/// The next stage of a chain as the coordinator last described it (it changes when that
/// stage is re-placed).
pub type NextHop = Arc<Mutex<Option<StageHop>>>;

/// How a stage reaches the next one.
#[derive(Clone)]
pub struct Link {
    pub pool: Arc<Pool>,
    pub next: NextHop,
    /// How long a step may take from this stage to the end of the chain.
    pub timeout: Duration,
    /// Stages in the chain.
    pub stages: u32,
    /// How activations go to the next stage (f32, or bf16 at half the bytes).
    pub activations: ActivationFormat,
    pub runtime: tokio::runtime::Handle,
    /// The stream that carries this stage's frames to the next one.
    pub channel: Arc<StageChannel>,
}

/// One long-lived stream to the next stage for all of a stage's activation frames: frames go out
/// back to back without waiting for the answers before them (the next stage starts each as it
/// arrives and relays it onwards), and the answers come back in the order of the frames. (On
/// loopback a stream per frame measured about the same per hop: the time goes to hand-offs between
/// threads and processes, see docs/pipeline.md.) The stream is opened again after it breaks, after
/// an answer is late (a stage that stalls must not hold back the frames behind it) or when the next
/// stage moves.
#[derive(Default)]
pub struct StageChannel {
    open: tokio::sync::Mutex<Option<OpenLink>>,
}

/// Whoever waits for each answer still to come on a link, oldest first.
type Waiting = Arc<Mutex<VecDeque<tokio::sync::oneshot::Sender<Result<Response, String>>>>>;

struct OpenLink {
    addr: SocketAddr,
    sender: ClientSender,
    /// Shared with the task that reads the answers.
    waiting: Waiting,
    broken: Arc<AtomicBool>,
}

impl StageChannel {
    /// Sends `frame` to the stage at `hop` and waits for its answer, at most `budget`.
    pub async fn call(
        &self,
        pool: &Pool,
        hop: &StageHop,
        frame: StageForward,
        budget: Duration,
    ) -> Result<Response, String> {
        let addr: SocketAddr =
            hop.address.parse().map_err(|_| format!("the next stage's address '{}' is not valid", hop.address))?;
        let deadline = tokio::time::Instant::now() + budget;
        let unreachable = |e: String| format!("the stage on node {} ({}) is unreachable: {e}", hop.node, hop.address);
        let answer = {
            let mut open = self.open.lock().await;
            if !open.as_ref().is_some_and(|o| o.addr == addr && !o.broken.load(Ordering::Acquire)) {
                // Dropping the old sender resets that stream.
                *open = None;
                let stream = tokio::time::timeout_at(deadline, pool.open(addr, NODE_SERVER_NAME))
                    .await
                    .map_err(|_| unreachable("no connection before the deadline".into()))?
                    .map_err(|e| unreachable(e.to_string()))?;
                let (sender, receiver) = stream.split();
                let waiting = Arc::new(Mutex::new(VecDeque::new()));
                let broken = Arc::new(AtomicBool::new(false));
                tokio::spawn(read_answers(receiver, Arc::clone(&waiting), Arc::clone(&broken)));
                *open = Some(OpenLink { addr, sender, waiting, broken });
            }
            let Some(link) = open.as_mut() else { unreachable!("opened above") };
            let (tx, rx) = tokio::sync::oneshot::channel();
            link.waiting.lock().unwrap_or_else(|p| p.into_inner()).push_back(tx);
            if let Err(e) = link.sender.send(&Request::StageForward(frame)).await {
                *open = None;
                pool.forget(addr, NODE_SERVER_NAME);
                return Err(unreachable(e.to_string()));
            }
            rx
        };
        match tokio::time::timeout_at(deadline, answer).await {
            Err(_) => {
                // A stalled or dead stage: the frames behind this one would wait too. A peer that died
                // keeps its connection looking open until QUIC's idle timeout, so connect afresh.
                self.close(addr).await;
                pool.forget(addr, NODE_SERVER_NAME);
                Err(format!(
                    "the stage on node {} ({}) did not answer within {} ms",
                    hop.node,
                    hop.address,
                    budget.as_millis()
                ))
            }
            Ok(Err(_)) => Err(unreachable("the stream to it closed".into())),
            Ok(Ok(Ok(Response::Refused { message, .. }))) => Err(message),
            Ok(Ok(Ok(answer))) => Ok(answer),
            Ok(Ok(Err(e))) => {
                pool.forget(addr, NODE_SERVER_NAME);
                Err(unreachable(e))
            }
        }
    }

    /// Drops the stream to `addr` (if that is the open one): it is reset, and what waits on it fails.
    async fn close(&self, addr: SocketAddr) {
        let mut open = self.open.lock().await;
        if open.as_ref().is_some_and(|o| o.addr == addr) {
            *open = None;
        }
    }
}

/// Hands each answer on the stream to the oldest caller waiting; when the stream breaks, every
/// waiting caller gets the error.
async fn read_answers(mut receiver: ClientReceiver, waiting: Waiting, broken: Arc<AtomicBool>) {
    let why = loop {
        let answer = receiver.recv().await;
        let next = waiting.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
        match (answer, next) {
            (Ok(answer), Some(tx)) => {
                let _ = tx.send(Ok(answer));
            }
            (Ok(_), None) => break "an answer came for no frame".to_string(),
            (Err(e), next) => {
                if let Some(tx) = next {
                    let _ = tx.send(Err(e.to_string()));
                }
                break e.to_string();
            }
        }
    };
    broken.store(true, Ordering::Release);
    for tx in waiting.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
        let _ = tx.send(Err(why.clone()));
    }
}

impl Link {
    pub fn next(&self) -> Option<StageHop> {
        self.next.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Activation frames stay well under the 8 MiB frame limit: long prompts go in chunks.
const FRAME_ACTIVATION_BYTES: usize = 4 << 20;
/// Each stage leaves the next this much less time, so the stage that stalls is named.
const BUDGET_MARGIN: Duration = Duration::from_millis(250);

/// Sends a request to the next stage and waits for its answer, at most `budget`.
pub async fn onward(pool: &Pool, hop: &StageHop, req: &Request, budget: Duration) -> Result<Response, String> {
    let addr: SocketAddr =
        hop.address.parse().map_err(|_| format!("the next stage's address '{}' is not valid", hop.address))?;
    match pool.call(addr, NODE_SERVER_NAME, req, tokio::time::Instant::now() + budget).await {
        Ok(r) => Ok(r),
        Err(CallError::Refused { message, .. }) => Err(message),
        Err(CallError::Timeout { .. }) => Err(format!(
            "the stage on node {} ({}) did not answer within {} ms",
            hop.node,
            hop.address,
            budget.as_millis()
        )),
        Err(e) => Err(format!("the stage on node {} ({}) is unreachable: {e}", hop.node, hop.address)),
    }
}

/// Sends a forward frame onwards; returns the tokens with the time spent behind `hop`
/// (compute and transport), recording this hop's own transport time.
pub async fn forward_onward(
    link: &Link,
    hop: &StageHop,
    frame: StageForward,
    budget: Duration,
    labels: &[(&'static str, String); 2],
) -> Result<StageResult, String> {
    let bytes = frame.hidden.data.len() as u64;
    let rows = frame.sequences.iter().map(|s| s.rows as u64).sum::<u64>();
    let started = Instant::now();
    let answer = link.channel.call(&link.pool, hop, frame, budget).await;
    let rtt = started.elapsed().as_micros() as u64;
    match answer {
        Ok(Response::StageDone(r)) => {
            let hop_us = rtt.saturating_sub(r.compute_us + r.hops_us);
            metrics::histogram!(m::STAGE_HOP_SECONDS, labels).record(hop_us as f64 / 1e6);
            metrics::counter!(m::STAGE_ACTIVATION_BYTES, labels).increment(bytes);
            metrics::counter!(m::STAGE_ACTIVATION_ROWS, labels).increment(rows);
            Ok(StageResult { tokens: r.tokens, compute_us: r.compute_us, hops_us: r.hops_us + hop_us })
        }
        Ok(other) => Err(format!("the next stage answered {other:?}")),
        Err(e) => {
            metrics::counter!(m::STAGE_FAILURES, "stage" => labels[1].1.clone()).increment(1);
            Err(e)
        }
    }
}

/// The budget to give the next stage when this one received `budget` at `since`.
pub fn remaining_budget(budget: Duration, since: Instant) -> Duration {
    budget.saturating_sub(since.elapsed()).saturating_sub(BUDGET_MARGIN).max(Duration::from_millis(50))
}

/// Tells the next stage (which tells the ones after it) to forget sequences.
pub fn release_onward(link: &Link, ids: Vec<u64>) {
    let Some(hop) = link.next() else { return };
    let link = link.clone();
    link.runtime.clone().spawn(async move {
        let req = Request::StageRelease { placement_id: hop.placement_id.clone(), sequences: ids };
        if let Err(e) = onward(&link.pool, &hop, &req, link.timeout).await {
            debug!(error = %e, "releasing sequences downstream failed; they expire there");
        }
    });
}

pub fn settings_of(p: &SamplingParams) -> SamplingSettings {
    SamplingSettings {
        max_tokens: p.max_tokens.min(u32::MAX as usize) as u32,
        temperature: p.temperature,
        top_p: p.top_p,
        top_k: p.top_k.min(u32::MAX as usize) as u32,
        seed: p.seed,
        presence_penalty: p.presence_penalty,
        frequency_penalty: p.frequency_penalty,
        stop: p.stop.clone(),
        constraint: p
            .constraint
            .as_ref()
            .map(|c| OutputConstraint { schema: c.schema.clone(), trigger: c.trigger.clone() }),
    }
}

struct Group {
    batcher: Batcher,
    in_flight: bool,
}

struct Owner {
    events: super::llm::EventSender,
    /// Sent with the sequence's first rows; taken then.
    start: Option<SequenceStart>,
}

/// The head's decode loop (runs on its own thread).
pub(super) fn head_loop(
    llm: Arc<Llm>,
    rx: std_mpsc::Receiver<Cmd>,
    tx: std_mpsc::Sender<Cmd>,
    outstanding: Arc<AtomicUsize>,
    model: Arc<str>,
    link: Link,
) {
    let max_rows = (FRAME_ACTIVATION_BYTES / (llm.hidden_size() * 4)).max(1);
    let mut groups: Vec<Group> = (0..link.stages.max(1))
        .map(|_| Group { batcher: Batcher::new(llm.clone(), MAX_BATCH).with_max_rows(max_rows), in_flight: false })
        .collect();
    let mut queue: VecDeque<(u64, Vec<u32>, Vec<u32>, SamplingParams)> = VecDeque::new();
    let mut owners: HashMap<u64, Owner> = HashMap::new();
    let labels: [(&'static str, String); 2] = [("model", model.to_string()), ("stage", "0".to_string())];
    let label = model.to_string();
    let mut turn = 0usize;
    loop {
        let mut release: Vec<u64> = Vec::new();
        let runnable = groups.iter().any(|g| !g.in_flight && !g.batcher.is_idle())
            || (!queue.is_empty() && groups.iter().any(|g| !g.in_flight && g.batcher.running() < MAX_BATCH));
        let mut cmds = Vec::new();
        if !runnable {
            match rx.recv() {
                Ok(c) => cmds.push(c),
                Err(_) => return,
            }
        }
        while let Ok(c) = rx.try_recv() {
            cmds.push(c);
        }
        let mut events = Vec::new();
        for c in cmds {
            match c {
                Cmd::Admit { id, prompt, resume, params, events: tx_events } => {
                    let start = SequenceStart { sampling: settings_of(&params), history: resume.clone() };
                    owners.insert(id, Owner { events: tx_events, start: Some(start) });
                    queue.push_back((id, prompt, resume, params));
                }
                Cmd::Cancel(id) => {
                    if owners.remove(&id).is_some() {
                        debug!(id, "sequence cancelled");
                        metrics::counter!(m::NODE_SEQUENCES_CANCELLED, "model" => label.clone()).increment(1);
                        outstanding.fetch_sub(1, Ordering::AcqRel);
                        for g in &mut groups {
                            g.batcher.cancel(id);
                        }
                        queue.retain(|w| w.0 != id);
                        release.push(id);
                    }
                }
                Cmd::Stop => {
                    let ids: Vec<u64> = owners.keys().copied().collect();
                    for (_, o) in owners.drain() {
                        o.events.last(SeqEvent::Unavailable("the replica is stopping".into()));
                    }
                    release_onward(&link, ids);
                    return;
                }
                Cmd::StageDone { group, result } => {
                    let Some(g) = groups.get_mut(group) else { continue };
                    g.in_flight = false;
                    match result {
                        Ok(tokens) => events.extend(g.batcher.accept(&tokens)),
                        Err(msg) => {
                            warn!(error = %msg, "a pipeline step failed; its sequences go elsewhere");
                            for id in g.batcher.ids() {
                                g.batcher.cancel(id);
                                release.push(id);
                                if let Some(o) = owners.remove(&id) {
                                    outstanding.fetch_sub(1, Ordering::AcqRel);
                                    o.events.last(SeqEvent::Unavailable(msg.clone()));
                                }
                            }
                        }
                    }
                }
            }
        }
        // New sequences join the least busy group that is at a token boundary.
        while !queue.is_empty() {
            let Some(g) = groups
                .iter_mut()
                .filter(|g| !g.in_flight && g.batcher.running() < MAX_BATCH)
                .min_by_key(|g| g.batcher.running())
            else {
                break;
            };
            let Some((id, prompt, resume, params)) = queue.pop_front() else { break };
            if let Err(e) = g.batcher.admit(id, prompt, resume, params) {
                events.push(Event::Failed { id, message: e.to_string() });
            }
        }
        // One group runs its layers; its activations go down the chain while the loop goes on.
        let n = groups.len();
        if let Some(gi) = (0..n).map(|i| (turn + i) % n).find(|&i| !groups[i].in_flight && !groups[i].batcher.is_idle())
        {
            turn = gi + 1;
            let started = Instant::now();
            let (evs, step) = groups[gi].batcher.forward();
            metrics::histogram!(m::STAGE_FORWARD_SECONDS, &labels).record(started.elapsed().as_secs_f64());
            events.extend(evs);
            if let Some(step) = step {
                match (step.output, link.next()) {
                    (StageOutput::Hidden(h), Some(hop)) => {
                        let sequences: Vec<StageRows> = step
                            .rows
                            .iter()
                            .map(|r| StageRows {
                                sequence: r.id,
                                start: r.start as u32,
                                rows: r.rows as u32,
                                sample: r.sample,
                                begin: if r.start == 0 {
                                    owners.get_mut(&r.id).and_then(|o| o.start.take())
                                } else {
                                    None
                                },
                            })
                            .collect();
                        let rows = h.counts.iter().sum();
                        let frame = StageForward {
                            placement_id: hop.placement_id.clone(),
                            sequences,
                            hidden: TensorFrame::encode(link.activations, rows, h.hidden, &h.data),
                            budget_ms: link.timeout.as_millis().min(u32::MAX as u128) as u32,
                        };
                        groups[gi].in_flight = true;
                        metrics::histogram!(m::NODE_BATCH_SIZE, "model" => label.clone())
                            .record(step.rows.len() as f64);
                        let (link2, tx2, labels2) = (link.clone(), tx.clone(), labels.clone());
                        link.runtime.spawn(async move {
                            let result = forward_onward(&link2, &hop, frame, link2.timeout, &labels2).await;
                            let _ = tx2.send(Cmd::StageDone { group: gi, result: result.map(|r| r.tokens) });
                        });
                    }
                    (StageOutput::Hidden(_), None) => {
                        let msg = "the next stage of this chain is not placed yet".to_string();
                        let _ = tx.send(Cmd::StageDone { group: gi, result: Err(msg) });
                        groups[gi].in_flight = true;
                    }
                    (StageOutput::Logits(_), _) => {
                        warn!("the head of a chain produced logits; it should hold only its layers");
                    }
                }
            }
        }
        // Events go to their requests; finished or failed sequences are released downstream.
        for ev in events {
            match ev {
                Event::Token { id, token, text } => {
                    metrics::counter!(m::NODE_TOKENS, "model" => label.clone()).increment(1);
                    let gone =
                        owners.get(&id).is_none_or(|o| o.events.token(token, text) != super::llm::Delivery::Sent);
                    if gone && owners.remove(&id).is_some() {
                        metrics::counter!(m::NODE_SEQUENCES_CANCELLED, "model" => label.clone()).increment(1);
                        outstanding.fetch_sub(1, Ordering::AcqRel);
                        for g in &mut groups {
                            g.batcher.cancel(id);
                        }
                        release.push(id);
                    }
                }
                Event::Finished { id, reason, prompt_tokens, completion_tokens } => {
                    if let Some(o) = owners.remove(&id) {
                        outstanding.fetch_sub(1, Ordering::AcqRel);
                        let stop = reason == shoal_engine::FinishReason::Stop;
                        o.events.last(SeqEvent::Finished { stop, prompt_tokens, completion_tokens });
                    }
                    release.push(id);
                }
                Event::Failed { id, message } => {
                    if let Some(o) = owners.remove(&id) {
                        outstanding.fetch_sub(1, Ordering::AcqRel);
                        o.events.last(SeqEvent::Failed(message));
                    }
                    release.push(id);
                }
            }
        }
        if !release.is_empty() {
            release_onward(&link, release);
        }
        let kv: usize = groups.iter().map(|g| g.batcher.kv_tokens()).sum();
        metrics::gauge!(m::NODE_KV_TOKENS, "model" => label.clone()).set(kv as f64);
        metrics::gauge!(m::NODE_QUEUE_DEPTH, "model" => label.clone()).set(queue.len() as f64);
        metrics::gauge!(m::STAGE_SEQUENCES, &labels).set(owners.len() as f64);
    }
}
