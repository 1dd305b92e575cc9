//! The byte automaton: a few alternatives, each a stack of small `Copy` frames.

use std::sync::Arc;

use super::lexer::{hash_bytes, Lex, LexStep, HASH_START};
use super::schema::{
    JsonGrammar, Node, NodeId, ObjectSpec, Typed, ANY, T_ARRAY, T_BOOLEAN, T_INTEGER, T_NULL, T_NUMBER, T_OBJECT,
    T_STRING,
};
use super::{MAX_ALTERNATIVES, MAX_DEPTH, MAX_EXPONENT_DIGITS, MAX_NUMBER_DIGITS};

/// Most `anyOf`s entered for one byte (compile refuses cycles; this is a second guard).
const MAX_ANYOF_CHAIN: u32 = 64;

const WORDS: [&[u8]; 3] = [b"true", b"false", b"null"];

/// Object progress. `ws`: the one allowed space was just written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ObjSt {
    /// After `{`.
    Open { ws: bool },
    /// After a key: `:` must follow.
    AfterKey,
    /// After `:`.
    AfterColon { ws: bool },
    /// After a member's value.
    AfterValue { ws: bool },
    /// After `,`.
    AfterComma { ws: bool },
}

/// Array progress. `ws`: the one allowed space was just written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ArrSt {
    Open { ws: bool },
    AfterValue { ws: bool },
    AfterComma { ws: bool },
}

/// Number progress (`-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NumSt {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    ExpMark,
    ExpSign,
    Exp,
}

impl NumSt {
    fn complete(self) -> bool {
        matches!(self, NumSt::Zero | NumSt::Int | NumSt::Frac | NumSt::Exp)
    }
}

/// One level of the parse stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Frame {
    /// The top-level value, not started.
    Root(NodeId),
    /// Inside an object of typed node `node`; its used-property bitset starts at `pool[bits]`
    /// and is followed by the hashes of its free keys. `pending`: schema of the current member.
    Obj { node: NodeId, st: ObjSt, bits: u32, pending: NodeId },
    /// Inside a key of the object below. `lo..hi`: the declared keys (serialized, in
    /// `ObjectSpec::keys`) whose first `pos` bytes were written (`raw`: some still are);
    /// `hash`: of the decoded key so far; `lex`: the string lexer (free keys only).
    Key { node: NodeId, bits: u32, lo: u32, hi: u32, pos: u32, hash: u64, lex: Lex, raw: bool },
    /// Inside an array.
    Arr { items: NodeId, min: u32, max: u32, count: u32, st: ArrSt },
    /// Inside a string value of `len` characters so far.
    Str { len: u32, min: u32, max: u32, lex: Lex },
    /// Inside a number; `digits` in all, `exp` of them in the exponent.
    Num { integer: bool, st: NumSt, digits: u8, exp: u8 },
    /// Inside one of the literals `lo..hi` of node `node`, `pos` bytes in.
    Lit { node: NodeId, pos: u32, lo: u32, hi: u32 },
    /// Inside `true`, `false` or `null` (index into `WORDS`).
    Word { word: u8, pos: u8 },
}

/// One parse alternative.
#[derive(Debug, PartialEq, Eq, Default)]
pub(crate) struct Alt {
    frames: Vec<Frame>,
    /// Per open object: used-property bitset words, then free-key hashes (stack discipline).
    pool: Vec<u64>,
    /// Open objects and arrays.
    depth: u16,
}

impl Clone for Alt {
    fn clone(&self) -> Alt {
        Alt { frames: self.frames.clone(), pool: self.pool.clone(), depth: self.depth }
    }

    fn clone_from(&mut self, source: &Alt) {
        self.frames.clone_from(&source.frames);
        self.pool.clone_from(&source.pool);
        self.depth = source.depth;
    }
}

impl Alt {
    fn set_top(&mut self, f: Frame) {
        if let Some(top) = self.frames.last_mut() {
            *top = f;
        }
    }

