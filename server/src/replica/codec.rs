//! Conversions between the Paxos core's types and their protobuf form.
//!
//! The core (`gaios-paxos`) knows nothing of protobuf; the transport and the
//! storage speak only protobuf. This module is the one place where the two
//! meet, so that a change to either side shows up here and nowhere else.
//!
//! Encoding cannot fail. Decoding can: whatever came over the network or from
//! disk may lack a required field or a `oneof` choice, and decoding reports
//! that as a [`CodecError`] instead of panicking or inventing a default.

use gaios_paxos::message::{Message, NackReason};
use gaios_paxos::types::{Ballot, Entry, HardState, Member, Membership, ReplicaId, Snapshot, Value};
use gaios_proto::replica::v1 as peer;

/// Why a protobuf record or message could not become a core type.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CodecError {
    /// A field the core needs is absent: a submessage (which protobuf makes
    /// optional) or a `oneof` with no choice set. Names the field as
    /// `Message.field`.
    #[error("required field {0} is missing")]
    Missing(&'static str),
    /// An entry names slot 0, which stands for "nothing" and never holds a
    /// value; accepting it would break the core's slot arithmetic.
    #[error("entry has slot 0; slots start at 1")]
    ZeroSlot,
    /// A configuration breaks a bound (no voter, too many members, ids
    /// zero, repeated or unsorted, an address too long).
    #[error("malformed configuration: {0}")]
    Membership(&'static str),
    /// A promise names a part outside its number of parts (or has no
    /// parts); the candidate would wait for a part that never comes.
    #[error("promise part {part} of {parts} does not exist")]
    PromisePart {
        /// The part named, from 0.
        part: u32,
        /// The number of parts named.
        parts: u32,
    },
    /// The bytes are not a valid encoding of the expected protobuf message.
    #[error("cannot decode {what}: {source}")]
    Decode {
        /// The protobuf message that was expected.
        what: &'static str,
        /// What prost found wrong.
        #[source]
        source: prost::DecodeError,
    },
}

/// A protocol message together with its sender and destination, as the
/// transport carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressedMessage {
    /// The replica that sent the message; the core's `step` needs it.
    pub from: ReplicaId,
    /// The replica the message is for; lets a receiver drop misrouted
    /// messages.
    pub to: ReplicaId,
    /// The message itself.
    pub message: Message,
}

/// Encodes a ballot.
pub fn encode_ballot(ballot: Ballot) -> peer::Ballot {
    peer::Ballot {
        round: ballot.round,
        replica: ballot.replica,
    }
}

/// Decodes a ballot that a message must carry; `field` names it in the error
/// if it is absent.
pub fn decode_ballot(
    ballot: Option<peer::Ballot>,
    field: &'static str,
) -> Result<Ballot, CodecError> {
    let ballot = ballot.ok_or(CodecError::Missing(field))?;
    Ok(Ballot::new(ballot.round, ballot.replica))
}

/// Encodes the value of one slot.
pub fn encode_value(value: &Value) -> peer::Value {
    let kind = match value {
        Value::Noop => peer::value::Kind::Noop(peer::value::Noop {}),
        Value::Batch(commands) => peer::value::Kind::Batch(peer::value::Batch {
            commands: commands.clone(),
        }),
        Value::Reconfigure(membership) => peer::value::Kind::Reconfigure(encode_membership(membership)),
    };
    peer::Value { kind: Some(kind) }
}

/// Encodes a configuration.
pub fn encode_membership(membership: &Membership) -> peer::Membership {
    peer::Membership {
        members: membership
            .members
            .iter()
            .map(|m| peer::Member {
                id: m.id,
                voter: m.voter,
                incarnation: m.incarnation,
                peer_address: m.peer_address.clone(),
                client_address: m.client_address.clone(),
            })
            .collect(),
        highest_id: membership.highest_id,
    }
}

/// Decodes a configuration and checks its bounds (members, ids,
/// addresses: [`Membership::validate`]).
pub fn decode_membership(membership: peer::Membership) -> Result<Membership, CodecError> {
    let membership = Membership {
        members: membership
            .members
            .into_iter()
            .map(|m| Member {
                id: m.id,
                voter: m.voter,
                incarnation: m.incarnation,
                peer_address: m.peer_address,
                client_address: m.client_address,
            })
            .collect(),
        highest_id: membership.highest_id,
    };
    membership.validate().map_err(CodecError::Membership)?;
    Ok(membership)
}

