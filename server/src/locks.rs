//! Advisory locks on nodes: exclusive (one writer) or shared (many readers),
//! with waiters served in arrival order and Chubby's lock-delay.
//!
//! Deterministic like the rest of the state machine: time is the master's
//! timestamp carried by the command being applied. The lock generation lives
//! in the node's stat ([`crate::namespace::Stat::lock_generation`]); the state
//! machine bumps it for each exclusive [`Grant`] this table hands out.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::namespace::{Path, SessionId};

/// The longest lock-delay a holder may choose, in milliseconds.
pub const LOCK_DELAY_MS_MAX: u64 = 60_000;
/// The most waiters one lock queues; past it `acquire` is refused.
pub const WAITERS_PER_LOCK_MAX: usize = 1024;

/// How a lock is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LockMode {
    /// One holder, nobody else.
    Exclusive,
    /// Any number of holders, no exclusive one.
    Shared,
}

/// Who holds (or waits for) a lock: a handle of a session, with the
/// lock-delay the holder chose when it opened the handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Holder {
    /// The session.
    pub session: SessionId,
    /// The handle within the session.
    pub handle: u64,
    /// How long nobody else gets the lock if this holder's session ends
    /// without releasing it (at most [`LOCK_DELAY_MS_MAX`]).
    pub lock_delay_ms: u64,
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
    /// Whether nobody held the lock before this grant (it went from free to
    /// held), which is when its lock generation moves on.
    pub was_free: bool,
}

/// What `acquire` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acquired {
    /// The lock is held now.
    Granted,
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
    /// A holder's session ended without releasing the lock; nobody gets it
    /// before `until_ms`.
    #[error("{path} is in its lock-delay until {until_ms} ms")]
    LockDelay {
        /// The node.
        path: Path,
        /// When the lock-delay ends (master's time, ms).
        until_ms: u64,
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
    exclusive: Option<Holder>,
    shared: BTreeSet<Holder>,
    waiters: VecDeque<(Holder, LockMode)>,
    delay_until_ms: u64,
}

impl Lock {
    fn holders(&self) -> Vec<Holder> {
        self.exclusive.iter().copied().chain(self.shared.iter().copied()).collect()
    }

    fn is_free_for(&self, mode: LockMode) -> bool {
        match mode {
            LockMode::Exclusive => self.exclusive.is_none() && self.shared.is_empty(),
            LockMode::Shared => self.exclusive.is_none(),
        }
    }

    fn involves(&self, holder: &Holder) -> bool {
        let same = |h: &Holder| h.session == holder.session && h.handle == holder.handle;
        self.exclusive.iter().any(same) || self.shared.iter().any(same) || self.waiters.iter().any(|(h, _)| same(h))
    }

    fn hold(&mut self, holder: Holder, mode: LockMode) {
        match mode {
            LockMode::Exclusive => self.exclusive = Some(holder),
            LockMode::Shared => {
                self.shared.insert(holder);
            }
        }
    }

    fn is_idle(&self) -> bool {
        self.exclusive.is_none() && self.shared.is_empty() && self.waiters.is_empty()
    }
}

/// One lock as a snapshot carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockRecord {
    /// The locked node.
    pub path: Path,
    /// The holders: one exclusive, or any number shared.
    pub holders: Vec<(Holder, LockMode)>,
    /// The waiters in line order.
    pub waiters: Vec<(Holder, LockMode)>,
    /// The end of a running lock-delay; 0 if none.
    pub delay_until_ms: u64,
}

/// Every lock that is held, waited for, or in its lock-delay, by node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LockTable {
    locks: BTreeMap<Path, Lock>,
    /// Derived: every running lock-delay by its end, so the earliest is
    /// found without a scan.
    delay_ends: BTreeSet<(u64, Path)>,
}

impl LockTable {
    /// An empty table.
    pub fn new() -> Self {
        LockTable::default()
    }

