//! The vocabulary of the protocol: replicas, ballots, slots, values, entries.

use bytes::Bytes;

/// The highest round a ballot may carry. Rounds grow by one per election, so
/// this bound is never reached in practice; a message or a disk record
/// claiming more is malformed, and bounding it keeps `round + 1` from ever
/// overflowing.
pub const ROUND_MAX: u64 = (1 << 48) - 1;

/// The highest slot a message or a disk record may name. Slots grow by one
/// per batch (2^56 lasts two thousand years at a million slots a second);
/// anything beyond is malformed, and bounding it keeps `slot + 1` safe.
pub const SLOT_MAX: u64 = (1 << 56) - 1;

/// The bytes an entry's encoding takes besides its commands' bytes (slot,
/// ballot, framing), counted generously.
pub const ENTRY_OVERHEAD_BYTES: usize = 48;

/// The bytes each command adds to an entry's encoding besides its own bytes
/// (a length prefix and a field tag), counted generously.
pub const COMMAND_OVERHEAD_BYTES: usize = 8;

/// Identifies a replica of the cell. Ids are small positive numbers chosen by
/// the operator; they also break ties between ballots of the same round.
pub type ReplicaId = u64;

/// A position in the replicated log. The first slot is 1; slot 0 stands for
/// "nothing", so `chosen_through == 0` means no slot is chosen yet.
pub type Slot = u64;

/// A Paxos ballot. Ballots are totally ordered by `round`, then by `replica`,
/// so two replicas never use the same ballot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ballot {
    /// Increases each time a replica runs phase 1.
    pub round: u64,
    /// The replica that owns the ballot (its proposer).
    pub replica: ReplicaId,
}

impl Ballot {
    /// The ballot below every real one; an acceptor that promised it has
    /// promised nothing.
    pub const ZERO: Ballot = Ballot { round: 0, replica: 0 };

    /// Builds a ballot.
    pub const fn new(round: u64, replica: ReplicaId) -> Self {
        Ballot { round, replica }
    }

    /// True when the round is within [`ROUND_MAX`].
    pub const fn in_range(&self) -> bool {
        self.round <= ROUND_MAX
    }
}

impl std::fmt::Display for Ballot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.round, self.replica)
    }
}

/// The most members (voters and learners) a configuration may list.
pub const MEMBERS_MAX: usize = 64;

/// The longest peer or client address a member may carry, in bytes.
pub const ADDRESS_BYTES_MAX: usize = 256;

/// The most bytes [`Membership::encoded_bytes`] can count for a valid
/// configuration: [`MEMBERS_MAX`] members with the longest addresses.
pub const MEMBERSHIP_BYTES_MAX: usize = COMMAND_OVERHEAD_BYTES + MEMBERS_MAX * (4 * COMMAND_OVERHEAD_BYTES + 2 * ADDRESS_BYTES_MAX);

/// One member of a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The member's replica id (never 0).
    pub id: ReplicaId,
    /// True for a voter; false for a learner, which receives the log but is
    /// counted in no quorum and grants no lease.
    pub voter: bool,
    /// Which life of this id the member is: a replica whose disk was wiped
    /// comes back (through a replacement) with a new incarnation, and peers
    /// drop messages from the old one. 0 when the cell does not track it.
    pub incarnation: u64,
    /// Where peers reach it (the driver's business; the core never dials).
    pub peer_address: String,
    /// Where clients reach it.
    pub client_address: String,
}

/// A configuration of the cell: who votes and who learns. A
/// [`Value::Reconfigure`] chosen at slot `s` puts one in force for every
/// slot after `s` (see `docs/MEMBERSHIP.md`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    /// The members, sorted by id, ids distinct.
    pub members: Vec<Member>,
    /// The highest id any member of the cell ever had. A new member's id
    /// must be higher, so that no id is ever used twice: a replica that
    /// lost its disk comes back under a new id, and no acceptor that forgot
    /// its promises can be mistaken for the one that made them.
    pub highest_id: ReplicaId,
}

impl Membership {
    /// The first configuration of a cell: these voters, no addresses.
    pub fn genesis(voters: &[ReplicaId]) -> Self {
        let mut ids = voters.to_vec();
        ids.sort_unstable();
        ids.dedup();
        Membership {
            highest_id: ids.last().copied().unwrap_or(0),
            members: ids
                .into_iter()
                .map(|id| Member {
                    id,
                    voter: true,
                    incarnation: 0,
                    peer_address: String::new(),
                    client_address: String::new(),
                })
                .collect(),
        }
    }

    /// The member with this id, if any.
    pub fn get(&self, id: ReplicaId) -> Option<&Member> {
        self.members.binary_search_by_key(&id, |m| m.id).ok().and_then(|i| self.members.get(i))
    }

    /// True when `id` is a member (voter or learner).
    pub fn contains(&self, id: ReplicaId) -> bool {
        self.get(id).is_some()
    }

    /// True when `id` is a voter.
    pub fn is_voter(&self, id: ReplicaId) -> bool {
        self.get(id).is_some_and(|m| m.voter)
    }

