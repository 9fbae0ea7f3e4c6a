//! Kills a process that is writing to [`Storage`] with SIGKILL at random
//! moments, reopens the directory, and checks that nothing the writer
//! reported durable is lost and nothing stored is torn.
//!
//! The test binary plays both parts. The test `durability_sigkill` is the
//! parent: it re-executes this binary with `GAIOS_DURABILITY_CHILD=<dir>` and
//! the filter `child_writer`, which makes the (otherwise ignored and inert)
//! test `child_writer` the writer. The writer resumes from what
//! [`Storage::load`] returns and persists the `Ready` of a fixed plan, step
//! after step; each step's `Ready` is a pure function of its sequence number,
//! so the parent can rebuild exactly what the directory must hold after any
//! step. After each `persist` returns, the writer prints `durable <seq>`.
//!
//! After each kill the directory must hold exactly the state after step `n`,
//! where `n` is the last step reported durable or the one after it (written
//! but killed before it could report). Every stored entry's bytes must equal
//! the plan's bytes for its slot and ballot.
//!
//! A failure prints the seed; `GAIOS_DURABILITY_SEED=<seed>` replays the same
//! kill schedule (the moments still depend on the machine's speed).
//!
//! What SIGKILL cannot show: a write that reached the kernel but not the disk
//! survives the death of a process, so this test cannot tell `sync = true`
//! from `sync = false`. It does catch a batch that is not atomic, a field not
//! written, a write reported before it is made, and a recovery that loses or
//! tears records.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::num::NonZeroU64;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use gaios_paxos::ready::Ready;
use gaios_paxos::types::{Ballot, Durable, Entry, HardState, Slot, Snapshot, Value};
use gaios_server::ops::config::PeerSpec;
use gaios_server::replica::storage::{Identity, InitRecord, Storage};

/// Names the directory the writer uses; its presence makes `child_writer`
/// the writer.
const CHILD_ENV: &str = "GAIOS_DURABILITY_CHILD";
/// Replays a kill schedule.
const SEED_ENV: &str = "GAIOS_DURABILITY_SEED";
/// Kill/reopen cycles on one directory.
const CYCLES: u32 = 14;
/// The most steps the parent lets a writer report before it kills it.
const LINES_BEFORE_KILL_MAX: u64 = 80;
/// How long the parent waits for a writer's report before it gives up.
const CYCLE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a writer runs if nobody kills it (the parent died).
const CHILD_LIFETIME: Duration = Duration::from_secs(60);
/// The writer's replica; every ballot of the plan belongs to it.
const REPLICA: u64 = 1;
/// New slots each step writes.
const NEW_SLOTS_PER_STEP: u64 = 3;

fn identity() -> Identity {
    Identity {
        cell_id: "durability".to_owned(),
        replica_id: REPLICA,
    }
}

/// What `init` records for the writer's directory.
fn init_record() -> InitRecord {
    InitRecord {
        identity: identity(),
        incarnation: NonZeroU64::new(0xd0_0d1e).expect("not zero"),
        members: vec![PeerSpec {
            id: REPLICA,
            peer_address: "127.0.0.1:7101".parse().expect("an address"),
            client_address: "127.0.0.1:7201".parse().expect("an address"),
        }],
        joining: false,
    }
}

/// A small deterministic generator (SplitMix64): the plan's bytes and the
/// parent's kill schedule come from it, so both replay exactly.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    fn bytes(&mut self, len: u64) -> Bytes {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// The value the plan writes at `slot` in `ballot`: mostly small batches,
/// some empty, some no-ops, now and then one of tens of KiB.
fn value_for(slot: Slot, ballot: Ballot) -> Value {
    let mut rng =
        SplitMix(slot.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ (ballot.round << 20) ^ ballot.replica);
    if rng.below(11) == 0 {
        return Value::Noop;
    }
    let commands = rng.below(4);
    Value::Batch(
        (0..commands)
            .map(|_| {
                let len = if rng.below(40) == 0 {
                    16_384 + rng.below(49_152)
                } else {
                    rng.below(2_048)
                };
                rng.bytes(len)
            })
            .collect(),
    )
}

/// The snapshot data the plan stores for a snapshot at `slot`.
fn snapshot_data(slot: Slot) -> Bytes {
    SplitMix(slot ^ 0x5eed).bytes(slot % 5_000)
}

