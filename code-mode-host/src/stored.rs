//! Sessions that keep themselves in a store, so that an agent core that restarts goes on
//! with them (CONTRACT §7, "Surviving a restart"). [`StoredProvider`] opens sessions on
//! [`Runtimes`] that write their state to a [`SessionStore`] by themselves:
//!
//! - before an `exec`, `wait`, `terminate` or `interrupt` returns, the session as it is
//!   then (stored values, running cells' journals) is in the store;
//! - before a nested call reaches the agent core's delegate, the call is in the store; the
//!   delegate's answer is recorded before the cell gets it.
//!
//! After a restart the agent core lists the kept sessions ([`StoredProvider::kept`]) and
//! resumes each by id with its delegate ([`StoredProvider::resume`]): running cells are
//! rebuilt by replay at their next call. A call that had a recorded answer gets it, and is
//! never sent again. A call that was in flight when the agent core stopped has no answer,
//! and no one knows whether it ran: the agent core says per call what happens
//! ([`Interrupted`]); nothing is sent again unless it says so.
//!
//! The store is reached through [`KeptSessions`], the one owner of kept sessions:
//! `code-mode-state`'s keeper, or the agent core's own through [`SessionStore`].

use crate::approvals::{ApprovalGate, ApprovalWatch, Approvals, GateSite, WaitingCalls};
use crate::hosted::RuntimeSession;
use crate::kept::KeptSessions;
use crate::runtimes::Runtimes;
use code_mode_protocol::approval::Decision;
use code_mode_protocol::{
    BoxFuture, CellId, CellResponse, CodeModeProvider, CodeModeSession, CodeModeSessionDelegate,
    DelegateLayer, ExecHooks, ExecRequest, JsonText, NestedToolCall, PendingOutcome, SessionError,
    SessionOptions, StartedCell, StartedPendingCell, StoredValues, ToolError, WaitRequest,
};
use code_mode_state::{
    AnswerRecord, Approval, ApprovalError, SessionRecord, StateError, StoreStats,
};
use std::sync::{Arc, OnceLock, Weak};
use tokio_util::sync::CancellationToken;

pub use crate::kept::SessionStore;

/// What happens to a nested call that was in flight when the agent core stopped: it has
/// no recorded answer, and no one knows whether it ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interrupted {
    /// The agent core knows its result (it may have kept it itself).
    Answer(Result<JsonText, ToolError>),
    /// The call fails with [`code_mode_protocol::texts::interrupted_call`], which the
    /// model reads: it may have had its effect.
    Fail,
    /// The call is sent to the delegate again (for a tool the agent core knows to be
    /// idempotent).
    Retry,
}

/// A provider whose sessions keep themselves in a store.
pub struct StoredProvider {
    runtimes: Runtimes,
    kept: Arc<KeptSessions>,
    /// Where calls that need an approval wait, and the front name they are kept under.
    approvals: Option<(Arc<Approvals>, String)>,
}

impl std::fmt::Debug for StoredProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredProvider")
            .field("runtimes", &self.runtimes)
            .field("kept", &self.kept)
            .finish_non_exhaustive()
    }
}

/// Why a stored session could not be opened or resumed.
#[derive(Debug, thiserror::Error)]
pub enum StoredError {
    #[error("no kept session `{0}` (it was resumed already, closed, expired, or never kept)")]
    NotKept(String),
    #[error("a session `{0}` is kept already: resume it, or open a new one under another id")]
    AlreadyKept(String),
    #[error("code-mode state could not be written: {0}")]
    State(#[from] StateError),
}

impl StoredProvider {
    /// Sessions on `runtimes` that keep themselves in `kept`'s store, whose held sessions
    /// are the ones to resume. Start `runtimes` at [`KeptSessions::generations_before`].
    pub fn new(runtimes: Runtimes, kept: Arc<KeptSessions>) -> Self {
        Self {
            runtimes,
            kept,
            approvals: None,
        }
    }

