//! A Gaios replica: the driver around the sans-IO Paxos core and the IO it
//! does on the core's behalf.
//!
//! - [`codec`] turns the core's types into the protobuf records and messages
//!   of `gaios.v1` and back (rejecting malformed input with typed errors);
//! - [`storage`] keeps the acceptor's promises, log and snapshot in one
//!   RocksDB per replica and makes each `Ready` durable in one synced write;
//! - [`transport`] carries protocol messages between replicas over the
//!   `Replica.Exchange` gRPC stream, with bounded queues everywhere;
//! - [`driver`] owns the core and the storage and runs the driver contract;
//! - [`cell_service`] answers clients' `FindMaster` and `Status` calls;
//! - [`config`] turns the command-line flags into a checked configuration.
//!
//! The `gaios-server` binary (`src/main.rs`) wires these together. The
//! namespace state machine builds on them next.

pub mod cell_service;
pub mod codec;
pub mod config;
pub mod driver;
pub mod errors;
pub mod locks;
pub mod metrics;
pub mod namespace;
pub mod operations;
pub mod shared;
pub mod state;
pub mod storage;
pub mod transport;