    /// May the output end here? The top-level value is closed, or is a number (or numeric
    /// literal) that could also go on.
    fn is_complete(&self, g: &JsonGrammar) -> bool {
        match self.frames[..] {
            [] => true,
            [Frame::Num { st, .. }] => st.complete(),
            [Frame::Lit { node, pos, lo, .. }] => lit_complete(g, node, lo, pos),
            _ => false,
        }
    }

    fn word(&self, i: usize) -> u64 {
        self.pool.get(i).copied().unwrap_or(0)
    }

    fn used(&self, bits: u32, i: usize) -> bool {
        self.word(bits as usize + i / 64) & (1 << (i % 64)) != 0
    }

    fn any_unused(&self, bits: u32, lo: usize, hi: usize) -> bool {
        (lo..hi).any(|i| !self.used(bits, i))
    }

    fn required_met(&self, spec: &ObjectSpec, bits: u32) -> bool {
        spec.required.iter().enumerate().all(|(w, req)| self.word(bits as usize + w) & req == *req)
    }

    fn key_possible(&self, spec: &ObjectSpec, bits: u32) -> bool {
        spec.additional.is_some() || self.any_unused(bits, 0, spec.keys.len())
    }
}

/// The matcher state without its grammar: the live alternatives.
#[derive(Clone, Debug)]
pub(crate) struct State {
    alts: Vec<Alt>,
}

impl State {
    /// Expecting a value of `root`.
    pub(crate) fn new(root: NodeId) -> State {
        State { alts: vec![Alt { frames: vec![Frame::Root(root)], pool: Vec::new(), depth: 0 }] }
    }

    /// Feed one byte; false when no alternative takes it (the state is then garbage).
    fn step(&mut self, g: &JsonGrammar, b: u8) -> bool {
        let mut forks = Vec::new();
        self.alts.retain_mut(|alt| step(g, alt, b, &mut forks));
        self.alts.append(&mut forks);
        if self.alts.len() > 1 {
            let mut kept: Vec<Alt> = Vec::with_capacity(self.alts.len().min(MAX_ALTERNATIVES));
            for alt in self.alts.drain(..) {
                if kept.len() < MAX_ALTERNATIVES && !kept.contains(&alt) {
                    kept.push(alt);
                }
            }
            self.alts = kept;
        }
        !self.alts.is_empty()
    }

    /// Feed bytes; false at the first byte refused (the state is then garbage).
    pub(crate) fn feed(&mut self, g: &JsonGrammar, bytes: &[u8]) -> bool {
        bytes.iter().all(|&b| self.step(g, b))
    }

    pub(crate) fn is_complete(&self, g: &JsonGrammar) -> bool {
        self.alts.iter().any(|a| a.is_complete(g))
    }

    pub(crate) fn allowed(&self, g: &JsonGrammar) -> [bool; 256] {
        let mut out = [false; 256];
        let mut scratch = Alt::default();
        let mut forks = Vec::new();
        for alt in &self.alts {
            for (b, slot) in out.iter_mut().enumerate() {
                if *slot {
                    continue;
                }
                scratch.clone_from(alt);
                forks.clear();
                *slot = step(g, &mut scratch, b as u8, &mut forks) || !forks.is_empty();
            }
        }
        out
    }
}

/// A byte-level matcher of JSON documents valid under a [`JsonGrammar`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct JsonMatcher {
    grammar: Arc<JsonGrammar>,
    state: State,
}

impl JsonMatcher {
    /// A matcher at the start of a document.
    pub fn new(grammar: Arc<JsonGrammar>) -> JsonMatcher {
        let state = State::new(grammar.root);
        JsonMatcher { grammar, state }
    }

    /// Feed bytes; returns false (and leaves the state unchanged) if any byte is not allowed
    /// here. Empty input returns true.
    pub fn feed(&mut self, bytes: &[u8]) -> bool {
        if bytes.is_empty() {
            return true;
        }
        let mut next = self.state.clone();
        if next.feed(&self.grammar, bytes) {
            self.state = next;
            true
        } else {
            false
        }
    }

