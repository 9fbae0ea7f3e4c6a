//! Compiles the `.proto` files with a vendored `protoc`, so a fresh machine
//! needs no protobuf compiler of its own.
//!
//! Without the `grpc` feature only the messages are generated (no tonic
//! services), so the deterministic state machine (`gaios-state`) depends on
//! the schemas without pulling in tonic.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build finds the compiler through `PROTOC`. `set_var` is `unsafe` in
    // edition 2024 because of other threads; a build script has only this one.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("PROTOC", protoc);
    }
    // Every schema of Gaios, one folder per package; add a new `.proto` here
    // and nowhere else.
    let protos = ["gaios/replica/v1/replica.proto", "gaios/cell/v1/cell.proto", "gaios/state/v1/state.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    // The encoded descriptors of all of them, for gRPC server reflection
    // (`gaios_proto::FILE_DESCRIPTOR_SET`).
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .build_server(grpc)
        .build_client(grpc)
        .bytes(".")
        .file_descriptor_set_path(out_dir.join("gaios_descriptor.bin"))
        .compile_protos(&protos, &["."])?;
    Ok(())
}
