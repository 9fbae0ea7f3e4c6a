//! What the driver shares with the gRPC handlers: the applied state, the
//! master's session leases, the queue of commands to propose, and the
//! `Acquire` calls that wait on this replica.
//!
//! The driver alone changes the applied state (by applying chosen
//! commands); handlers read it under the lock, briefly, and send commands to
//! the driver, which answers each once it is chosen and applied.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use gaios_proto::state::v1 as wire;
use tokio::sync::{mpsc, oneshot, watch};

use crate::errors::ProposeError;
use gaios_state::namespace::SessionId;
use gaios_state::master::session_leases::SessionLeases;
use gaios_state::machine::{Outcome, StateMachine};

/// Commands waiting for the driver to propose them; beyond it handlers are
/// told the master is overloaded.
pub const PROPOSALS_QUEUED_MAX: usize = 8192;
/// How long a handler waits for its command to be chosen and applied before
/// it answers `UNAVAILABLE` (the command may still take effect; a retry with
/// the same request number is safe).
pub const PROPOSAL_TIMEOUT: Duration = Duration::from_secs(10);

/// A command for the driver to propose, and where to send its outcome.
#[derive(Debug)]
pub struct Proposal {
    /// The command (the driver fills in the proposer and the time).
    pub kind: wire::command::Kind,
    /// Gets the outcome once the command is applied, or why it was not.
    pub reply: oneshot::Sender<Result<Outcome, ProposeError>>,
}

/// Shared between the driver and the handlers; see the module docs.
#[derive(Debug)]
pub struct Shared {
    state: Mutex<StateMachine>,
    leases: Mutex<SessionLeases>,
    applied: watch::Sender<u64>,
    /// One sender per session with a KeepAlive stream on this replica (at
    /// most one entry per live session): woken when the session gets events
    /// or ends, so an applied batch wakes only the streams it concerns.
    session_watchers: Mutex<BTreeMap<SessionId, watch::Sender<()>>>,
    proposals: mpsc::Sender<Proposal>,
    /// The `Acquire` calls waiting on this replica, by (session, handle,
    /// request number), with how many attempts of each wait (a retry may
    /// arrive while an earlier attempt is still being dropped).
    live_waits: Mutex<BTreeMap<(SessionId, u64, u64), usize>>,
    /// How long a session lives without a KeepAlive.
    pub session_lease: Duration,
}

impl Shared {
    /// Shares `state`; returns the receiving end of the proposal queue for
    /// the driver.
    pub fn new(state: StateMachine, session_lease: Duration) -> (Shared, mpsc::Receiver<Proposal>) {
        let (proposals, receiver) = mpsc::channel(PROPOSALS_QUEUED_MAX);
        let (applied, _) = watch::channel(0);
        let shared = Shared {
            state: Mutex::new(state),
            leases: Mutex::new(SessionLeases::new(session_lease)),
            applied,
            session_watchers: Mutex::new(BTreeMap::new()),
            proposals,
            live_waits: Mutex::new(BTreeMap::new()),
            session_lease,
        };
        (shared, receiver)
    }

    /// The applied state. A poisoned lock (a panic while holding it) is
    /// taken over: the state machine never panics halfway through a change
    /// (`apply` does not panic), so the state is whole.
    pub fn state(&self) -> MutexGuard<'_, StateMachine> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The master's session leases (not replicated): when each session's
    /// lease runs out unless a KeepAlive extends it.
    pub fn leases(&self) -> MutexGuard<'_, SessionLeases> {
        self.leases.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Tells waiters (acquirers, KeepAlive streams) that commands up to
    /// `slot` were applied.
    pub fn applied_through(&self, slot: u64) {
        self.applied.send_replace(slot);
    }

    /// Wakes when more commands were applied.
    pub fn watch_applied(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    fn session_watchers(&self) -> MutexGuard<'_, BTreeMap<SessionId, watch::Sender<()>>> {
        self.session_watchers.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Wakes when `session` gets events or ends (or the whole state was
    /// replaced by a snapshot). Subscribe before reading its events.
    pub fn watch_session(&self, session: SessionId) -> watch::Receiver<()> {
        self.session_watchers().entry(session).or_insert_with(|| watch::channel(()).0).subscribe()
    }

    /// Forgets `session`'s watcher once no stream watches it (a stream
    /// calls this after dropping its receiver).
    pub fn unwatch_session(&self, session: SessionId) {
        let mut watchers = self.session_watchers();
        if watchers.get(&session).is_some_and(|sender| sender.receiver_count() == 0) {
            watchers.remove(&session);
        }
    }

    /// Wakes the streams of the sessions `touched` by applied commands, and
    /// forgets watchers nobody holds any more.
    pub fn sessions_touched(&self, touched: BTreeSet<SessionId>) {
        if touched.is_empty() {
            return;
        }
        let mut watchers = self.session_watchers();
        for session in touched {
            if let Some(sender) = watchers.get(&session) {
                if sender.receiver_count() == 0 {
                    watchers.remove(&session);
                } else {
                    sender.send_replace(());
                }
            }
        }
    }

    /// Wakes every stream (the state was replaced by a snapshot).
    pub fn all_sessions_touched(&self) {
        let mut watchers = self.session_watchers();
        watchers.retain(|_, sender| sender.receiver_count() > 0);
        for sender in watchers.values() {
            sender.send_replace(());
        }
    }

    /// Queues a command for the driver now (commands are proposed in the
    /// order they are queued); the receiver gets its outcome.
    fn enqueue(&self, kind: wire::command::Kind) -> Result<oneshot::Receiver<Result<Outcome, ProposeError>>, ProposeError> {
        let (reply, answer) = oneshot::channel();
        self.proposals.try_send(Proposal { kind, reply }).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => ProposeError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => ProposeError::Indeterminate,
        })?;
        Ok(answer)
    }

