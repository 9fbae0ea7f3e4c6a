//! `gaios cat`: a file's contents.

use anyhow::Context as _;
use gaios_client::Client;

use crate::print::Printer;

/// Write a file's contents to stdout as raw bytes (with --json: an
/// object with the contents as UTF-8, lossily, and the stat).
#[derive(Debug, clap::Args)]
#[command(after_help = crate::exit::help())]
pub struct Args {
    /// The file.
    pub path: String,
}

/// Prints the contents of `args.path`.
pub async fn run(client: &Client, args: Args, printer: &mut dyn Printer) -> anyhow::Result<()> {
    let path = &args.path;
    let handle = super::open_existing(client, path).await?;
    let (contents, stat) = handle.contents().await.with_context(|| format!("cannot read {path}"))?;
    printer.cat(path, &contents, &stat)
}
