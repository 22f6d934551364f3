//! Calls that wait on a person (issue 86): a process's [`Approvals`] (the store's book,
//! and this process's calls that wait on it) and the [`ApprovalGate`], the delegate layer
//! that keeps a call that needs an approval from its delegate until a person decides.
//!
//! A call whose delegate says it needs an approval
//! ([`code_mode_protocol::CodeModeSessionDelegate::approval`]) is kept in the book as
//! pending, with its exact input, before anything else happens to it; its cell's promise
//! stays pending (the cell runs on, and hibernates when it has nothing else to do). Any
//! process that opens the same store decides it ([`Approvals::decide`]): this process's
//! decisions reach the waiting call at once, another's within [`POLL_EVERY`]. An approved
//! call is taken to be sent in one conditional update of the book (so it is sent by one
//! process, once), checked against the digest of the input approved, and only then goes
//! to the delegate, with the input approved (edited or not). A denied call never reaches
//! the delegate: its promise rejects with the approver's message.

use code_mode_internal::sync::lock;
use code_mode_protocol::approval::{ApprovalNeed, Decision, input_digest};
use code_mode_protocol::texts;
use code_mode_protocol::{
    BoxFuture, CellId, CellResponse, CodeModeSessionDelegate, ContentItem, DelegateLayer, JsonText,
    NestedToolCall, ToolError,
};
use code_mode_state::{
    Approval, ApprovalBook, ApprovalError, ApprovalRequest, ApprovalState, StateError,
    StoreLocation, StoreOptions,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// How often a process with calls waiting looks for decisions another process took.
pub const POLL_EVERY: Duration = Duration::from_millis(25);

/// How far apart the clocks of the processes that decide may be, for the decisions a look
/// reads (a decision is stamped with its decider's clock).
const DECIDERS_CLOCK_MARGIN_MS: i64 = 5_000;

/// Milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

/// What a waiting call learns.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Decided {
    Approved {
        input: Option<String>,
        digest: String,
    },
    Denied(String),
}

impl Decided {
    fn of(approval: &Approval) -> Option<Self> {
        match &approval.state {
            ApprovalState::Approved { input, digest } => Some(Self::Approved {
                input: input.clone(),
                digest: digest.clone(),
            }),
            ApprovalState::Denied { message } | ApprovalState::Told { message } => {
                Some(Self::Denied(message.clone()))
            }
            ApprovalState::Pending | ApprovalState::Sending { .. } => None,
        }
    }
}

/// A process's approvals: the store's book, and which of its calls wait here.
pub struct Approvals {
    book: Arc<ApprovalBook>,
    waiters: Mutex<HashMap<String, oneshot::Sender<Decided>>>,
    polling: AtomicBool,
}

impl std::fmt::Debug for Approvals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Approvals")
            .field("book", &self.book)
            .field("waiting", &lock(&self.waiters).len())
            .finish_non_exhaustive()
    }
}

impl Approvals {
    /// The approvals of the store at `location` (`options`: its time to live, and for
    /// Postgres its CA and deployment). Blocks while it connects, on a thread of its own
    /// (the Postgres client must not run on an async runtime's thread).
    pub fn open(location: &StoreLocation, options: &StoreOptions) -> Result<Arc<Self>, StateError> {
        let book = std::thread::scope(|scope| {
            match scope.spawn(|| ApprovalBook::open(location, options)).join() {
                Ok(opened) => opened,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })?;
        Ok(Self::over(book))
    }

    /// The approvals of `book`.
    pub fn over(book: ApprovalBook) -> Arc<Self> {
        Arc::new(Self {
            book: Arc::new(book),
            waiters: Mutex::new(HashMap::new()),
            polling: AtomicBool::new(false),
        })
    }

    /// Where the book is.
    pub fn describe(&self) -> &str {
        self.book.describe()
    }

    /// Runs `work` on the book off the async threads (the book blocks).
    async fn on_book<T: Send + 'static>(
        &self,
        work: impl FnOnce(&ApprovalBook) -> T + Send + 'static,
    ) -> T {
        let book = Arc::clone(&self.book);
        match tokio::task::spawn_blocking(move || work(&book)).await {
            Ok(value) => value,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            // The runtime shuts down: nothing waits for this any more.
            Err(_) => std::future::pending().await,
        }
    }

