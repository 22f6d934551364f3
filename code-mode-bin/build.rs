//! Links the runtime's executable with packed relative relocations, and with the
//! functions a cold start runs placed together, where the toolchain can (see `link.rs`).

include!("link.rs");

fn main() {
    pack_relative_relocations();
    order_startup_functions(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/startup-order.txt"
    )));
}
