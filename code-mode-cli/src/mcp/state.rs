//! `code-mode mcp --http --state-dir`: MCP sessions that outlive the server (docs/MCP.md,
//! "Restarts"). Each MCP session's `initialize` parameters, its code-mode session's stored
//! values and running cells go to the store through [`KeptSessions`], the host crate's one
//! owner of kept sessions (`mcp.sqlite3`, or Postgres); what
//! changed in a session is written before its `tools/call` answer goes out. A client that comes
//! back to a restarted server with its `Mcp-Session-Id` finds the session again: rmcp
//! replays its `initialize` from what is kept here ([`SessionStore`]), and the session's
//! first call takes its code-mode session back, running cells rebuilt at their next
//! `wait`; a call of the server's tools they were waiting on fails, or runs again when its
//! tool says `on_interrupt = "retry"`. Each session is kept with the [`Principal`] that
//! opened it, and [`McpState::may_use`] lets only that principal take it back.

use super::principal::{self, Principal};
use super::tasks::Tasks;
use crate::tools::{OnInterrupt, ToolSet};
use code_mode_host::{
    ApprovalGate, ApprovalWatch, Approvals, DurableSession, GateSite, KeptSessions,
};
use code_mode_internal::sync::lock;
use code_mode_protocol::{CodeModeSession, CodeModeSessionDelegate, SessionOptions, ToolError};
use code_mode_state::{AnswerRecord, SessionRecord, StateError, StoreLocation, StoreOptions};
use rmcp::model::InitializeRequestParams;
use rmcp::transport::streamable_http_server::session::{SessionState, SessionStore};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The database's name in the state directory (`mcp.sqlite3`).
const FRONT: &str = "mcp";

/// What a kept session's `options` hold: its `initialize` parameters, its owner and its
/// MCP tasks. Sessions kept before principals existed hold the parameters alone.
#[derive(serde::Serialize, serde::Deserialize)]
struct Kept {
    owner: Option<Principal>,
    initialize: serde_json::Value,
    /// Each read alone ([`Tasks::restore`]): one that cannot be read never costs the
    /// session its owner.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    tasks: Vec<serde_json::Value>,
}

impl Kept {
    /// The `options` a session is kept with.
    fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A kept session's `options`: `None` when they do not read as this version keeps
    /// them (a session whose owner cannot be read is nobody's to take). Only options
    /// without an `initialize` (kept before principals: the parameters alone) are read as
    /// ownerless.
    fn decode(options: &str) -> Option<Self> {
        let value: serde_json::Value = serde_json::from_str(options).ok()?;
        if value.get("initialize").is_none() {
            return Some(Kept {
                owner: None,
                initialize: value,
                tasks: Vec::new(),
            });
        }
        serde_json::from_value(value).ok()
    }
}

/// Whether a principal may use a session, as far as the state directory knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Use {
    /// It is the principal's (or was kept without an owner, and is now the principal's).
    Allowed,
    /// It belongs to another principal.
    Refused,
    /// No session is kept by that id.
    Unknown,
}

/// What an MCP session's handler gives the code-mode session it opens: who hears of its
/// calls that wait on a person, and the table its MCP tasks go to.
pub(crate) struct Attached<'a> {
    pub(crate) watch: Arc<dyn ApprovalWatch>,
    pub(crate) tasks: &'a Arc<Tasks>,
}

/// An MCP session of this process.
struct Live {
    /// Its `initialize` parameters, as JSON.
    init: String,
    /// The principal that opened it.
    owner: Option<Principal>,
    /// Its code-mode session, once its first call opened it.
    session: Option<Arc<dyn DurableSession>>,
    /// Its MCP tasks, once its first call opened it.
    tasks: Option<Arc<Tasks>>,
}

/// What the state directory keeps of the server's MCP sessions.
pub(crate) struct McpState {
    /// The store, and the sessions an earlier process kept that no client took back yet
    /// (held there by MCP session id, with the answers recorded for their cells).
    kept: Arc<KeptSessions>,
    /// This replica's name in the leases, once it advertised where it is reached.
    name: std::sync::OnceLock<String>,
    live: Mutex<HashMap<String, Live>>,
    /// Set when the server stops: what the stop does to the sessions is not kept.
    closed: AtomicBool,
    /// The calls that wait on a person (the same store's).
    approvals: Arc<Approvals>,
    /// Set when the server stops: the cells its sessions close then keep their approvals.
    stopping: Arc<AtomicBool>,
    /// Cancelled when the server stops (each session's gate has a child of it).
    ended: tokio_util::sync::CancellationToken,
}