    /// The calls waiting on a person, oldest first: every front's, or `front`'s, or one
    /// session's of it.
    pub async fn pending(
        &self,
        front: Option<&str>,
        session: Option<&str>,
    ) -> Result<Vec<Approval>, StateError> {
        let (front, session) = (front.map(str::to_owned), session.map(str::to_owned));
        self.on_book(move |book| book.pending(front.as_deref(), session.as_deref()))
            .await
    }

    /// Approval `id` in whatever state it is, if the book has it.
    pub async fn get(&self, id: &str) -> Result<Option<Approval>, StateError> {
        let id = id.to_owned();
        self.on_book(move |book| book.get(&id)).await
    }

    /// Decides approval `id`, once (see [`ApprovalBook::decide`]; `principal`: refused
    /// unless its session is theirs). A call of this process that waits on it learns at
    /// once; one of another process at its next look.
    pub async fn decide(
        &self,
        id: &str,
        decision: Decision,
        principal: Option<&str>,
    ) -> Result<Approval, ApprovalError> {
        let (key, principal) = (id.to_owned(), principal.map(str::to_owned));
        let decided = self
            .on_book(move |book| book.decide(&key, &decision, principal.as_deref()))
            .await?;
        if let Some(told) = Decided::of(&decided) {
            self.deliver(id, told);
        }
        Ok(decided)
    }

    /// Hands `decided` to the call of this process that waits on approval `id`, if any.
    fn deliver(&self, id: &str, decided: Decided) {
        if let Some(waiter) = lock(&self.waiters).remove(id) {
            let _ = waiter.send(decided);
        }
    }

    /// Keeps `request` (or finds it kept), then waits for its decision: the approval as
    /// kept, and what was decided (at once when it was decided already).
    async fn wait(
        self: &Arc<Self>,
        request: ApprovalRequest,
        kept: impl FnOnce(&Approval),
    ) -> Result<(Approval, Option<Decided>), StateError> {
        let (tool, input) = (request.tool.clone(), request.input.clone());
        let approval = self.on_book(move |book| book.request(&request)).await?;
        // A row kept for another call under this call's number (a rebuilt cell that went
        // another way) is not this call's: nothing is decided for it.
        if approval.tool != tool || approval.input != input {
            return Ok((approval, None));
        }
        if approval.state != ApprovalState::Pending {
            let decided = Decided::of(&approval);
            return Ok((approval, decided));
        }
        let (sender, receiver) = oneshot::channel();
        lock(&self.waiters).insert(approval.id.clone(), sender);
        kept(&approval);
        self.poll();
        let decided = receiver.await.ok();
        Ok((approval, decided))
    }

    /// Stops waiting on approval `id` here (its cell no longer wants the answer).
    fn forget(&self, id: &str) {
        lock(&self.waiters).remove(id);
    }

    /// Starts looking for decisions other processes take, unless it looks already; it
    /// stops when no call waits here.
    fn poll(self: &Arc<Self>) {
        if self.polling.swap(true, Ordering::SeqCst) {
            return;
        }
        let approvals = Arc::clone(self);
        tokio::spawn(async move {
            // Each look reads the rows decided since the last one began, less a margin for
            // the clocks of the processes that decide; a row decided before its call began
            // to wait here was found when the call asked. Expiry every 40th look.
            let mut since = now_ms().saturating_sub(DECIDERS_CLOCK_MARGIN_MS);
            for round in 0_u64.. {
                tokio::time::sleep(POLL_EVERY).await;
                {
                    let mut waiters = lock(&approvals.waiters);
                    // A call whose cell stopped waiting is no longer looked for.
                    waiters.retain(|_, waiter| !waiter.is_closed());
                    if waiters.is_empty() {
                        approvals.polling.store(false, Ordering::SeqCst);
                        return;
                    }
                }
                let began = now_ms();
                let decided = approvals
                    .on_book(move |book| {
                        if round % 40 == 0 {
                            book.expire()?;
                        }
                        book.decided_since(since)
                    })
                    .await;
                match decided {
                    Ok(rows) => {
                        since = began.saturating_sub(DECIDERS_CLOCK_MARGIN_MS);
                        for row in rows {
                            if let Some(told) = Decided::of(&row) {
                                approvals.deliver(&row.id, told);
                            }
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "looking for approvals decided elsewhere failed; trying again");
                    }
                }
            }
        });
    }

