//! The `exec` tool's description, as the model sees it: how cells run, the pragma, the
//! global helpers with their signatures, and one TypeScript declaration per enabled tool.

use super::declarations::{
    call_tool_result_payload, schema_to_typescript, subschema_to_typescript,
};
use code_mode_protocol::model::{ToolDefinition, ToolKind, js_tool_name};
use code_mode_protocol::search::{TOOL_SEARCH_DECLARATION, TOOL_SEARCH_NAME};
use serde_json::Value;

/// A nested tool as the description builder sees it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ToolDescription {
    /// The original name, namespace included.
    pub name: String,
    /// The namespace (e.g. an MCP server); consecutive tools of one namespace share a
    /// header.
    pub namespace: Option<String>,
    /// Shown under the namespace header; without it, no header is printed.
    pub namespace_description: Option<String>,
    pub description: String,
    pub kind: ToolKind,
    /// JSON Schema of a function tool's argument.
    pub input_schema: Option<Value>,
    /// JSON Schema of the result.
    pub output_schema: Option<Value>,
    /// Callable, listed in `ALL_TOOLS`, but not described here.
    pub deferred: bool,
}

impl ToolDescription {
    /// The tool as a cell enables it: `ALL_TOOLS` and `tools.tool_search` show the
    /// description followed by the TypeScript declaration the `exec` description would
    /// print (contract 8.3), and the deferred flag goes with it.
    pub fn definition(&self) -> ToolDefinition {
        let mut description = self.description.trim().to_owned();
        if !description.is_empty() {
            description.push('\n');
        }
        description.push_str(&declaration(self));
        ToolDefinition::new(&self.name, description, self.kind).with_deferred(self.deferred)
    }
}

const INTRODUCTION: &str = r#"Runs JavaScript in a sandboxed code-mode runtime and returns what the script outputs.

How a script runs:
- The input is raw JavaScript source text: not JSON, not a string, not a fenced code block.
- TypeScript syntax is accepted (annotations, interfaces, type aliases, generics, `as`, `satisfies`, `!`): types are stripped, not checked. `enum`, `namespace` with values, parameter properties, decorators and JSX are not supported.
- It runs as an async ES module in a fresh V8 isolate, so top-level `await` works. Nothing survives between scripts except values saved with `store`.
- There is no Node.js, no file system, no network and no `require`; imports are refused. Standard ECMAScript is available, `Intl` included.
- Optional first line, a pragma: `// @exec: {"yield_time_ms": 10000, "max_output_tokens": 1000}`. `yield_time_ms` (default 10000) is how long this call waits before it returns while the script keeps running; `max_output_tokens` (default 10000) caps the output this call returns.
- If the script is still running when the call returns, the result names its cell ID: call `wait` with it to get more output or to terminate the script.
- Promises that are not awaited are discarded when the script ends, and so are pending timers.
- Only what the script outputs is returned: print what matters, not everything."#;

const HELPERS: &str = r#"Global helpers:
- `tools.<name>(args?): Promise<result>`: calls a tool (declared below). Calls may run in parallel, e.g. with `Promise.all`. A failed call rejects with the error message.
- `ALL_TOOLS: { name: string; description: string }[]`: every tool you can call, including ones not declared below.
- `text(value: unknown): void`: outputs a value; strings, numbers and other primitives as they print, everything else as JSON.
- `image(image: string | { image_url: string; detail?: ImageDetail } | { type: "image"; data: string; mimeType: string }, detail?: ImageDetail): void`: outputs an image from a `data:` URL or an MCP image block. `type ImageDetail = "auto" | "low" | "high" | "original"`, default `"high"`.
- `generatedImage(result: { image_url: string; output_hint?: string }): void`: outputs a generated image, then its hint.
- `audio(audio: string | { audio_url: string } | { type: "audio"; data: string; mimeType: string }): void`: outputs an audio clip from a `data:` URL or an MCP audio block.
- `console.log(...values: unknown[]): void` (also `info`, `warn`, `error`, `debug`): outputs the values like `text`, joined by spaces.
- `store(key: string, value: unknown): void`: saves a JSON copy of `value` for later scripts of this session.
- `load(key: string): unknown`: a fresh copy of a stored value, or `undefined`.
- `notify(message: unknown): void`: sends a progress message right away, outside the output.
- `yield_control(): void`: makes this call return now with the output so far; the script keeps running.
- `exit(): never`: ends the script at once, successfully; nothing after it runs.
- `setTimeout(callback: (...args: unknown[]) => void, ms?: number, ...args: unknown[]): number` and `clearTimeout(id: number): void`.
- `as_settled<T>(inputs: Iterable<T | Promise<T>> | Map<K, T | Promise<T>>): AsyncIterable<Settled<T>>`: the results in the order the inputs settle, e.g. `for await (const r of as_settled(calls))`. `type Settled<T> = { index: number | K; status: "fulfilled"; value: T } | { index: number | K; status: "rejected"; reason: unknown }`; `index` is the input's position, or its key in a `Map`.
- `stream_settled<T>(inputs: Iterable<T | Promise<T>> | Map<K, T | Promise<T>>, emit: (result: Settled<T>) => unknown): Promise<void>`: awaits `emit` for each result in that order, one at a time."#;

