//! Tests of the state machine: scenarios for each rule, then a seeded
//! property test against a simple model (with snapshot-and-restore as one of
//! the operations and retries of earlier requests).

use super::*;
use wire::command::Kind;
use wire::session_call::Call;

/// Builds commands with a clock that moves only when told.
struct Cell {
    state: StateMachine,
    now_ms: u64,
    next_request: BTreeMap<SessionId, u64>,
}

impl Cell {
    fn new() -> Self {
        Cell { state: StateMachine::new(), now_ms: 1_000, next_request: BTreeMap::new() }
    }

    fn apply(&mut self, kind: Kind) -> Outcome {
        let command = wire::Command { proposer_incarnation: 7, proposal_number: 1, now_ms: self.now_ms, kind: Some(kind) };
        // Every command also survives a trip through its encoding.
        let decoded = wire::Command::decode(command.encode_to_vec().as_slice()).expect("decodes");
        self.state.apply(&decoded)
    }

    fn session(&mut self) -> SessionId {
        match self.apply(Kind::CreateSession(wire::CreateSession { client_name: "test".into() })).result {
            Some(wire::outcome::Result::SessionCreated(created)) => created.session_id,
            other => panic!("no session: {other:?}"),
        }
    }

    fn call(&mut self, session: SessionId, call: Call) -> Outcome {
        let number = self.next_request.entry(session).or_insert(0);
        *number += 1;
        let request_number = *number;
        self.call_numbered(session, request_number, call)
    }

