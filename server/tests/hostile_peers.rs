//! Peers that send garbage, and followers that fall far behind on large
//! writes, against five real processes (issue 11, findings 2, 4 and 5).
//!
//! - A snapshot that does not restore, sent again and again by a "peer"
//!   over the `InstallSnapshot` stream (with a matching CRC-32), is refused
//!   and counted; one sent on `Exchange` is dropped there; the replica keeps
//!   following the master (before, it exited and crash-looped on every
//!   resend).
//! - Messages with numbers out of range (a round of `u64::MAX`, slot 0,
//!   parts that cannot exist) are dropped; nothing moves.
//! - A follower that was down while about 100 MiB of 256 KiB writes were
//!   chosen catches up by messages bounded by bytes (before, one catch-up
//!   answer of up to 256 such slots exceeded the 64 MiB transport limit,
//!   never arrived, and was resent unchanged forever).

#![allow(clippy::await_holding_lock)]

use std::time::{Duration, Instant};

use gaios_proto::cell::v1 as api;
use gaios_proto::replica::v1 as peer;
use gaios_proto::replica::v1::replica_client::ReplicaClient;
use gaios_tests::*;

/// Waits until the replica at `index` has applied as far as the master.
async fn wait_caught_up(cell: &Cell, index: usize, deadline: Duration) {
    let id = cell.members[index].id;
    let until = Instant::now() + deadline;
    loop {
        let all: Vec<usize> = (0..REPLICAS as usize).collect();
        let now = statuses(cell, &all).await;
        let follower = now.iter().find(|s| s.id == id);
        let master = now.iter().find(|s| s.role() == api::Role::Master);
        if let (Some(follower), Some(master)) = (follower, master)
            && follower.applied >= master.applied
            && master.applied > 0
        {
            return;
        }
        assert!(Instant::now() < until, "replica {id} did not catch up within {deadline:?}: {now:?}\n{}", cell.logs());
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

fn ballot(round: u64, replica: u64) -> Option<peer::Ballot> {
    Some(peer::Ballot { round, replica })
}

/// Sends `bodies` to the replica at `index` over its peer port, as member
/// `from` (with its cell id and its incarnation, read from its status, so
/// that the envelope passes and the bodies reach the driver), in one stream.
async fn send_as_peer(cell: &Cell, index: usize, from: u64, bodies: Vec<peer::paxos_message::Body>) {
    let to = cell.members[index].id;
    let address = cell.members[index].peer;
    let sender = statuses(cell, &[cell.index_of(from)]).await;
    let incarnation = sender.first().map(|s| s.incarnation).expect("the impersonated member's status");
    let mut client = ReplicaClient::connect(format!("http://{address}")).await.expect("connect to the peer port");
    let messages = bodies
        .into_iter()
        .map(|body| peer::PaxosMessage { from, to, body: Some(body), cell_id: CELL_ID.into(), incarnation })
        .collect();
    let batch = peer::PaxosBatch { messages };
    let stream = tokio_stream::iter(vec![batch]);
    // The peer never answers on this stream; opening it delivers the batch.
    let _ = tokio::time::timeout(Duration::from_secs(2), client.exchange(stream)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// Offers the replica at `index` a snapshot of `data` at `slot` over the
/// `InstallSnapshot` stream, as member `from`; returns the receiver's
/// refusal, if any.
async fn send_snapshot_as_peer(cell: &Cell, index: usize, from: u64, slot: u64, data: &[u8]) -> Option<tonic::Status> {
    let to = cell.members[index].id;
    let address = cell.members[index].peer;
    let sender = statuses(cell, &[cell.index_of(from)]).await;
    let incarnation = sender.first().map(|s| s.incarnation).expect("the impersonated member's status");
    let mut client = ReplicaClient::connect(format!("http://{address}")).await.expect("connect to the peer port");
    let members = cell.members.iter().map(|m| peer::Member { id: m.id, voter: true, ..Default::default() }).collect();
    let offer = peer::SnapshotOffer {
        cell_id: CELL_ID.into(),
        from,
        incarnation,
        to,
        slot,
        membership: Some(peer::Membership { members, highest_id: REPLICAS }),
        data_bytes: data.len() as u64,
        data_crc32: crc32fast::hash(data),
    };
    use peer::snapshot_chunk::Body;
    let chunks = vec![
        peer::SnapshotChunk { body: Some(Body::Offer(offer)) },
        peer::SnapshotChunk { body: Some(Body::Data(data.to_vec().into())) },
    ];
    let mut answers = match client.install_snapshot(tokio_stream::iter(chunks)).await {
        Ok(answers) => answers.into_inner(),
        Err(status) => return Some(status),
    };
    loop {
        match tokio::time::timeout(Duration::from_secs(10), answers.message()).await {
            Ok(Ok(Some(answer))) if answer.done => return None,
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) => return None,
            Ok(Err(status)) => return Some(status),
            Err(_) => return Some(tonic::Status::deadline_exceeded("no answer")),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_snapshots_and_numbers_out_of_range_from_a_peer_leave_the_replica_serving() {
    let _serial = serial();
    let mut cell = Cell::start();
    let master = master_of(&cell).await;
    let target = (0..REPLICAS as usize).find(|&i| cell.members[i].id != master).expect("a follower");
    let forger = cell.members.iter().map(|m| m.id).find(|&id| id != cell.members[target].id).expect("another member");
    use peer::paxos_message::Body;
    let garbage_snapshot = || {
        Body::InstallSnapshot(peer::InstallSnapshot {
            snapshot: Some(peer::Snapshot {
                slot: 1_000_000,
                data: b"not a state snapshot".to_vec().into(),
                membership: Some(peer::Membership {
                    members: vec![peer::Member { id: 1, voter: true, ..Default::default() }],
                    highest_id: 1,
                }),
            }),
        })
    };
    // On Exchange, where snapshots never travel.
    send_as_peer(&cell, target, forger, vec![garbage_snapshot()]).await;
    // The same bad snapshot five times on the snapshot stream, as a peer
    // retrying would send it: its CRC-32 matches, but it does not restore.
    for _ in 0..5 {
        let refusal = send_snapshot_as_peer(&cell, target, forger, 1_000_000, b"not a state snapshot").await;
        assert_eq!(refusal.map(|s| s.code()), Some(tonic::Code::InvalidArgument), "a garbage snapshot was not refused");
    }
    let extreme = vec![
        Body::Nack(peer::Nack {
            ballot: ballot(1, forger),
            promised: ballot(u64::MAX, forger),
            reason: Some(peer::nack::Reason::HigherBallot(peer::nack::HigherBallot {})),
        }),
        Body::Prepare(peer::Prepare { ballot: ballot(u64::MAX, forger), from_slot: 0 }),
        Body::Promise(peer::Promise { ballot: ballot(1, forger), chosen_through: u64::MAX, entries: vec![], part: 0, parts: 1 }),
        Body::Heartbeat(peer::Heartbeat { ballot: ballot(u64::MAX - 1, forger), chosen_through: u64::MAX, sent_tick: u64::MAX }),
        Body::CatchUpRequest(peer::CatchUpRequest { from_slot: u64::MAX }),
    ];
    send_as_peer(&cell, target, forger, extreme).await;
    assert!(cell.exited(target).is_none(), "the replica exited on a peer's garbage:\n{}", cell.logs());

    // It still follows the master: a write is applied everywhere, it too.
    let mut client = cell.client();
    let session = client.create_session().await;
    let _keep = KeepAlive::start(&cell, &session);
    let file = client.open_file(&session, 1, "/after-garbage").await;
    client.set_contents(&session, 2, file, b"still serving").await.expect("a write after the garbage");
    wait_caught_up(&cell, target, REJOIN_DEADLINE).await;
    let statuses = statuses(&cell, &[target]).await;
    let promised = statuses.first().and_then(|s| s.promised).expect("the target's status");
    assert!(promised.round < 1 << 40, "a forged round was promised: {promised:?}");
    let log = std::fs::read_to_string(cell.log_path(cell.members[target].id)).expect("log");
    assert!(log.contains("dropping a snapshot that does not restore"), "no snapshot was refused:\n{log}");
    assert!(log.contains("dropping a snapshot sent on Exchange"), "a snapshot on Exchange was not dropped:\n{log}");
    assert!(cell.exited(target).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_down_during_large_writes_catches_up_in_bounded_messages() {
    let _serial = serial();
    // No snapshot in this test: the follower must catch up from the log.
    let mut cell = Cell::start_with(&["--snapshot-every-slots", "1000000"]);
    let master = master_of(&cell).await;
    let down = (0..REPLICAS as usize).find(|&i| cell.members[i].id != master).expect("a follower");
    cell.kill(down);
    // Three writers of 256 KiB each, so slots carry up to three of them:
    // about 100 MiB in all, well past the 64 MiB a single message may carry.
    let writes_per_writer: u64 = 130;
    let contents = vec![0x5a_u8; 256 << 10];
    let mut writers = Vec::new();
    for writer in 0..3u64 {
        let mut client = cell.client();
        let contents = contents.clone();
        let cell_addresses = cell.members.clone();
        writers.push(tokio::spawn(async move {
            let _ = cell_addresses;
            let session = client.create_session().await;
            let file = client.open_file(&session, 1, &format!("/large-{writer}")).await;
            for i in 0..writes_per_writer {
                client.set_contents(&session, 2 + i, file, &contents).await.expect("a large write");
            }
            session
        }));
    }
    let mut sessions = Vec::new();
    for writer in writers {
        sessions.push(writer.await.expect("a writer"));
    }
    let _keep: Vec<KeepAlive> = sessions.iter().map(|s| KeepAlive::start(&cell, s)).collect();
    cell.restart(down);
    wait_caught_up(&cell, down, Duration::from_secs(90)).await;
    assert!(cell.exited(down).is_none());
}
