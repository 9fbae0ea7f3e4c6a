//! A linearizability checker for histories of one Gaios file, used by the
//! chaos suite to judge what concurrent clients observed.
//!
//! # The object
//!
//! A Gaios file behaves as a *register with a version*: its state is
//! `(value, generation)`. An empty file has generation 1 and reads as value
//! 0, so the usual initial state is `(0, 1)`; the caller gives it to
//! [`check`]. The operations are:
//!
//! - [`OpKind::Read`] returns the `(value, generation)` it observed;
//! - [`OpKind::Write`] `(v)` makes the state `(v, generation + 1)` and may
//!   return the new generation;
//! - [`OpKind::Cas`] `{ expected_generation: g, value: v }` makes the state
//!   `(v, g + 1)` and succeeds if the generation is `g`; otherwise it fails
//!   and leaves the state alone.
//!
//! # The history
//!
//! Each [`Op`] has an invocation time and, if the client learnt the outcome,
//! a completion time (any monotonic unit: nanoseconds, microseconds, all the
//! same). An op with `complete: Some(t)` took effect exactly once at some
//! instant in `[invoke, t]`, and its [`OpResult`] must match the model there.
//! A failed CAS that completed is a definite non-effect, yet it still needs a
//! linearization point where the generation differs from the expected one.
//!
//! An op with `complete: None` is *indeterminate*: the client does not know
//! whether it took effect (a timeout, a lost connection). It either took
//! effect once at some instant after its invocation, with whatever result,
//! or never did. Its `result` is ignored.
//!
//! A read whose result is unknown says nothing, so callers should not record
//! it. If one is recorded anyway, an indeterminate read is dropped before the
//! search and a completed read with [`OpResult::Unknown`] matches any state.
//!
//! # The search
//!
//! This is Wing & Gong's search with Lowe's improvements (G. Lowe, *Testing
//! for linearizability*, 2017), the algorithm behind Knossos and Porcupine:
//!
//! - The invocations and completions are laid out on one time line, a
//!   doubly linked list; at equal times an invocation comes first, since two
//!   ops that touch at an instant may be ordered either way.
//! - The ops that may be linearized next are the *minimal* ones: those whose
//!   invocation comes before the first completion left on the line. An
//!   indeterminate op has no completion (it completes at +infinity), so it
//!   never stops the scan and never forces anything.
//! - Linearizing an op lifts its events off the line (dancing links), and
//!   backtracking puts them back, so each step is O(1) plus the scan.
//! - Each configuration — the set of ops linearized so far and the register
//!   state — is visited at most once: a memo table remembers them.
//! - The search is an explicit stack of the linearized ops, never recursion,
//!   so its depth is bounded by the history, not by the thread's stack.
//! - It succeeds once every *completed* op is linearized; the indeterminate
//!   ops still left never took effect.
//! - An indeterminate op whose effect would leave the state unchanged (a CAS
//!   on the wrong generation) is not linearized: leaving it out is the same
//!   outcome and keeps more options open.
//! - At each configuration the completed candidates are tried before the
//!   indeterminate ones (kept on a list of their own), so a valid history
//!   is usually found with every timed-out op left out where it can be.
//!
//! Three reductions specific to this register keep timed-out ops from
//! making the search exponential; each is sound (the brute-force test
//! checks them) and only removes configurations that cannot succeed or
//! duplicates of others:
//!
//! - *Generation ceilings.* Generations never go down, and a completed read,
//!   a write with a reported generation or a successful CAS pins the
//!   generation at its point. A configuration whose generation is already
//!   above the lowest pin of an op still to be linearized is a dead end.
//! - *Unread values.* Values that no completed read returned cannot be told
//!   apart by the rest of the history; the model maps them all to one
//!   stand-in value, which merges configurations.
//! - *Interchangeable timed-out ops.* Indeterminate ops with the same model
//!   effect (say, writes of values nobody read) differ only in when they
//!   were invoked, and the earlier one is available whenever the later one
//!   is; only the earliest one of each such class not yet linearized is
//!   tried, which turns 2^k subsets of k such ops into k + 1 prefixes.
//!
//! The memo table stores a 128-bit fingerprint of each configuration: a
//! Zobrist hash of the linearized set (a random key per op, combined with
//! XOR, so it is updated in O(1)) mixed with a hash of the state. Storing the
//! sets themselves would cost `ops / 8` bytes per configuration, about 1 GB
//! for 5 million configurations of a 2000-op history; the fingerprint costs
//! 16. Two configurations share a fingerprint with probability about
//! `configurations² / 2¹²⁹`, which is what it would take for a valid history
//! to be wrongly rejected.
//!
//! The work is bounded: past `max_configurations` visited configurations the
//! answer is [`Verdict::Unknown`], and histories longer than
//! [`HISTORY_OPS_MAX`] are not searched at all.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::hash::{BuildHasherDefault, Hasher};

use crate::rng::{Rng, mix64};

/// A budget for [`check`] that decides the chaos suite's histories (a few
/// thousand ops from a handful of clients) quickly, while keeping the memo
/// table under about 150 MB (16-byte fingerprints in a hash set).
pub const MAX_CONFIGURATIONS_DEFAULT: usize = 5_000_000;

/// The longest history [`check`] will search; a longer one gets
/// [`Verdict::Unknown`]. It bounds the per-op tables (the time line, the
/// Zobrist keys and the search stack), a few dozen bytes per op.
pub const HISTORY_OPS_MAX: usize = 1_000_000;

/// What a client asked of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// Read the value and its generation.
    Read,
    /// Replace the value unconditionally; the generation goes up by one.
    Write(u64),
    /// Replace the value only if the generation is still `expected_generation`.
    Cas {
        /// The generation the client last saw and expects to replace.
        expected_generation: u64,
        /// The value to store if the generation matches.
        value: u64,
    },
}

/// What the client was told. The result must fit the kind: a [`OpKind::Read`]
/// gets [`OpResult::Read`], a [`OpKind::Write`] gets [`OpResult::Written`], a
/// [`OpKind::Cas`] gets [`OpResult::CasOk`] or [`OpResult::CasFailed`]; any
/// kind may get [`OpResult::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpResult {
    /// The state a read observed.
    Read {
        /// The value read (0 for an empty file).
        value: u64,
        /// The generation read (1 for a file never written).
        generation: u64,
    },
    /// The write was acknowledged.
    Written {
        /// The generation the write created, if the reply carried it; when
        /// known it pins the write's position among the other writes.
        generation: Option<u64>,
    },
    /// The CAS found the expected generation and stored its value.
    CasOk,
    /// The CAS found another generation and changed nothing.
    CasFailed,
    /// The op completed but its result was not recorded; it took effect,
    /// with whatever result the model gives. Indeterminate ops
    /// (`complete: None`) should carry this too, though theirs is ignored.
    Unknown,
}

