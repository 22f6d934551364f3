//! `--state-dir` (with `--listen grpc://`): the host's sessions kept across its restarts
//! (docs/CODEX.md, "Restarts"). Each session's Codex ids (cells, executions, tools), its
//! stored values and running cells ([`code_mode_host::DurableSession`]), the invocations
//! waiting for the client and the answers that came go to `code-mode-state`'s keeper
//! (`codex.sqlite3`). The front writes a session's changes before it answers anything
//! that depends on them ([`crate::front::Front::flush`]) and records a client's answer
//! before its cell gets it. After a restart a kept session belongs to no connection until
//! a call names it: that connection takes it back, unless it expired (`--state-ttl`).

use code_mode_host::protocol::sync::lock;
use code_mode_host::protocol::{CallId, CellId, JsonText, ToolError};
use code_mode_state::{
    AnswerRecord, CallRecord, Changes, Keeper, Saved, SessionRecord, StateError, StoreLocation,
    StoreOptions,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// The database's name in the state directory (`codex.sqlite3`).
const FRONT: &str = "codex";

/// The counter of runtime generations in the database.
const GENERATIONS: &str = "generations";

/// Who a connection's client is, as far as the listener can tell: the sessions it opens
/// belong to it, and after a restart of the host (`--state-dir`) only the same identity
/// takes a kept session back. A connection without one (stdio, plaintext on loopback, TLS
/// without client certificates, all on this machine) owns its sessions as `None` does.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Owner {
    /// The client certificate's SHA-256, in hex (mutual TLS).
    Certificate(String),
}

/// A live session as a checkpoint takes it: its own record and the invocations it waits on
/// the client for (the front's sessions; this module knows no more of them).
pub(crate) trait Checkpointed: Send + Sync + 'static {
    /// Its record and its calls waiting for the client, as they are now.
    fn durable(&self) -> (SessionRecord, Vec<CallRecord>);
}

/// A session's own state as kept: how it was opened and what Codex's ids map to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct KeptSession {
    pub(crate) server_truncation: bool,
    pub(crate) max_yield_time_ms: Option<u64>,
    pub(crate) max_heap_size_bytes: Option<u64>,
    pub(crate) max_pending_delegate_calls: u64,
    pub(crate) next_cell: u64,
    pub(crate) cells: Vec<KeptCell>,
    /// The client identity that opened it: only the same identity takes it back (absent in
    /// a state written before owners were kept: no identity).
    #[serde(default)]
    pub(crate) owner: Option<Owner>,
}

/// A cell as Codex knows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct KeptCell {
    pub(crate) codex_id: String,
    pub(crate) execution_id: String,
    pub(crate) tool_call_id: String,
    /// Our session's id of it.
    pub(crate) runtime_id: String,
    pub(crate) tools: Vec<KeptTool>,
    pub(crate) tool_calls: u64,
}

/// A tool an execution enabled.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct KeptTool {
    pub(crate) js_name: String,
    pub(crate) name: String,
    pub(crate) namespace: Option<String>,
    pub(crate) freeform: bool,
}

/// A session an earlier process kept that no connection took back yet.
pub(crate) struct Orphan {
    pub(crate) record: SessionRecord,
    pub(crate) kept: KeptSession,
    calls: Vec<CallRecord>,
    answers: Vec<AnswerRecord>,
}

impl Orphan {
    /// The answer that came for a call before the restart.
    pub(crate) fn answer(
        &self,
        cell_id: &CellId,
        call: CallId,
    ) -> Option<Result<JsonText, ToolError>> {
        self.answers
            .iter()
            .find(|answer| answer.cell_id == *cell_id && answer.call == call)
            .map(|answer| answer.result.clone())
    }

    /// The invocation id the client was given for a call.
    pub(crate) fn front_id(&self, cell_id: &CellId, call: CallId) -> Option<String> {
        self.calls
            .iter()
            .find(|record| record.cell_id == *cell_id && record.call == call)
            .map(|record| record.front_id.clone())
    }
}

/// What the state directory keeps of the host's sessions, across every connection.
pub struct CodexState {
    keeper: Keeper,
    orphans: Mutex<HashMap<String, Orphan>>,
    generations: AtomicU64,
}

impl std::fmt::Debug for CodexState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodexState")
            .field("keeper", &self.keeper)
            .finish_non_exhaustive()
    }
}

