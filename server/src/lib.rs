//! A Gaios replica: the driver around the sans-IO Paxos core and the
//! replicated state machine (`gaios-state`), and the IO it does on their
//! behalf. The folders are the roles:
//!
//! - [`replica`]: the Paxos replica. [`replica::driver`] owns the core and the
//!   storage, applies chosen commands, runs the master's duties and takes
//!   snapshots; [`replica::storage`] makes each `Ready` durable in RocksDB;
//!   [`replica::transport`] and [`replica::codec`] carry protocol messages
//!   between replicas; [`replica::status`] is what it tells the rest of the
//!   server, including the one rule for when it may serve from its applied
//!   state.
//! - [`shared`]: the seam between the driver and the handlers: the applied
//!   state (only the driver changes it), the event outbox, the master's
//!   session leases, the proposal queue.
//! - [`service`]: the `Cell` gRPC service clients call. Handlers are thin:
//!   checks live in `gaios_state::validate`, status codes in
//!   [`service::errors`], the read gate in [`service::read_gate`], the lock
//!   wait and its cancellation in [`service::lock_wait`], KeepAlive streams
//!   in [`service::keep_alive`].
//! - [`ops`]: what operators touch: the checked configuration
//!   ([`ops::config`]), Prometheus metrics ([`ops::metrics`]), gRPC health
//!   and reflection ([`ops::health`]).
//!
//! The `gaios-server` binary (`src/main.rs`) wires these together.

pub mod ops;
pub mod replica;
pub mod service;
pub mod shared;
