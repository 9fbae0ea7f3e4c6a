//! The messages replicas exchange. One variant per step of the protocol.

use crate::config::Config;
use crate::types::{Ballot, Entry, ReplicaId, SLOT_MAX, Slot, Snapshot, Value};

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
    /// other replica's ballot for the lease period. The master counts it
    /// toward its lease only from a voter; from anyone it learns how far
    /// the replica has learned the log (a learner is promoted on it).
    HeartbeatAck {
        /// The master's ballot.
        ballot: Ballot,
        /// The `sent_tick` of the heartbeat acknowledged.
        sent_tick: u64,
        /// The acknowledging replica's chosen prefix.
        chosen_through: Slot,
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
    /// Before it runs phase 1, a replica that heard no master for an
    /// election timeout asks the others whether they would promise a ballot
    /// like this one. Nothing is promised or persisted; a majority of yes
    /// lets it campaign. A replica that still hears from a master says no,
    /// so a rejoining or partitioned replica cannot unseat a healthy master.
    PreVote {
        /// The ballot the replica would campaign with.
        ballot: Ballot,
    },
    /// The answer to a pre-vote.
    PreVoteReply {
        /// The ballot asked about.
        ballot: Ballot,
        /// Whether this replica would promise it now.
        granted: bool,
        /// This replica's promised ballot: a pre-candidate refused for too
        /// low a round campaigns above it next time.
        promised: Ballot,
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
            Message::PreVote { .. } => "pre_vote",
            Message::PreVoteReply { .. } => "pre_vote_reply",
        }
    }

    /// Checks a message from `from` against the bounds of the protocol and
    /// of `config`, before any of it is used: rounds and slots in range,
    /// ballots owned by a real replica id (and by the sender where it claims
    /// its own), counts and bytes within the limits, promise parts that
    /// exist, catch-up entries contiguous, configurations well formed. A
    /// message that fails is dropped and counted; the reason names the first
    /// rule it broke. (Whether the sender is a member is the replica's check:
    /// it depends on the configurations it knows.)
    pub fn validate(&self, from: ReplicaId, config: &Config) -> Result<(), &'static str> {
        let member = |ballot: &Ballot| ballot.in_range() && ballot.replica != 0;
        let own = |ballot: &Ballot| member(ballot) && ballot.replica == from;
        let slot = |slot: Slot| (1..=SLOT_MAX).contains(&slot);
        let entries_ok = |entries: &[Entry]| validate_entries(entries, config);
        match self {
            Message::Prepare { ballot, from_slot } => {
                if !own(ballot) {
                    return Err("a prepare's ballot is not its sender's");
                }
                if !slot(*from_slot) {
                    return Err("a prepare's first slot is out of range");
                }
            }
            Message::Promise { ballot, chosen_through, entries, part, parts } => {
                if !member(ballot) || *chosen_through > SLOT_MAX {
                    return Err("a promise's ballot or chosen prefix is out of range");
                }
                if *parts == 0 || *parts > config.promise_parts_max || part >= parts {
                    return Err("a promise part that cannot exist");
                }
                entries_ok(entries)?;
            }
            Message::Accept { ballot, entries, chosen_through } => {
                if !own(ballot) || *chosen_through > SLOT_MAX {
                    return Err("an accept's ballot is not its sender's or its chosen prefix is out of range");
                }
                entries_ok(entries)?;
                if entries.iter().any(|e| e.ballot != *ballot) {
                    return Err("an accept proposes an entry in another ballot");
                }
            }
            Message::Accepted { ballot, slots } => {
                if !member(ballot) {
                    return Err("an accepted notice's ballot is out of range");
                }
                if slots.len() > config.entries_per_message_max || !slots.iter().all(|&s| slot(s)) {
                    return Err("an accepted notice's slots are out of range");
                }
            }
            Message::Heartbeat { ballot, chosen_through, .. } => {
                if !own(ballot) || *chosen_through > SLOT_MAX {
                    return Err("a heartbeat's ballot is not its sender's or its chosen prefix is out of range");
                }
            }
            Message::HeartbeatAck { ballot, chosen_through, .. } => {
                if !member(ballot) || *chosen_through > SLOT_MAX {
                    return Err("a heartbeat acknowledgement's ballot or chosen prefix is out of range");
                }
            }
            Message::Nack { ballot, promised, reason } => {
                let promised_ok = *promised == Ballot::ZERO || member(promised);
                if !member(ballot) || !promised_ok {
                    return Err("a nack's ballots are out of range");
                }
                if let NackReason::Behind { chosen_through } = reason
                    && *chosen_through > SLOT_MAX
                {
                    return Err("a nack's chosen prefix is out of range");
                }
            }
            Message::CatchUpRequest { from_slot } => {
                if !slot(*from_slot) {
                    return Err("a catch-up request's first slot is out of range");
                }
            }
            Message::CatchUp { entries } => {
                entries_ok(entries)?;
                if entries.windows(2).any(|pair| pair[1].slot != pair[0].slot + 1) {
                    return Err("catch-up entries are not contiguous");
                }
            }
            Message::InstallSnapshot { snapshot } => {
                if !slot(snapshot.slot) {
                    return Err("a snapshot's slot is out of range");
                }
                snapshot.membership.validate()?;
            }
            Message::PreVote { ballot } => {
                if !own(ballot) {
                    return Err("a pre-vote's ballot is not its sender's");
                }
            }
            Message::PreVoteReply { ballot, promised, .. } => {
                if !member(ballot) || !(*promised == Ballot::ZERO || member(promised)) {
                    return Err("a pre-vote reply's ballot is out of range");
                }
            }
        }
        Ok(())
    }
}

/// The bounds every carried entry list must meet: at most
/// `entries_per_message_max` entries and `message_bytes_max` bytes, each
/// entry's slot and ballot in range and the ballot a real replica's, each
/// configuration well formed.
fn validate_entries(entries: &[Entry], config: &Config) -> Result<(), &'static str> {
    if entries.len() > config.entries_per_message_max {
        return Err("more entries than a message may carry");
    }
    let mut bytes: usize = 0;
    for entry in entries {
        if !entry.in_range() || entry.ballot.replica == 0 {
            return Err("an entry's slot or ballot is out of range");
        }
        if let Value::Reconfigure(membership) = &entry.value {
            membership.validate()?;
        }
        bytes = bytes.saturating_add(entry.encoded_bytes());
    }
    if bytes > config.message_bytes_max {
        return Err("more entry bytes than a message may carry");
    }
    Ok(())
}