    fn call_numbered(&mut self, session: SessionId, request_number: u64, call: Call) -> Outcome {
        self.apply(Kind::Call(wire::SessionCall { session_id: session, request_number, call: Some(call) }))
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
        self.state
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

fn code_of(outcome: &Outcome) -> Option<Code> {
    match &outcome.result {
        Some(wire::outcome::Result::Failure(failure)) => Some(Code::from_i32(failure.code)),
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
fn shared_holders_coexist_and_keep_the_generation() {
    let mut cell = Cell::new();
    let (a, b, c) = (cell.session(), cell.session(), cell.session());
    let ha = cell.handle(a, "/f");
    let hb = cell.handle(b, "/f");
    let hc = cell.handle(c, "/f");
    let sa = sequencer_of(&cell.acquire(a, ha, api::LockMode::Shared, false));
    let sb = sequencer_of(&cell.acquire(b, hb, api::LockMode::Shared, false));
    // The first shared grant took the lock from free to held; the second
    // joined it and shares its generation.
    assert_eq!((sa.lock_generation, sb.lock_generation), (1, 1));
    assert_eq!(code_of(&cell.acquire(c, hc, api::LockMode::Exclusive, false)), Some(Code::FailedPrecondition));
    assert!(cell.state.check_sequencer(&sa).valid);
    // Once the lock was free in between, an old shared sequencer is stale.
    cell.call(a, Call::Release(api::ReleaseRequest { handle: ha, ..Default::default() }));
    cell.call(b, Call::Release(api::ReleaseRequest { handle: hb, ..Default::default() }));
    let again = sequencer_of(&cell.acquire(a, ha, api::LockMode::Shared, false));
    assert_eq!(again.lock_generation, 2);
    assert!(!cell.state.check_sequencer(&sb).valid);
}

#[test]
fn any_command_past_a_lock_delay_hands_the_lock_to_its_waiter() {
    let mut cell = Cell::new();
    let (a, b) = (cell.session(), cell.session());
    let ha = handle_of(&cell.open(a, "/lock", true, false, 0, 2_000));
    cell.acquire(a, ha, api::LockMode::Exclusive, false);
    let hb = cell.handle(b, "/lock");
    assert!(is_queued(&cell.acquire(b, hb, api::LockMode::Exclusive, true)));
    cell.apply(Kind::EndSession(wire::EndSession { session_id: a, expired: true }));
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
    cell.apply(Kind::EndSession(wire::EndSession { session_id: a, expired: true }));
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
    cell.apply(Kind::EndSession(wire::EndSession { session_id: a, expired: false }));
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
    let retry = cell.call_numbered(a, 10, write("two"));
    assert_eq!(first, retry);
    let (contents, stat) = cell.state.get_contents_and_stat(a, h).expect("read");
    assert_eq!(&contents[..], b"one");
    assert_eq!(stat.content_generation, 2);
    // Older than the window: refused, not applied.
    let highest = 10 + ANSWERS_PER_SESSION_MAX as u64;
    cell.call_numbered(a, highest, write("three"));
    assert_eq!(code_of(&cell.call_numbered(a, 9, write("four"))), Some(Code::FailedPrecondition));
    assert_eq!(&cell.state.get_contents_and_stat(a, h).expect("read").0[..], b"three");
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
    assert!(cell.state.get_stat(b, hb).is_ok());
    cell.call(a, Call::Release(api::ReleaseRequest { handle: ha, ..Default::default() }));
    let error = cell.state.get_stat(b, hb).expect_err("stale");
    assert_eq!(Code::from_i32(error.code), Code::FailedPrecondition);
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
    let numbers: Vec<u64> = cell.state.events_after(a, 0, 10).iter().map(|e| e.number).collect();
    assert_eq!(numbers, vec![1, 2]);
    cell.state.acknowledge_events(a, 1);
    assert_eq!(cell.state.events_after(a, 0, 10).len(), 1);
    // A master failover reaches every session.
    cell.apply(Kind::MasterTookOver(wire::MasterTookOver { ballot_round: 2, ballot_replica: 1 }));
    assert_eq!(cell.state.events_after(b, 1, 10)[0].kind, api::EventKind::MasterFailover as i32);
    // Deleting the file invalidates b's handle.
    let delete = Call::Delete(api::DeleteRequest { handle: file, ..Default::default() });
    assert_eq!(code_of(&cell.call(b, delete)), None);
    assert!(cell.events(b).contains(&(api::EventKind::HandleInvalid, "/d/f".into())));
    assert_eq!(code_of(&cell.call(b, Call::SetContents(api::SetContentsRequest { handle: file, ..Default::default() }))), Some(Code::FailedPrecondition));
}

#[test]
fn a_handle_is_bound_to_one_instance_of_its_node() {
    let mut cell = Cell::new();
    let a = cell.session();
    let old = cell.handle(a, "/f");
    let other = cell.handle(a, "/f");
    cell.call(a, Call::Delete(api::DeleteRequest { handle: other, ..Default::default() }));
    let new = cell.handle(a, "/f");
    assert!(cell.state.get_stat(a, new).is_ok());
    assert_eq!(Code::from_i32(cell.state.get_stat(a, old).expect_err("invalid").code), Code::FailedPrecondition);
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
    assert_eq!(code_of(&cell.call_numbered(999, 1, Call::Close(api::CloseRequest::default()))), Some(Code::FailedPrecondition));
    assert_eq!(code_of(&cell.call_numbered(a, 0, Call::Close(api::CloseRequest::default()))), Some(Code::InvalidArgument));
    assert_eq!(code_of(&cell.call(a, Call::Close(api::CloseRequest { handle: 77, ..Default::default() }))), Some(Code::NotFound));
    let empty = wire::Command { now_ms: 0, kind: None, ..Default::default() };
    assert_eq!(code_of(&cell.state.apply(&empty)), Some(Code::InvalidArgument));
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

const CONTENTS_BYTES_MAX_FOR_TESTS: usize = crate::namespace::CONTENTS_BYTES_MAX;

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
/// with handles; a lock-delay per lock.
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
        let was_free = !self.exclusive.contains_key(path) && self.shared.get(path).is_none_or(BTreeSet::is_empty);
        if exclusive || was_free {
            self.generations += 1;
        }
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

    fn drop_lock_of(&mut self, path: &str) {
        self.exclusive.remove(path);
        self.shared.remove(path);
        self.queue.remove(path);
        self.delay_until.remove(path);
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
                cell.apply(Kind::EndSession(wire::EndSession { session_id: session, expired }));
                let handles = model.sessions.remove(&session).unwrap_or_default();
                let now = cell.state.now_ms();
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
                    model.files.remove(&path);
                    model.drop_lock_of(&path);
                    for handles in model.sessions.values_mut() {
                        for (p, valid) in handles.values_mut() {
                            if *p == path {
                                *valid = false;
                            }
                        }
                    }
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
                let now = cell.state.now_ms();
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
                            model.files.remove(&path);
                            model.drop_lock_of(&path);
                            for handles in model.sessions.values_mut() {
                                for (p, v) in handles.values_mut() {
                                    if *p == path {
                                        *v = false;
                                    }
                                }
                            }
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
                let now = cell.state.now_ms();
                for path in PATHS {
                    model.serve(path, now);
                }
            }
            _ => {
                // A retry of an earlier request returns its first answer and
                // changes nothing; or a reboot from a snapshot.
                if rng.below(2) == 0 && !history.is_empty() {
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
                    let outbox = cell.state.outbox.clone();
                    cell.state = StateMachine::restore(&cell.state.snapshot()).expect("restores");
                    cell.state.outbox = outbox;
                }
            }
        }
        check_against_model(&cell.state, &model, &context);
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
        let mut holders: Vec<(SessionId, u64, bool)> = state
            .locks
            .holders(&parsed)
            .into_iter()
            .map(|(h, mode)| (h.session, h.handle, mode == LockMode::Exclusive))
            .collect();
        holders.sort_unstable();
        let mut expected: Vec<(SessionId, u64, bool)> = model.exclusive.get(path).map(|&(s, h)| (s, h, true)).into_iter().collect();
        expected.extend(model.shared.get(path).into_iter().flatten().map(|&(s, h)| (s, h, false)));
        expected.sort_unstable();
        assert_eq!(holders, expected, "{context}: holders of {path}");
    }
    assert_eq!(state.last_lock_generation, model.generations, "{context}: lock generations handed out");
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
