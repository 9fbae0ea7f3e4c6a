//! What the driver shares with the gRPC handlers: the applied state, the
//! event outbox, the master's session leases, the queue of commands to
//! propose, and the `Acquire` calls that wait on this replica.
//!
//! The driver alone changes the applied state (by applying chosen
//! commands); handlers read it under the lock, briefly, and send commands to
//! the driver, which answers each once it is chosen and applied. Handlers
//! change only what is not replicated: the outbox (a client acknowledged
//! events), the session leases (a KeepAlive) and the waits. Lock order:
//! state before outbox, state before leases; nobody holding the outbox or
//! the leases takes the state.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use gaios_paxos::{ChangeError, Membership, MembershipChange};
use gaios_proto::state::v1 as wire;
use tokio::sync::{mpsc, oneshot, watch};

use crate::service::errors::ProposeError;
use crate::service::lock_wait::LockWaits;
use gaios_state::namespace::SessionId;
use gaios_state::master::session_leases::SessionLeases;
use gaios_state::machine::{Outcome, StateMachine};
use gaios_state::outbox::EventOutbox;

/// Commands waiting for the driver to propose them; beyond it handlers are
/// told the master is overloaded.
pub const PROPOSALS_QUEUED_MAX: usize = 8192;
/// How long a handler waits for its command to be chosen and applied before
/// it answers `UNAVAILABLE` (the command may still take effect; a retry with
/// the same request number is safe).
pub const PROPOSAL_TIMEOUT: Duration = Duration::from_secs(10);

/// The applied state under its lock, read-only: what handlers get, so
/// that they cannot change the replicated state (see [`Shared::state`]).
#[derive(Debug)]
pub struct StateReader<'a>(MutexGuard<'a, StateMachine>);

impl std::ops::Deref for StateReader<'_> {
    type Target = StateMachine;

    fn deref(&self) -> &StateMachine {
        &self.0
    }
}

/// A command for the driver to propose, and where to send its outcome.
#[derive(Debug)]
pub struct Proposal {
    /// The command (the driver fills in the proposer and the time).
    pub kind: wire::command::Kind,
    /// Gets the outcome once the command is applied, or why it was not.
    pub reply: oneshot::Sender<Result<Outcome, ProposeError>>,
}

/// How long a configuration change may take to be chosen before its caller
/// is told the outcome is unknown (it may still take effect; `gaios member`
/// reads the configuration again and resumes).
pub const CHANGE_TIMEOUT: Duration = Duration::from_secs(20);

/// A configuration change for the driver to propose, and where to answer.
#[derive(Debug)]
pub struct ChangeRequest {
    /// The change.
    pub change: MembershipChange,
    /// Past the master's safety checks (quorum, three voters, catch-up).
    pub force: bool,
    /// Gets the configuration once the change is in force (and the slot of
    /// its change), or why not.
    pub reply: oneshot::Sender<Result<(Membership, u64), ChangeRefusal>>,
}

/// Why a configuration change was not (or not known to be) made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChangeRefusal {
    /// The core refused it; nothing was proposed.
    #[error(transparent)]
    Refused(#[from] ChangeError),
    /// Mastership was lost, or the change took too long: it may or may not
    /// take effect. Read the configuration and try again.
    #[error("mastership lost before the change was chosen; it may or may not take effect: read the configuration and retry")]
    Indeterminate,
    /// Another change request waits at this replica.
    #[error("another configuration change waits at this replica; retry when it is done")]
    Busy,
}

/// Shared between the driver and the handlers; see the module docs.
#[derive(Debug)]
pub struct Shared {
    state: Mutex<StateMachine>,
    outbox: Mutex<EventOutbox>,
    leases: Mutex<SessionLeases>,
    applied: watch::Sender<u64>,
    /// One sender per session with a KeepAlive stream on this replica (at
    /// most one entry per live session): woken when the session gets events
    /// or ends, so an applied batch wakes only the streams it concerns.
    session_watchers: Mutex<BTreeMap<SessionId, watch::Sender<()>>>,
    proposals: mpsc::Sender<Proposal>,
    changes: mpsc::Sender<ChangeRequest>,
    /// The `Acquire` calls waiting on this replica.
    pub(crate) waits: LockWaits,
    /// How long a session lives without a KeepAlive.
    pub session_lease: Duration,
}

impl Shared {
    /// Shares `state`; returns the receiving ends of the proposal queue and
    /// of the configuration change queue for the driver.
    pub fn new(
        state: StateMachine,
        session_lease: Duration,
    ) -> (Shared, mpsc::Receiver<Proposal>, mpsc::Receiver<ChangeRequest>) {
        let (proposals, receiver) = mpsc::channel(PROPOSALS_QUEUED_MAX);
        // One change at a time: a few queued requests are plenty.
        let (changes, change_receiver) = mpsc::channel(4);
        let (applied, _) = watch::channel(0);
        let shared = Shared {
            state: Mutex::new(state),
            outbox: Mutex::new(EventOutbox::new()),
            leases: Mutex::new(SessionLeases::new(session_lease)),
            applied,
            session_watchers: Mutex::new(BTreeMap::new()),
            proposals,
            changes,
            waits: LockWaits::default(),
            session_lease,
        };
        (shared, receiver, change_receiver)
    }

    /// Asks the driver to change the configuration and waits until the
    /// change is in force (or refused, or its fate unknown).
    pub async fn change_membership(
        &self,
        change: MembershipChange,
        force: bool,
    ) -> Result<(Membership, u64), ChangeRefusal> {
        let (reply, answer) = oneshot::channel();
        self.changes.try_send(ChangeRequest { change, force, reply }).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => ChangeRefusal::Busy,
            mpsc::error::TrySendError::Closed(_) => ChangeRefusal::Indeterminate,
        })?;
        match tokio::time::timeout(CHANGE_TIMEOUT, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) | Err(_) => Err(ChangeRefusal::Indeterminate),
        }
    }

    /// The applied state, to read (briefly: the driver waits for it). A
    /// poisoned lock (a panic while holding it) is taken over: the state
    /// machine never panics halfway through a change (`apply` does not
    /// panic), so the state is whole.
    pub fn state(&self) -> StateReader<'_> {
        StateReader(self.state_mut())
    }

    /// The applied state, to change: only the driver calls this (it applies
    /// chosen commands and installs snapshots).
    pub(crate) fn state_mut(&self) -> MutexGuard<'_, StateMachine> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The events applied commands numbered that clients have not
    /// acknowledged yet (not replicated). Taken after the state, if both.
    pub fn outbox(&self) -> MutexGuard<'_, EventOutbox> {
        self.outbox.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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

    /// The highest slot applied so far.
    pub fn applied(&self) -> u64 {
        *self.applied.borrow()
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
    pub(crate) fn enqueue(&self, kind: wire::command::Kind) -> Result<oneshot::Receiver<Result<Outcome, ProposeError>>, ProposeError> {
        let (reply, answer) = oneshot::channel();
        self.proposals.try_send(Proposal { kind, reply }).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => ProposeError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => ProposeError::Indeterminate,
        })?;
        Ok(answer)
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

