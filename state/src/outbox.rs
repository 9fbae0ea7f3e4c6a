//! The event outbox: the events applied commands numbered, waiting for their
//! sessions' clients. It is **not** replicated state: `apply` numbers each
//! event in the session (the numbers are replicated, so a client can always
//! tell when it missed some) and returns it in [`Applied`]; the replica that
//! applied it keeps it here until the session's client acknowledges it
//! through a KeepAlive. Every replica keeps one (a follower that becomes
//! master can deliver what its clients have not acknowledged yet), and each
//! keeps at most the newest [`EVENTS_QUEUED_PER_SESSION_MAX`] events and
//! [`EVENTS_QUEUED_BYTES_PER_SESSION_MAX`] bytes of a session, and
//! [`EVENTS_QUEUED_BYTES_MAX`] in all (past that, the session with the most
//! bytes queued loses its oldest), so clients that stop acknowledging cost a
//! bounded amount of memory and cannot starve those that do. A dropped
//! event shows as a gap in the numbers.
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

use crate::limits::{EVENTS_QUEUED_BYTES_MAX, EVENTS_QUEUED_BYTES_PER_SESSION_MAX, EVENTS_QUEUED_PER_SESSION_MAX};
use crate::machine::{Applied, Outcome, StateMachine};
use crate::namespace::SessionId;

/// Events not yet acknowledged, per session; see the module docs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventOutbox {
    queues: BTreeMap<SessionId, Queue>,
    /// The sessions by the bytes of their queues, to find the largest.
    by_bytes: BTreeSet<(usize, SessionId)>,
    /// The bytes of all queues ([`event_bytes`] of each event).
    bytes: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Queue {
    events: VecDeque<api::Event>,
    bytes: usize,
}

/// What an event costs in memory, counted against the bounds: its path and
/// a fixed overhead for the rest.
pub fn event_bytes(event: &api::Event) -> usize {
    64 + event.path.len()
}

impl EventOutbox {
    /// An empty outbox.
    pub fn new() -> Self {
        EventOutbox::default()
    }

    /// Takes the events one applied command numbered and forgets the
    /// sessions it ended; adds every session it concerns to `touched` (their
    /// KeepAlive streams have something to send). Returns the command's
    /// outcome, the rest of what `apply` returned. A session over its own
    /// bounds loses its oldest events; past the total bound, the session
    /// with the most bytes queued does, so clients that do not acknowledge
    /// cannot starve those that do.
    pub fn record(&mut self, applied: Applied, touched: &mut BTreeSet<SessionId>) -> Outcome {
        let Applied { outcome, events, ended } = applied;
        for (session, event) in events {
            self.push(session, event);
            while self.queues.get(&session).is_some_and(|queue| {
                queue.events.len() > EVENTS_QUEUED_PER_SESSION_MAX || queue.bytes > EVENTS_QUEUED_BYTES_PER_SESSION_MAX
            }) {
                self.pop_oldest(session);
            }
            while self.bytes > EVENTS_QUEUED_BYTES_MAX {
                let Some(&(_, largest)) = self.by_bytes.last() else { break };
                self.pop_oldest(largest);
            }
            touched.insert(session);
        }
        for session in ended {
            self.remove(session);
            touched.insert(session);
        }
        outcome
    }

    fn push(&mut self, session: SessionId, event: api::Event) {
        let queue = self.queues.entry(session).or_default();
        self.by_bytes.remove(&(queue.bytes, session));
        let size = event_bytes(&event);
        queue.events.push_back(event);
        queue.bytes += size;
        self.bytes += size;
        self.by_bytes.insert((queue.bytes, session));
    }

    /// Drops the session's oldest event (and its queue once empty).
    fn pop_oldest(&mut self, session: SessionId) {
        let Some(queue) = self.queues.get_mut(&session) else { return };
        self.by_bytes.remove(&(queue.bytes, session));
        if let Some(oldest) = queue.events.pop_front() {
            let size = event_bytes(&oldest);
            queue.bytes -= size;
            self.bytes -= size;
        }
        if queue.events.is_empty() {
            self.queues.remove(&session);
        } else {
            self.by_bytes.insert((queue.bytes, session));
        }
    }

    fn remove(&mut self, session: SessionId) {
        if let Some(queue) = self.queues.remove(&session) {
            self.by_bytes.remove(&(queue.bytes, session));
            self.bytes -= queue.bytes;
        }
    }

    /// Keeps only the queues of sessions open in `state` (after a snapshot
    /// replaced the applied state, which may have ended some).
    pub fn retain_open(&mut self, state: &StateMachine) {
        let ended: Vec<SessionId> = self.queues.keys().copied().filter(|session| !state.has_session(*session)).collect();
        for session in ended {
            self.remove(session);
        }
    }

