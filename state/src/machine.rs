//! The replicated state machine: namespace, sessions, handles, locks and
//! events, changed only by [`StateMachine::apply`] in slot order.
//!
//! `apply` is deterministic: time is the master's timestamps in the command
//! (and never goes back, see [`StateMachine::now_ms`] and
//! [`StateMachine::lock_clock_ms`]), there is no randomness (a session's
//! secret is drawn by the master's handler and carried in the command) and no
//! iteration over hash maps. Every replica that applies the same commands
//! holds the same state and computes the same [`Outcome`]s; only the master
//! hands them to the calls that wait.
//!
//! **Two clocks.** `now_ms` is the masters' wall clock, for the times users
//! see (a node's created and modified times). Lock-delays run on the
//! **lock-delay clock** `lock_clock_ms`, which each master advances only by
//! its own monotonic elapsed time since it began to serve, counted from the
//! value the state held then (see the server's `lock_clock`). A failover therefore
//! never moves it forward by the difference of two masters' wall clocks; at
//! worst a lock-delay lasts a little longer than asked (the safe side).
//!
//! **Sessions are usable only with their secret.** `CreateSession` carries
//! 16 random bytes the master's handler drew from the operating system;
//! every command that acts for a session (its calls, `CancelWait`, a close)
//! must carry them, and a wrong or missing secret is refused with
//! `PERMISSION_DENIED` here as well as in the handler: the log is input too.
//! (Session ids are sequential and easy to guess. With TLS a session also
//! belongs to its creator's identity, which the server's handlers check.)
//!
//! **ACLs.** Each node has an ACL ([`crate::acl`]); every call that reads
//! or changes a node is judged against it, here in `apply` and in the reads,
//! by the identity and groups its session was created with (both in the
//! replicated `CreateSession`), so every replica judges alike.
//!
//! Events are numbered here, per session (the numbers are replicated, so a
//! client can always tell when it missed some), and handed out in the
//! [`Applied`] that `apply` returns; the queue of events not yet delivered
//! lives outside the replicated state, in [`crate::outbox`].
//!
//! Limits (each refusal is an [`Outcome`] failure with its gRPC code):
//! sessions, handles per session, handles in all, nodes, contents, and the
//! state's footprint, which bounds a snapshot's size. The footprint is an
//! upper bound of the snapshot's encoding (every record is counted with an
//! overhead at least its encoding's); a call that may grow it starts only
//! below [`STATE_BYTES_MAX`] and grows it by at most
//! [`COMMAND_GROWTH_BYTES_MAX`], so a snapshot never exceeds
//! [`SNAPSHOT_BYTES_MAX`]. Above the bound only calls that free space run
//! (close, release, delete), and their failures are answered but not
//! remembered, so even they cannot grow the state.

// Refusals are the outcomes `apply` stores and answers, returned as they
// are (a few hundred bytes since answers carry a `ResponseHeader` field);
// boxing them would allocate on every refusal for nothing.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use gaios_proto::cell::v1 as api;
use gaios_proto::state::v1 as wire;
use prost::Message as _;
use crate::code::Code;

use crate::acl::{Acl, Permission, Principal};
use crate::limits::*;
use crate::validate;
use crate::locks::{Acquired, Grant, Holder, Holding, LockError, LockMode, LockRecord, LockTable};
use crate::namespace::{Change, Namespace, NamespaceError, NodeKind, NodeRecord, Path, SessionId, Stat};

/// The layout of [`StateMachine::snapshot`]'s record; `restore` refuses any
/// other but [`STATE_SNAPSHOT_FORMAT_VERSION_BEFORE_ACLS`]. Version 2 added
/// nodes' ACLs and sessions' groups.
pub const STATE_SNAPSHOT_FORMAT_VERSION: u32 = 2;
/// The version before ACLs, which `restore` still reads: its nodes get
/// [`Acl::open`] (what it enforced) and its sessions no groups.
pub const STATE_SNAPSHOT_FORMAT_VERSION_BEFORE_ACLS: u32 = 1;
/// Event bits that tell about a node's contents, children or lock: asking
/// for them at `Open` needs read permission (the others, which are always
/// delivered, do not).
const EVENT_BITS_NEEDING_READ: u32 = 0x1f;

// What each record costs in the footprint besides the variable-length bytes
// counted separately: upper bounds of the record's encoding in a snapshot
// (tags, lengths, and every integer field at its longest varint).
const STATE_OVERHEAD_BYTES: usize = 128;
const SESSION_OVERHEAD_BYTES: usize = 256;
const HANDLE_OVERHEAD_BYTES: usize = 128;
const ANSWER_OVERHEAD_BYTES: usize = 40;

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
    /// The identity that created it; empty without TLS.
    owner: String,
    /// The groups the master put the owner in when it created the session;
    /// ACLs judge the session by the owner and these.
    groups: Vec<String>,
    /// Every command that acts for the session must carry it.
    secret: [u8; SESSION_SECRET_BYTES],
    next_handle: u64,
    last_event: u64,
    handles: BTreeMap<u64, Handle>,
    answers: BTreeMap<u64, Answer>,
    highest_request: u64,
}

impl Session {
    fn footprint_bytes(&self) -> usize {
        SESSION_OVERHEAD_BYTES
            + self.client_name.len()
            + self.owner.len()
            + self.groups.iter().map(|group| group.len() + 4).sum::<usize>()
            + self.handles.values().map(Handle::footprint_bytes).sum::<usize>()
            + self.answers.values().map(|answer| answer_bytes(&answer.outcome)).sum::<usize>()
    }
}

/// A remembered answer, with a checksum of the call that got it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Answer {
    outcome: Outcome,
    /// [`call_checksum`] of the call; 0 if the answer came from a snapshot
    /// written before calls were checksummed.
    call_checksum: u64,
}

/// A checksum of what a session call asks (not its session, secret or
/// number), never 0.
fn call_checksum(call: &wire::SessionCall) -> u64 {
    let asked = wire::SessionCall { call: call.call.clone(), ..Default::default() };
    crate::namespace::checksum(&asked.encode_to_vec()).max(1)
}

fn answer_bytes(outcome: &Outcome) -> usize {
    ANSWER_OVERHEAD_BYTES + outcome.encoded_len()
}

/// Compares a presented secret with the session's in time that does not
/// depend on where they differ.
fn secrets_match(expected: &[u8; SESSION_SECRET_BYTES], presented: &[u8]) -> bool {
    presented.len() == expected.len() && expected.iter().zip(presented).fold(0u8, |diff, (a, b)| diff | (a ^ b)) == 0
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
    lock_clock_ms: u64,
    next_session: SessionId,
    /// Derived: the handles bound to each path, for events.
    watchers: BTreeMap<Path, BTreeSet<(SessionId, u64)>>,
    /// Derived: handles in all sessions.
    handles_total: usize,
    /// Derived: sessions' footprint (the namespace keeps its own).
    sessions_bytes: usize,
    /// Not replicated, empty between commands: what the command being
    /// applied did besides its outcome (see [`Applied`]).
    effects: Effects,
    /// Configuration, not replicated: the footprint above which growing
    /// calls are refused ([`STATE_BYTES_MAX`]; tests use smaller bounds).
    state_bytes_max: usize,
    /// Configuration, not replicated: whether debug builds run
    /// [`StateMachine::check_invariants`] after every `apply` (on unless a
    /// test of huge states turns it off, see
    /// [`StateMachine::set_check_after_apply`]).
    check_after_apply: bool,
}

/// The events a command numbered and the sessions it ended, gathered while
/// it is applied and handed out with its outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Effects {
    events: Vec<(SessionId, api::Event)>,
    ended: Vec<SessionId>,
}