/// The `Ready` of step `seq` (from 1): a new promise and chosen prefix,
/// three new slots, overwrites of earlier slots in the higher ballot every
/// third and fifth step, a snapshot every tenth step and a bare compaction
/// every seventh.
fn plan(seq: u64) -> Ready {
    let ballot = Ballot::new(seq, REPLICA);
    let last = NEW_SLOTS_PER_STEP * seq;
    let mut slots: Vec<Slot> = (last - NEW_SLOTS_PER_STEP + 1..=last).collect();
    if seq.is_multiple_of(3) && seq > 3 {
        slots.push(last - 7);
    }
    if seq.is_multiple_of(5) && seq > 5 {
        slots.push(last - 5);
    }
    let mut ready = Ready::default();
    ready.hard_state = Some(HardState {
        promised: ballot,
        chosen_through: last.saturating_sub(NEW_SLOTS_PER_STEP),
    });
    ready.entries = slots
        .into_iter()
        .map(|slot| Entry {
            slot,
            ballot,
            value: value_for(slot, ballot),
        })
        .collect();
    let floor = last.saturating_sub(12);
    if seq.is_multiple_of(10) {
        ready.snapshot = Some(Snapshot {
            slot: floor,
            data: snapshot_data(floor),
            membership: gaios_paxos::Membership::genesis(&[1, 2, 3, 4, 5]),
        });
    } else if seq.is_multiple_of(7) {
        ready.compact_through = Some(floor);
    }
    ready
}

/// What the directory must hold after a step: the storage's contract applied
/// to the plan (entries put by slot, then the log at or below the
/// compaction point and the snapshot's slot deleted).
#[derive(Debug, Default)]
struct Model {
    seq: u64,
    hard_state: HardState,
    /// Slot to the round of the ballot its stored entry was accepted in.
    entries: BTreeMap<Slot, u64>,
    snapshot_slot: Option<Slot>,
}

impl Model {
    fn step(&mut self) {
        self.seq += 1;
        let ready = plan(self.seq);
        if let Some(hard_state) = ready.hard_state {
            self.hard_state = hard_state;
        }
        for entry in &ready.entries {
            self.entries.insert(entry.slot, entry.ballot.round);
        }
        if let Some(snapshot) = &ready.snapshot {
            self.snapshot_slot = Some(snapshot.slot);
        }
        let floor = ready
            .compact_through
            .into_iter()
            .chain(ready.snapshot.map(|s| s.slot))
            .max();
        if let Some(floor) = floor {
            self.entries.retain(|&slot, _| slot > floor);
        }
    }

