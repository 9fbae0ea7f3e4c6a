//! The client library against a real five-process cell: jeopardy and grace
//! when the master is paused, expiry after the grace period, a leader cut
//! off from the cell told to stop before another candidate leads, the
//! default lock-delay, fencing with sequencers, the election recipe and
//! handle events; and a master paused in the middle of its work, with no
//! quorum left, expires no session for the time it could not serve.
//!
//! The cells here run with `--session-lease-ms 2000` so leases, jeopardy
//! and expiry play out in seconds; tests run one at a time.

// One cell at a time: the guard is held for the whole test on purpose.
#![allow(clippy::await_holding_lock)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gaios_client::{Client, Error, ErrorReason, EventKind, Fence, FenceError, LockMode, LockState, OpenOptions, Options, SessionState, election};
use gaios_tests::proxy::{Link, LinkMode};
use gaios_tests::*;
use tokio_stream::StreamExt as _;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn addresses(cell: &Cell) -> Vec<String> {
    cell.members.iter().map(|m| m.client.to_string()).collect()
}

async fn ready(cell: &Cell) -> u64 {
    let all: Vec<usize> = (0..REPLICAS as usize).collect();
    match wait_for_master(cell, &all, FIRST_MASTER_DEADLINE).await {
        Some((master, _)) => master,
        None => panic!("no master\n{}", cell.logs()),
    }
}

fn options(grace: Duration) -> Options {
    Options {
        grace_period: grace,
        attempt_timeout: Duration::from_secs(1),
        call_deadline: Duration::from_secs(20),
        client_name: "client-test".into(),
        learn_members: true,
        tls: None,
    }
}

