//! Takes the protocol's stdio as the host does at startup, then does what a library, a
//! child process or a panic could do: print to stdout, spawn a child that inherits it,
//! and panic. Only the protocol's own bytes (`PROTOCOL`) may reach stdout; the test
//! `stdout_guard` of the `codex` test binary runs it.

use codex_code_mode_host::stdio::take_protocol_stdio;
use std::io::Write;

#[expect(
    clippy::print_stdout,
    reason = "printing to stdout is the point: it must not arrive"
)]
fn main() {
    let protocol = take_protocol_stdio().expect("take stdio");
    println!("a stray println");
    let _ = std::process::Command::new("sh")
        .args(["-c", "echo a child writes to its stdout"])
        .status();
    let _ = std::thread::spawn(|| panic!("a panic in a worker")).join();
    let mut output = std::fs::File::from(protocol.output);
    output
        .write_all(b"PROTOCOL")
        .expect("write the protocol bytes");
}
