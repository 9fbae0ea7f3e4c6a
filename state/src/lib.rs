//! The replicated state machine of a Gaios cell, free of IO.
//!
//! Every replica applies the commands the Paxos log chose, in slot order,
//! with [`StateMachine::apply`], and holds the same state:
//!
//! | concept | home |
//! |---|---|
//! | the namespace of files and directories, paths, stats, generations | [`namespace`] |
//! | ACLs: entries, permissions, who a session is when they are checked | [`acl`] |
//! | locks, waiters, lock-delay, lock generations | [`locks`] |
//! | sessions, handles, sequencers, event numbering, the at-most-once window, snapshot and restore | [`machine`] |
//! | events not yet acknowledged (not replicated) | [`outbox`] |
//! | what only the master keeps: session leases, the lock-delay clock's anchor | [`master`] |
//! | every limit | [`limits`] |
//! | the checks of a request, shared by the server's handlers and `apply` | [`validate`] |
//! | the status codes of failures | [`code`] |
//!
//! `apply` reads no clock (time is the master's timestamps in the command),
//! draws no random numbers and iterates no hash map, so equal logs give
//! equal states. The master's own pieces ([`master`]) take the time as an
//! argument. The crate depends on the protobuf messages only (no tokio,
//! tonic or RocksDB): its tests build without RocksDB, and the whole-cell
//! simulator runs it.

pub mod acl;
pub mod code;
pub mod limits;
pub mod locks;
pub mod machine;
pub mod master;
pub mod namespace;
pub mod outbox;
pub mod validate;

pub use code::Code;
pub use machine::{Applied, Outcome, SnapshotError, StateMachine};
pub use outbox::EventOutbox;
