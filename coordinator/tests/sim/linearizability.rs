//! Linearizability checking for concurrent histories.
//!
//! This is a Wing–Gong / Lowe style search (as used by Knossos and Porcupine):
//! starting from the initial model state, repeatedly pick an operation that may
//! be linearized next (no other pending *completed* operation finished strictly
//! before it was invoked), apply it to the sequential model, require its result
//! to match the observed one, and backtrack on mismatch. Visited
//! `(set of linearized operations, model state)` pairs are memoized so that
//! equivalent search nodes are explored only once.
//!
//! Operations whose outcome is unknown (`Event::complete == None`) may be
//! linearized at any point after their invocation, or not at all; their result
//! is never checked. The history is linearizable as soon as every completed
//! operation has been linearized.
//!
//! On top of the plain search, all of which keeps the answer exact:
//! - a failed node also prunes nodes that differ only by having linearized
//!   *more* unknown-outcome operations (those can always be left out);
//! - unknown-outcome operations that would not change the state are skipped;
//! - when the model's reachable state space is small (at most 256 states, and
//!   at most 4 per event plus 16, as for registers and small sets), the closure of the initial state under all
//!   operations is computed once and used to (a) cut off any node from which
//!   some remaining completed operation can no longer produce its result (so a
//!   stale read after many concurrent writes fails fast) and (b) linearize
//!   operations that never change the state (reads) as soon as they match,
//!   without branching on them.
//!
//! Linearizability checking is NP-complete, so some histories remain
//! expensive: those with long windows of many concurrent operations on a model
//! whose state space is large (such as append-only logs), when they are *not*
//! linearizable or nearly so. Partition by key (`check_partitioned`) wherever
//! the model allows.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

/// A sequential specification.
pub trait Model: Clone + std::hash::Hash + Eq {
    /// An operation a client may invoke.
    type Op: Clone + std::fmt::Debug;
    /// The result of an operation.
    type Ret: Clone + std::fmt::Debug + PartialEq;
    /// Applies `op` to a copy of the state; returns the new state and the result.
    fn step(&self, op: &Self::Op) -> (Self, Self::Ret);
}

/// One client operation as observed by the test harness.
#[derive(Clone, Debug)]
pub struct Event<O, R> {
    /// The operation that was invoked.
    pub op: O,
    /// Logical time the client invoked it.
    pub invoke: u64,
    /// `Some((time, result))` when the client saw it complete with `result`;
    /// `None` when the outcome is unknown (timeout, crash): it may or may not have taken
    /// effect, at any time after `invoke`, and its result is unconstrained.
    pub complete: Option<(u64, R)>,
}

/// Why a history is not linearizable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Human-readable: the longest linearizable prefix found and the operations that could not be placed.
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Violation {}

/// Checks that `history` is linearizable with respect to `init`.
/// Must return Ok(()) for every linearizable history and Err for every non-linearizable one.
/// Failed operations that definitely did not take effect must simply not be included by the caller.
///
/// # Errors
///
/// Returns a [`Violation`] when the history is not linearizable, naming
/// operations by their index in `history` (`#i`), or when an event completes
/// before it is invoked (invalid input).
pub fn check<M: Model>(init: &M, history: &[Event<M::Op, M::Ret>]) -> Result<(), Violation> {
    let indexed: Vec<Labelled<'_, M>> = history.iter().enumerate().collect();
    check_indexed(init, &indexed)
}

/// Splits a history by key (ops on different keys commute and are independent) and checks each part.
///
/// Every part is checked separately against a fresh copy of `init`, so `init`
/// must be the initial state of a *single* key.
///
/// # Errors
///
/// As [`check`], for the first failing part in key order; operation indices in
/// the message (`#i`) refer to positions in the full `history`.
pub fn check_partitioned<M: Model, K: Ord + Clone>(
    init: &M,
    history: &[Event<M::Op, M::Ret>],
    key: impl Fn(&M::Op) -> K,
) -> Result<(), Violation> {
    // Report malformed input as such, before any partition fails for another reason.
    let all: Vec<Labelled<'_, M>> = history.iter().enumerate().collect();
    validate(&all)?;

    let mut parts: BTreeMap<K, Vec<Labelled<'_, M>>> = BTreeMap::new();
    for (i, event) in history.iter().enumerate() {
        parts.entry(key(&event.op)).or_default().push((i, event));
    }
    let count = parts.len();
    for (p, part) in parts.values().enumerate() {
        check_indexed(init, part).map_err(|v| Violation {
            message: format!(
                "partition {} of {} (in key order, first op #{}): {}",
                p + 1,
                count,
                part.first().map_or(0, |(i, _)| *i),
                v.message
            ),
        })?;
    }
    Ok(())
}

/// An event of a history together with its index in the caller's history.
type Labelled<'a, M> = (usize, &'a Event<<M as Model>::Op, <M as Model>::Ret>);

/// Most states [`Reachability::build`] may find before giving up, which bounds
/// both the cost of building the closure (states times events model steps)
/// and that of the pruning check at every search node. The limit is lower for
/// short histories (see [`reachable_state_limit`]), so that models with
/// unbounded state spaces waste little time on the attempt.
const REACHABLE_STATE_LIMIT: usize = 256;

/// The state limit for a history of `events` events: enough for a register
/// (at most one new state per event) with room to spare.
fn reachable_state_limit(events: usize) -> usize {
    REACHABLE_STATE_LIMIT.min(events.saturating_mul(4).saturating_add(16))
}

/// Number of search nodes spent looking for a long linearizable prefix (for the
/// error message) once the pre-check has already proved a history non-linearizable.
const PREFIX_SEARCH_BUDGET: usize = 2_000;

/// A set of small integers (positions of events in the search order).
#[derive(Clone, PartialEq, Eq, Hash)]
enum Bits {
    /// Histories of at most 128 events.
    Small(u128),
    /// Longer histories.
    Large(Vec<u64>),
}

impl Bits {
    fn new(len: usize) -> Self {
        if len <= 128 {
            Bits::Small(0)
        } else {
            Bits::Large(vec![0; len.div_ceil(64)])
        }
    }

    fn get(&self, i: usize) -> bool {
        match self {
            Bits::Small(w) => i < 128 && w & (1 << i) != 0,
            Bits::Large(ws) => ws.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0),
        }
    }

    fn set(&mut self, i: usize) {
        match self {
            Bits::Small(w) if i < 128 => *w |= 1 << i,
            Bits::Small(_) => {}
            Bits::Large(ws) => {
                if let Some(w) = ws.get_mut(i / 64) {
                    *w |= 1 << (i % 64);
                }
            }
        }
    }

    fn clear(&mut self, i: usize) {
        match self {
            Bits::Small(w) if i < 128 => *w &= !(1 << i),
            Bits::Small(_) => {}
            Bits::Large(ws) => {
                if let Some(w) = ws.get_mut(i / 64) {
                    *w &= !(1 << (i % 64));
                }
            }
        }
    }

    /// Whether every element of `self` is in `other`.
    fn is_subset_of(&self, other: &Bits) -> bool {
        match (self, other) {
            (Bits::Small(a), Bits::Small(b)) => a & !b == 0,
            (Bits::Large(a), Bits::Large(b)) => a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x & !y == 0),
            // Sets of different capacities never occur together.
            _ => false,
        }
    }
}

