//! The journals of the cells running on this runtime (CONTRACT §7, "Durable cells"), kept
//! so that a cell outlives the runtime: built from the runtime's `Journal` messages, the
//! exec that started the cell, the output its callers took and the notifications the host
//! delivered. When the runtime is lost, each cell with a whole journal becomes a
//! [`Resumable`] instead of a dead cell: its session rebuilds it on its next runtime, and
//! the delegate calls it had in flight go on, their answers sent to the rebuilt cell
//! ([`LateAnswers`]).

use super::*;
use code_mode_protocol::durable::DurableCell;
use code_mode_protocol::journal::{CellJournal, JournalBuilder, JournalCommand, JournalEntry};
use code_mode_protocol::{CallId, JsonText, NestedToolCall};
use std::sync::atomic::{AtomicU64, Ordering};

/// What the host keeps of one running cell.
pub(super) struct Kept {
    /// The journal so far, from the runtime's entries and the host's own traffic with the
    /// cell (its calls and the answers sent); its source and tools come with the cell's
    /// admission.
    builder: JournalBuilder,
    /// Whether the exec that started the cell was seen (its source and tools are in).
    admitted: bool,
    exec_call_id: Option<String>,
    /// Its delegate calls in flight, by the runtime's id of each: the nested call each
    /// answers (`None` for a notification).
    in_flight: HashMap<DelegateId, Option<CallId>>,
    /// Its nested calls not answered yet, by number, as the delegate was asked them (with
    /// the runtime's cell id): those of an earlier incarnation too. A restarted host asks
    /// its delegate again for these ([`crate::durable`]).
    calls: std::collections::BTreeMap<u64, NestedToolCall>,
    /// The cell's span (disabled when it is not traced): a loss and a rebuild hang there.
    span: tracing::Span,
    /// The output items the cell's callers took, shared with every answer still on its way
    /// to a caller and with the cell's next incarnations: an answer taken after the runtime
    /// was lost still counts when the cell is rebuilt (it is not delivered again).
    taken: Arc<AtomicU64>,
    /// The cell completed and its writes were merged (`Committed` came) before its final
    /// answer: kept to rebuild it if its runtime is lost before that answer, with nothing
    /// merged again; never written to a store (a restart does not rebuild it).
    pub(super) committed: bool,
}

impl Kept {
    fn new(journal: CellJournal, admitted: bool, exec_call_id: Option<String>) -> Self {
        let taken = Arc::new(AtomicU64::new(journal.outputs));
        Self {
            taken,
            builder: JournalBuilder::new(journal),
            admitted,
            exec_call_id,
            in_flight: HashMap::new(),
            calls: std::collections::BTreeMap::new(),
            span: tracing::Span::none(),
            committed: false,
        }
    }

    /// What a restarted host needs of the cell (known to the agent core as `external`), or
    /// `None` when its journal is not whole.
    fn durable(&self, external: &CellId) -> Option<DurableCell> {
        if !self.admitted || self.committed {
            return None;
        }
        let mut journal = self.builder.build()?;
        journal.outputs = self.taken.load(Ordering::SeqCst);
        Some(DurableCell {
            cell_id: external.clone(),
            journal,
            exec_call_id: self.exec_call_id.clone(),
            in_flight: self
                .calls
                .values()
                .map(|call| NestedToolCall {
                    cell_id: external.clone(),
                    ..call.clone()
                })
                .collect(),
        })
    }
}

/// The delegate calls of rebuildable cells that outlived their runtime: where each answer
/// goes, and the nested call it answers (`None`: a notification).
pub(super) type LateCalls = HashMap<DelegateId, (Arc<LateAnswers>, Option<CallId>)>;

/// What the connection keeps of cells that outlive a runtime, in its one state (under its
/// one lock): the cells rebuilt here under the ids the agent core knows, and, once the
/// runtime is lost, the delegate calls still in flight of the cells that were running on
/// it (the cells themselves went to their sessions' [`super::LostCells`]).
#[derive(Default)]
pub(super) struct Rebuilds {
    /// Cells resumed here from a lost runtime: their session and this runtime's id → the
    /// id the agent core knows.
    aliases: HashMap<(SessionId, CellId), CellId>,
    /// Once lost: the delegate calls of rebuildable cells still running, whose answers go
    /// to the cells' next incarnations.
    late_calls: LateCalls,
}

