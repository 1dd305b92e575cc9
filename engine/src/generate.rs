//! Continuous batching: one decode loop over many sequences, each with its own KV cache.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::EngineError;
use crate::llama::{KvCache, Llm, StageInput, StageOutput};
use crate::prefix_cache::PrefixCache;
use crate::sampling::{Sampler, SamplingParams, StopCheck, StopMatcher};
use crate::tokenizer::Utf8Stream;

/// Why a sequence finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// An end-of-sequence token or a stop sequence.
    Stop,
    /// `max_tokens` reached or the context is full.
    Length,
}

/// What happened to a sequence during a step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// A token was generated; `text` is the newly printable UTF-8 text (may be empty while a multi-byte character
    /// or a possible stop-sequence prefix is held back). Every generated token gives exactly one such event.
    Token {
        id: u64,
        token: u32,
        text: String,
    },
    Finished {
        id: u64,
        reason: FinishReason,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    Failed {
        id: u64,
        message: String,
    },
}

struct Sequence {
    id: u64,
    cache: KvCache,
    /// Tokens to feed at the next forward (the prompt and resumed tokens at first, then the last sampled one).
    feed: Vec<u32>,
    prompt_tokens: usize,
    completion_tokens: usize,
    params: SamplingParams,
    sampler: Sampler,
    utf8: Utf8Stream,
    stop: StopMatcher,
    /// Set when the sequence must finish before generating anything more.
    finish_now: Option<FinishReason>,
    /// The prompt, until its prefill is kept in the prefix cache.
    to_cache: Option<Vec<u32>>,
}

/// Runs many sequences through one model, one token per sequence per step.
pub struct Batcher {
    llm: Arc<Llm>,
    max_batch: usize,
    /// Rows (tokens) one forward pass may take; longer prompts are prefilled in chunks.
    max_rows: usize,
    seqs: Vec<Sequence>,
    /// Recent prompts' KV caches (off unless [`Batcher::with_prefix_cache`]).
    prefix: Option<PrefixCache>,
}

/// One sequence's rows in a forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepRows {
    pub id: u64,
    /// Position of the first row.
    pub start: usize,
    pub rows: usize,
    /// Whether a token is sampled after these rows (false in the middle of a chunked prompt).
    pub sample: bool,
}

/// A forward pass over this model's layers for the sequences in `rows` (in order).
#[derive(Debug)]
pub struct ForwardStep {
    pub rows: Vec<StepRows>,
    pub output: StageOutput,
}

impl Batcher {
    pub fn new(llm: Arc<Llm>, max_batch: usize) -> Batcher {
        Batcher { llm, max_batch: max_batch.max(1), max_rows: usize::MAX, seqs: Vec::new(), prefix: None }
    }

    /// Keeps recent prompts' KV caches (up to `budget_bytes`) and starts a new sequence from
    /// the longest cached beginning of its prompt. Only for a model with all its layers (a
    /// pipeline's later stages would not hold the skipped positions).
    pub fn with_prefix_cache(mut self, budget_bytes: usize) -> Batcher {
        self.prefix = Some(PrefixCache::new(budget_bytes));
        self
    }

    /// Prompts held in the prefix cache and their bytes.
    pub fn prefix_cache_usage(&self) -> (usize, usize) {
        self.prefix.as_ref().map_or((0, 0), |p| (p.len(), p.bytes()))
    }

    /// Limits the rows of one forward pass (chunked prefill; decoding sequences go first).
    pub fn with_max_rows(mut self, max_rows: usize) -> Batcher {
        self.max_rows = max_rows.max(1);
        self
    }

    pub fn llm(&self) -> &Arc<Llm> {
        &self.llm
    }

