//! Deferred tools and `tools.tool_search` (contract 8.3), as the model sees them: the
//! tool's name, declaration and definition, its default limit and its argument errors.
//! The BM25 index that answers it lives with the sessions that run it
//! (`code_mode::session::search`).

use crate::model::{ToolDefinition, ToolKind};

/// The name of the nested tool a session adds when some of its tools are deferred.
pub const TOOL_SEARCH_NAME: &str = "tool_search";

/// `tools.tool_search`'s declaration, as the `exec` description and `ALL_TOOLS` show it.
pub const TOOL_SEARCH_DECLARATION: &str = "declare const tools: {\n  tool_search(args: { query: string; limit?: number }): Promise<{ tools: { name: string; description: string }[] }>;\n};";

/// How many results `tool_search` returns when the call gives no `limit`.
pub const DEFAULT_SEARCH_LIMIT: usize = 8;

/// `tool_search` with a query that is empty after trimming.
pub const QUERY_EMPTY: &str = "query must not be empty";

/// `tool_search` with a `limit` of zero or less.
pub const LIMIT_NOT_POSITIVE: &str = "limit must be greater than zero";

/// `tools.tool_search` as a tool definition (not deferred).
pub fn tool_search_definition() -> ToolDefinition {
    ToolDefinition::new(
        TOOL_SEARCH_NAME,
        format!(
            "Searches the tools that are not declared in the exec description, by words of their name, server, description or parameters; returns the best matches with their declarations.\n```ts\n{TOOL_SEARCH_DECLARATION}\n```"
        ),
        ToolKind::Function,
    )
}