/// One operation of one client, as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Op {
    /// Which client issued it; used only in explanations (a client's ops are
    /// ordered by their times like everyone else's).
    pub client: usize,
    /// When the client sent it, on a clock shared by all clients.
    pub invoke: u64,
    /// When the client got the answer, or `None` if it never learnt whether
    /// the op took effect (the op is then indeterminate).
    pub complete: Option<u64>,
    /// What was asked.
    pub kind: OpKind,
    /// What was answered (ignored when `complete` is `None`).
    pub result: OpResult,
}

/// The answer of [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Some order of the ops, each placed inside its interval, explains
    /// every result.
    Linearizable,
    /// No such order exists: the history shows a consistency bug (or, if
    /// the explanation starts with "malformed history", a recording bug).
    NotLinearizable {
        /// The longest linearizable prefix the search found, the state after
        /// it, and the completed op that could not be placed after it.
        explanation: String,
    },
    /// The search gave up before deciding (budget exhausted, history too
    /// long); the history may be fine or not.
    Unknown {
        /// Why the search gave up, with the figures.
        reason: String,
    },
}

impl Verdict {
    /// True only for [`Verdict::Linearizable`], for assertions.
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }
}

/// The register's state: `(value, generation)`.
type State = (u64, u64);

/// An op after validation, in invocation order, with its caller's index.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Index of the op in the caller's history, for explanations.
    index: usize,
    /// The op as the caller gave it, for explanations.
    op: Op,
    /// The op the model runs: `op` with every value no read returned
    /// replaced by one stand-in (see [`Canon`]).
    model: Op,
}

impl Entry {
    fn is_completed(&self) -> bool {
        self.op.complete.is_some()
    }
}

/// Decides whether `history` is linearizable for a register with a version
/// that starts in state `initial` (`(value, generation)`, usually `(0, 1)`),
/// visiting at most `max_configurations` configurations of the search
/// ([`MAX_CONFIGURATIONS_DEFAULT`] suits the chaos suite). The order of
/// `history` does not matter; ops are ordered by their times.
pub fn check(initial: (u64, u64), history: &[Op], max_configurations: usize) -> Verdict {
    if history.len() > HISTORY_OPS_MAX {
        return Verdict::Unknown {
            reason: format!(
                "the history has {} ops, more than the {} the checker searches",
                history.len(),
                HISTORY_OPS_MAX
            ),
        };
    }
    let entries = match prepare(history) {
        Ok(entries) => entries,
        Err(explanation) => return Verdict::NotLinearizable { explanation },
    };
    Search::new(initial, entries, max_configurations).run()
}

/// Values that no completed read returned are indistinguishable to the rest
/// of the history: a register holding one of them answers every op left the
/// same way as one holding another. The model replaces them all with one
/// stand-in, so that configurations differing only in such a value are one
/// configuration, and indeterminate writes of such values are one kind of
/// op (see `Search::classes`).
#[derive(Debug)]
struct Canon {
    observed: HashSet<u64>,
    /// A value no read returned (the largest such), standing for them all.
    unread: u64,
}

impl Canon {
    fn new(entries: &[Entry]) -> Canon {
        let observed: HashSet<u64> = entries
            .iter()
            .filter(|entry| entry.is_completed())
            .filter_map(|entry| match entry.op.result {
                OpResult::Read { value, .. } => Some(value),
                _ => None,
            })
            .collect();
        // At most `entries.len()` values are taken, so this stops soon.
        let mut unread = u64::MAX;
        while observed.contains(&unread) {
            unread -= 1;
        }
        Canon { observed, unread }
    }

    fn value(&self, value: u64) -> u64 {
        if self.observed.contains(&value) { value } else { self.unread }
    }

    fn kind(&self, kind: OpKind) -> OpKind {
        match kind {
            OpKind::Read => OpKind::Read,
            OpKind::Write(value) => OpKind::Write(self.value(value)),
            OpKind::Cas { expected_generation, value } => OpKind::Cas { expected_generation, value: self.value(value) },
        }
    }

    /// A state for explanations.
    fn describe(&self, state: State) -> String {
        let (value, generation) = state;
        if self.observed.contains(&value) {
            format!("(value {value}, generation {generation})")
        } else {
            format!("(a value no read returned, generation {generation})")
        }
    }
}

/// Validates the history, drops the ops that can say nothing (indeterminate
/// reads), and sorts the rest by invocation time. An op that no order could
/// place — it completes before its invocation, or its result does not fit
/// its kind — makes the history not linearizable at once; the explanation
/// says so, since it usually means a bug in the recording, not the service.
fn prepare(history: &[Op]) -> Result<Vec<Entry>, String> {
    let mut entries = Vec::with_capacity(history.len());
    for (index, op) in history.iter().enumerate() {
        if let Some(complete) = op.complete {
            if complete < op.invoke {
                return Err(format!("malformed history: op {} completes before it is invoked", describe(index, op)));
            }
            let fits = matches!(
                (op.kind, op.result),
                (_, OpResult::Unknown)
                    | (OpKind::Read, OpResult::Read { .. })
                    | (OpKind::Write(_), OpResult::Written { .. })
                    | (OpKind::Cas { .. }, OpResult::CasOk | OpResult::CasFailed)
            );
            if !fits {
                return Err(format!(
                    "malformed history: op {} has a result that does not fit its kind",
                    describe(index, op)
                ));
            }
        } else if op.kind == OpKind::Read {
            // An indeterminate read neither constrains nor changes anything.
            continue;
        }
        entries.push(Entry { index, op: *op, model: *op });
    }
    // Stable: ops invoked at the same instant keep the caller's order.
    entries.sort_by_key(|entry| entry.op.invoke);
    Ok(entries)
}

