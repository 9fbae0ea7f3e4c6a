//! `gaios elect`: campaign for leadership and run CMD while leader.

use anyhow::Context as _;
use gaios_client::{Client, election};

use crate::exit::Exit;
use crate::supervise::{Holding, Running, Supervised, exit_status_code, sequencer_env, stopped, unless_interrupted};

/// Campaign for leadership of PATH and run CMD while leader.
///
/// Waits until elected, publishes VALUE (read it with `gaios leader`),
/// runs CMD with GAIOS_SEQUENCER and GAIOS_LOCK_GENERATION set, resigns
/// when CMD exits and exits with CMD's status. When the session enters
/// jeopardy (leadership may be lost; another candidate may lead soon)
/// CMD gets SIGTERM and gaios exits 9, or 8 if leadership is lost for
/// sure (the session expired or the file was deleted).
/// --keep-through-jeopardy keeps CMD running until leadership is lost.
#[derive(Debug, clap::Args)]
#[command(after_help = crate::exit::help())]
pub struct Args {
    /// The election file (created if missing).
    pub path: String,
    /// What to publish while leader (an address, a name).
    pub value: String,
    #[command(flatten)]
    pub holding: Holding,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Campaigns, runs CMD while leader and returns its exit status (or
/// [`Exit::Interrupted`] if ctrl-c came while campaigning).
pub async fn run(client: &Client, args: Args) -> anyhow::Result<u8> {
    let path = &args.path;
    let campaign = election::campaign_with_lock_delay(client, path, args.value, args.holding.lock_delay());
    let Some(leadership) = unless_interrupted(campaign).await else {
        eprintln!("gaios: interrupted while campaigning for {path}");
        return Ok(Exit::Interrupted.code());
    };
    let leadership = leadership.with_context(|| format!("cannot campaign for {path}"))?;
    let running = Running::spawn(&args.command, &sequencer_env(leadership.sequencer()))?;
    let stop = async {
        if args.holding.keep_through_jeopardy { leadership.lost().await } else { leadership.at_risk().await }
    };
    match running.supervise(stop).await? {
        Supervised::Exited(status) => {
            if let Err(error) = leadership.resign().await {
                eprintln!("gaios: cannot resign leadership of {path} (the session's end releases it): {error}");
            }
            Ok(exit_status_code(status))
        }
        Supervised::Stopped => Err(stopped(leadership.state(), &format!("leadership of {path}"))),
    }
}
