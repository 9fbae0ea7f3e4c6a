//! `gaios mkdir`: create a directory, with `-p` its parents too.

use anyhow::Context as _;
use gaios_client::{Client, OpenOptions};
use gaios_proto::cell::v1 as api;

use crate::exit::{Exit, failure};
use crate::print::Printer;

/// Create a directory (exit 7 if the node exists).
#[derive(Debug, clap::Args)]
#[command(after_help = crate::exit::help())]
pub struct Args {
    /// The directory.
    pub path: String,
    /// Create missing parents too, and succeed if the directory exists.
    #[arg(short = 'p', long)]
    pub parents: bool,
}

/// Creates `args.path`.
pub async fn run(client: &Client, args: Args, printer: &mut dyn Printer) -> anyhow::Result<()> {
    let path = &args.path;
    let created = if args.parents && path.starts_with('/') {
        with_parents(client, path).await?
    } else {
        let options = OpenOptions::new().create_new().directory().event_mask(0);
        client.open(path, options).await.with_context(|| format!("cannot create {path}"))?;
        true
    };
    printer.mkdir(path, created)
}

/// Creates every prefix of `path` that is missing; the last must end up a
/// directory. Returns whether `path` itself was created.
async fn with_parents(client: &Client, path: &str) -> anyhow::Result<bool> {
    let mut prefix = String::new();
    let mut created = false;
    let mut last = None;
    // Empty components are kept so that the cell refuses `//` as usual.
    for part in path.split('/').skip(1) {
        prefix.push('/');
        prefix.push_str(part);
        let options = OpenOptions::new().create().directory().event_mask(0);
        let handle = client.open(&prefix, options).await.with_context(|| format!("cannot create {prefix}"))?;
        created = handle.created();
        last = Some(handle.clone());
        let _ = handle.close().await;
    }
    if let Some(handle) = last.filter(|handle| !handle.created()) {
        let stat = super::open_existing(client, handle.path()).await?.stat().await.with_context(|| format!("cannot stat {path}"))?;
        if stat.kind() != api::NodeKind::Directory {
            return Err(failure(Exit::AlreadyExists, format!("{path} exists and is not a directory")));
        }
    }
    Ok(created)
}
