//! Checks `Storage` against a simple model (`BTreeMap`s) over random
//! sequences of writes and reboots (close and reopen the database).
//!
//! `GAIOS_STORAGE_SEEDS=<n>` runs more seeds; a failure names its seed, and
//! `GAIOS_STORAGE_SEED=<n>` replays it.

use std::collections::BTreeMap;
use std::num::NonZeroU64;

use bytes::Bytes;
use gaios_paxos::ready::Ready;
use gaios_paxos::rng::Rng;
use gaios_paxos::types::{Ballot, Entry, HardState, Slot, Snapshot, Value};
use gaios_server::ops::config::PeerSpec;
use gaios_server::replica::storage::{Identity, InitRecord, Storage};

/// What a correct storage holds after the same writes.
#[derive(Default)]
struct Model {
    hard_state: HardState,
    entries: BTreeMap<Slot, Entry>,
    snapshot: Option<Snapshot>,
}

impl Model {
    fn apply(&mut self, ready: &Ready) {
        if let Some(hard_state) = ready.hard_state {
            self.hard_state = hard_state;
        }
        for entry in &ready.entries {
            self.entries.insert(entry.slot, entry.clone());
        }
        if let Some(snapshot) = &ready.snapshot {
            self.snapshot = Some(snapshot.clone());
        }
        let through = ready.compact_through.into_iter().chain(ready.snapshot.as_ref().map(|s| s.slot)).max();
        if let Some(through) = through {
            self.entries = self.entries.split_off(&(through + 1));
        }
    }
}

fn random_ready(rng: &mut Rng, model: &Model, step: u64) -> Ready {
    let mut ready = Ready::default();
    let log_start = model.snapshot.as_ref().map_or(0, |s| s.slot);
    if rng.chance(1, 2) {
        ready.hard_state = Some(HardState {
            promised: Ballot::new(step, rng.range(1, 5)),
            chosen_through: log_start + rng.range(0, 20),
        });
    }
    for _ in 0..rng.range(0, 6) {
        let slot = log_start + rng.range(1, 40);
        let value = if rng.chance(1, 5) {
            Value::Noop
        } else {
            let commands = (0..rng.range(1, 3))
                .map(|i| Bytes::from(format!("step {step} slot {slot} command {i}").repeat(rng.range(1, 50) as usize)))
                .collect();
            Value::Batch(commands)
        };
        ready.entries.push(Entry { slot, ballot: Ballot::new(step, rng.range(1, 5)), value });
    }
    if rng.chance(1, 8) {
        let slot = log_start + rng.range(1, 30);
        let data = Bytes::from(format!("snapshot at {slot} of step {step}").repeat(rng.range(1, 100) as usize));
        let mut membership = gaios_paxos::Membership::genesis(&[1, 2, 3]);
        membership.members.push(gaios_paxos::Member {
            id: 4 + step,
            voter: rng.chance(1, 2),
            incarnation: step,
            peer_address: format!("127.0.0.1:{step}"),
            client_address: String::new(),
        });
        membership.highest_id = 4 + step;
        ready.snapshot = Some(Snapshot { slot, data, membership });
        ready.compact_through = Some(slot);
        // Entries below a snapshot never come in the same Ready from the
        // core (it filters them); keep the generated Ready just as legal.
        ready.entries.retain(|e| e.slot > slot);
    }
    ready
}

fn check(storage: &Storage, model: &Model, seed: u64, step: u64) {
    let durable = storage.load().unwrap_or_else(|e| panic!("seed {seed} step {step}: load failed: {e}"));
    assert_eq!(durable.hard_state, model.hard_state, "seed {seed} step {step}: hard state");
    let mut entries = durable.entries.clone();
    entries.sort_by_key(|e| e.slot);
    let expected: Vec<Entry> = model.entries.values().cloned().collect();
    assert_eq!(entries, expected, "seed {seed} step {step}: log");
    assert_eq!(durable.snapshot, model.snapshot, "seed {seed} step {step}: snapshot");
}

fn run(seed: u64) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let identity = Identity { cell_id: "model".to_string(), replica_id: 1 };
    let record = InitRecord {
        identity: identity.clone(),
        incarnation: NonZeroU64::new(seed | 1).expect("odd, so not zero"),
        members: vec![PeerSpec {
            id: 1,
            peer_address: "127.0.0.1:7101".parse().expect("an address"),
            client_address: "127.0.0.1:7201".parse().expect("an address"),
        }],
        joining: false,
    };
    Storage::init(dir.path(), &record).expect("initialise a new directory");
    let mut storage = Some(Storage::open(dir.path(), &identity).expect("open a new directory"));
    let mut model = Model::default();
    let mut rng = Rng::new(seed);
    for step in 1..=60 {
        if rng.chance(1, 6) {
            // Reboot: close the database (drop it) and open it again.
            drop(storage.take());
            storage = Some(
                Storage::open(dir.path(), &identity)
                    .unwrap_or_else(|e| panic!("seed {seed} step {step}: reopen failed: {e}")),
            );
        } else {
            let ready = random_ready(&mut rng, &model, step);
            let db = storage.as_ref().expect("open");
            db.persist(&ready).unwrap_or_else(|e| panic!("seed {seed} step {step}: persist failed: {e}"));
            model.apply(&ready);
        }
        check(storage.as_ref().expect("open"), &model, seed, step);
    }
}

#[test]
fn storage_matches_a_model_across_writes_and_reboots() {
    if let Some(seed) = std::env::var("GAIOS_STORAGE_SEED").ok().and_then(|s| s.parse().ok()) {
        run(seed);
        return;
    }
    let seeds: u64 = std::env::var("GAIOS_STORAGE_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    for seed in 0..seeds {
        run(seed);
    }
}