/// The state after `op` takes effect in `state`, or `None` if the op cannot
/// take effect there with the result it reported. An indeterminate op may
/// take effect with any result.
fn step(state: State, op: &Op) -> Option<State> {
    let (value, generation) = state;
    let result = if op.complete.is_some() { op.result } else { OpResult::Unknown };
    match op.kind {
        OpKind::Read => match result {
            OpResult::Read { value: seen, generation: seen_generation } => {
                (seen == value && seen_generation == generation).then_some(state)
            }
            _ => Some(state),
        },
        OpKind::Write(new_value) => {
            let new_generation = generation.checked_add(1)?;
            match result {
                OpResult::Written { generation: Some(reported) } if reported != new_generation => None,
                _ => Some((new_value, new_generation)),
            }
        }
        OpKind::Cas { expected_generation, value: new_value } => {
            if expected_generation == generation {
                let new_generation = generation.checked_add(1)?;
                match result {
                    OpResult::CasFailed => None,
                    _ => Some((new_value, new_generation)),
                }
            } else {
                match result {
                    OpResult::CasOk => None,
                    _ => Some(state),
                }
            }
        }
    }
}

/// The highest generation the register may have while `op` is still to be
/// linearized: its result pins the generation at its point (a read's, one
/// below a write's reported one, a successful CAS's expected one), and
/// generations never go down. `None` when nothing is pinned.
fn generation_ceiling(op: &Op) -> Option<u64> {
    op.complete?;
    match (op.kind, op.result) {
        (OpKind::Read, OpResult::Read { generation, .. }) => Some(generation),
        // A reported generation 0 fits no state; the model rejects it anyway.
        (OpKind::Write(_), OpResult::Written { generation: Some(generation) }) => Some(generation.saturating_sub(1)),
        (OpKind::Cas { expected_generation, .. }, OpResult::CasOk) => Some(expected_generation),
        _ => None,
    }
}

/// The generation ceilings of the completed ops not yet linearized, with the
/// entry each belongs to: the register's generation may never exceed the
/// smallest.
#[derive(Debug, Default)]
struct Ceilings {
    left: BTreeSet<(u64, usize)>,
}

impl Ceilings {
    fn add(&mut self, ceiling: Option<u64>, entry: usize) {
        if let Some(ceiling) = ceiling {
            self.left.insert((ceiling, entry));
        }
    }

    fn remove(&mut self, ceiling: Option<u64>, entry: usize) {
        if let Some(ceiling) = ceiling {
            self.left.remove(&(ceiling, entry));
        }
    }

    /// The smallest ceiling left and its entry.
    fn lowest(&self) -> Option<(u64, usize)> {
        self.left.first().copied()
    }

    /// The smallest ceiling left of an entry other than `entry`.
    fn lowest_except(&self, entry: usize) -> Option<(u64, usize)> {
        self.left.iter().take(2).copied().find(|&(_, owner)| owner != entry)
    }

    /// Whether a register at `generation` can still linearize every op left.
    fn allow(&self, generation: u64) -> bool {
        self.lowest().is_none_or(|(lowest, _)| generation <= lowest)
    }
}

/// One op for explanations: its index in the caller's history, client, kind,
/// result and interval.
fn describe(index: usize, op: &Op) -> String {
    let complete = match op.complete {
        Some(time) => time.to_string(),
        None => "never (indeterminate)".to_string(),
    };
    format!(
        "#{index} (client {}, {:?} -> {:?}, invoked {}, completed {complete})",
        op.client, op.kind, op.result, op.invoke
    )
}

/// A no-op hasher for fingerprints that are already uniformly random.
#[derive(Default)]
struct FingerprintHasher(u64);

impl Hasher for FingerprintHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used by `u128` keys; FNV-1a keeps it correct if it ever is.
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn write_u128(&mut self, fingerprint: u128) {
        self.0 = (fingerprint as u64) ^ ((fingerprint >> 64) as u64);
    }
}

type Fingerprints = HashSet<u128, BuildHasherDefault<FingerprintHasher>>;

/// A 128-bit hash of a register state, XORed into the linearized set's
/// Zobrist hash to fingerprint a configuration.
fn state_hash(state: State) -> u128 {
    let (value, generation) = state;
    let high = mix64(value ^ mix64(generation ^ 0x5851_f42d_4c95_7f2d));
    let low = mix64(generation ^ mix64(value ^ 0x1405_7b7e_f767_814f));
    (u128::from(high) << 64) | u128::from(low)
}

/// No link: the end of a list.
const NIL: usize = usize::MAX;
/// The sentinel head of the time line of completed ops.
const COMPLETED_HEAD: usize = 0;
/// The sentinel head of the list of indeterminate ops, by invocation time.
const INDETERMINATE_HEAD: usize = 1;

/// An invocation or a completion, on one of the two lists.
#[derive(Debug, Clone, Copy)]
struct Event {
    /// Index into `Search::entries` (`NIL` for the sentinels).
    entry: usize,
    time: u64,
    /// An invocation (`true`) or a completion.
    is_invoke: bool,
    /// For an invocation, its op's completion event, if the op completed.
    completion: usize,
}

/// Where the scan for the next op to linearize stands in a configuration.
#[derive(Debug, Clone, Copy)]
enum Cursor {
    /// Walking the completed ops' time line up to its first completion.
    Completed(usize),
    /// Walking the indeterminate ops invoked no later than `blocking` (the
    /// first completion on the time line, an event) completes.
    Indeterminate { event: usize, blocking: usize },
}

/// A linearized op on the search stack: where the scan stood when it was
/// chosen (its own event) and the state before it took effect.
#[derive(Debug, Clone, Copy)]
struct Frame {
    cursor: Cursor,
    state_before: State,
}

impl Frame {
    fn event(&self) -> usize {
        match self.cursor {
            Cursor::Completed(event) | Cursor::Indeterminate { event, .. } => event,
        }
    }
}

/// The deepest configuration the search reached, for the explanation.
#[derive(Debug, Clone, Copy)]
struct Deepest {
    depth: usize,
    completed_depth: usize,
    state: State,
    last_placed: Option<usize>,
    blocked: usize,
    lowest_ceiling: Option<(u64, usize)>,
}

