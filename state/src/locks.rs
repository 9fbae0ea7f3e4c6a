//! Advisory locks on nodes: exclusive (one writer) or shared (many readers),
//! with waiters served in arrival order and Chubby's lock-delay.
//!
//! Deterministic like the rest of the state machine. Time here is the
//! **lock-delay clock** of the state ([`crate::machine::StateMachine::lock_clock_ms`]),
//! which each master advances only by its own monotonic elapsed time, so a
//! lock-delay never ends early because two masters' wall clocks disagree.
//!
//! Every grant, exclusive or shared, takes the next cell-wide **lock
//! generation**, which this table hands out and remembers per holding; a
//! sequencer names its holding's generation, so it is current exactly while
//! that holding lasts (see [`LockTable::is_current`]). The state machine
//! copies the newest generation into the node's stat.
//!
//! A lock-delay belongs to the path, not to one instance of the node: it
//! survives the node's deletion (and a new node of that name waits it out
//! too), and a lock its holder lost without giving it up (its session ended,
//! or another session deleted its node) starts the holder's lock-delay.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::limits::{LOCK_DELAY_MS_MAX, WAITERS_PER_LOCK_MAX};
use crate::namespace::{Path, SessionId};

/// What a lock record costs in [`LockTable::footprint_bytes`] besides its
/// path and holders: an upper bound of its encoding in a snapshot.
pub const LOCK_RECORD_OVERHEAD_BYTES: usize = 32;
/// What each holder or waiter of a lock costs in the footprint (an upper
/// bound of a `LockHolder` record's encoding).
pub const LOCK_HOLDER_BYTES: usize = 80;

/// How a lock is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LockMode {
    /// One holder, nobody else.
    Exclusive,
    /// Any number of holders, no exclusive one.
    Shared,
}

/// Who holds (or waits for) a lock: a handle of a session, with the
/// lock-delay the holder chose when it opened the handle and the request
/// that asked for the lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Holder {
    /// The session.
    pub session: SessionId,
    /// The handle within the session.
    pub handle: u64,
    /// How long nobody else gets the lock if this holder loses it without
    /// giving it up (at most [`LOCK_DELAY_MS_MAX`]).
    pub lock_delay_ms: u64,
    /// The request number of the `Acquire` or `TryAcquire` that asked, so a
    /// `CancelWait` ends only the wait (or grant) of that request.
    pub request_number: u64,
}

impl Holder {
    fn is(&self, session: SessionId, handle: u64) -> bool {
        self.session == session && self.handle == handle
    }
}

/// One holding of a lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Holding {
    /// Who holds it.
    pub holder: Holder,
    /// In which mode.
    pub mode: LockMode,
    /// The lock generation of this grant (new for every grant).
    pub lock_generation: u64,
    /// Whether the holder waited in line before the grant (so its client
    /// learns of it from a waiting call, not from the `Acquire`'s answer).
    pub waited: bool,
}

/// A lock handed to a holder, by `acquire` directly or later to a waiter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The locked node.
    pub path: Path,
    /// The new holder.
    pub holder: Holder,
    /// The mode granted.
    pub mode: LockMode,
    /// The grant's lock generation.
    pub lock_generation: u64,
}

/// What `acquire` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acquired {
    /// The lock is held now, with this generation.
    Granted {
        /// The grant's lock generation.
        lock_generation: u64,
    },
    /// The caller waits in line; the current holders get a "conflicting
    /// lock request" event.
    Queued {
        /// The holders in the way.
        conflicting: Vec<Holder>,
    },
}

