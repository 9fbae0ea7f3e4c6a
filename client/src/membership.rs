//! Changing a cell's configuration: no session needed. [`change_membership`]
//! finds the master, follows `NOT_MASTER` redirects and retries a master
//! that is not ready yet; [`configuration`] reads the configuration in force.
//!
//! A change whose answer is lost (the master failed, or it took too long)
//! may or may not be in force: read the configuration again before retrying
//! (`gaios member` does, so every step it takes can be resumed).

use std::time::{Duration, Instant};

use gaios_proto::cell::v1 as api;

use crate::client::{CONNECT_TIMEOUT, cell_status, connect};
use crate::error::{Error, reason, redirect};
use crate::tls::Tls;

/// How long to wait before asking a master that is not ready again.
const NOT_READY_PAUSE: Duration = Duration::from_millis(100);

/// One step of a configuration change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A replica (started with `gaios-server init --join`) joins as a
    /// learner.
    AddLearner {
        /// Its id, higher than any id the cell ever used.
        id: u64,
        /// Where peers reach it.
        peer_address: String,
        /// Where clients reach it.
        client_address: String,
        /// Its incarnation (its `Status.incarnation`).
        incarnation: u64,
    },
    /// A learner becomes a voter.
    Promote(u64),
    /// A member leaves.
    Remove(u64),
}

/// Why a change was not made: the library's error, and the cell's reason
/// when it gave one (`CHANGE_IN_FLIGHT`, `LEARNER_BEHIND`, ...), so that a
/// caller can wait and retry where that makes sense.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct ChangeFailed {
    /// The cell's reason, if any.
    pub reason: Option<api::ErrorReason>,
    /// What the library makes of the answer.
    #[source]
    pub error: Error,
}

/// The configuration in force as the master (or, without one, the replica
/// with the newest configuration) reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Configuration {
    /// The members, in id order.
    pub members: Vec<api::Member>,
    /// The slot of the change that put it in force.
    pub slot: u64,
    /// The highest id the cell ever used.
    pub highest_member_id: u64,
    /// The master's id (0 if no replica said it is master).
    pub master_id: u64,
    /// The master's chosen prefix (0 without a master).
    pub master_chosen_through: u64,
}

/// Every replica's `Status`, asked at once (a replica that does not answer
/// costs one second, not one second per replica).
async fn statuses(addresses: &[String], tls: Option<&Tls>) -> Vec<api::StatusResponse> {
    let mut asks = tokio::task::JoinSet::new();
    for address in addresses {
        let address = address.clone();
        let tls = tls.cloned();
        asks.spawn(async move { cell_status(std::slice::from_ref(&address), tls.as_ref()).await.pop() });
    }
    let mut answers = Vec::new();
    while let Some(answer) = asks.join_next().await {
        if let Ok(Some(status)) = answer {
            answers.push(status);
        }
    }
    answers
}

/// Reads the configuration in force from the replicas at `addresses`.
pub async fn configuration(addresses: &[String], tls: Option<&Tls>) -> Result<Configuration, Error> {
    let answers = statuses(addresses, tls).await;
    // A deposed master may not know it yet: the one with the newest
    // configuration (then the highest ballot) is the one to believe.
    let master = answers
        .iter()
        .filter(|s| s.role() == api::Role::Master)
        .max_by_key(|s| (s.membership_slot, s.own_ballot.map(|b| (b.round, b.replica))));
    let newest = answers.iter().max_by_key(|s| s.membership_slot);
    let Some(best) = master.or(newest) else {
        return Err(Error::NoMaster(format!("no replica answered at {}", addresses.join(","))));
    };
    Ok(Configuration {
        members: best.members.clone(),
        slot: best.membership_slot,
        highest_member_id: best.highest_member_id,
        master_id: master.map_or(0, |m| m.id),
        master_chosen_through: master.map_or(0, |m| m.chosen_through),
    })
}

/// Asks the master to make `change` (past its safety checks if `force`) and
/// waits until the new configuration is in force; follows redirects and
/// retries a master that is not ready for up to `patience`.
pub async fn change_membership(
    addresses: &[String],
    tls: Option<&Tls>,
    change: &Change,
    force: bool,
    patience: Duration,
) -> Result<api::ChangeMembershipResponse, ChangeFailed> {
    use api::change_membership_request::{AddLearner, Change as Wire};
    let wire = match change {
        Change::AddLearner { id, peer_address, client_address, incarnation } => Wire::AddLearner(AddLearner {
            id: *id,
            peer_address: peer_address.clone(),
            client_address: client_address.clone(),
            incarnation: *incarnation,
        }),
        Change::Promote(id) => Wire::Promote(*id),
        Change::Remove(id) => Wire::Remove(*id),
    };
    let request = api::ChangeMembershipRequest { change: Some(wire), force };
    let until = Instant::now() + patience;
    let failed = |error: Error| ChangeFailed { reason: None, error };
    // The master first: a replica that does not answer (stopped, cut off)
    // would hold the call for as long as a change may take.
    let mut candidates: Vec<String> = Vec::new();
    if let Some(master) = statuses(addresses, tls).await.into_iter().find(|s| s.role() == api::Role::Master)
        && let Some(me) = master.members.iter().find(|m| m.id == master.id)
    {
        candidates.push(me.client_address.clone());
    }
    candidates.extend(addresses.iter().filter(|a| !candidates.contains(a)).cloned().collect::<Vec<_>>());
    let mut next = 0usize;
    loop {
        if Instant::now() >= until {
            return Err(failed(Error::NoMaster(format!("no master took the change within {patience:?}"))));
        }
        let Some(address) = candidates.get(next % candidates.len().max(1)).cloned() else {
            return Err(failed(Error::BadAddress("no address given".into())));
        };
        let Some(mut cell) = connect(&address, tls).await else {
            next += 1;
            tokio::time::sleep(NOT_READY_PAUSE).await;
            continue;
        };
        let call = cell.change_membership(request.clone());
        // The change itself waits up to 20 s for its slot to be chosen.
        let answer = tokio::time::timeout(CONNECT_TIMEOUT + Duration::from_secs(25), call).await;
        let status = match answer {
            Ok(Ok(response)) => return Ok(response.into_inner()),
            Ok(Err(status)) => status,
            Err(_) => return Err(failed(Error::Timeout(format!("{address} did not answer the change")))),
        };
        match redirect(&status) {
            Some(to) if to.reason == api::ErrorReason::MasterNotReady => {
                tokio::time::sleep(NOT_READY_PAUSE).await;
            }
            Some(to) => {
                if !candidates.contains(&to.master_address) {
                    candidates.push(to.master_address.clone());
                }
                next = candidates.iter().position(|a| *a == to.master_address).unwrap_or(0);
            }
            None => return Err(ChangeFailed { reason: reason(&status), error: Error::from_status(&status) }),
        }
    }
}
