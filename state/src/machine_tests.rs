//! Tests of the state machine: scenarios for each rule, then a seeded
//! property test against a simple model (with snapshot-and-restore as one of
//! the operations and retries of earlier requests).

use super::*;
use crate::outbox::EventOutbox;
use std::collections::VecDeque;
use wire::command::Kind;
use wire::session_call::Call;

/// Builds commands with a clock that moves only when told (the master's
/// wall clock and its lock-delay clock move together here, unless a test
/// stamps a command itself), and keeps each session's secret.
#[derive(Clone)]
struct Cell {
    state: StateMachine,
    now_ms: u64,
    next_request: BTreeMap<SessionId, u64>,
    secrets: BTreeMap<SessionId, Bytes>,
    sessions_created: u64,
    /// The events applied commands numbered, as a replica keeps them.
    outbox: EventOutbox,
}

impl Cell {
    fn new() -> Self {
        Cell::with_state(StateMachine::new())
    }

    fn with_state(state: StateMachine) -> Self {
        Cell {
            state,
            now_ms: 1_000,
            next_request: BTreeMap::new(),
            secrets: BTreeMap::new(),
            sessions_created: 0,
            outbox: EventOutbox::new(),
        }
    }

    fn apply(&mut self, kind: Kind) -> Outcome {
        self.apply_stamped(self.now_ms, self.now_ms, kind)
    }

    /// Applies `kind` stamped with a wall clock and a lock-delay clock of
    /// the test's choosing.
    fn apply_stamped(&mut self, now_ms: u64, lock_clock_ms: u64, kind: Kind) -> Outcome {
        let command =
            wire::Command { proposer_incarnation: 7, proposal_number: 1, now_ms, lock_clock_ms, kind: Some(kind) };
        // Every command also survives a trip through its encoding.
        let decoded = wire::Command::decode(command.encode_to_vec().as_slice()).expect("decodes");
        // `apply` rechecks the whole state itself in debug builds (the fill
        // tests, whose states are large, turn that off and check every few
        // steps instead).
        let applied = self.state.apply(&decoded);
        self.outbox.record(applied, &mut BTreeSet::new())
    }

    fn session(&mut self) -> SessionId {
        self.sessions_created += 1;
        // Distinct per session, as the master's random draw would be.
        let secret = Bytes::from((0..16u8).map(|i| i.wrapping_mul(31) ^ self.sessions_created as u8).collect::<Vec<u8>>());
        let create = wire::CreateSession { client_name: "test".into(), session_secret: secret.clone(), ..Default::default() };
        match self.apply(Kind::CreateSession(create)).result {
            Some(wire::outcome::Result::SessionCreated(created)) => {
                self.secrets.insert(created.session_id, secret);
                created.session_id
            }
            other => panic!("no session: {other:?}"),
        }
    }

    /// A session created by `owner` (a TLS identity) in `groups`.
    fn session_as(&mut self, owner: &str, groups: &[&str]) -> SessionId {
        self.sessions_created += 1;
        let secret = Bytes::from(vec![self.sessions_created as u8 ^ 0x5a; 16]);
        let groups = groups.iter().map(|g| g.to_string()).collect();
        let create = wire::CreateSession { client_name: "test".into(), session_secret: secret.clone(), owner: owner.into(), groups };
        match self.apply(Kind::CreateSession(create)).result {
            Some(wire::outcome::Result::SessionCreated(created)) => {
                self.secrets.insert(created.session_id, secret);
                created.session_id
            }
            other => panic!("no session for {owner}: {other:?}"),
        }
    }

    fn set_acl(&mut self, session: SessionId, handle: u64, acl: api::Acl, if_acl_generation: Option<u64>) -> Outcome {
        self.call(session, Call::SetAcl(api::SetAclRequest { handle, acl: Some(acl), if_acl_generation, ..Default::default() }))
    }

    fn secret(&self, session: SessionId) -> Bytes {
        self.secrets.get(&session).cloned().unwrap_or_default()
    }

    fn call(&mut self, session: SessionId, call: Call) -> Outcome {
        let number = self.next_request.entry(session).or_insert(0);
        *number += 1;
        let request_number = *number;
        self.call_numbered(session, request_number, call)
    }

    fn call_numbered(&mut self, session: SessionId, request_number: u64, call: Call) -> Outcome {
        let session_secret = self.secret(session);
        self.call_with_secret(session, session_secret, request_number, call)
    }

    fn call_with_secret(&mut self, session: SessionId, session_secret: Bytes, request_number: u64, call: Call) -> Outcome {
        self.apply(Kind::Call(wire::SessionCall { session_id: session, request_number, session_secret, call: Some(call) }))
    }

    /// Ends a session as its client would close it (`expired` false) or as
    /// the master expires it (true).
    fn end(&mut self, session: SessionId, expired: bool) -> Outcome {
        let session_secret = if expired { Bytes::new() } else { self.secret(session) };
        self.apply(Kind::EndSession(wire::EndSession { session_id: session, expired, session_secret }))
    }

    fn open(&mut self, session: SessionId, path: &str, create: bool, ephemeral: bool, mask: u32, lock_delay_ms: u64) -> Outcome {
        self.call(
            session,
            Call::Open(api::OpenRequest {
                path: path.into(),
                create,
                ephemeral,
                event_mask: mask,
                lock_delay_ms,
                ..Default::default()
            }),
        )
    }

    fn handle(&mut self, session: SessionId, path: &str) -> u64 {
        handle_of(&self.open(session, path, true, false, 0, 0))
    }

    fn acquire(&mut self, session: SessionId, handle: u64, mode: api::LockMode, wait: bool) -> Outcome {
        let request = api::AcquireRequest { handle, mode: mode as i32, ..Default::default() };
        self.call(session, if wait { Call::Acquire(request) } else { Call::TryAcquire(request) })
    }

    fn events(&self, session: SessionId) -> Vec<(api::EventKind, String)> {
        self.outbox
            .events_after(session, 0, usize::MAX)
            .into_iter()
            .map(|event| (api::EventKind::try_from(event.kind).expect("kind"), event.path))
            .collect()
    }
}

fn handle_of(outcome: &Outcome) -> u64 {
    match &outcome.result {
        Some(wire::outcome::Result::Opened(opened)) => opened.handle,
        other => panic!("not opened: {other:?}"),
    }
}

fn reason_of(outcome: &Outcome) -> api::ErrorReason {
    match &outcome.result {
        Some(wire::outcome::Result::Failure(failure)) => api::ErrorReason::try_from(failure.reason).expect("a known reason"),
        other => panic!("not a failure: {other:?}"),
    }
}

fn code_of(outcome: &Outcome) -> Option<Code> {
    match &outcome.result {
        Some(wire::outcome::Result::Failure(failure)) => Code::from_number(failure.code),
        _ => None,
    }
}

fn sequencer_of(outcome: &Outcome) -> api::Sequencer {
    match &outcome.result {
        Some(wire::outcome::Result::Acquired(acquired)) => acquired.sequencer.clone().expect("sequencer"),
        other => panic!("not acquired: {other:?}"),
    }
}

fn is_queued(outcome: &Outcome) -> bool {
    matches!(outcome.result, Some(wire::outcome::Result::Queued(_)))
}

#[test]
fn exclusive_lock_excludes_and_waiters_are_served_in_order_with_rising_generations() {
    let mut cell = Cell::new();
    let (a, b, c) = (cell.session(), cell.session(), cell.session());
    let ha = cell.handle(a, "/lock");
    let hb = cell.handle(b, "/lock");
    let hc = cell.handle(c, "/lock");
    let first = sequencer_of(&cell.acquire(a, ha, api::LockMode::Exclusive, false));
    assert_eq!(first.lock_generation, 1);
    assert_eq!(code_of(&cell.acquire(b, hb, api::LockMode::Exclusive, false)), Some(Code::FailedPrecondition));
    assert!(is_queued(&cell.acquire(b, hb, api::LockMode::Exclusive, true)));
    assert!(is_queued(&cell.acquire(c, hc, api::LockMode::Exclusive, true)));
    // The holder hears of the conflicting requests.
    let conflicts = cell.events(a).iter().filter(|(k, _)| *k == api::EventKind::ConflictingLockRequest).count();
    assert_eq!(conflicts, 2);
    assert!(cell.state.holding(b, hb).is_none());
    assert!(cell.state.is_waiting(b, hb));
    // Release: b (first in line) gets it with the next generation, c waits.
    assert_eq!(code_of(&cell.call(a, Call::Release(api::ReleaseRequest { handle: ha, ..Default::default() }))), None);
    let second = cell.state.holding(b, hb).expect("b holds");
    assert_eq!(second.lock_generation, 2);
    assert!(cell.state.holding(c, hc).is_none());
    assert!(!cell.state.check_sequencer(&first).valid, "a's sequencer is stale");
    assert!(cell.state.check_sequencer(&second).valid);
    cell.call(b, Call::Release(api::ReleaseRequest { handle: hb, ..Default::default() }));
    assert_eq!(cell.state.holding(c, hc).expect("c holds").lock_generation, 3);
}

#[test]
fn every_grant_takes_a_new_generation_and_a_shared_sequencer_lives_only_with_its_holding() {
    let mut cell = Cell::new();
    let (a, b, c) = (cell.session(), cell.session(), cell.session());
    let ha = cell.handle(a, "/f");
    let hb = cell.handle(b, "/f");
    let hc = cell.handle(c, "/f");
    let sa = sequencer_of(&cell.acquire(a, ha, api::LockMode::Shared, false));
    let sb = sequencer_of(&cell.acquire(b, hb, api::LockMode::Shared, false));
    // Each grant, shared too, takes the next generation, so each holder's
    // sequencer names its own holding.
    assert!(sb.lock_generation > sa.lock_generation, "{sa:?} then {sb:?}");
    assert_eq!(code_of(&cell.acquire(c, hc, api::LockMode::Exclusive, false)), Some(Code::FailedPrecondition));
    assert!(cell.state.check_sequencer(&sa).valid);
    assert!(cell.state.check_sequencer(&sb).valid);
    // a leaves while b still holds the lock shared: a's sequencer is stale
    // (it used to stay valid as long as anyone held the lock shared).
    assert_eq!(code_of(&release(&mut cell, a, ha)), None);
    assert!(!cell.state.check_sequencer(&sa).valid, "a released: its shared sequencer must be stale");
    assert!(cell.state.check_sequencer(&sb).valid, "b still holds");
    let hd = cell.handle(c, "/data");
    let attach = Call::SetSequencer(api::SetSequencerRequest { handle: hd, sequencer: Some(sa.clone()), ..Default::default() });
    assert_eq!(code_of(&cell.call(c, attach)), Some(Code::FailedPrecondition), "a stale shared sequencer cannot be attached");
    // A holder whose session ends loses its sequencer too.
    let again = sequencer_of(&cell.acquire(a, ha, api::LockMode::Shared, false));
    assert!(again.lock_generation > sb.lock_generation);
    cell.end(b, true);
    assert!(!cell.state.check_sequencer(&sb).valid, "b's session ended");
    assert!(cell.state.check_sequencer(&again).valid);
    // Exclusive acquisitions still increase the generation.
    assert_eq!(code_of(&release(&mut cell, a, ha)), None);
    let exclusive = sequencer_of(&cell.acquire(c, hc, api::LockMode::Exclusive, false));
    assert!(exclusive.lock_generation > again.lock_generation);
    assert!(!cell.state.check_sequencer(&again).valid);
    assert_eq!(cell.state.check_sequencer(&exclusive).current_lock_generation, exclusive.lock_generation);
}

#[test]
fn any_command_past_a_lock_delay_hands_the_lock_to_its_waiter() {
    let mut cell = Cell::new();
    let (a, b) = (cell.session(), cell.session());
    let ha = handle_of(&cell.open(a, "/lock", true, false, 0, 2_000));
    cell.acquire(a, ha, api::LockMode::Exclusive, false);
    let hb = cell.handle(b, "/lock");
    assert!(is_queued(&cell.acquire(b, hb, api::LockMode::Exclusive, true)));
    cell.end(a, true);
    assert!(cell.state.holding(b, hb).is_none());
    // Not an AdvanceTime: some other command, stamped after the delay.
    cell.now_ms += 2_000;
    cell.session();
    assert!(cell.state.holding(b, hb).is_some(), "the waiter was not stranded");
    assert_eq!(cell.state.next_lock_delay_end_ms(), None);
}

