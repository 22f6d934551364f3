//! Arbitrary bytes as a client message body. Run: `cargo fuzz run client_message`.
#![no_main]

#[path = "../../code-mode-wire/tests/wire/fuzz_harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    harness::exercise_client_message(data);
});
