//! Counts master elections while the nemesis runs, so that each fault can
//! be charged with the elections it caused.
//!
//! A monitor asks every replica for its Status every [`POLL_INTERVAL`]
//! (all at once, each with a short timeout, so a paused replica delays
//! nothing) and records two things on the run's clock:
//!
//! - each **master ballot** the first time a replica reports itself master
//!   with a lease in it: one per election won (a master that lived less
//!   than a poll interval can be missed, so this is a lower bound);
//! - each rise of the **highest promised ballot** across the replicas: one
//!   per phase 1 that reached an acceptor, won or not (exact at the ends of
//!   a window, since promises never go down on a live majority).
//!
//! A fault's window runs from its start to the start of the next fault.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gaios_proto::cell::v1 as api;
use tokio::sync::watch;
use tonic::transport::Channel;

use super::{Recorder, lock};

/// How often the monitor asks every replica.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How long one Status call may take.
const STATUS_TIMEOUT: Duration = Duration::from_millis(300);

/// A ballot as `(round, replica)`, ordered as the core orders ballots.
pub(super) type Ballot = (u64, u64);

/// What the monitor saw.
#[derive(Debug, Default)]
pub(super) struct BallotLog {
    /// Master ballot -> when it was first seen.
    pub masters: BTreeMap<Ballot, u64>,
    /// (when, new highest promised ballot), in time order.
    pub promised: Vec<(u64, Ballot)>,
}

impl BallotLog {
    /// The highest promised ballot seen so far.
    pub fn highest_promised(&self) -> Ballot {
        self.promised.last().map_or((0, 0), |&(_, ballot)| ballot)
    }

    /// (master ballots first seen, rises of the highest promised ballot) in
    /// `[start, end)`.
    pub fn in_window(&self, start: u64, end: u64) -> (u64, u64) {
        let masters = self.masters.values().filter(|&&at| at >= start && at < end).count() as u64;
        let rises = self.promised.iter().filter(|&&(at, _)| at >= start && at < end).count() as u64;
        (masters, rises)
    }
}

fn ballot(ballot: Option<&api::Ballot>) -> Ballot {
    ballot.map_or((0, 0), |b| (b.round, b.replica))
}

/// Polls `replicas` (client addresses) until `stop`, recording into
/// `recorder.ballots`.
pub(super) async fn monitor(replicas: Vec<SocketAddr>, recorder: Arc<Recorder>, stop: watch::Receiver<bool>) {
    let channels: Vec<Channel> = replicas
        .iter()
        .filter_map(|address| super::endpoint(&address.to_string()))
        .map(|endpoint| endpoint.connect_timeout(STATUS_TIMEOUT).connect_lazy())
        .collect();
    while !*stop.borrow() {
        let mut calls = tokio::task::JoinSet::new();
        for channel in &channels {
            let mut client = api::cell_client::CellClient::new(channel.clone());
            calls.spawn(async move {
                tokio::time::timeout(STATUS_TIMEOUT, client.status(api::StatusRequest {})).await.ok()?.ok().map(tonic::Response::into_inner)
            });
        }
        let mut answers = Vec::new();
        while let Some(answer) = calls.join_next().await {
            if let Ok(Some(status)) = answer {
                answers.push(status);
            }
        }
        record(&recorder.ballots, &answers, recorder.now());
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Records what one round of Status answers says.
pub(super) fn record(log: &Mutex<BallotLog>, answers: &[api::StatusResponse], now: u64) {
    let mut log = lock(log);
    for status in answers {
        if status.role() == api::Role::Master && status.lease_remaining_ms > 0 {
            log.masters.entry(ballot(status.own_ballot.as_ref())).or_insert(now);
        }
    }
    if let Some(highest) = answers.iter().map(|s| ballot(s.promised.as_ref())).max()
        && highest > log.highest_promised()
    {
        log.promised.push((now, highest));
    }
}

/// The highest promised ballot among `statuses`.
pub(super) fn highest_promised(statuses: &[api::StatusResponse]) -> Ballot {
    statuses.iter().map(|s| ballot(s.promised.as_ref())).max().unwrap_or((0, 0))
}

/// The master's ballot among `statuses`, if one says it is master.
pub(super) fn master_ballot(statuses: &[api::StatusResponse]) -> Option<Ballot> {
    statuses.iter().find(|s| s.role() == api::Role::Master && s.lease_remaining_ms > 0).map(|s| ballot(s.own_ballot.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(id: u64, master: bool, promised: Ballot) -> api::StatusResponse {
        api::StatusResponse {
            id,
            role: if master { api::Role::Master as i32 } else { api::Role::Follower as i32 },
            promised: Some(api::Ballot { round: promised.0, replica: promised.1 }),
            own_ballot: master.then_some(api::Ballot { round: promised.0, replica: promised.1 }),
            lease_remaining_ms: if master { 100 } else { 0 },
            ..Default::default()
        }
    }

    #[test]
    fn elections_are_charged_to_the_window_they_happened_in() {
        let log = Mutex::new(BallotLog::default());
        record(&log, &[status(2, true, (1, 2)), status(1, false, (1, 2))], 10);
        record(&log, &[status(2, true, (1, 2)), status(1, false, (1, 2))], 20);
        // A campaign by 3 that did not win, then 3 wins a higher round.
        record(&log, &[status(2, true, (1, 2)), status(1, false, (2, 3))], 30);
        record(&log, &[status(3, true, (3, 3)), status(1, false, (3, 3))], 40);
        let log = lock(&log);
        assert_eq!(log.in_window(0, 25), (1, 1), "the first master and its ballot");
        assert_eq!(log.in_window(25, 50), (1, 2), "one new master, two phase 1s");
        assert_eq!(log.highest_promised(), (3, 3));
    }
}
