//! `serve --jsonl --state-dir`: what the driver keeps of its sessions so that they outlive
//! it (docs/jsonl.md, "Restarts"). The sessions served, their stored values and running
//! cells (through [`DurableSession`]), the tool calls the client was told about and the
//! answers it gave go to `code-mode-state`'s database: a checkpoint before each batch of
//! lines goes out, an answer before its cell gets it.

use super::{Out, answer_text};
use code_mode_host::{DurableSession, RestoredCall};
use code_mode_protocol::sync::lock;
use code_mode_state::{
    AnswerRecord, CallRecord, Checkpoint, Saved, SessionRecord, StateError, StateStore,
};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The database's name in the state directory (`jsonl.sqlite3`).
const FRONT: &str = "jsonl";

/// A session kept in the state directory.
struct Kept {
    session: Arc<dyn DurableSession>,
    /// Its `open_session` parameters, stored values aside.
    options: String,
}

/// A call of a restored cell that waits for the client's answer.
struct Restored {
    session: String,
    call: RestoredCall,
}

pub(super) struct Durability {
    store: Arc<StateStore>,
    sessions: Mutex<HashMap<String, Kept>>,
    /// Restored calls waiting for the client's answer, by the id the client knows.
    restored: Mutex<HashMap<String, Restored>>,
    /// Set once the driver stops: the last checkpoint was written, and what the shutdown
    /// does to the sessions is not.
    closed: AtomicBool,
}

impl Durability {
    /// Opens the state directory and reads what it keeps; with `max_bytes`, its database
    /// holds no more (a write past it fails as on a full disk).
    pub(super) fn open(dir: &Path, max_bytes: Option<u64>) -> Result<(Self, Saved), StateError> {
        let store = StateStore::open(dir, FRONT)?;
        if let Some(bytes) = max_bytes {
            store.cap_bytes(bytes)?;
        }
        let saved = store.load()?;
        tracing::info!(path = %store.path().display(), sessions = saved.sessions.len(), "state directory opened");
        Ok((
            Self {
                store: Arc::new(store),
                sessions: Mutex::new(HashMap::new()),
                restored: Mutex::new(HashMap::new()),
                closed: AtomicBool::new(false),
            },
            saved,
        ))
    }

    /// Keeps session `id` from now on.
    pub(super) fn keep(&self, id: &str, session: Arc<dyn DurableSession>, options: String) {
        lock(&self.sessions).insert(id.to_owned(), Kept { session, options });
    }

    /// Session `id` was shut down: it is gone from the next checkpoint.
    pub(super) fn forget(&self, id: &str) {
        lock(&self.sessions).remove(id);
        lock(&self.restored).retain(|_, restored| restored.session != id);
    }

    /// A restored call of session `session` waits for the client's answer to `id`.
    pub(super) fn await_client(&self, id: String, session: String, call: RestoredCall) {
        lock(&self.restored).insert(id, Restored { session, call });
    }

    /// The checkpoint of every kept session as it is now, with the driver's counters and
    /// its calls waiting for the client (`calls`, and the restored ones).
    pub(super) fn checkpoint(
        &self,
        counters: Vec<(String, u64)>,
        mut calls: Vec<CallRecord>,
    ) -> Checkpoint {
        let sessions = lock(&self.sessions)
            .iter()
            .map(|(id, kept)| SessionRecord {
                id: id.clone(),
                options: kept.options.clone(),
                state: kept.session.durable_state(),
            })
            .collect();
        calls.extend(
            lock(&self.restored)
                .iter()
                .map(|(id, restored)| CallRecord {
                    session: restored.session.clone(),
                    cell_id: restored.call.call.cell_id.clone(),
                    call: restored.call.call.call_id,
                    front_id: id.clone(),
                }),
        );
        Checkpoint {
            counters,
            sessions,
            calls,
        }
    }

    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// No checkpoint after this one.
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// Writes `checkpoint` (on a blocking thread); the error as the client reads it.
    pub(super) async fn write(&self, checkpoint: Checkpoint) -> Result<(), String> {
        let store = Arc::clone(&self.store);
        match tokio::task::spawn_blocking(move || store.checkpoint(&checkpoint)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(error) => Err(format!("the state writer failed: {error}")),
        }
    }

    /// Records the answer to call `call` (the client's id of it), then runs `then` with
    /// whether it is on disk: only a recorded answer may reach its cell. A failed write is
    /// told to the client (`state_error` naming the call); `then` puts the call back to
    /// wait for an answer, which the client may give again.
    pub(super) fn record_then(
        &self,
        out: &Out,
        call: &str,
        answer: AnswerRecord,
        then: impl FnOnce(bool) + Send + 'static,
    ) {
        let store = Arc::clone(&self.store);
        let out = out.clone();
        let call = call.to_owned();
        tokio::spawn(async move {
            let recorded = tokio::task::spawn_blocking(move || store.record_answer(&answer)).await;
            let error = match recorded {
                Ok(Ok(())) => None,
                Ok(Err(error)) => Some(error.to_string()),
                Err(error) => Some(format!("the state writer failed: {error}")),
            };
            if let Some(message) = &error {
                tracing::error!(call, "{message}");
            }
            then(error.is_none());
            if let Some(message) = error {
                out.send(unrecorded_answer(&call, &message));
            }
        });
    }

    /// The client answered `id`, a call of a restored cell (if it is one).
    pub(super) fn answer_restored(
        self: &Arc<Self>,
        out: &Out,
        id: &str,
        result: &Result<Value, String>,
    ) {
        let Some(restored) = lock(&self.restored).remove(id) else {
            return;
        };
        let answer = answer_text(result);
        let record = AnswerRecord {
            session: restored.session.clone(),
            cell_id: restored.call.call.cell_id.clone(),
            call: restored.call.call.call_id,
            result: answer.clone(),
        };
        let (state, key) = (Arc::clone(self), id.to_owned());
        self.record_then(out, id, record, move |recorded| {
            if recorded {
                restored.call.answer(answer);
            } else {
                lock(&state.restored).insert(key, restored);
            }
        });
    }
}

/// The event that tells the client the state directory could not be written.
pub(super) fn state_error(message: &str) -> Value {
    json!({ "event": "state_error", "message": message })
}

/// The event that tells the client its answer to `call` could not be recorded: the cell
/// did not get it, and the call waits for an answer again.
fn unrecorded_answer(call: &str, message: &str) -> Value {
    json!({ "event": "state_error", "call": call, "message": message })
}
