//! Token sampling (temperature, top-k, top-p, presence/frequency penalties) and stop-sequence handling.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::EngineError;
use crate::guided::{ConstraintSpec, Guide};
use crate::llama::Llm;

/// How to pick tokens for one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    pub max_tokens: usize,
    /// 0 = greedy (argmax).
    pub temperature: f32,
    pub top_p: f32,
    /// 0 = off.
    pub top_k: usize,
    pub seed: Option<u64>,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub stop: Vec<String>,
    /// The shape the answer must have (`None`: free text).
    pub constraint: Option<ConstraintSpec>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            max_tokens: 256,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            seed: None,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            stop: Vec::new(),
            constraint: None,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding of at most `max_tokens` tokens.
    pub fn greedy(max_tokens: usize) -> Self {
        SamplingParams { max_tokens, temperature: 0.0, ..Default::default() }
    }
}

/// Per-sequence sampler state: the RNG, the counts of generated tokens (for penalties) and,
/// for a constrained answer, where the answer is in its shape.
pub(crate) struct Sampler {
    rng: StdRng,
    counts: HashMap<u32, u32>,
    candidates: Vec<(u32, f32)>,
    guide: Option<Guide>,
}

impl Sampler {
    pub(crate) fn new(seed: Option<u64>) -> Self {
        let rng = match seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_rng(&mut rand::rng()),
        };
        Sampler { rng, counts: HashMap::new(), candidates: Vec::new(), guide: None }
    }

    /// The sampler for `params` on `llm`'s vocabulary (an error when the constraint's schema
    /// cannot be used).
    pub(crate) fn for_params(params: &SamplingParams, llm: &Llm) -> Result<Self, EngineError> {
        let mut s = Sampler::new(params.seed);
        if let Some(spec) = &params.constraint {
            s.guide = Some(Guide::new(spec, llm.token_table(), llm.eos_tokens())?);
        }
        Ok(s)
    }

    /// Record a generated token (penalty history, the constraint's progress).
    pub(crate) fn observe(&mut self, token: u32) {
        *self.counts.entry(token).or_insert(0) += 1;
        if let Some(g) = &mut self.guide {
            g.advance(token);
        }
    }

    /// Pick the next token from `logits` (modified in place by the penalties and, for a
    /// constrained answer, by masking the tokens the constraint refuses).
    pub(crate) fn sample(&mut self, logits: &mut [f32], p: &SamplingParams) -> u32 {
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            for (&tok, &count) in &self.counts {
                if let Some(l) = logits.get_mut(tok as usize) {
                    *l -= p.presence_penalty + p.frequency_penalty * count as f32;
                }
            }
        }
        match self.guide.take() {
            Some(guide) => {
                let t = guide.choose(logits, |l| self.draw(l, p));
                self.guide = Some(guide);
                t
            }
            None => self.draw(logits, p),
        }
    }

    /// Draws from `logits` with the temperature, top-k and top-p of `p`.
    fn draw(&mut self, logits: &mut [f32], p: &SamplingParams) -> u32 {
        if p.temperature <= 0.0 || p.top_k == 1 {
            return argmax(logits);
        }
        let cands = &mut self.candidates;
        cands.clear();
        cands.extend(logits.iter().enumerate().filter(|(_, l)| l.is_finite()).map(|(i, &l)| (i as u32, l)));
        if cands.is_empty() {
            return argmax(logits);
        }
        let by_logit_desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 && p.top_k < cands.len() {
            cands.select_nth_unstable_by(p.top_k - 1, by_logit_desc);
            cands.truncate(p.top_k);
        }
        let top_p = p.top_p.clamp(0.0, 1.0);
        let needs_sort = top_p < 1.0;
        if needs_sort {
            cands.sort_unstable_by(by_logit_desc);
        }
        let max = cands.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
        let inv_t = 1.0 / p.temperature;
        let mut sum = 0.0f32;
        for c in cands.iter_mut() {
            c.1 = ((c.1 - max) * inv_t).exp();
            sum += c.1;
        }
        if needs_sort {
            // Keep the smallest prefix whose probability mass reaches top_p (at least one token).
            let target = top_p * sum;
            let mut acc = 0.0;
            let mut keep = cands.len();
            for (i, c) in cands.iter().enumerate() {
                acc += c.1;
                if acc >= target {
                    keep = i + 1;
                    break;
                }
            }
            cands.truncate(keep.max(1));
            sum = cands.iter().map(|c| c.1).sum();
        }
        let mut r = self.rng.random::<f32>() * sum;
        for c in cands.iter() {
            if r < c.1 {
                return c.0;
            }
            r -= c.1;
        }
        cands.last().map(|c| c.0).unwrap_or(0)
    }
}

