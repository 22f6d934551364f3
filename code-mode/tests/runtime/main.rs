//! Integration tests of the cell runtime: every helper, error string and lifecycle rule of
//! contract sections 2, 3.5, 3.6 and the JS side of 3.7 (`docs/CONTRACT.md`). One binary
//! (V8 links slowly).

mod determinism;
mod harness;
mod lifecycle;
mod limits;
mod newer;
mod output;
mod reuse;
mod snapshot;
mod state;
mod tools;
mod typescript;
