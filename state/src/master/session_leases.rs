//! The master's session leases: when each session's lease runs out unless a
//! KeepAlive extends it. Not replicated: a master keeps them in memory while
//! it serves, and a new master starts them afresh, so a failover alone never
//! ends a session (Chubby's rule: the new master gives every session a full
//! lease, as if each had just sent a KeepAlive).
//!
//! The type is pure: every operation takes the time `now`, so the tests (and
//! a simulator) drive it with any clock. The driver owns the transitions
//! ([`SessionLeases::promote`] when the master becomes able to serve,
//! [`SessionLeases::demote`] when it no longer can, [`SessionLeases::clear`]
//! when it loses mastership) and proposes the expiries
//! [`SessionLeases::expired`] names; the `Cell` service grants a lease to a
//! session it created and renews leases on KeepAlives.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::namespace::SessionId;

/// Why a KeepAlive did not renew a lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseEnded {
    /// The lease ran out before the KeepAlive arrived (the master has
    /// proposed, or is about to propose, the session's expiry).
    RanOut,
}

/// The deadlines of every session of this master's reign.
#[derive(Debug)]
pub struct SessionLeases {
    /// How long a lease lasts from a grant or a renewal.
    lease: Duration,
    /// When each session's lease runs out.
    deadlines: BTreeMap<SessionId, Instant>,
    /// Sessions whose expiry this master proposed; their leases are never
    /// renewed again (the command may still commit).
    expiring: BTreeSet<SessionId>,
}

impl SessionLeases {
    /// No leases yet; each lasts `lease`.
    pub fn new(lease: Duration) -> Self {
        SessionLeases { lease, deadlines: BTreeMap::new(), expiring: BTreeSet::new() }
    }

    /// How long a lease lasts.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// A session this master just created: its lease runs from `now`.
    pub fn grant(&mut self, session: SessionId, now: Instant) {
        self.deadlines.insert(session, now + self.lease);
    }

    /// A KeepAlive from `session` at `now`: its lease runs a full lease from
    /// now, unless it already ran out (or its expiry was proposed), which is
    /// the end of the session. A session this master has no deadline for
    /// yet (made by an earlier master, not yet tracked) gets one.
    pub fn renew(&mut self, session: SessionId, now: Instant) -> Result<Instant, LeaseEnded> {
        if self.expiring.contains(&session) {
            return Err(LeaseEnded::RanOut);
        }
        let fresh = now + self.lease;
        match self.deadlines.get_mut(&session) {
            Some(deadline) if *deadline <= now => Err(LeaseEnded::RanOut),
            Some(deadline) => {
                *deadline = (*deadline).max(fresh);
                Ok(*deadline)
            }
            None => {
                self.deadlines.insert(session, fresh);
                Ok(fresh)
            }
        }
    }

    /// A session that ended (closed or expired): forgotten.
    pub fn forget(&mut self, session: SessionId) {
        self.deadlines.remove(&session);
        self.expiring.remove(&session);
    }

    /// The master became able to serve at `now` (after an election, or after
    /// its master lease lapsed and came back): every session gets at least a
    /// full lease from now, since none could reach it before, except those
    /// whose expiry it already proposed.
    pub fn promote(&mut self, now: Instant) {
        let fresh = now + self.lease;
        for (session, deadline) in &mut self.deadlines {
            if !self.expiring.contains(session) {
                *deadline = (*deadline).max(fresh);
            }
        }
    }

    /// The master can no longer serve: deadlines that pass meanwhile are not
    /// the clients' fault, so they are forgotten (a KeepAlive that arrives
    /// once it serves again, before [`SessionLeases::promote`], starts a
    /// full lease). The sessions whose expiry it proposed stay expiring.
    pub fn demote(&mut self) {
        let expiring = &self.expiring;
        self.deadlines.retain(|session, _| expiring.contains(session));
    }

    /// Mastership lost (or newly won): nothing of the last reign counts.
    pub fn clear(&mut self) {
        self.deadlines.clear();
        self.expiring.clear();
    }

    /// Follows the applied state's sessions at `now`: those that ended are
    /// forgotten, and those this master has no deadline for (made by an
    /// earlier master, or just applied) get a full lease from now.
    pub fn track(&mut self, live: impl IntoIterator<Item = SessionId>, now: Instant) {
        let live: BTreeSet<SessionId> = live.into_iter().collect();
        self.deadlines.retain(|session, _| live.contains(session));
        self.expiring.retain(|session| live.contains(session));
        for session in live {
            self.deadlines.entry(session).or_insert(now + self.lease);
        }
    }

