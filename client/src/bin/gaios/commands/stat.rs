//! `gaios stat`: a node's metadata.

use anyhow::Context as _;
use gaios_client::Client;

use crate::print::Printer;

/// Show a node's metadata (generations, times, size).
#[derive(Debug, clap::Args)]
#[command(after_help = crate::exit::help())]
pub struct Args {
    /// The node.
    pub path: String,
}

/// Prints the metadata of `args.path`.
pub async fn run(client: &Client, args: Args, printer: &mut dyn Printer) -> anyhow::Result<()> {
    let path = &args.path;
    let handle = super::open_existing(client, path).await?;
    let stat = handle.stat().await.with_context(|| format!("cannot stat {path}"))?;
    printer.stat(path, &stat)
}