/// An event prepared for the search.
struct Entry<'a, O, R> {
    /// Index of the event in the caller's history.
    label: usize,
    event: &'a Event<O, R>,
}

impl<O, R> Entry<'_, O, R> {
    fn completion(&self) -> Option<u64> {
        self.event.complete.as_ref().map(|(t, _)| *t)
    }
}

/// A possible next step of the search: linearize the operation at `pos`,
/// reaching model state `state` with result `ret`.
struct Child<M: Model> {
    pos: usize,
    state: M,
    ret: M::Ret,
}

/// One node of the depth-first search.
struct Frame<M: Model> {
    /// Model state at this node.
    state: M,
    /// Next steps not tried yet; the last one is tried first.
    children: Vec<Child<M>>,
}

/// Result of [`search`].
enum Outcome<R> {
    Linearizable,
    /// Not linearizable, or the node budget ran out. Holds the linearizable
    /// prefix seen that places the most completed operations: positions and
    /// the model's results.
    Failed(Vec<(usize, R)>),
}

/// Rejects events that complete before they are invoked.
fn validate<O: std::fmt::Debug, R>(events: &[(usize, &Event<O, R>)]) -> Result<(), Violation> {
    for (label, event) in events {
        if let Some((done, _)) = &event.complete {
            if *done < event.invoke {
                return Err(Violation {
                    message: format!(
                        "invalid history: event #{} ({:?}) completes at t={} before it is invoked at t={}",
                        label, event.op, done, event.invoke
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Checks events labelled with their index in the caller's history.
fn check_indexed<M: Model>(init: &M, events: &[Labelled<'_, M>]) -> Result<(), Violation> {
    validate(events)?;

    // Positions in `entries` (sorted by invocation time) index the bitsets. With
    // this order, the operations that may be linearized next form a prefix of
    // `entries` (minus those already linearized), so scans can stop early.
    let mut entries: Vec<Entry<'_, M::Op, M::Ret>> =
        events.iter().map(|&(label, event)| Entry { label, event }).collect();
    entries.sort_by_key(|e| (e.event.invoke, e.label));

    let total_completed = entries.iter().filter(|e| e.completion().is_some()).count();
    if total_completed == 0 {
        return Ok(());
    }

    let reach = Reachability::build(init, &entries);
    let n = entries.len();
    let impossible = reach.as_ref().map_or_else(Vec::new, |r| r.hopeless(init, &Bits::new(n), &Bits::new(n), &entries));
    // When the history is already known to fail, search only for a while, to
    // find a long linearizable prefix for the message; the pruning is then
    // turned off, as it would reject the very first node.
    let (budget, pruning) =
        if impossible.is_empty() { (usize::MAX, reach.as_ref()) } else { (PREFIX_SEARCH_BUDGET, None) };
    match search(init, &entries, total_completed, budget, pruning) {
        Outcome::Linearizable => Ok(()),
        Outcome::Failed(best) => Err(Violation { message: describe(&entries, &best, total_completed, &impossible) }),
    }
}

/// An over-approximation of the model states any linearization can pass
/// through, used to prune hopeless search nodes.
///
/// It is the closure of the initial state under every operation, each usable
/// any number of times and in any order, keeping only steps whose result
/// matches for completed operations. Every state of every valid linearization
/// (from any search node) lies in it, so if no state reachable from a node's
/// state, using only the node's remaining operations, lets some remaining
/// completed operation produce its observed result, the node cannot succeed.
///
/// Built only when the closure is small; for models with large or unbounded
/// state spaces (counters, append logs) the search runs without it.
struct Reachability<M> {
    /// Index of every state in the closure.
    index: HashMap<M, usize>,
    /// For each state index: `(position, successor index)` for every operation
    /// that can be applied there (with a matching result, if completed).
    edges: Vec<Vec<(usize, usize)>>,
    /// For each position: whether the operation leaves the state unchanged
    /// whenever it can be applied (for completed operations: with a matching
    /// result), in every state of the closure. Reads, typically.
    pure: Vec<bool>,
}

impl<M: Model> Reachability<M> {
    /// Computes the closure, or `None` if it exceeds the size limits.
    fn build(init: &M, entries: &[Entry<'_, M::Op, M::Ret>]) -> Option<Self> {
        let mut index: HashMap<M, usize> = HashMap::new();
        let mut states = vec![init.clone()];
        index.insert(init.clone(), 0);
        let mut edges: Vec<Vec<(usize, usize)>> = Vec::new();
        // `states` grows while it is scanned; `edges[i]` belongs to `states[i]`.
        let limit = reachable_state_limit(entries.len());
        while edges.len() < states.len() {
            if states.len() > limit {
                return None;
            }
            let mut out = Vec::new();
            for (pos, entry) in entries.iter().enumerate() {
                let (next, ret) = states.get(edges.len())?.step(&entry.event.op);
                if let Some((_, expected)) = &entry.event.complete {
                    if *expected != ret {
                        continue;
                    }
                }
                let target = if let Some(&i) = index.get(&next) {
                    i
                } else {
                    let i = states.len();
                    index.insert(next.clone(), i);
                    states.push(next);
                    i
                };
                out.push((pos, target));
            }
            edges.push(out);
        }
        let mut pure = vec![true; entries.len()];
        for (from, out) in edges.iter().enumerate() {
            for &(pos, to) in out {
                if to != from {
                    if let Some(p) = pure.get_mut(pos) {
                        *p = false;
                    }
                }
            }
        }
        Some(Reachability { index, edges, pure })
    }

    /// Positions of the remaining operations (those in neither `done` nor
    /// `unknown`) that can be applied, with a matching result if completed, in
    /// some state reachable from `state` using only remaining operations.
    /// `None` if `state` is not in the closure (which would mean the model is
    /// not deterministic).
    fn applicable(&self, state: &M, done: &Bits, unknown: &Bits, len: usize) -> Option<Bits> {
        let start = *self.index.get(state)?;
        let mut seen = vec![false; self.edges.len()];
        let mut applicable = Bits::new(len);
        let mut todo = vec![start];
        if let Some(flag) = seen.get_mut(start) {
            *flag = true;
        }
        while let Some(i) = todo.pop() {
            for &(pos, target) in self.edges.get(i).map_or(&[][..], |e| &e[..]) {
                if done.get(pos) || unknown.get(pos) {
                    continue;
                }
                applicable.set(pos);
                if let Some(flag) = seen.get_mut(target) {
                    if !*flag {
                        *flag = true;
                        todo.push(target);
                    }
                }
            }
        }
        Some(applicable)
    }

    /// Remaining completed operations that can never produce their observed
    /// result from `state` (see [`Reachability::applicable`]).
    fn hopeless<O, R>(&self, state: &M, done: &Bits, unknown: &Bits, entries: &[Entry<'_, O, R>]) -> Vec<usize> {
        let Some(applicable) = self.applicable(state, done, unknown, entries.len()) else {
            return Vec::new();
        };
        (0..entries.len())
            .filter(|&pos| entries[pos].completion().is_some() && !done.get(pos) && !applicable.get(pos))
            .collect()
    }

    /// Whether [`Reachability::hopeless`] would be non-empty.
    fn is_hopeless<O, R>(&self, state: &M, done: &Bits, unknown: &Bits, entries: &[Entry<'_, O, R>]) -> bool {
        let Some(applicable) = self.applicable(state, done, unknown, entries.len()) else {
            return false;
        };
        (0..entries.len()).any(|pos| entries[pos].completion().is_some() && !done.get(pos) && !applicable.get(pos))
    }
}

/// The Wing–Gong / Lowe depth-first search with memoization, giving up after
/// `budget` search nodes, pruning with `reach` when given.
///
/// Search nodes are `(completed ops linearized, unknown-outcome ops
/// linearized, model state)`. A node whose subtree has been fully explored
/// without success is recorded as failed. A new node is pruned when a failed
/// node has the same completed set and state and a subset of its unknown set:
/// unknown-outcome operations never constrain others and may be left out, so
/// every continuation of the new node is also one of the failed node.
fn search<M: Model>(
    init: &M,
    entries: &[Entry<'_, M::Op, M::Ret>],
    total_completed: usize,
    budget: usize,
    reach: Option<&Reachability<M>>,
) -> Outcome<M::Ret> {
    let n = entries.len();
    let mut remaining = total_completed;
    let mut done = Bits::new(n);
    let mut unknown = Bits::new(n);
    // Positions linearized so far, in order, with the model's result for each.
    let mut path: Vec<(usize, M::Ret)> = Vec::new();
    // The first path found that linearizes the most completed operations, and
    // how many it linearizes.
    let mut best: Vec<(usize, M::Ret)> = Vec::new();
    let mut best_placed = 0;
    // Completed set -> state -> unknown sets of failed nodes.
    let mut failed: HashMap<Bits, HashMap<M, Vec<Bits>>> = HashMap::new();
    let mut nodes = 0usize;

    let expand = |state: M, done: &Bits, unknown: &Bits| -> Frame<M> {
        // Only operations invoked no later than the earliest completion among
        // pending completed operations may go next (real-time order).
        let min_complete = entries
            .iter()
            .enumerate()
            .filter(|(pos, _)| !done.get(*pos))
            .filter_map(|(_, e)| e.completion())
            .min()
            .unwrap_or(u64::MAX);
        let mut children = Vec::new();
        for (pos, entry) in entries.iter().enumerate() {
            if entry.event.invoke > min_complete {
                break;
            }
            if done.get(pos) || unknown.get(pos) {
                continue;
            }
            let (next, ret) = state.step(&entry.event.op);
            let unchanged = next == state;
            match &entry.event.complete {
                Some((_, expected)) if *expected != ret => continue,
                // Linearizing an unknown-outcome operation that leaves the state
                // unchanged is never better than omitting it.
                None if unchanged => continue,
                _ => {}
            }
            let child = Child { pos, state: next, ret };
            let pure = reach.is_some_and(|r| r.pure.get(pos).copied().unwrap_or(false));
            if unchanged && pure && entry.completion().is_some() {
                // A completed operation that never changes the state and can go
                // now: if any linearization from here exists, one exists that
                // places it first (moving it forward changes no other step).
                return Frame { state, children: vec![child] };
            }
            children.push((unchanged, entry.completion(), child));
        }
        // Heuristic order: operations that leave the state unchanged (such as
        // matching reads) first, then by the midpoint of their interval (the
        // best guess at when they took effect), unknown outcomes last.
        // Children are popped from the end, so sort in reverse.
        children.sort_by_key(|(unchanged, completion, child)| {
            let invoke = entries[child.pos].event.invoke;
            let midpoint = completion.map_or(u64::MAX, |c| invoke / 2 + c / 2);
            std::cmp::Reverse((!*unchanged, midpoint, child.pos))
        });
        Frame { state, children: children.into_iter().map(|(_, _, child)| child).collect() }
    };

    let mut stack = vec![expand(init.clone(), &done, &unknown)];

    while let Some(top) = stack.last_mut() {
        let Some(child) = top.children.pop() else {
            // Every choice at this node failed: record it and backtrack.
            if let Some(frame) = stack.pop() {
                failed.entry(done.clone()).or_default().entry(frame.state).or_default().push(unknown.clone());
            }
            if let Some((pos, _)) = path.pop() {
                if entries[pos].completion().is_some() {
                    done.clear(pos);
                    remaining += 1;
                } else {
                    unknown.clear(pos);
                }
            }
            continue;
        };

        let pos = child.pos;
        let completed = entries[pos].completion().is_some();
        if completed {
            done.set(pos);
        } else {
            unknown.set(pos);
        }
        let dominated = failed
            .get(&done)
            .and_then(|by_state| by_state.get(&child.state))
            .is_some_and(|sets| sets.iter().any(|u| u.is_subset_of(&unknown)));
        let hopeless = || reach.is_some_and(|r| r.is_hopeless(&child.state, &done, &unknown, entries));
        if dominated || (remaining > usize::from(completed) && hopeless()) {
            if !dominated {
                // Still a linearizable prefix, worth reporting if it is the longest.
                let placed = total_completed - remaining + usize::from(completed);
                if placed > best_placed {
                    best_placed = placed;
                    best.clone_from(&path);
                    best.push((pos, child.ret));
                }
                failed.entry(done.clone()).or_default().entry(child.state).or_default().push(unknown.clone());
            }
            if completed {
                done.clear(pos);
            } else {
                unknown.clear(pos);
            }
            continue;
        }

        path.push((pos, child.ret));
        if completed {
            remaining -= 1;
            if remaining == 0 {
                return Outcome::Linearizable;
            }
        }
        if total_completed - remaining > best_placed {
            best_placed = total_completed - remaining;
            best.clone_from(&path);
        }
        nodes += 1;
        if nodes >= budget {
            break;
        }
        let frame = expand(child.state, &done, &unknown);
        stack.push(frame);
    }

    Outcome::Failed(best)
}

/// Builds the error message from the longest linearizable prefix found.
fn describe<O: std::fmt::Debug, R: std::fmt::Debug>(
    entries: &[Entry<'_, O, R>],
    best: &[(usize, R)],
    total_completed: usize,
    impossible: &[usize],
) -> String {
    let mut placed = Bits::new(entries.len());
    let mut msg = format!("history is not linearizable: longest linearizable prefix found has {} op(s): [", best.len());
    for (k, (pos, ret)) in best.iter().enumerate() {
        placed.set(*pos);
        let entry = &entries[*pos];
        if k > 0 {
            msg.push_str(", ");
        }
        let _ = write!(msg, "#{} {:?} -> {:?}", entry.label, entry.event.op, ret);
        if entry.event.complete.is_none() {
            msg.push_str(" (outcome unknown)");
        }
    }
    let unplaced: Vec<&Entry<'_, O, R>> = entries
        .iter()
        .enumerate()
        .filter(|(pos, e)| !placed.get(*pos) && e.event.complete.is_some())
        .map(|(_, e)| e)
        .collect();
    let _ = write!(msg, "]; {} of {} completed op(s) could not be placed after it: [", unplaced.len(), total_completed);
    for (k, entry) in unplaced.iter().enumerate() {
        if k > 0 {
            msg.push_str(", ");
        }
        if let Some((done, ret)) = &entry.event.complete {
            let _ =
                write!(msg, "#{} {:?} -> {:?} [t={}..{}]", entry.label, entry.event.op, ret, entry.event.invoke, done);
        }
    }
    msg.push(']');
    if !impossible.is_empty() {
        msg.push_str("; no reachable model state can produce the result of: [");
        for (k, &pos) in impossible.iter().enumerate() {
            if k > 0 {
                msg.push_str(", ");
            }
            if let Some(entry) = entries.get(pos) {
                if let Some((_, ret)) = &entry.event.complete {
                    let _ = write!(msg, "#{} {:?} -> {:?}", entry.label, entry.event.op, ret);
                }
            }
        }
        msg.push(']');
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    // ---------------------------------------------------------------- models

    /// Operations on a single integer register.
    #[derive(Clone, Debug, PartialEq)]
    enum RegOp {
        Read,
        Write(i64),
        /// Compare-and-set: `Cas(expected, new)`.
        Cas(i64, i64),
    }

    #[derive(Clone, Debug, PartialEq)]
    enum RegRet {
        Value(i64),
        Ok,
        Cas(bool),
    }

    #[derive(Clone, Debug, PartialEq, Eq, Hash)]
    struct Register(i64);

    impl Model for Register {
        type Op = RegOp;
        type Ret = RegRet;
        fn step(&self, op: &RegOp) -> (Self, RegRet) {
            match *op {
                RegOp::Read => (self.clone(), RegRet::Value(self.0)),
                RegOp::Write(v) => (Register(v), RegRet::Ok),
                RegOp::Cas(old, new) => {
                    if self.0 == old {
                        (Register(new), RegRet::Cas(true))
                    } else {
                        (self.clone(), RegRet::Cas(false))
                    }
                }
            }
        }
    }

    /// Operations on a set of small integers.
    #[derive(Clone, Debug, PartialEq)]
    enum SetOp {
        /// Returns whether the element was newly inserted.
        Add(u8),
        /// Returns whether the element was present.
        Remove(u8),
        Contains(u8),
        Len,
    }

    #[derive(Clone, Debug, PartialEq)]
    enum SetRet {
        Bool(bool),
        Len(usize),
    }

    #[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
    struct SetModel(BTreeSet<u8>);

    impl Model for SetModel {
        type Op = SetOp;
        type Ret = SetRet;
        fn step(&self, op: &SetOp) -> (Self, SetRet) {
            let mut next = self.clone();
            let ret = match *op {
                SetOp::Add(x) => SetRet::Bool(next.0.insert(x)),
                SetOp::Remove(x) => SetRet::Bool(next.0.remove(&x)),
                SetOp::Contains(x) => SetRet::Bool(next.0.contains(&x)),
                SetOp::Len => SetRet::Len(next.0.len()),
            };
            (next, ret)
        }
    }

    /// Operations on an integer counter. Its state space is unbounded, so the
    /// checker runs without the reachability pruning.
    #[derive(Clone, Debug, PartialEq)]
    enum CounterOp {
        Add(i64),
        Get,
    }

    #[derive(Clone, Debug, PartialEq)]
    enum CounterRet {
        Ok,
        Value(i64),
    }

    #[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
    struct Counter(i64);

    impl Model for Counter {
        type Op = CounterOp;
        type Ret = CounterRet;
        fn step(&self, op: &CounterOp) -> (Self, CounterRet) {
            match *op {
                CounterOp::Add(d) => (Counter(self.0 + d), CounterRet::Ok),
                CounterOp::Get => (self.clone(), CounterRet::Value(self.0)),
            }
        }
    }

    /// An append-only log whose reads return the whole log: a model with an
    /// unbounded state space in which every order of appends is a different
    /// state, so neither memoization nor the reachability pruning helps much.
    #[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
    struct Log(Vec<u32>);

    #[derive(Clone, Debug, PartialEq)]
    enum LogOp {
        Append(u32),
        Read,
    }

    #[derive(Clone, Debug, PartialEq)]
    enum LogRet {
        Ok,
        Log(Vec<u32>),
    }

    impl Model for Log {
        type Op = LogOp;
        type Ret = LogRet;
        fn step(&self, op: &LogOp) -> (Self, LogRet) {
            match op {
                LogOp::Append(v) => {
                    let mut next = self.clone();
                    next.0.push(*v);
                    (next, LogRet::Ok)
                }
                LogOp::Read => (self.clone(), LogRet::Log(self.0.clone())),
            }
        }
    }

    /// A register addressed by key; every key is an independent register, so the
    /// model ignores the key and is meant for `check_partitioned`.
    #[derive(Clone, Debug, PartialEq)]
    struct KvOp {
        key: u8,
        op: RegOp,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Hash)]
    struct KvRegister(Register);

    impl Model for KvRegister {
        type Op = KvOp;
        type Ret = RegRet;
        fn step(&self, op: &KvOp) -> (Self, RegRet) {
            let (r, ret) = self.0.step(&op.op);
            (KvRegister(r), ret)
        }
    }

    /// A whole key-value store of registers (for checking without partitioning).
    #[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
    struct KvStore(BTreeMap<u8, i64>);

    impl Model for KvStore {
        type Op = KvOp;
        type Ret = RegRet;
        fn step(&self, op: &KvOp) -> (Self, RegRet) {
            let current = Register(self.0.get(&op.key).copied().unwrap_or(0));
            let (r, ret) = current.step(&op.op);
            let mut next = self.clone();
            next.0.insert(op.key, r.0);
            (next, ret)
        }
    }

    // --------------------------------------------------------------- helpers

    fn ev<O, R>(op: O, invoke: u64, complete: u64, ret: R) -> Event<O, R> {
        Event { op, invoke, complete: Some((complete, ret)) }
    }

    fn unknown<O, R>(op: O, invoke: u64) -> Event<O, R> {
        Event { op, invoke, complete: None }
    }

    /// Small deterministic PRNG (xorshift64*), so tests need no dependencies.
    struct Rng(u64);

    impl Rng {
        fn new(seed: u64) -> Self {
            Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
        }
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn chance(&mut self, num: u64, den: u64) -> bool {
            self.below(den) < num
        }
    }

    fn random_reg_op(rng: &mut Rng, values: u64) -> RegOp {
        let v = |rng: &mut Rng| rng.below(values) as i64;
        match rng.below(3) {
            0 => RegOp::Read,
            1 => RegOp::Write(v(rng)),
            _ => RegOp::Cas(v(rng), v(rng)),
        }
    }

    /// Simulation parameters for [`simulate`].
    struct Sim {
        seed: u64,
        clients: u64,
        ops_per_client: u64,
        /// Upper bound on the time from invocation to taking effect, and from
        /// taking effect to completion.
        max_latency: u64,
        /// Percentage of operations whose outcome is unknown.
        unknown_pct: u64,
    }

    /// Simulates `clients` clients, each issuing `ops_per_client` sequential
    /// operations (drawn by `gen_op`) against a real, atomic object starting in
    /// state `init`, each taking effect at a random instant strictly inside its
    /// invocation interval. About `unknown_pct` percent of operations get an
    /// unknown outcome, and half of those never take effect at all. The result
    /// is linearizable by construction.
    fn simulate<M: Model>(init: &M, sim: &Sim, mut gen_op: impl FnMut(&mut Rng) -> M::Op) -> Vec<Event<M::Op, M::Ret>> {
        let mut rng = Rng::new(sim.seed);
        // (linearization point, client, op, invoke, complete, unknown, takes effect)
        let mut planned = Vec::new();
        for client in 0..sim.clients {
            let mut t = rng.below(5);
            for _ in 0..sim.ops_per_client {
                let op = gen_op(&mut rng);
                let invoke = t;
                let lin = invoke + 1 + rng.below(sim.max_latency);
                let complete = lin + 1 + rng.below(sim.max_latency);
                let is_unknown = rng.chance(sim.unknown_pct, 100);
                let takes_effect = !is_unknown || rng.chance(1, 2);
                planned.push((lin, client, op, invoke, complete, is_unknown, takes_effect));
                t = complete + 1 + rng.below(5);
            }
        }
        // (lin, client) is a total order consistent with real time, since every
        // operation's linearization point lies strictly inside its interval.
        planned.sort_by_key(|p| (p.0, p.1));
        let mut state = init.clone();
        let mut history = Vec::new();
        for (_, _, op, invoke, complete, is_unknown, takes_effect) in planned {
            if is_unknown {
                if takes_effect {
                    state = state.step(&op).0;
                }
                history.push(unknown(op, invoke));
            } else {
                let (next, ret) = state.step(&op);
                state = next;
                history.push(ev(op, invoke, complete, ret));
            }
        }
        history
    }

    /// [`simulate`] for a register, with values in `0..values`.
    fn simulated_register_history(
        seed: u64,
        clients: u64,
        ops_per_client: u64,
        max_latency: u64,
        unknown_pct: u64,
        values: u64,
    ) -> Vec<Event<RegOp, RegRet>> {
        let sim = Sim { seed, clients, ops_per_client, max_latency, unknown_pct };
        simulate(&Register(0), &sim, |rng| random_reg_op(rng, values))
    }

    /// Exhaustive reference checker straight from the definition: some ordering
    /// of all completed operations plus any subset of the unknown ones respects
    /// real-time order and matches every completed result. Exponential; tiny
    /// histories only.
    fn brute_force<M: Model>(init: &M, history: &[Event<M::Op, M::Ret>]) -> bool {
        fn go<M: Model>(
            history: &[Event<M::Op, M::Ret>],
            order: &mut Vec<usize>,
            used: &mut Vec<bool>,
            init: &M,
        ) -> bool {
            let all_completed = history.iter().zip(used.iter()).all(|(e, u)| *u || e.complete.is_none());
            if all_completed && valid_sequence(init, history, order) {
                return true;
            }
            for i in 0..history.len() {
                if !used[i] {
                    used[i] = true;
                    order.push(i);
                    if go(history, order, used, init) {
                        return true;
                    }
                    order.pop();
                    used[i] = false;
                }
            }
            false
        }
        fn valid_sequence<M: Model>(init: &M, history: &[Event<M::Op, M::Ret>], order: &[usize]) -> bool {
            for (a, &i) in order.iter().enumerate() {
                for &j in &order[a + 1..] {
                    // j is placed after i, so j must not have completed before i was invoked.
                    if let Some((done, _)) = &history[j].complete {
                        if *done < history[i].invoke {
                            return false;
                        }
                    }
                }
            }
            let mut state = init.clone();
            for &i in order {
                let (next, ret) = state.step(&history[i].op);
                if let Some((_, expected)) = &history[i].complete {
                    if *expected != ret {
                        return false;
                    }
                }
                state = next;
            }
            true
        }
        go(history, &mut Vec::new(), &mut vec![false; history.len()], init)
    }

    // ----------------------------------------------------------------- tests

    #[test]
    fn empty_history_passes() {
        assert_eq!(check(&Register(0), &[]), Ok(()));
        assert_eq!(check_partitioned(&Register(0), &[], |_| 0u8), Ok(()));
    }

    #[test]
    fn only_unknown_ops_pass() {
        let h = vec![unknown(RegOp::Write(1), 0), unknown(RegOp::Read, 1)];
        assert_eq!(check(&Register(0), &h), Ok(()));
    }

    #[test]
    fn sequential_history_passes() {
        let h = vec![
            ev(RegOp::Write(1), 0, 1, RegRet::Ok),
            ev(RegOp::Read, 2, 3, RegRet::Value(1)),
            ev(RegOp::Cas(1, 2), 4, 5, RegRet::Cas(true)),
            ev(RegOp::Cas(1, 3), 6, 7, RegRet::Cas(false)),
            ev(RegOp::Read, 8, 9, RegRet::Value(2)),
        ];
        assert_eq!(check(&Register(0), &h), Ok(()));
    }

    #[test]
    fn sequential_history_with_wrong_result_fails() {
        let h = vec![ev(RegOp::Write(1), 0, 1, RegRet::Ok), ev(RegOp::Cas(0, 2), 2, 3, RegRet::Cas(true))];
        assert!(check(&Register(0), &h).is_err());
    }

    #[test]
    fn concurrent_writes_with_read_of_either_value_pass() {
        for seen in [1, 2] {
            let h = vec![
                ev(RegOp::Write(1), 0, 10, RegRet::Ok),
                ev(RegOp::Write(2), 0, 10, RegRet::Ok),
                ev(RegOp::Read, 11, 12, RegRet::Value(seen)),
            ];
            assert_eq!(check(&Register(0), &h), Ok(()), "read {seen}");
        }
        // A read concurrent with both writes may also still see the initial value.
        let h = vec![
            ev(RegOp::Write(1), 0, 10, RegRet::Ok),
            ev(RegOp::Write(2), 0, 10, RegRet::Ok),
            ev(RegOp::Read, 1, 2, RegRet::Value(0)),
        ];
        assert_eq!(check(&Register(0), &h), Ok(()));
    }

    #[test]
    fn reads_disagreeing_on_order_of_concurrent_writes_fail() {
        // Two later sequential reads see 1 then 2 then 1: impossible.
        let h = vec![
            ev(RegOp::Write(1), 0, 10, RegRet::Ok),
            ev(RegOp::Write(2), 0, 10, RegRet::Ok),
            ev(RegOp::Read, 11, 12, RegRet::Value(1)),
            ev(RegOp::Read, 13, 14, RegRet::Value(2)),
        ];
        assert!(check(&Register(0), &h).is_err());
    }

    #[test]
    fn stale_read_fails() {
        let h = vec![
            ev(RegOp::Write(1), 0, 1, RegRet::Ok),
            ev(RegOp::Write(2), 2, 3, RegRet::Ok),
            ev(RegOp::Read, 4, 5, RegRet::Value(1)),
        ];
        let err = check(&Register(0), &h).expect_err("must fail");
        assert!(err.message.contains("not linearizable"), "{}", err.message);
        assert!(err.message.contains("#2 Read"), "{}", err.message);
    }

    #[test]
    fn read_overlapping_write_may_see_old_value() {
        // Same as the stale read, but the read is invoked before the write completes.
        let h = vec![
            ev(RegOp::Write(1), 0, 1, RegRet::Ok),
            ev(RegOp::Write(2), 2, 5, RegRet::Ok),
            ev(RegOp::Read, 4, 6, RegRet::Value(1)),
        ];
        assert_eq!(check(&Register(0), &h), Ok(()));
    }

    #[test]
    fn touching_intervals_are_not_ordered() {
        // The write completes at the same instant the read is invoked: only a
        // *strictly* earlier completion imposes order, so the read may go first.
        let h = vec![ev(RegOp::Write(1), 0, 5, RegRet::Ok), ev(RegOp::Read, 5, 6, RegRet::Value(0))];
        assert_eq!(check(&Register(0), &h), Ok(()));
    }

    #[test]
    fn unknown_write_visible_or_not_passes() {
        // Visible: a later read sees the unknown write's value.
        let visible = vec![
            ev(RegOp::Write(1), 0, 1, RegRet::Ok),
            unknown(RegOp::Write(2), 2),
            ev(RegOp::Read, 10, 11, RegRet::Value(2)),
        ];
        assert_eq!(check(&Register(0), &visible), Ok(()));
        // Not visible: the unknown write never took effect.
        let invisible = vec![
            ev(RegOp::Write(1), 0, 1, RegRet::Ok),
            unknown(RegOp::Write(2), 2),
            ev(RegOp::Read, 10, 11, RegRet::Value(1)),
        ];
        assert_eq!(check(&Register(0), &invisible), Ok(()));
        // Takes effect late: after a read that still saw the old value.
        let late = vec![
            ev(RegOp::Write(1), 0, 1, RegRet::Ok),
            unknown(RegOp::Write(2), 2),
            ev(RegOp::Read, 10, 11, RegRet::Value(1)),
            ev(RegOp::Read, 12, 13, RegRet::Value(2)),
        ];
        assert_eq!(check(&Register(0), &late), Ok(()));
    }

    #[test]
    fn unknown_write_cannot_take_effect_before_its_invocation() {
        let h = vec![ev(RegOp::Read, 0, 1, RegRet::Value(2)), unknown(RegOp::Write(2), 5)];
        assert!(check(&Register(0), &h).is_err());
    }

    #[test]
    fn unknown_write_takes_effect_at_most_once() {
        let h = vec![
            unknown(RegOp::Write(2), 0),
            ev(RegOp::Read, 10, 11, RegRet::Value(2)),
            ev(RegOp::Write(3), 12, 13, RegRet::Ok),
            ev(RegOp::Read, 14, 15, RegRet::Value(2)),
        ];
        assert!(check(&Register(0), &h).is_err());
    }

    #[test]
    fn read_of_never_written_value_fails() {
        let h = vec![
            ev(RegOp::Write(1), 0, 5, RegRet::Ok),
            unknown(RegOp::Write(2), 1),
            ev(RegOp::Read, 2, 6, RegRet::Value(7)),
        ];
        let err = check(&Register(0), &h).expect_err("must fail");
        assert!(
            err.message.contains("no reachable model state can produce the result of: [#2 Read -> Value(7)]"),
            "{}",
            err.message
        );
    }

    #[test]
    fn invalid_event_is_an_error_not_a_panic() {
        let h = vec![ev(RegOp::Write(1), 5, 3, RegRet::Ok)];
        let err = check(&Register(0), &h).expect_err("must fail");
        assert!(err.message.contains("invalid history"), "{}", err.message);
        let err = check_partitioned(&Register(0), &h, |_| ()).expect_err("must fail");
        assert!(err.message.contains("invalid history"), "{}", err.message);
    }

    #[test]
    fn zero_length_and_extreme_times_are_fine() {
        let h = vec![ev(RegOp::Write(1), 0, 0, RegRet::Ok), ev(RegOp::Read, u64::MAX, u64::MAX, RegRet::Value(1))];
        assert_eq!(check(&Register(0), &h), Ok(()));
    }

    #[test]
    fn more_than_64_events_use_multiword_bitset() {
        let mut h = Vec::new();
        for i in 0..150u64 {
            h.push(ev(RegOp::Write(i as i64), 3 * i, 3 * i + 1, RegRet::Ok));
        }
        h.push(ev(RegOp::Read, 1000, 1001, RegRet::Value(149)));
        assert_eq!(check(&Register(0), &h), Ok(()));
        let last = h.len() - 1;
        h[last] = ev(RegOp::Read, 1000, 1001, RegRet::Value(148));
        assert!(check(&Register(0), &h).is_err());
    }

    #[test]
    fn set_model_histories() {
        let ok = vec![
            ev(SetOp::Add(1), 0, 10, SetRet::Bool(true)),
            ev(SetOp::Add(2), 0, 10, SetRet::Bool(true)),
            ev(SetOp::Len, 5, 6, SetRet::Len(1)),
            ev(SetOp::Contains(2), 5, 7, SetRet::Bool(false)),
            ev(SetOp::Add(1), 11, 12, SetRet::Bool(false)),
            ev(SetOp::Remove(2), 13, 14, SetRet::Bool(true)),
            ev(SetOp::Len, 15, 16, SetRet::Len(1)),
        ];
        assert_eq!(check(&SetModel::default(), &ok), Ok(()));

        // Both concurrent adds claim to have inserted the same element.
        let bad = vec![ev(SetOp::Add(1), 0, 10, SetRet::Bool(true)), ev(SetOp::Add(1), 0, 10, SetRet::Bool(true))];
        assert!(check(&SetModel::default(), &bad).is_err());

        // Len reports 2, but Contains(2) (issued strictly later) says absent.
        let bad = vec![
            ev(SetOp::Add(1), 0, 1, SetRet::Bool(true)),
            unknown(SetOp::Add(2), 2),
            ev(SetOp::Len, 3, 4, SetRet::Len(2)),
            ev(SetOp::Contains(2), 5, 6, SetRet::Bool(false)),
        ];
        assert!(check(&SetModel::default(), &bad).is_err());
    }

    #[test]
    fn simulated_register_histories_of_40_events_pass_quickly() {
        for seed in 0..50 {
            let h = simulated_register_history(seed, 5, 8, 20, 15, 4);
            assert_eq!(h.len(), 40);
            let result = check(&Register(0), &h);
            assert_eq!(result, Ok(()), "seed {seed}: {h:?}");
        }
    }

    #[test]
    fn highly_concurrent_histories_pass_quickly() {
        // 20 clients, long operations: about 20 operations in flight at all
        // times, over 60 operations.
        for seed in 0..20 {
            let h = simulated_register_history(1000 + seed, 20, 3, 200, 10, 4);
            let result = check(&Register(0), &h);
            assert_eq!(result, Ok(()), "seed {seed}");
        }
    }

    #[test]
    fn corrupted_simulated_histories_fail() {
        let mut corrupted = 0;
        for seed in 0..50 {
            let mut h = simulated_register_history(seed, 5, 8, 20, 15, 4);
            // Make one completed read return a value that is never written.
            let Some(read) = h.iter_mut().find(|e| e.op == RegOp::Read && e.complete.is_some()) else {
                continue;
            };
            if let Some((_, ret)) = &mut read.complete {
                *ret = RegRet::Value(99);
            }
            corrupted += 1;
            assert!(check(&Register(0), &h).is_err(), "seed {seed}");
        }
        assert!(corrupted > 40);
    }

    /// Compares `check` with `brute_force` on `cases` random histories of up
    /// to six events (random operations and results from `gen`), and returns
    /// how many were linearizable and how many were not.
    fn cross_check<M: Model>(init: &M, cases: u64, mut gen: impl FnMut(&mut Rng) -> (M::Op, M::Ret)) -> (usize, usize) {
        let (mut passed, mut failed) = (0, 0);
        for seed in 0..cases {
            let mut rng = Rng::new(seed);
            let len = 1 + rng.below(6);
            let history: Vec<Event<M::Op, M::Ret>> = (0..len)
                .map(|_| {
                    let (op, ret) = gen(&mut rng);
                    let invoke = rng.below(8);
                    if rng.chance(1, 4) {
                        unknown(op, invoke)
                    } else {
                        ev(op, invoke, invoke + rng.below(5), ret)
                    }
                })
                .collect();
            let expected = brute_force(init, &history);
            let got = check(init, &history);
            assert_eq!(got.is_ok(), expected, "seed {seed}: {history:?}: {got:?}");
            if expected {
                passed += 1;
            } else {
                failed += 1;
            }
        }
        (passed, failed)
    }

    #[test]
    fn agrees_with_brute_force_on_small_random_register_histories() {
        let (passed, failed) = cross_check(&Register(0), 4000, |rng| {
            let op = random_reg_op(rng, 3);
            let ret = match op {
                RegOp::Read => RegRet::Value(rng.below(3) as i64),
                RegOp::Write(_) => RegRet::Ok,
                RegOp::Cas(..) => RegRet::Cas(rng.chance(1, 2)),
            };
            (op, ret)
        });
        // Make sure both outcomes were exercised.
        assert!(passed > 200 && failed > 200, "{passed} / {failed}");
    }

    #[test]
    fn agrees_with_brute_force_on_small_random_set_histories() {
        let (passed, failed) = cross_check(&SetModel::default(), 3000, |rng| {
            let x = rng.below(3) as u8;
            match rng.below(4) {
                0 => (SetOp::Add(x), SetRet::Bool(rng.chance(2, 3))),
                1 => (SetOp::Remove(x), SetRet::Bool(rng.chance(1, 3))),
                2 => (SetOp::Contains(x), SetRet::Bool(rng.chance(1, 2))),
                _ => (SetOp::Len, SetRet::Len(rng.below(3) as usize)),
            }
        });
        assert!(passed > 200 && failed > 200, "{passed} / {failed}");
    }

    #[test]
    fn agrees_with_brute_force_on_small_random_counter_histories() {
        let (passed, failed) = cross_check(&Counter(0), 3000, |rng| {
            if rng.chance(1, 2) {
                (CounterOp::Add(1 + rng.below(2) as i64), CounterRet::Ok)
            } else {
                (CounterOp::Get, CounterRet::Value(rng.below(4) as i64))
            }
        });
        assert!(passed > 200 && failed > 200, "{passed} / {failed}");
    }

    #[test]
    fn counter_model_histories() {
        let ok = vec![
            ev(CounterOp::Add(1), 0, 10, CounterRet::Ok),
            ev(CounterOp::Add(2), 0, 10, CounterRet::Ok),
            ev(CounterOp::Get, 1, 2, CounterRet::Value(2)),
            unknown(CounterOp::Add(10), 3),
            ev(CounterOp::Get, 11, 12, CounterRet::Value(13)),
        ];
        assert_eq!(check(&Counter(0), &ok), Ok(()));
        // A later read sees a smaller total than an earlier one.
        let bad = vec![
            ev(CounterOp::Add(1), 0, 10, CounterRet::Ok),
            ev(CounterOp::Add(2), 0, 10, CounterRet::Ok),
            ev(CounterOp::Get, 1, 2, CounterRet::Value(2)),
            ev(CounterOp::Get, 3, 4, CounterRet::Value(1)),
        ];
        assert!(check(&Counter(0), &bad).is_err());
    }

    #[test]
    fn simulated_counter_histories_pass_quickly() {
        // The counter's state space is unbounded: plain search, no pruning.
        for seed in 0..20 {
            let sim = Sim { seed, clients: 5, ops_per_client: 8, max_latency: 20, unknown_pct: 15 };
            let h = simulate(&Counter(0), &sim, |rng| {
                if rng.chance(1, 2) {
                    CounterOp::Add(1 + rng.below(3) as i64)
                } else {
                    CounterOp::Get
                }
            });
            let result = check(&Counter(0), &h);
            assert_eq!(result, Ok(()), "seed {seed}");
        }
    }

    #[test]
    fn simulated_set_histories_pass_quickly() {
        for seed in 0..20 {
            let sim = Sim { seed, clients: 8, ops_per_client: 5, max_latency: 50, unknown_pct: 10 };
            let h = simulate(&SetModel::default(), &sim, |rng| {
                let x = rng.below(4) as u8;
                match rng.below(4) {
                    0 => SetOp::Add(x),
                    1 => SetOp::Remove(x),
                    2 => SetOp::Contains(x),
                    _ => SetOp::Len,
                }
            });
            let result = check(&SetModel::default(), &h);
            assert_eq!(result, Ok(()), "seed {seed}");
        }
    }

    #[test]
    fn simulated_append_log_histories_pass_quickly() {
        for seed in 0..20 {
            // Kept smaller than the register tests: with this model, the search
            // may have to try many orders of concurrent appends before a read
            // confirms or refutes them.
            let sim = Sim { seed, clients: 4, ops_per_client: 6, max_latency: 20, unknown_pct: 10 };
            let mut next = 0;
            let mut h = simulate(&Log::default(), &sim, |rng| {
                if rng.chance(1, 2) {
                    next += 1;
                    LogOp::Append(next)
                } else {
                    LogOp::Read
                }
            });
            assert_eq!(check(&Log::default(), &h), Ok(()), "seed {seed}");
            // A read that sees an entry twice is wrong: each value is appended once.
            let corrupted = h.iter_mut().find_map(|e| match &mut e.complete {
                Some((_, LogRet::Log(l))) if !l.is_empty() => {
                    l.push(l[0]);
                    Some(())
                }
                _ => None,
            });
            if corrupted.is_some() {
                assert!(check(&Log::default(), &h).is_err(), "seed {seed}");
            }
        }
    }

    #[test]
    fn agrees_with_brute_force_on_small_random_log_histories() {
        let (passed, failed) = cross_check(&Log::default(), 2000, |rng| {
            if rng.chance(1, 2) {
                (LogOp::Append(rng.below(3) as u32), LogRet::Ok)
            } else {
                let len = rng.below(3);
                let log = (0..len).map(|_| rng.below(3) as u32).collect();
                (LogOp::Read, LogRet::Log(log))
            }
        });
        assert!(passed > 100 && failed > 100, "{passed} / {failed}");
    }

    #[test]
    fn many_unknown_writes_are_handled_quickly() {
        // Twelve writes that timed out, all concurrent with everything after.
        let mut h: Vec<_> = (1..=12).map(|v| unknown(RegOp::Write(v), 0)).collect();
        h.push(ev(RegOp::Write(0), 1, 2, RegRet::Ok));
        for (i, v) in [5, 7, 3].into_iter().enumerate() {
            let t = 10 + 2 * i as u64;
            h.push(ev(RegOp::Read, t, t + 1, RegRet::Value(v)));
        }
        assert_eq!(check(&Register(0), &h), Ok(()));
        // Each unknown write takes effect at most once: 5, then 7, then 5 is impossible.
        let last = h.len() - 1;
        h[last] = ev(RegOp::Read, 14, 15, RegRet::Value(5));
        assert!(check(&Register(0), &h).is_err());
    }

    #[test]
    fn stale_read_after_many_concurrent_writes_fails_quickly() {
        // 20 concurrent writes of distinct values, then a read of the initial
        // value: a naive search tries every subset and order of the writes.
        let mut h: Vec<_> = (0..20).map(|i| ev(RegOp::Write(i + 1), i as u64, 100 + i as u64, RegRet::Ok)).collect();
        h.push(ev(RegOp::Read, 200, 201, RegRet::Value(0)));
        assert!(check(&Register(0), &h).is_err());
        // Reading any of the written values is fine.
        let last = h.len() - 1;
        h[last] = ev(RegOp::Read, 200, 201, RegRet::Value(7));
        assert_eq!(check(&Register(0), &h), Ok(()));
    }

    #[test]
    fn partitioned_check_finds_the_bad_key() {
        let kv = |key: u8, op: RegOp| KvOp { key, op };
        let good_key0 =
            vec![ev(kv(0, RegOp::Write(1)), 0, 1, RegRet::Ok), ev(kv(0, RegOp::Read), 2, 3, RegRet::Value(1))];
        let bad_key1 = vec![
            ev(kv(1, RegOp::Write(5)), 0, 1, RegRet::Ok),
            ev(kv(1, RegOp::Write(6)), 2, 3, RegRet::Ok),
            ev(kv(1, RegOp::Read), 4, 5, RegRet::Value(5)), // stale
        ];
        let mut history = good_key0.clone();
        history.extend(bad_key1);
        let init = KvRegister(Register(0));

        let err = check_partitioned(&init, &history, |op| op.key).expect_err("must fail");
        assert!(err.message.contains("partition 2 of 2"), "{}", err.message);
        // Indices refer to the full history: the stale read is event #4.
        assert!(err.message.contains("#4 KvOp"), "{}", err.message);
        // The unpartitioned check of the whole store agrees.
        assert!(check(&KvStore::default(), &history).is_err());

        // The good key alone passes, and so does a history of two good keys,
        // which would fail if keys were (wrongly) checked as one register.
        assert_eq!(check_partitioned(&init, &good_key0, |op| op.key), Ok(()));
        let two_good = vec![
            ev(kv(0, RegOp::Write(1)), 0, 1, RegRet::Ok),
            ev(kv(1, RegOp::Read), 2, 3, RegRet::Value(0)),
            ev(kv(0, RegOp::Read), 4, 5, RegRet::Value(1)),
        ];
        assert_eq!(check_partitioned(&init, &two_good, |op| op.key), Ok(()));
        assert_eq!(check(&KvStore::default(), &two_good), Ok(()));
        assert!(check(&init, &two_good).is_err());
    }
}
