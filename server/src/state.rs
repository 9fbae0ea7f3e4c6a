//! The replicated state machine: namespace, sessions, handles, locks and
//! events, changed only by [`StateMachine::apply`] in slot order.
//!
//! `apply` is deterministic: time is the master's timestamp in the command
//! (and never goes back, see [`StateMachine::now_ms`]), there is no
//! randomness and no iteration over hash maps. Every replica that applies
//! the same commands holds the same state and computes the same
//! [`Outcome`]s; only the master hands them to the calls that wait.
//!
//! One thing here is *not* replicated and not in snapshots: the queue of
//! events not yet delivered to each session (the master trims it as clients
//! acknowledge; a follower keeps the newest [`EVENTS_QUEUED_PER_SESSION_MAX`]).
//! Event *numbers* are replicated, so a client can always tell when it
//! missed some.
//!
//! Limits (each refusal is an [`Outcome`] failure with its gRPC code):
//! sessions, handles per session, handles in all, nodes, contents, and the
//! state's footprint, which bounds a snapshot's size.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use gaios_proto::cell::v1 as api;
use gaios_proto::v1 as wire;
use prost::Message as _;
use tonic::Code;

use crate::locks::{Acquired, Grant, Holder, LockError, LockMode, LockRecord, LockTable, LOCK_DELAY_MS_MAX};
use crate::namespace::{Change, Namespace, NamespaceError, NodeKind, NodeRecord, Path, SessionId, Stat};

/// The most sessions a cell holds at once.
pub const SESSIONS_MAX: usize = 50_000;
/// The most open handles per session.
pub const HANDLES_PER_SESSION_MAX: usize = 4096;
/// The most open handles in the cell.
pub const HANDLES_MAX: usize = 200_000;
/// How many answers each session keeps for retries (the at-most-once
/// window): the answers of its newest request numbers.
pub const ANSWERS_PER_SESSION_MAX: usize = 64;
/// Events kept per session until acknowledged; beyond it the oldest go (the
/// client sees the gap in the numbers).
pub const EVENTS_QUEUED_PER_SESSION_MAX: usize = 1024;
/// The state's footprint above which nothing that grows it is accepted. A
/// snapshot is at most about this big (plus one command's growth), which
/// keeps it well inside the peer transport's message limit.
pub const STATE_BYTES_MAX: usize = 48 << 20;
/// The most one command can grow the footprint beyond the bound it was
/// checked against: a file's contents plus a few paths and records.
pub const COMMAND_GROWTH_BYTES_MAX: usize = crate::namespace::CONTENTS_BYTES_MAX + (16 << 10);
/// The largest snapshot the state can encode: the footprint never exceeds
/// [`STATE_BYTES_MAX`] plus one command's growth, and the footprint counts
/// at least every byte a snapshot carries. Below the peer transport's
/// message limit (64 MiB), with room for the message around it.
pub const SNAPSHOT_BYTES_MAX: usize = STATE_BYTES_MAX + COMMAND_GROWTH_BYTES_MAX;
/// The layout of [`StateMachine::snapshot`]'s record; `restore` refuses any
/// other.
pub const STATE_SNAPSHOT_FORMAT_VERSION: u32 = 1;
/// The longest client name kept with a session.
pub const CLIENT_NAME_BYTES_MAX: usize = 256;
/// The event bits a handle may ask for.
pub const EVENT_MASK_ALL: u32 = 0xff;

const SESSION_OVERHEAD_BYTES: usize = 256;
const HANDLE_OVERHEAD_BYTES: usize = 128;
const ANSWER_OVERHEAD_BYTES: usize = 16;

/// The outcome of one command (the protobuf message, so that it can be
/// remembered in the state and in snapshots as it is).
pub type Outcome = wire::Outcome;

/// An open handle.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Handle {
    path: Path,
    instance: u64,
    event_mask: u32,
    lock_delay_ms: u64,
    sequencer: Option<api::Sequencer>,
}

impl Handle {
    fn footprint_bytes(&self) -> usize {
        HANDLE_OVERHEAD_BYTES + self.path.as_str().len() + self.sequencer.as_ref().map_or(0, |s| s.path.len())
    }
}

/// A session as the state holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Session {
    client_name: String,
    next_handle: u64,
    last_event: u64,
    handles: BTreeMap<u64, Handle>,
    answers: BTreeMap<u64, Outcome>,
    highest_request: u64,
}

impl Session {
    fn footprint_bytes(&self) -> usize {
        SESSION_OVERHEAD_BYTES
            + self.client_name.len()
            + self.handles.values().map(Handle::footprint_bytes).sum::<usize>()
            + self.answers.values().map(answer_bytes).sum::<usize>()
    }
}

fn answer_bytes(outcome: &Outcome) -> usize {
    ANSWER_OVERHEAD_BYTES + outcome.encoded_len()
}

/// Why a snapshot could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The bytes are not a `StateSnapshot`.
    #[error("snapshot does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The snapshot was written in a layout this code does not know (by a
    /// newer version, or before versions existed).
    #[error("snapshot format version {found} is not the one this replica reads ({supported})")]
    UnknownVersion {
        /// The version the snapshot carries.
        found: u32,
        /// The version this code writes and reads.
        supported: u32,
    },
    /// The snapshot decodes but describes a state that cannot arise.
    #[error("snapshot is inconsistent: {0}")]
    Inconsistent(String),
}

