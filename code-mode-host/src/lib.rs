//! The providers an agent core uses to run cells out of process: [`IpcProvider`] spawns
//! and supervises one `code-mode-bin` process, [`RemoteProvider`] spreads sessions over
//! runtimes on other machines (`code-mode-bin --listen`, TCP with mutual TLS). Both hand
//! out [`IpcSession`]s, which implement the same [`CodeModeSession`] trait as the
//! in-process session.
//!
//! This crate never links V8: a V8 crash, an out-of-memory or a hostile script stays in
//! the runtime process. Modules: `binary` finds the runtime, `process` spawns and
//! supervises it, `connection` speaks the wire protocol and validates every message,
//! `provider` turns that into sessions that survive the runtime's death, `remote` is the
//! pool of network runtimes, `unclaimed` keeps answers that crossed a dropped call.

pub mod binary;
mod connection;
mod error;
mod process;
mod provider;
mod remote;
mod unclaimed;

pub use binary::{BINARY_ENV, BINARY_NAME, BinaryNotFound, find_binary};
pub use code_mode_protocol as protocol;
pub use code_mode_protocol::CodeModeSession;
pub use connection::{HandshakeError, Liveness};
pub use process::SpawnError;
pub use provider::{HostConfig, HostError, IpcProvider, IpcSession};
pub use remote::{
    ClientTls, FIRST_RECONNECT_DELAY, MAX_RECONNECT_DELAY, RemoteConfig, RemoteError,
    RemoteProvider, RuntimeStatus,
};