/// Decodes the value of one slot; a value with no kind set is an error, not
/// a no-op, so that a truncated record is never mistaken for a real one.
pub fn decode_value(value: peer::Value) -> Result<Value, CodecError> {
    match value.kind.ok_or(CodecError::Missing("Value.kind"))? {
        peer::value::Kind::Noop(peer::value::Noop {}) => Ok(Value::Noop),
        peer::value::Kind::Batch(batch) => Ok(Value::Batch(batch.commands)),
        peer::value::Kind::Reconfigure(membership) => Ok(Value::Reconfigure(decode_membership(membership)?)),
    }
}

/// Encodes a log entry.
pub fn encode_entry(entry: &Entry) -> peer::Entry {
    peer::Entry {
        slot: entry.slot,
        ballot: Some(encode_ballot(entry.ballot)),
        value: Some(encode_value(&entry.value)),
    }
}

/// Decodes a log entry; its ballot and value are required and its slot must
/// be at least 1.
pub fn decode_entry(entry: peer::Entry) -> Result<Entry, CodecError> {
    if entry.slot == 0 {
        return Err(CodecError::ZeroSlot);
    }
    Ok(Entry {
        slot: entry.slot,
        ballot: decode_ballot(entry.ballot, "Entry.ballot")?,
        value: decode_value(entry.value.ok_or(CodecError::Missing("Entry.value"))?)?,
    })
}

fn encode_entries(entries: &[Entry]) -> Vec<peer::Entry> {
    entries.iter().map(encode_entry).collect()
}

fn decode_entries(entries: Vec<peer::Entry>) -> Result<Vec<Entry>, CodecError> {
    entries.into_iter().map(decode_entry).collect()
}

/// Encodes the acceptor's hard state.
pub fn encode_hard_state(hard_state: &HardState) -> peer::HardState {
    peer::HardState {
        promised: Some(encode_ballot(hard_state.promised)),
        chosen_through: hard_state.chosen_through,
    }
}

/// Decodes the acceptor's hard state; the promised ballot is required, since
/// defaulting it to zero would silently forget a promise.
pub fn decode_hard_state(hard_state: peer::HardState) -> Result<HardState, CodecError> {
    Ok(HardState {
        promised: decode_ballot(hard_state.promised, "HardState.promised")?,
        chosen_through: hard_state.chosen_through,
    })
}

/// Encodes a snapshot with its data, as `InstallSnapshot` carries it.
pub fn encode_snapshot(snapshot: &Snapshot) -> peer::Snapshot {
    peer::Snapshot {
        slot: snapshot.slot,
        data: snapshot.data.clone(),
        membership: Some(encode_membership(&snapshot.membership)),
    }
}

/// Decodes a snapshot with its data; its configuration is required.
pub fn decode_snapshot(snapshot: peer::Snapshot) -> Result<Snapshot, CodecError> {
    let membership = snapshot.membership.ok_or(CodecError::Missing("Snapshot.membership"))?;
    Ok(Snapshot {
        slot: snapshot.slot,
        data: snapshot.data,
        membership: decode_membership(membership)?,
    })
}

