//! The Chubby API of a real five-process cell over TCP: locks, failover,
//! snapshots, session expiry, sequencers and bad input.
//!
//! Each test starts its own cell (five `gaios-server` processes on loopback,
//! see `support/`). The tests run one at a time so that elections and
//! leases are not starved of the machine's two cores. The only wall-clock
//! assertions are liveness deadlines; figures (writes per second, time from
//! a master's death to the next write) are printed, not asserted.

// One cell at a time: the guard is held for the whole test on purpose.
#![allow(clippy::await_holding_lock)]



use std::time::{Duration, Instant};

use gaios_proto::cell::v1 as api;
use gaios_tests::*;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_contend_for_an_exclusive_lock() {
    let _serial = serial();
    let cell = Cell::start();
    master_of(&cell).await;
    let mut one = cell.client();
    let mut two = cell.client();
    let a = one.create_session().await;
    let b = two.create_session().await;
    let _keep_a = KeepAlive::start(&cell, &a);
    let _keep_b = KeepAlive::start(&cell, &b);
    let ha = one.open_file(&a, 1, "/lock").await;
    let hb = two.open_file(&b, 1, "/lock").await;

    let first = one.acquire(&a, 2, ha, None).await.expect("a takes the free lock");
    assert!(first.lock_generation > 0);
    // Mutual exclusion: b cannot take it while a holds it.
    let refused = two.acquire(&b, 2, hb, None).await.expect_err("b is refused");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    // b waits in line; a releases; b gets it with a higher generation.
    let waiter = tokio::spawn(async move { two.acquire(&b, 3, hb, Some(20_000)).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiter.is_finished(), "b must wait while a holds the lock");
    assert!(one.check_sequencer(&first).await.expect("check"), "a's sequencer is current while it holds");
    one.release(&a, 3, ha).await.expect("a releases");
    let second = waiter.await.expect("join").expect("b gets the lock after the release");
    assert!(second.lock_generation > first.lock_generation, "{second:?} after {first:?}");
    assert!(!one.check_sequencer(&first).await.expect("check"), "a's sequencer is stale after b's grant");
    assert!(one.check_sequencer(&second).await.expect("check"));
    // And a, trying again, is refused while b holds it.
    let again = one.acquire(&a, 4, ha, None).await.expect_err("a is refused now");
    assert_eq!(again.code(), Code::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_is_killed_and_nothing_acknowledged_is_lost() {
    let _serial = serial();
    let mut cell = Cell::start();
    let first_master = master_of(&cell).await;
    let mut client = cell.client();
    let session = client.create_session().await;
    let _keep = KeepAlive::start(&cell, &session);
    let locked = client.open_file(&session, 1, "/lock").await;
    let sequencer = client.acquire(&session, 2, locked, None).await.expect("take the lock");
    let data = client.open_file(&session, 3, "/data").await;

    // Acknowledged writes, each with its own request number.
    let writes = 200u64;
    let started = Instant::now();
    let mut last = None;
    for i in 0..writes {
        let answer = client.set_contents(&session, 10 + i, data, format!("value {i}").as_bytes()).await;
        last = Some(answer.expect("write"));
    }
    let elapsed = started.elapsed();
    println!(
        "figure: {writes} sequential writes in {:.2} s = {:.0} writes/s (one client, one session)",
        elapsed.as_secs_f64(),
        writes as f64 / elapsed.as_secs_f64()
    );
    let last = last.expect("written").stat.expect("stat");

    // A handful of clients writing at once (each its own session and file).
    let clients = 5u64;
    let per_client = 100u64;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut writer = cell.client();
        tasks.push(tokio::spawn(async move {
            let session = writer.create_session().await;
            let handle = writer.open_file(&session, 1, &format!("/load-{c}")).await;
            for i in 0..per_client {
                writer.set_contents(&session, 2 + i, handle, b"0123456789").await.expect("concurrent write");
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer");
    }
    let elapsed = started.elapsed();
    println!(
        "figure: {clients} clients x {per_client} writes in {:.2} s = {:.0} writes/s",
        elapsed.as_secs_f64(),
        (clients * per_client) as f64 / elapsed.as_secs_f64()
    );

    // Kill the master with SIGKILL.
    let killed = cell.index_of(first_master);
    cell.kill(killed);
    let killed_at = Instant::now();
    // The next write (a new request number) succeeds on a new master.
    let next = client.set_contents(&session, 10 + writes, data, b"after the failover").await;
    let failover = killed_at.elapsed();
    let next = next.unwrap_or_else(|status| panic!("no write after the failover: {status:?}\n{}", cell.logs()));
    println!("figure: from SIGKILL of the master to the next acknowledged write: {:.0} ms", failover.as_secs_f64() * 1e3);
    assert!(failover < FAILOVER_DEADLINE, "failover took {failover:?}");
    let survivors: Vec<usize> = (0..REPLICAS as usize).filter(|&i| i != killed).collect();
    let (second_master, _) = wait_for_master(&cell, &survivors, FAILOVER_DEADLINE).await.expect("a new master");
    assert_ne!(second_master, first_master);
    assert_eq!(next.stat.expect("stat").content_generation, last.content_generation + 1, "no acknowledged write lost");

    // A retry of the last write before the kill (the same call with the
    // same request number) returns the original answer and does not apply
    // again; the same number for another call is refused.
    let last_value = format!("value {}", writes - 1);
    let retry = client.set_contents(&session, 10 + writes - 1, data, last_value.as_bytes()).await.expect("retry answers");
    assert_eq!(retry.stat.expect("stat"), last, "a retry returns the first answer");
    let reused = client.set_contents(&session, 10 + writes - 1, data, b"another call").await.expect_err("a reused number");
    assert_eq!(reused.code(), Code::FailedPrecondition, "{reused:?}");
    let now = client.contents(&session, data).await.expect("read");
    assert_eq!(&now.contents[..], b"after the failover");

    // The session survived and still holds its lock.
    assert!(client.check_sequencer(&sequencer).await.expect("check"), "the lock is still held after the failover");
    let held = client
        .call(|mut c| {
            let handle = Some(session.handle(locked));
            async move { c.get_sequencer(api::GetSequencerRequest { handle }).await }
        })
        .await
        .expect("the session still holds its lock");
    assert_eq!(held.sequencer.expect("sequencer"), sequencer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_was_down_catches_up_from_a_snapshot() {
    let _serial = serial();
    let snapshot_every = 50u64;
    let mut cell = Cell::start_with(&["--snapshot-every-slots", "50"]);
    let master = master_of(&cell).await;
    // Stop a follower.
    let down = (0..REPLICAS as usize).find(|&i| cell.members[i].id != master).expect("a follower");
    let down_id = cell.members[down].id;
    cell.kill(down);
    let mut client = cell.client();
    let session = client.create_session().await;
    let _keep = KeepAlive::start(&cell, &session);
    let data = client.open_file(&session, 1, "/data").await;
    for i in 0..(4 * snapshot_every) {
        client.set_contents(&session, 2 + i, data, format!("v{i}").as_bytes()).await.expect("write");
    }
    cell.restart(down);
    // It catches up: the same applied slot as the master, through a
    // snapshot (the log it missed was compacted away).
    let until = Instant::now() + REJOIN_DEADLINE;
    loop {
        let all: Vec<usize> = (0..REPLICAS as usize).collect();
        let now = statuses(&cell, &all).await;
        let restarted = now.iter().find(|s| s.id == down_id);
        let leader = now.iter().find(|s| s.role() == api::Role::Master);
        if let (Some(restarted), Some(leader)) = (restarted, leader)
            && restarted.applied == leader.applied && restarted.applied > 4 * snapshot_every {
                assert!(restarted.snapshot_slot > 0, "{restarted:?}");
                assert_eq!(restarted.nodes, leader.nodes);
                assert_eq!(restarted.sessions, leader.sessions);
                break;
            }
        assert!(Instant::now() < until, "replica {down_id} did not catch up: {now:?}\n{}", cell.logs());
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    let log = std::fs::read_to_string(cell.log_path(down_id)).expect("log");
    assert!(log.contains("installed a snapshot from another replica"), "no snapshot installed:\n{}", cell.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_session_expires_and_its_lock_waits_out_the_lock_delay() {
    let _serial = serial();
    let cell = Cell::start_with(&["--session-lease-ms", "2000"]);
    master_of(&cell).await;
    let mut client = cell.client();
    let quiet = client.create_session().await; // never sends a KeepAlive
    let alive = client.create_session().await;
    let _keep = KeepAlive::start(&cell, &alive);
    let lock_delay_ms = 3_000;
    let ephemeral = api::OpenRequest { path: "/ephemeral".into(), create: true, ephemeral: true, ..Default::default() };
    client.open(&quiet, 1, ephemeral).await.expect("create an ephemeral node");
    let locked = api::OpenRequest { path: "/lock".into(), create: true, lock_delay_ms, ..Default::default() };
    let quiet_lock = client.open(&quiet, 2, locked).await.expect("open the lock").handle;
    let sequencer = client.acquire(&quiet, 3, quiet_lock, None).await.expect("take the lock");
    let lock = client.open_file(&alive, 1, "/lock").await;
    let watched = client.open_file(&alive, 2, "/ephemeral").await;

    // The quiet session expires: its ephemeral node goes (so the alive
    // session's handle to it turns invalid) and its lock is released.
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        match client.stat(&alive, watched).await {
            Err(status) if status.code() == Code::FailedPrecondition => break,
            Ok(_) => {}
            Err(status) => panic!("unexpected {status:?}"),
        }
        assert!(Instant::now() < until, "the silent session did not expire\n{}", cell.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let expired_seen = Instant::now();
    let gone = client.open(&alive, 3, api::OpenRequest { path: "/ephemeral".into(), ..Default::default() }).await;
    assert_eq!(gone.expect_err("the ephemeral node is gone").code(), Code::NotFound);
    assert!(!client.check_sequencer(&sequencer).await.expect("check"), "the expired holder's sequencer is stale");
    // Right after the expiry the lock is in its lock-delay.
    let refused = client.acquire(&alive, 4, lock, None).await.expect_err("lock-delay");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("lock-delay"), "{refused:?}");
    // A waiter gets it once the delay has passed.
    let granted = client.acquire(&alive, 5, lock, Some(10_000)).await.expect("granted after the lock-delay");
    assert!(granted.lock_generation > sequencer.lock_generation);
    println!("figure: lock granted {:.1} s after the expiry was seen (lock-delay 3 s)", expired_seen.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_sequencer_is_reported_and_fails_a_handle_that_set_it() {
    let _serial = serial();
    let cell = Cell::start();
    master_of(&cell).await;
    let mut client = cell.client();
    let holder = client.create_session().await;
    let server = client.create_session().await;
    let _keep_holder = KeepAlive::start(&cell, &holder);
    let _keep_server = KeepAlive::start(&cell, &server);
    let lock = client.open_file(&holder, 1, "/lock").await;
    let sequencer = client.acquire(&holder, 2, lock, None).await.expect("take the lock");
    let data = client.open_file(&server, 1, "/data").await;
    let set = api::SetSequencerRequest {
        header: Some(server.header(2)),
        handle: data,
        sequencer: Some(sequencer.clone()),
    };
    client
        .call(|mut c| {
            let set = set.clone();
            async move { c.set_sequencer(set).await }
        })
        .await
        .expect("attach a current sequencer");
    client.stat(&server, data).await.expect("calls work while the sequencer is current");
    client.release(&holder, 3, lock).await.expect("release");
    assert!(!client.check_sequencer(&sequencer).await.expect("check"), "a released lock's sequencer is stale");
    let refused = client.stat(&server, data).await.expect_err("the handle's sequencer is stale");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let write = client.set_contents(&server, 3, data, b"x").await.expect_err("writes fail too");
    assert_eq!(write.code(), Code::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_their_status_codes_and_the_cell_keeps_serving() {
    let _serial = serial();
    let cell = Cell::start();
    let master = master_of(&cell).await;
    let mut client = cell.client();
    let session = client.create_session().await;
    let _keep = KeepAlive::start(&cell, &session);
    let file = client.open_file(&session, 1, "/kept").await;
    client.set_contents(&session, 2, file, b"keep me").await.expect("write");
    let dir = api::OpenRequest { path: "/dir".into(), create: true, kind: api::NodeKind::Directory as i32, ..Default::default() };
    let dir = client.open(&session, 3, dir).await.expect("mkdir").handle;
    client.open_file(&session, 4, "/dir/child").await;

    let header = |n: u64| Some(session.header(n));
    let open = |n: u64, path: &str| api::OpenRequest { header: header(n), path: path.into(), create: true, ..Default::default() };
    let deep = "/d".repeat(40);
    let long = format!("/{}", "x".repeat(1100));
    let long_component = format!("/{}", "x".repeat(300));
    let opens: Vec<(&str, api::OpenRequest, Code)> = vec![
        ("relative path", open(100, "relative"), Code::InvalidArgument),
        ("empty path", open(101, ""), Code::InvalidArgument),
        ("dot-dot component", open(102, "/a/../b"), Code::InvalidArgument),
        ("empty component", open(103, "/a//b"), Code::InvalidArgument),
        ("trailing slash", open(104, "/a/"), Code::InvalidArgument),
        ("control character", open(105, "/a\u{1}b"), Code::InvalidArgument),
        ("NUL", open(106, "/a\0b"), Code::InvalidArgument),
        ("path over 1024 bytes", open(107, &long), Code::InvalidArgument),
        ("component over 255 bytes", open(108, &long_component), Code::InvalidArgument),
        ("deeper than 32", open(109, &deep), Code::InvalidArgument),
        ("parent missing", open(110, "/missing/child"), Code::NotFound),
        ("no header", api::OpenRequest { header: None, ..open(0, "/x") }, Code::InvalidArgument),
        ("request number 0", open(0, "/x"), Code::InvalidArgument),
        ("lock-delay over 60 s", api::OpenRequest { lock_delay_ms: 60_001, ..open(111, "/x") }, Code::InvalidArgument),
        ("unknown event bits", api::OpenRequest { event_mask: 1 << 12, ..open(112, "/x") }, Code::InvalidArgument),
        ("unknown node kind", api::OpenRequest { kind: 9, ..open(113, "/x") }, Code::InvalidArgument),
        ("exclusive create of an existing node", api::OpenRequest { exclusive_create: true, ..open(114, "/kept") }, Code::AlreadyExists),
        ("open without create", api::OpenRequest { create: false, ..open(115, "/nothing") }, Code::NotFound),
        (
            "initial contents over 256 KiB",
            api::OpenRequest { initial_contents: vec![0; (256 << 10) + 1].into(), ..open(116, "/big") },
            Code::ResourceExhausted,
        ),
        (
            "unknown session",
            api::OpenRequest {
                header: Some(api::RequestHeader { session_id: 999_999, request_number: 1, session_secret: vec![0; 16].into() }),
                ..open(0, "/x")
            },
            Code::FailedPrecondition,
        ),
        (
            "no session secret",
            api::OpenRequest { header: Some(api::RequestHeader { session_secret: Default::default(), ..session.header(117) }), ..open(0, "/x") },
            Code::PermissionDenied,
        ),
    ];
    for (name, request, expected) in opens {
        let got = client
            .call(|mut c| {
                let request = request.clone();
                async move { c.open(request).await }
            })
            .await;
        assert_eq!(got.as_ref().err().map(tonic::Status::code), Some(expected), "{name}: {got:?}");
    }

    // Other calls.
    let oversize = client.set_contents(&session, 200, file, &vec![1; (256 << 10) + 1]).await;
    assert_eq!(oversize.expect_err("too big").code(), Code::ResourceExhausted);
    let message_too_big = client.set_contents(&session, 201, file, &vec![1; 2 << 20]).await;
    let code = message_too_big.expect_err("message over the limit").code();
    assert!(matches!(code, Code::ResourceExhausted | Code::OutOfRange), "{code:?}");
    let delete_full = api::DeleteRequest { header: header(202), handle: dir };
    let got = client.call(|mut c| { let delete_full = delete_full.clone(); async move { c.delete(delete_full).await } }).await;
    assert_eq!(got.expect_err("non-empty directory").code(), Code::FailedPrecondition);
    let bad_mode = api::AcquireRequest { header: header(203), handle: file, mode: 0, wait_ms: 0 };
    let got = client.call(|mut c| { let bad_mode = bad_mode.clone(); async move { c.try_acquire(bad_mode).await } }).await;
    assert_eq!(got.expect_err("no mode").code(), Code::InvalidArgument);
    let long_wait = api::AcquireRequest { header: header(204), handle: file, mode: 1, wait_ms: 3_600_000 };
    let got = client.call(|mut c| { let long_wait = long_wait.clone(); async move { c.acquire(long_wait).await } }).await;
    assert_eq!(got.expect_err("wait too long").code(), Code::InvalidArgument);
    let no_handle = api::GetStatRequest { handle: Some(session.handle(4242)) };
    let got = client.call(|mut c| { let no_handle = no_handle.clone(); async move { c.get_stat(no_handle).await } }).await;
    assert_eq!(got.expect_err("unknown handle").code(), Code::NotFound);
    let no_sequencer = api::CheckSequencerRequest { sequencer: None };
    let got = client.call(|mut c| { let no_sequencer = no_sequencer.clone(); async move { c.check_sequencer(no_sequencer).await } }).await;
    assert_eq!(got.expect_err("no sequencer").code(), Code::InvalidArgument);
    let release_unheld = client.release(&session, 205, file).await;
    assert_eq!(release_unheld.expect_err("not held").code(), Code::FailedPrecondition);
    let cas = api::SetContentsRequest { header: header(206), handle: file, contents: b"z".to_vec().into(), if_content_generation: Some(99) };
    let got = client.call(|mut c| { let cas = cas.clone(); async move { c.set_contents(cas).await } }).await;
    assert_eq!(got.expect_err("compare failed").code(), Code::FailedPrecondition);
    let long_name = api::CreateSessionRequest { client_name: "n".repeat(300) };
    let got = client.call(|mut c| { let long_name = long_name.clone(); async move { c.create_session(long_name).await } }).await;
    assert_eq!(got.expect_err("name too long").code(), Code::InvalidArgument);

    // A follower sends the client to the master.
    let follower = cell.members.iter().find(|m| m.id != master).expect("a follower").client;
    let mut direct = gaios_proto::cell::v1::cell_client::CellClient::connect(format!("http://{follower}")).await.expect("connect");
    let redirected = direct
        .get_stat(api::GetStatRequest { handle: Some(session.handle(file)) })
        .await
        .expect_err("a follower does not serve reads");
    assert_eq!(redirected.code(), Code::Unavailable);
    let redirect = gaios_client::redirect(&redirected).expect("a NOT_MASTER redirect");
    assert_eq!(redirect.reason, api::ErrorReason::NotMaster);
    assert_eq!(redirect.master_id, master);
    let master_address = cell.members.iter().find(|m| m.id == master).expect("master").client.to_string();
    assert_eq!(redirect.master_address, master_address);

    // Every replica still serves, and nothing written was lost.
    for member in &cell.members {
        assert!(status(member.client).await.is_some(), "replica {} stopped answering\n{}", member.id, cell.logs());
    }
    let kept = client.contents(&session, file).await.expect("read back");
    assert_eq!(&kept.contents[..], b"keep me");
    client.set_contents(&session, 300, file, b"still writable").await.expect("a write after the bad inputs");
}

/// Session ids are sequential, so anyone can guess one; only the secret
/// `CreateSession` returned makes a call on the session's behalf. Every call
/// that names the session without it is refused with `PERMISSION_DENIED`,
/// and the session, its lock and its lease are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_usable_only_by_the_client_that_created_it() {
    let _serial = serial();
    let cell = Cell::start();
    master_of(&cell).await;
    let mut owner = cell.client();
    let mut stranger = cell.client();
    let a = owner.create_session().await;
    let _keep = KeepAlive::start(&cell, &a);
    let ha = owner.open_file(&a, 1, "/lock").await;
    let sequencer = owner.acquire(&a, 2, ha, None).await.expect("take the lock");
    let a_id: u64 = a.id; // sequential, easy to guess
    for secret in [bytes::Bytes::new(), bytes::Bytes::from_static(b"0123456789abcdef")] {
        let header = Some(api::RequestHeader { session_id: a_id, request_number: 10, session_secret: secret.clone() });
        let release = api::ReleaseRequest { header: header.clone(), handle: ha };
        let got = stranger.call(|mut c| { let r = release.clone(); async move { c.release(r).await } }).await;
        assert_eq!(got.expect_err("release").code(), Code::PermissionDenied, "release with {secret:?}");
        let write = api::SetContentsRequest { header: header.clone(), handle: ha, contents: b"x".to_vec().into(), if_content_generation: None };
        let got = stranger.call(|mut c| { let r = write.clone(); async move { c.set_contents(r).await } }).await;
        assert_eq!(got.expect_err("write").code(), Code::PermissionDenied, "write with {secret:?}");
        let open = api::OpenRequest { header: header.clone(), path: "/other".into(), create: true, ..Default::default() };
        let got = stranger.call(|mut c| { let r = open.clone(); async move { c.open(r).await } }).await;
        assert_eq!(got.expect_err("open").code(), Code::PermissionDenied, "open with {secret:?}");
        let read = api::GetStatRequest { handle: Some(api::HandleRef { session_id: a_id, handle: ha, session_secret: secret.clone() }) };
        let got = stranger.call(|mut c| { let r = read.clone(); async move { c.get_stat(r).await } }).await;
        assert_eq!(got.expect_err("read").code(), Code::PermissionDenied, "read with {secret:?}");
        let close = api::CloseSessionRequest { session_id: a_id, session_secret: secret.clone() };
        let got = stranger.call(|mut c| { let r = close.clone(); async move { c.close_session(r).await } }).await;
        assert_eq!(got.expect_err("close").code(), Code::PermissionDenied, "close with {secret:?}");
        let keep_alive = api::KeepAliveRequest { session_id: a_id, acknowledged_event: 0, session_secret: secret.clone() };
        // The refusal comes as the stream's first message; reading it inside
        // the call lets the harness retry a replica that cannot serve yet.
        let got = stranger
            .call(|mut c| {
                let r = keep_alive.clone();
                async move {
                    let mut stream = c.keep_alive(tokio_stream::iter([r])).await?.into_inner();
                    stream.message().await.map(tonic::Response::new)
                }
            })
            .await;
        assert_eq!(got.expect_err("the KeepAlive is refused").code(), Code::PermissionDenied, "KeepAlive with {secret:?}");
    }
    assert!(owner.check_sequencer(&sequencer).await.expect("check"), "the owner still holds its lock");
    owner.release(&a, 3, ha).await.expect("the owner's own calls work");
}