    /// The session's queued events numbered above `after`, oldest first, at
    /// most `max`.
    pub fn events_after(&self, session: SessionId, after: u64, max: usize) -> Vec<api::Event> {
        let Some(queue) = self.queues.get(&session) else { return Vec::new() };
        queue.events.iter().filter(|event| event.number > after).take(max).cloned().collect()
    }

    /// Forgets the session's events up to `through`: its client has them.
    pub fn acknowledge(&mut self, session: SessionId, through: u64) {
        while self.queues.get(&session).is_some_and(|queue| queue.events.front().is_some_and(|event| event.number <= through)) {
            self.pop_oldest(session);
        }
    }

    /// How many events are queued in all.
    pub fn len(&self) -> usize {
        self.queues.values().map(|queue| queue.events.len()).sum()
    }

    /// The bytes the queued events cost ([`event_bytes`]).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether no event is queued.
    pub fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        outbox.record(applied(vec![(1, event(1)), (1, event(2)), (2, event(1))], vec![]), &mut touched);
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
        outbox.record(applied(vec![(3, event(1))], vec![]), &mut touched);
        touched.clear();
        outbox.record(applied(vec![], vec![3]), &mut touched);
        assert_eq!(touched, BTreeSet::from([3]), "its KeepAlive stream must hear that it ended");
        assert!(outbox.is_empty());
    }

    #[test]
    fn a_session_that_never_acknowledges_keeps_only_the_newest_events() {
        let mut outbox = EventOutbox::new();
        let mut touched = BTreeSet::new();
        let total = EVENTS_QUEUED_PER_SESSION_MAX as u64 + 10;
        for number in 1..=total {
            outbox.record(applied(vec![(1, event(number))], vec![]), &mut touched);
        }
        assert_eq!(outbox.len(), EVENTS_QUEUED_PER_SESSION_MAX);
        assert_eq!(outbox.events_after(1, 0, 1)[0].number, 11, "the oldest went first");
    }

    impl EventOutbox {
        /// Recounts what is kept beside the events.
        fn check(&self) {
            let counted: usize = self.queues.values().map(|q| q.events.iter().map(event_bytes).sum::<usize>()).sum();
            assert_eq!(counted, self.bytes, "the byte count is exact");
            let index: BTreeSet<(usize, SessionId)> = self.queues.iter().map(|(&s, q)| (q.bytes, s)).collect();
            assert_eq!(index, self.by_bytes, "the index by bytes");
            assert!(self.queues.values().all(|q| !q.events.is_empty()), "no empty queue is kept");
        }
    }

    fn long_event(number: u64) -> api::Event {
        api::Event { path: format!("/{}", "p".repeat(1_000)), ..event(number) }
    }

    #[test]
    fn a_session_keeps_at_most_its_share_of_bytes_and_all_sessions_the_total() {
        let mut outbox = EventOutbox::new();
        let mut touched = BTreeSet::new();
        let per_session = EVENTS_QUEUED_BYTES_PER_SESSION_MAX / event_bytes(&long_event(1));
        for number in 1..=(per_session as u64 + 5) {
            outbox.record(applied(vec![(1, long_event(number))], vec![]), &mut touched);
        }
        assert_eq!(outbox.len(), per_session, "the session's bytes are bounded");
        assert!(outbox.bytes() <= EVENTS_QUEUED_BYTES_PER_SESSION_MAX);
        assert_eq!(outbox.events_after(1, 0, 1)[0].number, 6, "the oldest went first");
        // Many sessions each within their share still meet the total bound.
        let sessions = (EVENTS_QUEUED_BYTES_MAX / EVENTS_QUEUED_BYTES_PER_SESSION_MAX) as u64 + 3;
        for session in 2..=sessions + 1 {
            for number in 1..=per_session as u64 {
                outbox.record(applied(vec![(session, long_event(number))], vec![]), &mut touched);
            }
        }
        assert!(outbox.bytes() <= EVENTS_QUEUED_BYTES_MAX, "{} bytes queued", outbox.bytes());
        outbox.check();
        // A session that acknowledges keeps its new events although the
        // outbox is full of others'.
        let prompt = sessions + 100;
        for number in 1..=3 {
            outbox.record(applied(vec![(prompt, event(number))], vec![]), &mut touched);
            assert_eq!(outbox.events_after(prompt, number - 1, 10), vec![event(number)], "the prompt session's event was dropped");
            outbox.acknowledge(prompt, number);
        }
        outbox.check();
        // Acknowledging and ending give the bytes back.
        outbox.acknowledge(1, u64::MAX);
        outbox.record(applied(vec![], (2..=sessions + 1).collect()), &mut touched);
        assert_eq!((outbox.len(), outbox.bytes()), (0, 0));
    }
}
