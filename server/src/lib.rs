//! A Gaios replica: the driver around the sans-IO Paxos core and the IO it
//! does on the core's behalf.
//!
//! For now it holds the two pieces every replica needs before it can talk to
//! anyone: [`codec`], which turns the core's types into the protobuf records
//! and messages of `gaios.v1` and back (rejecting malformed input with typed
//! errors), and [`storage`], which keeps the acceptor's promises, log and
//! snapshot in one RocksDB per replica and makes each `Ready` durable in one
//! synced write. The transport, the namespace state machine and the client
//! services build on these.

pub mod codec;
pub mod storage;
