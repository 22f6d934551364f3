//! `--state-dir` (with `--listen grpc://`): the host's sessions kept across its restarts
//! (docs/CODEX.md, "Restarts"). Each session's Codex ids (cells, executions, tools), its
//! stored values and running cells ([`code_mode_host::DurableSession`]), the invocations
//! waiting for the client and the answers that came go to the store through
//! [`KeptSessions`], the host crate's one owner of kept sessions (`codex.sqlite3`, or
//! Postgres); this module keeps only the front's own data in each session's options. The
//! front writes a session's changes before it answers anything that depends on them
//! ([`crate::front::Front::flush`]) and records a client's answer before its cell gets it.
//! After a restart a kept session belongs to no connection until a call names it: that
//! connection takes it back, unless it expired (`--state-ttl`).

use code_mode_host::protocol::{CallId, CellId, JsonText, ToolError};
use code_mode_host::{HeldSession, KeptSessions};
use code_mode_state::{
    AnswerRecord, CallRecord, SessionRecord, StateError, StoreLocation, StoreOptions,
};
use serde::{Deserialize, Serialize};

/// The database's name in the state directory (`codex.sqlite3`).
const FRONT: &str = "codex";

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
    /// Its tool catalog under its latest revision (Codex 0.171), so that an exec naming
    /// that revision after a restart finds it.
    #[serde(default)]
    pub(crate) catalog: Option<KeptCatalog>,
}

/// A session's tool catalog and its revision.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct KeptCatalog {
    pub(crate) revision: u64,
    pub(crate) tools: Vec<KeptCatalogTool>,
}

/// A tool of a catalog: what an exec enables (its description too, which the cell's
/// `tools` declare).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct KeptCatalogTool {
    pub(crate) js_name: String,
    pub(crate) name: String,
    pub(crate) namespace: Option<String>,
    pub(crate) description: String,
    pub(crate) freeform: bool,
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
    /// Its record, calls and answers as kept.
    pub(crate) held: HeldSession,
    /// The front's own data of it.
    pub(crate) kept: KeptSession,
}

/// What the state directory keeps of the host's sessions, across every connection.
pub struct CodexState {
    kept: KeptSessions,
}

impl std::fmt::Debug for CodexState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodexState")
            .field("kept", &self.kept)
            .finish_non_exhaustive()
    }
}

/// The front's own data of a kept session; an error that names the session when it does
/// not read.
fn front_data(held: &HeldSession, store: &str) -> Result<KeptSession, StateError> {
    serde_json::from_str(&held.record.options).map_err(|error| StateError::Read {
        path: store.into(),
        detail: format!("session {}: {error}", held.id()),
    })
}

impl CodexState {
    /// Opens the state directory and reads what it keeps; a kept session whose own state
    /// does not read is an error that names it. `options` bound the store (its size cap:
    /// new sessions are refused near it, a write past it fails as on a full disk; its time
    /// to live) and say how long a failed write is tried again.
    pub fn open(location: &StoreLocation, options: StoreOptions) -> Result<Self, StateError> {
        let kept = KeptSessions::open(location, FRONT, options)?;
        kept.each_held(|held| front_data(held, kept.describe()).map(|_| ()))?;
        Ok(Self { kept })
    }

    /// With a store that hosts share (`--state-url`): session `id`, which no process of
    /// this host has, is taken over from the host that kept it once that one's lease ran
    /// out, and waits here as a kept session for the connection that names it.
    pub(crate) async fn take_over(&self, id: &str, owner: Option<&Owner>) -> Result<(), String> {
        let was_held = self.kept.is_held(id);
        // A session lives on its client's connection: while its host lives, another
        // connection asking does not wait for it (as on Codex's host, it is unknown).
        let held = self
            .kept
            .take_over_unless_live(id)
            .await
            .map_err(|error| error.to_string())?;
        if !held || was_held {
            return Ok(());
        }
        let store = self.kept.describe();
        let kept = self
            .kept
            .with_held(id, |held| front_data(held, store))
            .transpose()
            .map_err(|error| error.to_string())?;
        if kept.is_some_and(|kept| kept.owner.as_ref() != owner) {
            // Taken over for a client that does not own it: let go at once, so that its
            // owner's next call, on any host, takes it.
            tracing::warn!("a session taken over for a client that does not own it is let go");
            self.kept.release(id).await;
        }
        Ok(())
    }

    /// The runtime generation the earlier process reached.
    pub fn generations_before(&self) -> u64 {
        self.kept.generations_before()
    }

    /// Whether an earlier process kept session `id` (no new session may take its id).
    pub(crate) fn is_kept(&self, id: &str) -> bool {
        self.kept.is_held(id)
    }

    /// Whether the store has room for one more session (refused near its size cap, with
    /// the figures).
    pub(crate) fn admit(&self) -> Result<(), String> {
        self.kept.admit().map_err(|error| error.to_string())
    }

    /// The store's size and contents, for metrics.
    pub fn stats(&self) -> code_mode_state::StoreStats {
        self.kept.stats().unwrap_or_default()
    }

    /// At a clean stop: every session this host holds is let go (on a shared store the next
    /// host a client names one to takes it at once).
    pub async fn let_go(&self) {
        self.kept.let_go_all().await;
    }

    /// Session `id` was closed: it is deleted from the store.
    pub(crate) fn forget(&self, id: &str) {
        self.kept.remove(id);
    }

    /// The kept session `id`, for the first connection that names it whose client owned
    /// it; another client gets nothing (and the session stays kept for its owner).
    pub(crate) fn take_orphan(&self, id: &str, owner: Option<&Owner>) -> Option<Orphan> {
        let store = self.kept.describe();
        // Checked and taken in one step: the id never looks free to another connection.
        let mut owned = None;
        let held = self
            .kept
            .take_if(id, |held| match front_data(held, store) {
                Ok(kept) if kept.owner.as_ref() == owner => {
                    owned = Some(kept);
                    true
                }
                Ok(_) => {
                    tracing::warn!("a kept session was named by a client that does not own it");
                    tracing::debug!(session = id, "the kept session named by another client");
                    false
                }
                Err(error) => {
                    tracing::error!(%error, "a kept session does not read");
                    false
                }
            })?;
        Some(Orphan { held, kept: owned? })
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
        let (record, calls) = session.durable();
        self.kept
            .write(vec![record], calls, generations)
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
        self.kept
            .record_answer(answer)
            .await
            .map_err(|error| error.to_string())
    }
}