/// Wing & Gong's search with Lowe's memo table, over dancing-links lists.
struct Search {
    initial: State,
    entries: Vec<Entry>,
    canon: Canon,
    /// For each entry, its class if it is indeterminate: indeterminate ops
    /// of the same model kind (same effect in every state, no result to
    /// match) are interchangeable, except that an earlier-invoked one is
    /// available whenever a later one is. So only the earliest one of each
    /// class not yet linearized is tried; that cuts 2^k subsets of k pending
    /// timed-out writes down to k + 1 prefixes.
    classes: Vec<Option<usize>>,
    /// For each entry, its rank in its class (by invocation time).
    class_ranks: Vec<usize>,
    /// How many classes there are.
    class_count: usize,
    /// `events[COMPLETED_HEAD]` heads the time line of the completed ops'
    /// invocations and completions; `events[INDETERMINATE_HEAD]` heads the
    /// indeterminate ops' invocations. Both are in time order.
    events: Vec<Event>,
    next: Vec<usize>,
    prev: Vec<usize>,
    /// A random 128-bit key per entry, for the Zobrist hash of the set.
    keys: Vec<u128>,
    /// Each entry's [`generation_ceiling`].
    ceilings: Vec<Option<u64>>,
    max_configurations: usize,
}

impl Search {
    fn new(initial: State, mut entries: Vec<Entry>, max_configurations: usize) -> Search {
        let canon = Canon::new(&entries);
        for entry in &mut entries {
            entry.model.kind = canon.kind(entry.op.kind);
        }
        let initial = (canon.value(initial.0), initial.1);
        let mut class_of_kind: HashMap<OpKind, (usize, usize)> = HashMap::new();
        let mut classes = vec![None; entries.len()];
        let mut class_ranks = vec![0; entries.len()];
        for (position, entry) in entries.iter().enumerate() {
            if !entry.is_completed() {
                let next_class = class_of_kind.len();
                let (class, members) = class_of_kind.entry(entry.model.kind).or_insert((next_class, 0));
                classes[position] = Some(*class);
                class_ranks[position] = *members;
                *members += 1;
            }
        }
        let class_count = class_of_kind.len();

        // (time, is_completion, entry): invocations sort before completions
        // at equal times, since ops that touch at an instant may go either way.
        let mut completed: Vec<(u64, bool, usize)> = Vec::with_capacity(entries.len() * 2);
        let mut indeterminate: Vec<(u64, bool, usize)> = Vec::new();
        for (position, entry) in entries.iter().enumerate() {
            match entry.op.complete {
                Some(complete) => {
                    completed.push((entry.op.invoke, false, position));
                    completed.push((complete, true, position));
                }
                None => indeterminate.push((entry.op.invoke, false, position)),
            }
        }
        completed.sort_unstable();
        indeterminate.sort_unstable();

        let sentinel = Event { entry: NIL, time: 0, is_invoke: false, completion: NIL };
        let count = 2 + completed.len() + indeterminate.len();
        let mut events = vec![sentinel, sentinel];
        let mut next = vec![NIL; count];
        let mut prev = vec![NIL; count];
        let mut invoke_event = vec![NIL; entries.len()];
        for (head, list) in [(COMPLETED_HEAD, &completed), (INDETERMINATE_HEAD, &indeterminate)] {
            let mut last = head;
            for &(time, is_completion, position) in list {
                let event = events.len();
                if is_completion {
                    // `prepare` checked invoke <= complete and ties put
                    // invocations first, so the invocation is already here.
                    events[invoke_event[position]].completion = event;
                } else {
                    invoke_event[position] = event;
                }
                events.push(Event { entry: position, time, is_invoke: !is_completion, completion: NIL });
                next[last] = event;
                prev[event] = last;
                last = event;
            }
        }

        // Zobrist keys: fixed, so a verdict does not depend on the run.
        let mut rng = Rng::new(0x2545_f491_4f6c_dd1d);
        let keys = (0..entries.len())
            .map(|_| {
                let high = rng.next_u64();
                (u128::from(high) << 64) | u128::from(rng.next_u64())
            })
            .collect();
        let ceilings = entries.iter().map(|entry| generation_ceiling(&entry.op)).collect();

        Search {
            initial,
            entries,
            canon,
            classes,
            class_ranks,
            class_count,
            events,
            next,
            prev,
            keys,
            ceilings,
            max_configurations,
        }
    }

    fn unlink(&mut self, event: usize) {
        let (prev, next) = (self.prev[event], self.next[event]);
        self.next[prev] = next;
        if next != NIL {
            self.prev[next] = prev;
        }
    }

    fn relink(&mut self, event: usize) {
        let (prev, next) = (self.prev[event], self.next[event]);
        self.next[prev] = event;
        if next != NIL {
            self.prev[next] = event;
        }
    }

    /// Takes an op's invocation and completion off their list.
    fn lift(&mut self, invoke: usize) {
        self.unlink(invoke);
        let completion = self.events[invoke].completion;
        if completion != NIL {
            self.unlink(completion);
        }
    }

    /// Undoes the most recent `lift`, which must have been of `invoke`.
    fn unlift(&mut self, invoke: usize) {
        let completion = self.events[invoke].completion;
        if completion != NIL {
            self.relink(completion);
        }
        self.relink(invoke);
    }

    /// The invocation event the cursor points at, if it names a candidate:
    /// moves past the end of the completed ops' candidates to the
    /// indeterminate ones, and returns `None` at the end of both (recording
    /// the blocking completion in `blocked`).
    fn candidate(&self, cursor: &mut Cursor, blocked: &mut usize) -> Option<usize> {
        loop {
            match *cursor {
                Cursor::Completed(event) => {
                    if event != NIL && self.events[event].is_invoke {
                        return Some(event);
                    }
                    // The first completion left: the ops not invoked before
                    // it may not go next. While a completed op is left its
                    // completion is on the line, so `event` is not `NIL`.
                    *blocked = event;
                    if event == NIL {
                        return None;
                    }
                    *cursor = Cursor::Indeterminate { event: self.next[INDETERMINATE_HEAD], blocking: event };
                }
                Cursor::Indeterminate { event, blocking } => {
                    *blocked = blocking;
                    let minimal = event != NIL && self.events[event].time <= self.events[blocking].time;
                    return minimal.then_some(event);
                }
            }
        }
    }

    fn advance(&self, cursor: Cursor) -> Cursor {
        match cursor {
            Cursor::Completed(event) => Cursor::Completed(self.next[event]),
            Cursor::Indeterminate { event, blocking } => Cursor::Indeterminate { event: self.next[event], blocking },
        }
    }