/// The kept sessions `saved` holds, each with its calls and answers; a session whose own
/// state does not read is an error that names it.
fn orphans_of(saved: &Saved, store: &str) -> Result<HashMap<String, Orphan>, StateError> {
    let mut orphans = HashMap::new();
    for record in saved.sessions.iter().cloned() {
        let kept: KeptSession =
            serde_json::from_str(&record.options).map_err(|error| StateError::Read {
                path: store.into(),
                detail: format!("session {}: {error}", record.id),
            })?;
        let of = |id: &str| id == record.id;
        let calls = saved
            .calls
            .iter()
            .filter(|call| of(&call.session))
            .cloned()
            .collect();
        let answers = saved
            .answers
            .iter()
            .filter(|answer| of(&answer.session))
            .cloned()
            .collect();
        orphans.insert(
            record.id.clone(),
            Orphan {
                record,
                kept,
                calls,
                answers,
            },
        );
    }
    Ok(orphans)
}

impl CodexState {
    /// Opens the state directory and reads what it keeps; a kept session whose own state
    /// does not read is an error that names it. `options` bound the store (its size cap:
    /// new sessions are refused near it, a write past it fails as on a full disk; its time
    /// to live) and say how long a failed write is tried again.
    pub fn open(location: &StoreLocation, options: StoreOptions) -> Result<Self, StateError> {
        let (keeper, saved) = Keeper::open(location, FRONT, options)?;
        let orphans = orphans_of(&saved, keeper.describe())?;
        tracing::info!(
            store = keeper.describe(),
            sessions = orphans.len(),
            "state directory opened"
        );
        Ok(Self {
            keeper,
            generations: AtomicU64::new(saved.counter(GENERATIONS)),
            orphans: Mutex::new(orphans),
        })
    }

    /// With a store that hosts share (`--state-url`): session `id`, which no process of
    /// this host has, is taken over from the host that kept it once that one's lease ran
    /// out, and waits here as a kept session for the connection that names it.
    pub(crate) async fn take_over(&self, id: &str) -> Result<(), String> {
        if lock(&self.orphans).contains_key(id) {
            return Ok(());
        }
        let taken = self
            .keeper
            .take_over(id)
            .await
            .map_err(|error| error.to_string())?;
        if let Some(saved) = taken {
            let orphans =
                orphans_of(&saved, self.keeper.describe()).map_err(|error| error.to_string())?;
            lock(&self.orphans).extend(orphans);
        }
        Ok(())
    }

    /// The runtime generation the earlier process reached.
    pub fn generations_before(&self) -> u64 {
        self.generations.load(Ordering::SeqCst)
    }

    /// Whether an earlier process kept session `id` (no new session may take its id).
    pub(crate) fn is_kept(&self, id: &str) -> bool {
        lock(&self.orphans).contains_key(id)
    }

    /// Whether the store has room for one more session (refused near its size cap, with
    /// the figures).
    pub(crate) fn admit(&self) -> Result<(), String> {
        self.keeper.admit().map_err(|error| error.to_string())
    }

    /// The store's size and contents, for metrics.
    pub fn stats(&self) -> code_mode_state::StoreStats {
        self.keeper.stats()
    }

    /// Session `id` was closed: it is deleted from the store.
    pub(crate) fn forget(&self, id: &str) {
        self.keeper.remove(id);
    }

    /// The kept session `id`, for the first connection that names it whose client owned
    /// it; another client gets nothing (and the session stays kept for its owner).
    pub(crate) fn take_orphan(&self, id: &str, owner: Option<&Owner>) -> Option<Orphan> {
        let mut orphans = lock(&self.orphans);
        if self.keeper.expired(id) {
            orphans.remove(id);
            return None;
        }
        if orphans.get(id)?.kept.owner.as_ref() != owner {
            tracing::warn!(
                session = id,
                "a kept session was named by a client that does not own it"
            );
            return None;
        }
        orphans.remove(id)
    }

    /// Writes `session` as it is now (`generations`: the runtime generation the provider
    /// reached). A failure, once the keeper's patience is spent, is returned (and
    /// logged); the store keeps what it had, and nothing that depends on the write may go
    /// out.
    pub(crate) async fn flush(
        &self,
        session: &dyn Checkpointed,
        generations: u64,
    ) -> Result<(), String> {
        let generations = self
            .generations
            .fetch_max(generations, Ordering::SeqCst)
            .max(generations);
        let (record, calls) = session.durable();
        let changes = Changes {
            counters: vec![(GENERATIONS.to_owned(), generations)],
            sessions: vec![record],
            calls,
            removed: Vec::new(),
        };
        self.keeper
            .write(changes)
            .await
            .map_err(|error| error.to_string())
    }

    /// Records the client's answer to a call, before its cell gets it; a failure is
    /// returned, and the answer must not reach the cell.
    pub(crate) async fn record_answer(
        &self,
        session: &str,
        cell_id: CellId,
        call: CallId,
        result: &Result<JsonText, ToolError>,
    ) -> Result<(), String> {
        let answer = AnswerRecord {
            session: session.to_owned(),
            cell_id,
            call,
            result: result.clone(),
        };
        self.keeper
            .record_answer(answer)
            .await
            .map_err(|error| error.to_string())
    }
}
