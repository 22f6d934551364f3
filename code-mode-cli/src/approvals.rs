//! `code-mode approvals`: the calls that wait on a person, from any process that opens the
//! same store (`--state-dir` or `--state-url`), days later and while the servers run
//! (issue 86). `list` prints each waiting call as a JSON line (every front's, or one
//! session's); `approve ID [--input JSON]` lets it run (with the input given instead of
//! the cell's); `deny ID --message TEXT` refuses it, and the model reads the message. A
//! decision is taken once; the server that holds the call learns of it within a moment.

use crate::Failure;
use code_mode_protocol::approval::Decision;
use code_mode_state::{Approval, ApprovalBook, ApprovalError, StateArgs};
use serde_json::{Value, json};

/// What `code-mode approvals` does.
#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Print each waiting call as a JSON line, oldest first.
    List {
        /// Only this session's calls.
        #[arg(long, value_name = "ID")]
        session: Option<String>,
        /// Only this front's calls (`jsonl`, `mcp`, `python`, an agent core's name).
        #[arg(long, value_name = "NAME")]
        front: Option<String>,
        #[command(flatten)]
        state: Box<StateArgs>,
    },
    /// Approve a waiting call: it runs once, with its own input or the one given.
    Approve {
        /// The approval's id (`list` prints it).
        id: String,
        /// The input to send instead of the cell's (JSON).
        #[arg(long, value_name = "JSON")]
        input: Option<String>,
        #[command(flatten)]
        state: Box<StateArgs>,
    },
    /// Deny a waiting call: it never runs; its promise rejects with the message.
    Deny {
        /// The approval's id (`list` prints it).
        id: String,
        /// Why, as the model reads it.
        #[arg(long, value_name = "TEXT")]
        message: String,
        #[command(flatten)]
        state: Box<StateArgs>,
    },
}

/// The store the flags name, opened for its approvals.
fn book(state: &StateArgs) -> Result<ApprovalBook, Failure> {
    let (location, options) = state
        .store()
        .ok_or_else(|| Failure::usage("give the store: --state-dir DIR or --state-url URL"))?;
    ApprovalBook::open(&location, &options).map_err(|error| Failure::runtime(error.to_string()))
}

/// A waiting call as `list` prints it (and `serve --jsonl` shows it).
pub(crate) fn listed(approval: &Approval) -> Value {
    let input = approval
        .input
        .as_ref()
        .and_then(|text| text.to_value().ok())
        .unwrap_or(Value::Null);
    json!({
        "approval": approval.id,
        "front": approval.front,
        "session": approval.session,
        "cell_id": approval.cell_id,
        "call_id": approval.call.to_string(),
        "tool": approval.tool,
        "input": input,
        "reason": approval.reason,
        "age_ms": u64::try_from(approval.age().as_millis()).unwrap_or(u64::MAX),
    })
}

fn refused(error: ApprovalError) -> Failure {
    match error {
        ApprovalError::State(error) => Failure::runtime(error.to_string()),
        other => Failure::usage(other.to_string()),
    }
}

/// Runs `code-mode approvals <action>` (blocking: it runs before any async runtime).
#[expect(clippy::print_stdout, reason = "the command's output is its stdout")]
pub fn run(action: Action) -> Result<(), Failure> {
    match action {
        Action::List {
            session,
            front,
            state,
        } => {
            let pending = book(&state)?
                .pending(front.as_deref(), session.as_deref())
                .map_err(|error| Failure::runtime(error.to_string()))?;
            for approval in &pending {
                println!("{}", listed(approval));
            }
        }
        Action::Approve { id, input, state } => {
            book(&state)?
                .decide(&id, &Decision::Approve { input }, None)
                .map_err(refused)?;
            println!("{}", json!({ "approval": id, "decision": "approved" }));
        }
        Action::Deny { id, message, state } => {
            book(&state)?
                .decide(&id, &Decision::Deny { message }, None)
                .map_err(refused)?;
            println!("{}", json!({ "approval": id, "decision": "denied" }));
        }
    }
    Ok(())
}
