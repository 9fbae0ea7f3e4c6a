//! `gaios member`: read and change the cell's configuration, one safe step
//! at a time through the log. Every step first reads the configuration in
//! force and skips what is already done, so a command interrupted (or whose
//! master failed) can simply be run again.

use gaios_client::Tls;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use gaios_client::membership::{Change, ChangeFailed, Configuration, change_membership, configuration};
use gaios_proto::cell::v1 as api;

use crate::exit::{Exit, failure};
use crate::print::Printer;

/// How often a waiting step reads the configuration again.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How long `add` waits for a new replica that is still starting.
const JOINER_START_WAIT: Duration = Duration::from_secs(15);
/// How long a change refused as `WOULD_LOSE_QUORUM` is asked again before
/// the refusal is reported: right after a fault heals, a voter may miss the
/// master's lease window for a moment.
const QUORUM_WAIT: Duration = Duration::from_secs(10);
/// A learner may be promoted once it is this close to the master (the
/// master refuses a promotion further behind unless forced).
const PROMOTE_LAG_SLOTS: u64 = 64;

/// Read or change the cell's configuration: `list`, `add`, `promote`,
/// `remove`, `replace`. Changes go through the log one at a time; each is
/// refused (exit 4) if it would leave fewer than three voters or a
/// configuration whose reachable voters make no majority, unless `--force`.
#[derive(Debug, clap::Args)]
#[command(after_help = crate::exit::help())]
pub struct Args {
    #[command(subcommand)]
    command: Step,
    /// Skip the master's safety checks (quorum reachable, three voters,
    /// learner caught up).
    #[arg(long, global = true)]
    force: bool,
    /// Give up (exit 5) if the command is not done within this many
    /// milliseconds; run it again to resume.
    #[arg(long, default_value_t = 600_000, global = true)]
    timeout_ms: u64,
}

#[derive(Debug, clap::Subcommand)]
enum Step {
    /// List the members in force: id, voter or learner, addresses,
    /// incarnation, how far each has learned (as the master saw it).
    List,
    /// Add a replica started with `gaios-server init --join` as a learner,
    /// wait for it to catch up, then promote it to voter.
    Add(NewMember),
    /// Promote a learner to voter (once it has caught up).
    Promote {
        /// The learner's id.
        id: u64,
    },
    /// Remove a member (voter or learner). A removed replica stops, and
    /// its data directory refuses to start again.
    Remove {
        /// The member's id.
        id: u64,
    },
    /// Replace member OLD by a new replica: add it as a learner, wait for
    /// it to catch up, promote it, remove OLD.
    Replace {
        /// The member to replace.
        old: u64,
        #[command(flatten)]
        new: NewMember,
    },
}

/// A replica that joins.
#[derive(Debug, clap::Args)]
struct NewMember {
    /// Its id (`gaios-server init --join --id`), higher than any id the
    /// cell ever used (see `gaios member list`).
    #[arg(long)]
    id: u64,
    /// Where peers reach it.
    #[arg(long)]
    peer: String,
    /// Where clients reach it; its incarnation is read from there.
    #[arg(long)]
    client: String,
    /// Leave it a learner: promote it later with `gaios member promote`.
    #[arg(long)]
    no_promote: bool,
}

/// Runs a `gaios member` command against `cell`.
pub async fn run(cell: &[String], tls: Option<&Tls>, args: Args, printer: &mut dyn Printer) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_millis(args.timeout_ms);
    let steps = Steps { cell: cell.to_vec(), tls: tls.cloned(), force: args.force, until };
    match args.command {
        Step::List => {}
        Step::Add(new) => steps.add(&new).await?,
        Step::Promote { id } => steps.promote(id).await?,
        Step::Remove { id } => steps.remove(id).await?,
        Step::Replace { old, new } => {
            if new.no_promote {
                return Err(failure(Exit::InvalidArgument, "replace promotes the new member; --no-promote makes no sense here"));
            }
            // Resumed after OLD was removed: the new member must be in.
            let config = steps.read().await?;
            if config.members.iter().all(|m| m.id != old) && !already_voter(&config, new.id) {
                return Err(failure(Exit::FailedPrecondition, format!("replica {old} is not a member")));
            }
            steps.add(&new).await?;
            steps.remove(old).await?;
        }
    }
    printer.members(&steps.read().await?)
}

fn already_voter(config: &Configuration, id: u64) -> bool {
    config.members.iter().any(|m| m.id == id && m.voter)
}

/// The steps of a change, against one cell, with one deadline.
struct Steps {
    cell: Vec<String>,
    tls: Option<Tls>,
    force: bool,
    until: Instant,
}