/// The applied state of a cell; see the module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateMachine {
    namespace: Namespace,
    locks: LockTable,
    sessions: BTreeMap<SessionId, Session>,
    now_ms: u64,
    next_session: SessionId,
    last_lock_generation: u64,
    /// Derived: the handles bound to each path, for events.
    watchers: BTreeMap<Path, BTreeSet<(SessionId, u64)>>,
    /// Derived: handles in all sessions.
    handles_total: usize,
    /// Derived: sessions' footprint (the namespace keeps its own).
    sessions_bytes: usize,
    /// Not replicated: events not yet acknowledged, per session.
    outbox: BTreeMap<SessionId, VecDeque<api::Event>>,
    /// Not replicated: sessions that got events or ended since the driver
    /// last took them, so it wakes only their KeepAlive streams.
    touched: Touched,
    /// Configuration, not replicated: the footprint above which growing
    /// calls are refused ([`STATE_BYTES_MAX`]; tests use smaller bounds).
    state_bytes_max: usize,
}

/// Sessions touched by applied commands; not part of the state (always
/// equal), drained by the driver after every applied batch.
#[derive(Clone, Debug, Default, Eq)]
struct Touched(BTreeSet<SessionId>);

impl PartialEq for Touched {
    fn eq(&self, _: &Touched) -> bool {
        true
    }
}

impl Default for StateMachine {
    fn default() -> Self {
        StateMachine::new()
    }
}

fn failure(code: Code, message: impl Into<String>) -> Outcome {
    Outcome {
        result: Some(wire::outcome::Result::Failure(wire::Failure { code: code as i32, message: message.into() })),
    }
}

fn done() -> Outcome {
    Outcome { result: Some(wire::outcome::Result::Done(wire::Done {})) }
}

fn namespace_failure(error: &NamespaceError) -> Outcome {
    let code = match error {
        NamespaceError::NotFound(_) => Code::NotFound,
        NamespaceError::AlreadyExists(_) => Code::AlreadyExists,
        NamespaceError::Root => Code::InvalidArgument,
        NamespaceError::ContentsTooLarge(_) | NamespaceError::Full => Code::ResourceExhausted,
        _ => Code::FailedPrecondition,
    };
    failure(code, error.to_string())
}

fn lock_failure(error: &LockError) -> Outcome {
    let code = match error {
        LockError::TooManyWaiters(_) => Code::ResourceExhausted,
        LockError::LockDelayTooLong(_) => Code::InvalidArgument,
        _ => Code::FailedPrecondition,
    };
    failure(code, error.to_string())
}

/// The protobuf form of a stat.
pub fn stat_to_proto(stat: &Stat) -> api::Stat {
    api::Stat {
        instance: stat.instance,
        kind: match stat.kind {
            NodeKind::File => api::NodeKind::File,
            NodeKind::Directory => api::NodeKind::Directory,
        } as i32,
        ephemeral_owner: stat.ephemeral_owner.unwrap_or(0),
        content_generation: stat.content_generation,
        lock_generation: stat.lock_generation,
        acl_generation: stat.acl_generation,
        checksum: stat.checksum,
        created_ms: stat.created_ms,
        modified_ms: stat.modified_ms,
        contents_bytes: stat.contents_bytes,
        children: stat.children,
    }
}

fn stat_from_proto(stat: &api::Stat) -> Result<Stat, String> {
    let kind = match api::NodeKind::try_from(stat.kind) {
        Ok(api::NodeKind::File) => NodeKind::File,
        Ok(api::NodeKind::Directory) => NodeKind::Directory,
        _ => return Err(format!("node kind {}", stat.kind)),
    };
    Ok(Stat {
        instance: stat.instance,
        kind,
        ephemeral_owner: (stat.ephemeral_owner != 0).then_some(stat.ephemeral_owner),
        content_generation: stat.content_generation,
        lock_generation: stat.lock_generation,
        acl_generation: stat.acl_generation,
        checksum: stat.checksum,
        created_ms: stat.created_ms,
        modified_ms: stat.modified_ms,
        contents_bytes: stat.contents_bytes,
        children: stat.children,
    })
}

fn mode_to_proto(mode: LockMode) -> api::LockMode {
    match mode {
        LockMode::Exclusive => api::LockMode::Exclusive,
        LockMode::Shared => api::LockMode::Shared,
    }
}

/// The lock mode a request names; `None` for an unset or unknown value.
pub fn mode_from_proto(mode: i32) -> Option<LockMode> {
    match api::LockMode::try_from(mode) {
        Ok(api::LockMode::Exclusive) => Some(LockMode::Exclusive),
        Ok(api::LockMode::Shared) => Some(LockMode::Shared),
        _ => None,
    }
}

impl StateMachine {
    /// The state of a new cell: only the root directory.
    pub fn new() -> Self {
        StateMachine {
            namespace: Namespace::new(),
            locks: LockTable::new(),
            sessions: BTreeMap::new(),
            now_ms: 0,
            next_session: 1,
            last_lock_generation: 0,
            watchers: BTreeMap::new(),
            handles_total: 0,
            sessions_bytes: 0,
            outbox: BTreeMap::new(),
            touched: Touched::default(),
            state_bytes_max: STATE_BYTES_MAX,
        }
    }

    /// A new cell's state whose growing calls are refused above
    /// `state_bytes_max` rather than [`STATE_BYTES_MAX`], so tests can fill
    /// it quickly.
    #[cfg(test)]
    pub(crate) fn with_state_bytes_max(state_bytes_max: usize) -> Self {
        StateMachine { state_bytes_max, ..StateMachine::new() }
    }

    /// The state's clock: the highest master timestamp applied so far.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Open sessions, in id order.
    pub fn session_ids(&self) -> Vec<SessionId> {
        self.sessions.keys().copied().collect()
    }

    /// Whether `session` is open.
    pub fn has_session(&self, session: SessionId) -> bool {
        self.sessions.contains_key(&session)
    }

    /// How many sessions are open.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// How many nodes exist (the root included).
    pub fn node_count(&self) -> usize {
        self.namespace.len()
    }

