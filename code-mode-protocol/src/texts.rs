//! What the model reads: every fixed text of the contract (`docs/CONTRACT.md`) that Rust
//! writes, in one place. Session errors, the status and header lines of a formatted
//! response, the errors the cell's helpers throw (`image`, `store`, `notify`, timers),
//! the reasons a cell was stopped by a limit, and the reasons a tool call's payload is
//! refused all come from here; the error types, the formatter, the runtime and the
//! metrics that recognise a limit only choose which.

use std::fmt;

/// A session call after its shutdown began.
pub const SHUTTING_DOWN: &str = "code mode session is shutting down";

/// A second observer of a cell that already has one.
pub fn busy_observer(cell_id: &dyn fmt::Display) -> String {
    format!("exec cell {cell_id} already has an active observer")
}

/// A second `terminate` of a cell still being terminated.
pub fn already_terminating(cell_id: &dyn fmt::Display) -> String {
    format!("exec cell {cell_id} is already terminating")
}

/// The error text of an observation of a cell id the session does not know.
pub fn cell_not_found(cell_id: &dyn fmt::Display) -> String {
    format!("exec cell {cell_id} not found")
}

/// The runtime could not run a call; `detail` says why.
pub fn runtime_failure(detail: &dyn fmt::Display) -> String {
    format!("exec runtime failure: {detail}")
}

/// The runtime process died while the call was in flight; `cause` names why.
pub fn runtime_lost(cause: &dyn fmt::Display) -> String {
    format!(
        "the exec runtime was lost ({cause}). The cells running on it were lost; stored values committed by finished cells are kept."
    )
}

/// The cause a draining runtime gives, in the runtime-lost error, for a call still in
/// flight when its drain timeout passed and it stopped the cells still running.
pub const DRAIN_DEADLINE_PASSED: &str =
    "the runtime's drain timeout passed while the cell was still running";

/// The error a restored cell's nested call gets when the tool ran in the serving process
/// that was restarted (its own tools): it is not run again, since it may have had its
/// effect.
pub const TOOL_LOST_IN_RESTART: &str = "the tool call was cut short by a restart of the server that ran it; it may have had its effect, so it is not run again: inspect its result before retrying";

/// The error a restored cell's call gets when it was in flight as its agent core stopped
/// and the agent core chose to fail it: the model reads that it may have run.
pub fn interrupted_call(tool: &str) -> String {
    format!(
        "interrupted: the call of `{tool}` was in flight when the agent stopped; it may have had its effect, so it is not run again: inspect its result before retrying"
    )
}

/// The line an observation ends with for each call of its cell that waits on a person
/// (issue 86): the model reads which call waits and why, and that the cell goes on.
pub fn approval_waiting(tool: &str, call: &dyn fmt::Display, reason: Option<&str>) -> String {
    match reason {
        Some(reason) => format!(
            "Waiting for approval: `{tool}` (call {call}), because: {reason}. The cell goes on when a person decides."
        ),
        None => format!(
            "Waiting for approval: `{tool}` (call {call}). The cell goes on when a person decides."
        ),
    }
}

/// The error a call gets when the person asked denied it: the tool never ran.
pub fn approval_denied(tool: &str, message: &str) -> String {
    format!("denied: the call of `{tool}` was not approved, so it did not run: {message}")
}

/// The error a call gets when it needs a person's approval and its session keeps none.
pub fn approval_unkept(tool: &str) -> String {
    format!(
        "refused: the call of `{tool}` needs a person's approval, and this session keeps no approvals (they need a state store), so it did not run"
    )
}

/// The message of a call's denial when no person decided within the store's time to live.
pub const APPROVAL_EXPIRED: &str = "its approval expired (no one decided in time)";

/// The error a call gets when what would be sent is not what was approved (the digest
/// recorded with the approval differs), or its approval was used already: it is not sent.
pub fn approval_mismatch(tool: &str) -> String {
    format!(
        "refused: the call of `{tool}` does not match the approval kept for it (another call's, or an input other than the one approved), so it did not run"
    )
}

