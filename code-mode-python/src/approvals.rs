//! Calls that wait on a person (issue 86), from Python: the approvals of a state directory
//! (`code_mode.pending_approvals`, `code_mode.approve`, `code_mode.deny`: any process that
//! opens the same directory lists and decides them, whether or not it holds the session),
//! and how an approval crosses to Python (JSON) and an approval's refusal becomes an
//! exception. A session's own (`Session.pending_approvals`, ...) are in `session`.
//!
//! Every function blocks on the book (SQLite) with the GIL released.

use code_mode_host::Approvals;
use code_mode_host::state::{Approval, ApprovalError, ApprovalState, StateError};
use code_mode_protocol::approval::Decision;
use code_mode_protocol::texts;
use pyo3::prelude::*;
use serde_json::{Value, json};
use std::future::Future;
use std::sync::Arc;

/// An approval as Python reads it (`code_mode.Approval`): the call's input as JSON (or
/// `null`), its age in milliseconds, and the line the model read when it began to wait.
pub(crate) fn approval_json(approval: &Approval) -> Value {
    let input = approval
        .input
        .as_ref()
        .and_then(|text| text.to_value().ok())
        .unwrap_or(Value::Null);
    let state = match approval.state {
        ApprovalState::Pending => "pending",
        ApprovalState::Approved { .. } => "approved",
        ApprovalState::Sending { .. } => "sending",
        ApprovalState::Denied { .. } => "denied",
        ApprovalState::Told { .. } => "told",
    };
    json!({
        "id": approval.id,
        "front": approval.front,
        "session": approval.session,
        "cell_id": approval.cell_id.to_string(),
        "call_id": approval.call.to_string(),
        "tool": approval.tool,
        "input": input,
        "reason": approval.reason,
        "requested_at_ms": approval.requested_at_ms,
        "age_ms": u64::try_from(approval.age().as_millis()).unwrap_or(u64::MAX),
        "state": state,
        "waiting_line": texts::approval_waiting(&approval.tool, &approval.call, approval.reason.as_deref()),
    })
}

/// A list of approvals, as a JSON list.
pub(crate) fn list_json(approvals: &[Approval]) -> String {
    Value::Array(approvals.iter().map(approval_json).collect()).to_string()
}

/// The exception for a store that could not be read or written.
pub(crate) fn unread(error: &StateError) -> PyErr {
    crate::errors::CodeModeError::new_err(error.to_string())
}

/// The exception for a decision that was not taken: `CodeModeError` with the reason (no
/// such call waits, it expired, the edited input is not JSON, the store failed).
pub(crate) fn refused(error: &ApprovalError) -> PyErr {
    crate::errors::CodeModeError::new_err(error.to_string())
}

/// What `approve` (`deny` is `None`) or `deny` (with its message) decides; `input` is the
/// edited input's JSON text, when there is one.
pub(crate) fn decision(input: Option<String>, deny: Option<String>) -> Decision {
    match deny {
        Some(message) => Decision::Deny { message },
        None => Decision::Approve { input },
    }
}

/// Runs `run` on the extension's runtime with the GIL released.
pub(crate) fn block<T: Send + 'static>(
    py: Python<'_>,
    run: impl Future<Output = T> + Send + 'static,
) -> T {
    py.detach(|| crate::runtime::tokio().block_on(run))
}

/// The approvals of state directory `dir`, opened once per process (the book blocks while
/// it opens; the GIL is released meanwhile).
fn approvals_of(py: Python<'_>, dir: &str) -> PyResult<Arc<Approvals>> {
    py.detach(|| crate::runtime::approvals(std::path::Path::new(dir)))
}

/// The calls waiting on a person in state directory `dir`, oldest first, as a JSON list:
/// every session's, or `front`'s (`python` for this package's sessions), or one
/// `session`'s.
#[pyfunction]
#[pyo3(signature = (dir, session=None, front=None))]
pub(crate) fn pending_approvals(
    py: Python<'_>,
    dir: &str,
    session: Option<String>,
    front: Option<String>,
) -> PyResult<String> {
    let approvals = approvals_of(py, dir)?;
    let listed = block(py, async move {
        approvals
            .pending(front.as_deref(), session.as_deref())
            .await
    });
    listed
        .map(|listed| list_json(&listed))
        .map_err(|error| unread(&error))
}

/// Decides approval `id` of state directory `dir`, once: approves it (with `input`, the
/// edited input's JSON text, sent instead of the cell's) or, given `deny`, denies it with
/// that message. Returns the approval as decided (JSON). A call waiting in this process
/// goes on at once; one waiting in another within a moment.
#[pyfunction]
#[pyo3(signature = (dir, id, input=None, deny=None))]
pub(crate) fn decide_approval(
    py: Python<'_>,
    dir: &str,
    id: String,
    input: Option<String>,
    deny: Option<String>,
) -> PyResult<String> {
    let approvals = approvals_of(py, dir)?;
    let decision = decision(input, deny);
    let decided = block(
        py,
        async move { approvals.decide(&id, decision, None).await },
    );
    decided
        .map(|decided| approval_json(&decided).to_string())
        .map_err(|error| refused(&error))
}