    /// Calls that need an approval ([`CodeModeSessionDelegate::approval`]) wait in
    /// `approvals` (the same store's, [`Approvals::open`]), kept under `front` (the name
    /// this agent core's sessions are listed under). Without it no delegate is asked.
    pub fn with_approvals(mut self, approvals: Arc<Approvals>, front: impl Into<String>) -> Self {
        self.approvals = Some((approvals, front.into()));
        self
    }

    /// The approvals of this provider's store, if it keeps them: list every waiting call
    /// ([`Approvals::pending`]) and decide any ([`Approvals::decide`]), whichever session.
    pub fn approvals(&self) -> Option<&Arc<Approvals>> {
        self.approvals.as_ref().map(|(approvals, _)| approvals)
    }

    /// The ids of the sessions an earlier process kept that were not resumed yet.
    pub fn kept(&self) -> Vec<String> {
        self.kept.held_ids()
    }

    /// The store's figures, if it keeps any.
    pub fn stats(&self) -> Option<StoreStats> {
        self.kept.stats()
    }

    /// At a clean stop of the agent core, after its sessions' last calls returned: every
    /// session it holds is let go, so that on a store processes share (Postgres) the next
    /// process asked for one takes it at once, not after its lease. Nothing is deleted.
    pub async fn let_go(&self) {
        self.kept.let_go_all().await;
    }

    /// A new session kept under `id`, written to the store before it is returned; refused
    /// (`StoredError::State`, the store full) past seven eighths of `max_bytes`.
    pub async fn open(
        &self,
        id: &str,
        delegate: Arc<dyn CodeModeSessionDelegate>,
        options: SessionOptions,
        stored_values: StoredValues,
    ) -> Result<Arc<StoredSession>, StoredError> {
        if self.kept.is_held(id) {
            return Err(StoredError::AlreadyKept(id.to_owned()));
        }
        // Past seven eighths of `max_bytes` a new session is refused, so that the sessions
        // kept already have room to go on.
        self.kept.admit()?;
        let session = self.start(id, delegate, options, stored_values);
        session.checkpoint().await?;
        Ok(session)
    }

    /// Takes back session `id` that an earlier process kept, with `delegate` for its
    /// calls. Its running cells are rebuilt at their next call; each call they wait on gets
    /// its recorded answer, else what `interrupted` says (asked once per call).
    pub async fn resume(
        &self,
        id: &str,
        delegate: Arc<dyn CodeModeSessionDelegate>,
        options: SessionOptions,
        interrupted: impl Fn(&NestedToolCall) -> Interrupted,
    ) -> Result<Arc<StoredSession>, StoredError> {
        let held = self
            .kept
            .take(id)
            .ok_or_else(|| StoredError::NotKept(id.to_owned()))?;
        let session = self.start(id, delegate, options, held.record.state.stored.clone());
        let unanswered = held.restore(session.inner.as_ref());
        session.checkpoint().await?;
        for call in unanswered {
            let Some(call) = session.resume_waiting(call).await else {
                continue;
            };
            match interrupted(&call.call) {
                Interrupted::Answer(result) => session.give(call, result).await,
                Interrupted::Fail => {
                    let error = ToolError::new(code_mode_protocol::texts::interrupted_call(
                        &call.call.tool_name,
                    ));
                    session.give(call, Err(error)).await;
                }
                Interrupted::Retry => {
                    let session = Arc::clone(&session);
                    tokio::spawn(async move {
                        let result = DelegateLayer::invoke_tool(
                            &*session.delegate,
                            call.call.clone(),
                            CancellationToken::new(),
                        )
                        .await;
                        call.answer(result);
                    });
                }
            }
        }
        Ok(session)
    }

