//! Tests of the model-facing surface: descriptions, declarations, the pragma and the
//! formatter, pinned by golden files. One binary.

mod golden;
mod surface;
