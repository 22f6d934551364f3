//! Tests of the protocol crate: the wire format and the model-facing surface. One binary.

mod fuzz_harness;
mod golden;
mod samples;
mod surface;
mod wire;
