//! Protobuf schemas of Gaios and the code tonic and prost generate from them.

/// The encoded `FileDescriptorSet` of every Gaios schema, which the gRPC
/// server reflection service serves so that tools such as `grpcurl` can
/// describe and call the services without the `.proto` files.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("gaios_descriptor");

/// Version 1 of the Gaios protocols.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("gaios.v1");
}

/// The client-facing cell service (`gaios.cell.v1`): master discovery and
/// status. A package of its own so its names do not clash with `gaios.v1`.
pub mod cell {
    /// Version 1 of the cell service.
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("gaios.cell.v1");
    }
}