/// Encodes one protocol message with its sender and destination.
pub fn encode_message(from: ReplicaId, to: ReplicaId, message: &Message) -> peer::PaxosMessage {
    use peer::paxos_message::Body;
    let body = match message {
        Message::Prepare { ballot, from_slot } => Body::Prepare(peer::Prepare {
            ballot: Some(encode_ballot(*ballot)),
            from_slot: *from_slot,
        }),
        Message::Promise {
            ballot,
            chosen_through,
            entries,
            part,
            parts,
        } => Body::Promise(peer::Promise {
            ballot: Some(encode_ballot(*ballot)),
            chosen_through: *chosen_through,
            entries: encode_entries(entries),
            part: *part,
            parts: *parts,
        }),
        Message::Accept {
            ballot,
            entries,
            chosen_through,
        } => Body::Accept(peer::Accept {
            ballot: Some(encode_ballot(*ballot)),
            entries: encode_entries(entries),
            chosen_through: *chosen_through,
        }),
        Message::Accepted { ballot, slots } => Body::Accepted(peer::Accepted {
            ballot: Some(encode_ballot(*ballot)),
            slots: slots.clone(),
        }),
        Message::Heartbeat {
            ballot,
            chosen_through,
            sent_tick,
        } => Body::Heartbeat(peer::Heartbeat {
            ballot: Some(encode_ballot(*ballot)),
            chosen_through: *chosen_through,
            sent_tick: *sent_tick,
        }),
        Message::HeartbeatAck {
            ballot,
            sent_tick,
            chosen_through,
        } => Body::HeartbeatAck(peer::HeartbeatAck {
            ballot: Some(encode_ballot(*ballot)),
            sent_tick: *sent_tick,
            chosen_through: *chosen_through,
        }),
        Message::Nack {
            ballot,
            promised,
            reason,
        } => Body::Nack(peer::Nack {
            ballot: Some(encode_ballot(*ballot)),
            promised: Some(encode_ballot(*promised)),
            reason: Some(encode_nack_reason(*reason)),
        }),
        Message::CatchUpRequest { from_slot } => Body::CatchUpRequest(peer::CatchUpRequest {
            from_slot: *from_slot,
        }),
        Message::CatchUp { entries } => Body::CatchUp(peer::CatchUp {
            entries: encode_entries(entries),
        }),
        Message::InstallSnapshot { snapshot } => Body::InstallSnapshot(peer::InstallSnapshot {
            snapshot: Some(encode_snapshot(snapshot)),
        }),
        Message::PreVote { ballot } => Body::PreVote(peer::PreVote {
            ballot: Some(encode_ballot(*ballot)),
        }),
        Message::PreVoteReply { ballot, granted, promised } => Body::PreVoteReply(peer::PreVoteReply {
            ballot: Some(encode_ballot(*ballot)),
            granted: *granted,
            promised: Some(encode_ballot(*promised)),
        }),
    };
    peer::PaxosMessage {
        from,
        to,
        body: Some(body),
        // The transport stamps the sender's cell and incarnation.
        ..Default::default()
    }
}

fn encode_nack_reason(reason: NackReason) -> peer::nack::Reason {
    match reason {
        NackReason::HigherBallot => peer::nack::Reason::HigherBallot(peer::nack::HigherBallot {}),
        NackReason::LeaseHeld => peer::nack::Reason::LeaseHeld(peer::nack::LeaseHeld {}),
        NackReason::Behind { chosen_through } => {
            peer::nack::Reason::Behind(peer::nack::Behind { chosen_through })
        }
    }
}

fn decode_nack_reason(reason: Option<peer::nack::Reason>) -> Result<NackReason, CodecError> {
    Ok(match reason.ok_or(CodecError::Missing("Nack.reason"))? {
        peer::nack::Reason::HigherBallot(peer::nack::HigherBallot {}) => NackReason::HigherBallot,
        peer::nack::Reason::LeaseHeld(peer::nack::LeaseHeld {}) => NackReason::LeaseHeld,
        peer::nack::Reason::Behind(peer::nack::Behind { chosen_through }) => {
            NackReason::Behind { chosen_through }
        }
    })
}

