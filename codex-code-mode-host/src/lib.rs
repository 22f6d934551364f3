//! A drop-in `codex-code-mode-host` for Codex 0.169.0: Codex's own host protocol (gRPC
//! `codex.code_mode.v1.CodeModeHost`, or its JSON protocol on stdio) over our runtime.
//!
//! The process Codex talks to runs no V8. It is a supervisor over a `code-mode-bin`
//! runtime process, through the host crate's [`code_mode_host::ProcessProvider`]: a V8
//! crash, an out-of-memory or a `kill -9` of the runtime fails only the cells running
//! there, and each session keeps its stored values and goes on at its next exec.
//!
//! Modules: `front` owns Codex's sessions, cells, executions and invocations over ours;
//! `bound` is Codex's output truncation; `grpc` and `json` translate the two protocols;
//! `serve` listens; `stdio` keeps stdout for protocol bytes only; `install` puts the host
//! where a codex install finds it; `metrics` answers `GetProcessMetrics`; `client` drives
//! any host binary over stdio (tests, bench).

pub mod bound;
pub mod client;
pub mod front;
pub mod grpc;
pub mod install;
pub mod json;

pub mod metrics;
pub mod serve;
pub mod stdio;

/// The generated messages, client and server of `proto/code_mode.proto`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("codex.code_mode.v1");
}
