//! `gaios watch`: a node's events as they happen.

use anyhow::Context as _;
use gaios_client::{Client, Error, EventKind, OpenOptions};

use crate::print::Printer;

/// Print a node's events as they happen, one line each
/// (`<number> <kind> <path>`), until ctrl-c or --count events. Stops
/// after `handle_invalid` (the node was deleted).
#[derive(Debug, clap::Args)]
#[command(after_help = crate::exit::help())]
pub struct Args {
    /// The node.
    pub path: String,
    /// Stop after this many events.
    #[arg(long)]
    pub count: Option<u64>,
}

/// Prints the events of `args.path`.
pub async fn run(client: &Client, args: Args, printer: &mut dyn Printer) -> anyhow::Result<()> {
    use tokio_stream::StreamExt as _;
    let path = &args.path;
    let handle = client.open(path, OpenOptions::new()).await.with_context(|| format!("cannot open {path}"))?;
    // The library's stream re-validates the handle after a master failover.
    let mut events = handle.events();
    eprintln!("gaios: watching {path}; ctrl-c stops");
    let mut seen = 0u64;
    let mut interrupt = std::pin::pin!(tokio::signal::ctrl_c());
    while args.count.is_none_or(|count| seen < count) {
        let event = tokio::select! {
            _ = &mut interrupt => return Ok(()),
            event = events.next() => match event {
                Some(event) => event,
                // The stream ends when the session expires.
                None => return Err(anyhow::Error::new(Error::SessionExpired).context(format!("stopped watching {path}"))),
            },
        };
        seen += 1;
        printer.event(&event)?;
        if event.kind == EventKind::HandleInvalid && event.handle == handle.id() {
            break;
        }
    }
    Ok(())
}