    /// A cell ended: its approvals go from the book (a failure is logged; the rows then
    /// go with the session).
    fn cell_ended(self: &Arc<Self>, front: &str, session: &str, cell_id: &CellId) {
        let (approvals, front, session, cell_id) = (
            Arc::clone(self),
            front.to_owned(),
            session.to_owned(),
            cell_id.clone(),
        );
        tokio::spawn(async move {
            let removed = approvals
                .on_book(move |book| book.remove_cell(&front, &session, &cell_id))
                .await;
            if let Err(error) = removed {
                tracing::warn!(%error, "an ended cell's approvals were not deleted");
            }
        });
    }

    /// A session closed: its approvals go from the book.
    pub async fn session_closed(&self, front: &str, session: &str) {
        let (front, session) = (front.to_owned(), session.to_owned());
        if let Err(error) = self
            .on_book(move |book| book.remove_session(&front, &session))
            .await
        {
            tracing::warn!(%error, "a closed session's approvals were not deleted");
        }
    }

    /// The approval of one call, if it was asked.
    pub async fn find(
        &self,
        front: &str,
        session: &str,
        call: &NestedToolCall,
    ) -> Result<Option<Approval>, StateError> {
        let (front, session, cell_id, call) = (
            front.to_owned(),
            session.to_owned(),
            call.cell_id.clone(),
            call.call_id,
        );
        self.on_book(move |book| book.find(&front, &session, &cell_id, call))
            .await
    }
}

/// Who is told when a call starts and stops waiting on a person (a session that ends its
/// observation with the line the model reads, a front that sends its client an event).
pub trait ApprovalWatch: Send + Sync + 'static {
    /// `approval` was kept and waits.
    fn waiting(&self, approval: &Approval);
    /// `approval` was decided (or its cell stopped waiting).
    fn settled(&self, approval: &Approval);
}

/// Where a gate's calls are kept: the approvals, the front and session, who opened it.
#[derive(Clone)]
pub struct GateSite {
    pub approvals: Arc<Approvals>,
    /// The front that keeps the session (`serve`, `mcp`, `python`, an agent core's own).
    pub front: String,
    pub session: String,
    /// Who opened the session, when the front knows: only they decide through it.
    pub principal: Option<String>,
    pub watch: Arc<dyn ApprovalWatch>,
    /// Set when the front stops, keeping its sessions for the next process: the cells
    /// closed then keep their approvals (else a cell's go when it closes).
    pub stopping: Arc<AtomicBool>,
    /// Cancelled when the session ends in this process (closed, or its front stops): the
    /// restored calls waiting here stop waiting, unanswered (a later process asks again).
    pub ended: CancellationToken,
}

impl std::fmt::Debug for GateSite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GateSite")
            .field("front", &self.front)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

/// The delegate layer that holds a call needing an approval until a person decides.
pub struct ApprovalGate {
    inner: Arc<dyn CodeModeSessionDelegate>,
    site: GateSite,
}

impl ApprovalGate {
    /// `inner` behind a gate whose approvals are kept at `site`.
    pub fn new(inner: Arc<dyn CodeModeSessionDelegate>, site: GateSite) -> Self {
        Self { inner, site }
    }