    fn run(mut self) -> Verdict {
        let mut completed_left = self.entries.iter().filter(|entry| entry.is_completed()).count();
        let mut state = self.initial;
        let mut set_hash: u128 = 0;
        let mut stack: Vec<Frame> = Vec::with_capacity(self.entries.len());
        let mut visited = Fingerprints::default();
        let mut deepest: Option<Deepest> = None;
        let mut ceilings_left = Ceilings::default();
        for (position, ceiling) in self.ceilings.iter().enumerate() {
            ceilings_left.add(*ceiling, position);
        }
        // Per class, how many of its members are linearized.
        let mut class_linearized = vec![0_usize; self.class_count];
        let mut cursor = Cursor::Completed(self.next[COMPLETED_HEAD]);
        let mut blocked = NIL;

        loop {
            if completed_left == 0 {
                return Verdict::Linearizable;
            }
            if let Some(event) = self.candidate(&mut cursor, &mut blocked) {
                let position = self.events[event].entry;
                let entry = self.entries[position];
                let class = self.classes[position];
                let in_turn = class.is_none_or(|class| class_linearized[class] == self.class_ranks[position]);
                if let Some(after) = step(state, &entry.model).filter(|_| in_turn) {
                    let useless = !entry.is_completed() && after == state;
                    let ceiling = self.ceilings[position];
                    ceilings_left.remove(ceiling, position);
                    let fingerprint = set_hash ^ self.keys[position] ^ state_hash(after);
                    if !useless && ceilings_left.allow(after.1) && visited.insert(fingerprint) {
                        if visited.len() > self.max_configurations {
                            return Verdict::Unknown {
                                reason: format!(
                                    "gave up after {} configurations (the budget) with {} of {} ops \
                                     linearized on the current path",
                                    self.max_configurations,
                                    stack.len(),
                                    self.entries.len()
                                ),
                            };
                        }
                        stack.push(Frame { cursor, state_before: state });
                        self.lift(event);
                        set_hash ^= self.keys[position];
                        state = after;
                        if entry.is_completed() {
                            completed_left -= 1;
                        }
                        if let Some(class) = class {
                            class_linearized[class] += 1;
                        }
                        cursor = Cursor::Completed(self.next[COMPLETED_HEAD]);
                        continue;
                    }
                    ceilings_left.add(ceiling, position);
                }
                cursor = self.advance(cursor);
                continue;
            }

            // Every candidate was tried and none leads anywhere: undo the
            // last choice.
            let depth = stack.len();
            if blocked != NIL && deepest.is_none_or(|deepest| depth > deepest.depth) {
                deepest = Some(Deepest {
                    depth,
                    completed_depth: stack
                        .iter()
                        .filter(|frame| self.entries[self.events[frame.event()].entry].is_completed())
                        .count(),
                    state,
                    last_placed: stack.last().map(|frame| self.events[frame.event()].entry),
                    blocked: self.events[blocked].entry,
                    lowest_ceiling: ceilings_left.lowest_except(self.events[blocked].entry),
                });
            }
            let Some(frame) = stack.pop() else {
                return Verdict::NotLinearizable { explanation: self.explain(deepest) };
            };
            let event = frame.event();
            self.unlift(event);
            let position = self.events[event].entry;
            set_hash ^= self.keys[position];
            ceilings_left.add(self.ceilings[position], position);
            state = frame.state_before;
            if self.entries[position].is_completed() {
                completed_left += 1;
            }
            if let Some(class) = self.classes[position] {
                class_linearized[class] -= 1;
            }
            cursor = self.advance(frame.cursor);
        }
    }