impl Steps {
    fn left(&self) -> anyhow::Result<Duration> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(failure(Exit::Unavailable, "the configuration change did not finish in time; run the command again to resume"));
        }
        Ok(left)
    }

    /// The configuration in force, as the master reports it.
    async fn read(&self) -> anyhow::Result<Configuration> {
        Ok(configuration(&self.cell, self.tls.as_ref()).await?)
    }

    /// Asks for one change; a lost answer is read back from the
    /// configuration (`done` says whether the change is in force), and
    /// `CHANGE_IN_FLIGHT` is waited out.
    async fn change(&self, change: Change, done: impl Fn(&Configuration) -> bool) -> anyhow::Result<()> {
        let quorum_until = Instant::now() + QUORUM_WAIT;
        loop {
            if done(&self.read().await?) {
                return Ok(());
            }
            match change_membership(&self.cell, self.tls.as_ref(), &change, self.force, self.left()?).await {
                Ok(_) => return Ok(()),
                Err(ChangeFailed { reason: Some(api::ErrorReason::ChangeInFlight), .. }) => {}
                // Reachability moves; a lasting refusal is reported.
                // (Only while a retry fits before either deadline: the
                // refusal, exit 4, is what a lasting one gets.)
                Err(ChangeFailed { reason: Some(api::ErrorReason::WouldLoseQuorum), .. })
                    if Instant::now() + 2 * POLL_INTERVAL < quorum_until.min(self.until) => {}
                // Our view was older than the master's (a lost answer, a
                // deposed master read first): read again; done is done.
                Err(ChangeFailed { reason: Some(api::ErrorReason::AlreadyAMember | api::ErrorReason::NotAMember), .. })
                    if done(&self.read().await?) =>
                {
                    return Ok(());
                }
                Err(ChangeFailed { reason: None, error: gaios_client::Error::NoMaster(_) | gaios_client::Error::Timeout(_) }) => {}
                Err(failed) => return Err(anyhow::Error::new(failed)).with_context(|| format!("cannot {change:?}")),
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    async fn add(&self, new: &NewMember) -> anyhow::Result<()> {
        let config = self.read().await?;
        let incarnation = self.joiner_incarnation(new).await?;
        if let Some(member) = config.members.iter().find(|m| m.id == new.id) {
            // Added before (this command resumed): it must be this replica.
            if member.incarnation != incarnation || member.peer_address != new.peer || member.client_address != new.client {
                return Err(failure(
                    Exit::FailedPrecondition,
                    format!(
                        "replica {} is a member with incarnation {:016x} at {} / {}, not the replica at {} (incarnation {incarnation:016x}); remove it and join the new one under a new id",
                        new.id, member.incarnation, member.peer_address, member.client_address, new.client
                    ),
                ));
            }
        } else {
            let change = Change::AddLearner {
                id: new.id,
                peer_address: new.peer.clone(),
                client_address: new.client.clone(),
                incarnation,
            };
            self.change(change, |c| c.members.iter().any(|m| m.id == new.id)).await?;
        }
        if !new.no_promote {
            self.promote(new.id).await?;
        }
        Ok(())
    }

    /// The incarnation of the replica at `new.client`, which must be
    /// replica `new.id` of this cell, started with `init --join`.
    async fn joiner_incarnation(&self, new: &NewMember) -> anyhow::Result<u64> {
        let cell_id = gaios_client::cell_status(&self.cell, self.tls.as_ref()).await.first().map(|s| s.cell_id.clone());
        // It may still be starting: give it a little while.
        let until = Instant::now() + JOINER_START_WAIT;
        let status = loop {
            if let Some(status) = gaios_client::cell_status(std::slice::from_ref(&new.client), self.tls.as_ref()).await.pop() {
                break status;
            }
            if Instant::now() >= until {
                return Err(failure(
                    Exit::Unavailable,
                    format!("the new replica does not answer at {}; start it first (gaios-server init --join, then run)", new.client),
                ));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        };
        if status.id != new.id || Some(&status.cell_id) != cell_id.as_ref() {
            return Err(failure(
                Exit::InvalidArgument,
                format!("{} is replica {} of cell {:?}, not replica {} of this cell", new.client, status.id, status.cell_id, new.id),
            ));
        }
        Ok(status.incarnation)
    }

    /// Waits until the learner is within reach of the master, then
    /// promotes it.
    async fn promote(&self, id: u64) -> anyhow::Result<()> {
        loop {
            let config = self.read().await?;
            let Some(member) = config.members.iter().find(|m| m.id == id) else {
                return Err(failure(Exit::FailedPrecondition, format!("replica {id} is not a member")));
            };
            if member.voter {
                return Ok(());
            }
            let caught_up = member.learned_through.is_some_and(|learned| {
                learned.saturating_add(PROMOTE_LAG_SLOTS) >= config.master_chosen_through
            });
            if caught_up || self.force {
                break;
            }
            self.left()?;
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        loop {
            let done = |c: &Configuration| already_voter(c, id);
            match self.change(Change::Promote(id), done).await {
                // It fell behind again between our look and the master's.
                Err(error) if is_reason(&error, api::ErrorReason::LearnerBehind) => {
                    self.left()?;
                    tokio::time::sleep(POLL_INTERVAL).await;
                }
                other => return other,
            }
        }
    }

    async fn remove(&self, id: u64) -> anyhow::Result<()> {
        self.change(Change::Remove(id), |c| c.members.iter().all(|m| m.id != id)).await
    }
}

fn is_reason(error: &anyhow::Error, reason: api::ErrorReason) -> bool {
    error.chain().any(|cause| cause.downcast_ref::<ChangeFailed>().is_some_and(|f| f.reason == Some(reason)))
}
