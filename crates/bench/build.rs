//! Compiles `proto/inference.proto` with protox (pure Rust: no system `protoc`), client side only.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto");
    let proto = format!("{proto_dir}/inference.proto");
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto.as_str()], [proto_dir])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .bytes(".")
        .compile_fds(descriptors)?;
    Ok(())
}
