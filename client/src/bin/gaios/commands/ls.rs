//! `gaios ls`: a directory's children.

use anyhow::Context as _;
use gaios_client::Client;

use crate::print::Printer;

/// List a directory's children, one name per line.
#[derive(Debug, clap::Args)]
#[command(after_help = crate::exit::help())]
pub struct Args {
    /// The directory (absolute, e.g. `/` or `/config`).
    pub path: String,
}

/// Lists `args.path`, sorted by name.
pub async fn run(client: &Client, args: Args, printer: &mut dyn Printer) -> anyhow::Result<()> {
    let path = &args.path;
    let handle = super::open_existing(client, path).await?;
    let mut names = handle.read_dir().await.with_context(|| format!("cannot list {path}"))?;
    names.sort();
    printer.ls(path, &names)
}