    /// Whether `feed(bytes)` would succeed, without changing the state.
    pub fn accepts(&self, bytes: &[u8]) -> bool {
        if bytes.is_empty() {
            return true;
        }
        self.state.clone().feed(&self.grammar, bytes)
    }

    /// The single bytes allowed next (`out[b]` is true when `accepts(&[b])` is); used to
    /// pre-filter a vocabulary by first byte.
    pub fn allowed_bytes(&self) -> [bool; 256] {
        self.state.allowed(&self.grammar)
    }

    /// A complete value has been produced: the output may end here (e.g. after `{"a":1}`, or
    /// after a top-level `12` whose digits could still go on).
    pub fn is_complete(&self) -> bool {
        self.state.is_complete(&self.grammar)
    }

    /// Complete and no further byte is allowed (e.g. after a closing top-level `}`): the
    /// output must end now.
    pub fn is_finished(&self) -> bool {
        self.is_complete() && !self.allowed_bytes().iter().any(|&a| a)
    }

    /// The grammar this matcher follows.
    pub fn grammar(&self) -> &Arc<JsonGrammar> {
        &self.grammar
    }
}

fn lit_complete(g: &JsonGrammar, node: NodeId, lo: u32, pos: u32) -> bool {
    g.literals(node).and_then(|l| l.get(lo as usize)).is_some_and(|l| l.len() == pos as usize)
}

/// Narrow the sorted byte strings `list[lo..hi]` (sharing their first `pos` bytes) to those
/// whose byte `pos` is `b`. Empty when `lo == hi` in the result.
fn narrow(list: &[Box<[u8]>], lo: u32, hi: u32, pos: u32, b: u8) -> (u32, u32) {
    let Some(slice) = list.get(lo as usize..hi as usize) else { return (0, 0) };
    let key = |e: &[u8]| e.get(pos as usize).map_or(-1, |&x| i32::from(x));
    let b = i32::from(b);
    let first = slice.partition_point(|e| key(e) < b) as u32;
    let end = slice.partition_point(|e| key(e) <= b) as u32;
    (lo + first, lo + end)
}

