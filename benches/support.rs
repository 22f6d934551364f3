//! What both benchmark binaries share: the delegate that answers at once and the
//! synthetic tools.

use code_mode_protocol::{
    BoxFuture, CodeModeSessionDelegate, JsonText, NestedToolCall, ToolDefinition, ToolError,
    ToolKind,
};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Answers every tool call at once with its input, as a value: the argument is parsed and
/// the result serialised ([`NestedToolCall::answer_with`]), as in a typical agent core.
pub struct EchoTools;

impl CodeModeSessionDelegate for EchoTools {
    fn invoke_tool(
        &self,
        call: NestedToolCall,
        _: CancellationToken,
    ) -> BoxFuture<'_, Result<JsonText, ToolError>> {
        call.answer_with(|call| async move { Ok(call.input.unwrap_or(serde_json::Value::Null)) })
    }
}

/// `count` synthetic function tools named `mcp__bench__tool_<n>`.
pub fn tools(count: usize) -> Arc<[ToolDefinition]> {
    (0..count)
        .map(|index| {
            ToolDefinition::new(
                format!("mcp__bench__tool_{index}"),
                format!("Synthetic tool number {index}, for the benchmark."),
                ToolKind::Function,
            )
        })
        .collect()
}

/// The tools a `--tool-counts` entry names: `128` is [`tools`]`(128)`, `1000d` is
/// [`deferred_tools`]`(1000)`.
pub fn tools_for(spec: &str) -> Arc<[ToolDefinition]> {
    match spec.strip_suffix('d') {
        Some(count) => deferred_tools(count.parse().unwrap_or(0)),
        None => tools(spec.parse().unwrap_or(0)),
    }
}

/// `count` deferred tools shaped like many MCP servers' (40 servers, a verb and a noun per
/// tool, a description and a declaration as `ToolDescription::definition` writes them),
/// so `tools.tool_search` ranks realistic documents.
pub fn deferred_tools(count: usize) -> Arc<[ToolDefinition]> {
    const VERBS: [&str; 8] = [
        "get", "list", "create", "update", "delete", "search", "fetch", "send",
    ];
    const NOUNS: [&str; 12] = [
        "weather",
        "issue",
        "file",
        "user",
        "message",
        "invoice",
        "calendar_event",
        "repository",
        "ticket",
        "order",
        "document",
        "payment",
    ];
    (0..count)
        .map(|index| {
            let verb = VERBS[index % VERBS.len()];
            let noun = NOUNS[(index / VERBS.len()) % NOUNS.len()];
            let server = format!("server{}", index % 40);
            let name = format!("mcp__{server}__{verb}_{noun}_{index}");
            let description = format!(
                "{verb} a {noun} ({index}) through {server}.\n```ts\ndeclare const tools: {{\n  {name}(args: {{\n    id: string;\n    limit?: number;\n  }}): Promise<unknown>;\n}};\n```"
            );
            ToolDefinition::new(name, description, ToolKind::Function).with_deferred(true)
        })
        .collect()
}