impl Rebuilds {
    /// The id the agent core sees for a runtime cell id of `session` on the runtime of
    /// `generation`: `1` in the first generation, `g2:1` in the second, and so on; a cell
    /// resumed here keeps the id it had.
    pub(super) fn external(&self, generation: u64, session: SessionId, cell_id: &CellId) -> CellId {
        match self.aliases.get(&(session, cell_id.clone())) {
            Some(external) => external.clone(),
            None => cell_id.in_generation(generation),
        }
    }

    /// The runtime's id in `session` for a cell id the agent core gave; `None` if it
    /// belongs to another generation (its process is gone) and was not resumed here.
    pub(super) fn runtime(
        &self,
        generation: u64,
        session: SessionId,
        external: &CellId,
    ) -> Option<CellId> {
        let aliased = self
            .aliases
            .iter()
            .find(|((of, _), known)| *of == session && *known == external)
            .map(|((_, runtime), _)| runtime.clone());
        if aliased.is_some() {
            return aliased;
        }
        (external.generation() == Some(generation)).then(|| external.in_generation(1))
    }

    /// The runtime was lost: `late` are the calls of its rebuildable cells, which go on.
    /// Returns their ids.
    pub(super) fn lose(&mut self, late: LateCalls) -> HashSet<DelegateId> {
        let ids = late.keys().copied().collect();
        self.late_calls = late;
        ids
    }
}

/// What an `Execute` tells the host about the cell it starts.
#[derive(Clone)]
pub(crate) struct ExecJournal {
    pub(crate) source: String,
    pub(crate) tools: Arc<[ToolDefinition]>,
    pub(crate) exec_call_id: Option<String>,
    /// The span the exec was made under: the cell's.
    pub(crate) span: tracing::Span,
}

/// A cell that was running when its runtime was lost and can be rebuilt from its journal.
pub(crate) struct Resumable {
    pub(crate) journal: CellJournal,
    pub(crate) exec_call_id: Option<String>,
    /// The cell's own delegate, when its exec had one.
    pub(crate) delegate: Option<Arc<dyn CodeModeSessionDelegate>>,
    /// Answers to its calls that outlived the runtime.
    pub(crate) late: Arc<LateAnswers>,
    /// The cell's span: its rebuild is traced under it.
    pub(crate) span: tracing::Span,
    /// The output items its callers took, up to the rebuild ([`Kept`]).
    pub(crate) taken: Arc<AtomicU64>,
    /// Its nested calls not answered when the runtime was lost ([`Kept`]).
    pub(crate) in_flight: Vec<NestedToolCall>,
    /// Its writes were merged already ([`Kept::committed`]): rebuilt, it merges nothing.
    pub(crate) committed: bool,
}

impl Resumable {
    /// What a restarted host needs of the cell (known to the agent core as `cell_id`): its
    /// journal with the answers that came since the loss entered after it, and the calls
    /// still unanswered.
    pub(crate) fn durable(&self, cell_id: &CellId) -> DurableCell {
        let mut journal = self.journal.clone();
        journal.outputs = self.taken.load(Ordering::SeqCst);
        let late = lock(&self.late.state).kept.clone();
        let mut in_flight = self.in_flight.clone();
        for (call, result) in late {
            in_flight.retain(|asked| asked.call_id != call);
            journal
                .entered
                .push(JournalCommand::ToolResult { call, result });
        }
        for call in &mut in_flight {
            call.cell_id = cell_id.clone();
        }
        DurableCell {
            cell_id: cell_id.clone(),
            journal,
            exec_call_id: self.exec_call_id.clone(),
            in_flight,
        }
    }
}

/// A cell of a lost runtime: rebuildable, or dead.
pub(crate) struct LostCell {
    /// Its id as the agent core knows it.
    pub(crate) cell_id: CellId,
    pub(crate) resumable: Option<Resumable>,
    /// The final answer it offered, which the host held when the runtime was lost (under
    /// the cell's external id): the cell had finished, and its next observation gets it.
    pub(crate) answer: Option<CellResponse>,
    /// The cell's span (disabled when it is not traced, or its exec was not seen).
    pub(crate) span: tracing::Span,
}

/// Where a rebuilt cell takes the answers to calls its lost runtime made.
struct Target {
    connection: Weak<Connection>,
    session: SessionId,
    cell_id: CellId,
}

/// The answers to a lost cell's delegate calls that were in flight when its runtime was
/// lost: kept until the cell is rebuilt, then sent to it, each once.
#[derive(Default)]
pub(crate) struct LateAnswers {
    state: Mutex<LateState>,
}

