//! Compiles `proto/code_mode.proto` with protox (pure Rust) into the tonic client and
//! server and the prost messages; nothing is downloaded and no system `protoc` is used.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/code_mode.proto");
    let descriptors = protox::compile(["code_mode.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
