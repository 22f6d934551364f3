//! The provider an agent core uses to run cells out of process: it will spawn and supervise
//! `code-mode-bin` and speak `code-mode-protocol` with it.
//!
//! This crate never links V8. For now it re-exports the shared vocabulary so that agent
//! cores can already depend on one crate; the IPC provider lands with the host issue.

pub use code_mode_protocol as protocol;