#[test]
fn an_expired_session_loses_ephemerals_and_locks_and_the_lock_waits_out_its_delay() {
    let mut cell = Cell::new();
    let (a, b) = (cell.session(), cell.session());
    let dir = handle_of(&cell.open(b, "/", false, false, EVENT_MASK_ALL, 0));
    let ha = handle_of(&cell.open(a, "/eph", true, true, 0, 5_000));
    let sequencer = sequencer_of(&cell.acquire(a, ha, api::LockMode::Exclusive, false));
    let hb = cell.handle(b, "/lock");
    let hal = handle_of(&cell.open(a, "/lock", false, false, 0, 5_000));
    sequencer_of(&cell.acquire(a, hal, api::LockMode::Exclusive, false));
    assert!(is_queued(&cell.acquire(b, hb, api::LockMode::Exclusive, true)));

    cell.now_ms += 10;
    cell.end(a, true);
    assert!(!cell.state.has_session(a));
    assert!(cell.state.namespace.stat(&Path::parse("/eph").expect("path"), None).is_err(), "ephemeral node deleted");
    assert!(!cell.state.check_sequencer(&sequencer).valid);
    assert!(cell.events(b).contains(&(api::EventKind::ChildRemoved, "/eph".into())));
    // The lock is free but in its lock-delay: the waiter does not get it,
    // nor does anyone trying.
    assert!(cell.state.holding(b, hb).is_none());
    assert_eq!(cell.state.next_lock_delay_end_ms(), Some(1_010 + 5_000));
    cell.now_ms += 4_000;
    cell.apply(Kind::AdvanceTime(wire::AdvanceTime {}));
    assert!(cell.state.holding(b, hb).is_none());
    cell.now_ms += 1_000;
    cell.apply(Kind::AdvanceTime(wire::AdvanceTime {}));
    assert!(cell.state.holding(b, hb).is_some(), "the waiter gets the lock after the delay");
    let _ = dir;
}

#[test]
fn a_closed_session_releases_without_delay() {
    let mut cell = Cell::new();
    let (a, b) = (cell.session(), cell.session());
    let ha = cell.handle(a, "/lock");
    let hb = cell.handle(b, "/lock");
    cell.acquire(a, ha, api::LockMode::Exclusive, false);
    assert!(is_queued(&cell.acquire(b, hb, api::LockMode::Exclusive, true)));
    cell.end(a, false);
    assert!(cell.state.holding(b, hb).is_some());
}

#[test]
fn a_retried_request_number_returns_the_first_answer_without_applying_again() {
    let mut cell = Cell::new();
    let a = cell.session();
    let h = cell.handle(a, "/f");
    let write = |contents: &str| {
        Call::SetContents(api::SetContentsRequest {
            handle: h,
            contents: Bytes::from(contents.to_string()),
            ..Default::default()
        })
    };
    let first = cell.call_numbered(a, 10, write("one"));
    let retry = cell.call_numbered(a, 10, write("one"));
    assert_eq!(first, retry);
    // The same number for a different call is refused with its reason, not
    // answered with the first call's outcome; after a snapshot too.
    for state in [cell.state.clone(), StateMachine::restore(&cell.state.snapshot()).expect("restores")] {
        let mut other = Cell { state, ..cell.clone() };
        let reused = other.call_numbered(a, 10, write("two"));
        assert_eq!(code_of(&reused), Some(Code::FailedPrecondition));
        assert_eq!(reason_of(&reused), api::ErrorReason::RequestNumberReused);
    }
    let (contents, stat) = cell.state.get_contents_and_stat(a, &cell.secret(a), h).expect("read");
    assert_eq!(&contents[..], b"one");
    assert_eq!(stat.content_generation, 2);
    // Older than the window: refused, not applied.
    let highest = 10 + ANSWERS_PER_SESSION_MAX as u64;
    cell.call_numbered(a, highest, write("three"));
    assert_eq!(code_of(&cell.call_numbered(a, 9, write("four"))), Some(Code::FailedPrecondition));
    assert_eq!(&cell.state.get_contents_and_stat(a, &cell.secret(a), h).expect("read").0[..], b"three");
}

#[test]
fn compare_and_set_checks_the_content_generation() {
    let mut cell = Cell::new();
    let a = cell.session();
    let h = cell.handle(a, "/f");
    let cas = |generation| {
        Call::SetContents(api::SetContentsRequest {
            handle: h,
            contents: Bytes::from_static(b"x"),
            if_content_generation: Some(generation),
            ..Default::default()
        })
    };
    assert_eq!(code_of(&cell.call(a, cas(7))), Some(Code::FailedPrecondition));
    assert_eq!(code_of(&cell.call(a, cas(1))), None);
    assert_eq!(code_of(&cell.call(a, cas(1))), Some(Code::FailedPrecondition));
}

#[test]
fn set_sequencer_makes_later_calls_fail_once_the_sequencer_is_stale() {
    let mut cell = Cell::new();
    let (a, b) = (cell.session(), cell.session());
    let ha = cell.handle(a, "/lock");
    let sequencer = sequencer_of(&cell.acquire(a, ha, api::LockMode::Exclusive, false));
    let hb = cell.handle(b, "/data");
    let set = Call::SetSequencer(api::SetSequencerRequest { handle: hb, sequencer: Some(sequencer), ..Default::default() });
    assert_eq!(code_of(&cell.call(b, set.clone())), None);
    assert!(cell.state.get_stat(b, &cell.secret(b), hb).is_ok());
    cell.call(a, Call::Release(api::ReleaseRequest { handle: ha, ..Default::default() }));
    let error = cell.state.get_stat(b, &cell.secret(b), hb).expect_err("stale");
    assert_eq!(Code::from_number(error.code), Some(Code::FailedPrecondition));
    let write = Call::SetContents(api::SetContentsRequest { handle: hb, ..Default::default() });
    assert_eq!(code_of(&cell.call(b, write)), Some(Code::FailedPrecondition));
    // A stale sequencer cannot be attached either.
    let hb2 = cell.handle(b, "/data");
    let stale = Call::SetSequencer(api::SetSequencerRequest {
        handle: hb2,
        sequencer: Some(api::Sequencer { path: "/lock".into(), mode: 1, lock_generation: 1, instance: 2 }),
        ..Default::default()
    });
    assert_eq!(code_of(&cell.call(b, stale)), Some(Code::FailedPrecondition));
}

#[test]
fn events_are_numbered_per_session_and_follow_the_masks() {
    let mut cell = Cell::new();
    let (a, b) = (cell.session(), cell.session());
    let dir = cell.call(a, Call::Open(api::OpenRequest {
        path: "/d".into(),
        create: true,
        kind: api::NodeKind::Directory as i32,
        event_mask: api::EventKind::ChildAdded as u32 | api::EventKind::ChildModified as u32,
        ..Default::default()
    }));
    handle_of(&dir);
    let file = handle_of(&cell.open(b, "/d/f", true, false, api::EventKind::ContentsModified as u32, 0));
    let write = Call::SetContents(api::SetContentsRequest { handle: file, contents: Bytes::from_static(b"v"), ..Default::default() });
    cell.call(b, write);
    assert_eq!(
        cell.events(a),
        vec![(api::EventKind::ChildAdded, "/d/f".into()), (api::EventKind::ChildModified, "/d/f".into())]
    );
    assert_eq!(cell.events(b), vec![(api::EventKind::ContentsModified, "/d/f".into())]);
    let numbers: Vec<u64> = cell.outbox.events_after(a, 0, 10).iter().map(|e| e.number).collect();
    assert_eq!(numbers, vec![1, 2]);
    cell.outbox.acknowledge(a, 1);
    assert_eq!(cell.outbox.events_after(a, 0, 10).len(), 1);
    // A master failover reaches every session.
    cell.apply(Kind::MasterTookOver(wire::MasterTookOver { ballot_round: 2, ballot_replica: 1 }));
    assert_eq!(cell.outbox.events_after(b, 1, 10)[0].kind, api::EventKind::MasterFailover as i32);
    // Deleting the file invalidates b's handle.
    let delete = Call::Delete(api::DeleteRequest { handle: file, ..Default::default() });
    assert_eq!(code_of(&cell.call(b, delete)), None);
    assert!(cell.events(b).contains(&(api::EventKind::HandleInvalid, "/d/f".into())));
    assert_eq!(code_of(&cell.call(b, Call::SetContents(api::SetContentsRequest { handle: file, ..Default::default() }))), Some(Code::FailedPrecondition));
    // A new node at the path is another instance: b's old handle, which
    // asked for its contents' changes, hears nothing of the new one's.
    let heard = cell.events(b).len();
    let new = cell.handle(a, "/d/f");
    let write = Call::SetContents(api::SetContentsRequest { handle: new, contents: Bytes::from_static(b"w"), ..Default::default() });
    assert_eq!(code_of(&cell.call(a, write)), None, "the new node was written");
    assert_eq!(cell.events(b).len(), heard, "{:?}", cell.events(b));
}

#[test]
fn a_handle_is_bound_to_one_instance_of_its_node() {
    let mut cell = Cell::new();
    let a = cell.session();
    let old = cell.handle(a, "/f");
    let other = cell.handle(a, "/f");
    cell.call(a, Call::Delete(api::DeleteRequest { handle: other, ..Default::default() }));
    let new = cell.handle(a, "/f");
    assert!(cell.state.get_stat(a, &cell.secret(a), new).is_ok());
    assert_eq!(Code::from_number(cell.state.get_stat(a, &cell.secret(a), old).expect_err("invalid").code), Some(Code::FailedPrecondition));
}

#[test]
fn bad_commands_fail_with_their_codes_and_change_nothing() {
    let mut cell = Cell::new();
    let a = cell.session();
    let before = cell.state.snapshot();
    let bad_path = cell.open(a, "no/slash", true, false, 0, 0);
    assert_eq!(code_of(&bad_path), Some(Code::InvalidArgument));
    assert_eq!(code_of(&cell.open(a, "/a/../b", true, false, 0, 0)), Some(Code::InvalidArgument));
    assert_eq!(code_of(&cell.open(a, "/x", true, false, 0, LOCK_DELAY_MS_MAX + 1)), Some(Code::InvalidArgument));
    assert_eq!(code_of(&cell.open(a, "/x", true, false, 1 << 20, 0)), Some(Code::InvalidArgument));
    assert_eq!(code_of(&cell.open(a, "/missing/child", true, false, 0, 0)), Some(Code::NotFound));
    assert_eq!(code_of(&cell.open(a, "/nothing", false, false, 0, 0)), Some(Code::NotFound));
    let big = Call::Open(api::OpenRequest {
        path: "/big".into(),
        create: true,
        initial_contents: Bytes::from(vec![0; CONTENTS_BYTES_MAX_FOR_TESTS + 1]),
        ..Default::default()
    });
    assert_eq!(code_of(&cell.call(a, big)), Some(Code::ResourceExhausted));
    let close_one = || Call::Close(api::CloseRequest { handle: 1, ..Default::default() });
    let some_secret = Bytes::from(vec![1; SESSION_SECRET_BYTES]);
    assert_eq!(code_of(&cell.call_with_secret(999, some_secret, 1, close_one())), Some(Code::FailedPrecondition), "no such session");
    assert_eq!(code_of(&cell.call_numbered(999, 1, close_one())), Some(Code::PermissionDenied), "no secret at all");
    assert_eq!(code_of(&cell.call_numbered(a, 0, close_one())), Some(Code::InvalidArgument));
    assert_eq!(code_of(&cell.call(a, Call::Close(api::CloseRequest::default()))), Some(Code::InvalidArgument), "handle 0");
    assert_eq!(code_of(&cell.call(a, Call::Close(api::CloseRequest { handle: 77, ..Default::default() }))), Some(Code::NotFound));
    let empty = wire::Command { now_ms: 0, kind: None, ..Default::default() };
    assert_eq!(code_of(&cell.state.apply(&empty).outcome), Some(Code::InvalidArgument));
    // Failures are remembered for retries, so compare everything but answers.
    let mut after = StateMachine::restore(&cell.state.snapshot()).expect("restores");
    for session in after.sessions.values_mut() {
        session.answers.clear();
        session.highest_request = 0;
    }
    let mut original = StateMachine::restore(&before).expect("restores");
    original.now_ms = after.now_ms;
    assert_eq!(original.snapshot(), after.snapshot());
}

const CONTENTS_BYTES_MAX_FOR_TESTS: usize = crate::limits::CONTENTS_BYTES_MAX;

#[test]
fn a_sessions_owner_is_recorded_kept_in_snapshots_and_bounded() {
    let mut cell = Cell::new();
    let anonymous = cell.session();
    let secret = Bytes::from_static(&[5; 16]);
    let create = wire::CreateSession { client_name: "a".into(), session_secret: secret, owner: "alice".into(), ..Default::default() };
    let Some(wire::outcome::Result::SessionCreated(created)) = cell.apply(Kind::CreateSession(create)).result else {
        panic!("no session for alice");
    };
    assert_eq!(cell.state.session_owner(created.session_id), Some("alice"));
    assert_eq!(cell.state.session_owner(anonymous), Some(""), "a session without TLS has no owner");
    assert_eq!(cell.state.session_owner(999), None);
    let restored = StateMachine::restore(&cell.state.snapshot()).expect("restores");
    assert_eq!(restored.session_owner(created.session_id), Some("alice"), "the owner did not survive the snapshot");
    let long = wire::CreateSession { client_name: "a".into(), session_secret: Bytes::from_static(&[6; 16]), owner: "x".repeat(IDENTITY_BYTES_MAX + 1), ..Default::default() };
    let refused = cell.apply(Kind::CreateSession(long));
    assert!(matches!(refused.result, Some(wire::outcome::Result::Failure(_))), "an owner over the limit was taken: {refused:?}");
}