    /// Takes the lock now or fails: a conflicting holder, an earlier waiter
    /// or a running lock-delay all refuse it.
    pub fn try_acquire(&mut self, path: &Path, holder: Holder, mode: LockMode, now_ms: u64) -> Result<(), LockError> {
        Self::check_delay(holder)?;
        let lock = self.locks.entry(path.clone()).or_default();
        if lock.involves(&holder) {
            return Err(LockError::AlreadyRequested(path.clone()));
        }
        if now_ms < lock.delay_until_ms {
            return Err(LockError::LockDelay { path: path.clone(), until_ms: lock.delay_until_ms });
        }
        if !lock.waiters.is_empty() || !lock.is_free_for(mode) {
            return Err(LockError::Held(path.clone()));
        }
        lock.hold(holder, mode);
        Ok(())
    }

    /// Takes the lock now if `try_acquire` would, else queues the holder
    /// behind the others.
    pub fn acquire(&mut self, path: &Path, holder: Holder, mode: LockMode, now_ms: u64) -> Result<Acquired, LockError> {
        match self.try_acquire(path, holder, mode, now_ms) {
            Ok(()) => Ok(Acquired::Granted),
            Err(LockError::Held(_) | LockError::LockDelay { .. }) => {
                let lock = self.locks.entry(path.clone()).or_default();
                if lock.waiters.len() >= WAITERS_PER_LOCK_MAX {
                    return Err(LockError::TooManyWaiters(path.clone()));
                }
                lock.waiters.push_back((holder, mode));
                Ok(Acquired::Queued { conflicting: lock.holders() })
            }
            Err(other) => Err(other),
        }
    }

    /// Gives the lock up and hands it to the waiters next in line.
    pub fn release(&mut self, path: &Path, holder: Holder, now_ms: u64) -> Result<Vec<Grant>, LockError> {
        let Some(lock) = self.locks.get_mut(path) else { return Err(LockError::NotHeld(path.clone())) };
        let same = |h: &Holder| h.session == holder.session && h.handle == holder.handle;
        if lock.exclusive.as_ref().is_some_and(same) {
            lock.exclusive = None;
        } else if let Some(found) = lock.shared.iter().copied().find(same) {
            lock.shared.remove(&found);
        } else {
            return Err(LockError::NotHeld(path.clone()));
        }
        Ok(self.grant_waiters(path, now_ms))
    }

    /// Stops waiting (the caller's deadline passed, or its handle closed).
    pub fn cancel_wait(&mut self, path: &Path, holder: Holder, now_ms: u64) -> Vec<Grant> {
        if let Some(lock) = self.locks.get_mut(path) {
            lock.waiters.retain(|(h, _)| !(h.session == holder.session && h.handle == holder.handle));
        }
        // Removing the head of the line may let those behind it in.
        self.grant_waiters(path, now_ms)
    }

    /// A session ended (closed or expired): its waits are dropped and its
    /// locks freed. A lock it held starts the lock-delay its holder chose;
    /// waiters get the lock once that has passed (see `advance_time`).
    pub fn session_ended(&mut self, session: SessionId, now_ms: u64) -> Vec<Grant> {
        let paths: Vec<Path> = self.locks.keys().cloned().collect();
        let mut grants = Vec::new();
        for path in paths {
            let Some(lock) = self.locks.get_mut(&path) else { continue };
            lock.waiters.retain(|(h, _)| h.session != session);
            let mut delay_ms = 0;
            if lock.exclusive.is_some_and(|h| h.session == session) {
                delay_ms = lock.exclusive.map_or(0, |h| h.lock_delay_ms);
                lock.exclusive = None;
            }
            let ended: Vec<Holder> = lock.shared.iter().copied().filter(|h| h.session == session).collect();
            for holder in ended {
                delay_ms = delay_ms.max(holder.lock_delay_ms);
                lock.shared.remove(&holder);
            }
            if delay_ms > 0 {
                let until = lock.delay_until_ms.max(now_ms.saturating_add(delay_ms));
                self.delay_ends.remove(&(lock.delay_until_ms, path.clone()));
                lock.delay_until_ms = until;
                self.delay_ends.insert((until, path.clone()));
            }
            grants.extend(self.grant_waiters(&path, now_ms));
        }
        grants
    }

