//! `serve --jsonl` with a state store: calls that wait on a person (issue 86,
//! docs/jsonl.md, "Approvals"). A call of a tool that needs an approval (the driver's own
//! with `approval = "always"` in its tools file, a client's tool given with `"approval":
//! "always"`) is kept in the store's approvals book and announced (`approval_required`)
//! instead of being made; the observation of its cell ends with the line the model reads.
//! The client lists (`list_approvals`), approves (`approve`, optionally with an edited
//! `input`) or denies (`deny`, with a `message`) the approvals of its own open sessions;
//! an operator does the same with `code-mode approvals` against the store. A restarted
//! driver puts a resumed session's waiting calls back behind the gate.

use super::{ErrorReply, Out, params};
use code_mode_host::{
    ApprovalGate, ApprovalWatch, Approvals, GateSite, RestoredCall, WaitingCalls,
};
use code_mode_internal::sync::lock;
use code_mode_protocol::approval::{ApprovalNeed, Decision};
use code_mode_protocol::{CellId, CellResponse, CodeModeSessionDelegate};
use code_mode_state::{Approval, ApprovalError, ApprovalState, StateError};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// The front name approvals are kept under (the store's `jsonl`).
const FRONT: &str = "jsonl";

/// A session's place behind the gate.
struct Gated {
    site: GateSite,
    waiting: Arc<WaitingCalls>,
    /// The session's delegate, in front of no gate (what an approved call goes to).
    inner: Arc<dyn CodeModeSessionDelegate>,
    /// The client's tools that need an approval, as its `exec`s gave them.
    needs: Arc<Mutex<HashMap<String, ApprovalNeed>>>,
}

/// The driver's approvals: the store's book and each open session's gate.
pub(super) struct JsonlApprovals {
    approvals: Arc<Approvals>,
    sessions: Mutex<HashMap<String, Gated>>,
    /// Set when the driver stops: its sessions' cells close then, kept with their
    /// approvals for the next process.
    stopping: Arc<AtomicBool>,
    /// Cancelled when the driver stops; each session's own (a child) when it shuts down.
    ended: CancellationToken,
}

/// Tells the client a call waits (`approval_required`), and ends its cell's observation.
struct JsonlWatch {
    out: Out,
    waiting: Arc<WaitingCalls>,
}

impl ApprovalWatch for JsonlWatch {
    fn waiting(&self, approval: &Approval) {
        self.waiting.waiting(approval);
        self.out.send(approval_json(approval, "approval_required"));
    }

    fn settled(&self, approval: &Approval) {
        self.waiting.settled(approval);
    }
}

