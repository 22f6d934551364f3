//! Calls that wait on a person (issue 86), from Node: the approvals of a state directory
//! (`pendingApprovals`, `approve` and `deny` of the package: any process that opens the
//! same directory lists and decides them, whether or not it holds the session), a
//! session's own (`NativeSession::pending_approvals` and `decide`, in `session`), and how
//! an approval crosses to JS (a typed object declared to TypeScript from here) and a
//! refused decision becomes the error class JS throws.
//!
//! Every call is a promise, settled from the extension's tokio runtime; the book (SQLite)
//! is read and written off its async threads, never on the event loop.

use crate::outcome::CallError;
use code_mode_host::state::{Approval, ApprovalError, ApprovalState, StateError};
use code_mode_protocol::approval::Decision;
use code_mode_protocol::texts;
use napi::Env;
use napi::bindgen_prelude::Object;
use napi_derive::napi;
use std::path::PathBuf;

/// A call that waits on a person (or waited: an approval as decided).
#[napi(object)]
pub struct NativeApproval {
    /// What `approve` and `deny` take.
    pub id: String,
    /// What keeps the session: `node` for this package's sessions.
    pub front: String,
    /// The session's id in its state directory.
    pub session_id: String,
    /// The cell that made the call.
    pub cell_id: String,
    /// The call's id in its cell (`tool-2`), as the model's line names it.
    pub call_id: String,
    /// The tool the cell called.
    pub tool: String,
    /// The call's input as the cell passed it, as JSON text (absent: it passed none).
    pub input: Option<String>,
    /// Why the tool needs an approval (its `approvalReason`).
    pub reason: Option<String>,
    /// When the call began to wait, in milliseconds since the Unix epoch.
    pub requested_at_ms: f64,
    /// How long it had waited when it was read, in milliseconds.
    pub age_ms: f64,
    #[napi(ts_type = "'pending' | 'approved' | 'sending' | 'denied' | 'told'")]
    pub state: String,
    /// The line the model read in the cell's observation while the call waited.
    pub waiting_line: String,
}

/// What an approvals call answers: the approvals (a decision's: the one it decided), or
/// the error it failed with (`kind`: `ApprovalNotWaiting`, `InvalidArgument`,
/// `SessionClosed` or `CodeModeError`).
#[napi(object)]
pub struct ApprovalsOutcome {
    pub approvals: Vec<NativeApproval>,
    pub error: Option<CallError>,
}

/// `approval` as JS reads it.
pub(crate) fn native(approval: &Approval) -> NativeApproval {
    let state = match approval.state {
        ApprovalState::Pending => "pending",
        ApprovalState::Approved { .. } => "approved",
        ApprovalState::Sending { .. } => "sending",
        ApprovalState::Denied { .. } => "denied",
        ApprovalState::Told { .. } => "told",
    };
    // Milliseconds as a JS number (exact below 2^53: far beyond any date or age).
    let (requested_at_ms, age_ms) = (
        approval.requested_at_ms as f64,
        approval.age().as_millis() as f64,
    );
    NativeApproval {
        id: approval.id.clone(),
        front: approval.front.clone(),
        session_id: approval.session.clone(),
        cell_id: approval.cell_id.to_string(),
        call_id: approval.call.to_string(),
        tool: approval.tool.clone(),
        input: approval.input.as_ref().map(|text| text.as_str().to_owned()),
        reason: approval.reason.clone(),
        requested_at_ms,
        age_ms,
        state: state.to_owned(),
        waiting_line: texts::approval_waiting(
            &approval.tool,
            &approval.call,
            approval.reason.as_deref(),
        ),
    }
}

/// The outcome of a listing.
pub(crate) fn listed(listed: Result<Vec<Approval>, StateError>) -> ApprovalsOutcome {
    match listed {
        Ok(listed) => ApprovalsOutcome {
            approvals: listed.iter().map(native).collect(),
            error: None,
        },
        Err(error) => failed("CodeModeError", error.to_string()),
    }
}

/// The outcome of a decision: the approval as decided, or why none was taken (no such
/// call waits, or it expired: `ApprovalNotWaiting`; the edited input is not JSON:
/// `InvalidArgument`; the store failed: `CodeModeError`).
pub(crate) fn decided(decided: Result<Approval, ApprovalError>) -> ApprovalsOutcome {
    match decided {
        Ok(decided) => ApprovalsOutcome {
            approvals: vec![native(&decided)],
            error: None,
        },
        Err(error) => {
            let kind = match error {
                ApprovalError::NotWaiting(_) | ApprovalError::Expired(_) => "ApprovalNotWaiting",
                ApprovalError::BadInput { .. } => "InvalidArgument",
                ApprovalError::State(_) => "CodeModeError",
            };
            failed(kind, error.to_string())
        }
    }
}

/// An outcome of an error of class `kind`.
pub(crate) fn failed(kind: &str, message: String) -> ApprovalsOutcome {
    ApprovalsOutcome {
        approvals: Vec::new(),
        error: Some(CallError {
            kind: kind.to_owned(),
            message,
        }),
    }
}

/// What `approve` (`deny` is `None`) or `deny` (with its message) decides; `input` is the
/// edited input's JSON text, when there is one.
pub(crate) fn decision(input: Option<String>, deny: Option<String>) -> Decision {
    match deny {
        Some(message) => Decision::Deny { message },
        None => Decision::Approve { input },
    }
}

/// The approvals of state directory `dir`, opened off the async threads (the book blocks
/// while it opens), once per directory and process.
async fn approvals_of(dir: String) -> Result<std::sync::Arc<code_mode_host::Approvals>, String> {
    let opened =
        tokio::task::spawn_blocking(move || crate::runtime::approvals(&PathBuf::from(dir))).await;
    match opened {
        Ok(opened) => opened,
        Err(error) => Err(format!("the approvals could not be opened: {error}")),
    }
}

/// The calls waiting on a person in state directory `dir`, oldest first: every session's,
/// or `front`'s (`node` for this package's sessions), or one `session`'s of it.
#[napi(ts_return_type = "Promise<ApprovalsOutcome>")]
pub fn pending_approvals<'env>(
    env: &'env Env,
    dir: String,
    session: Option<String>,
    front: Option<String>,
) -> napi::Result<Object<'env>> {
    crate::runtime::promise(env, async move {
        match approvals_of(dir).await {
            Ok(approvals) => listed(
                approvals
                    .pending(front.as_deref(), session.as_deref())
                    .await,
            ),
            Err(error) => failed("CodeModeError", error),
        }
    })
}

/// Decides approval `id` of state directory `dir`, once: approves it (with `input`, the
/// edited input's JSON text, sent instead of the cell's) or, given `deny`, denies it with
/// that message. A call waiting in this process goes on at once; one waiting in another
/// within a moment (its process looks every 25 ms).
#[napi(ts_return_type = "Promise<ApprovalsOutcome>")]
pub fn decide_approval<'env>(
    env: &'env Env,
    dir: String,
    id: String,
    input: Option<String>,
    deny: Option<String>,
) -> napi::Result<Object<'env>> {
    let decision = decision(input, deny);
    crate::runtime::promise(env, async move {
        match approvals_of(dir).await {
            Ok(approvals) => decided(approvals.decide(&id, decision, None).await),
            Err(error) => failed("CodeModeError", error),
        }
    })
}
