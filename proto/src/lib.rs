//! Protobuf schemas of Gaios and the code prost (messages) and, with the
//! `grpc` feature, tonic (services) generate from them. One Rust module per
//! protobuf package, and one import alias per package across the code:
//!
//! | package | module | alias |
//! |---|---|---|
//! | `gaios.cell.v1` (the client API) | [`cell::v1`] | `api` |
//! | `gaios.replica.v1` (replica protocol, on-disk records) | [`replica::v1`] | `peer` |
//! | `gaios.state.v1` (replicated commands, outcomes, snapshots) | [`state::v1`] | `wire` |

/// The encoded `FileDescriptorSet` of every Gaios schema, which the gRPC
/// server reflection service serves so that tools such as `grpcurl` can
/// describe and call the services without the `.proto` files.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/gaios_descriptor.bin"));

/// The client-facing cell service (`gaios.cell.v1`): master discovery,
/// status and Chubby's API of sessions, handles, nodes and locks.
pub mod cell {
    /// Version 1 of the cell service.
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/gaios.cell.v1.rs"));
    }
}

/// The replica-to-replica protocol (`gaios.replica.v1`) and the records a
/// replica keeps on disk.
pub mod replica {
    /// Version 1 of the replica protocol.
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/gaios.replica.v1.rs"));
    }
}

/// The replicated state machine's commands, outcomes and snapshot records
/// (`gaios.state.v1`).
pub mod state {
    /// Version 1 of the state machine's records.
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/gaios.state.v1.rs"));
    }
}