    fn start(
        &self,
        id: &str,
        delegate: Arc<dyn CodeModeSessionDelegate>,
        options: SessionOptions,
        stored_values: StoredValues,
    ) -> Arc<StoredSession> {
        let waiting = Arc::new(WaitingCalls::default());
        let link = Arc::new(Link {
            id: id.to_owned(),
            kept: Arc::clone(&self.kept),
            runtimes: self.runtimes.clone(),
            session: OnceLock::new(),
            site: self.approvals.as_ref().map(|(approvals, front)| GateSite {
                approvals: Arc::clone(approvals),
                front: front.clone(),
                session: id.to_owned(),
                principal: None,
                watch: Arc::clone(&waiting) as Arc<dyn ApprovalWatch>,
                stopping: Arc::default(),
                ended: CancellationToken::new(),
            }),
            waiting,
        });
        // The store first: a call is in the session's journal before it waits on a person,
        // so that after a restart it is one of the calls its cell still waits on.
        let storing = Arc::new(StoringDelegate {
            inner: link.gated(Arc::clone(&delegate)),
            keeper: Arc::clone(&link),
        });
        let inner = Arc::new(self.runtimes.open_session_with_values(
            Arc::clone(&storing) as Arc<dyn CodeModeSessionDelegate>,
            options,
            stored_values,
        ));
        let _ = link.session.set(Arc::downgrade(&inner));
        Arc::new(StoredSession {
            link,
            inner,
            delegate: storing,
            agent: delegate,
        })
    }
}

/// What a stored session and its delegates share: where to write, and the session.
struct Link {
    id: String,
    kept: Arc<KeptSessions>,
    runtimes: Runtimes,
    session: OnceLock<Weak<RuntimeSession>>,
    /// Where the session's calls wait on a person, when the provider keeps approvals.
    site: Option<GateSite>,
    /// Which of its calls wait here now, and the observations they end.
    waiting: Arc<WaitingCalls>,
}

impl Link {
    /// `delegate` behind the approval gate, when the provider keeps approvals.
    fn gated(
        &self,
        delegate: Arc<dyn CodeModeSessionDelegate>,
    ) -> Arc<dyn CodeModeSessionDelegate> {
        match &self.site {
            Some(site) => Arc::new(ApprovalGate::new(delegate, site.clone())),
            None => delegate,
        }
    }

    /// Writes the session as it is now.
    async fn checkpoint(&self) -> Result<(), StateError> {
        let Some(session) = self.session.get().and_then(Weak::upgrade) else {
            return Ok(());
        };
        let record = SessionRecord {
            id: self.id.clone(),
            options: String::new(),
            state: session.durable_state(),
        };
        self.kept
            .write(vec![record], Vec::new(), self.runtimes.generations_used())
            .await
    }

    /// Records `result` as the answer to `call`.
    async fn record(
        &self,
        call: &NestedToolCall,
        result: &Result<JsonText, ToolError>,
    ) -> Result<(), StateError> {
        self.kept
            .record_answer(AnswerRecord {
                session: self.id.clone(),
                cell_id: call.cell_id.clone(),
                call: call.call_id,
                result: result.clone(),
            })
            .await
    }
}

/// The agent core's delegate, behind the store: a call is written before the delegate
/// sees it, and its answer recorded before the cell gets it.
struct StoringDelegate {
    inner: Arc<dyn CodeModeSessionDelegate>,
    keeper: Arc<Link>,
}

/// The error a cell gets for a call the store could not keep.
fn unkept(what: &str, error: &StateError) -> ToolError {
    ToolError::new(code_mode_protocol::texts::state_unwritten(what, error))
}

impl DelegateLayer for StoringDelegate {
    fn inner(&self) -> &dyn CodeModeSessionDelegate {
        &*self.inner
    }

    fn invoke_tool(
        &self,
        call: NestedToolCall,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<JsonText, ToolError>> {
        Box::pin(async move {
            // The call is in the store before the agent core sees it: after a crash, it is
            // known to have been asked (and its answer, once recorded, to have come).
            if let Err(error) = self.keeper.checkpoint().await {
                return Err(unkept("the call was not asked", &error));
            }
            let result = self.inner.invoke_tool(call.clone(), cancel.clone()).await;
            if cancel.is_cancelled() {
                // Nobody wants it (the cell ended, or the session shut down and is kept):
                // not kept, so that a later process asks again what is still unanswered.
                return result;
            }
            match self.keeper.record(&call, &result).await {
                Ok(()) => result,
                Err(error) => Err(unkept("the tool ran, its answer was not kept", &error)),
            }
        })
    }
}

/// A session that keeps itself in a store: every call returns once what it changed is
/// there. Its calls are those of [`CodeModeSession`].
pub struct StoredSession {
    link: Arc<Link>,
    inner: Arc<RuntimeSession>,
    delegate: Arc<StoringDelegate>,
    /// The agent core's delegate, behind neither the store nor the gate.
    agent: Arc<dyn CodeModeSessionDelegate>,
}

impl std::fmt::Debug for StoredSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredSession")
            .field("id", &self.link.id)
            .finish_non_exhaustive()
    }
}