    /// How many lock holdings there are.
    pub fn locks_held(&self) -> usize {
        self.locks.held_count()
    }

    /// Roughly the size of a snapshot of this state, in bytes.
    pub fn footprint_bytes(&self) -> usize {
        self.namespace.footprint_bytes() + self.sessions_bytes
    }

    /// When the earliest running lock-delay ends (state clock), so the master
    /// can propose an `AdvanceTime` then.
    pub fn next_lock_delay_end_ms(&self) -> Option<u64> {
        self.locks.next_delay_end_ms()
    }

    // ---------------------------------------------------------------------
    // Applying commands.
    // ---------------------------------------------------------------------

    /// Applies one command and returns its outcome. Never panics on any
    /// command, however malformed: a bad one fails with a status code.
    pub fn apply(&mut self, command: &wire::Command) -> Outcome {
        self.now_ms = self.now_ms.max(command.now_ms);
        // Any command whose time passes the end of a lock-delay hands that
        // lock to its waiters first, so they are not stranded when other
        // commands move the clock before the master's `AdvanceTime` does.
        if self.locks.next_delay_end_ms().is_some_and(|end| end <= self.now_ms) {
            self.advance_time();
        }
        let Some(kind) = &command.kind else {
            return failure(Code::InvalidArgument, "empty command");
        };
        use wire::command::Kind;
        match kind {
            Kind::CreateSession(create) => self.create_session(create),
            Kind::EndSession(end) => self.end_session(end.session_id, end.expired),
            Kind::MasterTookOver(_) => {
                for session in self.session_ids() {
                    self.push_event(session, api::EventKind::MasterFailover, 0, "");
                }
                self.advance_time();
                done()
            }
            Kind::AdvanceTime(_) => {
                self.advance_time();
                done()
            }
            Kind::Call(call) => self.session_call(call),
            Kind::CancelWait(cancel) => self.cancel_wait(cancel.session_id, cancel.handle),
        }
    }

    fn create_session(&mut self, create: &wire::CreateSession) -> Outcome {
        if create.client_name.len() > CLIENT_NAME_BYTES_MAX {
            return failure(Code::InvalidArgument, format!("client name over {CLIENT_NAME_BYTES_MAX} bytes"));
        }
        if self.sessions.len() >= SESSIONS_MAX {
            return failure(Code::ResourceExhausted, format!("the cell holds {SESSIONS_MAX} sessions"));
        }
        if self.footprint_bytes() >= self.state_bytes_max {
            return failure(Code::ResourceExhausted, "the cell's state is full");
        }
        let id = self.next_session;
        self.next_session += 1;
        let session = Session { client_name: create.client_name.clone(), next_handle: 1, ..Session::default() };
        self.sessions_bytes += session.footprint_bytes();
        self.sessions.insert(id, session);
        Outcome {
            result: Some(wire::outcome::Result::SessionCreated(api::CreateSessionResponse {
                session_id: id,
                lease_ms: 0,
                ..Default::default()
            })),
        }
    }

    /// Ends a session: its holdings are released (with lock-delay if it
    /// expired), its waits dropped, its handles closed and its ephemeral
    /// nodes deleted, with the events all this causes for other sessions.
    fn end_session(&mut self, session_id: SessionId, expired: bool) -> Outcome {
        // Ending an ended session is done already: a retried close, or an
        // expiry proposed twice, changes nothing.
        let Some(session) = self.sessions.get(&session_id) else { return done() };
        let handles: Vec<(u64, Path)> = session.handles.iter().map(|(&id, h)| (id, h.path.clone())).collect();
        if !expired {
            // A clean close gives its locks back at once, like `Release`:
            // first its waits go (so that none of its own handles is
            // granted a lock it is giving up), then its holdings.
            for (handle, path) in &handles {
                let holder = self.holder(session_id, *handle, 0);
                let grants = self.locks.cancel_wait(path, holder, self.now_ms);
                self.hand_out(grants);
            }
            for (handle, path) in &handles {
                let holder = self.holder(session_id, *handle, 0);
                if let Ok(grants) = self.locks.release(path, holder, self.now_ms) {
                    self.hand_out(grants);
                }
            }
        }
        let grants = self.locks.session_ended(session_id, self.now_ms);
        self.hand_out(grants);
        for (handle, path) in &handles {
            self.unwatch(path, session_id, *handle);
        }
        if let Some(session) = self.sessions.remove(&session_id) {
            self.handles_total -= session.handles.len();
            self.sessions_bytes -= session.footprint_bytes();
        }
        self.outbox.remove(&session_id);
        self.touched.0.insert(session_id);
        for path in self.namespace.ephemerals_of(session_id) {
            // Deepest first; a directory another session filled stays.
            let _ = self.delete_node(&path, None);
        }
        done()
    }

    fn advance_time(&mut self) {
        let grants = self.locks.advance_time(self.now_ms);
        self.hand_out(grants);
    }

    fn cancel_wait(&mut self, session_id: SessionId, handle_id: u64) -> Outcome {
        let Some(handle) = self.sessions.get(&session_id).and_then(|s| s.handles.get(&handle_id)) else {
            return done();
        };
        let path = handle.path.clone();
        let holder = self.holder(session_id, handle_id, 0);
        let grants = self.locks.cancel_wait(&path, holder, self.now_ms);
        self.hand_out(grants);
        match self.holding(session_id, handle_id) {
            Some(sequencer) => acquired(sequencer),
            None => done(),
        }
    }

