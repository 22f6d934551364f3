//! Arbitrary bytes into the frame codec and both message decoders: they may decode, wait
//! or fail, never panic. Run: `cd fuzz && cargo fuzz run frame -- -runs=1000000`.
#![no_main]

#[path = "../../code-mode-wire/tests/wire/fuzz_harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    harness::exercise_decoders(data);
});
