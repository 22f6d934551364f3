//! Arbitrary bytes as a server message body. Run: `cargo fuzz run server_message`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    code_mode_protocol::wire::fuzz::exercise_server_message(data);
});
