//! `gaios whoami`: who the cell takes this client for.

use gaios_client::Tls;

use crate::print::Printer;

/// Show the identity the cell reads from this client's certificate and the
/// groups a replica's configuration puts it in (without a session).
#[derive(Debug, clap::Args)]
#[command(after_help = crate::exit::help())]
pub struct Args {}

/// Asks the first replica that answers.
pub async fn run(cell: &[String], tls: Option<&Tls>, _args: Args, printer: &mut dyn Printer) -> anyhow::Result<()> {
    let who = gaios_client::who_am_i(cell, tls).await?;
    printer.whoami(&who)
}