#[test]
fn a_snapshot_restores_the_same_state_and_refuses_garbage() {
    let mut cell = Cell::new();
    let (a, b) = (cell.session(), cell.session());
    let h = handle_of(&cell.open(a, "/e", true, true, EVENT_MASK_ALL, 2_000));
    cell.acquire(a, h, api::LockMode::Exclusive, false);
    let hb = cell.handle(b, "/e");
    cell.acquire(b, hb, api::LockMode::Shared, true);
    let bytes = cell.state.snapshot();
    let restored = StateMachine::restore(&bytes).expect("restores");
    assert_eq!(restored.snapshot(), bytes);
    assert_eq!(restored.footprint_bytes(), cell.state.footprint_bytes());
    assert!(StateMachine::restore(b"\xff\xff\xff garbage").is_err());
    // A snapshot that decodes but names a node without its parent.
    let mut broken = wire::StateSnapshot::decode(bytes.as_ref()).expect("decodes");
    broken.nodes.retain(|node| node.path != "/");
    assert!(matches!(StateMachine::restore(&broken.encode_to_vec()), Err(SnapshotError::Inconsistent(_))));
}

// -------------------------------------------------------------------------
// Locks and nodes in a hostile world (issue 11, item 7; review F8-F12).
// -------------------------------------------------------------------------

fn release(cell: &mut Cell, session: SessionId, handle: u64) -> Outcome {
    cell.call(session, Call::Release(api::ReleaseRequest { handle, ..Default::default() }))
}

fn delete(cell: &mut Cell, session: SessionId, handle: u64) -> Outcome {
    cell.call(session, Call::Delete(api::DeleteRequest { handle, ..Default::default() }))
}

fn exists(cell: &Cell, path: &str) -> bool {
    cell.state.namespace.stat(&Path::parse(path).expect("path"), None).is_ok()
}

/// Session a holds `/lock` exclusively with a lock-delay of 5 s; session b
/// has a handle on it. Returns (a, a's handle, b, b's handle).
fn held_with_a_lock_delay(cell: &mut Cell) -> (SessionId, u64, SessionId, u64) {
    let (a, b) = (cell.session(), cell.session());
    let ha = handle_of(&cell.open(a, "/lock", true, false, 0, 5_000));
    sequencer_of(&cell.acquire(a, ha, api::LockMode::Exclusive, false));
    let hb = cell.handle(b, "/lock");
    (a, ha, b, hb)
}

#[test]
fn a_running_lock_delay_survives_deleting_and_recreating_the_node() {
    let mut cell = Cell::new();
    let (a, _, b, hb) = held_with_a_lock_delay(&mut cell);
    cell.end(a, true);
    // b deletes the node during the lock-delay and makes a new one.
    assert_eq!(code_of(&delete(&mut cell, b, hb)), None);
    let fresh = cell.handle(b, "/lock");
    cell.now_ms += 4_999;
    assert_eq!(
        code_of(&cell.acquire(b, fresh, api::LockMode::Exclusive, false)),
        Some(Code::FailedPrecondition),
        "the new instance is still in the old holder's lock-delay"
    );
    // The delay survives a snapshot too.
    cell.state = StateMachine::restore(&cell.state.snapshot()).expect("restores");
    assert_eq!(cell.state.next_lock_delay_end_ms(), Some(1_000 + 5_000));
    cell.now_ms += 1;
    cell.apply(Kind::AdvanceTime(wire::AdvanceTime {}));
    sequencer_of(&cell.acquire(b, fresh, api::LockMode::Exclusive, false));
}

#[test]
fn deleting_a_node_another_session_holds_starts_the_holders_lock_delay() {
    let mut cell = Cell::new();
    let (a, _, b, hb) = held_with_a_lock_delay(&mut cell);
    // a is alive (perhaps partitioned, still acting); b deletes its node.
    assert_eq!(code_of(&delete(&mut cell, b, hb)), None);
    let fresh = cell.handle(b, "/lock");
    assert_eq!(code_of(&cell.acquire(b, fresh, api::LockMode::Exclusive, false)), Some(Code::FailedPrecondition));
    cell.now_ms += 5_000;
    sequencer_of(&cell.acquire(b, fresh, api::LockMode::Exclusive, false));
    // A holder that deletes its own node gives the lock up knowingly: no
    // lock-delay.
    let mine = handle_of(&cell.open(a, "/own", true, false, 0, 5_000));
    sequencer_of(&cell.acquire(a, mine, api::LockMode::Exclusive, false));
    assert_eq!(code_of(&delete(&mut cell, a, mine)), None);
    let again = cell.handle(b, "/own");
    sequencer_of(&cell.acquire(b, again, api::LockMode::Exclusive, false));
}

#[test]
fn a_new_master_whose_wall_clock_runs_ahead_does_not_end_a_lock_delay() {
    let mut cell = Cell::new();
    let (a, _, b, hb) = held_with_a_lock_delay(&mut cell);
    let c = cell.session();
    let hc = cell.handle(c, "/lock");
    assert!(is_queued(&cell.acquire(b, hb, api::LockMode::Exclusive, true)));
    cell.end(a, true);
    // The new master's wall clock is an hour ahead; it has no lock-delay
    // clock reading yet (0) when it records its takeover.
    let ahead_ms = cell.now_ms + 3_600_000;
    cell.apply_stamped(ahead_ms, 0, Kind::MasterTookOver(wire::MasterTookOver { ballot_round: 2, ballot_replica: 3 }));
    assert!(cell.state.holding(b, hb).is_none(), "the lock-delay must not end with the new master's wall clock");
    let request = api::AcquireRequest { handle: hc, mode: api::LockMode::Exclusive as i32, ..Default::default() };
    let number = cell.next_request.get(&c).copied().unwrap_or(0) + 1;
    cell.next_request.insert(c, number);
    let secret = cell.secret(c);
    let refused = cell.apply_stamped(
        ahead_ms,
        0,
        Kind::Call(wire::SessionCall { session_id: c, request_number: number, session_secret: secret, call: Some(Call::TryAcquire(request)) }),
    );
    assert_eq!(code_of(&refused), Some(Code::FailedPrecondition));
    // It counts on from the state's lock-delay clock with its own elapsed
    // time; the delay ends when that passes its end, and the clock never
    // goes back for a lower stamp.
    cell.apply_stamped(ahead_ms, 1_000 + 4_999, Kind::AdvanceTime(wire::AdvanceTime {}));
    assert!(cell.state.holding(b, hb).is_none());
    cell.apply_stamped(ahead_ms, 1_000 + 5_000, Kind::AdvanceTime(wire::AdvanceTime {}));
    assert!(cell.state.holding(b, hb).is_some(), "the waiter gets the lock once the lock-delay clock passed its end");
    cell.apply_stamped(ahead_ms, 10, Kind::AdvanceTime(wire::AdvanceTime {}));
    let record = wire::StateSnapshot::decode(cell.state.snapshot().as_ref()).expect("decodes");
    assert_eq!(record.lock_clock_ms, 1_000 + 5_000, "the lock-delay clock never goes back");
    assert_eq!(cell.state.now_ms(), ahead_ms, "user-visible times follow the wall clock");
}

#[test]
fn a_session_is_usable_only_with_its_secret() {
    let mut cell = Cell::new();
    let (a, b) = (cell.session(), cell.session());
    let ha = cell.handle(a, "/lock");
    sequencer_of(&cell.acquire(a, ha, api::LockMode::Exclusive, false));
    let hb = cell.handle(b, "/lock");
    assert!(is_queued(&cell.acquire(b, hb, api::LockMode::Exclusive, true)));
    let release = || Call::Release(api::ReleaseRequest { handle: ha, ..Default::default() });
    let wrong = cell.secret(b);
    // b knows a's id (ids are sequential) but not its secret.
    for secret in [Bytes::new(), wrong.clone(), Bytes::from_static(b"short")] {
        let refused = cell.call_with_secret(a, secret.clone(), 50, release());
        assert_eq!(code_of(&refused), Some(Code::PermissionDenied), "release with {secret:?}");
        let close = cell.apply(Kind::EndSession(wire::EndSession { session_id: a, expired: false, session_secret: secret.clone() }));
        assert_eq!(code_of(&close), Some(Code::PermissionDenied), "close with {secret:?}");
        let cancel = cell.apply(Kind::CancelWait(wire::CancelWait {
            session_id: a,
            handle: ha,
            session_secret: secret.clone(),
            request_number: 2,
            keep_granted: false,
        }));
        assert_eq!(code_of(&cancel), Some(Code::PermissionDenied), "cancel with {secret:?}");
    }
    assert!(cell.state.has_session(a), "a's session was not closed");
    assert!(cell.state.holding(a, ha).is_some(), "a still holds its lock");
    assert!(cell.state.is_waiting(b, hb), "b still waits");
    // A refused call is not remembered: the owner's call with that number
    // runs.
    assert_eq!(code_of(&cell.call_numbered(a, 50, release())), None);
    assert!(cell.state.holding(b, hb).is_some());
    // A session cannot be created without a full secret.
    for secret in [Bytes::new(), Bytes::from(vec![7; 15])] {
        let create = cell.apply(Kind::CreateSession(wire::CreateSession { client_name: "x".into(), session_secret: secret, ..Default::default() }));
        assert_eq!(code_of(&create), Some(Code::InvalidArgument));
    }
    // Secrets are replicated state: a restored state checks them alike.
    cell.state = StateMachine::restore(&cell.state.snapshot()).expect("restores");
    let refused = cell.call_with_secret(b, cell.secret(a), 60, Call::Release(api::ReleaseRequest { handle: hb, ..Default::default() }));
    assert_eq!(code_of(&refused), Some(Code::PermissionDenied));
    assert_eq!(code_of(&cell.end(b, false)), None, "the owner closes its session");
    assert!(!cell.state.has_session(b));
}

#[test]
fn a_cancel_from_a_dropped_wait_releases_a_lock_granted_to_that_wait() {
    let mut cell = Cell::new();
    let (a, b, c) = (cell.session(), cell.session(), cell.session());
    let ha = cell.handle(a, "/lock");
    let hb = cell.handle(b, "/lock");
    let hc = cell.handle(c, "/lock");
    sequencer_of(&cell.acquire(a, ha, api::LockMode::Exclusive, false));
    assert!(is_queued(&cell.acquire(b, hb, api::LockMode::Exclusive, true))); // b's request 2
    assert!(is_queued(&cell.acquire(c, hc, api::LockMode::Exclusive, true)));
    release(&mut cell, a, ha);
    assert!(cell.state.holding(b, hb).is_some(), "granted to b's wait");
    let cancel = |cell: &Cell, request_number, keep_granted| {
        Kind::CancelWait(wire::CancelWait { session_id: b, handle: hb, session_secret: cell.secret(b), request_number, keep_granted })
    };
    // A cancel of another request leaves the grant alone.
    let other = cancel(&cell, 7, false);
    assert_eq!(code_of(&cell.apply(other)), None);
    assert!(cell.state.holding(b, hb).is_some());
    // The call that waited was dropped: nobody will hand b the sequencer,
    // so the cancel gives the lock up in the same command (to c, next).
    let dropped = cancel(&cell, 2, false);
    assert_eq!(cell.apply(dropped), done());
    assert!(cell.state.holding(b, hb).is_none(), "the lock granted to a dropped wait is released");
    assert!(cell.state.holding(c, hc).is_some());
    // A wait whose deadline passed keeps a grant that came just before its
    // cancel, and returns it.
    release(&mut cell, c, hc);
    let hd = cell.handle(a, "/lock");
    sequencer_of(&cell.acquire(a, hd, api::LockMode::Exclusive, false));
    assert!(is_queued(&cell.acquire(b, hb, api::LockMode::Exclusive, true)));
    let number = cell.next_request[&b];
    release(&mut cell, a, hd);
    let kept = cancel(&cell, number, true);
    let granted = cell.apply(kept);
    assert_eq!(sequencer_of(&granted), cell.state.holding(b, hb).expect("kept"));
    // A lock granted at once (no wait) is never released by a cancel: its
    // answer is remembered, and a retry returns it.
    release(&mut cell, b, hb);
    let at_once = cell.acquire(b, hb, api::LockMode::Exclusive, true);
    sequencer_of(&at_once);
    let number = cell.next_request[&b];
    let late = cancel(&cell, number, false);
    cell.apply(late);
    assert!(cell.state.holding(b, hb).is_some());
}

