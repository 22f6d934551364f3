//! MCP both ways. [`client`]: the tools of MCP servers become tools of cells
//! (`[[mcp_server]]` in the tools file). [`server`]: `code-mode mcp` serves code mode itself
//! (`exec` and `wait`) to any MCP client. Both speak MCP through rmcp, the official SDK.

pub mod client;
mod line_cap;
pub mod server;
