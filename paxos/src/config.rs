//! The replica's configuration: membership, timeouts in ticks, and limits.

use crate::types::{COMMAND_OVERHEAD_BYTES, ENTRY_OVERHEAD_BYTES, MEMBERSHIP_BYTES_MAX, ReplicaId};

/// The clock-rate drift the master lease tolerates, in parts per million: any
/// two replicas' clocks may run at rates that differ from real time by at
/// most this much each (2%). Real clocks, even undisciplined quartz, drift by
/// well under 0.1%; the bound is generous so that a lease never rests on
/// clocks agreeing closely. [`Config::validate`] refuses a lease whose margin
/// does not cover it.
pub const CLOCK_DRIFT_PPM_MAX: u64 = 20_000;

/// The smallest `lease_drift_ticks` that keeps the master lease safe for an
/// acceptor lease of `lease_ticks`, given tick granularity and clocks within
/// [`CLOCK_DRIFT_PPM_MAX`].
///
/// An acceptor that steps a heartbeat just before its next tick grants only
/// `lease_ticks - 1` of its ticks from receipt, and its ticks may be short by
/// the drift; the master counts `lease_ticks - drift` of its own ticks from
/// before it sent the heartbeat, and its ticks may be long by the drift. With
/// rate error `r` the lease is safe when
/// `(lease - drift) (1 + r) <= (lease - 1) (1 - r)`, that is when
/// `drift - 1 >= r (2 lease - drift - 1)`. Returns `None` when no drift below
/// `lease_ticks` works (the lease is too few ticks long).
pub fn lease_drift_ticks_for(lease_ticks: u64) -> Option<u64> {
    (1..lease_ticks).find(|&drift| lease_margin_covers_drift(lease_ticks, drift))
}

/// Whether `drift` ticks of margin on a lease of `lease` ticks cover tick
/// granularity and [`CLOCK_DRIFT_PPM_MAX`] (see [`lease_drift_ticks_for`]).
fn lease_margin_covers_drift(lease: u64, drift: u64) -> bool {
    if drift == 0 || drift >= lease {
        return false;
    }
    // In parts per million, exactly: (drift - 1) * 1e6 >= ppm * (2 lease - drift - 1).
    let margin = u128::from(drift - 1) * 1_000_000;
    let needed = u128::from(CLOCK_DRIFT_PPM_MAX) * (2 * u128::from(lease) - u128::from(drift) - 1);
    margin >= needed
}

/// How a replica behaves. All durations are in ticks: the driver calls
/// [`crate::Replica::tick`] at a fixed rate (the server's default is 10 ms;
/// it converts its millisecond flags to ticks, see `gaios-server --help`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// This replica's id.
    pub id: ReplicaId,
    /// The cell's first configuration: its founding voters. It governs the
    /// log until a [`crate::Value::Reconfigure`] is chosen (or a snapshot
    /// says otherwise); majorities are counted over the configuration in
    /// force at each slot, never over this list alone. A replica not listed
    /// here joined later and starts as a learner.
    pub members: Vec<ReplicaId>,
    /// The first configuration with the members' addresses, when the driver
    /// knows them (the `--peer` flags): recorded in every change, so that a
    /// replica that joins later learns every member's address from the log.
    /// `None` builds it from `members` without addresses. Its voters must
    /// be `members`.
    pub genesis: Option<crate::types::Membership>,
    /// Replicas this one may hear from before it knows the configuration in
    /// force (a joining replica's view of the cell when it joined). Messages
    /// from ids in no configuration the replica knows and not here are
    /// dropped as from strangers.
    pub contacts: Vec<ReplicaId>,
    /// A learner may be promoted to voter once its chosen prefix is within
    /// this many slots of the master's (unless the change is forced).
    pub learner_lag_slots_max: u64,
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
    /// compacted enough to be told in bounded messages). Also the most
    /// messages one catch-up answer is split into.
    pub promise_parts_max: u32,
    /// The most entries carried by one promise part, accept or catch-up
    /// message; also the most committed entries handed out in one `Ready`.
    pub entries_per_message_max: usize,
    /// The most bytes of entries (as [`crate::Entry::encoded_bytes`]
    /// counts them) in one promise part, accept or catch-up message, and in
    /// one `Ready`'s committed entries. It must hold the largest entry a
    /// batch can make, and stay well below the transport's message limit.
    pub message_bytes_max: usize,
    /// The master resends an accept that has not been acknowledged this long.
    pub accept_retry_ticks: u64,
    /// A lagging replica repeats a catch-up request this long after the
    /// request, or after the latest message of its answer, when the answer
    /// did not bring all it could.
    pub catch_up_retry_ticks: u64,
    /// Seeds the replica's random number generator (election jitter).
    pub seed: u64,
}

/// A configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A member id is 0 (reserved) or appears twice, or there is none.
    #[error("member ids must be distinct and non-zero")]
    BadMembers,
    /// The timeouts contradict each other; the message says which rule.
    #[error("inconsistent timeouts: {0}")]
    Timeouts(&'static str),
    /// A limit is zero.
    #[error("limit {0} must be positive")]
    ZeroLimit(&'static str),
    /// The master lease's margin does not cover tick granularity and the
    /// clock drift the lease tolerates.
    #[error(
        "lease_drift_ticks {drift} is too small for lease_ticks {lease} (at least {needed:?} ticks are needed to cover one tick of granularity and {CLOCK_DRIFT_PPM_MAX} ppm of clock drift; None means the lease is too short)"
    )]
    LeaseMargin {
        /// `lease_ticks`.
        lease: u64,
        /// `lease_drift_ticks`.
        drift: u64,
        /// The smallest margin that works, if any.
        needed: Option<u64>,
    },
    /// One slot's largest batch would not fit in a message.
    #[error("message_bytes_max {message} is below the largest entry a batch can make ({entry} bytes)")]
    MessageTooSmall {
        /// `message_bytes_max`.
        message: usize,
        /// The largest entry's encoded size.
        entry: usize,
    },
}

