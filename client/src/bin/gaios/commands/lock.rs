//! `gaios lock`: run CMD while holding a lock.

use std::time::Duration;

use anyhow::Context as _;
use gaios_client::{Client, Error, LockMode, OpenOptions};

use crate::exit::{Exit, failure};
use crate::supervise::{Holding, Running, Supervised, exit_status_code, sequencer_env, stopped, unless_interrupted};

/// One round of waiting for a lock when no `--timeout` is given (the wait
/// is repeated until granted).
const LOCK_WAIT_ROUND: Duration = Duration::from_secs(30);

/// Run CMD while holding PATH's lock (the file is created if missing).
///
/// CMD gets GAIOS_SEQUENCER (`path:mode:generation:instance`) and
/// GAIOS_LOCK_GENERATION in its environment; hand the sequencer to
/// services that can reject stale holders. The lock is released when
/// CMD exits and gaios exits with CMD's status. When the session enters
/// jeopardy (no master answered within the lease: the lock may be lost,
/// and the cell may soon give it to another holder) CMD gets SIGTERM
/// (SIGKILL 10 s later) and gaios exits 9; if the lock is lost for sure
/// (the session expired or the file was deleted) it exits 8. With
/// --keep-through-jeopardy CMD keeps running through jeopardy and is
/// stopped only when the lock is lost (up to --grace-ms later; another
/// holder may get the lock meanwhile, which is what the sequencer is
/// for). Ctrl-c and SIGTERM are passed on to CMD.
#[derive(Debug, clap::Args)]
#[command(after_help = crate::exit::help())]
pub struct Args {
    /// The lock file.
    pub path: String,
    /// Take the lock shared (many holders, no exclusive one).
    #[arg(long)]
    pub shared: bool,
    /// Give up (exit 4) if the lock is not granted within this many
    /// seconds; 0 tries once. Without it, wait as long as it takes.
    #[arg(long)]
    pub timeout: Option<f64>,
    #[command(flatten)]
    pub holding: Holding,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Takes the lock, runs CMD and returns its exit status (or
/// [`Exit::Interrupted`] if ctrl-c came while waiting for the lock).
pub async fn run(client: &Client, args: Args) -> anyhow::Result<u8> {
    let path = &args.path;
    let mode = if args.shared { LockMode::Shared } else { LockMode::Exclusive };
    let timeout = match args.timeout {
        Some(seconds) if !seconds.is_finite() || seconds < 0.0 => {
            return Err(failure(Exit::InvalidArgument, format!("--timeout {seconds} is not a number of seconds")));
        }
        Some(seconds) => Some(Duration::from_secs_f64(seconds)),
        None => None,
    };
    let acquired = unless_interrupted(async {
        let options = OpenOptions::new().create().event_mask(0).lock_delay(args.holding.lock_delay());
        let handle = client.open(path, options).await.with_context(|| format!("cannot open {path}"))?;
        let lock = match timeout {
            Some(wait) if wait.is_zero() => handle.try_acquire(mode).await,
            Some(wait) => handle.acquire(mode, wait).await,
            None => loop {
                match handle.acquire(mode, LOCK_WAIT_ROUND).await {
                    Err(Error::Timeout(_)) => continue,
                    other => break other,
                }
            },
        };
        lock.with_context(|| format!("cannot lock {path}"))
    })
    .await;
    let Some(lock) = acquired else {
        eprintln!("gaios: interrupted while waiting for the lock on {path}");
        return Ok(Exit::Interrupted.code());
    };
    let lock = lock?;
    let running = Running::spawn(&args.command, &sequencer_env(lock.sequencer()))?;
    let stop = async {
        if args.holding.keep_through_jeopardy { lock.lost().await } else { lock.at_risk().await }
    };
    match running.supervise(stop).await? {
        Supervised::Exited(status) => {
            let _ = lock.release().await;
            Ok(exit_status_code(status))
        }
        Supervised::Stopped => Err(stopped(lock.state(), &format!("the lock on {path}"))),
    }
}
