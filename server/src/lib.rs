//! A Gaios replica: the driver around the sans-IO Paxos core and the
//! replicated state machine (`gaios-state`), and the IO it does on their
//! behalf.
//!
//! - [`codec`] turns the core's types into the protobuf records and messages
//!   of `gaios.replica.v1` and back (rejecting malformed input with typed errors);
//! - [`storage`] keeps the acceptor's promises, log and snapshot in one
//!   RocksDB per replica and makes each `Ready` durable in one synced write;
//! - [`transport`] carries protocol messages between replicas over the
//!   `Replica.Exchange` gRPC stream, with bounded queues everywhere;
//! - [`driver`] owns the core, the storage and the state machine and runs
//!   the driver contract, the master's duties and snapshots, stamping
//!   commands with the lock-delay clock of [`gaios_state::master::lock_clock`];
//! - [`shared`] is what the driver shares with the gRPC handlers;
//! - [`cell_service`] answers clients' calls (the `Cell` service), with
//!   [`errors`] deciding every status code;
//! - [`metrics`] and [`operations`] serve Prometheus metrics, gRPC health and
//!   reflection;
//! - [`config`] turns the command-line flags into a checked configuration.
//!
//! The `gaios-server` binary (`src/main.rs`) wires these together.

pub mod cell_service;
pub mod codec;
pub mod config;
pub mod driver;
pub mod errors;
pub mod metrics;
pub mod operations;
pub mod shared;
pub mod storage;
pub mod transport;