/// Decodes one protocol message received from a peer. Every required
/// submessage and `oneof` must be present; what is missing is named in the
/// error so that a peer speaking a newer or broken protocol is easy to spot.
pub fn decode_message(message: peer::PaxosMessage) -> Result<AddressedMessage, CodecError> {
    use peer::paxos_message::Body;
    let body = message
        .body
        .ok_or(CodecError::Missing("PaxosMessage.body"))?;
    let decoded = match body {
        Body::Prepare(m) => Message::Prepare {
            ballot: decode_ballot(m.ballot, "Prepare.ballot")?,
            from_slot: m.from_slot,
        },
        Body::Promise(m) => {
            if m.part >= m.parts {
                return Err(CodecError::PromisePart {
                    part: m.part,
                    parts: m.parts,
                });
            }
            Message::Promise {
                ballot: decode_ballot(m.ballot, "Promise.ballot")?,
                chosen_through: m.chosen_through,
                entries: decode_entries(m.entries)?,
                part: m.part,
                parts: m.parts,
            }
        }
        Body::Accept(m) => Message::Accept {
            ballot: decode_ballot(m.ballot, "Accept.ballot")?,
            entries: decode_entries(m.entries)?,
            chosen_through: m.chosen_through,
        },
        Body::Accepted(m) => Message::Accepted {
            ballot: decode_ballot(m.ballot, "Accepted.ballot")?,
            slots: m.slots,
        },
        Body::Heartbeat(m) => Message::Heartbeat {
            ballot: decode_ballot(m.ballot, "Heartbeat.ballot")?,
            chosen_through: m.chosen_through,
            sent_tick: m.sent_tick,
        },
        Body::HeartbeatAck(m) => Message::HeartbeatAck {
            ballot: decode_ballot(m.ballot, "HeartbeatAck.ballot")?,
            sent_tick: m.sent_tick,
            chosen_through: m.chosen_through,
        },
        Body::Nack(m) => Message::Nack {
            ballot: decode_ballot(m.ballot, "Nack.ballot")?,
            promised: decode_ballot(m.promised, "Nack.promised")?,
            reason: decode_nack_reason(m.reason)?,
        },
        Body::CatchUpRequest(m) => Message::CatchUpRequest {
            from_slot: m.from_slot,
        },
        Body::CatchUp(m) => Message::CatchUp {
            entries: decode_entries(m.entries)?,
        },
        Body::InstallSnapshot(m) => Message::InstallSnapshot {
            snapshot: decode_snapshot(
                m.snapshot
                    .ok_or(CodecError::Missing("InstallSnapshot.snapshot"))?,
            )?,
        },
        Body::PreVote(m) => Message::PreVote {
            ballot: decode_ballot(m.ballot, "PreVote.ballot")?,
        },
        Body::PreVoteReply(m) => Message::PreVoteReply {
            ballot: decode_ballot(m.ballot, "PreVoteReply.ballot")?,
            granted: m.granted,
            promised: m.promised.map_or(Ballot::ZERO, |b| Ballot::new(b.round, b.replica)),
        },
    };
    Ok(AddressedMessage {
        from: message.from,
        to: message.to,
        message: decoded,
    })
}