/// What applying one command did: its outcome (the answer for the call that
/// waits for it), the events it numbered for each session, oldest first, and
/// the sessions it ended. The events and ended sessions are not replicated
/// state: the replica's [`crate::outbox::EventOutbox`] takes them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// The command's outcome.
    pub outcome: Outcome,
    /// The events it numbered, with the session each is for.
    pub events: Vec<(SessionId, api::Event)>,
    /// The sessions it ended (closed or expired).
    pub ended: Vec<SessionId>,
}

impl Default for StateMachine {
    fn default() -> Self {
        StateMachine::new()
    }
}

fn failure(code: Code, message: impl Into<String>) -> Outcome {
    failure_for(api::ErrorReason::Unspecified, code, message)
}

/// A failure with a reason programs can match on (see `ErrorReason`).
fn failure_for(reason: api::ErrorReason, code: Code, message: impl Into<String>) -> Outcome {
    refused(validate::failure(code, reason, message))
}

/// The outcome of a refusal.
fn refused(failure: wire::Failure) -> Outcome {
    Outcome { result: Some(wire::outcome::Result::Failure(failure)) }
}

fn is_failure(outcome: &Outcome) -> bool {
    matches!(outcome.result, Some(wire::outcome::Result::Failure(_)))
}

fn done() -> Outcome {
    Outcome { result: Some(wire::outcome::Result::Done(wire::Done {})) }
}

fn namespace_failure(error: &NamespaceError) -> Outcome {
    use api::ErrorReason as Reason;
    let (code, reason) = match error {
        NamespaceError::NotFound(_) => (Code::NotFound, Reason::Unspecified),
        NamespaceError::AlreadyExists(_) => (Code::AlreadyExists, Reason::Unspecified),
        NamespaceError::Root => (Code::InvalidArgument, Reason::Unspecified),
        NamespaceError::ContentsTooLarge(_) | NamespaceError::Full => (Code::ResourceExhausted, Reason::Unspecified),
        NamespaceError::NotEmpty(_) => (Code::FailedPrecondition, Reason::NotEmpty),
        NamespaceError::GenerationMismatch { .. } => (Code::FailedPrecondition, Reason::GenerationMismatch),
        NamespaceError::AclGenerationMismatch { .. } => (Code::FailedPrecondition, Reason::AclGenerationMismatch),
        NamespaceError::NotADirectory(_) => (Code::FailedPrecondition, Reason::NotADirectory),
        NamespaceError::IsADirectory(_) => (Code::FailedPrecondition, Reason::IsADirectory),
        // The handle's node was deleted and another made at its path.
        NamespaceError::InstanceMismatch { .. } => (Code::FailedPrecondition, Reason::HandleInvalid),
    };
    failure_for(reason, code, error.to_string())
}

fn lock_failure(error: &LockError) -> Outcome {
    use api::ErrorReason as Reason;
    let (code, reason) = match error {
        LockError::TooManyWaiters(_) => (Code::ResourceExhausted, Reason::Unspecified),
        LockError::LockDelayTooLong(_) => (Code::InvalidArgument, Reason::Unspecified),
        LockError::Held(_) => (Code::FailedPrecondition, Reason::LockHeld),
        LockError::LockDelay { .. } => (Code::FailedPrecondition, Reason::LockDelay),
        LockError::NotHeld(_) => (Code::FailedPrecondition, Reason::LockNotHeld),
        LockError::AlreadyRequested(_) => (Code::FailedPrecondition, Reason::LockAlreadyRequested),
    };
    failure_for(reason, code, error.to_string())
}


/// A path in a snapshot, which must parse.
fn snapshot_path(text: &str) -> Result<Path, SnapshotError> {
    Path::parse(text).map_err(|error| SnapshotError::Inconsistent(error.to_string()))
}

