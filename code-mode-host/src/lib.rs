//! The providers an agent core uses to run cells out of process: [`ProcessProvider`] spawns
//! and supervises one `code-mode-bin` process, [`RemoteProvider`] spreads sessions over
//! runtimes on other machines (`code-mode-bin --listen`, TCP with mutual TLS). Both
//! implement [`CodeModeProvider`], as the in-process provider does, and hand out the same
//! [`RuntimeSession`]; [`Runtimes`] is the choice between them made once, at start.
//!
//! This crate never links V8: a V8 crash, an out-of-memory or a hostile script stays in
//! the runtime process. Modules: `binary` finds the runtime, `process` spawns and
//! supervises it (`prelaunch` forks the first one instead, from an executable that carries
//! the runtime), `connection` speaks the wire protocol and validates every message,
//! `provider` supervises the local process, `hosted` is the session over a runtime (local
//! or remote) that survives the runtime's death, `durable` takes a session's state out of a
//! process and puts it back, `kept` is the one owner of sessions kept in a store (every front
//! and `stored`'s provider keep theirs through it), `remote` is the pool of network runtimes, `runtimes` the choice
//! between the two, `error` every error the providers return.

pub mod approvals;
pub mod binary;
mod connection;
pub mod durable;
mod error;
mod faults;
mod hosted;
pub mod kept;
mod prelaunch;
mod process;
mod provider;
mod remote;
mod runtimes;
mod spans;
pub mod stored;

pub use approvals::{ApprovalGate, ApprovalWatch, Approvals, GateSite, WaitingCalls};
pub use binary::{BINARY_ENV, BINARY_NAME, BinaryNotFound, find_binary};
pub use code_mode_protocol as protocol;
pub use code_mode_protocol::durable::{DurableCell, DurableState};
pub use code_mode_protocol::{CodeModeProvider, CodeModeSession};
/// The store of [`StoredProvider`]'s sessions: `code-mode-state`, re-exported.
pub use code_mode_state as state;
pub use connection::{Liveness, Violation};
pub use durable::{DurableSession, RestoredCall};
pub use error::{HandshakeError, SpawnError};
/// Deliberate faults for the chaos test's proof (only with the `fault-injection` feature,
/// only in builds with debug assertions).
#[cfg(all(feature = "fault-injection", debug_assertions))]
pub use faults::{Fault, arm as arm_fault};
pub use hosted::{HostedSession, REBUILD_ATTEMPTS, RuntimeSession};
pub use kept::{HeldSession, KeptSessions};
pub use prelaunch::{ForkError, Forked, Prelaunched, SOCKET_FD, fork_runtime, receive_arguments};
pub use provider::{
    BIRTH_TRIES, CRASH_WINDOW, HostError, MAX_CRASHES, ProcessConfig, ProcessProvider,
    ProcessSession, RuntimeSocket, RuntimeUnavailable,
};
pub use remote::{
    ClientTls, FIRST_RECONNECT_DELAY, MAX_RECONNECT_DELAY, RemoteConfig, RemoteError,
    RemoteProvider, RemoteSession, RuntimeStatus,
};
pub use runtimes::Runtimes;
pub use stored::{Interrupted, SessionStore, StoredError, StoredProvider, StoredSession};
