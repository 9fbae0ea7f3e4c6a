//! The lock wait and its cancellation, in one place: an `Acquire` that may
//! wait is proposed; if its handle was queued, the call waits on this
//! replica until the lock is granted, the wait becomes impossible, the
//! replica stops serving, or `wait_ms` runs out, and then gives up its place
//! in line with a `CancelWait` command. [`LiveWait`] makes sure a call that
//! ends without a definite answer (its client hung up, the master lost its
//! lease) does not stay in line nor keep a grant nobody will hear of.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use gaios_proto::cell::v1 as api;
use gaios_proto::state::v1 as wire;
use gaios_state::namespace::SessionId;
use tonic::Status;

use super::{Caller, CellService, Unknown, acquired_sequencer, unexpected, validate_acquire, with_reason};
use crate::shared::Shared;

/// How long an `Acquire` with `wait_ms` 0 waits.
pub const ACQUIRE_WAIT_MS_DEFAULT: u64 = 60_000;

/// The `Acquire` calls waiting on this replica, by (session, handle,
/// request number), with how many attempts of each wait (a retry may arrive
/// while an earlier attempt is still being dropped).
#[derive(Debug, Default)]
pub struct LockWaits(Mutex<BTreeMap<(SessionId, u64, u64), usize>>);

impl LockWaits {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<(SessionId, u64, u64), usize>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl CellService {
    /// Serves an `Acquire` that may wait: proposes it and, if the handle
    /// was queued, waits for the lock until `wait_ms` runs out; makes sure
    /// a wait that ends without a definite answer does not stay in line.
    pub(super) async fn acquire_waiting(&self, caller: &Caller, mut request: api::AcquireRequest) -> Result<api::AcquireResponse, Status> {
        validate_acquire(&request)?;
        let wait_ms = if request.wait_ms == 0 { ACQUIRE_WAIT_MS_DEFAULT } else { request.wait_ms };
        let deadline = Instant::now() + Duration::from_millis(wait_ms);
        let header = request.header.take().ok_or_else(|| Status::invalid_argument("the request header is missing"))?;
        // Before the wait is counted: a caller without the session's secret
        // must not be able to keep another client's dropped wait from being
        // cancelled (see [`LiveWait::begin`]).
        self.authorize(caller, header.session_id, &header.session_secret, Unknown::Refuse)?;
        let wait = wire::CancelWait {
            session_id: header.session_id,
            handle: request.handle,
            session_secret: header.session_secret.clone(),
            request_number: header.request_number,
            keep_granted: true,
        };
        // If this call ends any other way than with the lock, a definite
        // refusal, or its own cancel answered (the client hung up, the
        // command's fate is unknown, the master lost its lease), the handle
        // must not stay in line, nor keep a lock granted to this wait that
        // nobody will hear of (see [`LiveWait::begin`]).
        let mut live = LiveWait::begin(&self.shared, wait.clone());
        let result = self.acquire_and_wait(caller, header, request, &wait, deadline).await;
        let settled = match &result {
            Ok(_) => true,
            Err(status) => status.code() != tonic::Code::Unavailable,
        };
        if settled {
            live.disarm();
        }
        result
    }

    /// Proposes the `Acquire` and, if the handle was queued, waits for the
    /// lock (see [`CellService::wait_for_lock`]).
    async fn acquire_and_wait(
        &self,
        caller: &Caller,
        header: api::RequestHeader,
        request: api::AcquireRequest,
        wait: &wire::CancelWait,
        deadline: Instant,
    ) -> Result<api::AcquireResponse, Status> {
        let outcome = self.call(caller, Some(header), wire::session_call::Call::Acquire(request)).await?;
        if let Some(sequencer) = acquired_sequencer(&outcome) {
            return Ok(api::AcquireResponse { header: None, sequencer: Some(sequencer) });
        }
        if !matches!(outcome.result, Some(wire::outcome::Result::Queued(_))) {
            return Err(unexpected(&outcome));
        }
        self.wait_for_lock(wait, deadline).await
    }

