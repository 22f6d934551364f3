//! Tests of the wire crate: round trips of every message, framing limits, garbage,
//! the handshake and pinned encodings. One binary.

mod fuzz_harness;
mod samples;
mod wire;
