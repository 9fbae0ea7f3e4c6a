//! Protobuf schemas of Gaios and the code tonic and prost generate from them.

/// Version 1 of the Gaios protocols.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("gaios.v1");
}