#[derive(Default)]
struct LateState {
    kept: Vec<(CallId, Result<JsonText, ToolError>)>,
    target: Option<Target>,
}

impl LateAnswers {
    /// The answer to `call` came.
    pub(crate) fn deliver(&self, call: CallId, result: Result<JsonText, ToolError>) {
        let mut state = lock(&self.state);
        match &state.target {
            Some(target) => send_answer(target, call, result),
            None => state.kept.push((call, result)),
        }
    }

    /// The cell was rebuilt as `cell_id` of `session` on `connection`: answers kept so far
    /// go there now, later ones when they come.
    pub(crate) fn rebuilt(
        &self,
        connection: &Arc<Connection>,
        session: SessionId,
        cell_id: CellId,
    ) {
        let mut state = lock(&self.state);
        let target = Target {
            connection: Arc::downgrade(connection),
            session,
            cell_id,
        };
        for (call, result) in std::mem::take(&mut state.kept) {
            send_answer(&target, call, result);
        }
        state.target = Some(target);
    }
}

/// Sends a late answer to its rebuilt cell (detached: the runtime answers whether the
/// cell took it; a cell that is gone has no use for it). The answer joins the cell's
/// journal there, as any answer the host gives.
fn send_answer(target: &Target, call: CallId, result: Result<JsonText, ToolError>) {
    let Some(connection) = target.connection.upgrade() else {
        return;
    };
    if let Some(entry) = lock(&connection.state).sessions.get_mut(&target.session) {
        entry.answered(&target.cell_id, call, result.clone());
    }
    let request = Request::Answer {
        session: target.session,
        cell_id: (&target.cell_id).into(),
        call: call.into(),
        result: tool_result(result),
    };
    tokio::spawn(async move {
        match connection
            .call::<bool>(request, RequestHooks::default())
            .await
        {
            Ok(true) => {}
            Ok(false) => tracing::debug!("a late answer found its cell gone"),
            Err(error) => tracing::warn!("a late answer was not delivered: {error}"),
        }
    });
}

impl FromResponse for bool {
    fn from_response(response: Response) -> Result<Self, Box<Response>> {
        match response {
            Response::Answered(taken) => Ok(taken),
            other => Err(Box::new(other)),
        }
    }
}

impl Connection {
    /// A `Journal` message from the runtime.
    pub(super) fn on_journal(
        &self,
        session: SessionId,
        cell_id: CellId,
        entry: JournalEntry,
    ) -> Result<(), Violation> {
        if !is_runtime_cell_id(&cell_id) {
            return Err(Violation::JournalCellInvalid(cell_id));
        }
        let mut state = lock(&self.state);
        let Some(entry_of_session) = state.sessions.get_mut(&session) else {
            // A session the host already forgot (shut down).
            return Ok(());
        };
        match entry {
            JournalEntry::Started { seed } => {
                // Commits reach the host in order with this entry: its copy is the cell's
                // snapshot now.
                let stored = lock(&entry_of_session.stored).snapshot();
                let journal = CellJournal::start(String::new(), Arc::from([]), stored, seed);
                entry_of_session
                    .journals
                    .insert(cell_id, Kept::new(journal, false, None));
            }
            JournalEntry::NotDurable => {
                entry_of_session.journals.remove(&cell_id);
            }
            entry => {
                if let Some(kept) = entry_of_session.journals.get_mut(&cell_id) {
                    kept.builder.apply(entry);
                }
            }
        }
        Ok(())
    }
}

/// Journals kept by a session entry, and what updates them outside `Journal` messages.
impl SessionEntry {
    /// The cell's exec was seen (its admission): its source, tools and exec call id.
    pub(super) fn admit_journal(&mut self, cell_id: &CellId, exec: Option<ExecJournal>) {
        let Some(kept) = self.journals.get_mut(cell_id) else {
            return;
        };
        match exec {
            Some(exec) => {
                let journal = kept.builder.journal_mut();
                journal.source = exec.source;
                journal.tools = exec.tools;
                kept.exec_call_id = exec.exec_call_id;
                kept.span = exec.span;
                kept.admitted = true;
            }
            // Started by a request the host no longer knows: it cannot be rebuilt.
            None => {
                self.journals.remove(cell_id);
            }
        }
    }

