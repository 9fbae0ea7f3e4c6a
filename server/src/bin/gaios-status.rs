//! `gaios-status`: asks replicas for their `Cell.Status` and prints the cell
//! as they see it, one line per replica. With `--wait-ms` it polls until one
//! replica says it is master and every other one that answers agrees (or the
//! time runs out, which exits with status 1); `scripts/cell` uses it to wait
//! for a local cell to be ready. A stop-gap until the `gaios` client tool.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use gaios_proto::cell::v1::cell_client::CellClient;
use gaios_proto::cell::v1::{Role, StatusRequest, StatusResponse};

/// The command-line flags of `gaios-status`.
#[derive(Debug, Parser)]
#[command(name = "gaios-status", about = "Show the status of a Gaios cell's replicas.")]
struct Args {
    /// A replica's client address (`host:port`); repeat for each replica.
    #[arg(long = "client", required = true)]
    clients: Vec<String>,
    /// Poll until the replicas agree on a master, for at most this long.
    #[arg(long, default_value_t = 0)]
    wait_ms: u64,
}

async fn status(address: &str) -> Option<StatusResponse> {
    let call = async {
        let mut client = CellClient::connect(format!("http://{address}")).await.ok()?;
        client.status(StatusRequest {}).await.ok().map(tonic::Response::into_inner)
    };
    tokio::time::timeout(Duration::from_millis(500), call).await.ok().flatten()
}

fn agreed_master(statuses: &[StatusResponse]) -> Option<u64> {
    let masters: Vec<&StatusResponse> = statuses.iter().filter(|s| s.role() == Role::Master).collect();
    let [master] = masters.as_slice() else { return None };
    statuses.iter().all(|s| s.master_id == master.id).then_some(master.id)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let until = Instant::now() + Duration::from_millis(args.wait_ms);
    loop {
        let mut answers = Vec::new();
        for address in &args.clients {
            answers.push((address, status(address).await));
        }
        let statuses: Vec<StatusResponse> = answers.iter().filter_map(|(_, s)| s.clone()).collect();
        let master = agreed_master(&statuses);
        if master.is_some() || Instant::now() >= until {
            for (address, status) in &answers {
                match status {
                    Some(s) => println!(
                        "replica {} at {address}: {} master={} chosen_through={} applied={} lease_ms={} incarnation={:016x}",
                        s.id,
                        s.role().as_str_name().trim_start_matches("ROLE_").to_lowercase(),
                        s.master_id,
                        s.chosen_through,
                        s.applied,
                        s.lease_remaining_ms,
                        s.incarnation
                    ),
                    None => println!("replica at {address}: no answer"),
                }
            }
            let master = master.context("the replicas do not agree on a master")?;
            let address = statuses.iter().find(|s| s.id == master).map(|s| s.master_client_address.clone());
            println!("master: replica {master} at {}", address.unwrap_or_default());
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
