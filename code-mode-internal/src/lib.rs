//! **Internal to code-mode; not for direct use.** What the workspace's crates share that is
//! not the API an agent core programs against (that is `code-mode-protocol`, whose public
//! surface `.ci/run` checks against `code-mode-protocol/API.txt`):
//!
//! - [`sync`]: the one poison-ignoring mutex helper;
//! - [`hops`]: the benchmark's hop marks ([`hop!`]);
//! - [`delivery`]: how an answer travels to the caller waiting for it, for the cell actor
//!   and the host's connection alike;
//! - [`calls`]: a session's methods as data, the one dispatcher every front end drives
//!   sessions through;
//! - [`futures`]: the future helpers both sides of the wire use.
//!
//! It changes whenever the crates that use it do, with no promise to anyone else.

#![forbid(unsafe_code)]

pub mod calls;
pub mod delivery;
pub mod futures;
pub mod hops;
pub mod sync;

pub use calls::{CallHooks, CallTarget, FromReply, SessionCall, SessionReply};
