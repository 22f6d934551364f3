//! The conformance suite instantiated for every provider, in one test binary (V8 links
//! slowly). The IPC provider joins here as a second module.

mod in_process;