/// Decodes protobuf bytes into `T`, naming `what` in the error; used for
/// records read from disk.
pub fn decode_bytes<T: prost::Message + Default>(
    bytes: &[u8],
    what: &'static str,
) -> Result<T, CodecError> {
    T::decode(bytes).map_err(|source| CodecError::Decode { what, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use gaios_paxos::types::Slot;
    use prost::Message as _;

    fn entry(slot: Slot, round: u64, value: Value) -> Entry {
        Entry {
            slot,
            ballot: Ballot::new(round, 3),
            value,
        }
    }

    fn sample_membership() -> Membership {
        let mut membership = Membership::genesis(&[1, 2, 3]);
        membership.members.push(Member {
            id: 9,
            voter: false,
            incarnation: 77,
            peer_address: "10.0.0.9:7000".to_string(),
            client_address: "10.0.0.9:7100".to_string(),
        });
        membership.highest_id = 9;
        membership
    }

    fn sample_entries() -> Vec<Entry> {
        vec![
            entry(1, 2, Value::Noop),
            entry(7, 2, Value::Reconfigure(sample_membership())),
            entry(2, 2, Value::Batch(vec![])),
            entry(
                7,
                9,
                Value::Batch(vec![
                    Bytes::from_static(b"a"),
                    Bytes::new(),
                    Bytes::from(vec![0xff; 300]),
                ]),
            ),
            entry(Slot::MAX, u64::MAX, Value::Noop),
        ]
    }

    fn every_message() -> Vec<Message> {
        let ballot = Ballot::new(5, 2);
        vec![
            Message::Prepare {
                ballot,
                from_slot: 11,
            },
            Message::Promise {
                ballot,
                chosen_through: 10,
                entries: sample_entries(),
                part: 2,
                parts: 3,
            },
            Message::Promise {
                ballot: Ballot::ZERO,
                chosen_through: 0,
                entries: vec![],
                part: 0,
                parts: 1,
            },
            Message::Accept {
                ballot,
                entries: sample_entries(),
                chosen_through: 4,
            },
            Message::Accepted {
                ballot,
                slots: vec![1, 2, 3, u64::MAX],
            },
            Message::Heartbeat {
                ballot,
                chosen_through: 12,
                sent_tick: 99,
            },
            Message::HeartbeatAck {
                ballot,
                sent_tick: 99,
                chosen_through: 31,
            },
            Message::Nack {
                ballot,
                promised: Ballot::new(6, 1),
                reason: NackReason::HigherBallot,
            },
            Message::Nack {
                ballot,
                promised: Ballot::new(6, 1),
                reason: NackReason::LeaseHeld,
            },
            Message::Nack {
                ballot,
                promised: ballot,
                reason: NackReason::Behind { chosen_through: 42 },
            },
            Message::CatchUpRequest { from_slot: 13 },
            Message::CatchUp {
                entries: sample_entries(),
            },
            Message::InstallSnapshot {
                snapshot: Snapshot {
                    slot: 40,
                    data: Bytes::from_static(b"state"),
                    membership: sample_membership(),
                },
            },
            Message::PreVote { ballot },
            Message::PreVoteReply { ballot, granted: true, promised: Ballot::new(4, 2) },
        ]
    }

    /// The peer-message decoder and the Paxos core on arbitrary bytes:
    /// random buffers, and real encodings of every message with bytes
    /// flipped, truncated or extended. Whatever decodes is stepped into a
    /// follower and a master; nothing may panic (a panic names the case).
    /// 5,000 cases in the test command; `GAIOS_FUZZ_CASES=<n>` for a soak.
    #[test]
    fn arbitrary_bytes_never_panic_the_decoder_or_the_core() {
        use gaios_paxos::rng::Rng;
        use gaios_paxos::{Config, Durable, Replica};
        let cases: u64 = std::env::var("GAIOS_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(5_000);
        let members = vec![1, 2, 3, 4, 5];
        let encodings: Vec<Vec<u8>> =
            every_message().iter().map(|m| encode_message(2, 1, m).encode_to_vec()).collect();
        let mut follower = Replica::new(Config::new(1, members.clone()), Durable::default()).expect("valid");
        let mut master = Replica::new(Config::new(1, members), Durable::default()).expect("valid");
        master.campaign();
        for from in [2, 3] {
            while master.has_ready() {
                let ready = master.ready();
                master.advance(ready);
            }
            let ballot = master.hard_state().promised;
            master.step(from, Message::Promise { ballot, chosen_through: 0, entries: vec![], part: 0, parts: 1 });
        }
        let mut decoded_count = 0u64;
        for case in 0..cases {
            let mut rng = Rng::new(case);
            let mut bytes = if rng.chance(1, 4) {
                (0..rng.range(0, 200)).map(|_| rng.range(0, 255) as u8).collect::<Vec<u8>>()
            } else {
                encodings[rng.range(0, encodings.len() as u64 - 1) as usize].clone()
            };
            for _ in 0..rng.range(0, 2) {
                match rng.range(0, 5) {
                    0 if !bytes.is_empty() => {
                        let at = rng.range(0, bytes.len() as u64 - 1) as usize;
                        bytes[at] = rng.range(0, 255) as u8;
                    }
                    1 if !bytes.is_empty() => bytes.truncate(rng.range(0, bytes.len() as u64 - 1) as usize),
                    2 if !bytes.is_empty() => {
                        // A varint field's value replaced by an extreme one.
                        let at = rng.range(0, bytes.len() as u64 - 1) as usize;
                        bytes.splice(at..at, [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
                    }
                    3 => bytes.extend((0..rng.range(1, 12)).map(|_| [0xff, 0x80, 0x01, 0x00][rng.range(0, 3) as usize])),
                    _ => {}
                }
            }
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let Ok(wire) = peer::PaxosMessage::decode(bytes.as_slice()) else { return false };
                let Ok(decoded) = decode_message(wire) else { return false };
                for replica in [&mut follower, &mut master] {
                    replica.step(decoded.from, decoded.message.clone());
                    replica.tick();
                    while replica.has_ready() {
                        let ready = replica.ready();
                        replica.advance(ready);
                    }
                }
                true
            }));
            match outcome {
                Ok(decoded) => decoded_count += u64::from(decoded),
                Err(_) => panic!("case {case} panicked on bytes {bytes:02x?}"),
            }
        }
        assert!(decoded_count > cases / 10, "only {decoded_count} of {cases} cases decoded; the mutations are too blunt");
    }

    /// Every message the core can make under the server's configuration,
    /// with entries of the largest size a batch makes and numbers at their
    /// bounds, encodes within the transport's message limit; and the core's
    /// size estimate of an entry is never below its real encoding.
    #[test]
    fn core_messages_fit_the_transport() {
        use gaios_paxos::types::{ROUND_MAX, SLOT_MAX};
        let config = {
            let mut config = gaios_paxos::Config::new(1, vec![1, 2, 3, 4, 5]);
            config.message_bytes_max = crate::replica::transport::CORE_MESSAGE_BYTES_MAX;
            config
        };
        assert_eq!(config.validate(), Ok(()));
        let ballot = Ballot::new(ROUND_MAX, 5);
        // The largest entries a batch makes: as many commands as fit, or one
        // command alone at its limit.
        let many = Value::Batch(vec![Bytes::from(vec![1u8; config.batch_bytes_max / config.batch_commands_max]); config.batch_commands_max]);
        let one = Value::Batch(vec![Bytes::from(vec![2u8; config.command_bytes_max])]);
        for value in [many, one] {
            let entry = Entry { slot: SLOT_MAX, ballot, value };
            let real = encode_entry(&entry).encoded_len();
            assert!(real <= entry.encoded_bytes(), "estimate {} below the real {real}", entry.encoded_bytes());
            // As many as the core puts in one message.
            let per_message = (config.message_bytes_max / entry.encoded_bytes()).clamp(1, config.entries_per_message_max);
            let entries = vec![entry; per_message];
            for message in [
                Message::Accept { ballot, entries: entries.clone(), chosen_through: SLOT_MAX },
                Message::Promise { ballot, chosen_through: SLOT_MAX, entries: entries.clone(), part: u32::MAX - 1, parts: u32::MAX },
                Message::CatchUp { entries },
            ] {
                let size = encode_message(u64::MAX, u64::MAX, &message).encoded_len();
                assert!(size <= crate::replica::transport::BATCH_BYTES_MAX.max(config.message_bytes_max) + 4096, "{} is {size} bytes", message.kind());
                assert!(size < crate::replica::transport::MESSAGE_BYTES_MAX);
            }
        }
    }

    /// Every message survives encoding, serialising to bytes, parsing and
    /// decoding unchanged, with its addresses.
    #[test]
    fn every_message_round_trips_through_bytes() -> Result<(), Box<dyn std::error::Error>> {
        for message in every_message() {
            let bytes = encode_message(4, 5, &message).encode_to_vec();
            let decoded = decode_message(peer::PaxosMessage::decode(bytes.as_slice())?)?;
            assert_eq!(
                decoded,
                AddressedMessage {
                    from: 4,
                    to: 5,
                    message
                }
            );
        }
        Ok(())
    }

    /// The on-disk records survive a round trip through bytes.
    #[test]
    fn records_round_trip_through_bytes() -> Result<(), CodecError> {
        for original in sample_entries() {
            let bytes = encode_entry(&original).encode_to_vec();
            let decoded = decode_entry(decode_bytes(&bytes, "Entry")?)?;
            assert_eq!(decoded, original);
        }
        for original in [
            HardState::default(),
            HardState {
                promised: Ballot::new(3, 4),
                chosen_through: 77,
            },
        ] {
            let bytes = encode_hard_state(&original).encode_to_vec();
            let decoded = decode_hard_state(decode_bytes(&bytes, "HardState")?)?;
            assert_eq!(decoded, original);
        }
        let snapshot = Snapshot {
            slot: 9,
            data: Bytes::from_static(b"\x00\x01"),
            membership: sample_membership(),
        };
        let bytes = encode_snapshot(&snapshot).encode_to_vec();
        assert_eq!(decode_snapshot(decode_bytes(&bytes, "Snapshot")?)?, snapshot);
        // A configuration that breaks a bound is refused, with the rule.
        let mut unsorted = encode_membership(&sample_membership());
        unsorted.members.swap(0, 1);
        assert!(matches!(decode_membership(unsorted), Err(CodecError::Membership(_))));
        let voterless = peer::Membership { members: vec![peer::Member { id: 4, ..Default::default() }], highest_id: 4 };
        assert!(matches!(decode_membership(voterless), Err(CodecError::Membership(_))));
        Ok(())
    }

    /// A message with no body, or a body that lacks a required submessage or
    /// `oneof`, is refused with the name of what is missing.
    #[test]
    fn malformed_messages_are_refused() {
        let no_body = peer::PaxosMessage {
            from: 1,
            to: 2,
            body: None,
            ..Default::default()
        };
        assert_eq!(
            decode_message(no_body),
            Err(CodecError::Missing("PaxosMessage.body"))
        );

        let prepare_without_ballot = peer::PaxosMessage {
            from: 1,
            to: 2,
            body: Some(peer::paxos_message::Body::Prepare(peer::Prepare {
                ballot: None,
                from_slot: 3,
            })),
            ..Default::default()
        };
        assert_eq!(
            decode_message(prepare_without_ballot),
            Err(CodecError::Missing("Prepare.ballot"))
        );

        let mut nack = encode_message(
            1,
            2,
            &Message::Nack {
                ballot: Ballot::new(1, 1),
                promised: Ballot::new(2, 2),
                reason: NackReason::LeaseHeld,
            },
        );
        if let Some(peer::paxos_message::Body::Nack(body)) = nack.body.as_mut() {
            body.reason = None;
        }
        assert_eq!(
            decode_message(nack),
            Err(CodecError::Missing("Nack.reason"))
        );

        let mut accept = encode_message(
            1,
            2,
            &Message::Accept {
                ballot: Ballot::new(1, 1),
                entries: sample_entries(),
                chosen_through: 0,
            },
        );
        if let Some(peer::paxos_message::Body::Accept(body)) = accept.body.as_mut() {
            body.entries[1].value = Some(peer::Value { kind: None });
        }
        assert_eq!(
            decode_message(accept),
            Err(CodecError::Missing("Value.kind"))
        );

        for (part, parts) in [(0, 0), (3, 3), (u32::MAX, 1)] {
            let promise = peer::PaxosMessage {
                from: 1,
                to: 2,
                body: Some(peer::paxos_message::Body::Promise(peer::Promise {
                    ballot: Some(encode_ballot(Ballot::new(1, 1))),
                    chosen_through: 0,
                    entries: vec![],
                    part,
                    parts,
                })),
                ..Default::default()
            };
            assert_eq!(
                decode_message(promise),
                Err(CodecError::PromisePart { part, parts })
            );
        }

        let install = peer::PaxosMessage {
            from: 1,
            to: 2,
            body: Some(peer::paxos_message::Body::InstallSnapshot(
                peer::InstallSnapshot { snapshot: None },
            )),
            ..Default::default()
        };
        assert_eq!(
            decode_message(install),
            Err(CodecError::Missing("InstallSnapshot.snapshot"))
        );
    }

    /// Records with missing fields, slot 0 or bytes that are not protobuf are
    /// refused.
    #[test]
    fn malformed_records_are_refused() {
        let mut no_ballot = encode_entry(&entry(3, 1, Value::Noop));
        no_ballot.ballot = None;
        assert_eq!(
            decode_entry(no_ballot),
            Err(CodecError::Missing("Entry.ballot"))
        );
        let mut no_value = encode_entry(&entry(3, 1, Value::Noop));
        no_value.value = None;
        assert_eq!(
            decode_entry(no_value),
            Err(CodecError::Missing("Entry.value"))
        );
        let zero = encode_entry(&entry(3, 1, Value::Noop));
        assert_eq!(
            decode_entry(peer::Entry { slot: 0, ..zero }),
            Err(CodecError::ZeroSlot)
        );
        assert_eq!(
            decode_hard_state(peer::HardState {
                promised: None,
                chosen_through: 1
            }),
            Err(CodecError::Missing("HardState.promised"))
        );
        let garbage = decode_bytes::<peer::Entry>(&[0xff, 0xff, 0xff], "Entry");
        assert!(matches!(
            garbage,
            Err(CodecError::Decode { what: "Entry", .. })
        ));
    }
}
