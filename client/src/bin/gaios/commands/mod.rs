//! One file per `gaios` command: its flags (a clap `Args` struct whose doc
//! comment is the command's help) and what it does. Commands say what they
//! found through a [`Printer`](crate::print::Printer) and fail with errors
//! that carry their [`Exit`](crate::exit::Exit).

pub mod acl;
pub mod cat;
pub mod elect;
pub mod leader;
pub mod lock;
pub mod ls;
pub mod member;
pub mod mkdir;
pub mod put;
pub mod rm;
pub mod stat;
pub mod status;
pub mod watch;
pub mod whoami;

use anyhow::Context as _;
use gaios_client::{Client, Handle, OpenOptions};

/// Opens `path` without creating it and without events.
async fn open_existing(client: &Client, path: &str) -> anyhow::Result<Handle> {
    client.open(path, OpenOptions::new().event_mask(0)).await.with_context(|| format!("cannot open {path}"))
}