/// The error a cell's nested call gets when the state store could not be written around
/// it (`what`: whether the call was made): a call the store cannot know of is not made.
pub fn state_unwritten(what: &str, error: &dyn fmt::Display) -> String {
    format!("code-mode state could not be written ({what}): {error}")
}

/// The status line of a response: a cell still running.
pub fn script_running(cell_id: &dyn fmt::Display) -> String {
    format!("Script running with cell ID {cell_id}")
}

/// The status line of a terminated cell.
pub const SCRIPT_TERMINATED: &str = "Script terminated";

/// The status line of a cell that completed.
pub const SCRIPT_COMPLETED: &str = "Script completed";

/// The status line of a cell that failed.
pub const SCRIPT_FAILED: &str = "Script failed";

/// The line after the status line: the observation's wall time, one decimal.
pub fn wall_time(seconds: f64) -> String {
    format!("Wall time {seconds:.1} seconds")
}

/// The line before a response's items.
pub const OUTPUT: &str = "Output:";

/// The item of a failed cell: its error text after this line.
pub fn script_error(error: &str) -> String {
    format!("Script error:\n{error}")
}

/// The line that replaces the text a response's token budget left out.
pub fn output_truncated(omitted_tokens: u64, max_output_tokens: u64) -> String {
    format!(
        "[... output truncated: about {omitted_tokens} more tokens did not fit the budget of {max_output_tokens} tokens ...]"
    )
}

/// A tool's argument that could not be parsed for a delegate that takes values.
pub fn tool_input_rejected(detail: &dyn fmt::Display) -> String {
    format!("tool input rejected: {detail}")
}

/// A tool's result the cell refuses; `detail` says why.
pub fn tool_result_rejected(detail: &dyn fmt::Display) -> String {
    format!("tool result rejected: {detail}")
}

/// The detail of a tool result that is not JSON.
pub const NOT_VALID_JSON: &str = "it is not valid JSON";

/// The detail of a tool result over the payload limit.
pub fn over_payload_limit(bytes: usize, max_bytes: u64) -> String {
    format!("{bytes} bytes is more than the limit of {max_bytes} bytes")
}

/// The error of a nested tool call whose cell no longer wants the answer.
pub const CANCELLED: &str = "cancelled";

/// `image(...)` with an argument of no accepted form.
pub const IMAGE_EXPECTS: &str = "image expects a non-empty image URL string, an object with image_url and optional detail, or a raw MCP image block";

/// `image(...)` with an `http:` or `https:` URL.
pub const REMOTE_IMAGE: &str = "Tool call failed: remote image URLs are not supported in tool outputs. Pass a base64 data URI instead";

/// `image(...)` with a URL that is no base64 data URI.
pub const INVALID_IMAGE: &str =
    "Tool call failed: invalid image output. Pass a base64 data URI instead";

/// `image(url, detail)` with a detail of no known value.
pub const DETAIL_ONE_OF: &str = "image detail must be one of: auto, low, high, original";

/// `image(url, detail)` with a detail that is not a string.
pub const DETAIL_STRING: &str = "image detail must be a string when provided";

/// An MCP image block without data.
pub const MCP_IMAGE_DATA: &str = "image expected MCP image data";

/// `image(...)` with an MCP block of another type.
pub fn image_only_accepts(kind: &str) -> String {
    format!("image only accepts MCP image blocks, got \"{kind}\"")
}

/// `audio(...)` with an argument of no accepted form.
pub const AUDIO_EXPECTS: &str = "audio expects a non-empty audio URL string, an object with audio_url, or a raw MCP audio block";

/// `audio(...)` with a URL that is no `data:` URL.
pub const INVALID_AUDIO: &str =
    "Tool call failed: invalid audio output. Pass a base64 data URI instead";

/// An MCP audio block without data.
pub const MCP_AUDIO_DATA: &str = "audio expected MCP audio data";

