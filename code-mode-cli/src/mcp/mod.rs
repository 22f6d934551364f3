//! MCP both ways. The tools of MCP servers become tools of cells (`[[mcp_server]]` in the
//! tools file: `code_mode_tools::mcp`). [`server`]: `code-mode mcp` serves code mode itself
//! (`exec` and `wait`) to any MCP client, over stdio or, through [`http`], streamable HTTP
//! with credentials that name principals ([`auth`]: static tokens, OAuth access tokens
//! checked by [`jwt`], the server a protected resource by [`resource`]), TLS and sessions
//! that expire ([`expiry`]), each reachable only by the principal that opened it, and a
//! request's answer kept for a client whose connection broke ([`replay`]), and output no
//! client received kept for the cell's next `wait` ([`observing`]). Both
//! speak MCP through rmcp, the official SDK.

mod asking;
mod auth;
mod blocks;
mod expiry;
pub mod http;
mod jwt;
mod observing;
mod principal;
mod replay;
mod resource;
pub mod server;
mod state;
mod tasks;

use crate::Failure;
use crate::session::Sessions;
use crate::tools::ToolSet;
use code_mode_protocol::SessionOptions;
use http::HttpOptions;
use server::Shared;
use std::path::PathBuf;
use std::sync::Arc;

/// What `code-mode mcp` was asked to do.
pub struct McpOptions {
    pub tools: Option<PathBuf>,
    pub builtins: Vec<String>,
    /// Serve streamable HTTP instead of stdio.
    pub http: Option<HttpOptions>,
    /// Where the cells run.
    pub runtime: crate::session::RuntimeArgs,
    /// Every session's options: limits, maximum yield time, isolate reuse.
    pub session: SessionOptions,
    pub runtime_log: String,
    /// With `--http`: keep the sessions in this directory across restarts, bounded so.
    pub state: Option<(
        code_mode_state::StoreLocation,
        code_mode_state::StoreOptions,
    )>,
}

/// Runs `code-mode mcp` until its client goes away (stdio) or it is stopped (HTTP).
pub async fn serve(options: McpOptions) -> Result<(), Failure> {
    let tools = ToolSet::parse(options.tools.as_deref(), &options.builtins)
        .map_err(|error| Failure::usage(error.to_string()))?;
    let http = match options.http {
        Some(http) => Some(HttpOptions::check(http).await?),
        None => None,
    };
    let state = match options.state {
        None if tools.needs_approvals() => {
            return Err(Failure::usage(
                "a tool of the tools file needs approvals (`approval = \"always\"`): they are kept in a state store, so serve over --http with --state-dir or --state-url",
            ));
        }
        None => None,
        Some(_) if http.is_none() => {
            return Err(Failure::usage(
                "--state-dir keeps the sessions of `mcp --http`; over stdio the session ends with its client",
            ));
        }
        Some(_) if options.runtime.in_process => {
            return Err(Failure::usage(
                "--state-dir keeps each running cell's journal on the host's side of the runtime process; it cannot be used with --in-process",
            ));
        }
        Some((dir, store)) => Some(Arc::new(
            state::McpState::open(&dir, store)
                .map_err(|error| Failure::runtime(error.to_string()))?,
        )),
    };
    let generations = state.as_ref().map_or(0, |state| state.generations_before());
    let sessions = Sessions::after(&options.runtime, &options.runtime_log, generations)
        .map_err(Failure::runtime)?;
    let shared = Shared::start(tools, sessions, options.session, state).await;
    let outcome = match http {
        Some(http) => http::serve(&shared, http).await,
        None => server::serve_stdio(&shared).await,
    };
    shared.stop().await;
    outcome
}