/// Samples one sequence where the logits are made (the last stage of a split model): its
/// settings, RNG and penalty history.
pub struct SequenceSampler {
    sampler: Sampler,
    params: SamplingParams,
}

impl SequenceSampler {
    /// `history` = tokens generated for this request before (they count for penalties and
    /// for the constraint); `llm` = the model whose logits are sampled (its vocabulary).
    pub fn new(params: SamplingParams, history: &[u32], llm: &Llm) -> Result<Self, EngineError> {
        let mut sampler = Sampler::for_params(&params, llm)?;
        for &t in history {
            sampler.observe(t);
        }
        Ok(SequenceSampler { sampler, params })
    }

    /// Picks the next token and records it.
    pub fn sample(&mut self, logits: &mut [f32]) -> u32 {
        let t = self.sampler.sample(logits, &self.params);
        self.sampler.observe(t);
        t
    }
}

/// Index of the largest value (the first on ties).
pub(crate) fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v {
            best_v = v;
            best = i;
        }
    }
    best as u32
}

/// Tracks generated text against stop sequences: text that might be the start of a stop sequence is held back.
#[derive(Debug, Default, Clone)]
pub(crate) struct StopMatcher {
    stops: Vec<String>,
    text: String,
    emitted: usize,
}

/// Result of adding text to a [`StopMatcher`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum StopCheck {
    /// Text that can be emitted now (possibly empty).
    Continue(String),
    /// A stop sequence matched: the text before it that was not yet emitted; the sequence is finished.
    Stopped(String),
}

impl StopMatcher {
    pub(crate) fn new(stops: &[String]) -> Self {
        StopMatcher { stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(), ..Default::default() }
    }

    /// Text generated earlier (resumed tokens): it counts for matching and is not emitted again, except for a
    /// held-back tail that might start a stop sequence. Returns true when it already contains a stop sequence.
    pub(crate) fn seed_text(&mut self, text: &str) -> bool {
        matches!(self.push(text), StopCheck::Stopped(_))
    }

    pub(crate) fn push(&mut self, new: &str) -> StopCheck {
        let search_from = self.emitted.saturating_sub(self.stops.iter().map(String::len).max().unwrap_or(0));
        self.text.push_str(new);
        // The earliest stop match that ends in the unemitted text.
        let mut cut: Option<usize> = None;
        for stop in &self.stops {
            let mut from = floor_char_boundary(&self.text, search_from);
            while let Some(off) = self.text[from..].find(stop.as_str()) {
                let at = from + off;
                if at + stop.len() > self.emitted {
                    cut = Some(cut.map_or(at, |c: usize| c.min(at)));
                    break;
                }
                from = at + self.text[at..].chars().next().map_or(1, char::len_utf8);
            }
        }
        if let Some(at) = cut {
            let out = if at > self.emitted { self.text[self.emitted..at].to_string() } else { String::new() };
            self.emitted = self.text.len();
            return StopCheck::Stopped(out);
        }
        // Hold back the longest suffix that is a proper prefix of some stop sequence.
        let mut hold_from = self.text.len();
        for (i, _) in self.text[self.emitted..].char_indices() {
            let at = self.emitted + i;
            let tail = &self.text[at..];
            if self.stops.iter().any(|s| s.len() > tail.len() && s.starts_with(tail)) {
                hold_from = at;
                break;
            }
        }
        let out = self.text[self.emitted..hold_from].to_string();
        self.emitted = hold_from;
        StopCheck::Continue(out)
    }

