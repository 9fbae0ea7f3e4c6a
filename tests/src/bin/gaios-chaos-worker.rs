//! `gaios-chaos-worker`: one client process of the chaos suite (see
//! `gaios_tests::chaos::workers`). The suite starts lock holders and
//! election candidates as separate processes so that its nemesis can pause
//! one with SIGSTOP past its session lease. A worker writes its events as
//! JSON lines on stdout, reads the answer to each act on stdin, and stops
//! (closing its session) at the end of stdin.
//!
//! ```sh
//! gaios-chaos-worker lock --cell 127.0.0.1:7201,... --index 0 --epoch-us 123
//! gaios-chaos-worker elect --cell 127.0.0.1:7201,... --index 1 --epoch-us 123 --seed 7
//! gaios-chaos-worker clock     # prints CLOCK_MONOTONIC for each line read
//! ```

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use gaios_client::{Client, Error, LockMode, OpenOptions, election};
use gaios_tests::chaos::workers::{self, ACQUIRE_WAIT, ACT_INTERVAL, ACTS_PER_HOLD, ELECTION_PATH, Event, LOCK_DELAY, LOCK_PATH};
use gaios_tests::chaos::{self, Outcome};
use gaios_tests::rng::Rng;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::sync::{mpsc, watch};

/// One chaos-suite client process.
#[derive(Debug, Parser)]
#[command(name = "gaios-chaos-worker", about = "A lock holder or election candidate of the chaos suite")]
struct Args {
    /// `lock`, `elect` or `clock`.
    role: String,
    /// The replicas' client addresses, comma-separated.
    #[arg(long, default_value = "")]
    cell: String,
    /// This worker's index among those of its role.
    #[arg(long, default_value_t = 0)]
    index: usize,
    /// The run's start on `CLOCK_MONOTONIC`, in microseconds; events are
    /// timed from it.
    #[arg(long, default_value_t = 0)]
    epoch_us: u64,
    /// Seeds the worker's choices (how long a leader leads).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// What the suite tells the worker on stdin: answers to acts, and the end.
struct Suite {
    answers: mpsc::Receiver<bool>,
    stop: watch::Receiver<bool>,
}

impl Suite {
    /// Reads stdin in the background.
    fn listen() -> Suite {
        let (answer, answers) = mpsc::channel(4);
        let (stop_tx, stop) = watch::channel(false);
        tokio::spawn(async move {
            let mut lines = BufReader::new(tokio::io::stdin()).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if answer.send(workers::is_accepted(&line)).await.is_err() {
                    break;
                }
            }
            let _ = stop_tx.send(true);
        });
        Suite { answers, stop }
    }

    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }
}

fn emit(event: &Event) {
    println!("{}", event.to_line());
}

fn at(epoch_us: u64) -> u64 {
    gaios_tests::monotonic_us().saturating_sub(epoch_us)
}

fn outcome(error: &Error) -> Outcome {
    if chaos::definite(error) || matches!(error, Error::Timeout(_)) { Outcome::Fail } else { Outcome::Indeterminate }
}

async fn connect(args: &Args) -> Client {
    let addresses: Vec<String> = args.cell.split(',').map(str::to_string).collect();
    chaos::connect_as(&addresses, &format!("chaos-{}-{}", args.role, args.index)).await
}

