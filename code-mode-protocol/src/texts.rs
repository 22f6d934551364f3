//! What the model reads: every fixed text of the contract (`docs/CONTRACT.md`) that Rust
//! writes, in one place. Session errors, the status and header lines of a formatted
//! response, and the reasons a tool call's payload is refused all come from here; the
//! error types, the formatter and the runtime only choose which.
//!
//! The texts the cell's own JavaScript helpers write (`text`, `image`, `store`, ...) live
//! with those helpers in the runtime's helper source, where V8 raises them.

use crate::ids::CellId;
use std::fmt;

/// A session call after its shutdown began.
pub const SHUTTING_DOWN: &str = "code mode session is shutting down";

/// The first call of a session after its runtime process was replaced.
pub const RUNTIME_REPLACED: &str = "The exec runtime was replaced. Stored values and running cells were lost. Prior external tool operations may have completed; inspect their results before retrying. You may continue with a fresh exec call.";

/// A second observer of a cell that already has one.
pub fn busy_observer(cell_id: &CellId) -> String {
    format!("exec cell {cell_id} already has an active observer")
}

/// A second `terminate` of a cell still being terminated.
pub fn already_terminating(cell_id: &CellId) -> String {
    format!("exec cell {cell_id} is already terminating")
}

/// The error text of an observation of a cell id the session does not know.
pub fn cell_not_found(cell_id: &CellId) -> String {
    format!("exec cell {cell_id} not found")
}

/// The runtime could not run a call; `detail` says why.
pub fn runtime_failure(detail: &dyn fmt::Display) -> String {
    format!("exec runtime failure: {detail}")
}

/// The runtime process died while the call was in flight; `cause` names why.
pub fn runtime_lost(cause: &dyn fmt::Display) -> String {
    format!("the exec runtime was lost ({cause}). Stored values and running cells were lost.")
}

/// The status line of a response: a cell still running.
pub fn script_running(cell_id: &CellId) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_the_contracts() {
        let cell = CellId::parse("g2:4");
        assert_eq!(
            busy_observer(&cell),
            "exec cell g2:4 already has an active observer"
        );
        assert_eq!(
            already_terminating(&cell),
            "exec cell g2:4 is already terminating"
        );
        assert_eq!(cell_not_found(&CellId::parse("x")), "exec cell x not found");
        assert_eq!(script_running(&cell), "Script running with cell ID g2:4");
        assert_eq!(wall_time(1.34), "Wall time 1.3 seconds");
        assert_eq!(script_error("boom"), "Script error:\nboom");
        assert_eq!(
            tool_result_rejected(&NOT_VALID_JSON),
            "tool result rejected: it is not valid JSON"
        );
        assert_eq!(
            runtime_lost(&"killed"),
            "the exec runtime was lost (killed). Stored values and running cells were lost."
        );
    }
}
