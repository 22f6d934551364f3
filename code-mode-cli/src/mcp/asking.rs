//! A call that waits on a person, put to the MCP client's user (issue 86): where the client
//! declared form elicitation, the server asks it (`elicitation/create`) whether to approve
//! the call, with the call's tool, reason and input; `approve: true` approves it (with
//! `input`, edited JSON, when given), `approve: false` or a decline denies it (with
//! `message`), and a cancel, a client that cannot ask or an error leaves it waiting for the
//! operator (`code-mode approvals`). Every call still ends its cell's observation with the
//! line the model reads ([`WaitingCalls`]). A client that declared MCP Tasks gets the same
//! form ([`form`], [`decision`]) as its task's input request instead.

use code_mode_host::{ApprovalWatch, Approvals, WaitingCalls};
use code_mode_protocol::approval::Decision;
use code_mode_state::Approval;
use rmcp::RoleServer;
use rmcp::model::{ElicitRequestParams, ElicitResult, ElicitationAction, ElicitationSchema};
use rmcp::service::{ElicitationMode, Peer};
use serde_json::Value;
use std::sync::Arc;

/// The message of a denial the user gave without one.
const DECLINED: &str = "declined by the user";

/// The watch of an MCP session's calls that wait on a person.
pub(super) struct Asking {
    pub(super) waiting: Arc<WaitingCalls>,
    /// The MCP client's peer, if its connection lives and made a request.
    pub(super) peer: Box<dyn Fn() -> Option<Peer<RoleServer>> + Send + Sync>,
    pub(super) approvals: Arc<Approvals>,
}

impl ApprovalWatch for Asking {
    fn waiting(&self, approval: &Approval) {
        self.waiting.waiting(approval);
        let Some(peer) = (self.peer)() else {
            return;
        };
        // A client that declared MCP Tasks is asked through its task's `input_required`
        // ([`super::tasks`]), not here.
        let tasks = peer
            .peer_info()
            .is_some_and(|info| info.capabilities.supports_tasks());
        if tasks
            || !peer
                .supported_elicitation_modes()
                .contains(&ElicitationMode::Form)
        {
            return;
        }
        tokio::spawn(ask(peer, Arc::clone(&self.approvals), approval.clone()));
    }

    fn settled(&self, approval: &Approval) {
        self.waiting.settled(approval);
    }
}

/// What the user is asked: the call, its reason and its input.
fn question(approval: &Approval) -> String {
    let reason = approval
        .reason
        .as_deref()
        .map(|reason| format!(" ({reason})"))
        .unwrap_or_default();
    let input = approval
        .input
        .as_ref()
        .map_or("no input", |input| input.as_str());
    format!(
        "A script wants to call `{}`{reason} with this input: {input}. Approve it? (You may give an edited input as JSON; a denial may say why.)",
        approval.tool
    )
}

/// The form that asks about `approval`: the question, and a schema with `approve`, and
/// optionally the edited `input` and a denial's `message`. `None` only if the schema
/// could not be built.
pub(super) fn form(approval: &Approval) -> Option<ElicitRequestParams> {
    let schema = ElicitationSchema::builder()
        .required_bool("approve")
        .optional_string("input")
        .optional_string("message")
        .build();
    let schema = match schema {
        Ok(schema) => schema,
        Err(error) => {
            tracing::error!(%error, "the approval question's schema");
            return None;
        }
    };
    Some(ElicitRequestParams::FormElicitationParams {
        meta: None,
        message: question(approval),
        requested_schema: schema,
    })
}

/// What the user's answer to [`form`] decides: an approval (with the edited input, if
/// given), a denial (with their message, or [`DECLINED`]), or nothing when they dismissed
/// the question (the operator decides).
pub(super) fn decision(answer: ElicitResult) -> Option<Decision> {
    let content = answer.content.unwrap_or(Value::Null);
    let text = |name: &str| {
        content
            .get(name)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|text| !text.is_empty())
            .map(str::to_owned)
    };
    match answer.action {
        ElicitationAction::Accept if content.get("approve") == Some(&Value::Bool(true)) => {
            Some(Decision::Approve {
                input: text("input"),
            })
        }
        ElicitationAction::Accept | ElicitationAction::Decline => Some(Decision::Deny {
            message: text("message").unwrap_or_else(|| DECLINED.to_owned()),
        }),
        // Dismissed (or an action this version does not know).
        _ => None,
    }
}

/// Asks the client's user about `approval` and decides it as they say.
async fn ask(peer: Peer<RoleServer>, approvals: Arc<Approvals>, approval: Approval) {
    let Some(form) = form(&approval) else {
        return;
    };
    let answer = match peer.create_elicitation(form).await {
        Ok(answer) => answer,
        Err(error) => {
            tracing::debug!(%error, "the client did not answer the approval question; the call waits for the operator");
            return;
        }
    };
    let Some(decision) = decision(answer) else {
        return;
    };
    if let Err(error) = approvals
        .decide(&approval.id, decision, approval.principal.as_deref())
        .await
    {
        tracing::warn!(%error, "the user's answer to an approval question was not taken");
    }
}