/// `audio(...)` with an MCP block of another type.
pub fn audio_only_accepts(kind: &str) -> String {
    format!("audio only accepts MCP audio blocks, got \"{kind}\"")
}

/// The text item that replaces a WAV clip too short to be heard.
pub const AUDIO_TOO_SHORT: &str =
    "Audio output omitted because the clip is shorter than 25 ms; use a longer clip.";

/// `stream_settled(inputs, emit)` without a function (the message of a `TypeError`).
pub const STREAM_SETTLED_CALLBACK: &str = "stream_settled requires a callback";

/// `generatedImage(...)` with something that is no image generation result.
pub const GENERATED_EXPECTS: &str = "generatedImage expects an image generation result object";

/// `generatedImage(...)` with an `output_hint` that is not a string.
pub const GENERATED_HINT: &str = "generatedImage output_hint must be a string when provided";

/// `notify(...)` with empty text.
pub const NOTIFY_EMPTY: &str = "notify expects non-empty text";

/// `setTimeout(...)` without a function.
pub const SET_TIMEOUT_CALLBACK: &str = "setTimeout expects a function callback";

/// `clearTimeout(...)` with something that is no timer id.
pub const CLEAR_TIMEOUT_ID: &str = "clearTimeout expects a numeric timeout id";

/// `store` or `load` (`helper`) with a key that is not a string.
pub fn key_must_be_string(helper: &str) -> String {
    format!("{helper} key must be a string")
}

/// `store(key, value)` with a value JSON cannot represent.
pub fn unable_to_store(key: &str) -> String {
    format!("Unable to store \"{key}\". Only plain serializable objects can be stored.")
}

/// `store(key, value)` that would take the session's stored values (the cell's view of
/// them: the snapshot it started with plus its own writes) to `bytes`, beyond the
/// session's cap of `max_bytes` (contract section 4).
pub fn stored_values_full(key: &str, bytes: u64, max_bytes: u64) -> String {
    format!(
        "Unable to store \"{key}\": the session's stored values would take {bytes} bytes, more than their limit of {max_bytes} bytes. Store less, or store smaller values."
    )
}

/// A value the cell passed that could not become JSON; `detail` says why.
pub fn failed_to_serialize(detail: &dyn fmt::Display) -> String {
    format!("failed to serialize JavaScript value: {detail}")
}

/// The detail of a value nested deeper than the JSON depth limit.
pub fn nested_too_deep(limit: usize) -> String {
    format!("value is nested deeper than the limit of {limit} levels")
}

/// A static or dynamic `import` in a cell.
pub fn unsupported_import(specifier: &str) -> String {
    format!("Unsupported import in exec: {specifier}")
}

/// How the marker of a cell that reached its output cap begins.
const OUTPUT_CAP_PREFIX: &str = "[output truncated: this cell reached its output cap";

/// The item that replaces the output of a cell past its output cap.
pub fn output_cap_reached(output_bytes: u64) -> String {
    format!("{OUTPUT_CAP_PREFIX} of {output_bytes} bytes; later output is dropped]")
}

/// How the error of a cell stopped at its heap limit begins.
const OUT_OF_MEMORY_PREFIX: &str = "Out of memory: the cell reached its heap limit";

/// The error of a cell stopped at its heap limit.
pub fn out_of_memory(limit_mib: u64) -> String {
    format!("{OUT_OF_MEMORY_PREFIX} of {limit_mib} MiB and was stopped")
}

/// How the error of a cell stopped by its CPU budget begins.
const CPU_BUDGET_PREFIX: &str = "CPU budget exceeded";

/// The error of a cell stopped by its CPU budget.
pub fn cpu_budget_exceeded(budget_secs: f64) -> String {
    format!("{CPU_BUDGET_PREFIX}: the cell used its {budget_secs} s of CPU time and was stopped")
}