    /// Ends the lock-delays that have passed by `now_ms` and hands those
    /// locks to their waiters. The state machine calls it whenever its clock
    /// passes [`next_delay_end_ms`](Self::next_delay_end_ms), and the master
    /// proposes a command carrying the time when a lock-delay runs out.
    pub fn advance_time(&mut self, now_ms: u64) -> Vec<Grant> {
        let due: Vec<Path> =
            self.delay_ends.iter().take_while(|(until, _)| *until <= now_ms).map(|(_, path)| path.clone()).collect();
        due.iter().flat_map(|path| self.grant_waiters(path, now_ms)).collect()
    }

    /// The earliest end of a running lock-delay.
    pub fn next_delay_end_ms(&self) -> Option<u64> {
        self.delay_ends.first().map(|(until, _)| *until)
    }

    /// Who holds the lock on `path`, in which mode.
    pub fn holders(&self, path: &Path) -> Vec<(Holder, LockMode)> {
        let Some(lock) = self.locks.get(path) else { return Vec::new() };
        let exclusive = lock.exclusive.iter().map(|&h| (h, LockMode::Exclusive));
        exclusive.chain(lock.shared.iter().map(|&h| (h, LockMode::Shared))).collect()
    }

    /// The mode in which this handle holds the lock on `path`, if it does.
    pub fn held_by(&self, path: &Path, session: SessionId, handle: u64) -> Option<LockMode> {
        let lock = self.locks.get(path)?;
        let same = |h: &Holder| h.session == session && h.handle == handle;
        if lock.exclusive.as_ref().is_some_and(same) {
            Some(LockMode::Exclusive)
        } else if lock.shared.iter().any(same) {
            Some(LockMode::Shared)
        } else {
            None
        }
    }

    /// Whether this handle waits in line for the lock on `path`.
    pub fn is_waiting(&self, path: &Path, session: SessionId, handle: u64) -> bool {
        self.locks
            .get(path)
            .is_some_and(|lock| lock.waiters.iter().any(|(h, _)| h.session == session && h.handle == handle))
    }

    /// Whether the lock on `path` is held in `mode` by anyone.
    pub fn is_held_in(&self, path: &Path, mode: LockMode) -> bool {
        self.locks.get(path).is_some_and(|lock| match mode {
            LockMode::Exclusive => lock.exclusive.is_some(),
            LockMode::Shared => !lock.shared.is_empty(),
        })
    }

    /// How many holdings there are (an exclusive holder or each shared one).
    pub fn held_count(&self) -> usize {
        self.locks.values().map(|lock| usize::from(lock.exclusive.is_some()) + lock.shared.len()).sum()
    }

    /// Forgets the lock of a deleted node: holders and waiters lose it, and
    /// a running lock-delay ends with the node. Returns who held or waited.
    pub fn remove(&mut self, path: &Path) -> Vec<Holder> {
        let Some(lock) = self.locks.remove(path) else { return Vec::new() };
        self.delay_ends.remove(&(lock.delay_until_ms, path.clone()));
        let mut involved = lock.holders();
        involved.extend(lock.waiters.iter().map(|(h, _)| *h));
        involved
    }

    /// Every lock, in path order, for a snapshot.
    pub fn records(&self) -> Vec<LockRecord> {
        self.locks
            .iter()
            .map(|(path, lock)| LockRecord {
                path: path.clone(),
                holders: self.holders(path),
                waiters: lock.waiters.iter().copied().collect(),
                delay_until_ms: lock.delay_until_ms,
            })
            .collect()
    }

