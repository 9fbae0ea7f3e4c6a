//! The event outbox: the events applied commands numbered, waiting for their
//! sessions' clients. It is **not** replicated state: `apply` numbers each
//! event in the session (the numbers are replicated, so a client can always
//! tell when it missed some) and returns it in [`Applied`]; the replica that
//! applied it keeps it here until the session's client acknowledges it
//! through a KeepAlive. Every replica keeps one (a follower that becomes
//! master can deliver what its clients have not acknowledged yet), and each
//! keeps at most the newest [`EVENTS_QUEUED_PER_SESSION_MAX`] events of a
//! session, so a client that stops acknowledging costs a bounded amount.
//!
//! When a replica installs a snapshot from another, it keeps the queues of
//! the sessions the snapshot still holds; the events numbered in the slots
//! the snapshot covers never reach this replica's outbox, and clients see
//! them as a gap in the numbers.
//!
//! The gRPC handlers change only this outbox (acknowledgements), never the
//! applied state.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use gaios_proto::cell::v1 as api;

use crate::limits::EVENTS_QUEUED_PER_SESSION_MAX;
use crate::machine::{Applied, StateMachine};
use crate::namespace::SessionId;

/// Events not yet acknowledged, per session; see the module docs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventOutbox {
    queues: BTreeMap<SessionId, VecDeque<api::Event>>,
}

impl EventOutbox {
    /// An empty outbox.
    pub fn new() -> Self {
        EventOutbox::default()
    }

    /// Takes the events one applied command numbered and forgets the
    /// sessions it ended; adds every session it concerns to `touched` (their
    /// KeepAlive streams have something to send).
    pub fn record(&mut self, applied: &Applied, touched: &mut BTreeSet<SessionId>) {
        for (session, event) in &applied.events {
            let queue = self.queues.entry(*session).or_default();
            queue.push_back(event.clone());
            while queue.len() > EVENTS_QUEUED_PER_SESSION_MAX {
                queue.pop_front();
            }
            touched.insert(*session);
        }
        for session in &applied.ended {
            self.queues.remove(session);
            touched.insert(*session);
        }
    }

    /// Keeps only the queues of sessions open in `state` (after a snapshot
    /// replaced the applied state, which may have ended some).
    pub fn retain_open(&mut self, state: &StateMachine) {
        self.queues.retain(|session, _| state.has_session(*session));
    }

    /// The session's queued events numbered above `after`, oldest first, at
    /// most `max`.
    pub fn events_after(&self, session: SessionId, after: u64, max: usize) -> Vec<api::Event> {
        let Some(queue) = self.queues.get(&session) else { return Vec::new() };
        queue.iter().filter(|event| event.number > after).take(max).cloned().collect()
    }

    /// Forgets the session's events up to `through`: its client has them.
    pub fn acknowledge(&mut self, session: SessionId, through: u64) {
        if let Some(queue) = self.queues.get_mut(&session) {
            while queue.front().is_some_and(|event| event.number <= through) {
                queue.pop_front();
            }
            if queue.is_empty() {
                self.queues.remove(&session);
            }
        }
    }

    /// How many events are queued in all.
    pub fn len(&self) -> usize {
        self.queues.values().map(VecDeque::len).sum()
    }

    /// Whether no event is queued.
    pub fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::Outcome;

    fn event(number: u64) -> api::Event {
        api::Event { number, kind: api::EventKind::ContentsModified as i32, handle: 1, path: "/f".into() }
    }

    fn applied(events: Vec<(SessionId, api::Event)>, ended: Vec<SessionId>) -> Applied {
        Applied { outcome: Outcome::default(), events, ended }
    }

    #[test]
    fn events_wait_until_acknowledged_and_wake_their_sessions() {
        let mut outbox = EventOutbox::new();
        let mut touched = BTreeSet::new();
        outbox.record(&applied(vec![(1, event(1)), (1, event(2)), (2, event(1))], vec![]), &mut touched);
        assert_eq!(touched, BTreeSet::from([1, 2]));
        assert_eq!(outbox.events_after(1, 0, 10), vec![event(1), event(2)]);
        assert_eq!(outbox.events_after(1, 1, 10), vec![event(2)]);
        assert_eq!(outbox.events_after(1, 0, 1), vec![event(1)]);
        outbox.acknowledge(1, 1);
        assert_eq!(outbox.events_after(1, 0, 10), vec![event(2)]);
        outbox.acknowledge(1, 2);
        assert!(outbox.events_after(1, 0, 10).is_empty());
        assert_eq!(outbox.len(), 1, "session 2's event stays");
    }

    #[test]
    fn an_ended_session_loses_its_queue_and_its_stream_wakes() {
        let mut outbox = EventOutbox::new();
        let mut touched = BTreeSet::new();
        outbox.record(&applied(vec![(3, event(1))], vec![]), &mut touched);
        touched.clear();
        outbox.record(&applied(vec![], vec![3]), &mut touched);
        assert_eq!(touched, BTreeSet::from([3]), "its KeepAlive stream must hear that it ended");
        assert!(outbox.is_empty());
    }

    #[test]
    fn a_session_that_never_acknowledges_keeps_only_the_newest_events() {
        let mut outbox = EventOutbox::new();
        let mut touched = BTreeSet::new();
        let total = EVENTS_QUEUED_PER_SESSION_MAX as u64 + 10;
        for number in 1..=total {
            outbox.record(&applied(vec![(1, event(number))], vec![]), &mut touched);
        }
        assert_eq!(outbox.len(), EVENTS_QUEUED_PER_SESSION_MAX);
        assert_eq!(outbox.events_after(1, 0, 1)[0].number, 11, "the oldest went first");
    }
}