/// Feed `b` to one alternative. False: refused (the alternative is then garbage). Alternatives
/// opened by an `anyOf` beside the one continued in `alt` are pushed to `forks`.
fn step(g: &JsonGrammar, alt: &mut Alt, b: u8, forks: &mut Vec<Alt>) -> bool {
    loop {
        let Some(&top) = alt.frames.last() else { return false };
        match top {
            Frame::Root(node) => {
                alt.frames.pop();
                return start(g, alt, node, b, forks, 0);
            }
            Frame::Obj { node, st, bits, pending } => return object_step(g, alt, node, st, bits, pending, b, forks),
            Frame::Key { .. } => return key_step(g, alt, top, b),
            Frame::Arr { items, min, max, count, st } => {
                let set = |alt: &mut Alt, st: ArrSt, count: u32| alt.set_top(Frame::Arr { items, min, max, count, st });
                return match (st, b) {
                    (ArrSt::Open { ws: false }, b' ') => {
                        set(alt, ArrSt::Open { ws: true }, count);
                        true
                    }
                    (ArrSt::Open { .. } | ArrSt::AfterValue { .. }, b']') if count >= min => {
                        alt.frames.pop();
                        alt.depth = alt.depth.saturating_sub(1);
                        true
                    }
                    (ArrSt::Open { .. }, _) | (ArrSt::AfterComma { ws: true }, _) if count < max => {
                        set(alt, ArrSt::AfterValue { ws: false }, count + 1);
                        start(g, alt, items, b, forks, 0)
                    }
                    (ArrSt::AfterValue { ws: false }, b' ') if count >= min => {
                        set(alt, ArrSt::AfterValue { ws: true }, count);
                        true
                    }
                    (ArrSt::AfterValue { ws: false }, b',') if count < max => {
                        set(alt, ArrSt::AfterComma { ws: false }, count);
                        true
                    }
                    (ArrSt::AfterComma { ws: false }, b' ') => {
                        set(alt, ArrSt::AfterComma { ws: true }, count);
                        true
                    }
                    (ArrSt::AfterComma { ws: false }, _) if count < max => {
                        set(alt, ArrSt::AfterValue { ws: false }, count + 1);
                        start(g, alt, items, b, forks, 0)
                    }
                    _ => false,
                };
            }
            Frame::Str { len, min, max, lex } => {
                return match lex.step(b) {
                    LexStep::Reject => false,
                    LexStep::Char { next, new_char, .. } => {
                        let len = if new_char {
                            if len >= max {
                                return false;
                            }
                            len + 1
                        } else {
                            len
                        };
                        alt.set_top(Frame::Str { len, min, max, lex: next });
                        true
                    }
                    LexStep::Close => {
                        if len < min {
                            return false;
                        }
                        alt.frames.pop();
                        true
                    }
                };
            }
            Frame::Num { integer, st, digits, exp } => match number_step(integer, st, digits, exp, b) {
                Some(f) => {
                    alt.set_top(f);
                    return true;
                }
                None if st.complete() => {
                    // The number ends here; the byte belongs to what follows it.
                    alt.frames.pop();
                }
                None => return false,
            },
            Frame::Lit { node, pos, lo, hi } => {
                let Some(list) = g.literals(node) else { return false };
                let (nlo, nhi) = narrow(list, lo, hi, pos, b);
                if nlo < nhi {
                    let pos = pos + 1;
                    let finished = nhi - nlo == 1 && list.get(nlo as usize).is_some_and(|l| l.len() == pos as usize);
                    if finished {
                        alt.frames.pop();
                    } else {
                        alt.set_top(Frame::Lit { node, pos, lo: nlo, hi: nhi });
                    }
                    return true;
                }
                if !lit_complete(g, node, lo, pos) {
                    return false;
                }
                // A numeric literal that is also a prefix of a longer one ended here.
                alt.frames.pop();
            }
            Frame::Word { word, pos } => {
                let text = WORDS.get(word as usize).copied().unwrap_or(b"");
                if text.get(pos as usize) != Some(&b) {
                    return false;
                }
                if pos as usize + 1 == text.len() {
                    alt.frames.pop();
                } else {
                    alt.set_top(Frame::Word { word, pos: pos + 1 });
                }
                return true;
            }
        }
    }
}

fn number_step(integer: bool, st: NumSt, digits: u8, exp: u8, b: u8) -> Option<Frame> {
    let room = digits < MAX_NUMBER_DIGITS;
    let num = |st, digits, exp| Some(Frame::Num { integer, st, digits, exp });
    match (st, b) {
        (NumSt::Minus, b'0') => num(NumSt::Zero, 1, 0),
        (NumSt::Minus, b'1'..=b'9') => num(NumSt::Int, 1, 0),
        (NumSt::Int, b'0'..=b'9') if room => num(NumSt::Int, digits + 1, 0),
        (NumSt::Zero | NumSt::Int, b'.') if !integer && room => num(NumSt::Dot, digits, 0),
        (NumSt::Dot | NumSt::Frac, b'0'..=b'9') if room => num(NumSt::Frac, digits + 1, 0),
        (NumSt::Zero | NumSt::Int | NumSt::Frac, b'e' | b'E') if !integer && room => num(NumSt::ExpMark, digits, 0),
        (NumSt::ExpMark, b'+' | b'-') => num(NumSt::ExpSign, digits, 0),
        (NumSt::ExpMark | NumSt::ExpSign, b'0'..=b'9') if room => num(NumSt::Exp, digits + 1, 1),
        (NumSt::Exp, b'0'..=b'9') if room && exp < MAX_EXPONENT_DIGITS => num(NumSt::Exp, digits + 1, exp + 1),
        _ => None,
    }
}

