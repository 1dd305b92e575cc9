//! Guided decoding: a sequence whose answer must have a shape (a JSON value valid against a
//! schema, either the whole answer or after a trigger such as `<tool_call>`).
//!
//! The [`Guide`] follows the answer byte by byte through the [`JsonMatcher`]. At each step
//! the sampler draws as usual and the draw is kept when the guide allows the token; a refused
//! token is taken out and the draw repeated. After a few refusals every token of the
//! vocabulary is checked (first by its first byte, then whole) and the draw is made among the
//! allowed ones. Both ways sample from the model's distribution restricted to the allowed
//! tokens, so greedy decoding stays greedy.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::constraint::{JsonGrammar, JsonMatcher};
use crate::error::EngineError;

/// What a constrained answer must look like (the engine's side of the wire's `OutputConstraint`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConstraintSpec {
    /// A JSON Schema, as JSON text.
    pub schema: String,
    /// Empty: the answer is one JSON value and ends after it. Otherwise the text is free
    /// until it ends with the trigger; a JSON value follows (after at most one space or
    /// newline) and the text is free again after it.
    pub trigger: String,
}

/// Draws tried before every token of the vocabulary is checked.
const DRAWS_BEFORE_FULL_MASK: usize = 8;
/// The longest the vocabulary check of one step may take once an allowed token is found.
const MASK_BUDGET: std::time::Duration = std::time::Duration::from_millis(50);

#[derive(Clone, Debug)]
enum Phase {
    /// Free text; `tail` = the last bytes, to spot the trigger across tokens.
    Free {
        tail: Vec<u8>,
    },
    /// Just after the trigger: one optional space or newline, then the value.
    Opening {
        spaced: bool,
    },
    Json(JsonMatcher),
    /// The value is complete and nothing may follow: the answer ends.
    Ended,
}

/// One sequence's progress through its constraint.
#[derive(Clone)]
pub(crate) struct Guide {
    grammar: Arc<JsonGrammar>,
    trigger: Vec<u8>,
    vocab: Arc<Vec<Vec<u8>>>,
    eos: Vec<u32>,
    phase: Phase,
}

impl Guide {
    /// A guide for `spec` over a vocabulary (`vocab[id]` = the token's bytes, empty for
    /// control tokens) whose end tokens are `eos`.
    pub(crate) fn new(spec: &ConstraintSpec, vocab: Arc<Vec<Vec<u8>>>, eos: &[u32]) -> Result<Guide, EngineError> {
        let schema: serde_json::Value = serde_json::from_str(&spec.schema)
            .map_err(|e| EngineError::InvalidRequest(format!("the output schema is not JSON: {e}")))?;
        let grammar =
            JsonGrammar::compile(&schema).map_err(|e| EngineError::InvalidRequest(format!("output schema: {e}")))?;
        if eos.is_empty() {
            return Err(EngineError::InvalidRequest(
                "the model has no end token, so its output cannot be constrained".into(),
            ));
        }
        let grammar = Arc::new(grammar);
        let trigger = spec.trigger.as_bytes().to_vec();
        let phase = if trigger.is_empty() {
            Phase::Json(JsonMatcher::new(grammar.clone()))
        } else {
            Phase::Free { tail: Vec::new() }
        };
        Ok(Guide { grammar, trigger, vocab, eos: eos.to_vec(), phase })
    }

    /// Follows the chosen (or resumed) token.
    pub(crate) fn advance(&mut self, token: u32) {
        if self.eos.contains(&token) {
            return;
        }
        let bytes = self.vocab.get(token as usize).map(Vec::as_slice).unwrap_or(&[]);
        let mut phase = self.phase.clone();
        if self.step(&mut phase, bytes) {
            self.phase = phase;
        } else {
            // A resumed token the guide does not allow (the request changed?): give up guiding
            // rather than refuse every token from here on.
            tracing::warn!(token, "a token outside the constraint was fed; the rest is unconstrained");
            self.phase = Phase::Free { tail: Vec::new() };
            self.trigger.clear();
        }
    }

    /// Whether the answer must end now.
    pub(crate) fn must_end(&self) -> bool {
        matches!(self.phase, Phase::Ended)
    }

    /// The end token to use when the answer must end.
    pub(crate) fn end_token(&self) -> u32 {
        self.eos[0]
    }

    /// Whether `token` may come next.
    pub(crate) fn allows(&self, token: u32) -> bool {
        if self.eos.contains(&token) {
            return self.end_allowed();
        }
        let Some(bytes) = self.vocab.get(token as usize) else { return false };
        if bytes.is_empty() {
            // Control tokens print nothing: harmless in free text, a stall inside a value.
            return matches!(self.phase, Phase::Free { .. });
        }
        let mut phase = self.phase.clone();
        self.step(&mut phase, bytes)
    }

