//! `gaios put`: write a file whole.

use std::io::Read as _;

use anyhow::Context as _;
use gaios_client::{Client, OpenOptions};

use crate::print::Printer;

/// Write a file whole, creating it if missing.
#[derive(Debug, clap::Args)]
#[command(after_help = crate::exit::help())]
pub struct Args {
    /// The file.
    pub path: String,
    /// The new contents; read from stdin when absent.
    pub value: Option<String>,
    /// Write only if the file exists at this content generation (exit
    /// 4 if not, 3 if the file is missing).
    #[arg(long)]
    pub if_generation: Option<u64>,
    /// The contents read from stdin by [`Args::read_stdin`].
    #[arg(skip)]
    stdin: Option<Vec<u8>>,
}

impl Args {
    /// Reads the contents from stdin if no value was given. Called before
    /// connecting, so a slow writer does not hold a session open.
    pub fn read_stdin(&mut self) -> anyhow::Result<()> {
        if self.value.is_none() {
            let mut buffer = Vec::new();
            std::io::stdin().read_to_end(&mut buffer).context("cannot read the value from stdin")?;
            self.stdin = Some(buffer);
        }
        Ok(())
    }
}

/// Writes the value to `args.path`.
pub async fn run(client: &Client, args: Args, printer: &mut dyn Printer) -> anyhow::Result<()> {
    let path = &args.path;
    let value = args.value.map(String::into_bytes).or(args.stdin).unwrap_or_default();
    let stat = match args.if_generation {
        Some(generation) => {
            let handle = super::open_existing(client, path).await?;
            handle.set_contents(value, Some(generation)).await.with_context(|| format!("cannot write {path}"))?
        }
        None => {
            // A new file gets the value at creation: one write, generation 1.
            let options = OpenOptions::new().create().contents(value.clone()).event_mask(0);
            let handle = client.open(path, options).await.with_context(|| format!("cannot open {path}"))?;
            if handle.created() {
                handle.stat().await.with_context(|| format!("cannot stat {path}"))?
            } else {
                handle.set_contents(value, None).await.with_context(|| format!("cannot write {path}"))?
            }
        }
    };
    printer.put(path, &stat)
}