/// For `restore`: the namespace from its node records, each checked against
/// the snapshot's counters.
/// Nodes of a snapshot written before ACLs existed (`before_acls`) get
/// [`Acl::open`], one shared value; later ones must carry their ACL.
fn restore_namespace(
    nodes: Vec<wire::NodeRecord>,
    next_instance: u64,
    next_session: u64,
    last_lock_generation: u64,
    before_acls: bool,
) -> Result<Namespace, SnapshotError> {
    let bad = SnapshotError::Inconsistent;
    let open = std::sync::Arc::new(Acl::open());
    // Equal ACLs of consecutive nodes (a subtree that inherited one) share
    // one value, as they did before the snapshot.
    let mut previous: Option<std::sync::Arc<Acl>> = None;
    let mut records = Vec::with_capacity(nodes.len());
    for node in nodes {
        let stat = node.stat.as_ref().ok_or_else(|| bad(format!("{} has no stat", node.path)))?;
        let stat = stat_from_proto(stat).map_err(bad)?;
        if stat.ephemeral_owner.is_some_and(|owner| owner >= next_session) {
            return Err(bad(format!("{} is owned by a session that never existed", node.path)));
        }
        if stat.lock_generation > last_lock_generation {
            return Err(bad(format!("{} has lock generation {}", node.path, stat.lock_generation)));
        }
        let acl = match (&node.acl, before_acls) {
            (None, true) => std::sync::Arc::clone(&open),
            (Some(acl), false) => {
                let acl = Acl::from_proto(acl).map_err(|invalid| bad(format!("{}: {}", node.path, invalid.message)))?;
                match previous.take().filter(|shared| **shared == acl) {
                    Some(shared) => shared,
                    None => std::sync::Arc::new(acl),
                }
            }
            (Some(_), true) => return Err(bad(format!("{} has an ACL in a snapshot written before ACLs", node.path))),
            (None, false) => return Err(bad(format!("{} has no ACL", node.path))),
        };
        previous = Some(std::sync::Arc::clone(&acl));
        records.push(NodeRecord { path: snapshot_path(&node.path)?, stat, contents: node.contents, acl });
    }
    Namespace::from_records(next_instance, records).map_err(bad)
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
            lock_clock_ms: 0,
            next_session: 1,
            watchers: BTreeMap::new(),
            handles_total: 0,
            sessions_bytes: 0,
            effects: Effects::default(),
            state_bytes_max: STATE_BYTES_MAX,
            check_after_apply: true,
        }
    }

    /// Whether debug builds recheck the whole state after every `apply`
    /// (the default). A test that builds states of tens of megabytes turns
    /// it off, since each check scans the state, and checks every few steps
    /// itself; release builds never check after `apply`.
    pub fn set_check_after_apply(&mut self, check: bool) {
        self.check_after_apply = check;
    }

    /// A new cell's state whose growing calls are refused above
    /// `state_bytes_max` rather than [`STATE_BYTES_MAX`], so tests can fill
    /// it quickly.
    #[cfg(test)]
    pub(crate) fn with_state_bytes_max(state_bytes_max: usize) -> Self {
        StateMachine { state_bytes_max, ..StateMachine::new() }
    }

    /// The state's wall clock: the highest master timestamp applied so far,
    /// for the times users see.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// The lock-delay clock: the highest `lock_clock_ms` a master stamped on
    /// an applied command (see the module docs). Lock-delays end by it.
    pub fn lock_clock_ms(&self) -> u64 {
        self.lock_clock_ms
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

    /// The namespace, to read (tests and tools that inspect a replica's
    /// state without a session).
    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    /// How many lock holdings there are.
    pub fn locks_held(&self) -> usize {
        self.locks.held_count()
    }

    /// An upper bound of the size of a snapshot of this state, in bytes:
    /// every node, session (with its handles and remembered answers) and
    /// lock record, each with an overhead at least its encoding's.
    pub fn footprint_bytes(&self) -> usize {
        STATE_OVERHEAD_BYTES + self.namespace.footprint_bytes() + self.sessions_bytes + self.locks.footprint_bytes()
    }

    /// When the earliest running lock-delay ends (lock-delay clock), so the
    /// master can propose an `AdvanceTime` once its clock passes it.
    pub fn next_lock_delay_end_ms(&self) -> Option<u64> {
        self.locks.next_delay_end_ms()
    }

    // ---------------------------------------------------------------------
    // Applying commands.
    // ---------------------------------------------------------------------

    /// Applies one command and returns its outcome and the events it
    /// numbered. Never panics on any command, however malformed: a bad one
    /// fails with a status code.
    pub fn apply(&mut self, command: &wire::Command) -> Applied {
        let outcome = self.apply_command(command);
        let Effects { events, ended } = std::mem::take(&mut self.effects);
        // In debug builds the whole state is rechecked after every command
        // (see `check_invariants`), unless a test that builds huge states
        // turned it off and checks every few steps instead.
        if cfg!(debug_assertions) && self.check_after_apply {
            self.check_invariants();
        }
        Applied { outcome, events, ended }
    }

    fn apply_command(&mut self, command: &wire::Command) -> Outcome {
        self.now_ms = self.now_ms.max(command.now_ms);
        self.lock_clock_ms = self.lock_clock_ms.max(command.lock_clock_ms);
        // Any command whose lock-delay clock passes the end of a lock-delay
        // hands that lock to its waiters first, so they are not stranded
        // when other commands move the clock before the master's
        // `AdvanceTime` does.
        if self.locks.next_delay_end_ms().is_some_and(|end| end <= self.lock_clock_ms) {
            self.advance_time();
        }
        let Some(kind) = &command.kind else {
            return failure(Code::InvalidArgument, "empty command");
        };
        use wire::command::Kind;
        match kind {
            Kind::CreateSession(create) => self.create_session(create),
            Kind::EndSession(end) => {
                // The master expires sessions; a client closes only its own.
                if !end.expired
                    && self.sessions.contains_key(&end.session_id)
                    && let Err(refused) = self.authorize(end.session_id, &end.session_secret)
                {
                    return refused;
                }
                self.end_session(end.session_id, end.expired)
            }
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
            Kind::CancelWait(cancel) => self.cancel_wait(cancel),
        }
    }

    fn create_session(&mut self, create: &wire::CreateSession) -> Outcome {
        let secret = match validate::create_session(create) {
            Ok(secret) => secret,
            Err(invalid) => return refused(invalid),
        };
        if self.sessions.len() >= SESSIONS_MAX {
            return failure(Code::ResourceExhausted, format!("the cell holds {SESSIONS_MAX} sessions"));
        }
        if self.footprint_bytes() >= self.state_bytes_max {
            return failure(Code::ResourceExhausted, "the cell's state is full");
        }
        let id = self.next_session;
        self.next_session += 1;
        let session = Session {
            client_name: create.client_name.clone(),
            owner: create.owner.clone(),
            groups: create.groups.clone(),
            secret,
            next_handle: 1,
            ..Session::default()
        };
        self.sessions_bytes += session.footprint_bytes();
        self.sessions.insert(id, session);
        Outcome {
            result: Some(wire::outcome::Result::SessionCreated(api::CreateSessionResponse {
                header: None,
                session_id: id,
                lease_ms: 0,
                // The handler that drew the secret hands it to the client;
                // outcomes are not the place for it.
                session_secret: Bytes::new(),
            })),
        }
    }

    /// `Ok` if `session` is open and `presented` is its secret; otherwise
    /// the failure to answer (`FAILED_PRECONDITION` for a session that ended
    /// or never existed, `PERMISSION_DENIED` for a wrong or missing secret).
    fn authorize(&self, session_id: SessionId, presented: &[u8]) -> Result<&Session, Outcome> {
        let Some(session) = self.sessions.get(&session_id) else {
            return Err(failure_for(api::ErrorReason::SessionEnded, Code::FailedPrecondition, format!("session {session_id} has ended or never existed")));
        };
        if !secrets_match(&session.secret, presented) {
            return Err(failure_for(api::ErrorReason::SessionSecretMismatch, Code::PermissionDenied, format!("wrong or missing secret for session {session_id}")));
        }
        Ok(session)
    }

    /// The identity that created `session` (empty without TLS), if it is
    /// open.
    pub fn session_owner(&self, session: SessionId) -> Option<&str> {
        self.sessions.get(&session).map(|s| s.owner.as_str())
    }

    /// The groups `session` was created with, if it is open.
    pub fn session_groups(&self, session: SessionId) -> Option<&[String]> {
        self.sessions.get(&session).map(|s| s.groups.as_slice())
    }

    /// Who `session` is for ACL checks (an ended session is nobody: no
    /// identity, no groups).
    fn principal(&self, session: SessionId) -> Principal<'_> {
        match self.sessions.get(&session) {
            Some(s) => Principal { identity: &s.owner, groups: &s.groups },
            None => Principal { identity: "", groups: &[] },
        }
    }

    /// `Ok` if the ACL of the node at `path` (of `instance`, if given)
    /// gives `session` one of `permissions`; otherwise `PERMISSION_DENIED`,
    /// reason `ACL_DENIED` (or the namespace's failure if there is no such
    /// node).
    fn check_acl(&self, session: SessionId, path: &Path, instance: Option<u64>, permissions: &[Permission]) -> Result<(), Outcome> {
        let acl = self.namespace.acl(path, instance).map_err(|error| namespace_failure(&error))?;
        let principal = self.principal(session);
        if permissions.iter().any(|&permission| acl.allows(permission, principal)) {
            return Ok(());
        }
        let names: Vec<&str> = permissions.iter().map(|permission| permission.name()).collect();
        Err(failure_for(
            api::ErrorReason::AclDenied,
            Code::PermissionDenied,
            format!("the ACL of {path} gives {} no {} permission", principal.describe(), names.join(" or ")),
        ))
    }

    /// `stat` as `session` may see it: whole with read permission on the
    /// node, else only what says which node it is (instance, kind,
    /// ephemeral owner, ACL generation), never its contents' size,
    /// checksum, times or generations.
    fn stat_as_permitted(&self, session: SessionId, path: &Path, stat: &Stat) -> api::Stat {
        let full = stat_to_proto(stat);
        let readable = self.namespace.acl(path, Some(stat.instance)).is_ok_and(|acl| acl.allows(Permission::Read, self.principal(session)));
        if readable {
            return full;
        }
        api::Stat {
            instance: full.instance,
            kind: full.kind,
            ephemeral_owner: full.ephemeral_owner,
            acl_generation: full.acl_generation,
            ..api::Stat::default()
        }
    }

    /// Whether a call presenting `secret` may act for `session` (for the
    /// handlers, which check early, and the reads they serve).
    pub fn authorize_session(&self, session: SessionId, secret: &[u8]) -> Result<(), wire::Failure> {
        self.authorize(session, secret).map(|_| ()).map_err(into_failure)
    }

    /// Ends a session: its holdings are released (with lock-delay if it
    /// expired), its waits dropped, its handles closed and its ephemeral
    /// nodes deleted, with the events all this causes for other sessions.
    fn end_session(&mut self, session_id: SessionId, expired: bool) -> Outcome {
        // Ending an ended session is done already: a retried close, or an
        // expiry proposed twice, changes nothing.
        let Some(session) = self.sessions.get(&session_id) else { return done() };
        let handles: Vec<(u64, Path)> = session.handles.iter().map(|(&id, h)| (id, h.path.clone())).collect();
        let clock = self.lock_clock_ms;
        if !expired {
            // A clean close gives its locks back at once, like `Release`:
            // first its waits go (so that none of its own handles is
            // granted a lock it is giving up), then its holdings.
            for (handle, path) in &handles {
                let (_, grants) = self.locks.cancel_wait(path, session_id, *handle, None, clock);
                self.hand_out(grants);
            }
            for (handle, path) in &handles {
                if let Ok(grants) = self.locks.release(path, session_id, *handle, clock) {
                    self.hand_out(grants);
                }
            }
        }
        let grants = self.locks.session_ended(session_id, clock);
        self.hand_out(grants);
        for (handle, path) in &handles {
            self.unwatch(path, session_id, *handle);
        }
        if let Some(session) = self.sessions.remove(&session_id) {
            self.handles_total -= session.handles.len();
            self.sessions_bytes -= session.footprint_bytes();
        }
        self.effects.ended.push(session_id);
        for path in self.namespace.ephemerals_of(session_id) {
            // Deepest first. A directory that holds another session's node
            // stays until its last child goes (see `delete_node`); one that
            // went with its last child already is simply not found here.
            let _ = self.delete_node(&path, None, Some(session_id));
        }
        done()
    }

    fn advance_time(&mut self) {
        let grants = self.locks.advance_time(self.lock_clock_ms);
        self.hand_out(grants);
    }

    /// A waiting `Acquire` gave up: its wait ends; a lock already granted
    /// to that wait is kept and returned if the call is still there
    /// (`keep_granted`), or released if nobody will hand it to the client.
    /// A lock granted at once is never released here: the `Acquire`'s own
    /// answer, remembered for retries, names it.
    fn cancel_wait(&mut self, cancel: &wire::CancelWait) -> Outcome {
        let (session_id, handle_id) = (cancel.session_id, cancel.handle);
        if !self.sessions.contains_key(&session_id) {
            return done();
        }
        let session = match self.authorize(session_id, &cancel.session_secret) {
            Ok(session) => session,
            Err(refused) => return refused,
        };
        let Some(handle) = session.handles.get(&handle_id) else { return done() };
        let path = handle.path.clone();
        let clock = self.lock_clock_ms;
        let (ended, grants) = self.locks.cancel_wait(&path, session_id, handle_id, Some(cancel.request_number), clock);
        self.hand_out(grants);
        if ended {
            return done();
        }
        let granted_to_this_wait = self
            .locks
            .holding(&path, session_id, handle_id)
            .is_some_and(|holding| holding.waited && holding.holder.request_number == cancel.request_number);
        if !granted_to_this_wait {
            return done();
        }
        if cancel.keep_granted {
            return match self.holding(session_id, handle_id) {
                Some(sequencer) => acquired(sequencer),
                None => done(),
            };
        }
        if let Ok(grants) = self.locks.release(&path, session_id, handle_id, clock) {
            self.hand_out(grants);
        }
        done()
    }

    /// A session's mutating call, at most once per request number.
    fn session_call(&mut self, call: &wire::SessionCall) -> Outcome {
        use wire::session_call::Call;
        let session_id = call.session_id;
        let number = call.request_number;
        // Before anything is looked up or remembered: a refused call must not
        // learn the session's answers, nor leave one under its number. The
        // same checks as the handler's (the log is input too).
        if let Err(invalid) = validate::session_call(call) {
            return refused(invalid);
        }
        let session = match self.authorize(session_id, &call.session_secret) {
            Ok(session) => session,
            Err(refused) => return refused,
        };
        let checksum = call_checksum(call);
        if let Some(answer) = session.answers.get(&number) {
            if answer.call_checksum != 0 && answer.call_checksum != checksum {
                return failure_for(
                    api::ErrorReason::RequestNumberReused,
                    Code::FailedPrecondition,
                    format!("request number {number} was used for a different call of session {session_id}"),
                );
            }
            return answer.outcome.clone();
        }
        let window = ANSWERS_PER_SESSION_MAX as u64;
        if session.highest_request >= window && number <= session.highest_request - window {
            return failure_for(
                api::ErrorReason::RequestNumberTooOld,
                Code::FailedPrecondition,
                format!(
                    "request number {number} is older than the at-most-once window (the session is at {})",
                    session.highest_request
                ),
            );
        }
        // A full state takes only calls that can shrink it; their successes
        // free more than their answer takes, and their failures (which
        // change nothing) are answered but not remembered.
        let full = self.footprint_bytes() >= self.state_bytes_max;
        let shrinks = matches!(call.call, Some(Call::Close(_) | Call::Release(_) | Call::Delete(_)));
        if full && !shrinks {
            return failure(Code::ResourceExhausted, "the cell's state is full; close handles or delete nodes");
        }
        let outcome = self.execute(session_id, call);
        if full && is_failure(&outcome) {
            return outcome;
        }
        if let Some(session) = self.sessions.get_mut(&session_id) {
            self.sessions_bytes += answer_bytes(&outcome);
            let answer = Answer { outcome: outcome.clone(), call_checksum: checksum };
            if let Some(replaced) = session.answers.insert(number, answer) {
                self.sessions_bytes -= answer_bytes(&replaced.outcome);
            }
            session.highest_request = session.highest_request.max(number);
            while session.answers.len() > ANSWERS_PER_SESSION_MAX {
                if let Some((_, old)) = session.answers.pop_first() {
                    self.sessions_bytes -= answer_bytes(&old.outcome);
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
            Call::Acquire(acquire) => self.acquire(session_id, call.request_number, acquire, true),
            Call::TryAcquire(acquire) => self.acquire(session_id, call.request_number, acquire, false),
            Call::Release(release) => self.release(session_id, release.handle),
            Call::SetSequencer(set) => self.set_sequencer(session_id, set),
            Call::SetAcl(set) => self.set_acl(session_id, set),
        }
    }

    fn open(&mut self, session_id: SessionId, open: &api::OpenRequest) -> Outcome {
        let (path, kind, acl) = match validate::open(open) {
            Ok(valid) => valid,
            Err(invalid) => return refused(invalid),
        };
        let Some(session) = self.sessions.get(&session_id) else {
            return failure_for(api::ErrorReason::SessionEnded, Code::FailedPrecondition, format!("session {session_id} has ended"));
        };
        if session.handles.len() >= HANDLES_PER_SESSION_MAX {
            return failure(Code::ResourceExhausted, format!("the session has {HANDLES_PER_SESSION_MAX} open handles"));
        }
        if self.handles_total >= HANDLES_MAX {
            return failure(Code::ResourceExhausted, format!("the cell has {HANDLES_MAX} open handles"));
        }
        // The node, its handle and an ACL (given, or its parent's).
        let growth = open.initial_contents.len() + 2 * path.as_str().len() + 1024 + ACL_BYTES_MAX + 512;
        if self.footprint_bytes() + growth > self.state_bytes_max {
            return failure(Code::ResourceExhausted, "the cell's state is full");
        }
        // Events about the node need read permission on it.
        let needed: &[Permission] = if open.event_mask & EVENT_BITS_NEEDING_READ != 0 {
            &[Permission::Read]
        } else {
            &[Permission::Read, Permission::Write, Permission::ChangeAcl]
        };
        let (stat, created) = match self.namespace.stat(&path, None) {
            Ok(stat) => {
                if open.create && open.exclusive_create {
                    return failure(Code::AlreadyExists, format!("a node already exists at {path}"));
                }
                if let Err(denied) = self.check_acl(session_id, &path, None, needed) {
                    return denied;
                }
                // An ACL given for a node that turns out to exist with
                // another one is refused, not ignored: the caller would
                // believe the node is guarded as it asked.
                if open.create
                    && let Some(given) = &acl
                    && self.namespace.acl(&path, None).is_ok_and(|existing| **existing != *given)
                {
                    return failure(Code::AlreadyExists, format!("a node already exists at {path}, with another ACL than the one given"));
                }
                (stat, false)
            }
            Err(NamespaceError::NotFound(_)) if open.create => {
                // Creating changes the parent directory. (A missing parent
                // is the namespace's NOT_FOUND, below.) A creator asking for
                // events needs read permission on the new node's ACL too.
                if let Some((parent, _)) = path.split()
                    && let Ok(parent_acl) = self.namespace.acl(&parent, None)
                {
                    if let Err(denied) = self.check_acl(session_id, &parent, None, &[Permission::Write]) {
                        return denied;
                    }
                    let principal = self.principal(session_id);
                    let new_acl = acl.as_ref().unwrap_or(parent_acl);
                    if !needed.iter().any(|&permission| new_acl.allows(permission, principal)) {
                        return failure_for(
                            api::ErrorReason::AclDenied,
                            Code::PermissionDenied,
                            format!("the ACL of the new {path} gives {} no read permission, which the events asked for need", principal.describe()),
                        );
                    }
                }
                let owner = open.ephemeral.then_some(session_id);
                let contents = open.initial_contents.clone();
                match self.namespace.create(&path, kind, owner, contents, acl.map(std::sync::Arc::new), self.now_ms) {
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
            return failure_for(api::ErrorReason::SessionEnded, Code::FailedPrecondition, format!("session {session_id} has ended"));
        };
        let id = session.next_handle;
        session.next_handle += 1;
        self.sessions_bytes += handle.footprint_bytes();
        session.handles.insert(id, handle);
        self.handles_total += 1;
        let stat = self.stat_as_permitted(session_id, &path, &stat);
        self.watchers.entry(path).or_default().insert((session_id, id));
        Outcome {
            result: Some(wire::outcome::Result::Opened(api::OpenResponse {
                header: None,
                handle: id,
                stat: Some(stat),
                created,
            })),
        }
    }

    fn close(&mut self, session_id: SessionId, handle_id: u64) -> Outcome {
        let handle = match self.usable_handle(session_id, handle_id, false) {
            Ok(handle) => handle,
            Err(outcome) => return outcome,
        };
        let clock = self.lock_clock_ms;
        if let Ok(grants) = self.locks.release(&handle.path, session_id, handle_id, clock) {
            self.hand_out(grants);
        }
        let (_, grants) = self.locks.cancel_wait(&handle.path, session_id, handle_id, None, clock);
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
        let handle = match self.permitted_handle(session_id, set.handle, Permission::Write) {
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
                header: None,
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
        // Deleting changes the parent directory (the root cannot be
        // deleted: the namespace refuses it below).
        if let Some((parent, _)) = handle.path.split()
            && let Err(denied) = self.check_acl(session_id, &parent, None, &[Permission::Write])
        {
            return denied;
        }
        match self.delete_node(&handle.path, Some(handle.instance), Some(session_id)) {
            Ok(()) => done(),
            Err(error) => namespace_failure(&error),
        }
    }

    /// Deletes a node, drops its holders and waiters, and tells the parent's
    /// watchers and every handle bound to the node. `deleter` is the session
    /// that deleted it (if one did): holders from other sessions lost the
    /// lock without giving it up, so their lock-delay starts; a running
    /// lock-delay outlives the node (see [`LockTable::node_deleted`]).
    ///
    /// An ephemeral directory whose owner's session has ended goes with its
    /// last child (Chubby's rule: an ephemeral directory lives while it holds
    /// nodes or its session lives), so it is removed here, as is its parent
    /// in turn if that empties an orphaned ephemeral directory too.
    fn delete_node(&mut self, path: &Path, instance: Option<u64>, deleter: Option<SessionId>) -> Result<(), NamespaceError> {
        let changes = self.namespace.delete(path, instance)?;
        self.locks.node_deleted(path, deleter, self.lock_clock_ms);
        self.notify(&changes);
        if let Some((parent, _)) = path.split() {
            let orphaned = self.namespace.stat(&parent, None).is_ok_and(|stat| {
                stat.children == 0 && stat.ephemeral_owner.is_some_and(|owner| !self.sessions.contains_key(&owner))
            });
            if orphaned {
                // At most one call per level of the path (32 at most). It
                // cannot fail (the directory exists and is empty), and the
                // child's deletion stands either way.
                let _ = self.delete_node(&parent, None, None);
            }
        }
        Ok(())
    }

    fn acquire(&mut self, session_id: SessionId, request_number: u64, request: &api::AcquireRequest, wait: bool) -> Outcome {
        let mode = match validate::acquire(request) {
            Ok(mode) => mode,
            Err(invalid) => return refused(invalid),
        };
        let handle = match self.permitted_handle(session_id, request.handle, Permission::Write) {
            Ok(handle) => handle,
            Err(outcome) => return outcome,
        };
        let holder = Holder { session: session_id, handle: request.handle, lock_delay_ms: handle.lock_delay_ms, request_number };
        let clock = self.lock_clock_ms;
        let result = if wait {
            self.locks.acquire(&handle.path, holder, mode, clock)
        } else {
            self.locks.try_acquire(&handle.path, holder, mode, clock).map(|lock_generation| Acquired::Granted { lock_generation })
        };
        match result {
            Ok(Acquired::Granted { lock_generation }) => {
                self.hand_out(vec![Grant { path: handle.path.clone(), holder, mode, lock_generation }]);
                // `hand_out` just recorded the grant on the handle.
                let sequencer = self.holding(session_id, request.handle);
                acquired(sequencer.expect("a lock just granted is held by its handle"))
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
        match self.locks.release(&handle.path, session_id, handle_id, self.lock_clock_ms) {
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
        if let Err(invalid) = validate::sequencer(set.sequencer.as_ref()) {
            return refused(invalid);
        }
        let Some(sequencer) = &set.sequencer else { unreachable!("validated") };
        if !self.check_sequencer(sequencer).valid {
            return failure_for(api::ErrorReason::SequencerStale, Code::FailedPrecondition, format!("sequencer for {} is stale", sequencer.path));
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

    fn set_acl(&mut self, session_id: SessionId, set: &api::SetAclRequest) -> Outcome {
        let acl = match validate::set_acl(set) {
            Ok(acl) => acl,
            Err(invalid) => return refused(invalid),
        };
        let handle = match self.permitted_handle(session_id, set.handle, Permission::ChangeAcl) {
            Ok(handle) => handle,
            Err(outcome) => return outcome,
        };
        // Nobody but an administrator locks themselves out: on a cell
        // without administrators (one run `--insecure`, where every session
        // is the same anonymous one) that would be for good.
        let principal = self.principal(session_id);
        if !acl.allows(Permission::ChangeAcl, principal) {
            return failure(
                Code::InvalidArgument,
                format!("the new ACL would leave {} without change-ACL permission on {}; only an administrator may do that", principal.describe(), handle.path),
            );
        }
        let old = self.namespace.acl(&handle.path, Some(handle.instance)).map_or(0, |acl| acl.footprint_bytes());
        let growth = acl.footprint_bytes().saturating_sub(old);
        if growth > 0 && self.footprint_bytes() + growth > self.state_bytes_max {
            return failure(Code::ResourceExhausted, "the cell's state is full");
        }
        match self.namespace.set_acl(&handle.path, Some(handle.instance), acl, set.if_acl_generation) {
            Ok(stat) => {
                self.drop_waiters_without_write(&handle.path);
                let stat = self.stat_as_permitted(session_id, &handle.path, &stat);
                Outcome { result: Some(wire::outcome::Result::AclSet(api::SetAclResponse { header: None, stat: Some(stat) })) }
            }
            Err(error) => namespace_failure(&error),
        }
    }

    /// After an ACL change: the waits for the node's lock of sessions the
    /// ACL no longer gives write permission end (their `Acquire`s fail), as
    /// a new `Acquire` of theirs would be refused. Holders keep the lock
    /// until they release it, as in Chubby.
    fn drop_waiters_without_write(&mut self, path: &Path) {
        let Ok(acl) = self.namespace.acl(path, None) else { return };
        let acl = std::sync::Arc::clone(acl);
        let waiting: Vec<(SessionId, u64)> = self
            .locks
            .participants()
            .filter(|(lock, session, handle)| *lock == path && self.locks.is_waiting(path, *session, *handle, None))
            .map(|(_, session, handle)| (session, handle))
            .filter(|&(session, _)| !acl.allows(Permission::Write, self.principal(session)))
            .collect();
        for (session, handle) in waiting {
            let (_, grants) = self.locks.cancel_wait(path, session, handle, None, self.lock_clock_ms);
            self.hand_out(grants);
        }
    }

    /// Records grants the lock table made: each took the next cell-wide
    /// lock generation (shared ones too, so every holding's sequencer names
    /// it alone), which becomes the node's; watchers hear "lock acquired".
    fn hand_out(&mut self, grants: Vec<Grant>) {
        for grant in grants {
            // The node exists: holders of deleted nodes are dropped.
            let _ = self.namespace.set_lock_generation(&grant.path, grant.lock_generation);
            self.notify_path(&grant.path, api::EventKind::LockAcquired, None);
        }
    }

    /// The handle, if its session and id exist and, with `check_node`, its
    /// node is still the instance it was bound to and a sequencer attached
    /// to it is still current. (Closing a handle or releasing its lock needs
    /// neither.)
    fn usable_handle(&self, session_id: SessionId, handle_id: u64, check_node: bool) -> Result<Handle, Outcome> {
        let Some(session) = self.sessions.get(&session_id) else {
            return Err(failure_for(api::ErrorReason::SessionEnded, Code::FailedPrecondition, format!("session {session_id} has ended")));
        };
        let Some(handle) = session.handles.get(&handle_id) else {
            return Err(failure(Code::NotFound, format!("session {session_id} has no handle {handle_id}")));
        };
        if check_node {
            match self.namespace.stat(&handle.path, None) {
                Ok(stat) if stat.instance == handle.instance => {}
                _ => {
                    return Err(failure_for(
                        api::ErrorReason::HandleInvalid,
                        Code::FailedPrecondition,
                        format!("handle {handle_id} is invalid: {} was deleted", handle.path),
                    ));
                }
            }
        }
        if let Some(sequencer) = handle.sequencer.as_ref().filter(|_| check_node)
            && !self.check_sequencer(sequencer).valid {
                return Err(failure_for(
                    api::ErrorReason::SequencerStale,
                    Code::FailedPrecondition,
                    format!("the sequencer set on handle {handle_id} ({}) is stale", sequencer.path),
                ));
            }
        Ok(handle.clone())
    }

    /// A usable handle (see [`Self::usable_handle`]) whose node's ACL gives
    /// the session `permission`.
    fn permitted_handle(&self, session_id: SessionId, handle_id: u64, permission: Permission) -> Result<Handle, Outcome> {
        let handle = self.usable_handle(session_id, handle_id, true)?;
        self.check_acl(session_id, &handle.path, Some(handle.instance), &[permission])?;
        Ok(handle)
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
        // Most writes reach nobody (handles rarely ask for every event):
        // the watchers and their masks are looked at before the node is.
        let Some(watchers) = self.watchers.get(path) else { return };
        let bit = kind as u32;
        let asking: Vec<(SessionId, u64, u64)> = watchers
            .iter()
            .filter_map(|&(session, handle)| {
                let h = self.sessions.get(&session)?.handles.get(&handle)?;
                (h.event_mask & bit != 0).then_some((session, handle, h.instance))
            })
            .collect();
        if asking.is_empty() {
            return;
        }
        let Ok(stat) = self.namespace.stat(path, None) else { return };
        let targets: Vec<(SessionId, u64)> =
            asking.into_iter().filter(|&(_, _, instance)| instance == stat.instance).map(|(s, h, _)| (s, h)).collect();
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
        self.effects.events.push((session_id, event));
    }

    /// The number of the session's last event (0 if none yet).
    pub fn last_event(&self, session: SessionId) -> u64 {
        self.sessions.get(&session).map_or(0, |s| s.last_event)
    }

    // ---------------------------------------------------------------------
    // Reads (answered by the master from its applied state).
    // ---------------------------------------------------------------------

    /// A file's contents and stat, through a handle of the session whose
    /// `secret` is presented.
    pub fn get_contents_and_stat(&self, session: SessionId, secret: &[u8], handle: u64) -> Result<(Bytes, api::Stat), wire::Failure> {
        let handle = self.readable_handle(session, secret, handle, &[Permission::Read])?;
        self.namespace
            .get_contents_and_stat(&handle.path, Some(handle.instance))
            .map(|(contents, stat)| (contents, stat_to_proto(&stat)))
            .map_err(|error| into_failure(namespace_failure(&error)))
    }

    /// A node's stat, through a handle (as `get_contents_and_stat`).
    pub fn get_stat(&self, session: SessionId, secret: &[u8], handle: u64) -> Result<api::Stat, wire::Failure> {
        let handle = self.readable_handle(session, secret, handle, &[Permission::Read])?;
        self.namespace
            .stat(&handle.path, Some(handle.instance))
            .map(|stat| stat_to_proto(&stat))
            .map_err(|error| into_failure(namespace_failure(&error)))
    }

    /// A directory's children and stat, through a handle (as
    /// `get_contents_and_stat`).
    ///
    /// A page: at most `page_size` names (1 to [`READ_DIR_PAGE_MAX`]; 0
    /// means that many) after `page_token` (the last name of the page
    /// before; empty for the first), and the token of the next page (empty
    /// after the last).
    pub fn read_dir(&self, session: SessionId, secret: &[u8], handle: u64, page_size: u32, page_token: &str) -> Result<(Vec<String>, api::Stat, String), wire::Failure> {
        let limit = validate::read_dir_page(page_size, page_token)?;
        let handle = self.readable_handle(session, secret, handle, &[Permission::Read])?;
        let (names, stat, more) = self
            .namespace
            .read_dir_page(&handle.path, Some(handle.instance), page_token, limit)
            .map_err(|error| into_failure(namespace_failure(&error)))?;
        let next = if more { names.last().cloned().unwrap_or_default() } else { String::new() };
        Ok((names, stat_to_proto(&stat), next))
    }

    /// A node's ACL and stat, through a handle whose session has read or
    /// change-ACL permission on it (as `get_contents_and_stat`).
    pub fn get_acl(&self, session: SessionId, secret: &[u8], handle: u64) -> Result<(api::Acl, api::Stat), wire::Failure> {
        let handle = self.readable_handle(session, secret, handle, &[Permission::Read, Permission::ChangeAcl])?;
        let acl = self.namespace.acl(&handle.path, Some(handle.instance)).map_err(|error| into_failure(namespace_failure(&error)))?;
        let stat = self.namespace.stat(&handle.path, Some(handle.instance)).map_err(|error| into_failure(namespace_failure(&error)))?;
        Ok((acl.to_proto(), self.stat_as_permitted(session, &handle.path, &stat)))
    }

    /// For the reads: the handle, if `secret` is its session's, the handle
    /// is usable, and the node's ACL gives the session one of
    /// `permissions`.
    fn readable_handle(&self, session: SessionId, secret: &[u8], handle: u64, permissions: &[Permission]) -> Result<Handle, wire::Failure> {
        self.authorize_session(session, secret)?;
        let handle = self.usable_handle(session, handle, true).map_err(into_failure)?;
        self.check_acl(session, &handle.path, Some(handle.instance), permissions).map_err(into_failure)?;
        Ok(handle)
    }

    /// The sequencer of the lock the handle holds (as
    /// `get_contents_and_stat`).
    pub fn get_sequencer(&self, session: SessionId, secret: &[u8], handle: u64) -> Result<api::Sequencer, wire::Failure> {
        self.authorize_session(session, secret)?;
        self.usable_handle(session, handle, true).map_err(into_failure)?;
        self.holding(session, handle)
            .ok_or_else(|| validate::failure(Code::FailedPrecondition, api::ErrorReason::LockNotHeld, format!("handle {handle} holds no lock")))
    }

    /// The sequencer of the handle's holding, if it holds the lock: the
    /// node, the mode, and the generation of this holding's grant.
    pub fn holding(&self, session: SessionId, handle_id: u64) -> Option<api::Sequencer> {
        let handle = self.sessions.get(&session)?.handles.get(&handle_id)?;
        let holding = self.locks.holding(&handle.path, session, handle_id)?;
        let stat = self.namespace.stat(&handle.path, Some(handle.instance)).ok()?;
        Some(api::Sequencer {
            path: handle.path.as_str().to_string(),
            mode: mode_to_proto(holding.mode) as i32,
            lock_generation: holding.lock_generation,
            instance: stat.instance,
        })
    }

    /// Whether the handle waits in line for its node's lock.
    pub fn is_waiting(&self, session: SessionId, handle_id: u64) -> bool {
        self.sessions
            .get(&session)
            .and_then(|s| s.handles.get(&handle_id))
            .is_some_and(|handle| self.locks.is_waiting(&handle.path, session, handle_id, None))
    }

    /// Whether a sequencer is current: the node is the same instance and
    /// the holding the sequencer was issued for still holds the lock (a
    /// holding of that mode with that generation exists; every grant has
    /// its own generation). `current_lock_generation` is the newest grant's.
    pub fn check_sequencer(&self, sequencer: &api::Sequencer) -> api::CheckSequencerResponse {
        let Ok(path) = Path::parse(&sequencer.path) else { return api::CheckSequencerResponse::default() };
        let Ok(stat) = self.namespace.stat(&path, None) else { return api::CheckSequencerResponse::default() };
        let valid = mode_from_proto(sequencer.mode).is_some_and(|mode| {
            stat.instance == sequencer.instance && self.locks.is_current(&path, mode, sequencer.lock_generation)
        });
        // The node's lock generation only for the instance the sequencer
        // names: anyone may check a sequencer, and the generation of
        // another instance is not theirs to learn.
        let current_lock_generation = if stat.instance == sequencer.instance { stat.lock_generation } else { 0 };
        api::CheckSequencerResponse { header: None, valid, current_lock_generation }
    }

    // ---------------------------------------------------------------------
    // Snapshots.
    // ---------------------------------------------------------------------

    /// Encodes the replicated state (not the event queues), at most
    /// [`SNAPSHOT_BYTES_MAX`] bytes (see the module docs).
    pub fn snapshot(&self) -> Bytes {
        let mode = |m: LockMode| mode_to_proto(m) as i32;
        let holding = |h: &Holding| wire::LockHolder {
            session_id: h.holder.session,
            handle: h.holder.handle,
            lock_delay_ms: h.holder.lock_delay_ms,
            mode: mode(h.mode),
            lock_generation: h.lock_generation,
            request_number: h.holder.request_number,
            waited: h.waited,
        };
        let waiter = |(h, m): &(Holder, LockMode)| wire::LockHolder {
            session_id: h.session,
            handle: h.handle,
            lock_delay_ms: h.lock_delay_ms,
            mode: mode(*m),
            lock_generation: 0,
            request_number: h.request_number,
            waited: false,
        };
        let snapshot = wire::StateSnapshot {
            format_version: STATE_SNAPSHOT_FORMAT_VERSION,
            now_ms: self.now_ms,
            lock_clock_ms: self.lock_clock_ms,
            next_instance: self.namespace.next_instance(),
            next_session: self.next_session,
            last_lock_generation: self.locks.last_lock_generation(),
            nodes: self
                .namespace
                .records()
                .map(|record| wire::NodeRecord {
                    path: record.path.as_str().to_string(),
                    stat: Some(stat_to_proto(&record.stat)),
                    contents: record.contents,
                    acl: Some(record.acl.to_proto()),
                })
                .collect(),
            sessions: self
                .sessions
                .iter()
                .map(|(&id, session)| wire::SessionRecord {
                    id,
                    client_name: session.client_name.clone(),
                    owner: session.owner.clone(),
                    groups: session.groups.clone(),
                    secret: Bytes::copy_from_slice(&session.secret),
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
                        .map(|(&request_number, answer)| wire::AnswerRecord {
                            request_number,
                            outcome: Some(answer.outcome.clone()),
                            call_checksum: answer.call_checksum,
                        })
                        .collect(),
                    highest_request: session.highest_request,
                })
                .collect(),
            locks: self
                .locks
                .records()
                .into_iter()
                .map(|record| wire::LockRecord {
                    path: record.path.as_str().to_string(),
                    holders: record.holders.iter().map(holding).collect(),
                    waiters: record.waiters.iter().map(waiter).collect(),
                    delay_until_ms: record.delay_until_ms,
                })
                .collect(),
        };
        Bytes::from(snapshot.encode_to_vec())
    }

    /// Rebuilds the state from [`StateMachine::snapshot`]'s bytes. Total:
    /// any bytes give a state or a typed error, never a panic. It refuses
    /// an unknown format version and anything that could not have come from
    /// `apply` or could make later commands misbehave (a dangling
    /// reference, a counter so high that the next increment overflows, a
    /// value over a limit).
    pub fn restore(bytes: &[u8]) -> Result<StateMachine, SnapshotError> {
        let snapshot = wire::StateSnapshot::decode(bytes)?;
        let before_acls = snapshot.format_version == STATE_SNAPSHOT_FORMAT_VERSION_BEFORE_ACLS;
        if snapshot.format_version != STATE_SNAPSHOT_FORMAT_VERSION && !before_acls {
            return Err(SnapshotError::UnknownVersion {
                found: snapshot.format_version,
                supported: STATE_SNAPSHOT_FORMAT_VERSION,
            });
        }
        let bad = SnapshotError::Inconsistent;
        for (name, value) in [
            ("next_session", snapshot.next_session),
            ("next_instance", snapshot.next_instance),
            ("last_lock_generation", snapshot.last_lock_generation),
        ] {
            if value > COUNTER_MAX {
                return Err(bad(format!("{name} is {value}, over {COUNTER_MAX}")));
            }
        }
        if snapshot.next_session == 0 {
            return Err(bad("next_session is 0".to_string()));
        }
        let namespace =
            restore_namespace(snapshot.nodes, snapshot.next_instance, snapshot.next_session, snapshot.last_lock_generation, before_acls)?;
        let mut state = StateMachine {
            namespace,
            now_ms: snapshot.now_ms,
            lock_clock_ms: snapshot.lock_clock_ms,
            next_session: snapshot.next_session,
            ..StateMachine::new()
        };
        if snapshot.sessions.len() > SESSIONS_MAX {
            return Err(bad(format!("{} sessions", snapshot.sessions.len())));
        }
        for record in snapshot.sessions {
            if before_acls && !record.groups.is_empty() {
                return Err(bad(format!("session {} has groups in a snapshot of version {}", record.id, snapshot.format_version)));
            }
            state.restore_session(record)?;
        }
        if state.handles_total > HANDLES_MAX {
            return Err(bad(format!("{} handles", state.handles_total)));
        }
        state.locks = state.restore_locks(&snapshot.locks, snapshot.last_lock_generation)?;
        // A version 1 snapshot's nodes each gained an ACL on restore: the
        // bound grows by that, and the state reads as full until space is
        // freed.
        let acl_allowance = if before_acls { state.namespace.len().saturating_mul(Acl::open().footprint_bytes()) } else { 0 };
        if state.footprint_bytes() > SNAPSHOT_BYTES_MAX.saturating_add(acl_allowance) {
            return Err(bad(format!("a state of {} bytes, over {SNAPSHOT_BYTES_MAX}", state.footprint_bytes())));
        }
        // What `check_invariants` asserts must be refused here first: a
        // snapshot is input, and a bad one must not crash the replica.
        for (path, owner, children) in state.namespace.ephemeral_owners() {
            if !state.sessions.contains_key(&owner) && children == 0 {
                return Err(bad(format!("ephemeral {path} is owned by session {owner}, which has ended")));
            }
        }
        state.check_invariants();
        Ok(state)
    }

    /// For `restore`: one session's record, checked, added to the state.
    fn restore_session(&mut self, record: wire::SessionRecord) -> Result<(), SnapshotError> {
        let bad = SnapshotError::Inconsistent;
        let id = record.id;
        if id == 0 || id >= self.next_session {
            return Err(bad(format!("session id {id} (next is {})", self.next_session)));
        }
        let secret = <[u8; SESSION_SECRET_BYTES]>::try_from(record.secret.as_ref())
            .map_err(|_| bad(format!("session {id} has a secret of {} bytes", record.secret.len())))?;
        if record.next_handle > COUNTER_MAX || record.last_event > COUNTER_MAX {
            return Err(bad(format!("session {id} has a counter over {COUNTER_MAX}")));
        }
        if record.client_name.len() > CLIENT_NAME_BYTES_MAX {
            return Err(bad(format!("session {id} has a client name of {} bytes", record.client_name.len())));
        }
        if record.owner.len() > IDENTITY_BYTES_MAX {
            return Err(bad(format!("session {id} has an owner of {} bytes", record.owner.len())));
        }
        crate::acl::groups(&record.groups).map_err(|invalid| bad(format!("session {id}: {}", invalid.message)))?;
        let mut session = Session {
            client_name: record.client_name,
            owner: record.owner,
            groups: record.groups,
            secret,
            next_handle: record.next_handle,
            last_event: record.last_event,
            highest_request: record.highest_request,
            ..Session::default()
        };
        if record.handles.len() > HANDLES_PER_SESSION_MAX || record.answers.len() > ANSWERS_PER_SESSION_MAX {
            return Err(bad(format!("session {id} has too many handles or answers")));
        }
        for handle in record.handles {
            if handle.id == 0 || handle.id >= session.next_handle {
                return Err(bad(format!("handle {} of session {id}", handle.id)));
            }
            if handle.lock_delay_ms > LOCK_DELAY_MS_MAX || handle.event_mask & !EVENT_MASK_ALL != 0 {
                return Err(bad(format!("handle {} of session {id} has a bad lock-delay or event mask", handle.id)));
            }
            let path = snapshot_path(&handle.path)?;
            self.watchers.entry(path.clone()).or_default().insert((id, handle.id));
            let handle_record = Handle {
                path,
                instance: handle.instance,
                event_mask: handle.event_mask,
                lock_delay_ms: handle.lock_delay_ms,
                sequencer: handle.sequencer,
            };
            if session.handles.insert(handle.id, handle_record).is_some() {
                return Err(bad(format!("handle {} of session {id} appears twice", handle.id)));
            }
        }
        for answer in record.answers {
            let outcome = answer.outcome.ok_or_else(|| bad("an answer without an outcome".to_string()))?;
            session.answers.insert(answer.request_number, Answer { outcome, call_checksum: answer.call_checksum });
        }
        self.handles_total += session.handles.len();
        self.sessions_bytes += session.footprint_bytes();
        if self.sessions.insert(id, session).is_some() {
            return Err(bad(format!("session {id} appears twice")));
        }
        Ok(())
    }

    /// For `restore`: the lock table, every holder and waiter checked
    /// against the restored sessions.
    fn restore_locks(&self, locks: &[wire::LockRecord], last_lock_generation: u64) -> Result<LockTable, SnapshotError> {
        let bad = SnapshotError::Inconsistent;
        let mut lock_records = Vec::with_capacity(locks.len());
        for lock in locks {
            let path = snapshot_path(&lock.path)?;
            let holder = |h: &wire::LockHolder| -> Result<(Holder, LockMode), SnapshotError> {
                let mode = mode_from_proto(h.mode).ok_or_else(|| bad(format!("lock {path}: mode {}", h.mode)))?;
                self.check_lock_party(&path, h.session_id, h.handle)?;
                let holder =
                    Holder { session: h.session_id, handle: h.handle, lock_delay_ms: h.lock_delay_ms, request_number: h.request_number };
                Ok((holder, mode))
            };
            let mut holders = Vec::with_capacity(lock.holders.len());
            for h in &lock.holders {
                let (holder, mode) = holder(h)?;
                holders.push(Holding { holder, mode, lock_generation: h.lock_generation, waited: h.waited });
            }
            let waiters = lock.waiters.iter().map(holder).collect::<Result<_, _>>()?;
            lock_records.push(LockRecord { path, holders, waiters, delay_until_ms: lock.delay_until_ms });
        }
        LockTable::from_records(last_lock_generation, self.lock_clock_ms, lock_records).map_err(bad)
    }

    /// For `restore`: a lock's holder or waiter must be an open handle bound
    /// to the current instance of the lock's node.
    fn check_lock_party(&self, path: &Path, session: SessionId, handle: u64) -> Result<(), SnapshotError> {
        let bound = self.sessions.get(&session).and_then(|s| s.handles.get(&handle)).is_some_and(|h| {
            h.path == *path && self.namespace.stat(path, None).is_ok_and(|stat| stat.instance == h.instance)
        });
        if bound {
            Ok(())
        } else {
            Err(SnapshotError::Inconsistent(format!("lock {path} names handle {handle} of session {session}, not bound to it")))
        }
    }

    /// Recomputes what is kept incrementally (the sessions' footprint, the
    /// handle count, the watchers index, the namespace's and the lock
    /// table's indexes and footprints) and checks what must hold between
    /// them (lock holders are live handles on the path, ephemerals' owners
    /// are alive); panics on a difference, which is a bug. `apply` runs it
    /// after every command in debug builds, `restore` on what it rebuilt
    /// (after refusing, as input, anything it asserts).
    pub fn check_invariants(&self) {
        assert_eq!(self.effects, Effects::default(), "a command's events or ended sessions were left behind");
        let sessions_bytes: usize = self.sessions.values().map(Session::footprint_bytes).sum();
        assert_eq!(self.sessions_bytes, sessions_bytes, "the sessions' footprint");
        let handles_total: usize = self.sessions.values().map(|s| s.handles.len()).sum();
        assert_eq!(self.handles_total, handles_total, "the handle count");
        let mut watchers: BTreeMap<Path, BTreeSet<(SessionId, u64)>> = BTreeMap::new();
        for (&id, session) in &self.sessions {
            for (&handle, record) in &session.handles {
                watchers.entry(record.path.clone()).or_default().insert((id, handle));
            }
        }
        assert_eq!(self.watchers, watchers, "the watchers index");
        for (&id, session) in &self.sessions {
            assert!(id < self.next_session, "session {id} is not below the next id");
            assert!(session.handles.keys().all(|&h| h > 0 && h < session.next_handle), "session {id}: a handle id not below the next");
            assert!(session.answers.len() <= ANSWERS_PER_SESSION_MAX, "session {id}: answers over the window");
        }
        self.namespace.check_invariants();
        self.locks.check_invariants();
        // Every holder and waiter of a lock is a live handle on that path.
        for (path, session, handle) in self.locks.participants() {
            let bound = self.sessions.get(&session).and_then(|s| s.handles.get(&handle)).map(|h| &h.path);
            assert_eq!(bound, Some(path), "lock {path}: holder or waiter (session {session}, handle {handle}) is not a live handle on it");
        }
        // Every ephemeral node's owner is alive, or the node is a directory
        // that still has children (it goes with the last of them).
        for (path, owner, children) in self.namespace.ephemeral_owners() {
            assert!(self.sessions.contains_key(&owner) || children > 0, "ephemeral {path} outlived its session {owner}");
        }
    }

    /// Compares the replicated parts of two states (not the event queues).
    pub fn same_replicated_state(&self, other: &StateMachine) -> bool {
        self.snapshot() == other.snapshot()
    }
}

fn acquired(sequencer: api::Sequencer) -> Outcome {
    Outcome { result: Some(wire::outcome::Result::Acquired(api::AcquireResponse { header: None, sequencer: Some(sequencer) })) }
}

/// The failure inside an outcome that the caller knows is one (a refusal
/// of `authorize` or `usable_handle`).
fn into_failure(outcome: Outcome) -> wire::Failure {
    match outcome.result {
        Some(wire::outcome::Result::Failure(failure)) => failure,
        other => unreachable!("a refusal is always a failure, not {other:?}"),
    }
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
