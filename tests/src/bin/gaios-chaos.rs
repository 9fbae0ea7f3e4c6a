//! `gaios-chaos`: runs the chaos suite (see `gaios_tests::chaos`) against
//! five real replicas and prints the summary table; the JSON report goes to
//! the results directory. Exits 1 on any violation, when a nemesis that
//! must bite did not (see `Report::missing`), or when a long run did not
//! inject every kind of fault.
//!
//! ```sh
//! cargo build --bins -p gaios-server -p gaios-client -p gaios-tests
//! GAIOS_CHAOS=long GAIOS_CHAOS_MINUTES=20 cargo run -p gaios-tests --bin gaios-chaos
//! ```

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use gaios_tests::chaos::{self, Profile};

/// Runs the chaos suite.
#[derive(Debug, Parser)]
#[command(name = "gaios-chaos", about = "Kill, pause and partition real Gaios replicas and check the histories")]
struct Args {
    /// The seed of the fault schedule (default: GAIOS_CHAOS_SEED or random).
    #[arg(long)]
    seed: Option<u64>,
    /// Minutes of faults for a long run (default: GAIOS_CHAOS=long with
    /// GAIOS_CHAOS_MINUTES, else the short profile).
    #[arg(long)]
    minutes: Option<u64>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let mut profile = Profile::from_env();
    if let Some(seed) = args.seed {
        profile.seed = seed;
    }
    if let Some(minutes) = args.minutes {
        profile = Profile::long(Duration::from_secs(60 * minutes), profile.seed);
    }
    println!("chaos: profile {} seed {} for {} s", profile.name, profile.seed, profile.duration.as_secs());
    match chaos::run(profile.clone()).await {
        Ok(report) => {
            println!("{}", report.table);
            println!("report: {}", report.path.display());
            let mut failed = false;
            if report.violations > 0 {
                println!("VIOLATIONS: {}", report.violations);
                failed = true;
            }
            for missing in &report.missing {
                println!("A NEMESIS DID NOT BITE: {missing}");
                failed = true;
            }
            if profile.name == "long" {
                for name in chaos::Fault::all_names() {
                    if report.json["faults"][name].as_u64().unwrap_or(0) == 0 {
                        println!("NOT INJECTED: {name}");
                        failed = true;
                    }
                }
            }
            if failed {
                println!("replay with: {}", chaos::replay_command(&profile));
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            println!("chaos run failed: {error:#}\nreplay with: {}", chaos::replay_command(&profile));
            ExitCode::FAILURE
        }
    }
}