/// The shared declarations an MCP-shaped tool result refers to.
const MCP_TYPES: &str = r#"```ts
type McpContent =
  | { type: "text"; text: string }
  | { type: "image"; data: string; mimeType: string }
  | { type: "audio"; data: string; mimeType: string }
  | { type: "resource_link"; uri: string; name?: string; description?: string; mimeType?: string }
  | { type: "resource"; resource: { uri: string; mimeType?: string; text?: string; blob?: string } };
type CallToolResult<T = unknown> = { content: McpContent[]; structuredContent?: T; isError?: boolean };
```"#;

/// The input bullet of [`INTRODUCTION`], as a freeform tool takes its input.
const RAW_INPUT_BULLET: &str =
    "- The input is raw JavaScript source text: not JSON, not a string, not a fenced code block.";

/// The same bullet for an `exec` that takes a JSON object (`{"code": "..."}`), as MCP tools do.
const CODE_ARGUMENT_BULLET: &str =
    "- The `code` argument is the JavaScript source text: not a fenced code block.";

/// A source of tools (e.g. an MCP server) that is down: its tools cannot be called, and
/// the model is told why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnavailableSource {
    /// What the source is, as the model reads it: "MCP server `github`".
    pub name: String,
    /// Why it is down (shown on one line, cut at 400 bytes).
    pub reason: String,
}

/// What `exec`'s description describes: the tools, and the tool sources that are down.
#[derive(Debug, Clone, Copy, Default)]
pub struct Catalog<'a> {
    pub tools: &'a [ToolDescription],
    pub unavailable: &'a [UnavailableSource],
}

impl<'a> Catalog<'a> {
    /// The tools, with every source available.
    pub fn of(tools: &'a [ToolDescription]) -> Self {
        Self {
            tools,
            unavailable: &[],
        }
    }
}

/// Builds `exec`'s description for these tools (deferred ones included: they are only
/// mentioned, not declared).
pub fn exec_description(tools: &[ToolDescription]) -> String {
    exec_description_of(Catalog::of(tools))
}

/// [`exec_description`] that also names the tool sources that are down, and why.
pub fn exec_description_of(catalog: Catalog<'_>) -> String {
    describe_exec(INTRODUCTION, catalog)
}

/// `exec`'s description for an `exec` tool whose input is a JSON object with the source in
/// `code` (`code-mode mcp`); the rest is [`exec_description`]'s.
pub fn exec_code_argument_description(tools: &[ToolDescription]) -> String {
    exec_code_argument_description_of(Catalog::of(tools))
}

/// [`exec_code_argument_description`] that also names the tool sources that are down.
pub fn exec_code_argument_description_of(catalog: Catalog<'_>) -> String {
    let introduction = INTRODUCTION.replacen(RAW_INPUT_BULLET, CODE_ARGUMENT_BULLET, 1);
    describe_exec(&introduction, catalog)
}

/// The longest reason shown for a source that is down, in bytes.
const REASON_MAX_BYTES: usize = 400;

fn describe_exec(introduction: &str, catalog: Catalog<'_>) -> String {
    let tools = catalog.tools;
    let mut out = String::new();
    out.push_str(introduction);
    out.push_str("\n\n");
    out.push_str(HELPERS);
    out.push_str("\n\n## Tools\n");
    let listed: Vec<&ToolDescription> = tools.iter().filter(|tool| !tool.deferred).collect();
    let deferred = tools.len() - listed.len();
    if listed.is_empty() {
        out.push_str("\nNo tools are declared for this script.\n");
    }
    let uses_mcp_types = listed.iter().any(|tool| {
        tool.output_schema
            .as_ref()
            .is_some_and(|schema| call_tool_result_payload(schema).is_some())
    });
    if uses_mcp_types {
        out.push_str("\nTypes shared by the MCP tools below:\n");
        out.push_str(MCP_TYPES);
        out.push('\n');
    }
    let mut current_namespace: Option<&str> = None;
    for tool in listed {
        let namespace = tool.namespace.as_deref();
        if namespace.is_some() && namespace != current_namespace {
            let description = tool
                .namespace_description
                .as_deref()
                .map(str::trim)
                .filter(|text| !text.is_empty());
            if let (Some(name), Some(description)) = (namespace, description) {
                out.push_str(&format!("\n## Namespace `{name}`\n{description}\n"));
            }
        }
        current_namespace = namespace;
        out.push_str(&describe_tool(tool));
    }
    if deferred > 0 {
        let count = if deferred == 1 {
            "1 more tool is".to_owned()
        } else {
            format!("{deferred} more tools are")
        };
        out.push_str(&format!(
            "\n### `{TOOL_SEARCH_NAME}`\n{count} available but not declared here. Find them with `tools.{TOOL_SEARCH_NAME}`: it ranks them against your query (words of a tool's name, server, description or parameters) and returns the best matches, each with its declaration. Read the declaration, then call the tool as `tools[result.name](args)`.\n```ts\n{TOOL_SEARCH_DECLARATION}\n```\n"
        ));
    }
    if !catalog.unavailable.is_empty() {
        out.push_str("\n## Unavailable tool sources\nThese are down, so their tools are missing above; they are tried again in the background, and their tools appear in a later script once they start:\n");
        for source in catalog.unavailable {
            // One line: the reason's lines joined (a server's failure ends with its stderr).
            let reason = source
                .reason
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            let reason = reason.as_str();
            let mut cut = reason.len().min(REASON_MAX_BYTES);
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            let ellipsis = if cut < reason.len() { "…" } else { "" };
            out.push_str(&format!(
                "- {}: {}{ellipsis}\n",
                source.name,
                &reason[..cut]
            ));
        }
    }
    out
}

/// One tool's heading, description and declaration.
fn describe_tool(tool: &ToolDescription) -> String {
    let js_name = js_tool_name(&tool.name);
    let mut out = format!("\n### `{js_name}`");
    if js_name != tool.name {
        out.push_str(&format!(" (tool `{}`)", tool.name));
    }
    out.push('\n');
    let description = tool.description.trim();
    if !description.is_empty() {
        out.push_str(description);
        out.push('\n');
    }
    out.push_str(&declaration(tool));
    out.push('\n');
    out
}

/// A tool's TypeScript declaration, fenced.
fn declaration(tool: &ToolDescription) -> String {
    format!(
        "```ts\ndeclare const tools: {{\n  {}({}): Promise<{}>;\n}};\n```",
        js_tool_name(&tool.name),
        parameter(tool),
        result_type(tool.output_schema.as_ref()),
    )
}

/// The parameter list of a tool's declaration.
fn parameter(tool: &ToolDescription) -> String {
    if tool.kind == ToolKind::Freeform {
        return "input: string".to_owned();
    }
    let Some(schema) = &tool.input_schema else {
        return "args?: unknown".to_owned();
    };
    let rendered = schema_to_typescript(schema, 1);
    // An object argument with nothing required may be left out.
    let nothing_required = schema.get("properties").is_some()
        && schema
            .get("required")
            .and_then(Value::as_array)
            .is_none_or(|required| required.is_empty());
    let optional = if nothing_required { "?" } else { "" };
    format!("args{optional}: {rendered}")
}

/// The resolved type of a tool's promise.
fn result_type(schema: Option<&Value>) -> String {
    let Some(schema) = schema else {
        return "unknown".to_owned();
    };
    match call_tool_result_payload(schema) {
        Some(Some(structured)) => format!(
            "CallToolResult<{}>",
            subschema_to_typescript(structured, schema, 1)
        ),
        Some(None) => "CallToolResult".to_owned(),
        None => schema_to_typescript(schema, 1),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_code_argument_description_differs_only_in_its_input_bullet() {
        let raw = super::exec_description(&[]);
        let code = super::exec_code_argument_description(&[]);
        assert!(raw.contains(super::RAW_INPUT_BULLET));
        assert!(!code.contains(super::RAW_INPUT_BULLET));
        assert!(code.contains(super::CODE_ARGUMENT_BULLET));
        assert_eq!(
            code.replacen(super::CODE_ARGUMENT_BULLET, super::RAW_INPUT_BULLET, 1),
            raw
        );
    }
}
