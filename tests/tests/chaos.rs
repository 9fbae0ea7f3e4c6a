//! The chaos suite's short profile, in the test command: about ninety
//! seconds of faults against five real replicas (at least one master kill,
//! one pause longer than the master lease and one isolation of the master),
//! five workloads, and every checker. `GAIOS_CHAOS_SEED=n` replays a seed;
//! `GAIOS_CHAOS=long` (with `GAIOS_CHAOS_MINUTES`) runs the long profile.

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
    let faults = &report.json["faults"];
    for required in ["kill-master", "pause-master", "isolate-master"] {
        assert!(faults[required].as_u64().unwrap_or(0) >= 1, "no {required} in this run: {faults}");
    }
    assert_eq!(
        report.violations, 0,
        "violations found:\n{}\nreplay with: {}",
        report.table,
        chaos::replay_command(&profile)
    );
}