/// Why a lock operation failed. All map to `FAILED_PRECONDITION` except
/// `TooManyWaiters` (`RESOURCE_EXHAUSTED`) and `LockDelayTooLong`
/// (`INVALID_ARGUMENT`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// Someone holds the lock in a conflicting mode, or waits for it first.
    #[error("{0} is locked")]
    Held(Path),
    /// A holder lost the lock without releasing it; nobody gets it until
    /// its lock-delay has run out.
    #[error("{path} is in its lock-delay for another {remaining_ms} ms")]
    LockDelay {
        /// The node.
        path: Path,
        /// How much longer the lock-delay runs (lock-delay clock, ms).
        remaining_ms: u64,
    },
    /// The holder does not hold this lock.
    #[error("{0} is not held by this handle")]
    NotHeld(Path),
    /// The handle already holds or waits for this lock.
    #[error("this handle already holds or waits for {0}")]
    AlreadyRequested(Path),
    /// The lock's queue of waiters is full.
    #[error("too many waiters for {0}")]
    TooManyWaiters(Path),
    /// A lock-delay above [`LOCK_DELAY_MS_MAX`].
    #[error("lock-delay of {0} ms exceeds {LOCK_DELAY_MS_MAX} ms")]
    LockDelayTooLong(u64),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Lock {
    /// By (session, handle): one exclusive holding, or any number shared.
    holders: BTreeMap<(SessionId, u64), Holding>,
    waiters: VecDeque<(Holder, LockMode)>,
    /// The end of a running lock-delay (lock-delay clock); 0 if none.
    delay_until_ms: u64,
}

impl Lock {
    fn is_free_for(&self, mode: LockMode) -> bool {
        match mode {
            LockMode::Exclusive => self.holders.is_empty(),
            LockMode::Shared => self.holders.values().all(|h| h.mode == LockMode::Shared),
        }
    }

    fn involves(&self, session: SessionId, handle: u64) -> bool {
        self.holders.contains_key(&(session, handle)) || self.waiters.iter().any(|(h, _)| h.is(session, handle))
    }

    fn grant(&mut self, holder: Holder, mode: LockMode, waited: bool, last_lock_generation: &mut u64) -> u64 {
        *last_lock_generation += 1;
        let lock_generation = *last_lock_generation;
        self.holders.insert((holder.session, holder.handle), Holding { holder, mode, lock_generation, waited });
        lock_generation
    }

    /// Starts (or lengthens) the lock-delay to `clock_ms + delay_ms`.
    fn delay(&mut self, clock_ms: u64, delay_ms: u64) {
        if delay_ms > 0 {
            self.delay_until_ms = self.delay_until_ms.max(clock_ms.saturating_add(delay_ms));
        }
    }

    /// Serves the line in order once no lock-delay runs: the first waiter
    /// alone if exclusive, else every shared waiter up to the next
    /// exclusive one.
    fn grant_waiters(&mut self, path: &Path, clock_ms: u64, last_lock_generation: &mut u64) -> Vec<Grant> {
        let mut grants = Vec::new();
        if clock_ms < self.delay_until_ms {
            return grants;
        }
        self.delay_until_ms = 0;
        while let Some(&(holder, mode)) = self.waiters.front() {
            if !self.is_free_for(mode) {
                break;
            }
            self.waiters.pop_front();
            let lock_generation = self.grant(holder, mode, true, last_lock_generation);
            grants.push(Grant { path: path.clone(), holder, mode, lock_generation });
        }
        grants
    }

    fn is_idle(&self) -> bool {
        self.holders.is_empty() && self.waiters.is_empty() && self.delay_until_ms == 0
    }

    fn footprint_bytes(&self, path: &Path) -> usize {
        LOCK_RECORD_OVERHEAD_BYTES + path.as_str().len() + LOCK_HOLDER_BYTES * (self.holders.len() + self.waiters.len())
    }
}

/// One lock as a snapshot carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockRecord {
    /// The locked node (or, for a lock-delay alone, the path of a deleted
    /// node).
    pub path: Path,
    /// The holdings: one exclusive, or any number shared.
    pub holders: Vec<Holding>,
    /// The waiters in line order.
    pub waiters: Vec<(Holder, LockMode)>,
    /// The end of a running lock-delay (lock-delay clock); 0 if none.
    pub delay_until_ms: u64,
}

