//! Compiles the `.proto` files with a vendored `protoc`, so a fresh machine
//! needs no protobuf compiler of its own.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build finds the compiler through `PROTOC`. `set_var` is `unsafe` in
    // edition 2024 because of other threads; a build script has only this one.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("PROTOC", protoc);
    }
    // Every schema of Gaios; add a new `.proto` here and nowhere else.
    let protos = ["gaios/v1/replica.proto", "gaios/v1/cell.proto", "gaios/v1/state.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    // The encoded descriptors of all of them, for gRPC server reflection
    // (`gaios_proto::FILE_DESCRIPTOR_SET`).
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .bytes(".")
        .file_descriptor_set_path(out_dir.join("gaios_descriptor.bin"))
        .compile_protos(&protos, &["."])?;
    Ok(())
}
