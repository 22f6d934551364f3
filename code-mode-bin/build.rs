//! Links the runtime's executable with packed relative relocations where the toolchain
//! can (see `relr.rs`).

include!("relr.rs");

fn main() {
    pack_relative_relocations();
}