    /// Runs `call` through the gate: kept as waiting (or found kept), then, once decided,
    /// sent to the inner delegate with the input approved, or refused with the
    /// approver's message. `cancel`: the cell no longer wants the answer.
    pub async fn through(
        &self,
        mut call: NestedToolCall,
        need: ApprovalNeed,
        cancel: CancellationToken,
    ) -> Result<JsonText, ToolError> {
        let site = &self.site;
        let request = ApprovalRequest {
            front: site.front.clone(),
            session: site.session.clone(),
            cell_id: call.cell_id.clone(),
            call: call.call_id,
            tool: call.tool_name.clone(),
            input: call.input.clone(),
            reason: need.reason,
            principal: site.principal.clone(),
        };
        // What was asked, for the watch to hear that it no longer waits if the cell stops.
        let asked: Mutex<Option<Approval>> = Mutex::new(None);
        let on_waiting = |approval: &Approval| {
            *lock(&asked) = Some(approval.clone());
            site.watch.waiting(approval);
        };
        let waited = tokio::select! {
            waited = site.approvals.wait(request, on_waiting) => waited,
            () = cancel.cancelled() => {
                if let Some(approval) = lock(&asked).take() {
                    site.watch.settled(&approval);
                }
                return Err(ToolError::new(texts::approval_denied(&call.tool_name, "the cell stopped waiting")));
            }
        };
        let (approval, decided) = waited.map_err(|error| {
            ToolError::new(texts::state_unwritten("the call was not asked", &error))
        })?;
        site.watch.settled(&approval);
        let tool = call.tool_name.clone();
        if approval.tool != tool || approval.input != call.input {
            return Err(ToolError::new(texts::approval_mismatch(&tool)));
        }
        match decided {
            // Taken to be sent by a process that stopped: it may have run, and is never
            // sent again.
            None if matches!(approval.state, ApprovalState::Sending { .. }) => {
                Err(ToolError::new(texts::interrupted_call(&tool)))
            }
            None => {
                site.approvals.forget(&approval.id);
                Err(ToolError::new(texts::approval_mismatch(&tool)))
            }
            Some(Decided::Denied(message)) => {
                let id = approval.id.clone();
                if let Err(error) = site.approvals.on_book(move |book| book.told(&id)).await {
                    tracing::warn!(%error, "a denial told to its cell was not marked told");
                }
                Err(ToolError::new(texts::approval_denied(&tool, &message)))
            }
            Some(Decided::Approved { input, digest }) => {
                if input_digest(input.as_deref()) != digest {
                    return Err(ToolError::new(texts::approval_mismatch(&tool)));
                }
                let id = approval.id.clone();
                let taken = site
                    .approvals
                    .on_book(move |book| book.take_to_send(&id))
                    .await;
                match taken {
                    Ok(true) => {}
                    // Another process took it to send: it may be running there.
                    Ok(false) => return Err(ToolError::new(texts::interrupted_call(&tool))),
                    Err(error) => {
                        return Err(ToolError::new(texts::state_unwritten(
                            "the approved call was not sent",
                            &error,
                        )));
                    }
                }
                call.input = input.map(JsonText::new);
                self.inner.invoke_tool(call, cancel).await
            }
        }
    }
}

impl ApprovalGate {
    /// A call of a restored cell that a restart cut short: when it waits on a person (or
    /// needs one and was never asked: then it was never sent), it goes back through the
    /// gate, its answer handed to `answered`, and `None` is returned. Else (no approval
    /// needed, or it was taken to be sent before the stop and may have run) the call comes
    /// back for the front's interrupt policy. A book that cannot be read fails the call:
    /// it is never sent unasked.
    pub async fn resume(
        self: Arc<Self>,
        restored: crate::RestoredCall,
        answered: impl FnOnce(crate::RestoredCall, Result<JsonText, ToolError>) + Send + 'static,
    ) -> Option<crate::RestoredCall> {
        let site = &self.site;
        let found = site
            .approvals
            .find(&site.front, &site.session, &restored.call)
            .await;
        let need = match found {
            Ok(Some(found)) if matches!(found.state, ApprovalState::Sending { .. }) => {
                return Some(restored);
            }
            Ok(Some(found)) => ApprovalNeed {
                reason: found.reason,
            },
            Ok(None) => match self.inner.approval(&restored.call) {
                Some(need) => need,
                None => return Some(restored),
            },
            Err(error) => {
                tracing::error!(%error, "the approvals could not be read; a restored call fails");
                let error =
                    ToolError::new(texts::state_unwritten("the call was not asked", &error));
                answered(restored, Err(error));
                return None;
            }
        };
        tokio::spawn(async move {
            let ended = self.site.ended.clone();
            tokio::select! {
                result = self.through(restored.call.clone(), need, CancellationToken::new()) => {
                    answered(restored, result);
                }
                // The session ended here: the call stays unanswered, for the next process.
                () = ended.cancelled() => {}
            }
        });
        None
    }
}