    /// Queue a sequence; it is prefilled at the next step and joins the running batch. `resume` = tokens already
    /// generated for this request elsewhere: they are prefilled after the prompt, count as completion tokens and
    /// for stop sequences and penalties, and are not emitted again.
    pub fn admit(
        &mut self,
        id: u64,
        prompt: Vec<u32>,
        resume: Vec<u32>,
        params: SamplingParams,
    ) -> Result<(), EngineError> {
        if prompt.is_empty() {
            return Err(EngineError::InvalidRequest("empty prompt".into()));
        }
        if self.seqs.len() >= self.max_batch {
            return Err(EngineError::InvalidRequest(format!("batch full ({} sequences)", self.max_batch)));
        }
        if self.seqs.iter().any(|s| s.id == id) {
            return Err(EngineError::InvalidRequest(format!("sequence {id} is already running")));
        }
        let ctx = self.llm.context_length();
        let total = prompt.len() + resume.len();
        if total > ctx {
            return Err(EngineError::InvalidRequest(format!(
                "prompt ({} tokens) and resumed tokens ({}) exceed the context length {ctx}",
                prompt.len(),
                resume.len()
            )));
        }
        let vocab = self.llm.vocab_size();
        if let Some(bad) = prompt.iter().chain(resume.iter()).find(|&&t| t as usize >= vocab) {
            return Err(EngineError::InvalidRequest(format!("token id {bad} is outside the vocabulary of {vocab}")));
        }
        let mut sampler = Sampler::for_params(&params, &self.llm)?;
        let mut utf8 = Utf8Stream::default();
        let mut stop = StopMatcher::new(&params.stop);
        let mut resumed_text = String::new();
        for &t in &resume {
            sampler.observe(t);
            resumed_text.push_str(&utf8.push(self.llm.token_bytes(t)));
        }
        let mut finish_now = None;
        if stop.seed_text(&resumed_text) || resume.last().is_some_and(|t| self.llm.eos_tokens().contains(t)) {
            finish_now = Some(FinishReason::Stop);
        } else if resume.len() >= params.max_tokens {
            finish_now = Some(FinishReason::Length);
        }
        let prompt_tokens = prompt.len();
        let completion_tokens = resume.len();
        // The last prompt token is always fed, so the sequence gets logits to sample from.
        let (cache, to_cache) = match &mut self.prefix {
            Some(pc) => match pc.lookup(&prompt, prompt_tokens - 1) {
                Some(cache) => (cache, None),
                None => (self.llm.new_cache(), Some(prompt.clone())),
            },
            None => (self.llm.new_cache(), None),
        };
        let shared = cache.len();
        let mut feed = prompt[shared..].to_vec();
        feed.extend_from_slice(&resume);
        let to_cache =
            to_cache.or_else(|| (self.prefix.is_some() && shared + 1 < prompt_tokens).then(|| prompt.clone()));
        tracing::debug!(id, prompt_tokens, cached = shared, resumed = completion_tokens, "admitted sequence");
        self.seqs.push(Sequence {
            id,
            cache,
            feed,
            prompt_tokens,
            completion_tokens,
            params,
            sampler,
            utf8,
            stop,
            finish_now,
            to_cache,
        });
        Ok(())
    }

    /// Drop a sequence and free its KV cache.
    pub fn cancel(&mut self, id: u64) {
        self.seqs.retain(|s| s.id != id);
    }

    /// Sequences in the batch (running or waiting for their prefill).
    pub fn running(&self) -> usize {
        self.seqs.len()
    }

    /// The ids of the sequences in the batch.
    pub fn ids(&self) -> Vec<u64> {
        self.seqs.iter().map(|s| s.id).collect()
    }

    /// Tokens held in all KV caches.
    pub fn kv_tokens(&self) -> usize {
        self.seqs.iter().map(|s| s.cache.len()).sum()
    }

    pub fn is_idle(&self) -> bool {
        self.seqs.is_empty()
    }

    /// Prefill newly admitted sequences and run one decode step for all running ones (one forward pass over all
    /// of them); returns the events.
    pub fn step(&mut self) -> Result<Vec<Event>, EngineError> {
        let (mut events, step) = self.forward();
        let Some(step) = step else { return Ok(events) };
        let StageOutput::Logits(logits) = step.output else {
            return Err(EngineError::InvalidRequest("the batcher needs a model with all layers".into()));
        };
        let mut tokens = Vec::new();
        for (r, mut logits) in step.rows.iter().zip(logits) {
            if !r.sample {
                continue;
            }
            if let Some(seq) = self.seqs.iter_mut().find(|s| s.id == r.id) {
                tokens.push((r.id, seq.sampler.sample(&mut logits, &seq.params)));
            }
        }
        events.extend(self.accept(&tokens));
        Ok(events)
    }