    fn end_allowed(&self) -> bool {
        match &self.phase {
            Phase::Free { .. } | Phase::Ended => true,
            Phase::Opening { .. } => false,
            Phase::Json(m) => m.is_complete(),
        }
    }

    /// The bytes a token may start with now.
    fn first_bytes(&self) -> [bool; 256] {
        match &self.phase {
            Phase::Free { .. } => [true; 256],
            Phase::Ended => [false; 256],
            Phase::Opening { spaced } => {
                let mut allowed = JsonMatcher::new(self.grammar.clone()).allowed_bytes();
                if !spaced {
                    allowed[b' ' as usize] = true;
                    allowed[b'\n' as usize] = true;
                }
                allowed
            }
            Phase::Json(m) => {
                if !self.trigger.is_empty() && m.is_complete() {
                    [true; 256]
                } else {
                    m.allowed_bytes()
                }
            }
        }
    }

    /// Runs `bytes` through `phase`; false when a byte is not allowed.
    fn step(&self, phase: &mut Phase, bytes: &[u8]) -> bool {
        for &b in bytes {
            match phase {
                Phase::Free { tail } => {
                    tail.push(b);
                    if !self.trigger.is_empty() && tail.ends_with(&self.trigger) {
                        *phase = Phase::Opening { spaced: false };
                    } else if tail.len() >= self.trigger.len().max(1) {
                        let cut = tail.len() + 1 - self.trigger.len().max(1);
                        tail.drain(..cut);
                    }
                }
                Phase::Opening { spaced } => {
                    if !*spaced && (b == b' ' || b == b'\n') {
                        *spaced = true;
                        continue;
                    }
                    let mut m = JsonMatcher::new(self.grammar.clone());
                    if !m.feed(&[b]) {
                        return false;
                    }
                    *phase = if m.is_finished() { self.past_value() } else { Phase::Json(m) };
                }
                Phase::Json(m) => {
                    if m.feed(&[b]) {
                        if m.is_finished() {
                            *phase = self.past_value();
                        }
                    } else if !self.trigger.is_empty() && m.is_complete() {
                        // A value that could have gone on (a number) ended: free text again.
                        *phase = Phase::Free { tail: vec![b] };
                    } else {
                        return false;
                    }
                }
                Phase::Ended => return false,
            }
        }
        true
    }

    /// The phase after a value that nothing can continue.
    fn past_value(&self) -> Phase {
        if self.trigger.is_empty() {
            Phase::Ended
        } else {
            Phase::Free { tail: Vec::new() }
        }
    }

