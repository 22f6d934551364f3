//! Compiles `proto/code_mode.proto` with protox (pure Rust) into the tonic client and
//! server and the prost messages; nothing is downloaded and no system `protoc` is used.
//! Links the executable (which is also the runtime process) with packed relative
//! relocations where the toolchain can (`code-mode-bin/relr.rs`).

include!("../code-mode-bin/relr.rs");

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/code_mode.proto");
    pack_relative_relocations();
    let descriptors = protox::compile(["code_mode.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
