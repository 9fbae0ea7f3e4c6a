//! The Paxos replica: the driver around the sans-IO core
//! (`gaios-paxos`), its durable storage and its peer transport.
//!
//! - [`driver`] owns the core, the storage and the state machine and runs
//!   the driver contract, the master's duties and snapshots, stamping
//!   commands with the lock-delay clock of `gaios_state::master::lock_clock`;
//! - [`status`] is the replica's published status and the read gate's rule;
//! - [`storage`] keeps the acceptor's promises, log and snapshot in one
//!   RocksDB per replica and makes each `Ready` durable in one synced write;
//! - [`transport`] carries protocol messages between replicas over the
//!   `Replica.Exchange` gRPC stream, with bounded queues everywhere;
//! - [`codec`] turns the core's types into the protobuf records and messages
//!   of `gaios.replica.v1` and back (rejecting malformed input with typed
//!   errors).

pub mod codec;
pub mod snapshotter;
pub mod driver;
pub mod status;
pub mod storage;
pub mod transport;
pub mod turn_cost;
