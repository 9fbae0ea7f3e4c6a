//! Runs the whole-cell simulator over many seeds.
//!
//! - `cargo test -p gaios-cellsim` runs 500 seeds (the test command's profile).
//! - `GAIOS_CELLSIM_SEEDS=<n>` runs `n` seeds instead (a soak);
//!   `GAIOS_CELLSIM_FIRST_SEED=<n>` starts the range at `n`.
//! - `GAIOS_CELLSIM_SEED=<n>` replays exactly seed `n` and prints its report.
//!
//! A failing seed prints the violation, the last events and the replay
//! command.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use gaios_cellsim::CellReport;

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    match value.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => panic!("{name} must be a whole number, not {value:?}"),
    }
}

/// One seed; a panic (a broken assertion in the core or the state machine)
/// is a violation of that seed too.
fn run_one(seed: u64) -> Result<CellReport, String> {
    match std::panic::catch_unwind(|| gaios_cellsim::run(seed)) {
        Ok(Ok(report)) => Ok(report),
        Ok(Err(violation)) => Err(violation.to_string()),
        Err(panic) => {
            let text = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string()))
                .unwrap_or_default();
            Err(format!(
                "seed {seed}: panicked: {text}\nreplay with: GAIOS_CELLSIM_SEED={seed} cargo test -p gaios-cellsim"
            ))
        }
    }
}

fn add(sum: &mut CellReport, report: &CellReport) {
    sum.paxos.chosen_slots += report.paxos.chosen_slots;
    sum.paxos.elections += report.paxos.elections;
    sum.paxos.crashes += report.paxos.crashes;
    sum.paxos.power_losses += report.paxos.power_losses;
    sum.paxos.snapshots_installed += report.paxos.snapshots_installed;
    sum.paxos.partitions += report.paxos.partitions;
    sum.paxos.pauses += report.paxos.pauses;
    sum.sessions_created += report.sessions_created;
    sum.sessions_expired += report.sessions_expired;
    sum.locks_granted += report.locks_granted;
    sum.writes += report.writes;
    sum.retries += report.retries;
    sum.duplicates_applied += report.duplicates_applied;
    sum.sequencer_checks += report.sequencer_checks;
    sum.commands_applied += report.commands_applied;
    sum.client_pauses += report.client_pauses;
    sum.acl_changes += report.acl_changes;
    sum.acl_denials += report.acl_denials;
}

/// Runs `count` seeds from `first` on every core; the lowest failing
/// seed's text, if any.
fn run_seeds(first: u64, count: u64) -> (u64, CellReport, Option<(u64, String)>) {
    let next = AtomicU64::new(first);
    let failure: Mutex<Option<(u64, String)>> = Mutex::new(None);
    let totals: Mutex<(u64, CellReport)> = Mutex::new((0, CellReport::default()));
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= first + count || failure.lock().is_ok_and(|f| f.is_some()) {
                        return;
                    }
                    match run_one(seed) {
                        Ok(report) => {
                            let mut totals = totals.lock().expect("totals lock");
                            totals.0 += 1;
                            add(&mut totals.1, &report);
                        }
                        Err(text) => {
                            let mut failure = failure.lock().expect("failure lock");
                            if failure.as_ref().is_none_or(|(s, _)| seed < *s) {
                                *failure = Some((seed, text));
                            }
                        }
                    }
                }
            });
        }
    });
    let (runs, report) = totals.into_inner().expect("totals lock");
    (runs, report, failure.into_inner().expect("failure lock"))
}

#[test]
fn whole_cell_seeds_keep_locks_sessions_and_replicas_safe() {
    if let Some(seed) = env_u64("GAIOS_CELLSIM_SEED") {
        match gaios_cellsim::run(seed) {
            Ok(report) => println!("seed {seed}: ok {report:?}"),
            Err(violation) => panic!("{violation}"),
        }
        return;
    }
    let count = env_u64("GAIOS_CELLSIM_SEEDS").unwrap_or(500);
    let first = env_u64("GAIOS_CELLSIM_FIRST_SEED").unwrap_or(0);
    let started = std::time::Instant::now();
    let (runs, report, failure) = run_seeds(first, count);
    if let Some((_, text)) = failure {
        panic!("the whole-cell simulator found a violation:\n{text}");
    }
    println!(
        "{runs} seeds ok in {:.1}s: {} slots chosen, {} commands applied (all replicas), {} elections, {} crashes \
         ({} power losses), {} partitions, {} pauses, {} snapshots installed; {} sessions created, {} expired, \
         {} client pauses; {} locks granted, {} writes, {} sequencer checks, {} ACL changes, {} ACL denials; {} retries, \
         {} retried calls applied again",
        started.elapsed().as_secs_f64(),
        report.paxos.chosen_slots,
        report.commands_applied,
        report.paxos.elections,
        report.paxos.crashes,
        report.paxos.power_losses,
        report.paxos.partitions,
        report.paxos.pauses,
        report.paxos.snapshots_installed,
        report.sessions_created,
        report.sessions_expired,
        report.client_pauses,
        report.locks_granted,
        report.writes,
        report.sequencer_checks,
        report.acl_changes,
        report.acl_denials,
        report.retries,
        report.duplicates_applied,
    );
    assert_eq!(runs, count, "every seed ran");
    // The run exercised what it checks (a checker that never sees its case
    // cannot fail).
    assert!(report.sessions_created > 0 && report.sessions_expired > 0, "{report:?}");
    assert!(report.locks_granted > 0 && report.writes > 0 && report.sequencer_checks > 0, "{report:?}");
    assert!(report.retries > 0 && report.duplicates_applied > 0, "{report:?}");
    assert!(report.acl_changes > 0 && report.acl_denials > 0, "{report:?}");
    assert!(report.paxos.crashes > 0 && report.paxos.snapshots_installed > 0 && report.paxos.elections > 0, "{report:?}");
}
