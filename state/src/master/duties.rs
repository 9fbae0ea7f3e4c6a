//! The master's duties as one pure function of the time, so the server's
//! driver and the whole-cell simulator run the same decisions:
//!
//! - each time the master becomes able to serve (it holds the master lease
//!   and has applied everything chosen before its mastership; only then do
//!   KeepAlives reach it) every session gets a full lease from that moment
//!   ([`SessionLeases::promote`]) and the lock-delay clock is anchored at the
//!   state's value ([`LockClock::anchor`]); so neither a failover nor a stall
//!   of the master alone ever expires a session;
//! - while it serves, it proposes `EndSession { expired: true }` for every
//!   session whose lease ran out, and `AdvanceTime` once its lock-delay
//!   clock passes the end of the earliest lock-delay;
//! - when it can no longer serve, deadlines are forgotten
//!   ([`SessionLeases::demote`]) and the clock loses its anchor.
//!
//! The caller proposes what [`MasterDuties::tick`] returns and reports each
//! proposal the core took with [`MasterDuties::proposed`]: a refused one is
//! simply returned again at the next tick. The session leases are borrowed,
//! not owned, because the server's KeepAlive handler renews them under a
//! lock of their own.

use std::time::Instant;

use gaios_proto::state::v1 as wire;

use crate::machine::StateMachine;
use crate::master::{LockClock, SessionLeases};

/// What a master remembers between two runs of its duties; see the module
/// docs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MasterDuties {
    /// The master's reading of the lock-delay clock.
    lock_clock: LockClock,
    /// Whether it could serve at the last tick.
    serving: bool,
    /// The lock-delay end an `AdvanceTime` was proposed for, so it is
    /// proposed once per end.
    advance_proposed_for: Option<u64>,
}

impl MasterDuties {
    /// A replica that is not (yet) a serving master.
    pub fn new() -> Self {
        MasterDuties::default()
    }

    /// Whether the master could serve at the last tick.
    pub fn is_serving(&self) -> bool {
        self.serving
    }

    /// The lock-delay clock stamp for a command proposed at `now` (0 while
    /// the master cannot serve; the state ignores it).
    pub fn lock_clock_ms(&self, now: Instant) -> u64 {
        self.lock_clock.stamp_ms(now)
    }

    /// This replica became master (with `ballot`) or lost mastership: no
    /// lease, anchor or proposal of an earlier reign counts.
    pub fn reset(&mut self, leases: &mut SessionLeases) {
        leases.clear();
        self.serving = false;
        self.lock_clock.forget();
        self.advance_proposed_for = None;
    }

    /// The command a new master proposes first, recording the failover in
    /// the log (every session gets a master-failover event).
    pub fn took_over(round: u64, replica: u64) -> wire::command::Kind {
        wire::command::Kind::MasterTookOver(wire::MasterTookOver { ballot_round: round, ballot_replica: replica })
    }

    /// Runs the duties at `now`: `can_serve` says whether this replica is
    /// master, holds the master lease and has applied its read barrier.
    /// Returns the commands to propose, expiries first, in session order.
    pub fn tick(&mut self, can_serve: bool, state: &StateMachine, leases: &mut SessionLeases, now: Instant) -> Vec<wire::command::Kind> {
        if !can_serve {
            if self.serving {
                leases.demote();
            }
            self.serving = false;
            self.lock_clock.forget();
            return Vec::new();
        }
        if !self.serving {
            self.serving = true;
            self.lock_clock.anchor(state.lock_clock_ms(), now);
            leases.promote(now);
        }
        leases.track(state.session_ids(), now);
        let mut duties: Vec<wire::command::Kind> = leases
            .expired(now)
            .into_iter()
            .map(|session| {
                wire::command::Kind::EndSession(wire::EndSession { session_id: session, expired: true, ..Default::default() })
            })
            .collect();
        if let Some(end) = state.next_lock_delay_end_ms()
            && self.lock_clock.stamp_ms(now) >= end
            && self.advance_proposed_for != Some(end)
        {
            duties.push(wire::command::Kind::AdvanceTime(wire::AdvanceTime {}));
        }
        duties
    }

