//! What both benchmark binaries share: the delegate that answers at once and the
//! synthetic tools.

use code_mode_protocol::{
    BoxFuture, CodeModeSessionDelegate, NestedToolCall, ToolDefinition, ToolKind,
};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Answers every tool call at once with its input.
pub struct EchoTools;

impl CodeModeSessionDelegate for EchoTools {
    fn invoke_tool(
        &self,
        call: NestedToolCall,
        _: CancellationToken,
    ) -> BoxFuture<'_, Result<serde_json::Value, String>> {
        Box::pin(async move { Ok(call.input.unwrap_or(serde_json::Value::Null)) })
    }
    fn notify(&self, _: String, _: String, _: CancellationToken) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    fn cell_closed(&self, _: &str) {}
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