    /// Waits until the queued handle of `wait` holds its lock, the wait
    /// becomes impossible (handle closed, session ended, node deleted), this
    /// replica stops being a master that can serve, or `deadline` passes;
    /// then gives up its place in line with `wait` as a `CancelWait`
    /// command (which keeps and returns a lock granted just before).
    ///
    /// The state is read only after checking that this replica can serve:
    /// a deposed master's applied state may still show a grant that is
    /// gone (the node deleted, the session expired on the new master).
    pub(super) async fn wait_for_lock(&self, wait: &wire::CancelWait, deadline: Instant) -> Result<api::AcquireResponse, Status> {
        let (session_id, handle) = (wait.session_id, wait.handle);
        let mut applied = self.shared.watch_applied();
        loop {
            self.read_gate()?;
            {
                let state = self.shared.state();
                if let Some(sequencer) = state.holding(session_id, handle) {
                    return Ok(api::AcquireResponse { header: None, sequencer: Some(sequencer) });
                }
                if !state.is_waiting(session_id, handle) {
                    return Err(with_reason(
                        tonic::Code::FailedPrecondition,
                        api::ErrorReason::WaitEnded,
                        "the handle no longer waits for the lock (closed, session ended, node deleted, or the node's ACL no longer gives write permission)".into(),
                    ));
                }
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            // Wake on every applied batch, and at least every 100 ms to
            // notice a lost lease.
            let nap = (deadline - now).min(Duration::from_millis(100));
            let _ = tokio::time::timeout(nap, applied.changed()).await;
        }
        let outcome = self.propose(wire::command::Kind::CancelWait(wire::CancelWait { keep_granted: true, ..wait.clone() })).await?;
        match acquired_sequencer(&outcome) {
            // Granted just before the cancel was applied.
            Some(sequencer) => Ok(api::AcquireResponse { header: None, sequencer: Some(sequencer) }),
            None => Err(Status::deadline_exceeded("the lock was not granted within wait_ms; no longer waiting")),
        }
    }
}

/// An `Acquire` attempt that may wait on this replica; see
/// [`LiveWait::begin`].
#[derive(Debug)]
pub struct LiveWait {
    shared: Arc<Shared>,
    cancel: wire::CancelWait,
    armed: bool,
}

impl LiveWait {
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
    pub fn begin(shared: &Arc<Shared>, cancel: wire::CancelWait) -> LiveWait {
        let key = (cancel.session_id, cancel.handle, cancel.request_number);
        *shared.waits.lock().entry(key).or_insert(0) += 1;
        LiveWait { shared: shared.clone(), cancel: wire::CancelWait { keep_granted: false, ..cancel }, armed: true }
    }

    /// The call settled (granted, refused, or answered after its own
    /// `CancelWait`): dropping the guard proposes nothing.
    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for LiveWait {
    fn drop(&mut self) {
        let key = (self.cancel.session_id, self.cancel.handle, self.cancel.request_number);
        let mut waits = self.shared.waits.lock();
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
            // Queued under the lock (see `begin`); nobody waits for the
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
    use std::time::Duration;
    use gaios_state::machine::StateMachine;

    fn cancel(request_number: u64) -> wire::CancelWait {
        wire::CancelWait { session_id: 4, handle: 2, session_secret: bytes::Bytes::from_static(&[9; 16]), request_number, keep_granted: true }
    }

    #[test]
    fn a_dropped_wait_proposes_a_cancel_unless_another_attempt_still_waits() {
        let (shared, mut proposals, _changes) = Shared::new(StateMachine::new(), Duration::from_secs(10));
        let shared = Arc::new(shared);
        let first = LiveWait::begin(&shared, cancel(7));
        let retry = LiveWait::begin(&shared, cancel(7));
        drop(first);
        assert!(proposals.try_recv().is_err(), "the retry still waits and will hand over a grant");
        drop(retry);
        let proposal = proposals.try_recv().expect("the last attempt's drop cancels the wait");
        match proposal.kind {
            wire::command::Kind::CancelWait(sent) => assert_eq!(sent, wire::CancelWait { keep_granted: false, ..cancel(7) }),
            other => panic!("{other:?}"),
        }
        let mut settled = LiveWait::begin(&shared, cancel(8));
        settled.disarm();
        drop(settled);
        assert!(proposals.try_recv().is_err(), "a settled call proposes nothing");
        assert!(shared.waits.lock().is_empty());
    }
}