    /// First half of a step: finishes sequences that must end, then runs this model's layers over every
    /// sequence's next rows (at most the row budget; decoding sequences first). With a model that holds every
    /// layer the output is logits, otherwise hidden states for the next stage. A failed pass fails the batch
    /// (the events say so) and returns no step.
    pub fn forward(&mut self) -> (Vec<Event>, Option<ForwardStep>) {
        let mut events = Vec::new();
        self.seqs.retain(|s| match s.finish_now {
            Some(reason) => {
                events.push(Event::Finished {
                    id: s.id,
                    reason,
                    prompt_tokens: s.prompt_tokens,
                    completion_tokens: s.completion_tokens,
                });
                false
            }
            None => true,
        });
        // Rows per sequence: sequences that decode one token go first, then prompts take what is left.
        let mut take = vec![0usize; self.seqs.len()];
        let mut budget = self.max_rows;
        for decoding in [true, false] {
            for (i, s) in self.seqs.iter().enumerate() {
                if s.feed.is_empty() || (s.feed.len() == 1) != decoding {
                    continue;
                }
                take[i] = s.feed.len().min(budget);
                budget -= take[i];
            }
        }
        let mut rows = Vec::new();
        let mut feeds = Vec::new();
        let mut caches: Vec<&mut KvCache> = Vec::new();
        for (s, &n) in self.seqs.iter_mut().zip(&take) {
            if n == 0 {
                continue;
            }
            let rest = s.feed.split_off(n);
            feeds.push(std::mem::replace(&mut s.feed, rest));
            rows.push(StepRows { id: s.id, start: s.cache.len(), rows: n, sample: s.feed.is_empty() });
            caches.push(&mut s.cache);
        }
        if rows.is_empty() {
            return (events, None);
        }
        match self.llm.forward_stage(&mut caches, StageInput::Tokens(feeds)) {
            Ok(output) => {
                drop(caches);
                if let Some(pc) = &mut self.prefix {
                    for s in &mut self.seqs {
                        if s.to_cache.as_ref().is_some_and(|p| s.cache.len() >= p.len()) {
                            if let Some(p) = s.to_cache.take() {
                                pc.insert(&p, &s.cache);
                            }
                        }
                    }
                }
                (events, Some(ForwardStep { rows, output }))
            }
            Err(e) => {
                tracing::error!(error = %e, "forward failed; failing the batch");
                let message = e.to_string();
                events.extend(self.seqs.drain(..).map(|s| Event::Failed { id: s.id, message: message.clone() }));
                (events, None)
            }
        }
    }

    /// Second half of a step: the tokens sampled for sequences (by this batcher or by the last stage of a split
    /// model). Tokens of sequences no longer here (cancelled meanwhile) are ignored.
    pub fn accept(&mut self, tokens: &[(u64, u32)]) -> Vec<Event> {
        let mut events = Vec::new();
        let ctx = self.llm.context_length();
        let llm = Arc::clone(&self.llm);
        let eos = llm.eos_tokens();
        for &(id, token) in tokens {
            let Some(i) = self.seqs.iter().position(|s| s.id == id) else { continue };
            let seq = &mut self.seqs[i];
            seq.sampler.observe(token);
            seq.completion_tokens += 1;
            let mut reason = None;
            let mut text = String::new();
            let piece = if eos.contains(&token) {
                reason = Some(FinishReason::Stop);
                seq.utf8.flush()
            } else {
                seq.utf8.push(llm.token_bytes(token))
            };
            match seq.stop.push(&piece) {
                StopCheck::Continue(t) => text.push_str(&t),
                StopCheck::Stopped(t) => {
                    text.push_str(&t);
                    reason = Some(FinishReason::Stop);
                }
            }
            if reason.is_none() && (seq.completion_tokens >= seq.params.max_tokens || seq.cache.len() + 1 > ctx) {
                reason = Some(FinishReason::Length);
                match seq.stop.push(&seq.utf8.flush()) {
                    StopCheck::Continue(t) => text.push_str(&t),
                    StopCheck::Stopped(t) => {
                        text.push_str(&t);
                        reason = Some(FinishReason::Stop);
                    }
                }
            }
            if reason.is_some() {
                // Text still held back as a possible stop prefix is released at the end (empty after a match).
                text.push_str(&seq.stop.flush());
            }
            events.push(Event::Token { id: seq.id, token, text });
            match reason {
                Some(reason) => {
                    events.push(Event::Finished {
                        id: seq.id,
                        reason,
                        prompt_tokens: seq.prompt_tokens,
                        completion_tokens: seq.completion_tokens,
                    });
                    self.seqs.remove(i);
                }
                None => seq.feed.push(token),
            }
        }
        events
    }
}
