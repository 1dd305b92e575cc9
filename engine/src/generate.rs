//! Continuous batching: one decode loop over many sequences, each with its own KV cache.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::EngineError;
use crate::llama::{KvCache, Llm, StageInput, StageOutput};
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
}

/// Runs many sequences through one model, one token per sequence per step.
pub struct Batcher {
    llm: Arc<Llm>,
    max_batch: usize,
    seqs: Vec<Sequence>,
}

impl Batcher {
    pub fn new(llm: Arc<Llm>, max_batch: usize) -> Batcher {
        Batcher { llm, max_batch: max_batch.max(1), seqs: Vec::new() }
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
        let mut sampler = Sampler::new(params.seed);
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
        let mut feed = prompt;
        feed.extend_from_slice(&resume);
        tracing::debug!(id, prompt_tokens, resumed = completion_tokens, "admitted sequence");
        self.seqs.push(Sequence {
            id,
            cache: self.llm.new_cache(),
            feed,
            prompt_tokens,
            completion_tokens,
            params,
            sampler,
            utf8,
            stop,
            finish_now,
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
        if self.seqs.is_empty() {
            return Ok(events);
        }
        let input = StageInput::Tokens(self.seqs.iter_mut().map(|s| std::mem::take(&mut s.feed)).collect());
        let mut caches: Vec<&mut KvCache> = self.seqs.iter_mut().map(|s| &mut s.cache).collect();
        let logits = match self.llm.forward_stage(&mut caches, input) {
            Ok(StageOutput::Logits(l)) => l,
            Ok(StageOutput::Hidden(_)) => {
                return Err(EngineError::InvalidRequest("the batcher needs a model with all layers".into()))
            }
            Err(e) => {
                tracing::error!(error = %e, "forward failed; failing the batch");
                let message = e.to_string();
                events.extend(self.seqs.drain(..).map(|s| Event::Failed { id: s.id, message: message.clone() }));
                return Ok(events);
            }
        };
        let ctx = self.llm.context_length();
        let llm = Arc::clone(&self.llm);
        let eos = llm.eos_tokens();
        let mut done = Vec::new();
        for (i, (seq, mut logits)) in self.seqs.iter_mut().zip(logits).enumerate() {
            let token = seq.sampler.sample(&mut logits, &seq.params);
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
                    done.push(i);
                }
                None => seq.feed.push(token),
            }
        }
        for i in done.into_iter().rev() {
            self.seqs.remove(i);
        }
        Ok(events)
    }
}
