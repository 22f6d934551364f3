//! MCP both ways. [`client`]: the tools of MCP servers become tools of cells
//! (`[[mcp_server]]` in the tools file). [`server`]: `code-mode mcp` serves code mode itself
//! (`exec` and `wait`) to any MCP client, over stdio or, through [`http`], streamable HTTP
//! with a bearer token ([`auth`]), TLS and sessions that expire ([`expiry`]). Both speak
//! MCP through rmcp, the official SDK.

mod auth;
pub mod client;
mod expiry;
pub mod http;
mod line_cap;
pub mod server;