    /// A session's mutating call, at most once per request number.
    fn session_call(&mut self, call: &wire::SessionCall) -> Outcome {
        use wire::session_call::Call;
        let session_id = call.session_id;
        let number = call.request_number;
        let Some(session) = self.sessions.get(&session_id) else {
            return failure(Code::FailedPrecondition, format!("session {session_id} has ended or never existed"));
        };
        if number == 0 {
            return failure(Code::InvalidArgument, "request numbers start at 1");
        }
        if let Some(answer) = session.answers.get(&number) {
            return answer.clone();
        }
        let window = ANSWERS_PER_SESSION_MAX as u64;
        if session.highest_request >= window && number <= session.highest_request - window {
            return failure(
                Code::FailedPrecondition,
                format!(
                    "request number {number} is older than the at-most-once window (the session is at {})",
                    session.highest_request
                ),
            );
        }
        // A full state takes only calls that shrink it (their answers are a
        // few bytes each, at most a window's worth per session).
        let shrinks = matches!(call.call, Some(Call::Close(_) | Call::Release(_) | Call::Delete(_)));
        if self.footprint_bytes() >= self.state_bytes_max && !shrinks {
            return failure(Code::ResourceExhausted, "the cell's state is full; close handles or delete nodes");
        }
        let outcome = self.execute(session_id, call);
        if let Some(session) = self.sessions.get_mut(&session_id) {
            self.sessions_bytes += answer_bytes(&outcome);
            if let Some(replaced) = session.answers.insert(number, outcome.clone()) {
                self.sessions_bytes -= answer_bytes(&replaced);
            }
            session.highest_request = session.highest_request.max(number);
            while session.answers.len() > ANSWERS_PER_SESSION_MAX {
                if let Some((_, old)) = session.answers.pop_first() {
                    self.sessions_bytes -= answer_bytes(&old);
                }
            }
        }
        outcome
    }

    fn execute(&mut self, session_id: SessionId, call: &wire::SessionCall) -> Outcome {
        use wire::session_call::Call;
        let Some(request) = &call.call else { return failure(Code::InvalidArgument, "empty call") };
        match request {
            Call::Open(open) => self.open(session_id, open),
            Call::Close(close) => self.close(session_id, close.handle),
            Call::SetContents(set) => self.set_contents(session_id, set),
            Call::Delete(delete) => self.delete(session_id, delete.handle),
            Call::Acquire(acquire) => self.acquire(session_id, acquire, true),
            Call::TryAcquire(acquire) => self.acquire(session_id, acquire, false),
            Call::Release(release) => self.release(session_id, release.handle),
            Call::SetSequencer(set) => self.set_sequencer(session_id, set),
        }
    }

