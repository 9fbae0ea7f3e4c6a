//! `gaios leader`: who leads an election.

use anyhow::Context as _;
use gaios_client::{Client, election};

use crate::exit::{Exit, failure};
use crate::print::Printer;

/// Print the current leader's value of an election (exit 3 if nobody
/// leads).
#[derive(Debug, clap::Args)]
#[command(after_help = crate::exit::help())]
pub struct Args {
    /// The election file.
    pub path: String,
}

/// Prints the value the leader of `args.path` published.
pub async fn run(client: &Client, args: Args, printer: &mut dyn Printer) -> anyhow::Result<()> {
    let path = &args.path;
    let value = election::leader(client, path).await.with_context(|| format!("cannot read the leader of {path}"))?;
    printer.leader(path, value.as_deref())?;
    if value.is_none() {
        return Err(failure(Exit::NotFound, format!("no leader of {path}")));
    }
    Ok(())
}