/// Every lock that is held, waited for, or in its lock-delay, by path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LockTable {
    locks: BTreeMap<Path, Lock>,
    /// The generation of the newest grant in the cell (0 before any).
    last_lock_generation: u64,
    /// Derived: every running lock-delay by its end, so the earliest is
    /// found without a scan.
    delay_ends: BTreeSet<(u64, Path)>,
    /// Derived: what the locks cost in a snapshot (see
    /// [`LockTable::footprint_bytes`]).
    footprint_bytes: usize,
}

impl LockTable {
    /// An empty table.
    pub fn new() -> Self {
        LockTable::default()
    }

    /// Changes the lock on `path` (created empty if missing) and keeps the
    /// derived index and footprint up to date; an idle lock is forgotten, so
    /// the table never holds one. Every change goes through here.
    fn update<R>(&mut self, path: &Path, change: impl FnOnce(&mut Lock, &mut u64) -> R) -> R {
        let existing = self.locks.remove(path);
        let bytes_before = existing.as_ref().map_or(0, |lock| lock.footprint_bytes(path));
        let mut lock = existing.unwrap_or_default();
        let delay_before = lock.delay_until_ms;
        let result = change(&mut lock, &mut self.last_lock_generation);
        if lock.delay_until_ms != delay_before {
            if delay_before != 0 {
                self.delay_ends.remove(&(delay_before, path.clone()));
            }
            if lock.delay_until_ms != 0 {
                self.delay_ends.insert((lock.delay_until_ms, path.clone()));
            }
        }
        self.footprint_bytes -= bytes_before;
        if !lock.is_idle() {
            self.footprint_bytes += lock.footprint_bytes(path);
            self.locks.insert(path.clone(), lock);
        }
        result
    }

    /// Takes the lock now or fails: a conflicting holder, an earlier waiter
    /// or a running lock-delay all refuse it. Returns the grant's
    /// generation.
    pub fn try_acquire(&mut self, path: &Path, holder: Holder, mode: LockMode, clock_ms: u64) -> Result<u64, LockError> {
        Self::check_delay(holder)?;
        self.update(path, |lock, last| {
            if lock.involves(holder.session, holder.handle) {
                return Err(LockError::AlreadyRequested(path.clone()));
            }
            if clock_ms < lock.delay_until_ms {
                return Err(LockError::LockDelay { path: path.clone(), remaining_ms: lock.delay_until_ms - clock_ms });
            }
            // A lock-delay that has passed is over. (Its waiters were served
            // when the clock passed it: the state machine runs
            // `advance_time` before every command.)
            lock.delay_until_ms = 0;
            if !lock.waiters.is_empty() || !lock.is_free_for(mode) {
                return Err(LockError::Held(path.clone()));
            }
            Ok(lock.grant(holder, mode, false, last))
        })
    }

    /// Takes the lock now if `try_acquire` would, else queues the holder
    /// behind the others.
    pub fn acquire(&mut self, path: &Path, holder: Holder, mode: LockMode, clock_ms: u64) -> Result<Acquired, LockError> {
        match self.try_acquire(path, holder, mode, clock_ms) {
            Ok(lock_generation) => Ok(Acquired::Granted { lock_generation }),
            Err(LockError::Held(_) | LockError::LockDelay { .. }) => self.update(path, |lock, _| {
                if lock.waiters.len() >= WAITERS_PER_LOCK_MAX {
                    return Err(LockError::TooManyWaiters(path.clone()));
                }
                lock.waiters.push_back((holder, mode));
                Ok(Acquired::Queued { conflicting: lock.holders.values().map(|h| h.holder).collect() })
            }),
            Err(other) => Err(other),
        }
    }

    /// Gives the handle's holding up (no lock-delay: it knows) and hands
    /// the lock to the waiters next in line.
    pub fn release(&mut self, path: &Path, session: SessionId, handle: u64, clock_ms: u64) -> Result<Vec<Grant>, LockError> {
        if !self.locks.get(path).is_some_and(|lock| lock.holders.contains_key(&(session, handle))) {
            return Err(LockError::NotHeld(path.clone()));
        }
        Ok(self.update(path, |lock, last| {
            lock.holders.remove(&(session, handle));
            lock.grant_waiters(path, clock_ms, last)
        }))
    }