    /// A cell resumed here from its hook's journal (it goes on appending to it).
    fn resumed_journal(&mut self, cell_id: &CellId, hook: ResumedHook) {
        let mut kept = Kept::new(hook.journal, true, hook.exec_call_id);
        kept.committed = hook.committed;
        kept.span = hook.span;
        kept.taken = hook.taken;
        kept.calls = hook
            .in_flight
            .iter()
            .map(|call| {
                let call = NestedToolCall {
                    cell_id: cell_id.clone(),
                    ..call.clone()
                };
                (call.call_id.number(), call)
            })
            .collect();
        self.journals.insert(cell_id.clone(), kept);
    }

    /// Whether every running cell of the session could be rebuilt from its journal now
    /// (its exec seen, its journal whole).
    pub(super) fn all_rebuildable(&self) -> bool {
        self.live_cells.iter().all(|cell_id| {
            self.journals
                .get(cell_id)
                .is_some_and(|kept| kept.admitted && kept.builder.is_whole())
        })
    }

    /// The count of output items taken of the cell, for an answer about to go to a caller
    /// (its caller adds what it takes).
    pub(super) fn taken_output(&self, cell_id: &CellId) -> Option<Arc<AtomicU64>> {
        self.journals
            .get(cell_id)
            .map(|kept| Arc::clone(&kept.taken))
    }

    /// A delegate call of the cell started: a nested call joins the journal (its hash),
    /// a notification is counted (delivered once, whatever happens to the runtime); both
    /// are remembered until they end.
    pub(super) fn call_started(&mut self, cell_id: &CellId, id: DelegateId, call: &DelegateCall) {
        if let Some(kept) = self.journals.get_mut(cell_id) {
            let call = match call {
                DelegateCall::InvokeTool {
                    cell_id,
                    call_id,
                    tool_name,
                    kind,
                    input,
                    exec_call_id,
                } => {
                    let call_id = CallId::from(*call_id);
                    kept.builder.asked(
                        call_id,
                        tool_name,
                        input.as_ref().map(|input| input.0.as_str()),
                    );
                    kept.calls.insert(
                        call_id.number(),
                        NestedToolCall {
                            cell_id: cell_id.into(),
                            call_id,
                            tool_name: tool_name.clone(),
                            kind: (*kind).into(),
                            input: input.clone().map(JsonText::from),
                            exec_call_id: exec_call_id.clone(),
                        },
                    );
                    Some(call_id)
                }
                DelegateCall::Notify { .. } => {
                    kept.builder.journal_mut().notifications += 1;
                    None
                }
            };
            kept.in_flight.insert(id, call);
        }
    }

    /// A delegate call of the cell ended (answered, or cancelled by the runtime), with
    /// `reply` sent to the runtime: an answer joins the journal, after those sent before.
    pub(super) fn call_ended(&mut self, cell_id: &CellId, id: DelegateId, reply: DelegateReply) {
        if let Some(kept) = self.journals.get_mut(cell_id)
            && let Some(Some(call)) = kept.in_flight.remove(&id)
        {
            kept.calls.remove(&call.number());
            if let DelegateReply::ToolResult(result) = reply {
                kept.builder.answered(call, tool_result(result));
            }
        }
    }

    /// A late answer to `call` was sent to the cell (rebuilt here).
    fn answered(&mut self, cell_id: &CellId, call: CallId, result: Result<JsonText, ToolError>) {
        if let Some(kept) = self.journals.get_mut(cell_id) {
            kept.calls.remove(&call.number());
            kept.builder.answered(call, result);
        }
    }

    /// The cells of this session lost with their runtime: each rebuildable when its journal
    /// is whole. `late_calls` gains each rebuildable cell's delegate calls in flight, and
    /// `closing` the dead cells with the delegate to report each closed to.
    pub(super) fn lost_cells(
        &mut self,
        external: impl Fn(&CellId) -> CellId,
        late_calls: &mut LateCalls,
        closing: &mut Vec<(Arc<dyn CodeModeSessionDelegate>, CellId)>,
    ) -> Vec<LostCell> {
        let mut lost = Vec::new();
        let live: Vec<CellId> = self.live_cells.drain().collect();
        for cell_id in live {
            let answer = self
                .offers
                .remove(&cell_id)
                .map(|offer| offer.response.with_cell_id(external(&cell_id)));
            let kept = self.journals.remove(&cell_id).filter(|_| answer.is_none());
            let span = kept
                .as_ref()
                .map_or_else(tracing::Span::none, |kept| kept.span.clone());
            let resumable = kept.filter(|kept| kept.admitted).and_then(|kept| {
                // Answers sent are in the journal (entered, or about to be: the
                // rebuilt cell takes them in order); the calls still running answer
                // the rebuilt cell.
                // Its output count is read from `taken` when it is rebuilt.
                let journal = kept.builder.build()?;
                let late = Arc::new(LateAnswers::default());
                let in_flight = kept.calls.into_values().collect();
                for (id, call) in kept.in_flight {
                    late_calls.insert(id, (Arc::clone(&late), call));
                }
                Some(Resumable {
                    journal,
                    exec_call_id: kept.exec_call_id,
                    delegate: self.cell_delegates.remove(&cell_id),
                    late,
                    span: kept.span,
                    taken: kept.taken,
                    in_flight,
                    committed: kept.committed,
                })
            });
            if resumable.is_none() {
                let delegate = self
                    .cell_delegates
                    .get(&cell_id)
                    .cloned()
                    .unwrap_or_else(|| Arc::clone(&self.delegate));
                closing.push((delegate, external(&cell_id)));
            }
            lost.push(LostCell {
                cell_id: external(&cell_id),
                resumable,
                answer,
                span,
            });
        }
        lost
    }
}

