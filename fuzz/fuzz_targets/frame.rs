//! Arbitrary bytes into the frame codec and both message decoders: they may decode, wait
//! or fail, never panic. Run: `cd fuzz && cargo fuzz run frame -- -runs=1000000`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    code_mode_protocol::wire::fuzz::exercise_decoders(data);
});