    /// Notes that an `Acquire` attempt may wait for the lock; `cancel`
    /// names the wait (session, secret, handle, request number). Dropping
    /// the returned guard while it is armed (the call ended without a
    /// definite answer: its client hung up, or the master lost its lease)
    /// proposes `cancel` with `keep_granted` false, so the handle neither
    /// stays in line nor keeps a lock granted to this wait that no client
    /// will hear of, unless another attempt of the same request still waits
    /// here (it will hand the grant over). The check and the proposal happen
    /// under one lock, and a new attempt registers before it proposes its
    /// `Acquire`, so a retry is always ordered after such a cancel in the
    /// log and never hands out a grant the cancel gave up.
    pub fn begin_wait(self: &Arc<Self>, cancel: wire::CancelWait) -> LiveWait {
        let key = (cancel.session_id, cancel.handle, cancel.request_number);
        *self.live_waits().entry(key).or_insert(0) += 1;
        LiveWait { shared: self.clone(), cancel: wire::CancelWait { keep_granted: false, ..cancel }, armed: true }
    }

    fn live_waits(&self) -> MutexGuard<'_, BTreeMap<(SessionId, u64, u64), usize>> {
        self.live_waits.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Proposes a command and waits until it is chosen and applied.
    pub async fn propose(&self, kind: wire::command::Kind) -> Result<Outcome, ProposeError> {
        let answer = self.enqueue(kind)?;
        match tokio::time::timeout(PROPOSAL_TIMEOUT, answer).await {
            Ok(Ok(result)) => result,
            // The driver dropped the reply (it stopped) or took too long.
            Ok(Err(_)) | Err(_) => Err(ProposeError::Indeterminate),
        }
    }
}

/// An `Acquire` attempt that may wait on this replica; see
/// [`Shared::begin_wait`].
#[derive(Debug)]
pub struct LiveWait {
    shared: Arc<Shared>,
    cancel: wire::CancelWait,
    armed: bool,
}

impl LiveWait {
    /// The call settled (granted, refused, or answered after its own
    /// `CancelWait`): dropping the guard proposes nothing.
    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for LiveWait {
    fn drop(&mut self) {
        let key = (self.cancel.session_id, self.cancel.handle, self.cancel.request_number);
        let mut waits = self.shared.live_waits();
        let others = match waits.get_mut(&key) {
            Some(count) if *count > 1 => {
                *count -= 1;
                true
            }
            _ => {
                waits.remove(&key);
                false
            }
        };
        if self.armed && !others {
            // Queued under the lock (see `begin_wait`); nobody waits for the
            // outcome. If the queue is full or this is no longer the master,
            // the command is not proposed here: a new master's retry waits in
            // the handle's place in line, and the session's end frees it.
            let cancel = std::mem::take(&mut self.cancel);
            let _ = self.shared.enqueue(wire::command::Kind::CancelWait(cancel));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cancel(request_number: u64) -> wire::CancelWait {
        wire::CancelWait { session_id: 4, handle: 2, session_secret: bytes::Bytes::from_static(&[9; 16]), request_number, keep_granted: true }
    }

    #[test]
    fn a_dropped_wait_proposes_a_cancel_unless_another_attempt_still_waits() {
        let (shared, mut proposals) = Shared::new(StateMachine::new(), Duration::from_secs(10));
        let shared = Arc::new(shared);
        let first = shared.begin_wait(cancel(7));
        let retry = shared.begin_wait(cancel(7));
        drop(first);
        assert!(proposals.try_recv().is_err(), "the retry still waits and will hand over a grant");
        drop(retry);
        let proposal = proposals.try_recv().expect("the last attempt's drop cancels the wait");
        match proposal.kind {
            wire::command::Kind::CancelWait(sent) => assert_eq!(sent, wire::CancelWait { keep_granted: false, ..cancel(7) }),
            other => panic!("{other:?}"),
        }
        let mut settled = shared.begin_wait(cancel(8));
        settled.disarm();
        drop(settled);
        assert!(proposals.try_recv().is_err(), "a settled call proposes nothing");
        assert!(shared.live_waits().is_empty());
    }
}
