//! `Replica::step` on arbitrary input: structured random messages (every
//! variant, every field drawn from ordinary and extreme values, senders that
//! are members, strangers or the receiver) stepped into replicas that are
//! followers, candidates and masters with logs, snapshots and leases, with
//! ticks, proposals and `Ready`s in between. A panic (an overflow, an index
//! out of bounds, or a broken invariant, which debug builds check after every
//! input) fails the test with the case's seed.
//!
//! - `cargo test -p gaios-paxos --test fuzz_step` runs 3,000 cases (the test
//!   command); `GAIOS_FUZZ_CASES=<n>` runs more (a soak);
//! - `GAIOS_FUZZ_SEED=<n>` replays one case.
//!
//! In-range messages from members are lies a crash-fault protocol cannot
//! detect (authenticating members is TLS's job); here they only must not
//! break the replica itself.

use bytes::Bytes;
use gaios_paxos::rng::Rng;
use gaios_paxos::types::{ROUND_MAX, SLOT_MAX};
use gaios_paxos::{Ballot, Config, Durable, Entry, HardState, Membership, Message, NackReason, Replica, Snapshot, Value};

const MEMBERS: [u64; 5] = [1, 2, 3, 4, 5];

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.trim().parse().unwrap_or_else(|_| panic!("{name} must be a number")))
}

/// A number drawn from the values that break code: 0, 1, small, the bounds
/// and just past them, and the top of `u64`.
fn number(rng: &mut Rng) -> u64 {
    match rng.range(0, 9) {
        0 => 0,
        1 => 1,
        2 => rng.range(2, 40),
        3 => ROUND_MAX,
        4 => ROUND_MAX + 1,
        5 => SLOT_MAX,
        6 => SLOT_MAX + 1,
        7 => u64::MAX,
        8 => u64::MAX - rng.range(0, 3),
        _ => rng.next_u64(),
    }
}

fn small_or_extreme(rng: &mut Rng) -> u64 {
    if rng.chance(3, 4) { rng.range(0, 60) } else { number(rng) }
}

fn replica_id(rng: &mut Rng) -> u64 {
    if rng.chance(9, 10) { rng.range(1, 5) } else { number(rng) }
}

fn ballot(rng: &mut Rng) -> Ballot {
    Ballot::new(small_or_extreme(rng), replica_id(rng))
}

fn value(rng: &mut Rng) -> Value {
    if rng.chance(1, 5) {
        return Value::Noop;
    }
    let commands = rng.range(0, 4);
    Value::Batch((0..commands).map(|_| Bytes::from(vec![rng.range(0, 255) as u8; rng.range(0, 64) as usize])).collect())
}

fn entries(rng: &mut Rng) -> Vec<Entry> {
    let count = match rng.range(0, 5) {
        0 => 0,
        5 => rng.range(200, 400),
        _ => rng.range(1, 8),
    };
    let start = small_or_extreme(rng);
    (0..count)
        .map(|i| Entry {
            slot: if rng.chance(4, 5) { start.wrapping_add(i) } else { small_or_extreme(rng) },
            ballot: ballot(rng),
            value: value(rng),
        })
        .collect()
}

fn message(rng: &mut Rng) -> Message {
    match rng.range(0, 11) {
        0 => Message::Prepare { ballot: ballot(rng), from_slot: small_or_extreme(rng) },
        1 => Message::Promise {
            ballot: ballot(rng),
            chosen_through: small_or_extreme(rng),
            entries: entries(rng),
            part: small_or_extreme(rng) as u32,
            parts: small_or_extreme(rng) as u32,
        },
        2 => Message::Accept { ballot: ballot(rng), entries: entries(rng), chosen_through: small_or_extreme(rng) },
        3 => Message::Accepted {
            ballot: ballot(rng),
            slots: (0..rng.range(0, 10)).map(|_| small_or_extreme(rng)).collect(),
        },
        4 => Message::Heartbeat { ballot: ballot(rng), chosen_through: small_or_extreme(rng), sent_tick: number(rng) },
        5 => Message::HeartbeatAck { ballot: ballot(rng), sent_tick: small_or_extreme(rng), chosen_through: small_or_extreme(rng) },
        6 => {
            let reason = match rng.range(0, 2) {
                0 => NackReason::HigherBallot,
                1 => NackReason::LeaseHeld,
                _ => NackReason::Behind { chosen_through: small_or_extreme(rng) },
            };
            Message::Nack { ballot: ballot(rng), promised: ballot(rng), reason }
        }
        7 => Message::CatchUpRequest { from_slot: small_or_extreme(rng) },
        8 => Message::CatchUp { entries: entries(rng) },
        9 => Message::InstallSnapshot {
            snapshot: Snapshot { slot: small_or_extreme(rng), data: Bytes::from(vec![1u8; rng.range(0, 32) as usize]), membership: Membership::genesis(&[1, 2, 3]) },
        },
        10 => Message::PreVote { ballot: ballot(rng) },
        _ => Message::PreVoteReply { ballot: ballot(rng), granted: rng.chance(1, 2), promised: ballot(rng) },
    }
}

