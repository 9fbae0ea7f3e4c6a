//! What the driver tells the rest of the server about its replica after
//! each turn, and the one rule for when a replica may serve from its applied
//! state ([`may_serve`]).

use std::sync::Arc;
use std::time::Instant;

use gaios_paxos::{Ballot, ReplicaId, Slot};

/// The role of a replica as the status service reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Follows a master or waits for one.
    Follower,
    /// Runs phase 1.
    Candidate,
    /// Completed phase 1 for its ballot.
    Master,
}

/// What the driver tells the rest of the server about its replica after each
/// turn; the cell service answers from the latest one without touching the
/// core.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaStatus {
    /// This replica's id.
    pub id: ReplicaId,
    /// Its role.
    pub role: Role,
    /// The highest ballot it promised.
    pub promised: Ballot,
    /// The ballot it leads with while candidate or master.
    pub own_ballot: Option<Ballot>,
    /// The replica it believes is master (itself included).
    pub master: Option<ReplicaId>,
    /// Its chosen prefix.
    pub chosen_through: Slot,
    /// The last slot it applied.
    pub applied: Slot,
    /// The slot at and below which its log is compacted.
    pub log_start: Slot,
    /// The last slot of the last snapshot installed from another replica.
    pub installed_snapshot: Option<Slot>,
    /// When its master lease runs out (monotonic), if it holds one.
    pub lease_valid_until: Option<Instant>,
    /// As master: the slot it must have applied before serving reads.
    pub read_barrier: Option<Slot>,
    /// The slot of its newest snapshot (taken or installed), 0 if none.
    pub snapshot_slot: Slot,
    /// The configuration in force after its chosen prefix, addresses
    /// resolved (from the log, or the `--peer` flags for founding members).
    pub members: Arc<Vec<MemberView>>,
    /// The slot of the change that put that configuration in force (0: the
    /// founding one; a snapshot's slot if the change is below it).
    pub membership_slot: Slot,
    /// The highest replica id the cell ever used.
    pub highest_member_id: ReplicaId,
}

/// One member of the configuration in force, as `Status` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberView {
    /// Its replica id.
    pub id: ReplicaId,
    /// A voter, or a learner.
    pub voter: bool,
    /// Its incarnation as the configuration records it (0 for a founding
    /// member).
    pub incarnation: u64,
    /// Where peers reach it.
    pub peer_address: String,
    /// Where clients reach it.
    pub client_address: String,
    /// On the master: the chosen prefix it last reported (how far a
    /// learner has come).
    pub learned_through: Option<Slot>,
}

impl ReplicaStatus {
    /// Whether this replica may serve from its applied state now (see
    /// [`may_serve`]).
    pub fn can_serve_reads(&self, now: Instant) -> bool {
        may_serve(self.role == Role::Master, self.lease_valid_until.is_some_and(|until| now < until), self.read_barrier, self.applied)
    }
}

/// The one rule for serving from the applied state: this replica is master,
/// holds the master lease, and has applied everything chosen before its
/// mastership began (`read_barrier`). Only then is its applied state the
/// cell's latest: it answers reads and KeepAlives, hands out lock grants to
/// waiting `Acquire`s, and runs the master's duties (expiring sessions,
/// moving the lock-delay clock). The handlers check it through
/// `service::read_gate`, the driver before its duties.
pub fn may_serve(is_master: bool, lease_valid: bool, read_barrier: Option<Slot>, applied: Slot) -> bool {
    is_master && lease_valid && read_barrier.is_some_and(|barrier| applied >= barrier)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_master_with_a_lease_and_a_current_state_may_serve() {
        assert!(may_serve(true, true, Some(5), 5));
        assert!(may_serve(true, true, Some(5), 9));
        assert!(!may_serve(true, true, Some(5), 4), "not yet applied what was chosen before its reign");
        assert!(!may_serve(true, true, None, 9), "no barrier yet: phase 1 not done");
        assert!(!may_serve(true, false, Some(5), 9), "no master lease");
        assert!(!may_serve(false, true, Some(5), 9), "not master");
    }
}
