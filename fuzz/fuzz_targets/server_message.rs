//! Arbitrary bytes as a server message body. Run: `cargo fuzz run server_message`.
#![no_main]

#[path = "../../code-mode-wire/tests/wire/fuzz_harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    harness::exercise_server_message(data);
});