    /// Release any held-back text (the sequence ended for another reason).
    pub(crate) fn flush(&mut self) -> String {
        let out = self.text[self.emitted..].to_string();
        self.emitted = self.text.len();
        out
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> SamplingParams {
        SamplingParams { temperature: 1.0, ..Default::default() }
    }

    fn histogram(logits: &[f32], p: &SamplingParams, n: usize) -> Vec<usize> {
        let mut s = Sampler::new(Some(7));
        let mut h = vec![0; logits.len()];
        for _ in 0..n {
            let mut l = logits.to_vec();
            h[s.sample(&mut l, p) as usize] += 1;
        }
        h
    }

    #[test]
    fn greedy_is_argmax() {
        let mut s = Sampler::new(None);
        let mut l = vec![0.1, 3.0, 2.9, -1.0];
        assert_eq!(s.sample(&mut l, &SamplingParams::greedy(1)), 1);
    }

    #[test]
    fn top_k_limits_candidates() {
        let logits = [1.0, 0.9, 0.8, 0.7, 0.6];
        let h = histogram(&logits, &SamplingParams { top_k: 2, ..params() }, 2000);
        assert!(h[0] > 0 && h[1] > 0);
        assert_eq!(h[2] + h[3] + h[4], 0);
        let h = histogram(&logits, &params(), 2000);
        assert!(h.iter().all(|&c| c > 0), "{h:?}");
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        // probabilities ~ 0.665, 0.245, 0.09
        let logits = [2.0, 1.0, 0.0];
        let h = histogram(&logits, &SamplingParams { top_p: 0.5, ..params() }, 1000);
        assert_eq!(h, vec![1000, 0, 0]);
        let h = histogram(&logits, &SamplingParams { top_p: 0.8, ..params() }, 2000);
        assert!(h[0] > 0 && h[1] > 0 && h[2] == 0, "{h:?}");
    }

    #[test]
    fn low_temperature_sharpens() {
        let logits = [1.0, 0.5];
        let h = histogram(&logits, &SamplingParams { temperature: 0.05, ..params() }, 1000);
        assert!(h[0] > 990, "{h:?}");
    }

    #[test]
    fn penalties_follow_openai_semantics() {
        let mut s = Sampler::new(None);
        s.observe(0);
        s.observe(0);
        s.observe(1);
        let p = SamplingParams { presence_penalty: 0.5, frequency_penalty: 0.25, ..SamplingParams::greedy(1) };
        let mut l = vec![2.0, 1.5, 1.2];
        let t = s.sample(&mut l, &p);
        // token 0: 2.0 - 0.5 - 2*0.25 = 1.0; token 1: 1.5 - 0.5 - 0.25 = 0.75; token 2 untouched.
        assert_eq!(l, vec![1.0, 0.75, 1.2]);
        assert_eq!(t, 2);
    }

    #[test]
    fn seeded_sampling_is_reproducible() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let run = |seed| {
            let mut s = Sampler::new(Some(seed));
            (0..20).map(|_| s.sample(&mut logits.clone(), &params())).collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn stop_sequence_is_held_back_and_cut() {
        let mut m = StopMatcher::new(&["END".to_string()]);
        assert_eq!(m.push("Hello E"), StopCheck::Continue("Hello ".into()));
        assert_eq!(m.push("N"), StopCheck::Continue(String::new()));
        assert_eq!(m.push("Dless"), StopCheck::Stopped(String::new()));
        let mut m = StopMatcher::new(&["END".to_string()]);
        assert_eq!(m.push("ab EN"), StopCheck::Continue("ab ".into()));
        assert_eq!(m.push("x"), StopCheck::Continue("ENx".into()));
        assert_eq!(m.push("yyENDzz"), StopCheck::Stopped("yy".into()));
    }

    #[test]
    fn stop_matcher_flushes_and_handles_multibyte() {
        let mut m = StopMatcher::new(&["\n\n".to_string(), "é!".to_string()]);
        assert_eq!(m.push("café"), StopCheck::Continue("caf".into()));
        assert_eq!(m.push("\n"), StopCheck::Continue("é".into()));
        assert_eq!(m.flush(), "\n");
        let mut m = StopMatcher::new(&["é!".to_string()]);
        assert_eq!(m.push("xé"), StopCheck::Continue("x".into()));
        assert_eq!(m.push("!"), StopCheck::Stopped(String::new()));
    }

    #[test]
    fn resumed_text_counts_for_matching_but_is_not_emitted() {
        let mut m = StopMatcher::new(&["STOP".to_string()]);
        assert!(!m.seed_text("abc ST"));
        assert_eq!(m.push("OP"), StopCheck::Stopped(String::new()));
        let mut m = StopMatcher::new(&["STOP".to_string()]);
        assert!(!m.seed_text("abc ST"));
        assert_eq!(m.push("AY"), StopCheck::Continue("STAY".into()));
        let mut m = StopMatcher::new(&[]);
        m.seed_text("abc");
        assert_eq!(m.push("d"), StopCheck::Continue("d".into()));
    }
}