/// The error of a cell whose thread stopped without reporting how it ended.
pub const CELL_STOPPED_UNEXPECTEDLY: &str = "exec cell stopped unexpectedly";

/// The error of a cell that, rebuilt from its journal, made call `call` (the tool
/// `tool`) other than the one its journal holds at that position.
pub fn replay_diverged(call: u64, tool: &str) -> String {
    format!(
        "exec cell could not be rebuilt: its nested call {call} (tools.{tool}) differs from the call it made before; nothing was sent"
    )
}

/// The error of a rebuilt cell that did not make again a call or timer its journal
/// answers (`what`, e.g. `nested call 3`).
pub fn replay_stalled(what: &str) -> String {
    format!("exec cell could not be rebuilt: it did not make its {what} again; nothing was sent")
}

/// A session call whose cell's actor went away without answering (a runtime fault).
pub fn cell_stopped_without_answering(cell_id: &dyn fmt::Display) -> String {
    format!("exec cell {cell_id} stopped without answering")
}

/// A nested call the runtime could not deliver: its host connection is gone.
pub const HOST_CONNECTION_CLOSED: &str = "the host connection closed";

/// A nested call the runtime could not send to its host.
pub fn call_not_sent(error: &dyn fmt::Display) -> String {
    format!("the call could not be sent to the host: {error}")
}

/// The error text of a cell that awaits something nothing can settle.
pub const STALLED: &str = "exec cell cannot finish: the script is awaiting a promise that nothing can settle (no nested tool calls or timers are pending)";

/// A source beyond the size the runtime compiles.
pub fn source_too_large(bytes: usize, max_bytes: usize) -> String {
    format!("SyntaxError: the script is {bytes} bytes, more than the limit of {max_bytes} bytes")
}

/// A TypeScript source nested too deep to strip its types.
pub fn typescript_too_deep(max_nesting: usize, line: usize, column: usize) -> String {
    format!(
        "SyntaxError: this script nests brackets more than {max_nesting} levels deep, too deep to strip its types (at {line}:{column})"
    )
}

/// A TypeScript construct that needs a transform, refused: `what` it is (one of the
/// `TYPESCRIPT_*` pairs' first half), `at` where (` at line L, column C`, or empty),
/// `instead` what to write (the pair's second half), `location` the V8-style position.
pub fn typescript_refused(what: &str, at: &str, instead: &str, location: &str) -> String {
    format!(
        "SyntaxError: {what}{at} is not supported: TypeScript types are stripped, not compiled, so {instead}\n    at {location}"
    )
}

/// What a refused TypeScript construct is, and what to write instead.
pub const TYPESCRIPT_ENUM: (&str, &str) = (
    "a TypeScript `enum`",
    "use a plain object instead, e.g. `const Color = { Red: \"red\", Blue: \"blue\" } as const;`",
);
pub const TYPESCRIPT_NAMESPACE: (&str, &str) = (
    "a TypeScript `namespace` with values",
    "declare the values at the top level or in a plain object",
);
pub const TYPESCRIPT_IMPORT_EQUALS: (&str, &str) = (
    "a TypeScript `import ... = ...` declaration",
    "cells cannot import modules; call the tools on the global `tools` object",
);
pub const TYPESCRIPT_EXPORT_ASSIGNMENT: (&str, &str) = (
    "a TypeScript `export =` assignment",
    "cells export nothing; remove it and output results with `text(...)`",
);
pub const TYPESCRIPT_PARAMETER_PROPERTY: (&str, &str) = (
    "a TypeScript parameter property (`constructor(private x: T)`)",
    "declare the field in the class body and assign it in the constructor",
);
pub const TYPESCRIPT_ANGLE_ASSERTION: (&str, &str) =
    ("a `<T>expr` type assertion", "write `expr as T` instead");
pub const TYPESCRIPT_DECORATOR: (&str, &str) = (
    "a decorator",
    "call the decorating function on the class or method yourself",
);
pub const TYPESCRIPT_JSX: (&str, &str) = (
    "JSX",
    "build strings or plain objects instead; there is no DOM or React here",
);