    /// Rebuilds a table from a snapshot's records, refusing records that
    /// could not arise: two exclusive holders, exclusive and shared at once,
    /// a handle twice in one lock, or a lock listed twice.
    pub fn from_records(records: Vec<LockRecord>) -> Result<LockTable, String> {
        let mut table = LockTable::new();
        for record in records {
            let mut lock = Lock { delay_until_ms: record.delay_until_ms, ..Lock::default() };
            for (holder, mode) in record.holders {
                if lock.involves(&holder) || !lock.is_free_for(mode) {
                    return Err(format!("lock {} has conflicting holders", record.path));
                }
                lock.hold(holder, mode);
            }
            for (holder, mode) in record.waiters {
                if lock.involves(&holder) {
                    return Err(format!("lock {} lists a handle twice", record.path));
                }
                lock.waiters.push_back((holder, mode));
            }
            if lock.waiters.len() > WAITERS_PER_LOCK_MAX {
                return Err(format!("lock {} has {} waiters", record.path, lock.waiters.len()));
            }
            if lock.delay_until_ms != 0 {
                table.delay_ends.insert((lock.delay_until_ms, record.path.clone()));
            }
            if table.locks.insert(record.path.clone(), lock).is_some() {
                return Err(format!("lock {} appears twice", record.path));
            }
        }
        Ok(table)
    }

    /// Serves the line in order: the first waiter alone if exclusive, else
    /// every shared waiter up to the next exclusive one.
    fn grant_waiters(&mut self, path: &Path, now_ms: u64) -> Vec<Grant> {
        let Some(lock) = self.locks.get_mut(path) else { return Vec::new() };
        let mut grants = Vec::new();
        if now_ms >= lock.delay_until_ms {
            if lock.delay_until_ms != 0 {
                self.delay_ends.remove(&(lock.delay_until_ms, path.clone()));
                lock.delay_until_ms = 0;
            }
            while let Some(&(holder, mode)) = lock.waiters.front() {
                if !lock.is_free_for(mode) {
                    break;
                }
                let was_free = lock.exclusive.is_none() && lock.shared.is_empty();
                lock.waiters.pop_front();
                lock.hold(holder, mode);
                grants.push(Grant { path: path.clone(), holder, mode, was_free });
            }
        }
        if lock.is_idle() && lock.delay_until_ms == 0 {
            self.locks.remove(path);
        }
        grants
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
        Holder { session, handle: 1, lock_delay_ms: 1_000 }
    }

    #[test]
    fn exclusive_lock_excludes_everyone_else_until_released() {
        let mut table = LockTable::new();
        table.try_acquire(&path(), holder(1), LockMode::Exclusive, 0).expect("free");
        assert_eq!(table.try_acquire(&path(), holder(2), LockMode::Exclusive, 0), Err(LockError::Held(path())));
        assert_eq!(table.try_acquire(&path(), holder(2), LockMode::Shared, 0), Err(LockError::Held(path())));
        assert_eq!(table.release(&path(), holder(2), 0), Err(LockError::NotHeld(path())));
        assert_eq!(table.release(&path(), holder(1), 0), Ok(vec![]));
        table.try_acquire(&path(), holder(2), LockMode::Exclusive, 0).expect("free after release");
    }

    #[test]
    fn shared_holders_coexist_and_keep_an_exclusive_request_waiting() {
        let mut table = LockTable::new();
        table.try_acquire(&path(), holder(1), LockMode::Shared, 0).expect("free");
        table.try_acquire(&path(), holder(2), LockMode::Shared, 0).expect("shared with shared");
        let queued = table.acquire(&path(), holder(3), LockMode::Exclusive, 0).expect("queued");
        assert_eq!(queued, Acquired::Queued { conflicting: vec![holder(1), holder(2)] });
        // A later reader does not overtake the waiting writer.
        assert_eq!(table.try_acquire(&path(), holder(4), LockMode::Shared, 0), Err(LockError::Held(path())));
        assert_eq!(table.release(&path(), holder(1), 0), Ok(vec![]));
        let grants = table.release(&path(), holder(2), 0).expect("held");
        assert_eq!(grants, vec![Grant { path: path(), holder: holder(3), mode: LockMode::Exclusive, was_free: true }]);
    }

