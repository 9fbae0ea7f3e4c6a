//! What the core asks its driver to do.

use crate::message::Message;
use crate::types::{Ballot, Entry, HardState, ReplicaId, Slot, Snapshot};

/// A message and the replica it is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The destination replica.
    pub to: ReplicaId,
    /// The message.
    pub message: Message,
}

/// A change of the replica's role, reported once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RoleChange {
    /// Phase 1 succeeded: this replica is the master for `ballot`. Every slot
    /// up to `recovered_through` was re-proposed; reads may be served from the
    /// applied state once that slot is applied and the lease is valid.
    BecameMaster {
        /// The master's ballot.
        ballot: Ballot,
        /// The last slot that phase 1 recovered.
        recovered_through: Slot,
    },
    /// This replica is no longer the master. Proposals still queued were
    /// dropped; proposals in flight may or may not be chosen.
    LostMastership {
        /// The ballot it was master in.
        ballot: Ballot,
    },
}

/// The work the core hands its driver, taken with [`crate::Replica::ready`].
///
/// **The driver's duty, in one sentence:** send `messages` at once; make
/// `hard_state`, `entries`, `snapshot` and `compact_through` durable in one
/// synced write; only then send `persisted_messages`; install `snapshot` if
/// `install_snapshot` says so, and apply `committed` in order; then call
/// [`crate::Replica::advance`] with this `Ready` before taking the next one.
///
/// The core decides whether the write must be synced ([`Ready::must_sync`]):
/// a `Ready` whose only durable change is `hard_state.chosen_through` (the
/// promised ballot as last synced, no entries, snapshot or compaction) may be
/// written without a sync, provided the storage keeps writes in order (a
/// write-ahead log whose unsynced tail a power loss may cut, but never
/// reorders). The chosen prefix is knowledge, not a vote: the entries it
/// covers were synced when accepted, a chosen slot stays chosen whatever one
/// replica forgets, and the next synced write makes the marker durable with
/// everything before it. The simulator loses unsynced tails on power loss, so
/// this rule is tested exactly as the server applies it.
#[derive(Debug, Default)]
#[must_use = "a Ready must be persisted, sent, applied and advanced"]
pub struct Ready {
    /// The acceptor's promised ballot and chosen prefix, if they changed.
    pub hard_state: Option<HardState>,
    /// Entries to write (insert or overwrite by slot).
    pub entries: Vec<Entry>,
    /// A snapshot to store durably; the log at or below its slot goes (see
    /// `compact_through`). It is either the application's own (after
    /// [`crate::Replica::compact`]) or, when `install_snapshot` is true, one
    /// received from another replica.
    pub snapshot: Option<Snapshot>,
    /// True when `snapshot` came from another replica: load it into the
    /// application before applying `committed`.
    pub install_snapshot: bool,
    /// Delete every log entry at or below this slot (a snapshot covers them).
    pub compact_through: Option<Slot>,
    /// Messages that may go before the write above is durable.
    pub messages: Vec<Envelope>,
    /// Messages that must not go before the write above is durable: promises,
    /// accepted notices and lease acknowledgements rest on it.
    pub persisted_messages: Vec<Envelope>,
    /// Chosen entries to apply, in slot order, with no gaps.
    pub committed: Vec<Entry>,
    /// Role changes since the last `Ready`, oldest first.
    pub role_changes: Vec<RoleChange>,
    /// Whether the write must be synced before `persisted_messages` go: true
    /// when it holds entries, a snapshot, a compaction or a promise not yet
    /// synced. When false the write may stay in the storage's buffers (see
    /// the type's docs); the persisted messages then rest only on earlier
    /// synced writes.
    pub must_sync: bool,
    /// Messages from the replica to itself, delivered by `advance` once the
    /// write is durable (the replica votes only with what is on its disk).
    pub(crate) self_messages: Vec<Message>,
}

impl Ready {
    /// True when there is nothing to write to disk.
    pub fn nothing_to_persist(&self) -> bool {
        self.hard_state.is_none()
            && self.entries.is_empty()
            && self.snapshot.is_none()
            && self.compact_through.is_none()
    }

    /// True when the `Ready` holds no work at all.
    pub fn is_empty(&self) -> bool {
        self.nothing_to_persist()
            && self.messages.is_empty()
            && self.persisted_messages.is_empty()
            && self.committed.is_empty()
            && self.role_changes.is_empty()
            && self.self_messages.is_empty()
    }
}