/// Waits for the session to reach `wanted`, recording every state seen.
async fn wait_state(
    states: &mut tokio::sync::watch::Receiver<SessionState>,
    seen: &mut Vec<SessionState>,
    wanted: SessionState,
    deadline: Duration,
) -> bool {
    let until = Instant::now() + deadline;
    loop {
        let now = *states.borrow_and_update();
        if seen.last() != Some(&now) {
            seen.push(now);
        }
        if now == wanted {
            return true;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || tokio::time::timeout(left, states.changed()).await.is_err() {
            return false;
        }
    }
}

/// Pauses the master and two followers (no quorum is left, so no new
/// master can be elected) and returns their indexes.
fn pause_majority(cell: &Cell, master: u64) -> Vec<usize> {
    let mut paused = vec![cell.index_of(master)];
    paused.extend((0..REPLICAS as usize).filter(|&i| cell.members[i].id != master).take(2));
    for &index in &paused {
        cell.signal(index, libc::SIGSTOP);
    }
    paused
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_pause_brings_jeopardy_then_safe_and_the_lock_is_kept() {
    let _serial = serial();
    let cell = Cell::start_with(&["--session-lease-ms", "2000"]);
    let master = ready(&cell).await;
    let client = Client::connect(&addresses(&cell), options(Duration::from_secs(15))).await.expect("connect");
    let mut states = client.session_state();
    let file = client.open("/lock", OpenOptions::new().create()).await.expect("open");
    let lock = file.acquire(LockMode::Exclusive, Duration::from_secs(5)).await.expect("lock");

    let paused = pause_majority(&cell, master);
    let mut seen = Vec::new();
    let jeopardy = wait_state(&mut states, &mut seen, SessionState::Jeopardy, Duration::from_secs(10)).await;
    // The lock is at risk as soon as the session is in jeopardy.
    let at_risk = tokio::time::timeout(Duration::from_secs(1), lock.at_risk()).await.is_ok();
    let state_in_jeopardy = lock.state();
    tokio::time::sleep(Duration::from_secs(2)).await; // well inside the 15 s grace period
    for &index in &paused {
        cell.signal(index, libc::SIGCONT);
    }
    assert!(jeopardy, "no jeopardy while no master could answer: {seen:?}\n{}", cell.logs());
    assert!(at_risk, "the lock's at_risk() did not resolve in jeopardy");
    assert_eq!(state_in_jeopardy, LockState::AtRisk);
    let recovered = tokio::time::timeout(Duration::from_secs(15), lock.recovered()).await;
    assert_eq!(recovered, Ok(true), "the risk passed with the lock kept\n{}", cell.logs());
    let safe = wait_state(&mut states, &mut seen, SessionState::Safe, Duration::from_secs(15)).await;
    assert!(safe, "not safe again after the pause: {seen:?}\n{}", cell.logs());
    assert_eq!(seen, vec![SessionState::Safe, SessionState::Jeopardy, SessionState::Safe]);
    assert_eq!(lock.state(), LockState::Held);
    assert!(!lock.is_lost());
    assert!(client.check_sequencer(lock.sequencer()).await.expect("check"), "the lock is still held");
    lock.release().await.expect("release");
}

/// How many driver turns of replica `id` its log reports as slow with at
/// least `ms` milliseconds (`slow driver turn turn_ms=...`).
fn turns_of_at_least(cell: &Cell, id: u64, ms: u64) -> usize {
    let log = std::fs::read_to_string(cell.log_path(id)).unwrap_or_default();
    log.lines()
        .filter_map(|line| line.split_once("slow driver turn turn_ms=")?.1.split_whitespace().next()?.parse::<u64>().ok())
        .filter(|&turn_ms| turn_ms >= ms)
        .count()
}

/// The master paused in the middle of a turn, with two followers, for longer
/// than the session lease. Writers keep it busy, so a SIGSTOP mostly lands
/// while its driver persists or applies, after it read the clock and before
/// its master's duties ran. No master could answer a KeepAlive meanwhile,
/// so once resumed it must not expire the sessions whose lease ran out in
/// the pause (with its lease of before the pause, on the clock of after it):
/// they get a fresh lease, and the lock holder keeps its lock. At least
/// three pauses of 3 s each (the session lease is 2 s), more until one cut
/// a turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_paused_in_the_middle_of_its_work_expires_no_session_for_it() {
    let _serial = serial();
    let cell = Cell::start_with(&["--session-lease-ms", "2000"]);
    ready(&cell).await;
    let holder = Client::connect(&addresses(&cell), options(Duration::from_secs(20))).await.expect("connect");
    let file = holder.open("/kept", OpenOptions::new().create()).await.expect("open");
    let lock = file.acquire(LockMode::Exclusive, Duration::from_secs(5)).await.expect("lock");

    let writer = Arc::new(Client::connect(&addresses(&cell), options(Duration::from_secs(20))).await.expect("connect"));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..8 {
        let (writer, stop) = (writer.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let Ok(busy) = writer.open(&format!("/busy-{w}"), OpenOptions::new().create()).await else { return 0 };
            let mut written = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match busy.set_contents(written.to_be_bytes().to_vec(), None).await {
                    Ok(_) => written += 1,
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
            written
        }));
    }

    let mut masters = std::collections::BTreeSet::new();
    // A pause lands in the middle of a turn by chance (the driver also
    // waits between turns): after the third round, go on pausing (up to
    // PAUSES_MAX) until one did, so that the test cannot pass without
    // having tried what it names.
    const PAUSES_MAX: usize = 8;
    let cut_turns = |masters: &std::collections::BTreeSet<u64>| -> usize { masters.iter().map(|&id| turns_of_at_least(&cell, id, 2_500)).sum() };
    for round in 0..PAUSES_MAX {
        if round >= 3 && cut_turns(&masters) >= 1 {
            break;
        }
        let master = ready(&cell).await;
        masters.insert(master);
        tokio::time::sleep(Duration::from_millis(500)).await; // the writers are at work
        let paused = pause_majority(&cell, master);
        tokio::time::sleep(Duration::from_secs(3)).await;
        for &index in &paused {
            cell.signal(index, libc::SIGCONT);
        }
        let recovered = tokio::time::timeout(Duration::from_secs(15), lock.recovered()).await;
        assert_eq!(recovered, Ok(true), "round {round}: the session was expired for a pause of its master\n{}", cell.logs());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut written = 0;
    for task in writers {
        written += task.await.expect("writer");
    }
    assert!(written > 0, "the writers wrote nothing: the master was never busy");
    // At least one pause landed in the middle of a turn: the paused master
    // logged a turn of about the pause's length (else the test proved
    // nothing; the writers make it the common case).
    assert!(cut_turns(&masters) >= 1, "no pause landed in the middle of a master's turn in {PAUSES_MAX} pauses\n{}", cell.logs());
    assert!(holder.check_sequencer(lock.sequencer()).await.expect("check"), "the lock is still held");
    lock.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_longer_than_the_grace_period_expires_the_session_and_loses_the_lock() {
    let _serial = serial();
    let cell = Cell::start_with(&["--session-lease-ms", "2000"]);
    let master = ready(&cell).await;
    let client = Client::connect(&addresses(&cell), options(Duration::from_secs(2))).await.expect("connect");
    let mut states = client.session_state();
    let file = client.open("/lock", OpenOptions::new().create()).await.expect("open");
    let lock = file.acquire(LockMode::Exclusive, Duration::from_secs(5)).await.expect("lock");

    let paused = pause_majority(&cell, master);
    let mut seen = Vec::new();
    let expired = wait_state(&mut states, &mut seen, SessionState::Expired, Duration::from_secs(15)).await;
    let lost = tokio::time::timeout(Duration::from_secs(1), lock.lost()).await.is_ok();
    for &index in &paused {
        cell.signal(index, libc::SIGCONT);
    }
    assert!(expired, "the session did not expire: {seen:?}\n{}", cell.logs());
    assert_eq!(seen, vec![SessionState::Safe, SessionState::Jeopardy, SessionState::Expired]);
    assert!(lost && lock.is_lost(), "the guard is lost with the session");
    assert_eq!(file.stat().await.expect_err("the session is over"), Error::SessionExpired);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_cell_is_told_to_stop_before_another_candidate_leads() {
    let _serial = serial();
    let cell = Cell::start_with(&["--session-lease-ms", "2000"]);
    let master = ready(&cell).await;
    // Alice reaches the cell only through a fault proxy's link to the
    // master (her only address, and she learns no others, so neither a
    // redirect nor a learned member can go around it).
    let link = Link::start(cell.members[cell.index_of(master)].client).await.expect("a proxy link");
    let behind_a_proxy = Options { learn_members: false, ..options(Duration::from_secs(30)) };
    let alice = Client::connect(&[link.address().to_string()], behind_a_proxy).await.expect("alice connects");
    let bob = Client::connect(&addresses(&cell), options(Duration::from_secs(30))).await.expect("bob connects");
    // No lock-delay: nothing but the lease's drift margin stands between
    // Alice's jeopardy and Bob's lead.
    let first = election::campaign_with_lock_delay(&alice, "/svc", "alice", Duration::ZERO).await.expect("alice leads");
    let first = Arc::new(first);
    let order: Arc<Mutex<Vec<&'static str>>> = Arc::default();
    let note = |order: &Arc<Mutex<Vec<&'static str>>>, what| order.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(what);
    let told = {
        let (first, order) = (first.clone(), order.clone());
        tokio::spawn(async move {
            first.at_risk().await;
            note(&order, "alice told to stop");
        })
    };
    let second = {
        let order = order.clone();
        tokio::spawn(async move {
            let leads = election::campaign_with_lock_delay(&bob, "/svc", "bob", Duration::ZERO).await;
            note(&order, "bob leads");
            (bob, leads)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!second.is_finished(), "bob must wait while alice leads");
    assert_eq!(first.state(), LockState::Held);

    // Cut Alice off for longer than her session lease: the master expires
    // her session and Bob leads, while Alice's grace period (30 s) runs.
    link.set(LinkMode::Cut);
    let (_bob, second) = tokio::time::timeout(Duration::from_secs(20), second)
        .await
        .unwrap_or_else(|_| panic!("bob did not lead within 20 s of the cut\n{}", cell.logs()))
        .expect("join");
    let second = second.expect("bob leads");
    let seen = order.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    assert_eq!(seen, vec!["alice told to stop", "bob leads"], "alice must hear of jeopardy before bob leads");
    assert!(told.is_finished());
    assert!(second.sequencer().lock_generation > first.sequencer().lock_generation);
    // Alice cannot know her session ended: lost() waits for the cell or the
    // end of her grace period.
    assert!(tokio::time::timeout(Duration::ZERO, first.lost()).await.is_err(), "lost() resolved before alice could know");
    assert_eq!(first.state(), LockState::AtRisk);

    // Back in touch, Alice learns that the risk ended in loss.
    link.set(LinkMode::Pass);
    let recovered = tokio::time::timeout(Duration::from_secs(15), first.recovered()).await;
    assert_eq!(recovered, Ok(false), "alice learns that her leadership is lost\n{}", cell.logs());
    assert!(tokio::time::timeout(Duration::from_secs(1), first.lost()).await.is_ok());
    assert_eq!(first.state(), LockState::Lost);
    assert_eq!(*alice.session_state().borrow(), SessionState::Expired);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_whose_session_expires_keeps_others_out_for_the_default_lock_delay() {
    let _serial = serial();
    let cell = Cell::start_with(&["--session-lease-ms", "2000"]);
    ready(&cell).await;
    let holder = Client::connect(&addresses(&cell), options(Duration::from_secs(10))).await.expect("connect");
    let other = Client::connect(&addresses(&cell), options(Duration::from_secs(10))).await.expect("connect");
    let file = holder.open("/delayed", OpenOptions::new().create()).await.expect("open");
    let lock = file.acquire(LockMode::Exclusive, Duration::from_secs(5)).await.expect("lock");
    let theirs = other.open("/delayed", OpenOptions::new()).await.expect("open");
    // The holder "crashes": no more KeepAlives, no release, no close.
    drop((lock, file, holder));
    // Until its session expires the lock is held; then it waits out the
    // lock-delay (15 s by default) instead of passing on at once.
    let until = Instant::now() + Duration::from_secs(20);
    let mut refusals = Vec::new();
    loop {
        match theirs.try_acquire(LockMode::Exclusive).await {
            Err(Error::LockHeld(why)) if why.contains("lock-delay") => break,
            Err(Error::LockHeld(why)) => refusals.push(why),
            Ok(_) => panic!("granted with no lock-delay once the holder's session ended; refused before: {refusals:?}"),
            Err(error) => panic!("try_acquire: {error}"),
        }
        assert!(Instant::now() < until, "the holder's session did not end within 20 s: {refusals:?}\n{}", cell.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!refusals.is_empty(), "held by the holder's session until it expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fence_rejects_a_sequencer_older_than_one_it_has_seen() {
    let _serial = serial();
    let cell = Cell::start();
    ready(&cell).await;
    let one = Client::connect(&addresses(&cell), options(Duration::from_secs(10))).await.expect("connect");
    let two = Client::connect(&addresses(&cell), options(Duration::from_secs(10))).await.expect("connect");
    let fence = Fence::new();
    let a = one.open("/resource-lock", OpenOptions::new().create()).await.expect("open");
    let b = two.open("/resource-lock", OpenOptions::new().create()).await.expect("open");

    let first = a.try_acquire(LockMode::Exclusive).await.expect("a locks");
    let old = first.sequencer().clone();
    fence.check_with_cell(&one, &old).await.expect("the holder passes the fence");
    assert!(matches!(b.try_acquire(LockMode::Exclusive).await, Err(Error::LockHeld(_))));
    first.release().await.expect("release");
    let second = b.try_acquire(LockMode::Exclusive).await.expect("b locks");
    fence.check(second.sequencer()).expect("the new holder passes");
    assert!(second.sequencer().lock_generation > old.lock_generation);
    match fence.check(&old) {
        Err(FenceError::Stale { presented, seen, .. }) => assert_eq!((presented, seen), (old.lock_generation, second.sequencer().lock_generation)),
        other => panic!("the old sequencer passed the fence: {other:?}"),
    }
    // A fresh fence, that has seen nothing, still refuses it through the cell.
    assert!(matches!(Fence::new().check_with_cell(&one, &old).await, Err(FenceError::NotCurrent(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_election_recipe_hands_leadership_on_with_a_higher_generation() {
    let _serial = serial();
    let cell = Cell::start();
    ready(&cell).await;
    let alice = Client::connect(&addresses(&cell), options(Duration::from_secs(10))).await.expect("connect");
    let bob = Client::connect(&addresses(&cell), options(Duration::from_secs(10))).await.expect("connect");
    let watcher = Client::connect(&addresses(&cell), options(Duration::from_secs(10))).await.expect("connect");
    let mut observed = election::observe(&watcher, "/service-master");

    let first = election::campaign(&alice, "/service-master", "alice:8080").await.expect("alice leads");
    assert_eq!(election::leader(&watcher, "/service-master").await.expect("leader").as_deref(), Some(&b"alice:8080"[..]));
    // Bob campaigns and waits; Alice resigns; Bob leads.
    let bob_campaign = tokio::spawn(async move {
        let leadership = election::campaign(&bob, "/service-master", "bob:8080").await;
        (bob, leadership)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!bob_campaign.is_finished(), "bob must wait while alice leads");
    let first_generation = first.sequencer().lock_generation;
    first.resign().await.expect("resign");
    let (_bob, second) = tokio::time::timeout(Duration::from_secs(10), bob_campaign).await.expect("bob in time").expect("join");
    let second = second.expect("bob leads");
    assert!(second.sequencer().lock_generation > first_generation);
    assert_eq!(election::leader(&watcher, "/service-master").await.expect("leader").as_deref(), Some(&b"bob:8080"[..]));

    // The observer saw alice, then bob (perhaps with nobody in between).
    let mut values = Vec::new();
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let next = tokio::time::timeout(left, observed.next()).await.expect("observe in time").expect("stream open");
        let next = next.expect("observe");
        let done = next.as_deref() == Some(&b"bob:8080"[..]);
        values.push(next);
        if done {
            break;
        }
    }
    let leaders: Vec<&[u8]> = values.iter().flatten().map(|v| v.as_ref()).collect();
    assert_eq!(leaders.first(), Some(&&b"alice:8080"[..]), "{values:?}");
    assert_eq!(leaders.last(), Some(&&b"bob:8080"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handle_events_arrive_in_order_and_a_failover_is_announced() {
    let _serial = serial();
    let mut cell = Cell::start();
    let master = ready(&cell).await;
    let writer = Client::connect(&addresses(&cell), options(Duration::from_secs(20))).await.expect("connect");
    let reader = Client::connect(&addresses(&cell), options(Duration::from_secs(20))).await.expect("connect");
    let mine = writer.open("/watched", OpenOptions::new().create()).await.expect("open");
    let watched = reader.open("/watched", OpenOptions::new()).await.expect("open");
    let mut events = watched.events();
    for i in 0..3 {
        mine.set_contents(format!("v{i}"), None).await.expect("write");
    }
    let mut numbers = Vec::new();
    while numbers.len() < 3 {
        let event = tokio::time::timeout(Duration::from_secs(10), events.next()).await.expect("event in time").expect("open");
        assert_eq!(event.kind, EventKind::ContentsModified);
        numbers.push(event.number);
    }
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "numbered without gaps: {numbers:?}");

    // Kill the master: the handle carries on and hears of the failover.
    cell.kill(cell.index_of(master));
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let event = tokio::time::timeout(left, events.next()).await.expect("a failover event in time").expect("open");
        if event.kind == EventKind::MasterFailover {
            break;
        }
    }
    mine.set_contents("after", None).await.expect("write after the failover");
    let (contents, _) = watched.contents().await.expect("the reader's handle survived");
    assert_eq!(&contents[..], b"after");
}

/// The client tells errors apart by the cell's typed reason (a standard
/// `google.rpc.ErrorInfo`), never by the message, which may echo a path: a
/// failed delete of a directory named `has ended` is a failed precondition
/// of that call, not the end of the session, and a lock held or in its
/// lock-delay is `LockHeld` whatever the path says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_told_apart_by_their_reason_not_by_paths_in_their_message() {
    let _serial = serial();
    let cell = Cell::start();
    ready(&cell).await;
    let client = Client::connect(&addresses(&cell), options(Duration::from_secs(10))).await.expect("connect");
    let directory = client.open("/has ended", OpenOptions::new().create().directory()).await.expect("a directory");
    client.open("/has ended/child", OpenOptions::new().create()).await.expect("a child");
    match directory.delete().await {
        Err(Error::FailedPrecondition { reason, message }) => assert_eq!(reason, ErrorReason::NotEmpty, "{message}"),
        other => panic!("deleting a directory with a child: {other:?}"),
    }
    assert_eq!(*client.session_state().borrow(), SessionState::Safe, "the session was taken for ended");
    client.open("/still-usable", OpenOptions::new().create()).await.expect("the session still works");

    let other = Client::connect(&addresses(&cell), options(Duration::from_secs(10))).await.expect("connect");
    let mine = client.open("/jobs is locked lock-delay", OpenOptions::new().create()).await.expect("open");
    let theirs = other.open("/jobs is locked lock-delay", OpenOptions::new().create()).await.expect("open");
    let _held = mine.try_acquire(LockMode::Exclusive).await.expect("lock");
    assert!(matches!(theirs.try_acquire(LockMode::Exclusive).await, Err(Error::LockHeld(_))));
    // A failure whose message names locks but whose reason is another is
    // not LockHeld: a file named so that its message mentions lock-delay.
    let file = client.open("/a lock-delay is locked", OpenOptions::new().create()).await.expect("open");
    file.set_contents("x", None).await.expect("a write");
    match file.set_contents("y", Some(999)).await {
        Err(Error::FailedPrecondition { reason: ErrorReason::GenerationMismatch, .. }) => {}
        other => panic!("a failed compare-and-set: {other:?}"),
    }
}

/// A client given the address of one replica learns the others' from the
/// cell, so it survives that replica's death: here the one it knows is the
/// master, which is killed, and the next write must reach the new master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_given_one_address_learns_the_members_and_survives_its_loss() {
    let _serial = serial();
    let mut cell = Cell::start();
    let master = ready(&cell).await;
    let index = cell.index_of(master);
    let only = vec![cell.members[index].client.to_string()];
    let client = Client::connect(&only, options(Duration::from_secs(20))).await.expect("connect");
    let handle = client.open("/learned", OpenOptions::new().create()).await.expect("open");
    handle.set_contents("before", None).await.expect("write before");
    let known = client.status().await.len();
    assert_eq!(known, REPLICAS as usize, "the client asks every member it learned");
    cell.kill(index);
    handle.set_contents("after", None).await.expect("a write after the only given replica died");
    let (contents, _) = handle.contents().await.expect("read");
    assert_eq!(&contents[..], b"after");
}

/// Both versions of gRPC server reflection answer on the client port (v1,
/// and v1alpha, which Python's grpcio-reflection and older grpcurl ask
/// for): they list the `Cell` service and describe it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_v1_and_v1alpha_list_and_describe_the_cell_service() {
    let _serial = serial();
    let cell = Cell::start();
    ready(&cell).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", cell.members[0].client))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    // The two versions' messages are alike but distinct types.
    macro_rules! ask {
        ($version:ident) => {{
            use tonic_reflection::pb::$version::{server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest, ServerReflectionRequest};
            let list = ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::ListServices(String::new())) };
            let describe = ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::FileContainingSymbol("gaios.cell.v1.Cell".into())) };
            let mut client = ServerReflectionClient::new(channel.clone());
            let mut answers = client.server_reflection_info(tokio_stream::iter(vec![list, describe])).await.expect("reflection answers").into_inner();
            let mut texts = Vec::new();
            while let Some(answer) = answers.message().await.expect("an answer") {
                texts.push(format!("{:?}", answer.message_response));
            }
            texts
        }};
    }
    for (version, texts) in [("v1", ask!(v1)), ("v1alpha", ask!(v1alpha))] {
        assert_eq!(texts.len(), 2, "{version}: {texts:?}");
        assert!(texts[0].contains("gaios.cell.v1.Cell") && texts[0].contains("grpc.health.v1.Health"), "{version} lists: {}", texts[0]);
        assert!(texts[1].contains("FileDescriptorResponse") && !texts[1].contains("ErrorResponse"), "{version} describes: {}", texts[1]);
    }
}

/// A directory larger than one page is listed completely by the library
/// (page after page), and page by page with the size asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_larger_than_a_page_is_listed_completely_through_pages() {
    let _serial = serial();
    let cell = Cell::start();
    ready(&cell).await;
    let client = Arc::new(Client::connect(&addresses(&cell), options(Duration::from_secs(5))).await.expect("connect"));
    client.open("/big", OpenOptions::new().create().directory().event_mask(0)).await.expect("mkdir");
    const CHILDREN: usize = 2_500;
    let mut creating = tokio::task::JoinSet::new();
    for worker in 0..16 {
        let client = Arc::clone(&client);
        creating.spawn(async move {
            for i in (worker..CHILDREN).step_by(16) {
                let handle = client.open(&format!("/big/c{i:05}"), OpenOptions::new().create().event_mask(0)).await.expect("create");
                handle.close().await.expect("close");
            }
        });
    }
    while let Some(done) = creating.join_next().await {
        done.expect("a creating task");
    }
    let dir = client.open("/big", OpenOptions::new().event_mask(0)).await.expect("open");
    let expected: Vec<String> = (0..CHILDREN).map(|i| format!("c{i:05}")).collect();
    assert_eq!(dir.read_dir().await.expect("list"), expected, "the library lists every child once, in order");
    let mut pages = Vec::new();
    let mut token = String::new();
    loop {
        let (names, next) = dir.read_dir_page(1_000, &token).await.expect("a page");
        assert!(names.len() <= 1_000, "a page of {}", names.len());
        pages.push(names);
        if next.is_empty() {
            break;
        }
        token = next;
    }
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), vec![1_000, 1_000, 500]);
    assert_eq!(pages.concat(), expected);
    match dir.read_dir_page(10_001, "").await {
        Err(Error::InvalidArgument(_)) => {}
        other => panic!("a page over 10000 names: {other:?}"),
    }
}

/// Every answer carries a header: the cell, the replica that answered, the
/// master it follows (by ballot) and how far it had applied; a write's
/// answer reflects a state at least as new as every answer before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_names_the_cell_the_replica_the_master_ballot_and_the_applied_slot() {
    use gaios_proto::cell::v1 as api;
    let _serial = serial();
    let cell = Cell::start();
    let master = ready(&cell).await;
    let connect = |index: usize| {
        let address = cell.members[index].client;
        async move {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}")).expect("endpoint").connect().await.expect("connect");
            api::cell_client::CellClient::new(channel)
        }
    };
    let master_index = cell.index_of(master);
    let follower_index = (master_index + 1) % cell.members.len();
    let mut on_master = connect(master_index).await;
    let found = on_master.find_master(api::FindMasterRequest {}).await.expect("find master").into_inner();
    let master_ballot = found.ballot.expect("the master's ballot");
    let mut previous = 0;
    let mut check = |header: Option<api::ResponseHeader>, replica: u64, what: &str| {
        let header = header.unwrap_or_else(|| panic!("{what}: no header"));
        assert_eq!((header.cell_id.as_str(), header.replica_id), (CELL_ID, replica), "{what}: {header:?}");
        assert_eq!(header.master_ballot, Some(master_ballot), "{what}: {header:?}");
        assert!(header.applied_slot >= previous, "{what}: applied {} after {previous}", header.applied_slot);
        previous = header.applied_slot;
    };
    check(found.header, master, "FindMaster");
    let created = on_master.create_session(api::CreateSessionRequest { client_name: "headers".into() }).await.expect("session").into_inner();
    check(created.header.clone(), master, "CreateSession");
    let request_header = |number| Some(api::RequestHeader { session_id: created.session_id, request_number: number, session_secret: created.session_secret.clone() });
    let open = api::OpenRequest { header: request_header(1), path: "/headers".into(), create: true, ..Default::default() };
    let opened = on_master.open(open).await.expect("open").into_inner();
    check(opened.header, master, "Open");
    let write = api::SetContentsRequest { header: request_header(2), handle: opened.handle, contents: b"x".to_vec().into(), ..Default::default() };
    let written = on_master.set_contents(write).await.expect("write").into_inner();
    let applied_by_write = written.header.as_ref().map_or(0, |h| h.applied_slot);
    check(written.header, master, "SetContents");
    let reference = Some(api::HandleRef { session_id: created.session_id, handle: opened.handle, session_secret: created.session_secret.clone() });
    let stat = on_master.get_stat(api::GetStatRequest { handle: reference }).await.expect("stat").into_inner();
    check(stat.header, master, "GetStat");
    assert!(applied_by_write > 0, "a write's answer names a slot");
    let mut on_follower = connect(follower_index).await;
    let status = on_follower.status(api::StatusRequest {}).await.expect("status").into_inner();
    let follower = cell.members[follower_index].id;
    let header = status.header.expect("a header from a follower");
    assert_eq!((header.replica_id, header.master_ballot), (follower, Some(master_ballot)), "{header:?}");
}