/// An approval as the client reads it: an event (`event` given) or a listed one (the form
/// `code-mode approvals list` prints).
fn approval_json(approval: &Approval, event: &str) -> Value {
    let mut value = crate::approvals::listed(approval);
    if !event.is_empty() {
        value["event"] = json!(event);
    }
    value
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    session: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApproveParams {
    approval: String,
    input: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DenyParams {
    approval: String,
    message: String,
}

fn refused(error: ApprovalError) -> ErrorReply {
    match error {
        ApprovalError::NotWaiting(_) => ErrorReply::new("unknown_approval", error.to_string()),
        ApprovalError::Expired(_) => ErrorReply::new("approval_expired", error.to_string()),
        ApprovalError::BadInput { .. } => ErrorReply::new("invalid_params", error.to_string()),
        ApprovalError::State(error) => state_refused(&error),
    }
}

fn state_refused(error: &StateError) -> ErrorReply {
    ErrorReply::new("state_error", error.to_string())
}

impl JsonlApprovals {
    pub(super) fn new(approvals: Arc<Approvals>) -> Self {
        Self {
            approvals,
            sessions: Mutex::new(HashMap::new()),
            stopping: Arc::default(),
            ended: CancellationToken::new(),
        }
    }

    /// Session `session`'s delegate behind the gate; `needs` is where its `exec`s' tools
    /// say which need an approval.
    pub(super) fn gate(
        &self,
        session: &str,
        delegate: Arc<dyn CodeModeSessionDelegate>,
        needs: Arc<Mutex<HashMap<String, ApprovalNeed>>>,
        out: &Out,
    ) -> Arc<dyn CodeModeSessionDelegate> {
        let waiting = Arc::new(WaitingCalls::default());
        let site = GateSite {
            approvals: Arc::clone(&self.approvals),
            front: FRONT.to_owned(),
            session: session.to_owned(),
            principal: None,
            watch: Arc::new(JsonlWatch {
                out: out.clone(),
                waiting: Arc::clone(&waiting),
            }),
            stopping: Arc::clone(&self.stopping),
            ended: self.ended.child_token(),
        };
        let gate = Arc::new(ApprovalGate::new(Arc::clone(&delegate), site.clone()));
        lock(&self.sessions).insert(
            session.to_owned(),
            Gated {
                site,
                waiting,
                inner: delegate,
                needs,
            },
        );
        gate
    }

    /// An `exec`'s tools: which of the client's need an approval from now on; all of
    /// them, as they are then (to be kept with the session).
    pub(super) fn note_tools(
        &self,
        session: &str,
        tools: impl IntoIterator<Item = (String, Option<ApprovalNeed>)>,
    ) -> Option<HashMap<String, ApprovalNeed>> {
        let sessions = lock(&self.sessions);
        let gated = sessions.get(session)?;
        let mut needs = lock(&gated.needs);
        for (name, need) in tools {
            match need {
                Some(need) => needs.insert(name, need),
                None => needs.remove(&name),
            };
        }
        Some(needs.clone())
    }

    /// An observation of a cell of `session` begins: `preempt` ends it when one of the
    /// cell's calls waits (at once, if one does already).
    pub(super) fn observe(&self, session: &str, cell_id: &CellId, preempt: CancellationToken) {
        if let Some(gated) = lock(&self.sessions).get(session) {
            gated.waiting.observe(cell_id, preempt);
        }
    }

    /// An observation of a cell of `session` ended with `response`: the lines of its
    /// waiting calls join it.
    pub(super) fn ended(&self, session: &str, response: CellResponse) -> CellResponse {
        let waiting = lock(&self.sessions)
            .get(session)
            .map(|gated| Arc::clone(&gated.waiting));
        match waiting {
            Some(waiting) => waiting.ended(response),
            None => response,
        }
    }

    /// The driver stops: the sessions it keeps keep their cells' approvals.
    pub(super) fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.ended.cancel();
    }

    /// Session `session` was shut down (its approvals went with it) or its driver stops.
    pub(super) async fn closed(&self, session: &str, delete: bool) {
        if let Some(gated) = lock(&self.sessions).remove(session) {
            gated.site.ended.cancel();
        }
        if delete {
            self.approvals.session_closed(FRONT, session).await;
        }
    }

    /// `list_approvals`: the calls of this client's open sessions (or of one) that wait.
    pub(super) async fn list(&self, given: Value) -> Result<Value, ErrorReply> {
        let given: ListParams = params(given)?;
        let pending = self
            .approvals
            .pending(Some(FRONT), given.session.as_deref())
            .await
            .map_err(|error| state_refused(&error))?;
        let open = lock(&self.sessions);
        let listed: Vec<Value> = pending
            .iter()
            .filter(|approval| open.contains_key(&approval.session))
            .map(|approval| approval_json(approval, ""))
            .collect();
        Ok(json!({ "approvals": listed }))
    }

    /// `approve` and `deny`: only an approval of a session open here.
    pub(super) async fn decide(&self, method: &str, given: Value) -> Result<Value, ErrorReply> {
        let (id, decision) = if method == "approve" {
            let given: ApproveParams = params(given)?;
            let input = given.input.map(|value| value.to_string());
            (given.approval, Decision::Approve { input })
        } else {
            let given: DenyParams = params(given)?;
            (
                given.approval,
                Decision::Deny {
                    message: given.message,
                },
            )
        };
        let unknown = || refused(ApprovalError::NotWaiting(id.clone()));
        let found = self
            .approvals
            .get(&id)
            .await
            .map_err(|error| state_refused(&error))?
            .ok_or_else(unknown)?;
        if found.front != FRONT || !lock(&self.sessions).contains_key(&found.session) {
            return Err(unknown());
        }
        let decided = self
            .approvals
            .decide(&id, decision, None)
            .await
            .map_err(refused)?;
        let word = match decided.state {
            ApprovalState::Denied { .. } | ApprovalState::Told { .. } => "denied",
            _ => "approved",
        };
        Ok(json!({ "approval": id, "decision": word }))
    }

    /// A call of a resumed session's cell that the restart cut short: back behind the
    /// gate when it waits on a person (`None`), else returned for the driver's usual
    /// restart policy ([`ApprovalGate::resume`]).
    pub(super) async fn restore(
        &self,
        session: &str,
        restored: RestoredCall,
    ) -> Option<RestoredCall> {
        let gate = {
            let sessions = lock(&self.sessions);
            let Some(gated) = sessions.get(session) else {
                return Some(restored);
            };
            Arc::new(ApprovalGate::new(
                Arc::clone(&gated.inner),
                gated.site.clone(),
            ))
        };
        gate.resume(restored, |call, result| call.answer(result))
            .await
    }
}
