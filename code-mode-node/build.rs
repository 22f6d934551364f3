//! Links the addon as a Node module (napi-rs: Node's symbols are left to the process).

fn main() {
    napi_build::setup();
}
