//! The native half of the Node package `code-mode-runtime` (`index.cjs`, `index.mjs`):
//! sessions of the host crate, whose cells run in the sandboxed runtime process the
//! package's platform package ships, driven from Node through N-API (napi-rs).
//!
//! `session` is the session class (every call a promise, settled from the extension's own
//! tokio runtime: the JS event loop never waits on a cell); `opening` opens the sessions
//! that take time (a tools file's, a kept one) off the event loop; `delegate` hands nested
//! calls to the JS dispatcher and takes their answers back (and says which calls wait on a
//! person's approval); `approvals` lists and decides the calls that wait, a state
//! directory's; `options` reads what JS passes; `outcome` shapes answers and errors for
//! JS; `runtime` holds the tokio runtime, the shared providers and approvals;
//! `tracing_setup` exports spans. The API a Node user sees is written in JavaScript over
//! these; the TypeScript declarations of everything here are generated from the `#[napi]`
//! items.

pub mod approvals;
pub mod delegate;
pub mod opening;
pub mod options;
pub mod outcome;
pub mod runtime;
pub mod session;
pub mod tracing_setup;

/// The version of the package's native half.
#[napi_derive::napi]
pub fn native_version() -> String {
    env!("CARGO_PKG_VERSION").to_owned()
}