impl Connection {
    /// What a restarted host needs of `session`'s running cells here: each one whose
    /// journal is whole, by the id the agent core knows.
    pub(crate) fn durable_cells(&self, session: SessionId) -> Vec<DurableCell> {
        let state = lock(&self.state);
        let Some(entry) = state.sessions.get(&session) else {
            return Vec::new();
        };
        entry
            .live_cells
            .iter()
            .filter_map(|cell_id| {
                let kept = entry.journals.get(cell_id)?;
                kept.durable(&state.rebuilds.external(self.generation, session, cell_id))
            })
            .collect()
    }
}

impl Connection {
    /// A delegate call of a lost runtime ended: its answer goes to the cell's next
    /// incarnation. `false` when the call belonged to no rebuildable cell.
    pub(super) fn deliver_late(&self, id: DelegateId, reply: &DelegateReply) -> bool {
        let Some((late, call)) = lock(&self.state).rebuilds.late_calls.remove(&id) else {
            return false;
        };
        if let (Some(call), DelegateReply::ToolResult(result)) = (call, reply) {
            late.deliver(call, tool_result(result.clone()));
        }
        true
    }

    /// Rebuilds `resumable` (a cell known to the agent core as `external`) in `session` on
    /// this runtime; its id here.
    pub(crate) async fn resume(
        self: &Arc<Self>,
        session: SessionId,
        external: &CellId,
        resumable: &Resumable,
    ) -> Result<CellId, SessionError> {
        let mut journal = resumable.journal.clone();
        // What callers took since the loss counts too.
        journal.outputs = resumable.taken.load(Ordering::SeqCst);
        break_on_purpose(&mut journal);
        let request = Request::Resume {
            session,
            journal: journal.into(),
            exec_call_id: resumable.exec_call_id.clone(),
            committed: resumable.committed,
        };
        let hooks = RequestHooks {
            cell_delegate: resumable.delegate.clone(),
            resumed: Some(ResumedHook {
                journal: resumable.journal.clone(),
                exec_call_id: resumable.exec_call_id.clone(),
                external: external.clone(),
                span: resumable.span.clone(),
                taken: Arc::clone(&resumable.taken),
                in_flight: resumable.in_flight.clone(),
                committed: resumable.committed,
            }),
            ..RequestHooks::default()
        };
        let cell_id: CellId = self.call(request, hooks).await?;
        resumable.late.rebuilt(self, session, cell_id.clone());
        Ok(cell_id)
    }
}

/// Breaks a journal about to rebuild its cell, when the chaos test armed a fault that does
/// (never otherwise: [`faults::fire`] is a constant `false` in a real build).
fn break_on_purpose(journal: &mut CellJournal) {
    if faults::fire(Fault::ReplayedCall, || !journal.issued.is_empty()) {
        journal.issued.pop();
    }
    if faults::fire(Fault::ReorderedEntry, || journal.entered.len() >= 2) {
        journal.entered.swap(0, 1);
    }
    if faults::fire(Fault::DuplicateOutput, || journal.outputs > 0) {
        journal.outputs -= 1;
    }
}

