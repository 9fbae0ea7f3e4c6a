//! The Multi-Paxos core of Gaios, with no IO.
//!
//! A [`Replica`] is a deterministic state machine: the same durable state and
//! the same inputs give the same outputs. It never touches a socket, a clock,
//! a thread, a disk or a random source it does not own. The driver (the
//! server, or the simulator in [`sim`]) owns all of that.
//!
//! # The driver contract
//!
//! Inputs: [`Replica::tick`] at a fixed rate, [`Replica::step`] for every
//! message that arrives, [`Replica::propose`] for commands (on the master),
//! [`Replica::compact`] when the application has snapshotted. Ticks missed
//! while the driver could not listen (a blocked write, a paused process) are
//! all delivered, before any message that waited, after
//! [`Replica::stalled`] says how many of them passed so: the election and
//! quorum-check timers do not count those, the leases do.
//!
//! Whenever [`Replica::has_ready`] is true, take a [`Ready`] with
//! [`Replica::ready`] and, in this order:
//!
//! 1. send [`Ready::messages`] (they may go at once);
//! 2. make [`Ready::hard_state`], [`Ready::entries`], [`Ready::snapshot`] and
//!    [`Ready::compact_through`] durable in **one synced write**;
//! 3. only then send [`Ready::persisted_messages`] (promises, accepted
//!    notices, lease acknowledgements rest on that write);
//! 4. if [`Ready::install_snapshot`], load [`Ready::snapshot`] into the
//!    application; then apply [`Ready::committed`] in slot order;
//! 5. call [`Replica::advance`] with the `Ready` (which also tells the replica
//!    a snapshot it handed out is installed), before taking the next one.
//!
//! A replica that restarts is rebuilt with [`Replica::new`] from what step 2
//! made durable and the application's applied slot ([`Durable`]).
//!
//! # The protocol
//!
//! Multi-Paxos with a stable master. A replica that hears nothing from a
//! master for an election timeout runs phase 1 once, with ballot
//! `(round, replica_id)`, for every slot from its first unchosen one; it
//! re-proposes the highest-ballot value reported for each slot and fills gaps
//! with no-ops. From then on it runs only phase 2, pipelined (up to
//! `slots_in_flight_max` slots in flight) and batched (many commands per
//! slot). Commit notifications ride on accepts and heartbeats; a lagging
//! replica asks for chosen entries or a snapshot.
//!
//! **Master lease.** An acceptor that acknowledges a master's heartbeat
//! promises no other replica's ballot for `lease_ticks`; a restarted acceptor
//! promises nothing for `lease_ticks`. The master counts its lease from the
//! send tick of the newest heartbeat a majority acknowledged, for
//! `lease_ticks - lease_drift_ticks`, and [`Replica::lease_until`] tells the
//! server until when it may answer reads locally.

pub mod config;
pub mod membership;
pub mod message;
pub mod ready;
pub mod replica;
pub mod rng;
pub mod sim;
pub mod types;

pub use config::{Config, ConfigError};
pub use membership::{ChangeError, MembershipChange};
pub use message::{Message, NackReason};
pub use ready::{Envelope, Ready, RoleChange};
pub use replica::{CompactError, ProposeError, Replica, StartError, Status};
pub use types::{Ballot, Durable, Entry, HardState, Member, Membership, ReplicaId, Slot, Snapshot, Value};
