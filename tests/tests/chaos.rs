//! The chaos suite's short profile, in the test command: about ninety
//! seconds of faults against five real replicas (every mandatory fault:
//! a master kill, a pause longer than the master lease, an isolation, a
//! link held while the master is deposed, a slow link, a lock holder and a
//! leader paused past their session lease, a follower restarted, and one
//! restarted after missing 320 large writes; then a replica's data
//! directory wiped), every workload and checker, and the scenario with a
//! master's clock outside the drift bound. `GAIOS_CHAOS_SEED=n` replays a
//! seed; `GAIOS_CHAOS=long` (with `GAIOS_CHAOS_MINUTES`) runs the long
//! profile.
//!
//! The test fails on any violation, and also when a nemesis that must bite
//! did not: the unguarded control must show overlapping lock holders after
//! a holder was paused, and the out-of-bound clock scenario must be caught
//! by the linearizability checker.

use gaios_tests::chaos::{self, Profile};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_chaos_suite_finds_no_violation() {
    let profile = Profile::from_env();
    println!("chaos: profile {} seed {} ({} s of faults)", profile.name, profile.seed, profile.duration.as_secs());
    let report = match chaos::run(profile.clone()).await {
        Ok(report) => report,
        Err(error) => panic!("the chaos run failed: {error:#}\nreplay with: {}", chaos::replay_command(&profile)),
    };
    println!("{}\nreport: {}", report.table, report.path.display());
    let mut failures = Vec::new();
    let faults = &report.json["faults"];
    let required: Vec<&str> = if profile.name == "long" {
        chaos::Fault::all_names()
    } else {
        vec![
            "kill-master",
            "pause-master",
            "isolate-master",
            "hold-link-depose-master",
            "slow-link",
            "pause-client",
            "restart-follower",
            "rejoin-after-writes",
            "wipe-replica",
        ]
    };
    for required in required {
        if faults[required].as_u64().unwrap_or(0) == 0 {
            failures.push(format!("no {required} in this run: {faults}"));
        }
    }
    if report.violations > 0 {
        failures.push(format!("{} violations (see the checker table)", report.violations));
    }
    failures.extend(report.missing.iter().map(|missing| format!("a nemesis did not bite: {missing}")));
    assert!(failures.is_empty(), "{}\nreplay with: {}", failures.join("\n"), chaos::replay_command(&profile));
}
