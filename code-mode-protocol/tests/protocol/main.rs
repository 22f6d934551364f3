//! Tests of the protocol crate: the wire format and the model-facing surface. One binary.

mod golden;
mod samples;
mod surface;
mod wire;