    fn open(&mut self, session_id: SessionId, open: &api::OpenRequest) -> Outcome {
        let path = match Path::parse(&open.path) {
            Ok(path) => path,
            Err(error) => return failure(Code::InvalidArgument, error.to_string()),
        };
        if open.lock_delay_ms > LOCK_DELAY_MS_MAX {
            return failure(Code::InvalidArgument, format!("lock-delay {} ms over {LOCK_DELAY_MS_MAX} ms", open.lock_delay_ms));
        }
        if open.event_mask & !EVENT_MASK_ALL != 0 {
            return failure(Code::InvalidArgument, format!("unknown event bits in mask {:#x}", open.event_mask));
        }
        let Some(session) = self.sessions.get(&session_id) else {
            return failure(Code::FailedPrecondition, format!("session {session_id} has ended"));
        };
        if session.handles.len() >= HANDLES_PER_SESSION_MAX {
            return failure(Code::ResourceExhausted, format!("the session has {HANDLES_PER_SESSION_MAX} open handles"));
        }
        if self.handles_total >= HANDLES_MAX {
            return failure(Code::ResourceExhausted, format!("the cell has {HANDLES_MAX} open handles"));
        }
        let growth = open.initial_contents.len() + 2 * path.as_str().len() + 1024;
        if self.footprint_bytes() + growth > self.state_bytes_max {
            return failure(Code::ResourceExhausted, "the cell's state is full");
        }
        let (stat, created) = match self.namespace.stat(&path, None) {
            Ok(stat) => {
                if open.create && open.exclusive_create {
                    return failure(Code::AlreadyExists, format!("a node already exists at {path}"));
                }
                (stat, false)
            }
            Err(NamespaceError::NotFound(_)) if open.create => {
                let kind = match api::NodeKind::try_from(open.kind) {
                    Ok(api::NodeKind::Directory) => NodeKind::Directory,
                    Ok(api::NodeKind::File | api::NodeKind::Unspecified) => NodeKind::File,
                    Err(_) => return failure(Code::InvalidArgument, format!("unknown node kind {}", open.kind)),
                };
                let owner = open.ephemeral.then_some(session_id);
                let contents = open.initial_contents.clone();
                match self.namespace.create(&path, kind, owner, contents, self.now_ms) {
                    Ok((stat, changes)) => {
                        self.notify(&changes);
                        (stat, true)
                    }
                    Err(error) => return namespace_failure(&error),
                }
            }
            Err(error) => return namespace_failure(&error),
        };
        let handle = Handle {
            path: path.clone(),
            instance: stat.instance,
            event_mask: open.event_mask,
            lock_delay_ms: open.lock_delay_ms,
            sequencer: None,
        };
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return failure(Code::FailedPrecondition, format!("session {session_id} has ended"));
        };
        let id = session.next_handle;
        session.next_handle += 1;
        self.sessions_bytes += handle.footprint_bytes();
        session.handles.insert(id, handle);
        self.handles_total += 1;
        self.watchers.entry(path).or_default().insert((session_id, id));
        Outcome {
            result: Some(wire::outcome::Result::Opened(api::OpenResponse {
                handle: id,
                stat: Some(stat_to_proto(&stat)),
                created,
            })),
        }
    }

    fn close(&mut self, session_id: SessionId, handle_id: u64) -> Outcome {
        let handle = match self.usable_handle(session_id, handle_id, false) {
            Ok(handle) => handle,
            Err(outcome) => return outcome,
        };
        let holder = self.holder(session_id, handle_id, 0);
        if self.locks.held_by(&handle.path, session_id, handle_id).is_some()
            && let Ok(grants) = self.locks.release(&handle.path, holder, self.now_ms) {
                self.hand_out(grants);
            }
        let grants = self.locks.cancel_wait(&handle.path, holder, self.now_ms);
        self.hand_out(grants);
        self.unwatch(&handle.path, session_id, handle_id);
        if let Some(session) = self.sessions.get_mut(&session_id)
            && let Some(removed) = session.handles.remove(&handle_id) {
                self.sessions_bytes -= removed.footprint_bytes();
                self.handles_total -= 1;
            }
        done()
    }

    fn set_contents(&mut self, session_id: SessionId, set: &api::SetContentsRequest) -> Outcome {
        let handle = match self.usable_handle(session_id, set.handle, true) {
            Ok(handle) => handle,
            Err(outcome) => return outcome,
        };
        let old = self.namespace.stat(&handle.path, Some(handle.instance)).map(|s| s.contents_bytes).unwrap_or(0);
        let growth = usize::try_from(set.contents.len() as u64).unwrap_or(usize::MAX).saturating_sub(old as usize);
        if growth > 0 && self.footprint_bytes() + growth > self.state_bytes_max {
            return failure(Code::ResourceExhausted, "the cell's state is full");
        }
        match self.namespace.set_contents(
            &handle.path,
            Some(handle.instance),
            set.contents.clone(),
            set.if_content_generation,
            self.now_ms,
        ) {
            Ok((stat, changes)) => {
                self.notify(&changes);
                Outcome {
                    result: Some(wire::outcome::Result::Written(api::SetContentsResponse {
                        stat: Some(stat_to_proto(&stat)),
                    })),
                }
            }
            Err(error) => namespace_failure(&error),
        }
    }

    fn delete(&mut self, session_id: SessionId, handle_id: u64) -> Outcome {
        let handle = match self.usable_handle(session_id, handle_id, true) {
            Ok(handle) => handle,
            Err(outcome) => return outcome,
        };
        match self.delete_node(&handle.path, Some(handle.instance)) {
            Ok(()) => done(),
            Err(error) => namespace_failure(&error),
        }
    }

    /// Deletes a node, drops its lock, and tells the parent's watchers and
    /// every handle bound to the node.
    fn delete_node(&mut self, path: &Path, instance: Option<u64>) -> Result<(), NamespaceError> {
        let changes = self.namespace.delete(path, instance)?;
        // A deleted node's lock goes with it: holders and waiters were
        // bound to this instance and their handles are now invalid.
        self.locks.remove(path);
        self.notify(&changes);
        Ok(())
    }

    fn acquire(&mut self, session_id: SessionId, request: &api::AcquireRequest, wait: bool) -> Outcome {
        let Some(mode) = mode_from_proto(request.mode) else {
            return failure(Code::InvalidArgument, "lock mode must be exclusive or shared");
        };
        let handle = match self.usable_handle(session_id, request.handle, true) {
            Ok(handle) => handle,
            Err(outcome) => return outcome,
        };
        let holder = self.holder(session_id, request.handle, handle.lock_delay_ms);
        let was_free =
            !self.locks.is_held_in(&handle.path, LockMode::Exclusive) && !self.locks.is_held_in(&handle.path, LockMode::Shared);
        let result = if wait {
            self.locks.acquire(&handle.path, holder, mode, self.now_ms)
        } else {
            self.locks.try_acquire(&handle.path, holder, mode, self.now_ms).map(|()| Acquired::Granted)
        };
        match result {
            Ok(Acquired::Granted) => {
                self.hand_out(vec![Grant { path: handle.path.clone(), holder, mode, was_free }]);
                match self.holding(session_id, request.handle) {
                    Some(sequencer) => acquired(sequencer),
                    None => failure(Code::Internal, "granted lock not held"),
                }
            }
            Ok(Acquired::Queued { conflicting }) => {
                let path = handle.path.as_str().to_string();
                for other in conflicting {
                    self.push_event(other.session, api::EventKind::ConflictingLockRequest, other.handle, &path);
                }
                Outcome { result: Some(wire::outcome::Result::Queued(wire::Queued {})) }
            }
            Err(error) => lock_failure(&error),
        }
    }

    fn release(&mut self, session_id: SessionId, handle_id: u64) -> Outcome {
        let handle = match self.usable_handle(session_id, handle_id, false) {
            Ok(handle) => handle,
            Err(outcome) => return outcome,
        };
        let holder = self.holder(session_id, handle_id, 0);
        match self.locks.release(&handle.path, holder, self.now_ms) {
            Ok(grants) => {
                self.hand_out(grants);
                done()
            }
            Err(error) => lock_failure(&error),
        }
    }

    fn set_sequencer(&mut self, session_id: SessionId, set: &api::SetSequencerRequest) -> Outcome {
        if let Err(outcome) = self.usable_handle(session_id, set.handle, true) {
            return outcome;
        }
        let Some(sequencer) = &set.sequencer else {
            return failure(Code::InvalidArgument, "no sequencer given");
        };
        if let Err(error) = Path::parse(&sequencer.path) {
            return failure(Code::InvalidArgument, error.to_string());
        }
        if !self.check_sequencer(sequencer).valid {
            return failure(Code::FailedPrecondition, format!("sequencer for {} is stale", sequencer.path));
        }
        let Some(handle) = self.sessions.get_mut(&session_id).and_then(|s| s.handles.get_mut(&set.handle)) else {
            return failure(Code::NotFound, format!("no handle {}", set.handle));
        };
        let before = handle.footprint_bytes();
        handle.sequencer = Some(sequencer.clone());
        let after = handle.footprint_bytes();
        self.sessions_bytes = self.sessions_bytes - before + after;
        done()
    }

    /// Gives the lock to each grant's holder. The lock generation takes the
    /// next cell-wide number on every exclusive grant and whenever the lock
    /// goes from free to held (so a shared holding's sequencer also goes
    /// stale once the lock was free in between); watchers hear "lock
    /// acquired".
    fn hand_out(&mut self, grants: Vec<Grant>) {
        for grant in grants {
            if grant.mode == LockMode::Exclusive || grant.was_free {
                self.last_lock_generation += 1;
                // The node exists: locks of deleted nodes are dropped.
                let _ = self.namespace.set_lock_generation(&grant.path, self.last_lock_generation);
            }
            self.notify_path(&grant.path, api::EventKind::LockAcquired, None);
        }
    }

    fn holder(&self, session: SessionId, handle: u64, lock_delay_ms: u64) -> Holder {
        Holder { session, handle, lock_delay_ms }
    }

    /// The handle, if its session and id exist and, with `check_node`, its
    /// node is still the instance it was bound to and a sequencer attached
    /// to it is still current. (Closing a handle or releasing its lock needs
    /// neither.)
    fn usable_handle(&self, session_id: SessionId, handle_id: u64, check_node: bool) -> Result<Handle, Outcome> {
        let Some(session) = self.sessions.get(&session_id) else {
            return Err(failure(Code::FailedPrecondition, format!("session {session_id} has ended")));
        };
        let Some(handle) = session.handles.get(&handle_id) else {
            return Err(failure(Code::NotFound, format!("session {session_id} has no handle {handle_id}")));
        };
        if check_node {
            match self.namespace.stat(&handle.path, None) {
                Ok(stat) if stat.instance == handle.instance => {}
                _ => {
                    return Err(failure(
                        Code::FailedPrecondition,
                        format!("handle {handle_id} is invalid: {} was deleted", handle.path),
                    ));
                }
            }
        }
        if let Some(sequencer) = handle.sequencer.as_ref().filter(|_| check_node)
            && !self.check_sequencer(sequencer).valid {
                return Err(failure(
                    Code::FailedPrecondition,
                    format!("the sequencer set on handle {handle_id} ({}) is stale", sequencer.path),
                ));
            }
        Ok(handle.clone())
    }

    fn unwatch(&mut self, path: &Path, session: SessionId, handle: u64) {
        if let Some(set) = self.watchers.get_mut(path) {
            set.remove(&(session, handle));
            if set.is_empty() {
                self.watchers.remove(path);
            }
        }
    }

    // ---------------------------------------------------------------------
    // Events.
    // ---------------------------------------------------------------------

    fn notify(&mut self, changes: &[Change]) {
        for change in changes {
            match change {
                Change::ChildAdded { parent, path } => {
                    self.notify_path(parent, api::EventKind::ChildAdded, Some(path));
                }
                Change::ChildRemoved { parent, path, instance } => {
                    self.notify_path(parent, api::EventKind::ChildRemoved, Some(path));
                    self.invalidate_handles(path, *instance);
                }
                Change::ContentsModified { path } => {
                    self.notify_path(path, api::EventKind::ContentsModified, None);
                    if let Some((parent, _)) = path.split() {
                        self.notify_path(&parent, api::EventKind::ChildModified, Some(path));
                    }
                }
            }
        }
    }

    /// Queues `kind` for every handle bound to the current instance of
    /// `path` that asked for it; `subject` is the node named in the event
    /// (the child, for child events).
    fn notify_path(&mut self, path: &Path, kind: api::EventKind, subject: Option<&Path>) {
        let Ok(stat) = self.namespace.stat(path, None) else { return };
        let Some(watchers) = self.watchers.get(path) else { return };
        let bit = kind as u32;
        let targets: Vec<(SessionId, u64)> = watchers
            .iter()
            .copied()
            .filter(|(session, handle)| {
                self.sessions
                    .get(session)
                    .and_then(|s| s.handles.get(handle))
                    .is_some_and(|h| h.instance == stat.instance && h.event_mask & bit != 0)
            })
            .collect();
        let named = subject.unwrap_or(path).as_str().to_string();
        for (session, handle) in targets {
            self.push_event(session, kind, handle, &named);
        }
    }

    /// Tells every handle bound to the deleted `instance` of `path` that it
    /// is invalid (always delivered, whatever the mask).
    fn invalidate_handles(&mut self, path: &Path, instance: u64) {
        let Some(watchers) = self.watchers.get(path) else { return };
        let targets: Vec<(SessionId, u64)> = watchers
            .iter()
            .copied()
            .filter(|(session, handle)| {
                self.sessions.get(session).and_then(|s| s.handles.get(handle)).is_some_and(|h| h.instance == instance)
            })
            .collect();
        for (session, handle) in targets {
            self.push_event(session, api::EventKind::HandleInvalid, handle, path.as_str());
        }
    }

    fn push_event(&mut self, session_id: SessionId, kind: api::EventKind, handle: u64, path: &str) {
        let Some(session) = self.sessions.get_mut(&session_id) else { return };
        session.last_event += 1;
        let event = api::Event { number: session.last_event, kind: kind as i32, handle, path: path.to_string() };
        let queue = self.outbox.entry(session_id).or_default();
        queue.push_back(event);
        self.touched.0.insert(session_id);
        while queue.len() > EVENTS_QUEUED_PER_SESSION_MAX {
            queue.pop_front();
        }
    }

    /// The session's queued events numbered above `after`, oldest first, at
    /// most `max`.
    pub fn events_after(&self, session: SessionId, after: u64, max: usize) -> Vec<api::Event> {
        let Some(queue) = self.outbox.get(&session) else { return Vec::new() };
        queue.iter().filter(|event| event.number > after).take(max).cloned().collect()
    }

    /// The sessions that got events or ended since the last call; at most
    /// one entry per session.
    pub fn take_touched(&mut self) -> BTreeSet<SessionId> {
        std::mem::take(&mut self.touched.0)
    }

    /// The number of the session's last event (0 if none yet).
    pub fn last_event(&self, session: SessionId) -> u64 {
        self.sessions.get(&session).map_or(0, |s| s.last_event)
    }

    /// Forgets the session's events up to `through`: its client has them.
    /// Not replicated (only the master's queue shrinks).
    pub fn acknowledge_events(&mut self, session: SessionId, through: u64) {
        if let Some(queue) = self.outbox.get_mut(&session) {
            while queue.front().is_some_and(|event| event.number <= through) {
                queue.pop_front();
            }
        }
    }

    // ---------------------------------------------------------------------
    // Reads (answered by the master from its applied state).
    // ---------------------------------------------------------------------

    /// A file's contents and stat, through a handle.
    pub fn get_contents_and_stat(&self, session: SessionId, handle: u64) -> Result<(Bytes, api::Stat), wire::Failure> {
        let handle = self.usable_handle(session, handle, true).map_err(into_failure)?;
        self.namespace
            .get_contents_and_stat(&handle.path, Some(handle.instance))
            .map(|(contents, stat)| (contents, stat_to_proto(&stat)))
            .map_err(|error| into_failure(namespace_failure(&error)))
    }

    /// A node's stat, through a handle.
    pub fn get_stat(&self, session: SessionId, handle: u64) -> Result<api::Stat, wire::Failure> {
        let handle = self.usable_handle(session, handle, true).map_err(into_failure)?;
        self.namespace
            .stat(&handle.path, Some(handle.instance))
            .map(|stat| stat_to_proto(&stat))
            .map_err(|error| into_failure(namespace_failure(&error)))
    }

    /// A directory's children and stat, through a handle.
    pub fn read_dir(&self, session: SessionId, handle: u64) -> Result<(Vec<String>, api::Stat), wire::Failure> {
        let handle = self.usable_handle(session, handle, true).map_err(into_failure)?;
        self.namespace
            .read_dir(&handle.path, Some(handle.instance))
            .map(|(names, stat)| (names, stat_to_proto(&stat)))
            .map_err(|error| into_failure(namespace_failure(&error)))
    }

    /// The sequencer of the lock the handle holds.
    pub fn get_sequencer(&self, session: SessionId, handle: u64) -> Result<api::Sequencer, wire::Failure> {
        self.usable_handle(session, handle, true).map_err(into_failure)?;
        self.holding(session, handle).ok_or_else(|| wire::Failure {
            code: Code::FailedPrecondition as i32,
            message: format!("handle {handle} holds no lock"),
        })
    }

    /// The sequencer of the handle's holding, if it holds the lock.
    pub fn holding(&self, session: SessionId, handle_id: u64) -> Option<api::Sequencer> {
        let handle = self.sessions.get(&session)?.handles.get(&handle_id)?;
        let mode = self.locks.held_by(&handle.path, session, handle_id)?;
        let stat = self.namespace.stat(&handle.path, Some(handle.instance)).ok()?;
        Some(api::Sequencer {
            path: handle.path.as_str().to_string(),
            mode: mode_to_proto(mode) as i32,
            lock_generation: stat.lock_generation,
            instance: stat.instance,
        })
    }

    /// Whether the handle waits in line for its node's lock.
    pub fn is_waiting(&self, session: SessionId, handle_id: u64) -> bool {
        self.sessions
            .get(&session)
            .and_then(|s| s.handles.get(&handle_id))
            .is_some_and(|handle| self.locks.is_waiting(&handle.path, session, handle_id))
    }

    /// Whether a sequencer is current: same node instance, same lock
    /// generation, and the lock held in its mode.
    pub fn check_sequencer(&self, sequencer: &api::Sequencer) -> api::CheckSequencerResponse {
        let Ok(path) = Path::parse(&sequencer.path) else { return api::CheckSequencerResponse::default() };
        let Ok(stat) = self.namespace.stat(&path, None) else { return api::CheckSequencerResponse::default() };
        let valid = match mode_from_proto(sequencer.mode) {
            Some(mode) => {
                stat.instance == sequencer.instance
                    && stat.lock_generation == sequencer.lock_generation
                    && self.locks.is_held_in(&path, mode)
            }
            None => false,
        };
        api::CheckSequencerResponse { valid, current_lock_generation: stat.lock_generation }
    }

    // ---------------------------------------------------------------------
    // Snapshots.
    // ---------------------------------------------------------------------

    /// Encodes the replicated state (not the event queues).
    pub fn snapshot(&self) -> Bytes {
        let mode = |m: LockMode| mode_to_proto(m) as i32;
        let holder = |(h, m): &(Holder, LockMode)| wire::LockHolder {
            session_id: h.session,
            handle: h.handle,
            lock_delay_ms: h.lock_delay_ms,
            mode: mode(*m),
            ..Default::default()
        };
        let snapshot = wire::StateSnapshot {
            now_ms: self.now_ms,
            next_instance: self.namespace.next_instance(),
            next_session: self.next_session,
            last_lock_generation: self.last_lock_generation,
            nodes: self
                .namespace
                .records()
                .map(|record| wire::NodeRecord {
                    path: record.path.as_str().to_string(),
                    stat: Some(stat_to_proto(&record.stat)),
                    contents: record.contents,
                })
                .collect(),
            sessions: self
                .sessions
                .iter()
                .map(|(&id, session)| wire::SessionRecord {
                    id,
                    client_name: session.client_name.clone(),
                    next_handle: session.next_handle,
                    last_event: session.last_event,
                    handles: session
                        .handles
                        .iter()
                        .map(|(&id, handle)| wire::HandleRecord {
                            id,
                            path: handle.path.as_str().to_string(),
                            instance: handle.instance,
                            event_mask: handle.event_mask,
                            lock_delay_ms: handle.lock_delay_ms,
                            sequencer: handle.sequencer.clone(),
                        })
                        .collect(),
                    answers: session
                        .answers
                        .iter()
                        .map(|(&request_number, outcome)| wire::AnswerRecord {
                            request_number,
                            outcome: Some(outcome.clone()),
                        })
                        .collect(),
                    highest_request: session.highest_request,
                    ..Default::default()
                })
                .collect(),
            locks: self
                .locks
                .records()
                .into_iter()
                .map(|record| wire::LockRecord {
                    path: record.path.as_str().to_string(),
                    holders: record.holders.iter().map(holder).collect(),
                    waiters: record.waiters.iter().map(holder).collect(),
                    delay_until_ms: record.delay_until_ms,
                })
                .collect(),
            ..Default::default()
        };
        Bytes::from(snapshot.encode_to_vec())
    }

    /// Rebuilds the state from [`StateMachine::snapshot`]'s bytes, checking
    /// everything that could make later commands misbehave.
    pub fn restore(bytes: &[u8]) -> Result<StateMachine, SnapshotError> {
        let snapshot = wire::StateSnapshot::decode(bytes)?;
        let bad = SnapshotError::Inconsistent;
        let parse = |text: &str| Path::parse(text).map_err(|error| SnapshotError::Inconsistent(error.to_string()));
        let mut records = Vec::with_capacity(snapshot.nodes.len());
        for node in snapshot.nodes {
            let stat = node.stat.as_ref().ok_or_else(|| bad(format!("{} has no stat", node.path)))?;
            records.push(NodeRecord {
                path: parse(&node.path)?,
                stat: stat_from_proto(stat).map_err(bad)?,
                contents: node.contents,
            });
        }
        let namespace = Namespace::from_records(snapshot.next_instance, records).map_err(bad)?;
        let holder = |h: &wire::LockHolder| -> Result<(Holder, LockMode), SnapshotError> {
            let mode = mode_from_proto(h.mode).ok_or_else(|| bad(format!("lock mode {}", h.mode)))?;
            Ok((Holder { session: h.session_id, handle: h.handle, lock_delay_ms: h.lock_delay_ms }, mode))
        };
        let mut lock_records = Vec::with_capacity(snapshot.locks.len());
        for lock in &snapshot.locks {
            lock_records.push(LockRecord {
                path: parse(&lock.path)?,
                holders: lock.holders.iter().map(holder).collect::<Result<_, _>>()?,
                waiters: lock.waiters.iter().map(holder).collect::<Result<_, _>>()?,
                delay_until_ms: lock.delay_until_ms,
            });
        }
        let locks = LockTable::from_records(lock_records).map_err(bad)?;
        let mut state = StateMachine {
            namespace,
            locks,
            now_ms: snapshot.now_ms,
            next_session: snapshot.next_session,
            last_lock_generation: snapshot.last_lock_generation,
            ..StateMachine::new()
        };
        if snapshot.sessions.len() > SESSIONS_MAX {
            return Err(bad(format!("{} sessions", snapshot.sessions.len())));
        }
        for record in snapshot.sessions {
            if record.id == 0 || record.id >= state.next_session {
                return Err(bad(format!("session id {} (next is {})", record.id, state.next_session)));
            }
            let mut session = Session {
                client_name: record.client_name,
                next_handle: record.next_handle,
                last_event: record.last_event,
                highest_request: record.highest_request,
                ..Session::default()
            };
            if record.handles.len() > HANDLES_PER_SESSION_MAX || record.answers.len() > ANSWERS_PER_SESSION_MAX {
                return Err(bad(format!("session {} has too many handles or answers", record.id)));
            }
            for handle in record.handles {
                if handle.id == 0 || handle.id >= session.next_handle {
                    return Err(bad(format!("handle {} of session {}", handle.id, record.id)));
                }
                let path = parse(&handle.path)?;
                state.watchers.entry(path.clone()).or_default().insert((record.id, handle.id));
                session.handles.insert(
                    handle.id,
                    Handle {
                        path,
                        instance: handle.instance,
                        event_mask: handle.event_mask,
                        lock_delay_ms: handle.lock_delay_ms,
                        sequencer: handle.sequencer,
                    },
                );
            }
            for answer in record.answers {
                let outcome = answer.outcome.ok_or_else(|| bad("an answer without an outcome".to_string()))?;
                session.answers.insert(answer.request_number, outcome);
            }
            state.handles_total += session.handles.len();
            state.sessions_bytes += session.footprint_bytes();
            if state.sessions.insert(record.id, session).is_some() {
                return Err(bad(format!("session {} appears twice", record.id)));
            }
        }
        if state.handles_total > HANDLES_MAX {
            return Err(bad(format!("{} handles", state.handles_total)));
        }
        Ok(state)
    }

    /// Compares the replicated parts of two states (not the event queues).
    pub fn same_replicated_state(&self, other: &StateMachine) -> bool {
        self.snapshot() == other.snapshot()
    }
}

fn acquired(sequencer: api::Sequencer) -> Outcome {
    Outcome { result: Some(wire::outcome::Result::Acquired(api::AcquireResponse { sequencer: Some(sequencer) })) }
}

fn into_failure(outcome: Outcome) -> wire::Failure {
    match outcome.result {
        Some(wire::outcome::Result::Failure(failure)) => failure,
        _ => wire::Failure { code: Code::Internal as i32, message: "unexpected outcome".to_string() },
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