    /// Picks a token the guide allows: `draw` samples from logits (as the unconstrained
    /// sampler would); refused tokens are masked out (set to -inf) and drawn again.
    pub(crate) fn choose(&self, logits: &mut [f32], mut draw: impl FnMut(&mut [f32]) -> u32) -> u32 {
        if self.must_end() {
            return self.end_token();
        }
        for _ in 0..DRAWS_BEFORE_FULL_MASK {
            let t = draw(logits);
            if logits.get(t as usize).is_some_and(|l| l.is_finite()) && self.allows(t) {
                return t;
            }
            if let Some(l) = logits.get_mut(t as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
        let first = self.first_bytes();
        let end_ok = self.end_allowed();
        // Tokens from the most to the least likely: greedy decoding takes the first allowed
        // one, so it stays exact. A pathological schema (many live alternatives inside a long
        // string) can make checking all 150k tokens take seconds, which would stall every
        // sequence of the batch: past MASK_BUDGET the scan stops at the allowed tokens found.
        let mut order: Vec<u32> = (0..logits.len() as u32).filter(|&t| logits[t as usize].is_finite()).collect();
        order.sort_unstable_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        let started = std::time::Instant::now();
        let mut allowed = vec![false; logits.len()];
        let mut any = false;
        for (checked, &t) in order.iter().enumerate() {
            if any && checked % 256 == 0 && started.elapsed() > MASK_BUDGET {
                tracing::debug!(checked, of = order.len(), "constraint mask cut short by its time budget");
                break;
            }
            let ok = if self.eos.contains(&t) {
                end_ok
            } else {
                match self.vocab.get(t as usize) {
                    Some(bytes) if bytes.is_empty() => matches!(self.phase, Phase::Free { .. }),
                    Some(bytes) => first[bytes[0] as usize] && self.allows(t),
                    None => false,
                }
            };
            if ok {
                allowed[t as usize] = true;
                any = true;
            }
        }
        for (l, ok) in logits.iter_mut().zip(&allowed) {
            if !ok {
                *l = f32::NEG_INFINITY;
            }
        }
        if !any {
            // No token of the vocabulary continues the value (it cannot happen with a byte-level
            // vocabulary, which has every single byte): end rather than emit a wrong token.
            return self.end_token();
        }
        draw(logits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny byte-level vocabulary: single bytes, a few words, an end token and a control token.
    fn vocab() -> (Arc<Vec<Vec<u8>>>, Vec<u32>) {
        let mut v: Vec<Vec<u8>> = (0u8..=255).map(|b| vec![b]).collect();
        for w in ["{\"", "\":", " \"", "\"}", "<tool_call>", "hello", "true", "<tool_call>\n{\""] {
            v.push(w.as_bytes().to_vec());
        }
        v.push(Vec::new()); // control token
        v.push(Vec::new()); // end token
        let eos = vec![(v.len() - 1) as u32];
        (Arc::new(v), eos)
    }

    fn id_of(v: &[Vec<u8>], s: &str) -> u32 {
        v.iter().position(|t| t == s.as_bytes()).expect("in vocab") as u32
    }

    fn spec(schema: &str, trigger: &str) -> ConstraintSpec {
        ConstraintSpec { schema: schema.into(), trigger: trigger.into() }
    }

    /// Greedy decoding with a fixed preference order: the first allowed token of `prefs` wins.
    fn greedy_text(guide: &mut Guide, vocab: &[Vec<u8>], eos: u32, prefs: &[u32], max: usize) -> (String, bool) {
        let mut out = Vec::new();
        for _ in 0..max {
            let mut logits = vec![0.0f32; vocab.len()];
            for (rank, &t) in prefs.iter().enumerate() {
                logits[t as usize] = 100.0 - rank as f32;
            }
            let t = guide.choose(&mut logits, |l| crate::sampling::argmax(l));
            if t == eos {
                return (String::from_utf8(out).expect("utf8"), true);
            }
            out.extend_from_slice(&vocab[t as usize]);
            guide.advance(t);
        }
        (String::from_utf8(out).expect("utf8"), false)
    }

    #[test]
    fn a_whole_answer_is_forced_into_the_schema_and_ends() {
        let (v, eos) = vocab();
        let schema = r#"{"type":"object","properties":{"ok":{"type":"boolean"}},"required":["ok"]}"#;
        let mut g = Guide::new(&spec(schema, ""), v.clone(), &eos).expect("compiles");
        // The model would rather say "hello" forever and end at once.
        let prefs = [id_of(&v, "hello"), eos[0], id_of(&v, "true"), id_of(&v, "{\"")];
        let (text, ended) = greedy_text(&mut g, &v, eos[0], &prefs, 40);
        assert!(ended, "the answer ends once the value is complete: {text:?}");
        let value: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(value["ok"], serde_json::json!(true), "{text}");
    }

    #[test]
    fn after_a_trigger_the_value_is_constrained_then_text_is_free() {
        let (v, eos) = vocab();
        let schema = r#"{"type":"object","properties":{"name":{"const":"f"}},"required":["name"]}"#;
        let g = Guide::new(&spec(schema, "<tool_call>"), v.clone(), &eos).expect("compiles");
        assert!(g.allows(id_of(&v, "hello")), "free text before the trigger");
        assert!(g.allows(eos[0]), "the answer may end without a call");
        let mut g2 = g.clone();
        g2.advance(id_of(&v, "<tool_call>"));
        assert!(!g2.allows(id_of(&v, "hello")), "after the trigger a value must follow");
        assert!(!g2.allows(eos[0]), "not end inside a call");
        assert!(g2.allows(id_of(&v, "{\"")));
        assert!(g2.allows(b'\n' as u32), "one newline may come first");
        // The trigger and the value's start in one token.
        assert!(g.allows(id_of(&v, "<tool_call>\n{\"")));
        let mut g3 = g.clone();
        for b in "<tool_call>\n{\"name\":\"f\"}".bytes() {
            assert!(g3.allows(b as u32), "byte {:?}", b as char);
            g3.advance(b as u32);
        }
        assert!(g3.allows(id_of(&v, "hello")), "free again after the value");
        assert!(g3.allows(eos[0]));
        // A wrong name is refused.
        let mut g4 = g.clone();
        for b in "<tool_call>{\"name\":\"".bytes() {
            g4.advance(b as u32);
        }
        assert!(!g4.allows(b'x' as u32) && g4.allows(b'f' as u32));
    }

    #[test]
    fn control_tokens_are_refused_inside_a_value() {
        let (v, eos) = vocab();
        let control = (v.len() - 2) as u32;
        let g = Guide::new(&spec(r#"{"type":"string"}"#, ""), v.clone(), &eos).expect("compiles");
        assert!(!g.allows(control) && !g.allows(eos[0]));
        let free = Guide::new(&spec(r#"{"type":"string"}"#, "<tool_call>"), v, &eos).expect("compiles");
        assert!(free.allows(control));
    }

    #[test]
    fn a_bad_schema_is_an_invalid_request_naming_the_problem() {
        let (v, eos) = vocab();
        let err = Guide::new(&spec(r#"{"type":"string","pattern":"a+"}"#, ""), v.clone(), &eos).err().expect("refused");
        assert!(err.to_string().contains("pattern"), "{err}");
        assert!(Guide::new(&spec("{nope", ""), v, &eos).is_err());
    }
}
