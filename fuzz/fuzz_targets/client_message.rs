//! Arbitrary bytes as a client message body. Run: `cargo fuzz run client_message`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    code_mode_protocol::wire::fuzz::exercise_client_message(data);
});
