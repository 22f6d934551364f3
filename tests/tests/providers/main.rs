//! The conformance suite instantiated for every provider, in one test binary (V8 links
//! slowly).

mod chaos;
mod in_process;
mod ipc;
mod remote;