    /// Stops the handle's wait (its deadline passed, its call was dropped,
    /// or its handle closed); with `request_number`, only the wait that
    /// request began. Returns whether a wait ended, and the grants to those
    /// behind it.
    pub fn cancel_wait(
        &mut self,
        path: &Path,
        session: SessionId,
        handle: u64,
        request_number: Option<u64>,
        clock_ms: u64,
    ) -> (bool, Vec<Grant>) {
        let matches = |h: &Holder| h.is(session, handle) && request_number.is_none_or(|n| h.request_number == n);
        if !self.locks.get(path).is_some_and(|lock| lock.waiters.iter().any(|(h, _)| matches(h))) {
            return (false, Vec::new());
        }
        let grants = self.update(path, |lock, last| {
            lock.waiters.retain(|(h, _)| !matches(h));
            // Removing the head of the line may let those behind it in.
            lock.grant_waiters(path, clock_ms, last)
        });
        (true, grants)
    }

    /// A session ended (closed or expired): its waits are dropped and its
    /// holdings freed. A holding it had starts the lock-delay its holder
    /// chose; waiters get the lock once that has passed (see
    /// `advance_time`). (A clean close releases first, so it leaves no
    /// delay.)
    pub fn session_ended(&mut self, session: SessionId, clock_ms: u64) -> Vec<Grant> {
        let involved: Vec<Path> = self
            .locks
            .iter()
            .filter(|(_, lock)| {
                lock.holders.keys().any(|&(s, _)| s == session) || lock.waiters.iter().any(|(h, _)| h.session == session)
            })
            .map(|(path, _)| path.clone())
            .collect();
        let mut grants = Vec::new();
        for path in involved {
            grants.extend(self.update(&path, |lock, last| {
                lock.waiters.retain(|(h, _)| h.session != session);
                let ended: Vec<(SessionId, u64)> = lock.holders.keys().copied().filter(|&(s, _)| s == session).collect();
                for key in ended {
                    if let Some(holding) = lock.holders.remove(&key) {
                        lock.delay(clock_ms, holding.holder.lock_delay_ms);
                    }
                }
                lock.grant_waiters(&path, clock_ms, last)
            }));
        }
        grants
    }

    /// The node at `path` was deleted: its holders and waiters lose the
    /// lock (their handles are bound to the deleted instance). A holder
    /// from another session than `deleter` lost it without giving it up, so
    /// its lock-delay starts; a running lock-delay goes on. Either stays with
    /// the path, and a node created there later waits it out too.
    pub fn node_deleted(&mut self, path: &Path, deleter: Option<SessionId>, clock_ms: u64) {
        if !self.locks.contains_key(path) {
            return;
        }
        self.update(path, |lock, _| {
            lock.waiters.clear();
            for (_, holding) in std::mem::take(&mut lock.holders) {
                if Some(holding.holder.session) != deleter {
                    lock.delay(clock_ms, holding.holder.lock_delay_ms);
                }
            }
        });
    }

    /// Ends the lock-delays that have passed by `clock_ms` and hands those
    /// locks to their waiters. The state machine calls it whenever its
    /// lock-delay clock passes [`next_delay_end_ms`](Self::next_delay_end_ms),
    /// and the master proposes a command carrying its clock when a
    /// lock-delay runs out.
    pub fn advance_time(&mut self, clock_ms: u64) -> Vec<Grant> {
        let due: Vec<Path> =
            self.delay_ends.iter().take_while(|(until, _)| *until <= clock_ms).map(|(_, path)| path.clone()).collect();
        due.iter().flat_map(|path| self.update(path, |lock, last| lock.grant_waiters(path, clock_ms, last))).collect()
    }

    /// The earliest end of a running lock-delay (lock-delay clock).
    pub fn next_delay_end_ms(&self) -> Option<u64> {
        self.delay_ends.first().map(|(until, _)| *until)
    }

    /// The generation of the newest grant in the cell.
    pub fn last_lock_generation(&self) -> u64 {
        self.last_lock_generation
    }