    /// The core took `kind`, which [`MasterDuties::tick`] returned, with
    /// `state` as it was then: an expired session's lease is never renewed
    /// nor its expiry proposed again, and an `AdvanceTime` is not repeated
    /// for the same lock-delay end.
    pub fn proposed(&mut self, kind: &wire::command::Kind, state: &StateMachine, leases: &mut SessionLeases) {
        match kind {
            wire::command::Kind::EndSession(end) if end.expired => leases.expiry_proposed(end.session_id),
            wire::command::Kind::AdvanceTime(_) => self.advance_proposed_for = state.next_lock_delay_end_ms(),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::time::Duration;

    const LEASE: Duration = Duration::from_secs(12);

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    fn apply(state: &mut StateMachine, lock_clock_ms: u64, kind: wire::command::Kind) -> wire::Outcome {
        state.apply(&wire::Command { now_ms: lock_clock_ms, lock_clock_ms, kind: Some(kind), ..Default::default() }).outcome
    }

    fn create_session(state: &mut StateMachine) -> u64 {
        let create = wire::CreateSession { client_name: "t".into(), session_secret: Bytes::from_static(&[7; 16]), ..Default::default() };
        match apply(state, 0, wire::command::Kind::CreateSession(create)).result {
            Some(wire::outcome::Result::SessionCreated(created)) => created.session_id,
            other => panic!("{other:?}"),
        }
    }

    fn expiries(duties: &[wire::command::Kind]) -> Vec<u64> {
        duties
            .iter()
            .filter_map(|kind| match kind {
                wire::command::Kind::EndSession(end) if end.expired => Some(end.session_id),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_new_master_expires_nobody_within_a_lease_of_serving_and_then_only_the_silent() {
        let t0 = Instant::now();
        let mut state = StateMachine::new();
        let (one, two) = (create_session(&mut state), create_session(&mut state));
        let mut leases = SessionLeases::new(LEASE);
        let mut duties = MasterDuties::new();
        duties.reset(&mut leases);
        // Not serving yet (lease or read barrier missing): nothing, for as
        // long as it lasts.
        assert!(duties.tick(false, &state, &mut leases, at(t0, 60_000)).is_empty());
        assert!(!duties.is_serving());
        // Serving from 60 s: a full lease for everyone from then.
        assert!(duties.tick(true, &state, &mut leases, at(t0, 60_000)).is_empty());
        assert!(duties.is_serving());
        leases.renew(one, at(t0, 70_000)).expect("renewed");
        assert!(expiries(&duties.tick(true, &state, &mut leases, at(t0, 71_999))).is_empty());
        let due = duties.tick(true, &state, &mut leases, at(t0, 72_000));
        assert_eq!(expiries(&due), vec![two]);
        // Refused by the core: asked again; taken: never again.
        assert_eq!(expiries(&duties.tick(true, &state, &mut leases, at(t0, 72_001))), vec![two]);
        duties.proposed(&due[0], &state, &mut leases);
        assert!(expiries(&duties.tick(true, &state, &mut leases, at(t0, 72_002))).is_empty());
        assert!(leases.renew(two, at(t0, 72_003)).is_err(), "an expiring session was renewed");
    }

    #[test]
    fn a_lapse_of_the_master_lease_forgets_the_deadlines_and_the_clock() {
        let t0 = Instant::now();
        let mut state = StateMachine::new();
        let session = create_session(&mut state);
        let mut leases = SessionLeases::new(LEASE);
        let mut duties = MasterDuties::new();
        assert!(duties.tick(true, &state, &mut leases, t0).is_empty());
        assert_eq!(duties.lock_clock_ms(at(t0, 500)), 500);
        // The master cannot serve from 1 s to 40 s (its lease lapsed).
        assert!(duties.tick(false, &state, &mut leases, at(t0, 1_000)).is_empty());
        assert_eq!(duties.lock_clock_ms(at(t0, 1_000)), 0, "a master that cannot serve stamps 0");
        assert!(duties.tick(true, &state, &mut leases, at(t0, 40_000)).is_empty(), "a stall of the master expired a session");
        assert_eq!(leases.deadline(session), Some(at(t0, 52_000)));
        assert_eq!(expiries(&duties.tick(true, &state, &mut leases, at(t0, 52_000))), vec![session]);
    }

    #[test]
    fn advance_time_is_proposed_once_when_the_lock_clock_passes_a_lock_delay_end() {
        use gaios_proto::cell::v1 as api;
        let t0 = Instant::now();
        let mut state = StateMachine::new();
        let session = create_session(&mut state);
        let secret = Bytes::from_static(&[7; 16]);
        let call = |number: u64, call: wire::session_call::Call| {
            wire::command::Kind::Call(wire::SessionCall {
                session_id: session,
                request_number: number,
                session_secret: secret.clone(),
                call: Some(call),
            })
        };
        let open = api::OpenRequest { path: "/l".into(), create: true, kind: api::NodeKind::File as i32, lock_delay_ms: 1_000, ..Default::default() };
        let handle = match apply(&mut state, 1, call(1, wire::session_call::Call::Open(open))).result {
            Some(wire::outcome::Result::Opened(opened)) => opened.handle,
            other => panic!("{other:?}"),
        };
        let acquire = api::AcquireRequest { handle, mode: api::LockMode::Exclusive as i32, ..Default::default() };
        apply(&mut state, 1, call(2, wire::session_call::Call::TryAcquire(acquire)));
        let end = wire::command::Kind::EndSession(wire::EndSession { session_id: session, expired: true, ..Default::default() });
        apply(&mut state, 1, end);
        assert_eq!(state.next_lock_delay_end_ms(), Some(1_001));
        let mut leases = SessionLeases::new(LEASE);
        let mut duties = MasterDuties::new();
        // Anchored at the state's clock (1 ms): the delay ends 1 s later.
        assert!(duties.tick(true, &state, &mut leases, t0).is_empty());
        assert!(duties.tick(true, &state, &mut leases, at(t0, 999)).is_empty());
        let due = duties.tick(true, &state, &mut leases, at(t0, 1_000));
        assert!(matches!(due.as_slice(), [wire::command::Kind::AdvanceTime(_)]), "{due:?}");
        duties.proposed(&due[0], &state, &mut leases);
        assert!(duties.tick(true, &state, &mut leases, at(t0, 1_500)).is_empty(), "proposed twice for one end");
    }
}
