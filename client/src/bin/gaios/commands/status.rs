//! `gaios status`: every replica's view of the cell. Needs no session, so
//! it works while no master can serve; `--wait-ms` makes it the readiness
//! check of `scripts/cell`.

use gaios_client::Tls;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use gaios_client::StatusResponse;
use gaios_proto::cell::v1 as api;

use crate::exit::{Exit, failure};
use crate::print::{Printer, Replica};

/// How long `--wait-ms` waits between two rounds of asking.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Show every replica's status: role, master, ballot, slots, master
/// lease, sessions, nodes, locks and incarnation. Needs no session; exits
/// 5 when no replica answers or none is master.
#[derive(Debug, clap::Args)]
#[command(after_help = crate::exit::help())]
pub struct Args {
    /// Ask again until exactly one replica says it is master and every
    /// replica that answers names it, for at most this many milliseconds
    /// (then exit 5); 0 asks once.
    #[arg(long, default_value_t = 0)]
    pub wait_ms: u64,
}

/// Asks every replica in `cell` and prints what each said.
pub async fn run(cell: &[String], tls: Option<&Tls>, args: Args, printer: &mut dyn Printer) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_millis(args.wait_ms);
    let mut replicas = ask(cell, tls).await?;
    while args.wait_ms > 0 && agreed_master(&replicas).is_none() && Instant::now() < until {
        tokio::time::sleep(POLL_INTERVAL.min(until.saturating_duration_since(Instant::now()))).await;
        replicas = ask(cell, tls).await?;
    }
    printer.status(&replicas)?;
    let answered: Vec<&StatusResponse> = replicas.iter().filter_map(|(_, status)| status.as_ref()).collect();
    if answered.is_empty() {
        return Err(failure(Exit::Unavailable, format!("no replica answered at {}", cell.join(","))));
    }
    if args.wait_ms > 0 && agreed_master(&replicas).is_none() {
        return Err(failure(Exit::Unavailable, format!("the replicas did not agree on a master within {} ms", args.wait_ms)));
    }
    if !answered.iter().any(|s| s.role() == api::Role::Master) {
        return Err(failure(Exit::Unavailable, "no replica says it is master"));
    }
    Ok(())
}

/// Asks every replica at once (each may take a second not to answer).
async fn ask(cell: &[String], tls: Option<&Tls>) -> anyhow::Result<Vec<Replica>> {
    let mut asks = tokio::task::JoinSet::new();
    for (index, address) in cell.iter().enumerate() {
        let address = address.clone();
        let tls = tls.cloned();
        asks.spawn(async move { (index, gaios_client::cell_status(std::slice::from_ref(&address), tls.as_ref()).await.pop()) });
    }
    let mut replicas: Vec<Replica> = cell.iter().map(|address| (address.clone(), None)).collect();
    while let Some(answer) = asks.join_next().await {
        let (index, status) = answer.context("a status request failed")?;
        replicas[index].1 = status;
    }
    Ok(replicas)
}

/// The master's id if exactly one replica says it is master and every
/// replica that answered names it.
fn agreed_master(replicas: &[Replica]) -> Option<u64> {
    let answered: Vec<&StatusResponse> = replicas.iter().filter_map(|(_, status)| status.as_ref()).collect();
    let masters: Vec<&&StatusResponse> = answered.iter().filter(|s| s.role() == api::Role::Master).collect();
    let [master] = masters.as_slice() else { return None };
    answered.iter().all(|s| s.master_id == master.id).then_some(master.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(id: u64, role: api::Role, master_id: u64) -> Replica {
        let mut status = StatusResponse { id, master_id, ..StatusResponse::default() };
        status.set_role(role);
        (format!("127.0.0.1:720{id}"), Some(status))
    }

    #[test]
    fn a_master_is_agreed_only_when_every_answer_names_it() {
        let silent = ("127.0.0.1:7209".to_string(), None);
        let agreed = vec![replica(1, api::Role::Follower, 2), replica(2, api::Role::Master, 2), silent.clone()];
        assert_eq!(agreed_master(&agreed), Some(2));
        let dissent = vec![replica(1, api::Role::Follower, 3), replica(2, api::Role::Master, 2)];
        assert_eq!(agreed_master(&dissent), None);
        let two = vec![replica(1, api::Role::Master, 1), replica(2, api::Role::Master, 2)];
        assert_eq!(agreed_master(&two), None);
        assert_eq!(agreed_master(&[silent]), None);
    }
}