/// Start a value of `node` with its first byte `b`.
fn start(g: &JsonGrammar, alt: &mut Alt, node: NodeId, b: u8, forks: &mut Vec<Alt>, chain: u32) -> bool {
    if chain > MAX_ANYOF_CHAIN {
        return false;
    }
    match g.node(node) {
        None => false,
        Some(Node::Alias(target)) => start(g, alt, *target, b, forks, chain + 1),
        Some(Node::AnyOf(children)) => {
            let before = alt.clone();
            let mut started = false;
            for &child in children {
                let mut a = before.clone();
                if start(g, &mut a, child, b, forks, chain + 1) {
                    if started {
                        forks.push(a);
                    } else {
                        *alt = a;
                        started = true;
                    }
                }
            }
            started
        }
        Some(Node::Literals { values, .. }) => {
            let (lo, hi) = narrow(values, 0, values.len() as u32, 0, b);
            if lo >= hi {
                return false;
            }
            let finished = hi - lo == 1 && values.get(lo as usize).is_some_and(|l| l.len() == 1);
            if !finished {
                alt.frames.push(Frame::Lit { node, pos: 1, lo, hi });
            }
            true
        }
        Some(Node::Typed(t)) => start_typed(alt, node, t, b),
    }
}

fn start_typed(alt: &mut Alt, node: NodeId, t: &Typed, b: u8) -> bool {
    let has = |bit: u8| t.types & bit != 0;
    let frame = match b {
        b'{' if has(T_OBJECT) => {
            if alt.depth >= MAX_DEPTH {
                return false;
            }
            let bits = alt.pool.len() as u32;
            alt.pool.resize(alt.pool.len() + t.object.words(), 0);
            alt.depth += 1;
            Frame::Obj { node, st: ObjSt::Open { ws: false }, bits, pending: ANY }
        }
        b'[' if has(T_ARRAY) => {
            if alt.depth >= MAX_DEPTH {
                return false;
            }
            alt.depth += 1;
            Frame::Arr { items: t.items, min: t.min_items, max: t.max_items, count: 0, st: ArrSt::Open { ws: false } }
        }
        b'"' if has(T_STRING) => Frame::Str { len: 0, min: t.min_length, max: t.max_length, lex: Lex::Normal },
        b'-' | b'0'..=b'9' if has(T_NUMBER | T_INTEGER) => {
            let integer = !has(T_NUMBER);
            match b {
                b'-' => Frame::Num { integer, st: NumSt::Minus, digits: 0, exp: 0 },
                b'0' => Frame::Num { integer, st: NumSt::Zero, digits: 1, exp: 0 },
                _ => Frame::Num { integer, st: NumSt::Int, digits: 1, exp: 0 },
            }
        }
        b't' if has(T_BOOLEAN) => Frame::Word { word: 0, pos: 1 },
        b'f' if has(T_BOOLEAN) => Frame::Word { word: 1, pos: 1 },
        b'n' if has(T_NULL) => Frame::Word { word: 2, pos: 1 },
        _ => return false,
    };
    alt.frames.push(frame);
    true
}