    /// The voters' ids, in order.
    pub fn voters(&self) -> impl Iterator<Item = ReplicaId> + '_ {
        self.members.iter().filter(|m| m.voter).map(|m| m.id)
    }

    /// Every member's id, in order.
    pub fn ids(&self) -> impl Iterator<Item = ReplicaId> + '_ {
        self.members.iter().map(|m| m.id)
    }

    /// How many voters make a majority.
    pub fn quorum(&self) -> usize {
        self.voters().count() / 2 + 1
    }

    /// True when the voters among `ids` make a majority. Learners and
    /// strangers in `ids` count for nothing.
    pub fn is_quorum<'a>(&self, ids: impl IntoIterator<Item = &'a ReplicaId>) -> bool {
        ids.into_iter().filter(|&&id| self.is_voter(id)).count() >= self.quorum()
    }

    /// Checks the bounds a configuration must meet wherever it comes from (a
    /// peer, a client, the disk): at least one voter, at most
    /// [`MEMBERS_MAX`] members, ids non-zero, distinct and sorted, addresses
    /// at most [`ADDRESS_BYTES_MAX`] bytes.
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.members.len() > MEMBERS_MAX {
            return Err("a configuration lists more members than allowed");
        }
        if self.voters().next().is_none() {
            return Err("a configuration without a voter");
        }
        if self.members.first().is_some_and(|m| m.id == 0) || self.members.windows(2).any(|w| w[0].id >= w[1].id) {
            return Err("a configuration's ids are zero, repeated or unsorted");
        }
        if self.members.iter().any(|m| m.peer_address.len() > ADDRESS_BYTES_MAX || m.client_address.len() > ADDRESS_BYTES_MAX) {
            return Err("a member's address is too long");
        }
        if self.members.last().is_some_and(|m| m.id > self.highest_id) {
            return Err("a member's id is above the highest id the configuration records");
        }
        Ok(())
    }

    /// A generous estimate of the encoded size.
    pub fn encoded_bytes(&self) -> usize {
        COMMAND_OVERHEAD_BYTES
            + self
                .members
            .iter()
                .map(|m| COMMAND_OVERHEAD_BYTES * 4 + m.peer_address.len() + m.client_address.len())
                .sum::<usize>()
    }
}

impl std::fmt::Display for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> =
            self.members.iter().map(|m| if m.voter { m.id.to_string() } else { format!("{}(learner)", m.id) }).collect();
        write!(f, "{{{}}}", parts.join(", "))
    }
}

/// What one slot of the log holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// Fills a gap that a new master found in the log; applying it does nothing.
    Noop,
    /// A batch of client commands, applied in order. The core never looks
    /// inside a command.
    Batch(Vec<Bytes>),
    /// A new configuration, in force for every slot after this one once this
    /// slot is chosen. The application has nothing to apply; the core owns
    /// the configuration ([`crate::Replica::membership`]).
    Reconfigure(Membership),
}

impl Value {
    /// The number of bytes of commands the value carries.
    pub fn size_bytes(&self) -> usize {
        match self {
            Value::Noop | Value::Reconfigure(_) => 0,
            Value::Batch(commands) => commands.iter().map(Bytes::len).sum(),
        }
    }

    /// A generous estimate of the value's encoded size, commands and their
    /// framing included; messages are bounded with it.
    pub fn encoded_bytes(&self) -> usize {
        match self {
            Value::Noop => 0,
            Value::Batch(commands) => commands.iter().map(|c| c.len().saturating_add(COMMAND_OVERHEAD_BYTES)).sum(),
            Value::Reconfigure(membership) => membership.encoded_bytes(),
        }
    }
}

/// A value accepted in some ballot for some slot. In the acceptor's log the
/// ballot is the one the value was accepted in; in a `Ready`'s `committed`
/// list the value is chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The slot the value belongs to.
    pub slot: Slot,
    /// The ballot in which the value was accepted.
    pub ballot: Ballot,
    /// The value itself.
    pub value: Value,
}

impl Entry {
    /// A generous estimate of the entry's encoded size in a message.
    pub fn encoded_bytes(&self) -> usize {
        ENTRY_OVERHEAD_BYTES.saturating_add(self.value.encoded_bytes())
    }

    /// True when the slot and the ballot are within their bounds.
    pub fn in_range(&self) -> bool {
        (1..=SLOT_MAX).contains(&self.slot) && self.ballot.in_range()
    }
}

/// The acceptor's state besides its log, which must be durable before any
/// message that depends on it leaves the replica.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    /// The highest ballot this acceptor promised; it will accept nothing lower.
    pub promised: Ballot,
    /// Every slot up to and including this one is chosen and its value is in
    /// the log (or below the snapshot).
    pub chosen_through: Slot,
}

/// A snapshot of the application's state after applying every slot up to and
/// including `slot`, with the configuration in force after it. The core does
/// not interpret `data`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The last slot the snapshot covers.
    pub slot: Slot,
    /// The application's encoding of its state.
    pub data: Bytes,
    /// The configuration in force after `slot`. [`crate::Replica::compact`]
    /// fills it in; whatever the application put there is replaced.
    pub membership: Membership,
}

/// Everything a replica kept durably, handed back to [`crate::Replica::new`]
/// when it (re)starts.
#[derive(Clone, Debug, Default)]
pub struct Durable {
    /// The acceptor's promised ballot and chosen prefix.
    pub hard_state: HardState,
    /// The accepted entries above the snapshot, in any order.
    pub entries: Vec<Entry>,
    /// The latest snapshot, if the log was ever compacted.
    pub snapshot: Option<Snapshot>,
    /// The last slot the application has applied (at least the snapshot's slot).
    pub applied: Slot,
}