/// A replica of id `id` with a small log and maybe a snapshot, driven into
/// a random role by real messages.
fn replica(rng: &mut Rng, id: u64) -> Replica {
    let mut config = Config::new(id, MEMBERS.to_vec());
    config.entries_per_message_max = [1, 4, 256][rng.range(0, 2) as usize];
    config.seed = rng.next_u64();
    let chosen = rng.range(0, 6);
    let snapshot_slot = rng.range(0, chosen);
    let log_entries: Vec<Entry> = (snapshot_slot + 1..=chosen + rng.range(0, 4))
        .map(|slot| Entry { slot, ballot: Ballot::new(1, 2), value: Value::Noop })
        .collect();
    let durable = Durable {
        hard_state: HardState { promised: Ballot::new(1, 2), chosen_through: chosen },
        entries: log_entries,
        snapshot: (snapshot_slot > 0).then(|| Snapshot { slot: snapshot_slot, data: Bytes::from_static(b"state"), membership: Membership::genesis(&[1, 2, 3, 4, 5]) }),
        applied: snapshot_slot,
    };
    let mut replica = Replica::new(config, durable).expect("a valid durable state");
    for _ in 0..rng.range(0, 60) {
        replica.tick();
    }
    if rng.chance(1, 2) {
        // Make it master with two empty promises (quorum of five is three).
        replica.campaign();
        drive(&mut replica);
        if let Some(ballot) = replica.status().own_ballot {
            let from_slot = replica.chosen_through() + 1;
            for from in MEMBERS.iter().copied().filter(|&m| m != id).take(2) {
                let promise = Message::Promise { ballot, chosen_through: from_slot - 1, entries: vec![], part: 0, parts: 1 };
                replica.step(from, promise);
            }
        }
        drive(&mut replica);
        if replica.is_master() && rng.chance(1, 2) {
            let _ = replica.propose(Bytes::from_static(b"cmd"));
        }
    }
    drive(&mut replica);
    replica
}

fn drive(replica: &mut Replica) {
    let mut rounds = 0;
    while replica.has_ready() && rounds < 100 {
        let ready = replica.ready();
        replica.advance(ready);
        rounds += 1;
    }
}

fn run_case(seed: u64) {
    let mut rng = Rng::new(seed);
    let id = rng.range(1, 5);
    let mut replica = replica(&mut rng, id);
    for _ in 0..rng.range(1, 40) {
        match rng.range(0, 9) {
            0 => replica.tick(),
            1 => {
                let _ = replica.propose(Bytes::from(vec![0u8; rng.range(0, 100) as usize]));
            }
            _ => {
                let from = if rng.chance(1, 10) { id } else { replica_id(&mut rng) };
                replica.step(from, message(&mut rng));
            }
        }
        if rng.chance(1, 2) {
            drive(&mut replica);
        }
    }
    drive(&mut replica);
}

#[test]
fn arbitrary_messages_never_panic_a_replica() {
    if let Some(seed) = env_u64("GAIOS_FUZZ_SEED") {
        run_case(seed);
        return;
    }
    let cases = env_u64("GAIOS_FUZZ_CASES").unwrap_or(3_000);
    for seed in 0..cases {
        if let Err(panic) = std::panic::catch_unwind(|| run_case(seed)) {
            let text = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string()))
                .unwrap_or_default();
            panic!("case {seed} panicked: {text}\nreplay with GAIOS_FUZZ_SEED={seed} cargo test -p gaios-paxos --test fuzz_step");
        }
    }
}