    /// Every holding of the lock on `path`, exclusive first then by handle.
    pub fn holders(&self, path: &Path) -> Vec<Holding> {
        self.locks.get(path).map_or_else(Vec::new, |lock| lock.holders.values().copied().collect())
    }

    /// This handle's holding of the lock on `path`, if it holds it.
    pub fn holding(&self, path: &Path, session: SessionId, handle: u64) -> Option<Holding> {
        self.locks.get(path)?.holders.get(&(session, handle)).copied()
    }

    /// Whether this handle waits in line for the lock on `path` (for the
    /// request `request_number`, if given).
    pub fn is_waiting(&self, path: &Path, session: SessionId, handle: u64, request_number: Option<u64>) -> bool {
        self.locks.get(path).is_some_and(|lock| {
            lock.waiters.iter().any(|(h, _)| h.is(session, handle) && request_number.is_none_or(|n| h.request_number == n))
        })
    }

    /// Whether a holding of `path` in `mode` with this generation exists:
    /// a sequencer is current exactly while the grant it names lasts.
    pub fn is_current(&self, path: &Path, mode: LockMode, lock_generation: u64) -> bool {
        self.locks
            .get(path)
            .is_some_and(|lock| lock.holders.values().any(|h| h.mode == mode && h.lock_generation == lock_generation))
    }

    /// Whether anyone holds the lock on `path`.
    pub fn is_held(&self, path: &Path) -> bool {
        self.locks.get(path).is_some_and(|lock| !lock.holders.is_empty())
    }

    /// How many holdings there are (an exclusive holder or each shared one).
    pub fn held_count(&self) -> usize {
        self.locks.values().map(|lock| lock.holders.len()).sum()
    }

    /// An upper bound of the bytes every lock record takes in a snapshot:
    /// [`LOCK_RECORD_OVERHEAD_BYTES`] and the path per lock, and
    /// [`LOCK_HOLDER_BYTES`] per holder and waiter.
    pub fn footprint_bytes(&self) -> usize {
        self.footprint_bytes
    }

    /// Every lock, in path order, for a snapshot.
    pub fn records(&self) -> Vec<LockRecord> {
        self.locks
            .iter()
            .map(|(path, lock)| LockRecord {
                path: path.clone(),
                holders: lock.holders.values().copied().collect(),
                waiters: lock.waiters.iter().copied().collect(),
                delay_until_ms: lock.delay_until_ms,
            })
            .collect()
    }

    /// Rebuilds a table from a snapshot's records, refusing records that
    /// could not arise: two exclusive holders, exclusive and shared at once,
    /// a handle twice in one lock, a lock listed twice or idle, a grant
    /// without a generation or newer than `last_lock_generation`, a
    /// lock-delay longer than the longest there is from `clock_ms`.
    pub fn from_records(last_lock_generation: u64, clock_ms: u64, records: Vec<LockRecord>) -> Result<LockTable, String> {
        let mut table = LockTable { last_lock_generation, ..LockTable::new() };
        for record in records {
            let path = &record.path;
            let mut lock = Lock { delay_until_ms: record.delay_until_ms, ..Lock::default() };
            if lock.delay_until_ms > clock_ms.saturating_add(LOCK_DELAY_MS_MAX) {
                return Err(format!("lock {path} has a lock-delay longer than {LOCK_DELAY_MS_MAX} ms"));
            }
            for holding in record.holders {
                let holder = holding.holder;
                Self::check_delay(holder).map_err(|error| format!("lock {path}: {error}"))?;
                if lock.involves(holder.session, holder.handle) || !lock.is_free_for(holding.mode) {
                    return Err(format!("lock {path} has conflicting holders"));
                }
                if holding.lock_generation == 0 || holding.lock_generation > last_lock_generation {
                    return Err(format!("lock {path} has a grant of generation {} (last {last_lock_generation})", holding.lock_generation));
                }
                lock.holders.insert((holder.session, holder.handle), holding);
            }
            for (holder, mode) in record.waiters {
                Self::check_delay(holder).map_err(|error| format!("lock {path}: {error}"))?;
                if lock.involves(holder.session, holder.handle) {
                    return Err(format!("lock {path} lists a handle twice"));
                }
                lock.waiters.push_back((holder, mode));
            }
            if lock.waiters.len() > WAITERS_PER_LOCK_MAX {
                return Err(format!("lock {path} has {} waiters", lock.waiters.len()));
            }
            if lock.is_idle() {
                return Err(format!("lock {path} is neither held, waited for nor in a lock-delay"));
            }
            if table.locks.contains_key(path) {
                return Err(format!("lock {path} appears twice"));
            }
            if lock.delay_until_ms != 0 {
                table.delay_ends.insert((lock.delay_until_ms, path.clone()));
            }
            table.footprint_bytes += lock.footprint_bytes(path);
            table.locks.insert(record.path, lock);
        }
        Ok(table)
    }