#[test]
fn an_ephemeral_directory_goes_with_its_last_child_after_its_owner_ended() {
    let mut cell = Cell::new();
    let (a, b, watcher) = (cell.session(), cell.session(), cell.session());
    let directory = |path: &str, ephemeral| {
        Call::Open(api::OpenRequest {
            path: path.into(),
            create: true,
            ephemeral,
            kind: api::NodeKind::Directory as i32,
            ..Default::default()
        })
    };
    handle_of(&cell.call(a, directory("/d", true)));
    handle_of(&cell.call(a, directory("/d/e", true)));
    handle_of(&cell.call(a, directory("/p", false)));
    handle_of(&cell.call(a, directory("/p/q", true)));
    let root = handle_of(&cell.open(watcher, "/", false, false, EVENT_MASK_ALL, 0));
    let file = cell.handle(b, "/d/e/f"); // permanent, another session's
    let other = handle_of(&cell.open(b, "/p/q/g", true, true, 0, 0)); // b's ephemeral
    cell.end(a, false);
    assert!(exists(&cell, "/d/e") && exists(&cell, "/d"), "non-empty ephemeral directories stay while they hold nodes");
    assert!(exists(&cell, "/p/q"));
    // The rule is replicated state: it holds after a snapshot round trip.
    cell.state = StateMachine::restore(&cell.state.snapshot()).expect("restores");
    assert_eq!(code_of(&delete(&mut cell, b, file)), None);
    assert!(!exists(&cell, "/d/e"), "/d/e lost its last child and its owner has ended");
    assert!(!exists(&cell, "/d"), "and so did /d");
    assert!(cell.events(watcher).contains(&(api::EventKind::ChildRemoved, "/d".into())), "watchers hear of it");
    // The last child may go with its own session's end.
    let _ = other;
    cell.end(b, true);
    assert!(!exists(&cell, "/p/q"));
    assert!(exists(&cell, "/p"), "a permanent directory stays");
    let _ = root;
}

#[test]
fn restore_refuses_an_unknown_format_version() {
    let mut cell = Cell::new();
    let a = cell.session();
    cell.handle(a, "/f");
    let bytes = cell.state.snapshot();
    let record = wire::StateSnapshot::decode(bytes.as_ref()).expect("decodes");
    assert_eq!(record.format_version, STATE_SNAPSHOT_FORMAT_VERSION, "snapshots are written with their version");
    for version in [0, STATE_SNAPSHOT_FORMAT_VERSION + 1, u32::MAX] {
        let other = wire::StateSnapshot { format_version: version, ..record.clone() };
        match StateMachine::restore(&other.encode_to_vec()) {
            Err(SnapshotError::UnknownVersion { found, .. }) => assert_eq!(found, version),
            other => panic!("version {version} gave {other:?}"),
        }
    }
}

/// A state with something of every kind: sessions, handles, files and
/// directories, ephemerals, exclusive and shared holders, waiters, a
/// running lock-delay, a sequencer attached, remembered answers.
fn rich_cell() -> Cell {
    let mut cell = Cell::new();
    let (a, b, c) = (cell.session(), cell.session(), cell.session());
    cell.call(a, Call::Open(api::OpenRequest { path: "/d".into(), create: true, kind: api::NodeKind::Directory as i32, ..Default::default() }));
    let f = handle_of(&cell.open(a, "/d/f", true, true, EVENT_MASK_ALL, 1_000));
    let seq = sequencer_of(&cell.acquire(a, f, api::LockMode::Exclusive, false));
    let g = cell.handle(b, "/d/f");
    cell.acquire(b, g, api::LockMode::Shared, true);
    let s1 = cell.handle(b, "/s");
    let s2 = cell.handle(c, "/s");
    cell.acquire(b, s1, api::LockMode::Shared, false);
    cell.acquire(c, s2, api::LockMode::Shared, false);
    let x = handle_of(&cell.open(c, "/x", true, false, 0, 3_000));
    cell.acquire(c, x, api::LockMode::Exclusive, false);
    let set = Call::SetSequencer(api::SetSequencerRequest { handle: s2, sequencer: Some(seq), ..Default::default() });
    cell.call(c, set);
    cell.call(b, Call::SetContents(api::SetContentsRequest { handle: g, contents: Bytes::from_static(b"contents"), ..Default::default() }));
    let e = cell.session_as("erin", &["ops", crate::acl::ADMIN_GROUP]);
    let z = api::OpenRequest { path: "/d/z".into(), create: true, acl: Some(acl(&["erin", "group:ops"], &["*"], &[])), ..Default::default() };
    cell.call(e, Call::Open(z));
    let d = cell.session();
    let y = handle_of(&cell.open(d, "/y", true, false, 0, 60_000));
    cell.acquire(d, y, api::LockMode::Exclusive, false);
    cell.end(d, true);
    cell
}

/// Commands that touch every part of a state, to run after a restore.
fn exercise(cell: &mut Cell) {
    let sessions = cell.state.session_ids();
    let fresh = cell.session();
    for session in sessions.iter().copied().chain([fresh]) {
        for path in ["/d/f", "/s", "/x", "/y", "/new"] {
            let handle = match cell.open(session, path, true, false, EVENT_MASK_ALL, 10).result {
                Some(wire::outcome::Result::Opened(opened)) => opened.handle,
                _ => continue,
            };
            cell.acquire(session, handle, api::LockMode::Exclusive, true);
            cell.call(session, Call::SetContents(api::SetContentsRequest { handle, contents: Bytes::from_static(b"z"), ..Default::default() }));
            release(cell, session, handle);
        }
    }
    cell.now_ms = cell.now_ms.saturating_add(70_000);
    cell.apply(Kind::AdvanceTime(wire::AdvanceTime {}));
    cell.apply(Kind::MasterTookOver(wire::MasterTookOver::default()));
    for session in sessions {
        cell.end(session, session % 2 == 0);
    }
    cell.state.snapshot();
}

/// A snapshot whose ephemeral node names a session with no record (its
/// record dropped) is refused as inconsistent, not a panic: `restore` must
/// refuse, as input, everything `check_invariants` asserts. (Found by a
/// review once `check_invariants` began to check ephemerals' owners; the
/// mangling test below drops session records too, but its rich cell's
/// owners hold locks, which `restore` refuses earlier.)
#[test]
fn a_snapshot_with_an_ephemeral_of_a_missing_session_is_refused() {
    let mut cell = Cell::new();
    let owner = cell.session();
    let _other = cell.session();
    let eph = Call::Open(api::OpenRequest { path: "/eph".into(), create: true, ephemeral: true, ..Default::default() });
    let opened = cell.call(owner, eph);
    assert!(code_of(&opened).is_none(), "opened: {opened:?}");
    let mut record = wire::StateSnapshot::decode(cell.state.snapshot().as_ref()).expect("decodes");
    record.sessions.retain(|session| session.id != owner);
    let refused = std::panic::catch_unwind(|| StateMachine::restore(&record.encode_to_vec()));
    match refused {
        Ok(Err(SnapshotError::Inconsistent(why))) => assert!(why.contains("ephemeral"), "{why}"),
        Ok(other) => panic!("not refused as inconsistent: {:?}", other.map(|_| "restored")),
        Err(_) => panic!("restore panicked on a snapshot whose ephemeral's owner is missing"),
    }
}