    /// The sessions whose lease ran out by `now` and whose expiry is not
    /// proposed yet, in id order.
    pub fn expired(&self, now: Instant) -> Vec<SessionId> {
        self.deadlines
            .iter()
            .filter(|&(session, &deadline)| deadline <= now && !self.expiring.contains(session))
            .map(|(&session, _)| session)
            .collect()
    }

    /// The expiry of `session` was proposed: its lease is never renewed
    /// again.
    pub fn expiry_proposed(&mut self, session: SessionId) {
        self.expiring.insert(session);
    }

    /// When `session`'s lease runs out, if this master tracks it.
    pub fn deadline(&self, session: SessionId) -> Option<Instant> {
        self.deadlines.get(&session).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(12);

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn a_keep_alive_renews_a_running_lease_and_never_one_that_ran_out() {
        let t0 = Instant::now();
        let mut leases = SessionLeases::new(LEASE);
        leases.grant(1, t0);
        assert_eq!(leases.renew(1, at(t0, 5_000)), Ok(at(t0, 17_000)));
        assert!(leases.expired(at(t0, 16_999)).is_empty());
        assert_eq!(leases.expired(at(t0, 17_000)), vec![1]);
        // Late: the master may be committing the expiry right now.
        assert_eq!(leases.renew(1, at(t0, 17_001)), Err(LeaseEnded::RanOut));
        assert_eq!(leases.deadline(1), Some(at(t0, 17_000)), "a refused renewal moved the deadline");
    }

    #[test]
    fn a_session_whose_expiry_was_proposed_is_never_renewed_nor_proposed_again() {
        let t0 = Instant::now();
        let mut leases = SessionLeases::new(LEASE);
        leases.grant(1, t0);
        leases.grant(2, at(t0, 1_000));
        assert_eq!(leases.expired(at(t0, 12_500)), vec![1]);
        leases.expiry_proposed(1);
        assert!(leases.expired(at(t0, 12_600)).is_empty(), "proposed twice");
        assert_eq!(leases.renew(1, at(t0, 12_600)), Err(LeaseEnded::RanOut));
        // A lapse and a return to serving do not revive it either.
        leases.demote();
        leases.promote(at(t0, 13_000));
        assert_eq!(leases.renew(1, at(t0, 13_000)), Err(LeaseEnded::RanOut));
        assert!(leases.renew(2, at(t0, 13_000)).is_ok());
        // Once the expiry is applied the session is gone for good.
        leases.track([2], at(t0, 13_100));
        assert_eq!(leases.deadline(1), None);
    }

    #[test]
    fn a_failover_alone_never_expires_a_session() {
        let t0 = Instant::now();
        let mut leases = SessionLeases::new(LEASE);
        leases.grant(1, t0);
        leases.grant(2, t0);
        // Client 1 keeps its session alive; then the master dies, and the
        // next one needs 30 s (longer than a lease) to be able to serve.
        leases.renew(1, at(t0, 4_000)).expect("renewed");
        leases.clear();
        // In the order the driver's duties run them.
        let serving = at(t0, 30_000);
        leases.promote(serving);
        leases.track([1, 2], serving);
        // Neither session expires within a full lease of the new master
        // serving, although both deadlines of the old reign passed.
        assert!(leases.expired(at(t0, 30_000 + 11_999)).is_empty());
        assert!(leases.renew(1, at(t0, 31_000)).is_ok());
        assert_eq!(leases.expired(at(t0, 42_000)), vec![2], "only the silent session expires");
    }

    #[test]
    fn deadlines_that_pass_while_the_master_cannot_serve_do_not_count() {
        let t0 = Instant::now();
        let mut leases = SessionLeases::new(LEASE);
        leases.grant(1, t0);
        leases.grant(2, t0);
        leases.demote();
        // The master lease comes back at 20 s: a KeepAlive that reaches it
        // before its duties promote the leases starts a full lease.
        assert_eq!(leases.renew(1, at(t0, 20_000)), Ok(at(t0, 32_000)));
        leases.promote(at(t0, 20_010));
        leases.track([1, 2], at(t0, 20_010));
        assert!(leases.expired(at(t0, 31_000)).is_empty());
        assert_eq!(leases.deadline(2), Some(at(t0, 32_010)));
    }

    #[test]
    fn tracking_follows_the_applied_sessions() {
        let t0 = Instant::now();
        let mut leases = SessionLeases::new(LEASE);
        leases.grant(1, t0);
        leases.track([1, 7], at(t0, 3_000));
        assert_eq!(leases.deadline(1), Some(at(t0, 12_000)), "a tracked lease was changed");
        assert_eq!(leases.deadline(7), Some(at(t0, 15_000)), "a session of an earlier master gets a lease from now");
        leases.track([7], at(t0, 4_000));
        assert_eq!(leases.deadline(1), None);
        leases.forget(7);
        assert!(leases.expired(at(t0, 100_000)).is_empty());
    }
}
