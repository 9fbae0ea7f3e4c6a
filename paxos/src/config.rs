//! The replica's configuration: membership, timeouts in ticks, and limits.

use crate::types::ReplicaId;

/// How a replica behaves. All durations are in ticks: the driver calls
/// [`crate::Replica::tick`] at a fixed rate (the server's default is 10 ms;
/// it converts its millisecond flags to ticks, see `gaios-server --help`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// This replica's id; must be one of `members`.
    pub id: ReplicaId,
    /// Every replica of the cell, this one included. Majorities are counted
    /// over this list.
    pub members: Vec<ReplicaId>,
    /// A follower that hears nothing from a master for a random number of
    /// ticks in `[election_ticks_min, election_ticks_max]` runs phase 1.
    pub election_ticks_min: u64,
    /// See `election_ticks_min`.
    pub election_ticks_max: u64,
    /// The master sends a heartbeat this often.
    pub heartbeat_ticks: u64,
    /// How long an acceptor that acknowledged a heartbeat refuses to promise
    /// another replica's ballot, counted from when it received it.
    pub lease_ticks: u64,
    /// How much shorter the master counts its lease than the acceptors do, to
    /// cover tick granularity and clocks that run at different rates.
    pub lease_drift_ticks: u64,
    /// The most slots the master keeps in flight (proposed, not yet chosen).
    pub slots_in_flight_max: u64,
    /// The most commands in one slot's batch.
    pub batch_commands_max: usize,
    /// The most command bytes in one slot's batch.
    pub batch_bytes_max: usize,
    /// The most proposals queued at the master waiting for a slot; beyond it
    /// `propose` answers `QueueFull`.
    pub proposals_queued_max: usize,
    /// The most command bytes queued at the master; beyond it `propose`
    /// answers `QueueFull`.
    pub proposals_queued_bytes_max: usize,
    /// The largest single command accepted by `propose`.
    pub command_bytes_max: usize,
    /// The most parts a promise may be split into; an acceptor holding more
    /// entries than fit refuses the prepare as `Behind` (its log is not
    /// compacted enough to be told in bounded messages).
    pub promise_parts_max: u32,
    /// The most entries carried by one promise part, accept or catch-up
    /// message; also the most committed entries handed out in one `Ready`.
    pub entries_per_message_max: usize,
    /// The master resends an accept that has not been acknowledged this long.
    pub accept_retry_ticks: u64,
    /// A lagging replica repeats an unanswered catch-up request this often.
    pub catch_up_retry_ticks: u64,
    /// Seeds the replica's random number generator (election jitter).
    pub seed: u64,
}

/// A configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The replica's own id is not among the members.
    #[error("replica {0} is not a member of the cell")]
    NotAMember(ReplicaId),
    /// A member id is 0 (reserved) or appears twice.
    #[error("member ids must be distinct and non-zero")]
    BadMembers,
    /// The timeouts contradict each other; the message says which rule.
    #[error("inconsistent timeouts: {0}")]
    Timeouts(&'static str),
    /// A limit is zero.
    #[error("limit {0} must be positive")]
    ZeroLimit(&'static str),
}

impl Config {
    /// A configuration with the defaults Gaios runs with, for replica `id` of
    /// a cell with these `members`.
    pub fn new(id: ReplicaId, members: Vec<ReplicaId>) -> Self {
        Config {
            id,
            members,
            election_ticks_min: 20,
            election_ticks_max: 40,
            heartbeat_ticks: 3,
            lease_ticks: 20,
            lease_drift_ticks: 3,
            slots_in_flight_max: 64,
            batch_commands_max: 256,
            batch_bytes_max: 1 << 20,
            proposals_queued_max: 8192,
            proposals_queued_bytes_max: 64 << 20,
            command_bytes_max: 512 << 10,
            promise_parts_max: 64,
            entries_per_message_max: 256,
            accept_retry_ticks: 6,
            catch_up_retry_ticks: 6,
            seed: id,
        }
    }

    /// Checks the rules the protocol relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.members.contains(&self.id) {
            return Err(ConfigError::NotAMember(self.id));
        }
        let mut sorted = self.members.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != self.members.len() || sorted.first() == Some(&0) {
            return Err(ConfigError::BadMembers);
        }
        if self.election_ticks_min == 0 || self.election_ticks_min > self.election_ticks_max {
            return Err(ConfigError::Timeouts("0 < election_ticks_min <= election_ticks_max"));
        }
        if self.heartbeat_ticks == 0 || self.heartbeat_ticks >= self.lease_ticks {
            return Err(ConfigError::Timeouts("0 < heartbeat_ticks < lease_ticks"));
        }
        if self.lease_drift_ticks == 0 || self.lease_drift_ticks >= self.lease_ticks {
            return Err(ConfigError::Timeouts("0 < lease_drift_ticks < lease_ticks"));
        }
        for (name, value) in [
            ("slots_in_flight_max", self.slots_in_flight_max as usize),
            ("batch_commands_max", self.batch_commands_max),
            ("batch_bytes_max", self.batch_bytes_max),
            ("proposals_queued_max", self.proposals_queued_max),
            ("proposals_queued_bytes_max", self.proposals_queued_bytes_max),
            ("command_bytes_max", self.command_bytes_max),
            ("promise_parts_max", self.promise_parts_max as usize),
            ("entries_per_message_max", self.entries_per_message_max),
            ("accept_retry_ticks", self.accept_retry_ticks as usize),
            ("catch_up_retry_ticks", self.catch_up_retry_ticks as usize),
        ] {
            if value == 0 {
                return Err(ConfigError::ZeroLimit(name));
            }
        }
        Ok(())
    }

    /// How many replicas make a majority of the cell.
    pub fn quorum(&self) -> usize {
        self.members.len() / 2 + 1
    }
}