impl McpState {
    /// Opens the state directory and reads what it keeps, bounded by `options`.
    pub(crate) fn open(
        location: &StoreLocation,
        options: StoreOptions,
    ) -> Result<Self, StateError> {
        let approvals = Approvals::open(location, &options)?;
        Ok(Self {
            approvals,
            stopping: Arc::default(),
            ended: tokio_util::sync::CancellationToken::new(),
            kept: Arc::new(KeptSessions::open(location, FRONT, options)?),
            name: std::sync::OnceLock::new(),
            live: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
        })
    }

    /// The calls that wait on a person, in the same store.
    pub(crate) fn approvals(&self) -> &Arc<Approvals> {
        &self.approvals
    }

    /// The runtime generation the earlier process reached.
    pub(crate) fn generations_before(&self) -> u64 {
        self.kept.generations_before()
    }

    /// The code-mode session of MCP session `id`: the one an earlier process kept (its
    /// running cells rebuilt at their next call; a call of the server's tools they were
    /// waiting on fails, since it died with that process, unless `tools` says it runs
    /// again), else a new one; its MCP tasks, kept with it, go back to `tasks`. `None` when
    /// the provider keeps no durable sessions (in process).
    pub(crate) fn open_session(
        &self,
        id: &str,
        open: impl FnOnce(
            Arc<dyn CodeModeSessionDelegate>,
            SessionOptions,
            code_mode_protocol::StoredValues,
        ) -> Option<Arc<dyn DurableSession>>,
        delegate: Arc<dyn CodeModeSessionDelegate>,
        options: SessionOptions,
        tools: &ToolSet,
        Attached { watch, tasks }: Attached<'_>,
    ) -> Option<Arc<dyn CodeModeSession>> {
        let held = self.kept.take(id);
        let stored = held
            .as_ref()
            .map(|held| held.record.state.stored.clone())
            .unwrap_or_default();
        // Calls that need an approval wait on a person behind the gate; the session's
        // principal is theirs to decide (the operator's through `code-mode approvals`).
        let gate = Arc::new(ApprovalGate::new(
            delegate,
            GateSite {
                approvals: Arc::clone(&self.approvals),
                front: FRONT.to_owned(),
                session: id.to_owned(),
                principal: principal::requester().map(|principal| principal.to_string()),
                watch,
                stopping: Arc::clone(&self.stopping),
                ended: self.ended.child_token(),
            },
        ));
        let session = open(
            Arc::clone(&gate) as Arc<dyn CodeModeSessionDelegate>,
            options,
            stored,
        )?;
        if let Some(held) = &held {
            let unanswered = held.restore(session.as_ref());
            tracing::info!(
                cells = held.record.state.cells.len(),
                "MCP session taken back from the state directory"
            );
            tracing::debug!(session = %id, "the MCP session taken back");
            // A call whose answer came before the restart got it; the others were calls of
            // the server's tools, which died with that process.
            for call in unanswered {
                let (gate, tools) = (Arc::clone(&gate), tools.clone());
                tokio::spawn(async move {
                    // One that waits on a person goes back behind the gate.
                    let Some(call) = gate.resume(call, |call, result| call.answer(result)).await
                    else {
                        return;
                    };
                    // A call that needed an approval (taken to be sent, it may have run)
                    // is never sent again, whatever its tool says.
                    if tools.on_interrupt(&call.call.tool_name) == OnInterrupt::Retry
                        && tools.approval(&call.call.tool_name).is_none()
                    {
                        // Its tool may run twice: it runs again, and its answer joins the
                        // cell's journal (written with the session before the next answer).
                        let result = tools
                            .answer(
                                call.call.clone(),
                                tokio_util::sync::CancellationToken::new(),
                            )
                            .await;
                        call.answer(result);
                    } else {
                        call.answer(Err(ToolError::new(
                            code_mode_protocol::texts::TOOL_LOST_IN_RESTART,
                        )));
                    }
                });
            }
        }
        let (owner, init) = match held.and_then(|held| Kept::decode(&held.record.options)) {
            Some(kept) => {
                tasks.restore(kept.tasks);
                (kept.owner, kept.initialize.to_string())
            }
            None => (None, String::new()),
        };
        let mut live = lock(&self.live);
        let entry = live.entry(id.to_owned()).or_insert(Live {
            init,
            owner,
            session: None,
            tasks: None,
        });
        entry.session = Some(Arc::clone(&session));
        entry.tasks = Some(Arc::clone(tasks));
        Some(session)
    }

