//! `gaios rm`: delete a node.

use anyhow::Context as _;
use gaios_client::Client;

use crate::print::Printer;

/// Delete a node (a directory only when empty).
#[derive(Debug, clap::Args)]
#[command(after_help = crate::exit::help())]
pub struct Args {
    /// The node.
    pub path: String,
}

/// Deletes `args.path`.
pub async fn run(client: &Client, args: Args, printer: &mut dyn Printer) -> anyhow::Result<()> {
    let path = &args.path;
    let handle = super::open_existing(client, path).await?;
    handle.delete().await.with_context(|| format!("cannot delete {path}"))?;
    printer.rm(path)
}