    /// Every holder and waiter: (path, session, handle).
    pub fn participants(&self) -> impl Iterator<Item = (&Path, SessionId, u64)> + '_ {
        self.locks.iter().flat_map(|(path, lock)| {
            let holders = lock.holders.keys().map(move |&(session, handle)| (path, session, handle));
            let waiters = lock.waiters.iter().map(move |(holder, _)| (path, holder.session, holder.handle));
            holders.chain(waiters)
        })
    }

    /// Recomputes the lock-delay index and the footprint and checks every
    /// lock's holders; panics on a difference, which is a bug.
    pub fn check_invariants(&self) {
        let mut delay_ends = BTreeSet::new();
        let mut footprint_bytes = 0;
        for (path, lock) in &self.locks {
            assert!(!lock.is_idle(), "lock {path} is idle but kept");
            let exclusive = lock.holders.values().filter(|h| h.mode == LockMode::Exclusive).count();
            assert!(exclusive == 0 || lock.holders.len() == 1, "lock {path} is exclusive and shared at once");
            for (key, holding) in &lock.holders {
                assert_eq!(*key, (holding.holder.session, holding.holder.handle), "lock {path}: a holding under another key");
                assert!(holding.lock_generation > 0 && holding.lock_generation <= self.last_lock_generation, "lock {path}: generation");
            }
            if lock.delay_until_ms != 0 {
                delay_ends.insert((lock.delay_until_ms, path.clone()));
            }
            footprint_bytes += lock.footprint_bytes(path);
        }
        assert_eq!(delay_ends, self.delay_ends, "the lock-delay index");
        assert_eq!(footprint_bytes, self.footprint_bytes, "the locks' footprint");
    }

    fn check_delay(holder: Holder) -> Result<(), LockError> {
        if holder.lock_delay_ms > LOCK_DELAY_MS_MAX {
            return Err(LockError::LockDelayTooLong(holder.lock_delay_ms));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path() -> Path {
        Path::parse("/ls/cell/master").expect("valid")
    }

    fn holder(session: SessionId) -> Holder {
        Holder { session, handle: 1, lock_delay_ms: 1_000, request_number: 1 }
    }

    fn granted(table: &LockTable, session: SessionId) -> bool {
        table.holding(&path(), session, 1).is_some()
    }

    fn sessions(grants: &[Grant]) -> Vec<SessionId> {
        grants.iter().map(|g| g.holder.session).collect()
    }

    #[test]
    fn exclusive_lock_excludes_everyone_else_until_released() {
        let mut table = LockTable::new();
        assert_eq!(table.try_acquire(&path(), holder(1), LockMode::Exclusive, 0), Ok(1));
        assert_eq!(table.try_acquire(&path(), holder(2), LockMode::Exclusive, 0), Err(LockError::Held(path())));
        assert_eq!(table.try_acquire(&path(), holder(2), LockMode::Shared, 0), Err(LockError::Held(path())));
        assert_eq!(table.release(&path(), 2, 1, 0), Err(LockError::NotHeld(path())));
        assert_eq!(table.release(&path(), 1, 1, 0), Ok(vec![]));
        assert_eq!(table.try_acquire(&path(), holder(2), LockMode::Exclusive, 0), Ok(2), "free after release, next generation");
        table.check_invariants();
    }

    #[test]
    fn shared_holders_coexist_each_with_its_own_generation() {
        let mut table = LockTable::new();
        assert_eq!(table.try_acquire(&path(), holder(1), LockMode::Shared, 0), Ok(1));
        assert_eq!(table.try_acquire(&path(), holder(2), LockMode::Shared, 0), Ok(2));
        assert!(table.is_current(&path(), LockMode::Shared, 1) && table.is_current(&path(), LockMode::Shared, 2));
        let queued = table.acquire(&path(), holder(3), LockMode::Exclusive, 0).expect("queued");
        assert_eq!(queued, Acquired::Queued { conflicting: vec![holder(1), holder(2)] });
        // A later reader does not overtake the waiting writer.
        assert_eq!(table.try_acquire(&path(), holder(4), LockMode::Shared, 0), Err(LockError::Held(path())));
        assert_eq!(table.release(&path(), 1, 1, 0), Ok(vec![]));
        assert!(!table.is_current(&path(), LockMode::Shared, 1), "the released holding's generation is gone");
        assert!(table.is_current(&path(), LockMode::Shared, 2));
        let grants = table.release(&path(), 2, 1, 0).expect("held");
        assert_eq!(grants, vec![Grant { path: path(), holder: holder(3), mode: LockMode::Exclusive, lock_generation: 3 }]);
        assert!(table.holding(&path(), 3, 1).is_some_and(|h| h.waited));
        table.check_invariants();
    }

    #[test]
    fn waiters_are_served_in_order_readers_together() {
        let mut table = LockTable::new();
        table.try_acquire(&path(), holder(1), LockMode::Exclusive, 0).expect("free");
        for (session, mode) in [(2, LockMode::Shared), (3, LockMode::Shared), (4, LockMode::Exclusive), (5, LockMode::Shared)] {
            assert!(matches!(table.acquire(&path(), holder(session), mode, 0), Ok(Acquired::Queued { .. })));
        }
        let grants = table.release(&path(), 1, 1, 0).expect("held");
        assert_eq!(sessions(&grants), vec![2, 3], "the two readers, not the writer behind them");
        table.release(&path(), 2, 1, 0).expect("held");
        let grants = table.release(&path(), 3, 1, 0).expect("held");
        assert_eq!(sessions(&grants), vec![4]);
        let grants = table.release(&path(), 4, 1, 0).expect("held");
        assert_eq!(sessions(&grants), vec![5]);
        table.check_invariants();
    }

    #[test]
    fn an_ended_holder_leaves_the_lock_unavailable_for_its_lock_delay() {
        let mut table = LockTable::new();
        table.try_acquire(&path(), holder(1), LockMode::Exclusive, 100).expect("free");
        assert!(matches!(table.acquire(&path(), holder(2), LockMode::Exclusive, 100), Ok(Acquired::Queued { .. })));
        assert_eq!(table.session_ended(1, 500), vec![], "no grant during the lock-delay");
        assert_eq!(
            table.try_acquire(&path(), holder(3), LockMode::Exclusive, 1_000),
            Err(LockError::LockDelay { path: path(), remaining_ms: 500 })
        );
        assert_eq!(table.next_delay_end_ms(), Some(1_500));
        assert_eq!(table.advance_time(1_499), vec![]);
        let grants = table.advance_time(1_500);
        assert_eq!(grants, vec![Grant { path: path(), holder: holder(2), mode: LockMode::Exclusive, lock_generation: 2 }]);
        assert_eq!(table.next_delay_end_ms(), None, "the delay is over");
        table.check_invariants();
    }

    #[test]
    fn a_lock_delay_outlives_the_node_and_deletion_by_another_session_starts_one() {
        let mut table = LockTable::new();
        table.try_acquire(&path(), holder(1), LockMode::Exclusive, 0).expect("free");
        table.session_ended(1, 0);
        table.node_deleted(&path(), Some(2), 10);
        assert_eq!(table.footprint_bytes(), LOCK_RECORD_OVERHEAD_BYTES + path().as_str().len(), "a delay alone is kept");
        assert!(matches!(table.try_acquire(&path(), holder(2), LockMode::Exclusive, 999), Err(LockError::LockDelay { .. })));
        assert_eq!(table.try_acquire(&path(), holder(2), LockMode::Exclusive, 1_000), Ok(2));
        // Session 3 deletes the node session 2 holds: 2's lock-delay runs.
        table.node_deleted(&path(), Some(3), 2_000);
        assert_eq!(table.next_delay_end_ms(), Some(3_000));
        assert_eq!(table.try_acquire(&path(), holder(3), LockMode::Exclusive, 3_000), Ok(3));
        // Its own session's deletion leaves no delay.
        table.node_deleted(&path(), Some(3), 3_000);
        assert_eq!(table.next_delay_end_ms(), None);
        assert_eq!(table.footprint_bytes(), 0, "nothing left");
        table.check_invariants();
    }

    #[test]
    fn a_release_starts_no_lock_delay_and_an_ended_session_stops_waiting() {
        let mut table = LockTable::new();
        table.try_acquire(&path(), holder(1), LockMode::Exclusive, 0).expect("free");
        assert!(matches!(table.acquire(&path(), holder(2), LockMode::Exclusive, 0), Ok(Acquired::Queued { .. })));
        assert!(matches!(table.acquire(&path(), holder(3), LockMode::Exclusive, 0), Ok(Acquired::Queued { .. })));
        assert_eq!(table.session_ended(2, 0), vec![], "the waiter of session 2 leaves the line");
        let grants = table.release(&path(), 1, 1, 0).expect("held");
        assert_eq!(sessions(&grants), vec![3]);
        assert_eq!(table.next_delay_end_ms(), None);
        table.check_invariants();
    }

    #[test]
    fn requests_are_bounded_and_not_repeated() {
        let mut table = LockTable::new();
        let too_long = Holder { lock_delay_ms: LOCK_DELAY_MS_MAX + 1, ..holder(1) };
        assert_eq!(
            table.try_acquire(&path(), too_long, LockMode::Exclusive, 0),
            Err(LockError::LockDelayTooLong(LOCK_DELAY_MS_MAX + 1))
        );
        table.try_acquire(&path(), holder(1), LockMode::Exclusive, 0).expect("free");
        assert_eq!(table.acquire(&path(), holder(1), LockMode::Exclusive, 0), Err(LockError::AlreadyRequested(path())));
        for session in 0..WAITERS_PER_LOCK_MAX as u64 {
            assert!(matches!(table.acquire(&path(), holder(100 + session), LockMode::Shared, 0), Ok(Acquired::Queued { .. })));
        }
        assert_eq!(table.acquire(&path(), holder(99), LockMode::Shared, 0), Err(LockError::TooManyWaiters(path())));
        let expected = LOCK_RECORD_OVERHEAD_BYTES + path().as_str().len() + LOCK_HOLDER_BYTES * (1 + WAITERS_PER_LOCK_MAX);
        assert_eq!(table.footprint_bytes(), expected);
        table.check_invariants();
    }

    #[test]
    fn cancelling_the_head_waiter_lets_the_next_in_and_only_its_request_is_cancelled() {
        let mut table = LockTable::new();
        table.try_acquire(&path(), holder(1), LockMode::Shared, 0).expect("free");
        assert!(matches!(table.acquire(&path(), holder(2), LockMode::Exclusive, 0), Ok(Acquired::Queued { .. })));
        assert!(matches!(table.acquire(&path(), holder(3), LockMode::Shared, 0), Ok(Acquired::Queued { .. })));
        assert_eq!(table.cancel_wait(&path(), 2, 1, Some(9), 0), (false, vec![]), "another request's wait stays");
        let (ended, grants) = table.cancel_wait(&path(), 2, 1, Some(1), 0);
        assert!(ended);
        assert_eq!(grants, vec![Grant { path: path(), holder: holder(3), mode: LockMode::Shared, lock_generation: 2 }]);
        assert_eq!(table.holders(&path()).len(), 2);
        assert!(granted(&table, 3));
        table.check_invariants();
    }
}