/// A helper that failed inside the runtime (a bug, reported rather than panicking).
pub const HELPER_INTERNAL_ERROR: &str = "internal error in a code-mode helper";

/// A tool function that lost its index (a bug).
pub const TOOL_WITHOUT_INDEX: &str = "internal error: tool function without an index";

/// A tool function whose index names no tool of the cell (a bug).
pub const UNKNOWN_TOOL_INDEX: &str = "internal error: unknown tool index";

/// A `store`/`load` key longer than the runtime takes.
pub fn key_too_long(helper: &str, chars: usize, max_chars: usize) -> String {
    format!("{helper} key is {chars} characters long, more than the limit of {max_chars}")
}

/// A value whose JSON passes the payload limit.
pub fn value_too_large(bytes: usize, max_bytes: u64) -> String {
    format!("the value is {bytes} bytes of JSON, more than the limit of {max_bytes} bytes")
}

/// A tool call refused because the cell has its most calls in flight.
pub fn too_many_calls_in_flight(js_name: &str, limit: u64) -> String {
    format!(
        "tools.{js_name} was not called: this cell already has {limit} nested tool calls in flight, the most allowed"
    )
}

/// A tool argument that could not become JSON; `detail` follows after a colon.
pub fn argument_not_json(js_name: &str) -> String {
    format!("tools.{js_name} could not convert its argument to JSON")
}

/// A tool argument whose JSON passes the payload limit.
pub fn argument_too_large(js_name: &str, bytes: usize, max_bytes: u64) -> String {
    format!(
        "tools.{js_name} was not called: its argument is {bytes} bytes of JSON, more than the limit of {max_bytes} bytes"
    )
}

/// The marker appended to a text the runtime cut.
pub fn text_truncated(length: usize) -> String {
    format!("\u{2026} [truncated: the text has {length} characters]")
}

/// An uncaught exception whose value has no description that runs no user code.
pub const UNDESCRIBABLE_EXCEPTION: &str = "uncaught exception (its value could not be described)";

/// The error of a cell that failed with no exception to report.
pub const FAILED_WITHOUT_EXCEPTION: &str = "exec cell failed without an exception";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_the_contracts() {
        let cell = "g2:4";
        assert_eq!(
            busy_observer(&cell),
            "exec cell g2:4 already has an active observer"
        );
        assert_eq!(
            already_terminating(&cell),
            "exec cell g2:4 is already terminating"
        );
        assert_eq!(cell_not_found(&"x"), "exec cell x not found");
        assert_eq!(script_running(&cell), "Script running with cell ID g2:4");
        assert_eq!(wall_time(1.34), "Wall time 1.3 seconds");
        assert_eq!(script_error("boom"), "Script error:\nboom");
        assert_eq!(
            tool_result_rejected(&NOT_VALID_JSON),
            "tool result rejected: it is not valid JSON"
        );
        assert_eq!(
            out_of_memory(128),
            "Out of memory: the cell reached its heap limit of 128 MiB and was stopped"
        );
        assert_eq!(
            cpu_budget_exceeded(1.5),
            "CPU budget exceeded: the cell used its 1.5 s of CPU time and was stopped"
        );
        assert_eq!(
            output_cap_reached(10),
            "[output truncated: this cell reached its output cap of 10 bytes; later output is dropped]"
        );
        assert_eq!(
            unable_to_store("k"),
            "Unable to store \"k\". Only plain serializable objects can be stored."
        );
        assert_eq!(
            image_only_accepts("audio"),
            "image only accepts MCP image blocks, got \"audio\""
        );
        assert_eq!(
            audio_only_accepts("image"),
            "audio only accepts MCP audio blocks, got \"image\""
        );
        assert_eq!(
            runtime_lost(&"killed"),
            "the exec runtime was lost (killed). The cells running on it were lost; stored values committed by finished cells are kept."
        );
    }
}
