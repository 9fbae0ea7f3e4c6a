//! Runs the deterministic simulator over many seeds.
//!
//! - `cargo test -p gaios-paxos --test simulation` runs 500 seeds (the CI profile).
//! - `GAIOS_SIM_SEEDS=<n>` runs `n` seeds instead (a longer soak).
//! - `GAIOS_SEED=<n>` replays exactly seed `n` and prints its report.
//! - `GAIOS_SIM_FIRST_SEED=<n>` starts the seed range at `n`.
//!
//! A failing seed prints the violation, the last events and the replay command.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use gaios_paxos::sim::{self, Options, Report};

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    match value.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => panic!("{name} must be a whole number, not {value:?}"),
    }
}

/// Runs `seeds` in parallel on every core and returns the first violation.
fn run_seeds(first: u64, count: u64, options: &Options) -> (u64, Report, Option<String>) {
    let next = AtomicU64::new(first);
    let failure: Mutex<Option<(u64, String)>> = Mutex::new(None);
    let totals: Mutex<(u64, Report)> = Mutex::new((0, Report::default()));
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= first + count || failure.lock().is_ok_and(|f| f.is_some()) {
                        return;
                    }
                    // A broken invariant inside the core panics; report it
                    // with its seed like any other violation.
                    let outcome = std::panic::catch_unwind(|| sim::run(seed, options)).unwrap_or_else(|panic| {
                        let text = panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string()))
                            .unwrap_or_default();
                        Err(sim::Violation {
                            seed,
                            time_us: 0,
                            message: format!("the core panicked: {text}"),
                            trace: Vec::new(),
                            replay: String::new(),
                        })
                    });
                    match outcome {
                        Ok(report) => {
                            let mut totals = totals.lock().expect("totals lock");
                            totals.0 += 1;
                            let sum = &mut totals.1;
                            sum.chosen_slots += report.chosen_slots;
                            sum.acknowledged += report.acknowledged;
                            sum.elections += report.elections;
                            sum.crashes += report.crashes;
                            sum.pauses += report.pauses;
                            sum.partitions += report.partitions;
                            sum.snapshots_installed += report.snapshots_installed;
                            sum.messages_delivered += report.messages_delivered;
                            sum.worst_recovery_ticks = sum.worst_recovery_ticks.max(report.worst_recovery_ticks);
                            sum.holds += report.holds;
                            sum.replays += report.replays;
                            sum.forged += report.forged;
                            sum.power_losses += report.power_losses;
                            sum.membership_changes += report.membership_changes;
                        }
                        Err(violation) => {
                            let mut failure = failure.lock().expect("failure lock");
                            if failure.as_ref().is_none_or(|(s, _)| seed < *s) {
                                *failure = Some((seed, violation.to_string()));
                            }
                        }
                    }
                }
            });
        }
    });
    let (runs, report) = totals.into_inner().expect("totals lock");
    (runs, report, failure.into_inner().expect("failure lock").map(|(_, text)| text))
}

#[test]
fn simulation_seeds_keep_paxos_safe_and_live() {
    let options = Options::default();
    if let Some(seed) = env_u64("GAIOS_SEED") {
        // Replaying runs on this thread, so a panic shows its backtrace.
        match sim::run(seed, &options) {
            Ok(report) => println!("seed {seed}: ok {report:?}"),
            Err(violation) => panic!("{violation}"),
        }
        return;
    }
    let count = env_u64("GAIOS_SIM_SEEDS").unwrap_or(500);
    let first = env_u64("GAIOS_SIM_FIRST_SEED").unwrap_or(0);
    let started = std::time::Instant::now();
    let (runs, report, failure) = run_seeds(first, count, &options);
    if let Some(text) = failure {
        panic!("simulation found a violation:\n{text}");
    }
    println!(
        "{runs} seeds ok in {:.1}s: {} slots chosen, {} commands acknowledged, {} elections, {} crashes, \
         {} pauses, {} partitions, {} snapshots installed, {} messages, {} holds, {} replays, {} forged messages \
         rejected, {} power losses, {} configuration changes; worst recovery after heal {} ticks",
        started.elapsed().as_secs_f64(),
        report.chosen_slots,
        report.acknowledged,
        report.elections,
        report.crashes,
        report.pauses,
        report.partitions,
        report.snapshots_installed,
        report.messages_delivered,
        report.holds,
        report.replays,
        report.forged,
        report.power_losses,
        report.membership_changes,
        report.worst_recovery_ticks,
    );
    assert_eq!(runs, count, "every seed ran");
    assert!(report.acknowledged > 0 && report.elections > 0 && report.crashes > 0 && report.partitions > 0);
    assert!(report.snapshots_installed > 0, "no run exercised snapshot hand-off");
    assert!(
        report.holds > 0 && report.replays > 0 && report.forged > 0 && report.power_losses > 0 && report.membership_changes > 0,
        "a hostile fault never happened: {report:?}"
    );
}

/// The lease checks bite: with clocks drifting far past the bound the lease
/// margin is built for (up to 90% instead of 2%), some seed must show two
/// replicas holding a master lease at once or a stale read. If none does,
/// the checker (or the fault model) has gone blind. (At 40% none of 300
/// seeds shows one: election timeouts, which are at least a lease long, and
/// pre-votes add protection beyond the lease margin.) Configuration changes
/// are off here: they move the seeds' random streams, and the lease check is
/// what this test is about. Since a stall no longer counts toward
/// elections (`Replica::stalled`), paused replicas campaign less and the
/// first seed that shows a violation came later (394 when that changed), so
/// up to 1,000 are tried; the test stops at the first.
#[test]
fn simulation_catches_lease_violations_when_clocks_drift_past_the_bound() {
    let options = Options { clock_drift_ppm: 900_000, membership_changes: false, ..Options::default() };
    let seeds = env_u64("GAIOS_SIM_DRIFT_SEEDS").unwrap_or(1_000);
    for seed in 0..seeds {
        let outcome = std::panic::catch_unwind(|| sim::run(seed, &options));
        if let Ok(Err(violation)) = outcome {
            if violation.message.contains("lease") || violation.message.contains("stale read") {
                println!("seed {seed} (of {seeds}) caught it: {}", violation.message);
                return;
            }
        }
    }
    panic!("no lease violation in {seeds} seeds with 90% clock drift: the lease checks never fired");
}