impl DelegateLayer for ApprovalGate {
    fn inner(&self) -> &dyn CodeModeSessionDelegate {
        &*self.inner
    }

    fn invoke_tool(
        &self,
        call: NestedToolCall,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<JsonText, ToolError>> {
        match self.inner.approval(&call) {
            None => self.inner.invoke_tool(call, cancel),
            Some(need) => Box::pin(self.through(call, need, cancel)),
        }
    }

    /// The gate keeps the approvals its inner delegate asks for: to those in front of
    /// it (the session), a call needs none ([`code_mode_protocol::session::refused_unapproved`]).
    fn approval(&self, _: &NestedToolCall) -> Option<ApprovalNeed> {
        None
    }

    fn cell_closed(&self, cell_id: &CellId) {
        if !self.site.stopping.load(Ordering::SeqCst) {
            self.site
                .approvals
                .cell_ended(&self.site.front, &self.site.session, cell_id);
        }
        self.inner.cell_closed(cell_id);
    }
}

/// A session's calls that wait on a person in this process, and its observations in
/// flight: a call that starts to wait ends its cell's observation, which then ends with a
/// line per waiting call (the model reads which call waits, and why).
#[derive(Debug, Default)]
pub struct WaitingCalls {
    calls: Mutex<Vec<Approval>>,
    observers: Mutex<HashMap<CellId, CancellationToken>>,
}

impl WaitingCalls {
    /// An observation of `cell_id` begins; `preempt` ends it (at once if a call of the
    /// cell waits already).
    pub fn observe(&self, cell_id: &CellId, preempt: CancellationToken) {
        if lock(&self.calls)
            .iter()
            .any(|call| call.cell_id == *cell_id)
        {
            preempt.cancel();
        }
        lock(&self.observers).insert(cell_id.clone(), preempt);
    }

    /// An observation of `cell_id` ended, and says nothing of its waiting calls (it goes
    /// where something else says it, as an MCP task's input requests).
    pub fn unobserve(&self, cell_id: &CellId) {
        lock(&self.observers).remove(cell_id);
    }

    /// The calls of `cell_id` that wait on a person now, in the order they were made.
    pub fn of(&self, cell_id: &CellId) -> Vec<Approval> {
        let mut calls: Vec<Approval> = lock(&self.calls)
            .iter()
            .filter(|call| call.cell_id == *cell_id)
            .cloned()
            .collect();
        calls.sort_by_key(|call| call.call);
        calls
    }

    /// An observation ended with `response`: a cell still running gets a line for each of
    /// its calls that waits on a person.
    pub fn ended(&self, response: CellResponse) -> CellResponse {
        self.unobserve(response.cell_id());
        match response {
            CellResponse::Yielded {
                cell_id,
                mut content_items,
                wall_time,
            } => {
                content_items.extend(self.of(&cell_id).into_iter().map(|call| {
                    ContentItem::InputText {
                        text: texts::approval_waiting(
                            &call.tool,
                            &call.call,
                            call.reason.as_deref(),
                        ),
                    }
                }));
                CellResponse::Yielded {
                    cell_id,
                    content_items,
                    wall_time,
                }
            }
            other => other,
        }
    }
}

impl ApprovalWatch for WaitingCalls {
    fn waiting(&self, approval: &Approval) {
        lock(&self.calls).push(approval.clone());
        if let Some(preempt) = lock(&self.observers).get(&approval.cell_id) {
            preempt.cancel();
        }
    }

    fn settled(&self, approval: &Approval) {
        lock(&self.calls).retain(|call| call.id != approval.id);
    }
}