impl StoredSession {
    /// The id it is kept under.
    pub fn id(&self) -> &str {
        &self.link.id
    }

    /// The runtime session underneath (where its cells run, for instance).
    pub fn runtime_session(&self) -> &Arc<RuntimeSession> {
        &self.inner
    }

    /// Writes the session as it is now.
    async fn checkpoint(&self) -> Result<(), StateError> {
        self.link.checkpoint().await
    }

    /// Records `result` for a restored call, then gives it to its cell.
    async fn give(&self, call: crate::RestoredCall, result: Result<JsonText, ToolError>) {
        let result = match self.link.record(&call.call, &result).await {
            Ok(()) => result,
            Err(error) => Err(unkept("the answer was not kept", &error)),
        };
        call.answer(result);
    }

    /// `outcome` once the session's changes are in the store; the store's error instead
    /// when they could not be written (what depends on them does not go out).
    async fn kept<T>(&self, outcome: Result<T, SessionError>) -> Result<T, SessionError> {
        let value = outcome?;
        self.checkpoint().await.map_err(|error| {
            SessionError::Runtime(format!("code-mode state could not be written: {error}").into())
        })?;
        Ok(value)
    }

    /// Closes the session and deletes it from the store (its approvals with it).
    pub async fn close(&self) {
        if let Some(site) = &self.link.site {
            site.ended.cancel();
        }
        self.inner.shutdown().await;
        self.link.kept.remove(&self.link.id);
        if let Some(site) = &self.link.site {
            site.approvals
                .session_closed(&site.front, &site.session)
                .await;
        }
    }

    /// This session's calls that wait on a person, oldest first (empty when its provider
    /// keeps no approvals).
    pub async fn pending_approvals(&self) -> Result<Vec<Approval>, StateError> {
        match &self.link.site {
            Some(site) => {
                site.approvals
                    .pending(Some(&site.front), Some(&site.session))
                    .await
            }
            None => Ok(Vec::new()),
        }
    }

    /// Approves this session's waiting call `id`, with `input` (JSON text) sent instead
    /// of the cell's when given; it then goes to the delegate, once.
    pub async fn approve(
        &self,
        id: &str,
        input: Option<String>,
    ) -> Result<Approval, ApprovalError> {
        self.decide(id, Decision::Approve { input }).await
    }

    /// Denies this session's waiting call `id`: it never reaches the delegate, and its
    /// promise rejects with a text that carries `message`.
    pub async fn deny(&self, id: &str, message: &str) -> Result<Approval, ApprovalError> {
        self.decide(
            id,
            Decision::Deny {
                message: message.to_owned(),
            },
        )
        .await
    }

    async fn decide(&self, id: &str, decision: Decision) -> Result<Approval, ApprovalError> {
        let not_waiting = || ApprovalError::NotWaiting(id.to_owned());
        let site = self.link.site.as_ref().ok_or_else(not_waiting)?;
        // Only this session's: an id of another is not waiting, as far as it can tell.
        match site.approvals.get(id).await? {
            Some(found) if found.front == site.front && found.session == site.session => {}
            _ => return Err(not_waiting()),
        }
        let decided = site.approvals.decide(id, decision, None).await?;
        // Decided, the call no longer waits: an observation of its cell that begins now
        // is not ended at once by it (its gate says so too, a moment later).
        self.link.waiting.settled(&decided);
        Ok(decided)
    }