    /// Compares what was loaded with the model, byte for byte, and says what
    /// differs.
    fn check(&self, durable: &Durable) -> Result<(), String> {
        let mut problems = Vec::new();
        if durable.hard_state != self.hard_state {
            problems.push(format!(
                "hard state {:?}, expected {:?}",
                durable.hard_state, self.hard_state
            ));
        }
        let mut stored = BTreeMap::new();
        for entry in &durable.entries {
            if entry.value != value_for(entry.slot, entry.ballot) {
                problems.push(format!(
                    "TORN: slot {} ballot {} holds bytes the plan never wrote there",
                    entry.slot, entry.ballot
                ));
            }
            if entry.ballot.replica != REPLICA {
                problems.push(format!(
                    "slot {} has foreign ballot {}",
                    entry.slot, entry.ballot
                ));
            }
            if stored.insert(entry.slot, entry.ballot.round).is_some() {
                problems.push(format!("slot {} loaded twice", entry.slot));
            }
        }
        for (slot, round) in &self.entries {
            match stored.get(slot) {
                None => problems.push(format!("LOST: slot {slot} (ballot round {round}) missing")),
                Some(found) if found != round => problems.push(format!(
                    "slot {slot} holds ballot round {found}, expected {round}"
                )),
                Some(_) => {}
            }
        }
        for (slot, round) in &stored {
            if !self.entries.contains_key(slot) {
                problems.push(format!(
                    "slot {slot} (ballot round {round}) should have been compacted away or never written"
                ));
            }
        }
        let snapshot_slot = durable.snapshot.as_ref().map(|s| s.slot);
        if snapshot_slot != self.snapshot_slot {
            problems.push(format!(
                "snapshot at {snapshot_slot:?}, expected {:?}",
                self.snapshot_slot
            ));
        }
        if let Some(snapshot) = &durable.snapshot
            && snapshot.data != snapshot_data(snapshot.slot)
        {
            problems.push(format!("TORN: snapshot data at slot {}", snapshot.slot));
        }
        if durable.applied != self.snapshot_slot.unwrap_or(0) {
            problems.push(format!(
                "applied {} without a state machine",
                durable.applied
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n  "))
        }
    }
}

/// The writer. Inert unless the parent started this binary with
/// `GAIOS_DURABILITY_CHILD` set.
#[test]
#[ignore = "the writer half of durability_sigkill; it runs only as that test's child process"]
fn child_writer() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let storage = Storage::open(Path::new(&dir), &identity()).expect("writer: open storage");
    let durable = storage.load().expect("writer: load storage");
    let mut seq = durable.hard_state.promised.round;
    let deadline = Instant::now() + CHILD_LIFETIME;
    let stdout = std::io::stdout();
    while Instant::now() < deadline {
        seq += 1;
        storage.persist(&plan(seq)).expect("writer: persist");
        // Written straight to the process's stdout (not through the test
        // harness's capture) and flushed, one line per write.
        let mut out = stdout.lock();
        if writeln!(out, "durable {seq}")
            .and_then(|()| out.flush())
            .is_err()
        {
            return; // The parent is gone.
        }
    }
}

/// Parses one complete line of the writer's output.
fn reported_seq(line: &str) -> Option<u64> {
    let line = line.strip_suffix('\n')?;
    line.split("durable ").nth(1)?.trim().parse().ok()
}

#[test]
fn durability_sigkill() {
    let seed = match std::env::var(SEED_ENV) {
        Ok(seed) => seed.parse().expect("GAIOS_DURABILITY_SEED must be a u64"),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    };
    eprintln!("durability_sigkill: seed {seed} (replay with {SEED_ENV}={seed})");
    let mut rng = SplitMix(seed);
    let dir = tempfile::tempdir().expect("temporary directory");
    Storage::init(dir.path(), &init_record()).expect("initialise the writer's directory");
    let exe = std::env::current_exe().expect("path of the test binary");
    let started = Instant::now();

    let mut model = Model::default();
    let mut reported_max = 0;
    let mut steps_total = 0;
    for cycle in 1..=CYCLES {
        let fail = |what: String| -> ! {
            panic!("durability_sigkill: cycle {cycle}, seed {seed}: {what}");
        };
        // Mostly: let the writer report some steps, then kill it a little
        // later. Sometimes: kill it blindly soon after it starts, perhaps
        // while RocksDB is still recovering.
        let blind_kill = rng.below(5) == 0;
        let lines_before_kill = 1 + rng.below(LINES_BEFORE_KILL_MAX);
        let delay = Duration::from_micros(if blind_kill {
            rng.below(150_000)
        } else {
            rng.below(20_000)
        });

        let mut child = Command::new(&exe)
            .args([
                "child_writer",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
                "-q",
            ])
            .env(CHILD_ENV, dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the writer");
        let stdout = child.stdout.take().expect("writer's stdout is piped");
        let (sender, receiver) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut stdout = BufReader::new(stdout);
            let mut line = String::new();
            while stdout.read_line(&mut line).is_ok_and(|n| n > 0) {
                if let Some(seq) = reported_seq(&line) {
                    // The receiver stops listening once it has seen enough.
                    let _ = sender.send(seq);
                }
                line.clear();
            }
        });

        let mut reported_in_cycle = None;
        if !blind_kill {
            let deadline = Instant::now() + CYCLE_TIMEOUT;
            for _ in 0..lines_before_kill {
                let left = deadline.saturating_duration_since(Instant::now());
                match receiver.recv_timeout(left) {
                    Ok(seq) => reported_in_cycle = reported_in_cycle.max(Some(seq)),
                    Err(_) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        fail(format!("the writer reported nothing for {CYCLE_TIMEOUT:?}"));
                    }
                }
            }
        }
        std::thread::sleep(delay);
        // `Child::kill` sends SIGKILL on Unix; the status below proves it.
        let _ = child.kill();
        let status = child.wait().expect("wait for the writer");
        if status.signal() != Some(libc::SIGKILL) {
            fail(format!(
                "the writer ended by itself ({status}) instead of by SIGKILL"
            ));
        }
        reader.join().expect("stdout reader thread");
        // Everything the writer printed before it died, including what the
        // loop above did not wait for.
        reported_in_cycle = reported_in_cycle.max(receiver.try_iter().max());
        let resumed_from = model.seq;
        if let Some(seq) = reported_in_cycle {
            reported_max = reported_max.max(seq);
        }

        let storage = Storage::open(dir.path(), &identity())
            .unwrap_or_else(|e| fail(format!("reopen after SIGKILL: {e}")));
        let durable = storage
            .load()
            .unwrap_or_else(|e| fail(format!("load after SIGKILL: {e}")));
        drop(storage);
        let stored = durable.hard_state.promised.round;
        if stored < reported_max {
            fail(format!(
                "LOST: the writer reported step {reported_max} durable, the directory holds step {stored}"
            ));
        }
        // The writer may have written one step it was killed before
        // reporting; more than one would mean it reported too little.
        let written_max = resumed_from.max(reported_max) + 1;
        if stored > written_max {
            fail(format!(
                "the directory holds step {stored}, the writer can have written at most {written_max}"
            ));
        }
        while model.seq < stored {
            model.step();
        }
        if let Err(problems) = model.check(&durable) {
            fail(format!(
                "after step {stored} (reported {reported_max}):\n  {problems}"
            ));
        }
        steps_total += stored - resumed_from;
        eprintln!(
            "cycle {cycle}: {} kill after {delay:?}, reported {reported_in_cycle:?}, stored step {stored} with {} entries: ok",
            if blind_kill { "blind" } else { "reported" },
            durable.entries.len()
        );
    }
    eprintln!(
        "durability_sigkill: {CYCLES} kills, {steps_total} steps verified in {:?}",
        started.elapsed()
    );
}