impl Config {
    /// A configuration with the defaults Gaios runs with, for replica `id` of
    /// a cell with these `members`.
    pub fn new(id: ReplicaId, members: Vec<ReplicaId>) -> Self {
        Config {
            id,
            members,
            genesis: None,
            contacts: Vec::new(),
            learner_lag_slots_max: 64,
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
            message_bytes_max: 16 << 20,
            accept_retry_ticks: 6,
            catch_up_retry_ticks: 6,
            seed: id,
        }
    }

    /// Checks the rules the protocol relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut sorted = self.members.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.is_empty()
            || sorted.len() != self.members.len()
            || sorted.first() == Some(&0)
            || self.id == 0
            || self.contacts.contains(&0)
            || self.members.len() > crate::types::MEMBERS_MAX
        {
            return Err(ConfigError::BadMembers);
        }
        if let Some(genesis) = &self.genesis
            && (genesis.validate().is_err() || genesis.voters().collect::<Vec<_>>() != sorted)
        {
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
        if !lease_margin_covers_drift(self.lease_ticks, self.lease_drift_ticks) {
            return Err(ConfigError::LeaseMargin {
                lease: self.lease_ticks,
                drift: self.lease_drift_ticks,
                needed: lease_drift_ticks_for(self.lease_ticks),
            });
        }
        if self.lease_ticks - self.lease_drift_ticks <= self.heartbeat_ticks {
            return Err(ConfigError::Timeouts(
                "heartbeat_ticks < lease_ticks - lease_drift_ticks (the master's lease must outlast a heartbeat interval)",
            ));
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
            ("message_bytes_max", self.message_bytes_max),
            ("accept_retry_ticks", self.accept_retry_ticks as usize),
            ("catch_up_retry_ticks", self.catch_up_retry_ticks as usize),
        ] {
            if value == 0 {
                return Err(ConfigError::ZeroLimit(name));
            }
        }
        if self.message_bytes_max < self.entry_bytes_max() {
            return Err(ConfigError::MessageTooSmall { message: self.message_bytes_max, entry: self.entry_bytes_max() });
        }
        Ok(())
    }

    /// The largest encoded entry a master can make: the batch's bytes (or
    /// one command alone, which may exceed them), with the framing of as many
    /// commands as a batch holds; or the largest configuration.
    pub fn entry_bytes_max(&self) -> usize {
        let commands = self.batch_bytes_max.max(self.command_bytes_max);
        let batch = commands.saturating_add(self.batch_commands_max.saturating_mul(COMMAND_OVERHEAD_BYTES));
        ENTRY_OVERHEAD_BYTES.saturating_add(batch.max(MEMBERSHIP_BYTES_MAX))
    }

    /// The configuration the log starts from: `genesis`, or `members` as
    /// voters without addresses.
    pub fn first_membership(&self) -> crate::types::Membership {
        self.genesis.clone().unwrap_or_else(|| crate::types::Membership::genesis(&self.members))
    }

    /// How many slots past a candidate's first unchosen slot a promise may
    /// report: as many as `promise_parts_max` full parts hold. An acceptor
    /// whose log reaches further refuses the prepare as `Behind`; a promise
    /// reporting further is malformed.
    pub fn recovery_slots_max(&self) -> u64 {
        (self.promise_parts_max as u64).saturating_mul(self.entries_per_message_max as u64)
    }

    /// The most bytes of entries one catch-up answer carries (and one
    /// replica keeps of catch-up entries ahead of its chosen prefix): four
    /// messages' worth, and at least 64 MiB, so an answer closes a whole
    /// accept window unless its entries are large, and a lagging follower
    /// never costs its peer a promise's worth (a GiB with the server's
    /// limits) per request.
    pub fn catch_up_answer_bytes_max(&self) -> usize {
        self.message_bytes_max.saturating_mul(4).max(64 << 20)
    }

    /// How far past its chosen prefix an acceptor accepts: an acceptor
    /// takes a slot `s` only while `s - (chosen_through + 1)` is below this,
    /// so that whatever it holds past its chosen prefix always fits in one
    /// promise ([`Self::recovery_slots_max`] slots, `promise_parts_max`
    /// parts). Each part holds at least as many entries as fit in a message
    /// by count and by bytes (every entry a master makes is at most
    /// [`Self::entry_bytes_max`]), so `promise_parts_max` such parts always
    /// suffice. Without this bound followers that learn slower than the
    /// master chooses (slow or lossy catch-up) accept ever further ahead of
    /// their chosen prefix; once the master that knew those slots chosen is
    /// gone, no survivor can run phase 1 over its own log and no one else
    /// knows more: the cell could never elect a master again.
    pub fn accept_window_slots(&self) -> u64 {
        let per_part = (self.message_bytes_max / self.entry_bytes_max().max(1)).clamp(1, self.entries_per_message_max.max(1));
        (self.promise_parts_max as u64).saturating_mul(per_part as u64)
    }
}