    fn explain(&self, deepest: Option<Deepest>) -> String {
        let completed = self.entries.iter().filter(|entry| entry.is_completed()).count();
        let Some(deepest) = deepest else {
            return "the search found no op to start with".to_string();
        };
        let blocked = &self.entries[deepest.blocked];
        let mut explanation = format!(
            "the longest linearizable prefix has {} ops ({} of the {} completed ops); after it \
             the state is {}, and op {} cannot be placed: neither it nor any op invoked before \
             it completed can take effect next",
            deepest.depth,
            deepest.completed_depth,
            completed,
            self.canon.describe(deepest.state),
            describe(blocked.index, &blocked.op),
        );
        if let Some((ceiling, position)) = deepest.lowest_ceiling
            && ceiling == deepest.state.1
        {
            let pinned = &self.entries[position];
            let _ = write!(
                explanation,
                " without raising the generation past {ceiling}, which op {} still needs",
                describe(pinned.index, &pinned.op)
            );
        }
        if let Some(last) = deepest.last_placed {
            let last = &self.entries[last];
            let _ = write!(explanation, "; the prefix ends with op {}", describe(last.index, &last.op));
        }
        explanation
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    const INITIAL: State = (0, 1);

    fn op(client: usize, invoke: u64, complete: u64, kind: OpKind, result: OpResult) -> Op {
        Op { client, invoke, complete: Some(complete), kind, result }
    }

    fn write(client: usize, invoke: u64, complete: u64, value: u64, generation: Option<u64>) -> Op {
        op(client, invoke, complete, OpKind::Write(value), OpResult::Written { generation })
    }

    fn read(client: usize, invoke: u64, complete: u64, value: u64, generation: u64) -> Op {
        op(client, invoke, complete, OpKind::Read, OpResult::Read { value, generation })
    }

    fn cas(client: usize, invoke: u64, complete: u64, expected_generation: u64, value: u64, ok: bool) -> Op {
        let result = if ok { OpResult::CasOk } else { OpResult::CasFailed };
        op(client, invoke, complete, OpKind::Cas { expected_generation, value }, result)
    }

    fn timed_out_write(client: usize, invoke: u64, value: u64) -> Op {
        Op { client, invoke, complete: None, kind: OpKind::Write(value), result: OpResult::Unknown }
    }

    fn verdict(history: &[Op]) -> Verdict {
        check(INITIAL, history, MAX_CONFIGURATIONS_DEFAULT)
    }

    fn assert_accepted(history: &[Op]) {
        let verdict = verdict(history);
        assert!(verdict.is_linearizable(), "expected linearizable, got {verdict:?} for {history:#?}");
    }

    fn assert_rejected(history: &[Op]) {
        let verdict = verdict(history);
        assert!(
            matches!(verdict, Verdict::NotLinearizable { .. }),
            "expected not linearizable, got {verdict:?} for {history:#?}"
        );
    }

    #[test]
    fn empty_history_is_linearizable() {
        assert_accepted(&[]);
    }

    #[test]
    fn sequential_writes_and_reads_are_accepted() {
        assert_accepted(&[
            read(0, 0, 1, 0, 1),
            write(0, 2, 3, 7, Some(2)),
            read(1, 4, 5, 7, 2),
            write(1, 6, 7, 8, None),
            read(0, 8, 9, 8, 3),
            read(1, 10, 11, 8, 3),
        ]);
    }

    #[test]
    fn initial_state_is_the_callers() {
        let history = [read(0, 0, 1, 5, 9), write(0, 2, 3, 6, Some(10)), read(1, 4, 5, 6, 10)];
        assert!(check((5, 9), &history, MAX_CONFIGURATIONS_DEFAULT).is_linearizable());
        assert!(matches!(check(INITIAL, &history, MAX_CONFIGURATIONS_DEFAULT), Verdict::NotLinearizable { .. }));
    }

    #[test]
    fn read_of_a_value_never_written_is_rejected() {
        assert_rejected(&[write(0, 0, 1, 7, Some(2)), read(1, 2, 3, 42, 2)]);
        // Even concurrent with the write.
        assert_rejected(&[write(0, 0, 10, 7, None), read(1, 2, 3, 42, 2)]);
    }

    #[test]
    fn read_with_a_wrong_generation_is_rejected() {
        assert_rejected(&[write(0, 0, 1, 7, None), read(1, 2, 3, 7, 3)]);
    }

    #[test]
    fn write_reporting_a_wrong_generation_is_rejected() {
        assert_rejected(&[write(0, 0, 1, 7, Some(2)), write(0, 2, 3, 8, Some(2))]);
    }

    #[test]
    fn stale_read_after_a_completed_write_is_rejected() {
        assert_rejected(&[write(0, 0, 10, 7, Some(2)), read(1, 11, 12, 0, 1)]);
        // A read that touches the write's completion instant may still see either.
        assert_accepted(&[write(0, 0, 10, 7, Some(2)), read(1, 10, 12, 0, 1)]);
    }

    #[test]
    fn concurrent_write_and_read_in_either_order_are_accepted() {
        assert_accepted(&[write(0, 0, 10, 7, Some(2)), read(1, 2, 5, 0, 1)]);
        assert_accepted(&[write(0, 0, 10, 7, Some(2)), read(1, 2, 5, 7, 2)]);
        // Read first by invocation, seeing the write's value.
        assert_accepted(&[read(1, 0, 10, 7, 2), write(0, 5, 8, 7, Some(2))]);
    }

    #[test]
    fn two_concurrent_cas_on_one_generation_both_ok_are_rejected() {
        assert_rejected(&[cas(0, 0, 10, 1, 5, true), cas(1, 1, 9, 1, 6, true)]);
    }

    #[test]
    fn two_concurrent_cas_on_one_generation_one_ok_one_failed_are_accepted() {
        assert_accepted(&[cas(0, 0, 10, 1, 5, true), cas(1, 1, 9, 1, 6, false), read(2, 11, 12, 5, 2)]);
        // The failed one may also be linearized first: it needs a generation
        // other than 1, so here it cannot be; the later read confirms 6 lost.
        assert_rejected(&[cas(0, 0, 10, 1, 5, true), cas(1, 1, 9, 1, 6, false), read(2, 11, 12, 6, 2)]);
    }

    #[test]
    fn failed_cas_on_a_surely_current_generation_is_rejected() {
        assert_rejected(&[write(0, 0, 1, 7, Some(2)), cas(0, 2, 3, 2, 8, false)]);
        assert_rejected(&[cas(0, 0, 1, 1, 8, false)]);
        // With a concurrent write it may have lost the race.
        assert_accepted(&[write(0, 0, 1, 7, Some(2)), cas(0, 2, 5, 2, 8, false), write(1, 3, 4, 9, None)]);
    }

    #[test]
    fn cas_ok_on_a_stale_generation_is_rejected() {
        assert_rejected(&[write(0, 0, 1, 7, Some(2)), cas(1, 2, 3, 1, 8, true)]);
    }

    #[test]
    fn indeterminate_write_read_later_is_accepted() {
        assert_accepted(&[timed_out_write(0, 0, 7), read(1, 100, 101, 7, 2), read(0, 102, 103, 7, 2)]);
        // Invoked at the very instant the read that saw it completed.
        assert_accepted(&[read(1, 5, 10, 7, 2), timed_out_write(0, 10, 7)]);
        // It may take effect long after its client moved on.
        assert_accepted(&[
            timed_out_write(0, 0, 7),
            read(0, 10, 11, 0, 1),
            write(0, 12, 13, 8, Some(2)),
            read(1, 100, 101, 7, 3),
        ]);
    }

    #[test]
    fn indeterminate_write_never_read_is_accepted() {
        assert_accepted(&[timed_out_write(0, 0, 7), read(1, 100, 101, 0, 1), write(1, 102, 103, 9, Some(2))]);
        assert_accepted(&[timed_out_write(0, 0, 7)]);
    }

    #[test]
    fn indeterminate_write_cannot_unhappen() {
        assert_rejected(&[timed_out_write(0, 0, 7), read(1, 10, 11, 7, 2), read(1, 12, 13, 0, 1)]);
    }

    #[test]
    fn indeterminate_write_cannot_take_effect_before_its_invocation() {
        assert_rejected(&[read(1, 0, 1, 7, 2), timed_out_write(0, 5, 7)]);
    }

    #[test]
    fn indeterminate_write_takes_effect_at_most_once() {
        assert_rejected(&[
            timed_out_write(0, 0, 7),
            read(1, 10, 11, 7, 2),
            write(1, 12, 13, 8, Some(3)),
            read(1, 14, 15, 7, 4),
        ]);
    }

    #[test]
    fn indeterminate_cas_may_or_may_not_take_effect() {
        let timed_out_cas = Op {
            client: 0,
            invoke: 0,
            complete: None,
            kind: OpKind::Cas { expected_generation: 1, value: 7 },
            result: OpResult::Unknown,
        };
        assert_accepted(&[timed_out_cas, read(1, 10, 11, 7, 2)]);
        assert_accepted(&[timed_out_cas, read(1, 10, 11, 0, 1)]);
        assert_rejected(&[timed_out_cas, write(1, 5, 6, 3, Some(2)), read(1, 10, 11, 7, 3)]);
    }

    #[test]
    fn two_readers_seeing_two_writes_in_opposite_orders_are_rejected() {
        // Two writes overlap each other and all four reads; each reader's
        // reads are sequential. Reader 2 sees 1 then 2, reader 3 sees 2 then 1.
        let writes = [write(0, 0, 100, 1, None), write(1, 0, 100, 2, None)];
        let mut history = writes.to_vec();
        history.extend([read(2, 10, 20, 1, 2), read(2, 30, 40, 2, 3)]);
        history.extend([read(3, 10, 20, 2, 2), read(3, 30, 40, 1, 3)]);
        assert_rejected(&history);

        // The same with both readers agreeing is fine.
        let mut history = writes.to_vec();
        history.extend([read(2, 10, 20, 1, 2), read(2, 30, 40, 2, 3)]);
        history.extend([read(3, 10, 20, 1, 2), read(3, 30, 40, 2, 3)]);
        assert_accepted(&history);

        // Each reader alone is fine: read your own order.
        let mut history = writes.to_vec();
        history.extend([read(3, 10, 20, 2, 2), read(3, 30, 40, 1, 3)]);
        assert_accepted(&history);
    }

    #[test]
    fn explanation_names_the_op_that_cannot_be_placed() {
        let history = [write(0, 0, 1, 7, Some(2)), read(1, 2, 3, 7, 2), read(1, 4, 5, 0, 1)];
        let Verdict::NotLinearizable { explanation } = verdict(&history) else {
            panic!("expected a rejection");
        };
        // The write cannot go first: the read #2 still needs generation 1.
        assert!(explanation.contains("prefix has 0 ops"), "{explanation}");
        assert!(explanation.contains("op #0 "), "{explanation}");
        assert!(explanation.contains("op #2 "), "{explanation}");
    }

    #[test]
    fn malformed_histories_are_rejected_as_such() {
        let malformed = [
            read(0, 5, 4, 0, 1),
            op(0, 0, 1, OpKind::Read, OpResult::CasOk),
            op(0, 0, 1, OpKind::Write(3), OpResult::Read { value: 3, generation: 2 }),
        ];
        for bad in malformed {
            let verdict = verdict(&[bad]);
            assert!(
                matches!(&verdict, Verdict::NotLinearizable { explanation } if explanation.starts_with("malformed history")),
                "{verdict:?}"
            );
        }
    }

    #[test]
    fn unknown_results_and_indeterminate_reads_constrain_nothing() {
        let lost_read = Op { client: 1, invoke: 0, complete: None, kind: OpKind::Read, result: OpResult::Unknown };
        assert_accepted(&[
            lost_read,
            write(0, 0, 1, 7, Some(2)),
            op(1, 2, 3, OpKind::Read, OpResult::Unknown),
            op(0, 4, 5, OpKind::Write(8), OpResult::Unknown),
            read(1, 6, 7, 8, 3),
        ]);
    }

    #[test]
    fn many_timed_out_writes_never_read_do_not_blow_up() {
        // 60 writes time out and never show; a reader then sees the value
        // it wrote, the generation moving only by its own writes: their
        // 2^60 subsets collapse to one class of interchangeable writes.
        let mut history: Vec<Op> = (0..60).map(|i| timed_out_write(0, i, 1000 + i)).collect();
        let mut generation = 1;
        for i in 0..40_u64 {
            let at = 100 + 10 * i;
            generation += 1;
            history.push(write(1, at, at + 2, i, None));
            history.push(read(1, at + 4, at + 6, i, generation));
        }
        assert!(check(INITIAL, &history, 100_000).is_linearizable());
        // A read back in time after all that is rejected, still cheaply.
        history.push(read(1, 1000, 1001, 3, 5));
        let verdict = check(INITIAL, &history, 100_000);
        assert!(matches!(verdict, Verdict::NotLinearizable { .. }), "{verdict:?}");
    }

    /// Whether some subset of the indeterminate ops and some order of it and
    /// all the completed ops respects real time and the model: every
    /// candidate, by brute force, for histories of a few ops.
    fn brute_force(initial: State, history: &[Op]) -> bool {
        let history: Vec<Op> =
            history.iter().copied().filter(|op| op.complete.is_some() || op.kind != OpKind::Read).collect();
        let indeterminate: Vec<usize> = (0..history.len()).filter(|&i| history[i].complete.is_none()).collect();
        (0..1_u32 << indeterminate.len()).any(|subset| {
            let chosen: Vec<usize> = (0..history.len())
                .filter(|&i| match indeterminate.iter().position(|&j| j == i) {
                    Some(bit) => subset & (1 << bit) != 0,
                    None => true,
                })
                .collect();
            let mut order = chosen;
            permutations_any(&mut order, 0, &mut |order| {
                // Real time: nothing placed before an op that completed
                // strictly before it was invoked.
                for (later_index, &later) in order.iter().enumerate() {
                    for &earlier in &order[later_index + 1..] {
                        if history[earlier].complete.is_some_and(|complete| complete < history[later].invoke) {
                            return false;
                        }
                    }
                }
                let mut state = initial;
                order.iter().all(|&i| match step(state, &history[i]) {
                    Some(after) => {
                        state = after;
                        true
                    }
                    None => false,
                })
            })
        })
    }

    fn permutations_any(items: &mut Vec<usize>, from: usize, test: &mut dyn FnMut(&[usize]) -> bool) -> bool {
        if from == items.len() {
            return test(items);
        }
        for i in from..items.len() {
            items.swap(from, i);
            if permutations_any(items, from + 1, test) {
                items.swap(from, i);
                return true;
            }
            items.swap(from, i);
        }
        false
    }

    #[test]
    fn small_random_histories_agree_with_brute_force() {
        let (mut accepted, mut rejected) = (0, 0);
        for seed in 0..3000_u64 {
            let mut rng = Rng::new(seed);
            let clients = 1 + rng.below(3) as usize;
            let ops = 1 + rng.below(7) as usize;
            let mut history = generate(&mut rng, clients, ops, 25);
            // Perturb some results (and some values, reusing a few so that
            // indeterminate writes share classes) to get invalid ones too.
            for op in &mut history {
                if rng.chance(0.15) {
                    op.result = match op.result {
                        OpResult::Read { value, generation } => {
                            OpResult::Read { value: value % 3, generation: generation + rng.below(3) - 1 }
                        }
                        OpResult::CasOk => OpResult::CasFailed,
                        OpResult::CasFailed => OpResult::CasOk,
                        OpResult::Written { .. } => OpResult::Written { generation: Some(1 + rng.below(4)) },
                        OpResult::Unknown => OpResult::Unknown,
                    };
                }
                if rng.chance(0.30)
                    && let OpKind::Write(value) = op.kind
                {
                    op.kind = OpKind::Write(value % 3);
                }
            }
            let expected = brute_force(INITIAL, &history);
            let verdict = check(INITIAL, &history, MAX_CONFIGURATIONS_DEFAULT);
            assert_eq!(verdict.is_linearizable(), expected, "seed {seed}: {verdict:?} for {history:#?}");
            assert!(!matches!(verdict, Verdict::Unknown { .. }), "seed {seed}: {verdict:?}");
            if expected { accepted += 1 } else { rejected += 1 }
        }
        assert!(accepted > 500 && rejected > 500, "accepted {accepted}, rejected {rejected}");
    }

    /// Values written by the generator stay below this, so a read of it was
    /// never written.
    const NEVER_WRITTEN: u64 = 1 << 40;

    /// Generates a linearizable history: `clients` clients each issue ops one
    /// after another with random gaps and durations, so intervals overlap; each
    /// op gets a linearization point inside its interval (an indeterminate one
    /// some time after its invocation, or none), and the results come from
    /// applying the ops to a real register in that order.
    fn generate(rng: &mut Rng, clients: usize, ops: usize, indeterminate_percent: u64) -> Vec<Op> {
        struct Planned {
            op: Op,
            /// Linearization point; `None` for an indeterminate op that never took effect.
            point: Option<u64>,
        }
        let mut clocks = vec![0_u64; clients];
        let mut seen_generation = vec![1_u64; clients];
        let mut planned = Vec::with_capacity(ops);
        let mut next_value = 1_u64;
        for _ in 0..ops {
            let client = rng.below(clients as u64) as usize;
            let invoke = clocks[client] + rng.below(20);
            let duration = 1 + rng.below(60);
            let complete = invoke + duration;
            clocks[client] = complete + 1;
            let kind = match rng.below(10) {
                0..=3 => OpKind::Read,
                4..=6 => {
                    next_value += 1;
                    OpKind::Write(next_value)
                }
                _ => {
                    next_value += 1;
                    let expected_generation = seen_generation[client] + rng.below(2);
                    OpKind::Cas { expected_generation, value: next_value }
                }
            };
            let indeterminate = kind != OpKind::Read && rng.chance(indeterminate_percent as f64 / 100.0);
            let (complete, point) = if indeterminate {
                let point = rng.chance(0.50).then(|| invoke + rng.below(4 * duration));
                (None, point)
            } else {
                (Some(complete), Some(invoke + rng.below(duration + 1)))
            };
            let op = Op { client, invoke, complete, kind, result: OpResult::Unknown };
            planned.push(Planned { op, point });
        }

        // Apply in linearization order (ties: any order is valid, both
        // points being inside both intervals).
        let mut order: Vec<usize> = (0..planned.len()).filter(|&i| planned[i].point.is_some()).collect();
        order.sort_by_key(|&i| planned[i].point);
        let (mut value, mut generation) = INITIAL;
        for i in order {
            let op = &mut planned[i].op;
            let result = match op.kind {
                OpKind::Read => OpResult::Read { value, generation },
                OpKind::Write(new_value) => {
                    value = new_value;
                    generation += 1;
                    OpResult::Written { generation: (generation % 2 == 0).then_some(generation) }
                }
                OpKind::Cas { expected_generation, value: new_value } => {
                    if expected_generation == generation {
                        value = new_value;
                        generation += 1;
                        OpResult::CasOk
                    } else {
                        OpResult::CasFailed
                    }
                }
            };
            if op.complete.is_some() {
                op.result = result;
                if let OpResult::Read { generation, .. } = result {
                    seen_generation[op.client] = generation;
                }
            }
        }
        planned.into_iter().map(|planned| planned.op).collect()
    }

    #[test]
    fn large_random_valid_history_is_accepted_within_the_budget() {
        let mut rng = Rng::new(2000);
        let history = generate(&mut rng, 5, 2000, 1);
        let indeterminate = history.iter().filter(|op| op.complete.is_none()).count();
        assert!(indeterminate > 0, "the history should have indeterminate ops");
        let started = Instant::now();
        let verdict = check(INITIAL, &history, MAX_CONFIGURATIONS_DEFAULT);
        let elapsed = started.elapsed();
        println!("2000 ops, 5 clients, {indeterminate} indeterminate: {verdict:?} in {elapsed:?}");
        assert!(verdict.is_linearizable(), "{verdict:?}");
    }

    #[test]
    fn tiny_budget_yields_unknown() {
        let mut rng = Rng::new(2000);
        let history = generate(&mut rng, 5, 2000, 1);
        let verdict = check(INITIAL, &history, 100);
        assert!(matches!(verdict, Verdict::Unknown { .. }), "{verdict:?}");
    }

    #[test]
    fn random_valid_histories_are_accepted_and_a_corrupted_read_is_rejected() {
        for seed in 0..300_u64 {
            let mut rng = Rng::new(seed);
            let clients = 1 + rng.below(6) as usize;
            let ops = 1 + rng.below(120) as usize;
            let indeterminate_percent = rng.below(15);
            let mut history = generate(&mut rng, clients, ops, indeterminate_percent);
            let verdict = check(INITIAL, &history, MAX_CONFIGURATIONS_DEFAULT);
            assert!(verdict.is_linearizable(), "seed {seed}: {verdict:?} for {history:#?}");

            let reads: Vec<usize> = (0..history.len())
                .filter(|&i| matches!(history[i].result, OpResult::Read { .. }) && history[i].complete.is_some())
                .collect();
            if reads.is_empty() {
                continue;
            }
            let victim = reads[rng.below(reads.len() as u64) as usize];
            if let OpResult::Read { generation, .. } = history[victim].result {
                history[victim].result = OpResult::Read { value: NEVER_WRITTEN, generation };
            }
            let verdict = check(INITIAL, &history, MAX_CONFIGURATIONS_DEFAULT);
            assert!(
                matches!(verdict, Verdict::NotLinearizable { .. }),
                "seed {seed}: corrupted read {victim} accepted: {verdict:?}"
            );
        }
    }
}