    /// MCP session `id` ended (closed by its client, or idle past its timeout): it is
    /// deleted from the store (unless the server is stopping: then it is kept).
    pub(crate) fn forget(&self, id: &str) {
        if !self.closed.load(Ordering::SeqCst) {
            lock(&self.live).remove(id);
            self.kept.remove(id);
            let (approvals, id) = (Arc::clone(&self.approvals), id.to_owned());
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move { approvals.session_closed(FRONT, &id).await });
            }
        }
    }

    /// Whether `principal` may take back kept session `id`: one an earlier process of this
    /// directory kept, or, with a shared store, one whose server died and whose lease ran
    /// out (taken over here, and then kept here for the client's next request). A session
    /// kept without an owner (by a version before principals) becomes `principal`'s.
    /// A session taken over here for a principal that does not own it is let go at once
    /// (its lease ends), so that its owner's next request, on any replica, takes it.
    pub(crate) async fn may_use(&self, id: &str, principal: &Principal) -> Result<Use, StateError> {
        let taken_over = !self.kept.is_held(id);
        // A session another server kept (a replica on the same Postgres) is taken over
        // once that server's lease on it ran out, which a live server keeps renewing.
        if taken_over && !self.kept.take_over(id).await? {
            return Ok(Use::Unknown);
        }
        let owned = self.kept.with_held(id, |held| {
            let Some(mut kept) = Kept::decode(&held.record.options) else {
                tracing::warn!(session = %id, "a kept MCP session's options do not read; nobody may take it");
                return false;
            };
            match &kept.owner {
                Some(owner) => *owner == *principal,
                None => {
                    kept.owner = Some(principal.clone());
                    held.record.options = kept.encode();
                    true
                }
            }
        });
        match owned {
            None => Ok(Use::Unknown),
            Some(true) => Ok(Use::Allowed),
            Some(false) => {
                if taken_over {
                    self.kept.release(id).await;
                }
                Ok(Use::Refused)
            }
        }
    }

    /// Queues the record of an answer of the server's tools in MCP session `id`, before
    /// its cell gets it: written with the next write, or alone within milliseconds. A
    /// failure is logged; the answer then goes only with the session's next write.
    pub(crate) fn record_answer_soon(
        &self,
        id: &str,
        cell_id: &code_mode_protocol::CellId,
        call: code_mode_protocol::CallId,
        result: &Result<code_mode_protocol::JsonText, ToolError>,
    ) {
        // A session closed or expired meanwhile keeps nothing (its rows are gone).
        if self.closed.load(Ordering::SeqCst) || !lock(&self.live).contains_key(id) {
            return;
        }
        let answer = AnswerRecord {
            session: id.to_owned(),
            cell_id: cell_id.clone(),
            call,
            result: result.clone(),
        };
        self.kept.record_answer_soon(answer, |error| {
            tracing::warn!(%error, "recording a tool's answer failed; it is written with the session's next write");
        });
    }

    /// The live replica that holds session `id`, if another one does and said where.
    /// Whether this replica holds session `id` (kept, waiting for its client).
    pub(crate) fn holds(&self, id: &str) -> bool {
        self.kept.is_held(id)
    }

    pub(crate) async fn holder(&self, id: &str) -> Option<code_mode_state::Holder> {
        self.kept.holder(id).await
    }

    /// This replica's name in the leases, once it said where it is reached: a request
    /// forwarded here must name it.
    pub(crate) fn name(&self) -> Option<&str> {
        self.name.get().map(String::as_str)
    }

    /// Records where the other replicas reach this one.
    pub(crate) async fn advertise(&self, address: &str) {
        match self.kept.advertise(address).await {
            Ok(name) => {
                if let Some(name) = name {
                    let _ = self.name.set(name);
                }
                tracing::info!(
                    address,
                    "other replicas forward this one's sessions' requests here"
                );
            }
            Err(error) => {
                tracing::warn!(%error, "recording this replica's address failed: requests for its sessions that reach another replica wait for their lease")
            }
        }
    }

    /// The store's size and contents, for metrics.
    pub(crate) fn stats(&self) -> code_mode_state::StoreStats {
        self.kept.stats().unwrap_or_default()
    }

    /// No checkpoint after this one; every session this replica holds is let go (on a
    /// shared store the next replica asked for one takes it at once).
    pub(crate) async fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.stopping.store(true, Ordering::SeqCst);
        self.ended.cancel();
        self.kept.let_go_all().await;
    }

    /// Writes MCP session `id` as it is now, before a call of the server's tools it makes;
    /// refused once the server stops (the stop's effects are not kept, so the call would be
    /// made again after a restart).
    pub(crate) async fn persist_call(&self, id: &str, generations: u64) -> Result<(), String> {
        if self.closed.load(Ordering::SeqCst) {
            return Err("the server is stopping".to_owned());
        }
        self.persist(id, generations).await
    }

    /// Writes MCP session `id` as it is now; `generations` is the runtime generation the
    /// provider reached. A failure, once the keeper's patience is spent, is returned (and
    /// logged), and the store keeps what it had: what depends on the write must not go
    /// out.
    pub(crate) async fn persist(&self, id: &str, generations: u64) -> Result<(), String> {
        if self.closed.load(Ordering::SeqCst) {
            return Ok(());
        }
        let record = lock(&self.live).get(id).map(|live| SessionRecord {
            id: id.to_owned(),
            options: Kept {
                owner: live.owner.clone(),
                initialize: serde_json::from_str(&live.init).unwrap_or(serde_json::Value::Null),
                tasks: live
                    .tasks
                    .as_ref()
                    .map(|tasks| tasks.kept())
                    .unwrap_or_default(),
            }
            .encode(),
            state: live
                .session
                .as_ref()
                .map(|session| session.durable_state())
                .unwrap_or_default(),
        });
        self.kept
            .write(record.into_iter().collect(), Vec::new(), generations)
            .await
            .map_err(|error| error.to_string())
    }
}

