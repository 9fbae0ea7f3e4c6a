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

/// What one slot of the log holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// Fills a gap that a new master found in the log; applying it does nothing.
    Noop,
    /// A batch of client commands, applied in order. The core never looks
    /// inside a command.
    Batch(Vec<Bytes>),
}

impl Value {
    /// The number of bytes of commands the value carries.
    pub fn size_bytes(&self) -> usize {
        match self {
            Value::Noop => 0,
            Value::Batch(commands) => commands.iter().map(Bytes::len).sum(),
        }
    }

    /// A generous estimate of the value's encoded size, commands and their
    /// framing included; messages are bounded with it.
    pub fn encoded_bytes(&self) -> usize {
        match self {
            Value::Noop => 0,
            Value::Batch(commands) => commands.iter().map(|c| c.len().saturating_add(COMMAND_OVERHEAD_BYTES)).sum(),
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
/// including `slot`. The core does not interpret `data`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The last slot the snapshot covers.
    pub slot: Slot,
    /// The application's encoding of its state.
    pub data: Bytes,
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
