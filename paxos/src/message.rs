//! The messages replicas exchange. One variant per step of the protocol.

use crate::types::{Ballot, Entry, Slot, Snapshot};

/// A protocol message. The transport carries it from one replica to another;
/// it may lose, duplicate, delay or reorder messages, and the protocol stays
/// safe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Phase 1a: a candidate asks acceptors to promise `ballot` for every slot
    /// from `from_slot` on.
    Prepare {
        /// The candidate's ballot.
        ballot: Ballot,
        /// The candidate's first slot not known to be chosen.
        from_slot: Slot,
    },
    /// Phase 1b: the acceptor promised `ballot` and reports what it accepted.
    /// A promise whose entries do not fit in one message goes in `parts`
    /// messages; the candidate counts it once it holds every part.
    Promise {
        /// The ballot promised.
        ballot: Ballot,
        /// The acceptor's chosen prefix: entries at or below it are chosen.
        chosen_through: Slot,
        /// This part's share of the entries the acceptor holds at or above
        /// the prepare's `from_slot`.
        entries: Vec<Entry>,
        /// Which part this is, from 0.
        part: u32,
        /// How many parts the promise has (at least 1).
        parts: u32,
    },
    /// Phase 2a: the master asks acceptors to accept values; each entry's
    /// ballot equals `ballot`. `chosen_through` tells them what is chosen.
    Accept {
        /// The master's ballot.
        ballot: Ballot,
        /// The proposed values, one per slot.
        entries: Vec<Entry>,
        /// The master's chosen prefix (commit notification).
        chosen_through: Slot,
    },
    /// Phase 2b: the acceptor accepted the values of these slots in `ballot`.
    Accepted {
        /// The ballot the values were accepted in.
        ballot: Ballot,
        /// The slots accepted.
        slots: Vec<Slot>,
    },
    /// The master's heartbeat: keeps followers from starting an election,
    /// renews the master lease and carries the commit notification.
    Heartbeat {
        /// The master's ballot.
        ballot: Ballot,
        /// The master's chosen prefix.
        chosen_through: Slot,
        /// The master's tick when it sent this heartbeat; echoed in the ack so
        /// the master can count its lease from the send time.
        sent_tick: u64,
    },
    /// The acceptor acknowledges a heartbeat and promises not to promise any
    /// other replica's ballot for the lease period.
    HeartbeatAck {
        /// The master's ballot.
        ballot: Ballot,
        /// The `sent_tick` of the heartbeat acknowledged.
        sent_tick: u64,
    },
    /// The acceptor refuses a prepare, accept or heartbeat.
    Nack {
        /// The ballot refused.
        ballot: Ballot,
        /// The acceptor's promised ballot.
        promised: Ballot,
        /// Why.
        reason: NackReason,
    },
    /// A lagging replica asks for chosen entries from `from_slot` on.
    CatchUpRequest {
        /// The first slot the requester is missing.
        from_slot: Slot,
    },
    /// Chosen entries, contiguous and in slot order.
    CatchUp {
        /// The entries; each is chosen.
        entries: Vec<Entry>,
    },
    /// A snapshot for a replica that lags behind the sender's compacted log.
    InstallSnapshot {
        /// The snapshot to install.
        snapshot: Snapshot,
    },
}

/// Why an acceptor refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NackReason {
    /// The acceptor promised a higher ballot.
    HigherBallot,
    /// The acceptor granted a master lease to another replica that has not run
    /// out yet, or it restarted and waits out any lease it may have granted.
    LeaseHeld,
    /// The candidate's log is too far behind: the acceptor compacted past its
    /// `from_slot`. The candidate should catch up first.
    Behind {
        /// The acceptor's chosen prefix.
        chosen_through: Slot,
    },
}

impl Message {
    /// The message's name, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Prepare { .. } => "prepare",
            Message::Promise { .. } => "promise",
            Message::Accept { .. } => "accept",
            Message::Accepted { .. } => "accepted",
            Message::Heartbeat { .. } => "heartbeat",
            Message::HeartbeatAck { .. } => "heartbeat_ack",
            Message::Nack { .. } => "nack",
            Message::CatchUpRequest { .. } => "catch_up_request",
            Message::CatchUp { .. } => "catch_up",
            Message::InstallSnapshot { .. } => "install_snapshot",
        }
    }
}