/// rmcp's store of MCP sessions: it keeps each session's `initialize` parameters here
/// after the handshake, and asks for them when a request names a session this process
/// does not know.
#[async_trait::async_trait]
impl SessionStore for McpState {
    async fn load(
        &self,
        session_id: &str,
    ) -> Result<Option<SessionState>, Box<dyn std::error::Error + Send + Sync>> {
        // Only what `may_use` found for the request's principal (which the HTTP front asks
        // before rmcp sees a session id it does not know) is taken back.
        let init = self.kept.with_held(session_id, |held| {
            Kept::decode(&held.record.options).map(|kept| kept.initialize.to_string())
        });
        let Some(Some(init)) = init else {
            return Ok(None);
        };
        let params: InitializeRequestParams = serde_json::from_str(&init)?;
        Ok(Some(SessionState::new(params)))
    }

    async fn store(
        &self,
        session_id: &str,
        state: &SessionState,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let init = serde_json::to_string(&state.initialize_params)?;
        // rmcp stores a session in the request that opened it.
        let owner = principal::requester().ok_or("a session stored outside of a request")?;
        let known = lock(&self.live).contains_key(session_id);
        if !known {
            self.kept.admit()?;
        }
        lock(&self.live)
            .entry(session_id.to_owned())
            .or_insert(Live {
                init: String::new(),
                owner: None,
                session: None,
                tasks: None,
            });
        if let Some(live) = lock(&self.live).get_mut(session_id) {
            live.init = init;
            live.owner = Some(owner);
        }
        self.persist(session_id, 0).await?;
        Ok(())
    }

    async fn delete(
        &self,
        session_id: &str,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self.forget(session_id);
        if self.kept.is_held(session_id) {
            self.kept.remove(session_id);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Options kept before principals are ownerless (the first principal takes them);
    /// options this version wrote keep their owner; options that do not read as this
    /// version's (a `tasks` of another shape, a changed owner) are nobody's, never
    /// ownerless.
    #[test]
    fn kept_options_never_lose_their_owner_to_a_field_that_does_not_read() {
        let legacy = Kept::decode(r#"{"protocolVersion":"2025-06-18","capabilities":{}}"#)
            .expect("the parameters alone");
        assert_eq!(legacy.owner, None);
        assert_eq!(legacy.initialize["protocolVersion"], "2025-06-18");
        let owner = Principal::Token {
            name: "alice".to_owned(),
        };
        let kept = Kept {
            owner: Some(owner.clone()),
            initialize: serde_json::json!({"protocolVersion": "2025-11-25"}),
            tasks: vec![serde_json::json!({"cell": "1"})],
        };
        let read = Kept::decode(&kept.encode()).expect("this version's");
        assert_eq!(read.owner, Some(owner));
        assert_eq!(read.tasks.len(), 1);
        for unreadable in [
            r#"{"owner":{"token":{"name":"alice"}},"initialize":{},"tasks":5}"#,
            r#"{"owner":{"group":"admins"},"initialize":{}}"#,
            "not JSON",
        ] {
            assert!(Kept::decode(unreadable).is_none(), "{unreadable}");
        }
    }
}