#[allow(clippy::too_many_arguments)]
fn object_step(
    g: &JsonGrammar,
    alt: &mut Alt,
    node: NodeId,
    st: ObjSt,
    bits: u32,
    pending: NodeId,
    b: u8,
    forks: &mut Vec<Alt>,
) -> bool {
    let Some(spec) = g.typed(node).map(|t| &t.object) else { return false };
    let set = |alt: &mut Alt, st: ObjSt| alt.set_top(Frame::Obj { node, st, bits, pending });
    let close_ok = alt.required_met(spec, bits);
    let key_ok = alt.key_possible(spec, bits);
    match (st, b) {
        (ObjSt::Open { ws: false }, b' ') if key_ok || close_ok => set(alt, ObjSt::Open { ws: true }),
        (ObjSt::Open { .. } | ObjSt::AfterComma { .. }, b'"') if key_ok => {
            alt.frames.push(Frame::Key {
                node,
                bits,
                lo: 0,
                hi: spec.keys.len() as u32,
                pos: 1,
                hash: HASH_START,
                lex: Lex::Normal,
                raw: true,
            });
        }
        (ObjSt::Open { .. } | ObjSt::AfterValue { .. }, b'}') if close_ok => {
            alt.pool.truncate(bits as usize);
            alt.frames.pop();
            alt.depth = alt.depth.saturating_sub(1);
        }
        (ObjSt::AfterKey, b':') => set(alt, ObjSt::AfterColon { ws: false }),
        (ObjSt::AfterColon { ws: false }, b' ') => set(alt, ObjSt::AfterColon { ws: true }),
        (ObjSt::AfterColon { .. }, _) => {
            set(alt, ObjSt::AfterValue { ws: false });
            return start(g, alt, pending, b, forks, 0);
        }
        (ObjSt::AfterValue { ws: false }, b' ') if close_ok => set(alt, ObjSt::AfterValue { ws: true }),
        (ObjSt::AfterValue { ws: false }, b',') if key_ok => set(alt, ObjSt::AfterComma { ws: false }),
        (ObjSt::AfterComma { ws: false }, b' ') => set(alt, ObjSt::AfterComma { ws: true }),
        _ => return false,
    }
    true
}

/// The key of the object below is complete: it is declared property `index` (`Some`) or a free
/// key (`None`). Record it and expect `:`.
fn end_key(alt: &mut Alt, spec: &ObjectSpec, bits: u32, index: Option<usize>) {
    alt.frames.pop();
    let pending = match index {
        Some(i) => {
            if let Some(w) = alt.pool.get_mut(bits as usize + i / 64) {
                *w |= 1 << (i % 64);
            }
            spec.values.get(i).copied().unwrap_or(ANY)
        }
        None => spec.additional.unwrap_or(ANY),
    };
    if let Some(Frame::Obj { st, pending: p, .. }) = alt.frames.last_mut() {
        *st = ObjSt::AfterKey;
        *p = pending;
    }
}

fn key_step(g: &JsonGrammar, alt: &mut Alt, top: Frame, b: u8) -> bool {
    let Frame::Key { node, bits, lo, hi, pos, hash, lex, raw } = top else { return false };
    let Some(spec) = g.typed(node).map(|t| &t.object) else { return false };
    let (nlo, nhi) = if raw { narrow(&spec.keys, lo, hi, pos, b) } else { (0, 0) };
    let declared_end = nhi > nlo && spec.keys.get(nlo as usize).is_some_and(|k| k.len() == pos as usize + 1);

    if spec.additional.is_none() {
        // Only declared, unused names, written exactly as serialized.
        if nlo >= nhi || !alt.any_unused(bits, nlo as usize, nhi as usize) {
            return false;
        }
        if declared_end {
            end_key(alt, spec, bits, Some(nlo as usize));
        } else {
            alt.set_top(Frame::Key { node, bits, lo: nlo, hi: nhi, pos: pos + 1, hash, lex, raw });
        }
        return true;
    }

    match lex.step(b) {
        LexStep::Reject => false,
        LexStep::Char { next, out, .. } => {
            let hash = hash_bytes(hash, out.as_slice());
            // Once no declared name fits, `pos` stops counting (a free key may be very long).
            let raw = nlo < nhi;
            let pos = if raw { pos + 1 } else { pos };
            alt.set_top(Frame::Key { node, bits, lo: nlo, hi: nhi, pos, hash, lex: next, raw });
            true
        }
        LexStep::Close => {
            if declared_end {
                if alt.used(bits, nlo as usize) {
                    return false;
                }
                end_key(alt, spec, bits, Some(nlo as usize));
                return true;
            }
            // A free key: not a declared name however spelled, and not a repeat.
            if spec.name_hashes.binary_search(&hash).is_ok() {
                return false;
            }
            let free_start = bits as usize + spec.words();
            if alt.pool.get(free_start..).is_some_and(|seen| seen.contains(&hash)) {
                return false;
            }
            alt.pool.push(hash);
            end_key(alt, spec, bits, None);
            true
        }
    }
}