    #[test]
    fn waiters_are_served_in_order_readers_together() {
        let mut table = LockTable::new();
        table.try_acquire(&path(), holder(1), LockMode::Exclusive, 0).expect("free");
        for (session, mode) in [(2, LockMode::Shared), (3, LockMode::Shared), (4, LockMode::Exclusive), (5, LockMode::Shared)] {
            assert!(matches!(table.acquire(&path(), holder(session), mode, 0), Ok(Acquired::Queued { .. })));
        }
        let grants = table.release(&path(), holder(1), 0).expect("held");
        let granted: Vec<SessionId> = grants.iter().map(|g| g.holder.session).collect();
        assert_eq!(granted, vec![2, 3], "the two readers, not the writer behind them");
        table.release(&path(), holder(2), 0).expect("held");
        let grants = table.release(&path(), holder(3), 0).expect("held");
        assert_eq!(grants.iter().map(|g| g.holder.session).collect::<Vec<_>>(), vec![4]);
        let grants = table.release(&path(), holder(4), 0).expect("held");
        assert_eq!(grants.iter().map(|g| g.holder.session).collect::<Vec<_>>(), vec![5]);
    }

    #[test]
    fn an_ended_holder_leaves_the_lock_unavailable_for_its_lock_delay() {
        let mut table = LockTable::new();
        table.try_acquire(&path(), holder(1), LockMode::Exclusive, 100).expect("free");
        assert!(matches!(table.acquire(&path(), holder(2), LockMode::Exclusive, 100), Ok(Acquired::Queued { .. })));
        assert_eq!(table.session_ended(1, 500), vec![], "no grant during the lock-delay");
        assert_eq!(
            table.try_acquire(&path(), holder(3), LockMode::Exclusive, 1_000),
            Err(LockError::LockDelay { path: path(), until_ms: 1_500 })
        );
        assert_eq!(table.next_delay_end_ms(), Some(1_500));
        assert_eq!(table.advance_time(1_499), vec![]);
        let grants = table.advance_time(1_500);
        assert_eq!(grants, vec![Grant { path: path(), holder: holder(2), mode: LockMode::Exclusive, was_free: true }]);
        assert_eq!(table.next_delay_end_ms(), None, "the delay is over");
    }

    #[test]
    fn a_release_starts_no_lock_delay_and_an_ended_session_stops_waiting() {
        let mut table = LockTable::new();
        table.try_acquire(&path(), holder(1), LockMode::Exclusive, 0).expect("free");
        assert!(matches!(table.acquire(&path(), holder(2), LockMode::Exclusive, 0), Ok(Acquired::Queued { .. })));
        assert!(matches!(table.acquire(&path(), holder(3), LockMode::Exclusive, 0), Ok(Acquired::Queued { .. })));
        assert_eq!(table.session_ended(2, 0), vec![], "the waiter of session 2 leaves the line");
        let grants = table.release(&path(), holder(1), 0).expect("held");
        assert_eq!(grants.iter().map(|g| g.holder.session).collect::<Vec<_>>(), vec![3]);
        assert_eq!(table.next_delay_end_ms(), None);
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
    }

    #[test]
    fn cancelling_the_head_waiter_lets_the_next_in() {
        let mut table = LockTable::new();
        table.try_acquire(&path(), holder(1), LockMode::Shared, 0).expect("free");
        assert!(matches!(table.acquire(&path(), holder(2), LockMode::Exclusive, 0), Ok(Acquired::Queued { .. })));
        assert!(matches!(table.acquire(&path(), holder(3), LockMode::Shared, 0), Ok(Acquired::Queued { .. })));
        let grants = table.cancel_wait(&path(), holder(2), 0);
        assert_eq!(grants, vec![Grant { path: path(), holder: holder(3), mode: LockMode::Shared, was_free: false }]);
        assert_eq!(table.holders(&path()).len(), 2);
    }
}
