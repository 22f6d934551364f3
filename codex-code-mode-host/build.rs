//! Compiles `proto/code_mode.proto` with protox (pure Rust) into the tonic client and
//! server and the prost messages; nothing is downloaded and no system `protoc` is used.
//! Links the executable (which is also the runtime process) with packed relative
//! relocations, and with the functions a cold start runs placed together, where the
//! toolchain can (`code-mode-bin/link.rs`).

include!("../code-mode-bin/link.rs");

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/code_mode.proto");
    pack_relative_relocations();
    order_startup_functions(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../code-mode-bin/startup-order.txt"
    )));
    let descriptors = protox::compile(["code_mode.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