/// For a `Resume` request: what the host keeps of the cell once the runtime took it.
#[derive(Clone)]
pub(crate) struct ResumedHook {
    journal: CellJournal,
    exec_call_id: Option<String>,
    /// The cell's id as the agent core knows it.
    external: CellId,
    /// The cell's span, kept for a later loss.
    span: tracing::Span,
    /// The output items taken of the cell, counted on through this incarnation.
    taken: Arc<AtomicU64>,
    /// Its nested calls not answered yet.
    in_flight: Vec<NestedToolCall>,
    /// Its writes were merged already (see [`Kept::committed`]).
    committed: bool,
}

impl FromResponse for CellId {
    fn from_response(response: Response) -> Result<Self, Box<Response>> {
        match response {
            Response::Resumed(cell_id) => Ok(cell_id.into()),
            other => Err(Box::new(other)),
        }
    }
}

impl Connection {
    /// The runtime took a resumed cell as `cell_id`: it is alive here, known to the agent
    /// core by its old id, with its journal kept on.
    pub(super) fn on_resumed(
        &self,
        state: &mut State,
        session: Option<SessionId>,
        cell_id: &CellId,
        hooks: &RequestHooks,
    ) -> Result<(), Violation> {
        if !is_runtime_cell_id(cell_id) {
            return Err(Violation::ResponseCellInvalid(cell_id.clone()));
        }
        let Some(hook) = hooks.resumed.clone() else {
            return Ok(());
        };
        let Some(session) = session else {
            return Ok(());
        };
        state
            .rebuilds
            .aliases
            .insert((session, cell_id.clone()), hook.external.clone());
        if let Some(entry) = state.sessions.get_mut(&session) {
            entry.live_cells.insert(cell_id.clone());
            // Its calls go on above those its journal and its calls in flight hold.
            let last_call = hook
                .in_flight
                .iter()
                .map(|call| call.call_id.number())
                .chain([hook.journal.issued.len() as u64])
                .max()
                .unwrap_or(0);
            entry.guards.insert(
                cell_id.clone(),
                CellGuard::new(&hook.journal.tools, last_call),
            );
            if let Some(delegate) = &hooks.cell_delegate {
                entry
                    .cell_delegates
                    .insert(cell_id.clone(), Arc::clone(delegate));
            }
            entry.resumed_journal(cell_id, hook);
        }
        Ok(())
    }
}

/// The cell a reply observes, and how many output items it carries.
pub(super) fn observed_items(reply: &payload::SessionReply) -> Option<(&payload::CellId, u64)> {
    fn of_outcome(outcome: &payload::PendingOutcome) -> (&payload::CellId, u64) {
        match outcome {
            payload::PendingOutcome::Pending {
                cell_id,
                content_items,
                ..
            } => (cell_id, content_items.len() as u64),
            payload::PendingOutcome::Completed(response) => of_response(response),
        }
    }
    fn of_response(response: &payload::CellResponse) -> (&payload::CellId, u64) {
        match response {
            payload::CellResponse::Yielded {
                cell_id,
                content_items,
                ..
            }
            | payload::CellResponse::Terminated {
                cell_id,
                content_items,
                ..
            }
            | payload::CellResponse::Result {
                cell_id,
                content_items,
                ..
            } => (cell_id, content_items.len() as u64),
        }
    }
    match reply {
        payload::SessionReply::Started {
            initial_response, ..
        } => Some(of_response(initial_response)),
        payload::SessionReply::Cell(response) => Some(of_response(response)),
        payload::SessionReply::StartedPending { outcome, .. }
        | payload::SessionReply::Pending(outcome) => Some(of_outcome(outcome)),
        payload::SessionReply::Interrupted(_) | payload::SessionReply::ShutDown => None,
    }
}

/// The cell a reply gives the final answer of, if it does.
pub(super) fn finished_cell(reply: &payload::SessionReply) -> Option<&payload::CellId> {
    fn of_response(response: &payload::CellResponse) -> Option<&payload::CellId> {
        match response {
            payload::CellResponse::Yielded { .. } => None,
            payload::CellResponse::Terminated { cell_id, .. }
            | payload::CellResponse::Result { cell_id, .. } => Some(cell_id),
        }
    }
    match reply {
        payload::SessionReply::Started {
            initial_response, ..
        } => of_response(initial_response),
        payload::SessionReply::Cell(response) => of_response(response),
        payload::SessionReply::StartedPending { outcome, .. }
        | payload::SessionReply::Pending(outcome) => match outcome {
            payload::PendingOutcome::Completed(response) => of_response(response),
            payload::PendingOutcome::Pending { .. } => None,
        },
        payload::SessionReply::Interrupted(_) | payload::SessionReply::ShutDown => None,
    }
}
