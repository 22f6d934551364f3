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