    /// A restored call that waits on a person (or needs one and was not asked yet) goes
    /// back through the gate, its answer recorded before its cell gets it; `Some(call)`
    /// when it does not, for the interrupt policy.
    async fn resume_waiting(
        self: &Arc<Self>,
        call: crate::RestoredCall,
    ) -> Option<crate::RestoredCall> {
        let Some(site) = &self.link.site else {
            return Some(call);
        };
        let gate = Arc::new(ApprovalGate::new(Arc::clone(&self.agent), site.clone()));
        let session = Arc::clone(self);
        gate.resume(call, move |call, result| {
            tokio::spawn(async move { session.give(call, result).await });
        })
        .await
    }
}

impl CodeModeSession for StoredSession {
    fn execute_with(
        &self,
        request: ExecRequest,
        mut hooks: ExecHooks,
    ) -> BoxFuture<'_, Result<StartedCell, SessionError>> {
        if let Some(delegate) = hooks.delegate.take() {
            hooks.delegate = Some(Arc::new(StoringDelegate {
                inner: self.link.gated(delegate),
                keeper: Arc::clone(&self.link),
            }));
        }
        // The observation ends when one of its cell's calls starts to wait on a person.
        let preempt = hooks
            .preempt
            .as_ref()
            .map_or_else(CancellationToken::new, CancellationToken::child_token);
        hooks.preempt = Some(preempt.clone());
        let earlier = hooks.admitted.take();
        let waiting = Arc::clone(&self.link.waiting);
        hooks.admitted = Some(Arc::new(move |cell_id: &CellId| {
            waiting.observe(cell_id, preempt.clone());
            if let Some(earlier) = &earlier {
                earlier(cell_id);
            }
        }));
        Box::pin(async move {
            let outcome = self.inner.execute_with(request, hooks).await;
            let outcome = outcome.map(|mut started| {
                started.initial_response = self.link.waiting.ended(started.initial_response);
                started
            });
            self.kept(outcome).await
        })
    }

    fn wait_with(
        &self,
        request: WaitRequest,
        preempt: Option<CancellationToken>,
    ) -> BoxFuture<'_, Result<CellResponse, SessionError>> {
        let preempt = preempt
            .as_ref()
            .map_or_else(CancellationToken::new, CancellationToken::child_token);
        self.link.waiting.observe(&request.cell_id, preempt.clone());
        Box::pin(async move {
            let outcome = self.inner.wait_with(request, Some(preempt)).await;
            let outcome = outcome.map(|response| self.link.waiting.ended(response));
            self.kept(outcome).await
        })
    }

    fn interrupt(&self) -> BoxFuture<'_, Result<Vec<CellId>, SessionError>> {
        Box::pin(async move {
            let outcome = self.inner.interrupt().await;
            self.kept(outcome).await
        })
    }

    fn terminate(&self, cell_id: CellId) -> BoxFuture<'_, Result<CellResponse, SessionError>> {
        Box::pin(async move {
            let outcome = self.inner.terminate(cell_id).await;
            self.kept(outcome).await
        })
    }

    fn execute_to_pending(
        &self,
        request: ExecRequest,
    ) -> BoxFuture<'_, Result<StartedPendingCell, SessionError>> {
        Box::pin(async move {
            let outcome = self.inner.execute_to_pending(request).await;
            self.kept(outcome).await
        })
    }

    fn wait_to_pending(
        &self,
        cell_id: CellId,
    ) -> BoxFuture<'_, Result<PendingOutcome, SessionError>> {
        Box::pin(async move {
            let outcome = self.inner.wait_to_pending(cell_id).await;
            self.kept(outcome).await
        })
    }

    /// Shuts the session down in this process; it stays in the store (a later process
    /// resumes it), with the approvals its cells wait on. [`StoredSession::close`] deletes
    /// it.
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        if let Some(site) = &self.link.site {
            site.stopping
                .store(true, std::sync::atomic::Ordering::SeqCst);
            site.ended.cancel();
        }
        self.inner.shutdown()
    }

    fn stored_values(&self) -> StoredValues {
        self.inner.stored_values()
    }
}