/// Restore takes any bytes without panicking: random mutations of a real
/// snapshot (bytes flipped, cut, inserted), and structured ones (numbers
/// set to extremes, records dropped or repeated). What it accepts must then
/// apply commands without panicking. `GAIOS_STATE_SEEDS` soaks longer.
#[test]
fn restore_never_panics_on_mangled_snapshots() {
    let cell = rich_cell();
    let original = cell.state.snapshot();
    let record = wire::StateSnapshot::decode(original.as_ref()).expect("decodes");
    let rounds = std::env::var("GAIOS_STATE_SEEDS").ok().and_then(|n| n.parse::<u64>().ok()).unwrap_or(40) * 50;
    let mut accepted = 0;
    for round in 0..rounds {
        let mut rng = Rng(round.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let bytes = if rng.below(3) == 0 { mangle_bytes(&mut rng, &original) } else { mangle_record(&mut rng, &record).encode_to_vec() };
        let result = std::panic::catch_unwind(|| {
            if let Ok(state) = StateMachine::restore(&bytes) {
                let mut restored = Cell::with_state(state);
                restored.state.set_check_after_apply(false);
                restored.now_ms = restored.state.now_ms().saturating_add(1);
                exercise(&mut restored);
                true
            } else {
                false
            }
        });
        match result {
            Ok(true) => accepted += 1,
            Ok(false) => {}
            Err(_) => panic!("round {round}: restore or a later command panicked on a mangled snapshot"),
        }
    }
    assert!(accepted > 0, "some harmless mutations must be accepted (else the test only sees decode errors)");
}

fn mangle_bytes(rng: &mut Rng, original: &[u8]) -> Vec<u8> {
    let mut bytes = original.to_vec();
    match rng.below(4) {
        0 => bytes.truncate(rng.below(bytes.len() as u64 + 1) as usize),
        1 => {
            for _ in 0..=rng.below(8) {
                let at = rng.below(bytes.len() as u64) as usize;
                bytes[at] ^= 1 << rng.below(8);
            }
        }
        2 => {
            let at = rng.below(bytes.len() as u64 + 1) as usize;
            let junk: Vec<u8> = (0..=rng.below(16)).map(|_| rng.next() as u8).collect();
            bytes.splice(at..at, junk);
        }
        _ => bytes = (0..rng.below(256)).map(|_| rng.next() as u8).collect(),
    }
    bytes
}

fn extreme(rng: &mut Rng, current: u64) -> u64 {
    match rng.below(6) {
        0 => 0,
        1 => 1,
        2 => u64::MAX,
        3 => u64::MAX - 1,
        4 => current.wrapping_add(1),
        _ => rng.next(),
    }
}

fn mangle_record(rng: &mut Rng, record: &wire::StateSnapshot) -> wire::StateSnapshot {
    let mut snapshot = record.clone();
    for _ in 0..=rng.below(3) {
        match rng.below(17) {
            15 => {
                let i = rng.below(snapshot.nodes.len() as u64) as usize;
                if let Some(node) = snapshot.nodes.get_mut(i) {
                    let bad = ["", "group:", "a\u{1}b", "*"][rng.below(4) as usize].to_string();
                    match (rng.below(3), node.acl.as_mut()) {
                        (0, _) => node.acl = None,
                        (1, Some(acl)) => acl.read = vec![bad; 1 + rng.below(40) as usize],
                        (_, Some(acl)) => acl.change_acl.push("x".repeat(rng.below(5_000) as usize)),
                        (_, None) => {}
                    }
                }
            }
            16 => {
                let i = rng.below(snapshot.sessions.len() as u64) as usize;
                if let Some(session) = snapshot.sessions.get_mut(i) {
                    let group = ["", "admin", "ops"][rng.below(3) as usize].to_string();
                    session.groups = vec![group; 1 + rng.below(40) as usize];
                }
            }
            0 => snapshot.now_ms = extreme(rng, snapshot.now_ms),
            1 => snapshot.next_instance = extreme(rng, snapshot.next_instance),
            2 => snapshot.next_session = extreme(rng, snapshot.next_session),
            3 => snapshot.last_lock_generation = extreme(rng, snapshot.last_lock_generation),
            4 => snapshot.lock_clock_ms = extreme(rng, snapshot.lock_clock_ms),
            5 => {
                let i = rng.below(snapshot.nodes.len() as u64) as usize;
                if let Some(stat) = snapshot.nodes.get_mut(i).and_then(|n| n.stat.as_mut()) {
                    match rng.below(6) {
                        0 => stat.instance = extreme(rng, stat.instance),
                        1 => stat.content_generation = extreme(rng, stat.content_generation),
                        2 => stat.lock_generation = extreme(rng, stat.lock_generation),
                        3 => stat.ephemeral_owner = extreme(rng, stat.ephemeral_owner),
                        4 => stat.children = extreme(rng, stat.children),
                        _ => stat.acl_generation = extreme(rng, stat.acl_generation),
                    }
                }
            }
            6 => {
                let i = rng.below(snapshot.sessions.len() as u64) as usize;
                if let Some(session) = snapshot.sessions.get_mut(i) {
                    match rng.below(5) {
                        0 => session.id = extreme(rng, session.id),
                        1 => session.next_handle = extreme(rng, session.next_handle),
                        2 => session.last_event = extreme(rng, session.last_event),
                        3 => session.highest_request = extreme(rng, session.highest_request),
                        _ => session.secret = Bytes::from(vec![0; rng.below(20) as usize]),
                    }
                }
            }
            7 => {
                let i = rng.below(snapshot.sessions.len() as u64) as usize;
                if let Some(handle) = snapshot.sessions.get_mut(i).and_then(|s| s.handles.first_mut()) {
                    match rng.below(4) {
                        0 => handle.id = extreme(rng, handle.id),
                        1 => handle.instance = extreme(rng, handle.instance),
                        2 => handle.lock_delay_ms = extreme(rng, handle.lock_delay_ms),
                        _ => handle.event_mask = extreme(rng, u64::from(handle.event_mask)) as u32,
                    }
                }
            }
            8 => {
                let i = rng.below(snapshot.locks.len() as u64) as usize;
                if let Some(lock) = snapshot.locks.get_mut(i) {
                    lock.delay_until_ms = extreme(rng, lock.delay_until_ms);
                    if let Some(holder) = lock.holders.first_mut() {
                        match rng.below(6) {
                            0 => holder.session_id = extreme(rng, holder.session_id),
                            1 => holder.handle = extreme(rng, holder.handle),
                            2 => holder.lock_delay_ms = extreme(rng, holder.lock_delay_ms),
                            3 => holder.lock_generation = extreme(rng, holder.lock_generation),
                            4 => holder.mode = extreme(rng, 0) as i32,
                            _ => holder.request_number = extreme(rng, holder.request_number),
                        }
                    }
                }
            }
            9 => {
                let i = rng.below(snapshot.nodes.len() as u64) as usize;
                snapshot.nodes.remove(i);
            }
            10 => {
                let i = rng.below(snapshot.locks.len() as u64) as usize;
                if i < snapshot.locks.len() {
                    let lock = snapshot.locks[i].clone();
                    snapshot.locks.push(lock);
                }
            }
            11 => {
                // Move a holder to the waiters, or a waiter to the holders.
                let i = rng.below(snapshot.locks.len() as u64) as usize;
                if let Some(lock) = snapshot.locks.get_mut(i) {
                    if let Some(holder) = lock.holders.pop() {
                        lock.waiters.push(holder);
                    } else if let Some(waiter) = lock.waiters.pop() {
                        lock.holders.push(waiter);
                    }
                }
            }
            12 => {
                let i = rng.below(snapshot.nodes.len() as u64) as usize;
                if let Some(node) = snapshot.nodes.get_mut(i) {
                    node.path = ["/", "/d", "/d/f/g", "/a/", "", "x"][rng.below(6) as usize].to_string();
                }
            }
            13 => {
                // A session record dropped, with whatever still names it
                // (ephemeral nodes, lock holders) left behind.
                let i = rng.below(snapshot.sessions.len() as u64) as usize;
                if i < snapshot.sessions.len() {
                    snapshot.sessions.remove(i);
                }
            }
            _ => {
                let i = rng.below(snapshot.sessions.len() as u64) as usize;
                if let Some(answer) = snapshot.sessions.get_mut(i).and_then(|s| s.answers.first_mut()) {
                    answer.request_number = extreme(rng, answer.request_number);
                }
            }
        }
    }
    snapshot
}

/// An ACL of [`ACL_BYTES_MAX`] bytes of entries, the most a node carries.
fn largest_acl() -> api::Acl {
    let width = ACL_BYTES_MAX / (3 * ACL_ENTRIES_MAX) - 1;
    let entry = |list: &str, i: usize| format!("{list}{i:0>width$}");
    let list = |name: &str| (0..ACL_ENTRIES_MAX).map(|i| entry(name, i)).collect::<Vec<_>>();
    let acl = api::Acl { read: list("r"), write: list("w"), change_acl: list("c") };
    let bytes: usize = [&acl.read, &acl.write, &acl.change_acl].iter().flat_map(|l| l.iter()).map(String::len).sum();
    assert!(bytes <= ACL_BYTES_MAX && bytes + 3 * ACL_ENTRIES_MAX > ACL_BYTES_MAX, "{bytes}");
    acl
}

/// Directories whose paths make every node under them about 1 KiB long, so
/// the bound is reached through paths as much as through contents.
fn long_directory(cell: &mut Cell, session: SessionId) -> String {
    let mut path = String::new();
    for letter in ["a", "b", "c"] {
        path = format!("{path}/{}", letter.repeat(255));
        cell.call(session, Call::Open(api::OpenRequest { path: path.clone(), create: true, kind: api::NodeKind::Directory as i32, ..Default::default() }));
    }
    path
}

fn long_path(directory: &str, name: u64) -> String {
    let path = format!("{directory}/{name:0>200}");
    assert!(path.len() <= crate::limits::PATH_BYTES_MAX);
    path
}

fn check_snapshot_bound(cell: &Cell, bound: usize, context: &str) {
    cell.state.check_invariants();
    let bytes = cell.state.snapshot().len();
    assert!(bytes <= bound, "{context}: a snapshot of {bytes} bytes exceeds the stated bound of {bound}");
    assert!(
        bytes <= cell.state.footprint_bytes(),
        "{context}: the snapshot ({bytes} bytes) is larger than the footprint counted ({}): something is not counted",
        cell.state.footprint_bytes()
    );
}

/// Fills a state with a small bound by every route that grows it
/// (sessions, nodes, contents, handles, locks, waiters, sequencers,
/// lock-delays of deleted nodes, remembered answers of failures), then
/// hammers the full state with the calls it still takes (releases, deletes
/// and closes that fail with messages echoing 1 KiB paths), frees some
/// space and fills it again; checks all along that a snapshot never exceeds
/// the bound plus one command's growth, and that the footprint counts
/// everything a snapshot carries.
#[test]
fn the_snapshot_stays_within_its_bound_whatever_fills_the_state() {
    const LIMIT: usize = 256 << 10;
    let bound = LIMIT + COMMAND_GROWTH_BYTES_MAX;
    let seeds = std::env::var("GAIOS_STATE_SEEDS").ok().and_then(|n| n.parse::<u64>().ok()).unwrap_or(3);
    for seed in 0..seeds {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut cell = Cell::with_state(StateMachine::with_state_bytes_max(LIMIT));
        cell.state.set_check_after_apply(false);
        let first = cell.session();
        let directory = long_directory(&mut cell, first);
        let mut handles: Vec<(SessionId, u64)> = Vec::new();
        for name in 0..30 {
            let session = cell.session();
            let open = api::OpenRequest { path: long_path(&directory, name), create: true, lock_delay_ms: 1_000, ..Default::default() };
            handles.push((session, handle_of(&cell.call(session, Call::Open(open)))));
        }
        let mut full_refusals = 0;
        for round in 0..4 {
            let context = format!("seed {seed} round {round}");
            // Grow by every route until the state refuses.
            let mut refused_this_round = 0;
            for step in 0..1_500u64 {
                if refused_this_round >= 20 {
                    break;
                }
                let context = format!("{context} step {step}");
                let outcome = grow_or_churn(&mut cell, &mut rng, &directory, &mut handles, first);
                if code_of(&outcome) == Some(Code::ResourceExhausted) {
                    refused_this_round += 1;
                }
                if step % 10 == 0 {
                    check_snapshot_bound(&cell, bound, &context);
                }
            }
            full_refusals += refused_this_round;
            // Hammer: a full window of failing calls per session.
            let live: Vec<(SessionId, u64)> = handles.iter().copied().filter(|(s, _)| cell.state.has_session(*s)).collect();
            for (session, handle) in live {
                for _ in 0..ANSWERS_PER_SESSION_MAX {
                    match rng.below(3) {
                        0 => release(&mut cell, session, handle),
                        1 => delete(&mut cell, session, handle + 1_000),
                        _ => cell.call(session, Call::Close(api::CloseRequest { handle: handle + 1_000, ..Default::default() })),
                    };
                }
            }
            check_snapshot_bound(&cell, bound, &format!("{context} after the failing calls"));
            // Free some space: sessions end (a lock-delay may stay behind
            // for their locks), nodes are deleted.
            for _ in 0..10 {
                let Some(&(session, handle)) = handles.get(rng.below(handles.len() as u64) as usize) else { break };
                if rng.below(2) == 0 && session != first {
                    cell.end(session, true);
                } else {
                    delete(&mut cell, session, handle);
                }
            }
            check_snapshot_bound(&cell, bound, &format!("{context} after freeing"));
        }
        assert!(full_refusals > 0, "seed {seed}: the state never filled up, so the bound was not tested");
    }
}

/// One random step of the fill test: a session, a node, contents, a lock
/// or a wait, a sequencer, a cancel, a delete or an expiry, or time.
fn grow_or_churn(cell: &mut Cell, rng: &mut Rng, directory: &str, handles: &mut Vec<(SessionId, u64)>, first: SessionId) -> Outcome {
    let sessions = cell.state.session_ids();
    let session = sessions[rng.below(sessions.len() as u64) as usize];
    let name = rng.below(400);
    let picked = handles.get(rng.below(handles.len() as u64) as usize).copied();
    match rng.below(10) {
        0 => {
            cell.sessions_created += 1;
            let secret = Bytes::from(vec![cell.sessions_created as u8; 16]);
            let create = wire::CreateSession { client_name: "n".repeat(CLIENT_NAME_BYTES_MAX), session_secret: secret.clone(), ..Default::default() };
            let outcome = cell.apply(Kind::CreateSession(create));
            if let Some(wire::outcome::Result::SessionCreated(created)) = &outcome.result {
                cell.secrets.insert(created.session_id, secret);
            }
            outcome
        }
        1 | 2 => {
            let open = api::OpenRequest {
                path: long_path(directory, name),
                create: rng.below(4) != 0,
                ephemeral: rng.below(3) == 0,
                initial_contents: Bytes::from(vec![b'c'; rng.below(4_096) as usize]),
                lock_delay_ms: rng.below(3) * 1_000,
                acl: (rng.below(3) == 0).then(largest_acl),
                ..Default::default()
            };
            let outcome = cell.call(session, Call::Open(open));
            if let Some(wire::outcome::Result::Opened(opened)) = &outcome.result {
                handles.push((session, opened.handle));
            }
            outcome
        }
        3..=6 => {
            let Some((owner, handle)) = picked else { return done() };
            match rng.below(7) {
                6 => cell.set_acl(owner, handle, largest_acl(), None),
                0 => {
                    let contents = Bytes::from(vec![b'w'; rng.below(32 << 10) as usize]);
                    cell.call(owner, Call::SetContents(api::SetContentsRequest { handle, contents, ..Default::default() }))
                }
                1..=3 => {
                    let mode = if rng.below(2) == 0 { api::LockMode::Exclusive } else { api::LockMode::Shared };
                    cell.acquire(owner, handle, mode, rng.below(3) != 0)
                }
                4 => {
                    let sequencer = cell.state.holding(owner, handle).unwrap_or_else(|| api::Sequencer {
                        path: long_path(directory, name),
                        mode: 1,
                        ..Default::default()
                    });
                    let set = api::SetSequencerRequest { handle, sequencer: Some(sequencer), ..Default::default() };
                    cell.call(owner, Call::SetSequencer(set))
                }
                _ => {
                    let cancel = wire::CancelWait {
                        session_id: owner,
                        handle,
                        session_secret: cell.secret(owner),
                        request_number: cell.next_request.get(&owner).copied().unwrap_or(0),
                        keep_granted: rng.below(2) == 0,
                    };
                    cell.apply(Kind::CancelWait(cancel))
                }
            }
        }
        7 => {
            let Some((owner, handle)) = picked else { return done() };
            delete(cell, owner, handle)
        }
        8 => cell.open(session, &long_path(&format!("{directory}/missing"), name), false, false, 0, 0),
        _ if session != first && rng.below(3) == 0 => cell.end(session, rng.below(2) == 0),
        _ => {
            cell.now_ms += rng.below(3) * 700;
            cell.apply(Kind::AdvanceTime(wire::AdvanceTime {}))
        }
    }
}

/// The real bound: a cell filled to [`STATE_BYTES_MAX`] with large files,
/// with locks on long paths taken before, and then hammered with failing
/// calls that a full cell still takes, snapshots within
/// [`SNAPSHOT_BYTES_MAX`], below the peer transport's message limit.
#[test]
fn a_full_cell_snapshots_within_the_bound_and_a_peer_message() {
    let mut cell = Cell::new();
    cell.state.set_check_after_apply(false);
    let first = cell.session();
    let directory = long_directory(&mut cell, first);
    let mut waiting = Vec::new();
    for i in 0..400 {
        let session = cell.session();
        let held = handle_of(&cell.open(session, &long_path(&directory, i), true, false, 0, 60_000));
        sequencer_of(&cell.acquire(session, held, api::LockMode::Exclusive, false));
        let other = handle_of(&cell.open(session, &long_path(&directory, i), false, false, 0, 0));
        waiting.push((session, other));
    }
    let big = Bytes::from(vec![b'x'; crate::limits::CONTENTS_BYTES_MAX]);
    let mut files = 0;
    loop {
        let open = api::OpenRequest { path: format!("/big-{files}"), create: true, initial_contents: big.clone(), ..Default::default() };
        match code_of(&cell.call(first, Call::Open(open))) {
            None => files += 1,
            Some(Code::ResourceExhausted) => break,
            other => panic!("filling: {other:?}"),
        }
    }
    assert!(files > 100, "filled with {files} files");
    // A full cell still takes releases, deletes and closes; these fail
    // (the handles hold nothing), with messages that echo 1 KiB paths.
    for &(session, handle) in &waiting {
        for _ in 0..ANSWERS_PER_SESSION_MAX {
            release(&mut cell, session, handle);
        }
    }
    check_snapshot_bound(&cell, SNAPSHOT_BYTES_MAX, "a full cell");
}

// -------------------------------------------------------------------------
// The model.
// -------------------------------------------------------------------------

/// A tiny deterministic generator (xorshift64*), so seeds replay.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// What the model keeps: files only (at fixed paths under the root), with
/// contents and generation; locks as holder lists and FIFO queues; sessions
/// with handles; a lock-delay per path (it outlives the file); the
/// generation of every grant; the sequencers handed out so far.
#[derive(Default)]
struct Model {
    files: BTreeMap<String, (Vec<u8>, u64, Option<SessionId>)>,
    sessions: BTreeMap<SessionId, BTreeMap<u64, (String, bool)>>, // handle -> (path, valid)
    exclusive: BTreeMap<String, (SessionId, u64)>,
    shared: BTreeMap<String, BTreeSet<(SessionId, u64)>>,
    queue: BTreeMap<String, VecDeque<(SessionId, u64, bool)>>, // (session, handle, exclusive)
    delay_until: BTreeMap<String, u64>,
    lock_delay: BTreeMap<(SessionId, u64), u64>,
    generations: u64,
    /// The generation of each holder's grant.
    granted: BTreeMap<(SessionId, u64), u64>,
    /// Sequencers seen (the newest few), with whom they were issued to.
    sequencers: VecDeque<(api::Sequencer, SessionId, u64)>,
}

impl Model {
    fn free_for(&self, path: &str, exclusive: bool) -> bool {
        let shared_empty = self.shared.get(path).is_none_or(BTreeSet::is_empty);
        !self.exclusive.contains_key(path) && (!exclusive || shared_empty)
    }

    fn serve(&mut self, path: &str, now: u64) {
        if self.delay_until.get(path).is_some_and(|&until| now < until) {
            return;
        }
        self.delay_until.remove(path);
        while let Some(&(session, handle, exclusive)) = self.queue.get(path).and_then(VecDeque::front) {
            if !self.free_for(path, exclusive) {
                break;
            }
            self.queue.get_mut(path).map(VecDeque::pop_front);
            self.grant(path, session, handle, exclusive);
        }
    }

    fn grant(&mut self, path: &str, session: SessionId, handle: u64, exclusive: bool) {
        // Every grant, shared too, takes the next generation.
        self.generations += 1;
        self.granted.insert((session, handle), self.generations);
        if exclusive {
            self.exclusive.insert(path.to_string(), (session, handle));
        } else {
            self.shared.entry(path.to_string()).or_default().insert((session, handle));
        }
    }

    fn involved(&self, path: &str, who: (SessionId, u64)) -> bool {
        self.exclusive.get(path) == Some(&who)
            || self.shared.get(path).is_some_and(|s| s.contains(&who))
            || self.queue.get(path).is_some_and(|q| q.iter().any(|&(s, h, _)| (s, h) == who))
    }

    /// The file at `path` was deleted by `deleter`: holders and waiters
    /// lose the lock; holders from other sessions start their lock-delay;
    /// a running lock-delay stays with the path.
    fn node_deleted(&mut self, path: &str, deleter: Option<SessionId>, now: u64) {
        let mut holders: Vec<(SessionId, u64)> = self.exclusive.remove(path).into_iter().collect();
        holders.extend(self.shared.remove(path).unwrap_or_default());
        for who in holders {
            let delay = self.lock_delay.get(&who).copied().unwrap_or(0);
            if Some(who.0) != deleter && delay > 0 {
                let until = self.delay_until.entry(path.to_string()).or_insert(0);
                *until = (*until).max(now + delay);
            }
        }
        self.queue.remove(path);
        self.files.remove(path);
        for handles in self.sessions.values_mut() {
            for (p, valid) in handles.values_mut() {
                if p == path {
                    *valid = false;
                }
            }
        }
    }
}

const PATHS: [&str; 3] = ["/a", "/b", "/c"];

/// Runs one seed: random commands to both the state machine and the model,
/// comparing every outcome's kind and the observable state after each.
fn run_model_seed(seed: u64, steps: usize) {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut cell = Cell::new();
    let mut model = Model::default();
    let mut history: Vec<(SessionId, u64, Call, Outcome)> = Vec::new();
    for step in 0..steps {
        let context = format!("seed {seed} step {step}");
        let sessions: Vec<SessionId> = model.sessions.keys().copied().collect();
        let pick_session = |rng: &mut Rng| sessions[rng.below(sessions.len() as u64) as usize];
        let choice = if sessions.is_empty() { 0 } else { rng.below(12) };
        match choice {
            0 => {
                let id = cell.session();
                model.sessions.insert(id, BTreeMap::new());
            }
            1 => {
                let session = pick_session(&mut rng);
                let expired = rng.below(2) == 0;
                cell.end(session, expired);
                let handles = model.sessions.remove(&session).unwrap_or_default();
                let now = cell.state.lock_clock_ms();
                for (&handle, (path, _)) in &handles {
                    let who = (session, handle);
                    if let Some(q) = model.queue.get_mut(path) {
                        q.retain(|&(s, _, _)| s != session);
                    }
                    let held = model.exclusive.get(path) == Some(&who) || model.shared.get(path).is_some_and(|s| s.contains(&who));
                    if held {
                        if model.exclusive.get(path) == Some(&who) {
                            model.exclusive.remove(path);
                        }
                        if let Some(s) = model.shared.get_mut(path) {
                            s.remove(&who);
                        }
                        let delay = model.lock_delay.get(&who).copied().unwrap_or(0);
                        if expired && delay > 0 {
                            let until = model.delay_until.entry(path.clone()).or_insert(0);
                            *until = (*until).max(now + delay);
                        }
                    }
                }
                for path in PATHS {
                    model.serve(path, now);
                }
                let owned: Vec<String> =
                    model.files.iter().filter(|(_, f)| f.2 == Some(session)).map(|(p, _)| p.clone()).collect();
                for path in owned {
                    model.node_deleted(&path, Some(session), now);
                }
            }
            2 | 3 => {
                let session = pick_session(&mut rng);
                let path = PATHS[rng.below(3) as usize];
                let create = rng.below(4) != 0;
                let ephemeral = rng.below(3) == 0;
                let delay = rng.below(3) * 1_000;
                let outcome = cell.open(session, path, create, ephemeral, 0, delay);
                let exists = model.files.contains_key(path);
                if exists || create {
                    let handle = handle_of(&outcome);
                    if !exists {
                        model.files.insert(path.to_string(), (Vec::new(), 1, ephemeral.then_some(session)));
                    }
                    model.sessions.entry(session).or_default().insert(handle, (path.to_string(), true));
                    model.lock_delay.insert((session, handle), delay);
                } else {
                    assert_eq!(code_of(&outcome), Some(Code::NotFound), "{context}");
                }
            }
            4..=9 => {
                let session = pick_session(&mut rng);
                let handles: Vec<(u64, String, bool)> =
                    model.sessions[&session].iter().map(|(&h, (p, v))| (h, p.clone(), *v)).collect();
                if handles.is_empty() {
                    continue;
                }
                let (handle, path, valid) = handles[rng.below(handles.len() as u64) as usize].clone();
                let who = (session, handle);
                let now = cell.state.lock_clock_ms();
                let (call, expect_ok) = match choice {
                    4 => {
                        let contents = rng.next().to_le_bytes().to_vec();
                        let condition = (rng.below(2) == 0).then(|| rng.below(3) + 1);
                        let current = model.files.get(&path).map(|f| f.1);
                        let ok = valid && condition.is_none_or(|g| Some(g) == current);
                        if ok
                            && let Some(file) = model.files.get_mut(&path) {
                                file.0.clone_from(&contents);
                                file.1 += 1;
                            }
                        let request = api::SetContentsRequest {
                            handle,
                            contents: Bytes::from(contents),
                            if_content_generation: condition,
                            ..Default::default()
                        };
                        (Call::SetContents(request), ok)
                    }
                    5 | 6 => {
                        let exclusive = rng.below(3) != 0;
                        let wait = choice == 6;
                        let mode = if exclusive { api::LockMode::Exclusive } else { api::LockMode::Shared };
                        let delayed = model.delay_until.get(&path).is_some_and(|&until| now < until);
                        let queue_empty = model.queue.get(&path).is_none_or(VecDeque::is_empty);
                        let ok = if !valid || model.involved(&path, who) {
                            false
                        } else if !delayed && queue_empty && model.free_for(&path, exclusive) {
                            model.grant(&path, session, handle, exclusive);
                            true
                        } else if wait {
                            model.queue.entry(path.clone()).or_default().push_back((session, handle, exclusive));
                            true
                        } else {
                            false
                        };
                        let request = api::AcquireRequest { handle, mode: mode as i32, ..Default::default() };
                        (if wait { Call::Acquire(request) } else { Call::TryAcquire(request) }, ok)
                    }
                    7 => {
                        let held = model.exclusive.get(&path) == Some(&who) || model.shared.get(&path).is_some_and(|s| s.contains(&who));
                        if held {
                            if model.exclusive.get(&path) == Some(&who) {
                                model.exclusive.remove(&path);
                            }
                            if let Some(s) = model.shared.get_mut(&path) {
                                s.remove(&who);
                            }
                            model.serve(&path, now);
                        }
                        (Call::Release(api::ReleaseRequest { handle, ..Default::default() }), held)
                    }
                    8 => {
                        let held = model.exclusive.get(&path) == Some(&who) || model.shared.get(&path).is_some_and(|s| s.contains(&who));
                        if held {
                            if model.exclusive.get(&path) == Some(&who) {
                                model.exclusive.remove(&path);
                            }
                            if let Some(s) = model.shared.get_mut(&path) {
                                s.remove(&who);
                            }
                        }
                        if let Some(q) = model.queue.get_mut(&path) {
                            q.retain(|&(s, h, _)| (s, h) != who);
                        }
                        model.serve(&path, now);
                        model.sessions.get_mut(&session).map(|h| h.remove(&handle));
                        (Call::Close(api::CloseRequest { handle, ..Default::default() }), true)
                    }
                    _ => {
                        let ok = valid && model.files.contains_key(&path);
                        if ok {
                            model.node_deleted(&path, Some(session), now);
                        }
                        (Call::Delete(api::DeleteRequest { handle, ..Default::default() }), ok)
                    }
                };
                let number = cell.next_request.get(&session).copied().unwrap_or(0) + 1;
                let outcome = cell.call(session, call.clone());
                assert_eq!(code_of(&outcome).is_none(), expect_ok, "{context}: {call:?} gave {outcome:?}");
                history.push((session, number, call, outcome));
            }
            10 => {
                // Time passes; lock-delays may run out.
                cell.now_ms += rng.below(3) * 1_000;
                cell.apply(Kind::AdvanceTime(wire::AdvanceTime {}));
                let now = cell.state.lock_clock_ms();
                for path in PATHS {
                    model.serve(path, now);
                }
            }
            _ => {
                // A retry of an earlier request returns its first answer and
                // changes nothing; a call with another session's secret is
                // refused and changes nothing; or a reboot from a snapshot.
                let pick = rng.below(3);
                if pick == 2 && !history.is_empty() {
                    let (session, number, call, _) = history[rng.below(history.len() as u64) as usize].clone();
                    let other = sessions[rng.below(sessions.len() as u64) as usize];
                    if other != session && cell.state.has_session(session) {
                        let before = cell.state.snapshot();
                        let stolen = cell.secret(other);
                        let refused = cell.call_with_secret(session, stolen, number + 1_000, call);
                        assert_eq!(code_of(&refused), Some(Code::PermissionDenied), "{context}: another session's secret");
                        assert_eq!(cell.state.snapshot(), before, "{context}: a refused call changed the state");
                    }
                } else if pick == 0 && !history.is_empty() {
                    let (session, number, call, first) = history[rng.below(history.len() as u64) as usize].clone();
                    let window = ANSWERS_PER_SESSION_MAX as u64;
                    let live = cell.state.has_session(session);
                    let recent = cell.next_request.get(&session).is_some_and(|&n| n < number + window);
                    if live && recent {
                        let before = cell.state.snapshot();
                        assert_eq!(cell.call_numbered(session, number, call), first, "{context}: retry");
                        assert_eq!(cell.state.snapshot(), before, "{context}: a retry changed the state");
                    }
                } else {
                    cell.state = StateMachine::restore(&cell.state.snapshot()).expect("restores");
                    cell.outbox.retain_open(&cell.state);
                }
            }
        }
        record_sequencers(&cell.state, &mut model);
        check_against_model(&cell.state, &model, &context);
        cell.state.check_invariants();
    }
}

/// Notes the sequencer of every holding the model knows (the newest 64).
fn record_sequencers(state: &StateMachine, model: &mut Model) {
    let holders: Vec<(SessionId, u64)> =
        model.exclusive.values().copied().chain(model.shared.values().flatten().copied()).collect();
    for (session, handle) in holders {
        if let Some(sequencer) = state.holding(session, handle)
            && !model.sequencers.iter().any(|(seen, _, _)| *seen == sequencer)
        {
            model.sequencers.push_back((sequencer, session, handle));
            if model.sequencers.len() > 64 {
                model.sequencers.pop_front();
            }
        }
    }
}

fn check_against_model(state: &StateMachine, model: &Model, context: &str) {
    assert_eq!(state.session_ids(), model.sessions.keys().copied().collect::<Vec<_>>(), "{context}: sessions");
    for path in PATHS {
        let parsed = Path::parse(path).expect("path");
        match (state.namespace.get_contents_and_stat(&parsed, None), model.files.get(path)) {
            (Ok((contents, stat)), Some((expected, generation, owner))) => {
                assert_eq!(&contents[..], &expected[..], "{context}: contents of {path}");
                assert_eq!(stat.content_generation, *generation, "{context}: generation of {path}");
                assert_eq!(stat.ephemeral_owner, *owner, "{context}: owner of {path}");
            }
            (Err(_), None) => {}
            (found, expected) => panic!("{context}: {path} is {found:?}, model says {expected:?}"),
        }
        let mut holders: Vec<(SessionId, u64, bool, u64)> = state
            .locks
            .holders(&parsed)
            .into_iter()
            .map(|h| (h.holder.session, h.holder.handle, h.mode == LockMode::Exclusive, h.lock_generation))
            .collect();
        holders.sort_unstable();
        let generation = |s: SessionId, h: u64| model.granted.get(&(s, h)).copied().unwrap_or(0);
        let mut expected: Vec<(SessionId, u64, bool, u64)> =
            model.exclusive.get(path).map(|&(s, h)| (s, h, true, generation(s, h))).into_iter().collect();
        expected.extend(model.shared.get(path).into_iter().flatten().map(|&(s, h)| (s, h, false, generation(s, h))));
        expected.sort_unstable();
        assert_eq!(holders, expected, "{context}: holders of {path} (with their grants' generations)");
        // Lock-delays belong to the path, whether or not the file exists.
        let now = state.lock_clock_ms();
        let running = state.locks.records().into_iter().find(|r| r.path == parsed).map(|r| r.delay_until_ms).filter(|&u| u > now);
        let expected_delay = model.delay_until.get(path).copied().filter(|&u| u > now);
        assert_eq!(running, expected_delay, "{context}: lock-delay of {path}");
    }
    assert_eq!(state.locks.last_lock_generation(), model.generations, "{context}: lock generations handed out");
    // A sequencer is current exactly while the holding it was issued for
    // lasts, shared ones included.
    for (sequencer, session, handle) in &model.sequencers {
        let exclusive = sequencer.mode == api::LockMode::Exclusive as i32;
        let who = (*session, *handle);
        let holds = if exclusive {
            model.exclusive.get(&sequencer.path) == Some(&who)
        } else {
            model.shared.get(&sequencer.path).is_some_and(|s| s.contains(&who))
        };
        let expected = holds && model.granted.get(&who) == Some(&sequencer.lock_generation);
        assert_eq!(state.check_sequencer(sequencer).valid, expected, "{context}: validity of {sequencer:?}");
    }
    // The derived counters agree with a recount.
    let recount: usize = state.sessions.values().map(Session::footprint_bytes).sum();
    assert_eq!(state.sessions_bytes, recount, "{context}: session footprint");
    assert_eq!(state.handles_total, state.sessions.values().map(|s| s.handles.len()).sum::<usize>(), "{context}");
}

/// `GAIOS_STATE_SEEDS=n` runs more seeds (a soak); `GAIOS_STATE_SEED=s` one.
#[test]
fn the_state_machine_agrees_with_a_simple_model() {
    let seeds: Vec<u64> = match std::env::var("GAIOS_STATE_SEED") {
        Ok(seed) => vec![seed.parse().expect("GAIOS_STATE_SEED is a number")],
        Err(_) => {
            let count = std::env::var("GAIOS_STATE_SEEDS").ok().and_then(|n| n.parse().ok()).unwrap_or(40);
            (0..count).collect()
        }
    };
    for seed in seeds {
        run_model_seed(seed, 400);
    }
}

/// Two replicas that apply the same commands hold the same state, whatever
/// else happened to them (one restored from a snapshot midway).
#[test]
fn replicas_applying_the_same_log_agree() {
    let mut one = Cell::new();
    let a = one.session();
    let h = one.handle(a, "/x");
    one.acquire(a, h, api::LockMode::Exclusive, false);
    let log: Vec<wire::Command> = (0..50)
        .map(|i| wire::Command {
            now_ms: 2_000 + i,
            kind: Some(Kind::Call(wire::SessionCall {
                session_id: a,
                request_number: 100 + i,
                session_secret: one.secret(a),
                call: Some(Call::SetContents(api::SetContentsRequest {
                    handle: h,
                    contents: Bytes::from(format!("v{i}")),
                    ..Default::default()
                })),
            })),
            ..Default::default()
        })
        .collect();
    let mut two = StateMachine::restore(&one.state.snapshot()).expect("restores");
    for (i, command) in log.iter().enumerate() {
        assert_eq!(one.state.apply(command), two.apply(command));
        if i == 25 {
            two = StateMachine::restore(&two.snapshot()).expect("restores");
        }
    }
    assert!(one.state.same_replicated_state(&two));
}


fn acl(read: &[&str], write: &[&str], change_acl: &[&str]) -> api::Acl {
    let list = |entries: &[&str]| entries.iter().map(|e| e.to_string()).collect();
    api::Acl { read: list(read), write: list(write), change_acl: list(change_acl) }
}

fn stat_after_acl(outcome: &Outcome) -> api::Stat {
    match &outcome.result {
        Some(wire::outcome::Result::AclSet(set)) => set.stat.expect("a stat"),
        other => panic!("the ACL was not set: {other:?}"),
    }
}

fn assert_denied(outcome: &Outcome, what: &str) {
    assert_eq!(code_of(outcome), Some(Code::PermissionDenied), "{what}: {outcome:?}");
    assert_eq!(reason_of(outcome), api::ErrorReason::AclDenied, "{what}");
}

fn assert_allowed(outcome: &Outcome, what: &str) {
    assert_eq!(code_of(outcome), None, "{what}: {outcome:?}");
}

/// Each ACL name allows and denies the calls the `Acl` docs give it, for
/// identities, groups, `*`, anonymous sessions and the cell-admin group;
/// a new node takes its parent's ACL unless given one; a conditional
/// `SetAcl` needs the current ACL generation; and all of it survives a
/// snapshot.
#[test]
fn acls_allow_and_deny_each_call_by_identity_group_and_admin() {
    let mut cell = Cell::new();
    let root_admin = cell.session_as("root", &[crate::acl::ADMIN_GROUP]);
    let alice = cell.session_as("alice", &[]);
    let bob = cell.session_as("bob", &["ops"]);
    let anonymous = cell.session();
    // The root starts open to anyone; the admin narrows it: anyone reads,
    // alice and group ops write, nobody but admins changes the ACL.
    let root = cell.handle(root_admin, "/");
    let narrowed = stat_after_acl(&cell.set_acl(root_admin, root, acl(&["*"], &["alice", "group:ops"], &[]), Some(1)));
    assert_eq!(narrowed.acl_generation, 2, "the ACL generation moves on by one");

    // Creating needs write on the parent: alice and bob (through ops) may,
    // the anonymous session may not. The new node inherits the root's ACL.
    let open = |path: &str| api::OpenRequest { path: path.into(), create: true, ..Default::default() };
    let shared = handle_of(&cell.call(alice, Call::Open(open("/shared"))));
    assert_allowed(&cell.call(bob, Call::Open(open("/bob"))), "bob creates through group ops");
    assert_denied(&cell.call(anonymous, Call::Open(open("/anon"))), "an anonymous create");
    assert!(!exists(&cell, "/anon"));
    let inherited = cell.state.get_acl(alice, &cell.secret(alice), shared).expect("alice reads the ACL");
    assert_eq!(inherited.0, acl(&["*"], &["alice", "group:ops"], &[]), "a new node takes its parent's ACL");
    assert_eq!(inherited.1.acl_generation, 1, "a new node starts at ACL generation 1");

    // A creator may give the new node its own ACL instead.
    let private = api::OpenRequest { acl: Some(acl(&["alice"], &["alice"], &["alice"])), ..open("/private") };
    let private = handle_of(&cell.call(alice, Call::Open(private)));
    let secret = |cell: &Cell, s| cell.secret(s);
    // Opening an existing node needs some permission on it, and read when
    // it asks for events beyond the ones always delivered.
    let plain = |path: &str, mask| api::OpenRequest { path: path.into(), event_mask: mask, ..Default::default() };
    assert_denied(&cell.call(bob, Call::Open(plain("/private", 0))), "bob has no permission on /private");
    let admin_private = handle_of(&cell.call(root_admin, Call::Open(plain("/private", EVENT_MASK_ALL))));
    cell.state.get_contents_and_stat(root_admin, &secret(&cell, root_admin), admin_private).expect("an admin reads anything");
    assert_denied(&cell.call(anonymous, Call::Open(plain("/private", 0))), "no permission for anonymous");
    assert_allowed(&cell.call(anonymous, Call::Open(plain("/shared", EVENT_MASK_ALL))), "* lets anonymous read /shared");
    let bob_shared = handle_of(&cell.call(bob, Call::Open(plain("/shared", api::EventKind::ContentsModified as u32))));

    // Read: GetContentsAndStat, GetStat, ReadDir, GetAcl.
    cell.set_acl(alice, private, acl(&["alice"], &["alice", "bob"], &["alice"]), None);
    let bob_private = handle_of(&cell.call(bob, Call::Open(plain("/private", api::EventKind::HandleInvalid as u32))));
    let failure = |result: Result<(), wire::Failure>| refused(result.expect_err("refused"));
    assert_denied(&failure(cell.state.get_contents_and_stat(bob, &secret(&cell, bob), bob_private).map(|_| ())), "bob reads /private");
    assert_denied(&failure(cell.state.get_stat(bob, &secret(&cell, bob), bob_private).map(|_| ())), "bob stats /private");
    assert_denied(&failure(cell.state.get_acl(bob, &secret(&cell, bob), bob_private).map(|_| ())), "bob reads /private's ACL");
    assert_denied(&cell.call(bob, Call::Open(plain("/private", api::EventKind::ContentsModified as u32))), "events need read");
    cell.state.get_stat(bob, &secret(&cell, bob), bob_shared).expect("anyone reads /shared");
    let bob_root = handle_of(&cell.call(bob, Call::Open(plain("/", 0))));
    cell.state.read_dir(bob, &secret(&cell, bob), bob_root, 0, "").expect("anyone lists the root");

    // Write: SetContents and the lock; bob has write on /private now.
    let write = |handle| Call::SetContents(api::SetContentsRequest { handle, contents: Bytes::from_static(b"x"), ..Default::default() });
    assert_allowed(&cell.call(bob, write(bob_private)), "bob writes /private");
    assert_allowed(&cell.acquire(bob, bob_private, api::LockMode::Exclusive, false), "bob locks /private");
    release(&mut cell, bob, bob_private);
    cell.set_acl(alice, private, acl(&["alice", "bob"], &["alice"], &["alice"]), None);
    assert_denied(&cell.call(bob, write(bob_private)), "bob writes /private without write");
    assert_denied(&cell.acquire(bob, bob_private, api::LockMode::Shared, true), "bob waits for /private's lock without write");
    assert!(!cell.state.is_waiting(bob, bob_private), "a denied acquire does not wait");
    cell.state.get_contents_and_stat(bob, &secret(&cell, bob), bob_private).expect("bob reads /private now");

    // Change-ACL: only alice (and admins); a stale generation is refused.
    assert_denied(&cell.set_acl(bob, bob_private, acl(&["*"], &["*"], &["*"]), None), "bob changes /private's ACL");
    let current = cell.state.get_stat(alice, &secret(&cell, alice), private).expect("stat").acl_generation;
    let stale = cell.set_acl(alice, private, acl(&["alice"], &["alice"], &["alice"]), Some(current - 1));
    assert_eq!(reason_of(&stale), api::ErrorReason::AclGenerationMismatch, "{stale:?}");
    assert_eq!(code_of(&stale), Some(Code::FailedPrecondition));
    let after = stat_after_acl(&cell.set_acl(alice, private, acl(&["alice"], &["alice"], &["alice"]), Some(current)));
    assert_eq!(after.acl_generation, current + 1);
    // GetAcl needs read or change-ACL: alice, with only change-ACL, reads it.
    cell.set_acl(alice, private, acl(&[], &[], &["alice"]), None);
    cell.state.get_acl(alice, &secret(&cell, alice), private).expect("change-ACL is enough to read the ACL");
    assert_denied(&failure(cell.state.get_stat(alice, &secret(&cell, alice), private).map(|_| ())), "alice without read");
    stat_after_acl(&cell.set_acl(root_admin, admin_private, acl(&["alice"], &["alice"], &["alice"]), None));

    // Delete needs write on the parent: bob (ops) may delete /shared, the
    // anonymous session could not even open it.
    let before_snapshot = cell.state.snapshot();
    assert_allowed(&delete(&mut cell, bob, bob_shared), "bob deletes /shared through group ops");
    cell.set_acl(root_admin, root, acl(&["*"], &["alice"], &[]), None);
    let bob_again = handle_of(&cell.call(bob, Call::Open(plain("/bob", 0))));
    assert_denied(&delete(&mut cell, bob, bob_again), "bob deletes /bob without write on the root");
    assert!(exists(&cell, "/bob"));

    // ACLs and groups survive a snapshot; the restored state judges alike.
    let restored = StateMachine::restore(&before_snapshot).expect("restores");
    assert_eq!(restored.snapshot(), before_snapshot);
    let mut again = Cell::with_state(restored);
    again.secrets = cell.secrets.clone();
    again.next_request = cell.next_request.clone();
    assert_denied(&again.call(bob, Call::Open(plain("/private", 0))), "bob on /private after a restore");
    assert_allowed(&again.call(bob, Call::Open(open("/after-restore"))), "bob's group survives the restore");
}

fn refused(failure: wire::Failure) -> Outcome {
    Outcome { result: Some(wire::outcome::Result::Failure(failure)) }
}

/// A snapshot written before ACLs (format version 1: no ACLs, no groups)
/// restores with `*` in every list of every node, which is what that
/// version enforced; a version 2 node without an ACL is refused.
#[test]
fn a_snapshot_from_before_acls_restores_with_open_acls() {
    let cell = rich_cell();
    let mut record = wire::StateSnapshot::decode(cell.state.snapshot().as_ref()).expect("decodes");
    record.format_version = STATE_SNAPSHOT_FORMAT_VERSION_BEFORE_ACLS;
    for node in &mut record.nodes {
        node.acl = None;
    }
    for session in &mut record.sessions {
        session.groups.clear();
    }
    let restored = StateMachine::restore(&record.encode_to_vec()).expect("a version 1 snapshot restores");
    for node in wire::StateSnapshot::decode(restored.snapshot().as_ref()).expect("decodes").nodes {
        assert_eq!(node.acl, Some(crate::acl::Acl::open().to_proto()), "{}", node.path);
    }
    let mut missing = wire::StateSnapshot::decode(cell.state.snapshot().as_ref()).expect("decodes");
    missing.nodes[0].acl = None;
    assert!(matches!(StateMachine::restore(&missing.encode_to_vec()), Err(SnapshotError::Inconsistent(_))));
}

/// The rules a review of the ACLs added: a stat shows a session without
/// read permission only which node it is; a creator asking for events needs
/// read on the new node's ACL; an ACL given for a node that exists with
/// another one is refused; nobody but an administrator takes away their own
/// change-ACL permission; a waiter that loses write stops waiting (a holder
/// keeps its lock); delete needs write on the parent, not on the node; a
/// sequencer check does not tell another instance's lock generation.
#[test]
fn acl_rules_for_stats_events_existing_nodes_lockout_waiters_and_deletes() {
    let mut cell = Cell::new();
    let admin = cell.session_as("root", &[crate::acl::ADMIN_GROUP]);
    let alice = cell.session_as("alice", &[]);
    let bob = cell.session_as("bob", &[]);
    let create = |path: &str, acl: Option<api::Acl>, mask: u32| api::OpenRequest { path: path.into(), create: true, acl, event_mask: mask, ..Default::default() };
    let stat_of = |outcome: &Outcome| match &outcome.result {
        Some(wire::outcome::Result::Opened(opened)) => opened.stat.expect("a stat"),
        other => panic!("not opened: {other:?}"),
    };
    // A stat without read permission.
    let contents = api::OpenRequest { initial_contents: Bytes::from_static(b"hunter2"), ..create("/secret", Some(acl(&["alice"], &["alice", "bob"], &["alice"])), 0) };
    let full = stat_of(&cell.call(alice, Call::Open(contents)));
    assert_eq!(full.checksum, crate::namespace::checksum(b"hunter2"));
    let bobs = cell.call(bob, Call::Open(api::OpenRequest { path: "/secret".into(), ..Default::default() }));
    let reduced = stat_of(&bobs);
    assert_eq!((reduced.instance, reduced.kind, reduced.acl_generation), (full.instance, full.kind, full.acl_generation));
    assert_eq!((reduced.checksum, reduced.contents_bytes, reduced.content_generation, reduced.modified_ms), (0, 0, 0, 0), "{reduced:?}");

    // Events on a created node need read on its ACL.
    let drop_box = acl(&["alice"], &["alice", "bob"], &["alice"]);
    handle_of(&cell.call(alice, Call::Open(api::OpenRequest { kind: api::NodeKind::Directory as i32, ..create("/drop", Some(drop_box), 0) })));
    assert_denied(&cell.call(bob, Call::Open(create("/drop/d", None, EVENT_MASK_ALL))), "bob's events on a node he cannot read");
    assert!(!exists(&cell, "/drop/d"), "a refused create created nothing");
    assert_allowed(&cell.call(bob, Call::Open(create("/drop/d", None, api::EventKind::HandleInvalid as u32))), "bob creates without events");

    // An ACL given for an existing node with another ACL is refused.
    let other = cell.call(bob, Call::Open(create("/secret", Some(acl(&["bob"], &["bob"], &["bob"])), 0)));
    assert_eq!(code_of(&other), Some(Code::AlreadyExists), "{other:?}");
    let same = create("/secret", Some(acl(&["alice"], &["alice", "bob"], &["alice"])), 0);
    assert_allowed(&cell.call(bob, Call::Open(same)), "the same ACL: the node is as asked");

    // Nobody but an administrator takes their own change-ACL away.
    let secret = handle_of(&cell.open(alice, "/secret", false, false, 0, 0));
    let lockout = cell.set_acl(alice, secret, acl(&["alice"], &["alice"], &[]), None);
    assert_eq!(code_of(&lockout), Some(Code::InvalidArgument), "{lockout:?}");
    let admins = handle_of(&cell.open(admin, "/secret", false, false, 0, 0));
    stat_after_acl(&cell.set_acl(admin, admins, acl(&["alice"], &["alice", "bob"], &[]), None));
    stat_after_acl(&cell.set_acl(admin, admins, acl(&["alice"], &["alice", "bob"], &["alice"]), None));

    // A waiter that loses write stops waiting; the holder keeps the lock.
    let bob_secret = handle_of(&bobs);
    sequencer_of(&cell.acquire(alice, secret, api::LockMode::Exclusive, false));
    assert!(is_queued(&cell.acquire(bob, bob_secret, api::LockMode::Exclusive, true)));
    stat_after_acl(&cell.set_acl(alice, secret, acl(&["alice"], &["alice"], &["alice"]), None));
    assert!(!cell.state.is_waiting(bob, bob_secret), "bob still waits without write");
    assert!(cell.state.holding(alice, secret).is_some(), "alice keeps her lock");
    release(&mut cell, alice, secret);
    assert!(cell.state.holding(bob, bob_secret).is_none(), "bob got the lock after losing write");

    // Delete needs write on the parent, not on the node.
    let d = handle_of(&cell.open(bob, "/drop/d", false, false, 0, 0));
    let admins_d = handle_of(&cell.open(admin, "/drop/d", false, false, 0, 0));
    stat_after_acl(&cell.set_acl(admin, admins_d, acl(&[], &[], &["root"]), None));
    assert_allowed(&delete(&mut cell, bob, d), "write on /drop is enough to delete in it");
    let root = handle_of(&cell.open(admin, "/", false, false, 0, 0));
    stat_after_acl(&cell.set_acl(admin, root, acl(&["*"], &["alice"], &[]), None));
    assert_denied(&delete(&mut cell, bob, bob_secret), "write on /secret is not enough: the root's write list has no bob");

    // A sequencer of another instance does not learn the lock generation.
    let sequencer = api::Sequencer { path: "/secret".into(), mode: api::LockMode::Exclusive as i32, lock_generation: 1, instance: full.instance + 1000 };
    assert_eq!(cell.state.check_sequencer(&sequencer).current_lock_generation, 0);
    let current = api::Sequencer { instance: full.instance, ..sequencer };
    assert!(cell.state.check_sequencer(&current).current_lock_generation > 0);
}

/// Restore refuses what a snapshot of its version cannot hold: groups or
/// ACLs in a version 1 snapshot.
#[test]
fn a_version_1_snapshot_with_groups_or_acls_is_refused() {
    let cell = rich_cell();
    let record = wire::StateSnapshot::decode(cell.state.snapshot().as_ref()).expect("decodes");
    let v1 = |record: &wire::StateSnapshot| wire::StateSnapshot { format_version: STATE_SNAPSHOT_FORMAT_VERSION_BEFORE_ACLS, ..record.clone() };
    let mut with_groups = v1(&record);
    for node in &mut with_groups.nodes {
        node.acl = None;
    }
    assert!(with_groups.sessions.iter().any(|s| !s.groups.is_empty()), "the rich cell has a session with groups");
    assert!(matches!(StateMachine::restore(&with_groups.encode_to_vec()), Err(SnapshotError::Inconsistent(_))));
    let mut with_acls = v1(&record);
    for session in &mut with_acls.sessions {
        session.groups.clear();
    }
    assert!(matches!(StateMachine::restore(&with_acls.encode_to_vec()), Err(SnapshotError::Inconsistent(_))));
}

/// Every `FAILED_PRECONDITION` the state machine gives carries a reason a
/// program can match on: a file where a directory is needed and the other
/// way round, a release or a sequencer of a lock the handle does not hold,
/// and a second request for a lock the handle holds.
#[test]
fn failed_preconditions_say_why() {
    let mut cell = Cell::new();
    let a = cell.session();
    let file = cell.handle(a, "/f");
    let dir_open = api::OpenRequest { path: "/d".into(), create: true, kind: api::NodeKind::Directory as i32, ..Default::default() };
    let dir = handle_of(&cell.call(a, Call::Open(dir_open)));

    let under_file = cell.open(a, "/f/child", true, false, 0, 0);
    assert_eq!(code_of(&under_file), Some(Code::FailedPrecondition), "{under_file:?}");
    assert_eq!(reason_of(&under_file), api::ErrorReason::NotADirectory, "{under_file:?}");
    let listed = cell.state.read_dir(a, &cell.secret(a), file, 0, "").expect_err("a file has no children");
    assert_eq!(api::ErrorReason::try_from(listed.reason), Ok(api::ErrorReason::NotADirectory), "{listed:?}");

    let written = cell.call(a, Call::SetContents(api::SetContentsRequest { handle: dir, contents: Bytes::from_static(b"x"), ..Default::default() }));
    assert_eq!(code_of(&written), Some(Code::FailedPrecondition), "{written:?}");
    assert_eq!(reason_of(&written), api::ErrorReason::IsADirectory, "{written:?}");

    let released = release(&mut cell, a, file);
    assert_eq!(code_of(&released), Some(Code::FailedPrecondition), "{released:?}");
    assert_eq!(reason_of(&released), api::ErrorReason::LockNotHeld, "{released:?}");
    let no_sequencer = cell.state.get_sequencer(a, &cell.secret(a), file).expect_err("no lock, no sequencer");
    assert_eq!(api::ErrorReason::try_from(no_sequencer.reason), Ok(api::ErrorReason::LockNotHeld), "{no_sequencer:?}");

    sequencer_of(&cell.acquire(a, file, api::LockMode::Exclusive, false));
    let again = cell.acquire(a, file, api::LockMode::Exclusive, false);
    assert_eq!(code_of(&again), Some(Code::FailedPrecondition), "{again:?}");
    assert_eq!(reason_of(&again), api::ErrorReason::LockAlreadyRequested, "{again:?}");
}