/// Takes the lock, acts [`ACTS_PER_HOLD`] times (each act answered by the
/// suite), releases; again until stopped. It never checks its session
/// before acting: a paused process could not anyway.
async fn hold_locks(args: &Args, mut suite: Suite) {
    let mut client = connect(args).await;
    while !suite.stopped() {
        let options = OpenOptions::new().create().event_mask(0).lock_delay(LOCK_DELAY);
        let handle = match client.open(LOCK_PATH, options).await {
            Ok(handle) => handle,
            Err(Error::SessionExpired) => {
                client = connect(args).await;
                continue;
            }
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let held = match handle.acquire(LockMode::Exclusive, ACQUIRE_WAIT).await {
            Ok(held) => held,
            Err(error) => {
                emit(&Event::Count(outcome(&error)));
                let _ = handle.close().await;
                if error == Error::SessionExpired {
                    client = connect(args).await;
                }
                continue;
            }
        };
        emit(&Event::Count(Outcome::Ok));
        let sequencer = held.sequencer().clone();
        emit(&Event::Granted { sequencer: sequencer.clone(), at_us: at(args.epoch_us) });
        for _ in 0..ACTS_PER_HOLD {
            emit(&Event::Act { sequencer: sequencer.clone() });
            if suite.answers.recv().await.is_none() {
                break;
            }
            tokio::time::sleep(ACT_INTERVAL).await;
        }
        emit(&Event::Released { generation: sequencer.lock_generation, at_us: at(args.epoch_us) });
        let released = held.release().await;
        let _ = handle.close().await;
        // A lock this session may still hold would make its next wait wait
        // for itself: end the session instead, which releases everything.
        if released.is_err() || *client.session_state().borrow() == gaios_client::SessionState::Expired {
            let _ = client.close().await;
            client = connect(args).await;
        }
    }
    let _ = client.close().await;
}

/// Campaigns, leads for 200-800 ms (or until leadership is lost), resigns;
/// again until stopped.
async fn campaign(args: &Args, suite: Suite) {
    let mut rng = Rng::new(args.seed);
    let mut client = connect(args).await;
    while !suite.stopped() {
        let value = format!("candidate-{}", args.index);
        let leadership = match tokio::time::timeout(Duration::from_secs(10), election::campaign(&client, ELECTION_PATH, value)).await {
            Ok(Ok(leadership)) => leadership,
            Ok(Err(error)) => {
                eprintln!("gaios-chaos-worker: campaign failed: {error}");
                emit(&Event::Count(if chaos::definite(&error) { Outcome::Fail } else { Outcome::Indeterminate }));
                if error == Error::SessionExpired {
                    client = connect(args).await;
                }
                continue;
            }
            Err(_) => {
                eprintln!("gaios-chaos-worker: campaign did not end within 10 s");
                emit(&Event::Count(Outcome::Fail));
                // The abandoned wait may still be granted later: start over
                // with a fresh session so no stale wait stays in line.
                let _ = client.close().await;
                client = connect(args).await;
                continue;
            }
        };
        emit(&Event::Count(Outcome::Ok));
        let generation = leadership.sequencer().lock_generation;
        emit(&Event::Leader { generation, at_us: at(args.epoch_us) });
        let hold = rng.between(Duration::from_millis(200), Duration::from_millis(800));
        let lost = tokio::select! {
            () = tokio::time::sleep(hold) => false,
            () = leadership.lost() => true,
        };
        if lost {
            emit(&Event::Lost { generation, at_us: at(args.epoch_us) });
            client = connect(args).await;
        } else {
            emit(&Event::Resigning { generation, at_us: at(args.epoch_us) });
            let resigned = leadership.resign().await;
            emit(&Event::Resigned { generation, ok: resigned.is_ok() });
            if let Err(error) = resigned {
                // The lock may still be held by this session: end it.
                eprintln!("gaios-chaos-worker: resign failed: {error}");
                let _ = client.close().await;
                client = connect(args).await;
            }
        }
    }
    let _ = client.close().await;
}

/// Prints `CLOCK_MONOTONIC` for each line read, until the end of stdin.
async fn clock() {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(_)) = lines.next_line().await {
        emit(&Event::Clock { monotonic_us: gaios_tests::monotonic_us() });
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    match args.role.as_str() {
        "lock" => hold_locks(&args, Suite::listen()).await,
        "elect" => campaign(&args, Suite::listen()).await,
        "clock" => clock().await,
        other => {
            eprintln!("gaios-chaos-worker: unknown role {other:?}; expected lock, elect or clock");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}
