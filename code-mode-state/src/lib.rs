//! The state directory of a serving process (`--state-dir`, CONTRACT §7 "Surviving a
//! restart"): the sessions it serves, their committed stored values, the journal of each
//! running cell, the nested calls those cells wait on and the answers that came for them,
//! in one SQLite database per front (`<front>.sqlite3`).
//!
//! A front writes a [`Checkpoint`] (everything it serves, as it is now) before it tells
//! its client anything that depends on it, and records an answer ([`StateStore::record_answer`])
//! before it hands the answer to its cell; [`StateStore::load`] gives it all back in the
//! next process. Each write is one transaction, durable when it returns (WAL with
//! `synchronous=FULL`): a process killed in the middle of one leaves the one before, a
//! full disk refuses it and keeps the one before, and a file that is not whole is refused
//! at open with the reason, never overwritten. One process at a time holds a database.
//!
//! Journals are stored in the wire's encoding (`code-mode-wire`'s payload types, bincode);
//! the database records that encoding's version and refuses one written by another.

use code_mode_host::{DurableCell, DurableState};
use code_mode_protocol::journal::CellJournal;
use code_mode_protocol::{CallId, CellId, JsonText, NestedToolCall, StoredValues, ToolError};
use code_mode_wire::payload;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The encoding of what the database holds: the wire protocol's version (its payload
/// types encode the journals) and this crate's own table layout.
const FORMAT: &str = "code-mode-state 1, wire ";

/// Why the state directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The directory or a database file is not private to this user (or cannot be made).
    #[error(transparent)]
    Private(#[from] code_mode_files::FilesError),
    #[error(
        "the state database {path} is in use by another process (one process at a time serves a state directory)"
    )]
    InUse { path: PathBuf },
    #[error(
        "the state database {path} is not whole ({detail}); it was left as it is: move it away to start afresh, or restore it from a copy"
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "the state database {path} was written by another version ({found}; this one writes {expected}); it was left as it is"
    )]
    Foreign {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("the state database {path} belongs to another front end ({found}, not {expected})")]
    OtherFront {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("writing the state database {path} failed: {detail}; what it held before is kept")]
    Write { path: PathBuf, detail: String },
    #[error("reading the state database {path} failed: {detail}")]
    Read { path: PathBuf, detail: String },
}

/// Everything a front serves, as it is now: what [`StateStore::checkpoint`] writes.
/// Sessions, cells and calls not in it are removed from the database.
#[derive(Debug, Clone, Default)]
pub struct Checkpoint {
    /// The front's own counters (its last session id, last call id, runtime generations).
    pub counters: Vec<(String, u64)>,
    pub sessions: Vec<SessionRecord>,
    /// The nested calls the front told its client about and that wait for an answer.
    pub calls: Vec<CallRecord>,
}

/// One session of a front.
#[derive(Debug, Clone)]
pub struct SessionRecord {
    /// The id the front's client knows it by.
    pub id: String,
    /// How the front opens it again (its own encoding, e.g. the request's JSON).
    pub options: String,
    pub state: DurableState,
}

/// A nested call the front named to its client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    pub session: String,
    pub cell_id: CellId,
    pub call: CallId,
    /// The front's id of it (what its client answers).
    pub front_id: String,
}

/// An answer that came for a nested call and was recorded before its cell got it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerRecord {
    pub session: String,
    pub cell_id: CellId,
    pub call: CallId,
    pub result: Result<JsonText, ToolError>,
}

/// What [`StateStore::load`] gives back.
#[derive(Debug, Clone, Default)]
pub struct Saved {
    pub counters: HashMap<String, u64>,
    pub sessions: Vec<SessionRecord>,
    pub calls: Vec<CallRecord>,
    pub answers: Vec<AnswerRecord>,
}

impl Saved {
    /// A counter, 0 if it was never written.
    pub fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }

    /// The answer recorded for a call, if one came.
    pub fn answer(
        &self,
        session: &str,
        cell_id: &CellId,
        call: CallId,
    ) -> Option<&Result<JsonText, ToolError>> {
        self.answers
            .iter()
            .find(|answer| {
                answer.session == session && answer.cell_id == *cell_id && answer.call == call
            })
            .map(|answer| &answer.result)
    }

    /// The front's id of a call, if it named the call to its client.
    pub fn front_id(&self, session: &str, cell_id: &CellId, call: CallId) -> Option<&str> {
        self.calls
            .iter()
            .find(|record| {
                record.session == session && record.cell_id == *cell_id && record.call == call
            })
            .map(|record| record.front_id.as_str())
    }
}

/// A cell's row: its journal in the wire's encoding.
#[derive(Serialize, Deserialize)]
struct CellRow {
    journal: payload::CellJournal,
    exec_call_id: Option<String>,
    in_flight: Vec<CallRow>,
}

#[derive(Serialize, Deserialize)]
struct CallRow {
    call: CallId,
    tool_name: String,
    kind: payload::ToolKind,
    input: Option<JsonText>,
    exec_call_id: Option<String>,
}

/// The state database of one front.
pub struct StateStore {
    path: PathBuf,
    db: Mutex<Connection>,
    /// A hash of each row as last written, so that a checkpoint rewrites only what
    /// changed: sessions (options and stored values) and cells, by key.
    written: Mutex<HashMap<String, u64>>,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Deletes the cells (and their answers) and the sessions a checkpoint no longer has.
fn remove_gone(
    tx: &rusqlite::Transaction<'_>,
    cells_kept: &HashSet<(String, String)>,
    sessions: &HashSet<&str>,
) -> rusqlite::Result<()> {
    let mut gone: Vec<(String, String)> = Vec::new();
    {
        let mut rows = tx.prepare("SELECT session, cell FROM cells")?;
        for row in rows.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))? {
            let row: (String, String) = row?;
            if !cells_kept.contains(&row) {
                gone.push(row);
            }
        }
    }
    for (session, cell) in &gone {
        for table in ["cells", "answers"] {
            tx.execute(
                &format!("DELETE FROM {table} WHERE session = ?1 AND cell = ?2"),
                params![session, cell],
            )?;
        }
    }
    let mut gone_sessions: Vec<String> = Vec::new();
    {
        let mut rows = tx.prepare("SELECT id FROM sessions")?;
        for row in rows.query_map([], |row| row.get(0))? {
            let id: String = row?;
            if !sessions.contains(id.as_str()) {
                gone_sessions.push(id);
            }
        }
    }
    for id in &gone_sessions {
        tx.execute("DELETE FROM sessions WHERE id = ?1", [id])?;
    }
    Ok(())
}

/// `front`'s database file in `dir`, made (or checked) private to this user: it holds
/// tool inputs and results, stored values and session ids, so `0700` and `0600`, no link
/// followed (`code_mode_files`). SQLite makes the `-wal` and `-shm` files with the
/// database's mode; ones left by an earlier process are checked the same way.
fn private_database(dir: &Path, front: &str) -> Result<PathBuf, StateError> {
    code_mode_files::private_dir("the state directory", dir)?;
    let path = dir.join(format!("{front}.sqlite3"));
    code_mode_files::private_file("the state database", &path)?;
    for suffix in ["-wal", "-shm"] {
        let mut name = path.clone().into_os_string();
        name.push(suffix);
        code_mode_files::check_if_present("the state database", Path::new(&name))?;
    }
    Ok(path)
}

impl StateStore {
    /// Opens (or creates) `front`'s database in `dir`: `<dir>/<front>.sqlite3`. Refused
    /// when another process holds it, when it is not whole, or when another version or
    /// front end wrote it.
    pub fn open(dir: &Path, front: &str) -> Result<Self, StateError> {
        let path = private_database(dir, front)?;
        let corrupt = |error: rusqlite::Error| StateError::Corrupt {
            path: path.clone(),
            detail: error.to_string(),
        };
        let db = Connection::open(&path).map_err(corrupt)?;
        // One process at a time: the lock is taken by the first read below and held.
        db.pragma_update(None, "locking_mode", "EXCLUSIVE")
            .map_err(corrupt)?;
        let busy = |error: rusqlite::Error| match error.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                StateError::InUse { path: path.clone() }
            }
            _ => StateError::Corrupt {
                path: path.clone(),
                detail: error.to_string(),
            },
        };
        db.pragma_update(None, "journal_mode", "WAL")
            .map_err(busy)?;
        db.pragma_update(None, "synchronous", "FULL")
            .map_err(busy)?;
        let check: String = db
            .query_row("PRAGMA quick_check", [], |row| row.get(0))
            .map_err(busy)?;
        if check != "ok" {
            return Err(StateError::Corrupt {
                path,
                detail: check,
            });
        }
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS sessions (
                 id TEXT PRIMARY KEY, options TEXT NOT NULL, stored BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS cells (
                 session TEXT NOT NULL, cell TEXT NOT NULL, record BLOB NOT NULL,
                 PRIMARY KEY (session, cell));
             CREATE TABLE IF NOT EXISTS calls (
                 session TEXT NOT NULL, cell TEXT NOT NULL, call INTEGER NOT NULL,
                 front_id TEXT NOT NULL, PRIMARY KEY (session, cell, call));
             CREATE TABLE IF NOT EXISTS answers (
                 session TEXT NOT NULL, cell TEXT NOT NULL, call INTEGER NOT NULL,
                 result BLOB NOT NULL, PRIMARY KEY (session, cell, call));",
        )
        .map_err(busy)?;
        let expected = format!("{FORMAT}{}", code_mode_wire::PROTOCOL_VERSION);
        let meta = |key: &str| -> Result<Option<String>, StateError> {
            db.query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
                row.get(0)
            })
            .optional()
            .map_err(|error| StateError::Read {
                path: path.clone(),
                detail: error.to_string(),
            })
        };
        match meta("format")? {
            Some(found) if found != expected => {
                return Err(StateError::Foreign {
                    path,
                    found,
                    expected,
                });
            }
            _ => {}
        }
        match meta("front")? {
            Some(found) if found != front => {
                return Err(StateError::OtherFront {
                    path,
                    found,
                    expected: front.to_owned(),
                });
            }
            _ => {}
        }
        db.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('format', ?1), ('front', ?2)",
            params![expected, front],
        )
        .map_err(|error| StateError::Write {
            path: path.clone(),
            detail: error.to_string(),
        })?;
        Ok(Self {
            path,
            db: Mutex::new(db),
            written: Mutex::new(HashMap::new()),
        })
    }

    /// Where the database is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read_error(&self, error: impl std::fmt::Display) -> StateError {
        StateError::Read {
            path: self.path.clone(),
            detail: error.to_string(),
        }
    }

    fn write_error(&self, error: impl std::fmt::Display) -> StateError {
        StateError::Write {
            path: self.path.clone(),
            detail: error.to_string(),
        }
    }

    /// Every row `sql` selects, made by `row`; a failure is a read error.
    fn rows<R>(
        &self,
        db: &rusqlite::Connection,
        sql: &str,
        row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<R>,
    ) -> Result<Vec<R>, StateError> {
        let mut statement = db.prepare(sql).map_err(|error| self.read_error(error))?;
        let rows = statement
            .query_map([], row)
            .map_err(|error| self.read_error(error))?;
        rows.collect::<rusqlite::Result<Vec<R>>>()
            .map_err(|error| self.read_error(error))
    }

    /// Everything the database holds. A row that does not decode is an error that names
    /// it (nothing is dropped quietly).
    pub fn load(&self) -> Result<Saved, StateError> {
        let db = code_mode_protocol::sync::lock(&self.db);
        let mut saved = Saved::default();
        let two_texts_and_bytes = |row: &rusqlite::Row<'_>| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, Vec<u8>>(2)?,
            ))
        };
        let counters = self.rows(&db, "SELECT name, value FROM counters", |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
        })?;
        for (name, value) in counters {
            saved.counters.insert(name, value.cast_unsigned());
        }
        let sessions = self.rows(
            &db,
            "SELECT id, options, stored FROM sessions ORDER BY rowid",
            two_texts_and_bytes,
        )?;
        for (id, options, stored) in sessions {
            let stored: std::collections::BTreeMap<String, std::sync::Arc<str>> = decode(&stored)
                .map_err(
                |error| self.read_error(format!("session {id}'s stored values: {error}")),
            )?;
            let stored: StoredValues = stored.into_iter().collect();
            saved.sessions.push(SessionRecord {
                id,
                options,
                state: DurableState {
                    stored,
                    cells: Vec::new(),
                },
            });
        }
        let cells = self.rows(
            &db,
            "SELECT session, cell, record FROM cells ORDER BY rowid",
            two_texts_and_bytes,
        )?;
        for (session, cell, record) in cells {
            let what = || format!("cell {cell} of session {session}");
            let Ok(cell_id) = cell.parse::<CellId>();
            let record: CellRow =
                decode(&record).map_err(|error| self.read_error(format!("{}: {error}", what())))?;
            let Some(of) = saved.sessions.iter_mut().find(|kept| kept.id == session) else {
                continue;
            };
            of.state.cells.push(durable_cell(cell_id, record));
        }
        let calls = self.rows(
            &db,
            "SELECT session, cell, call, front_id FROM calls ORDER BY rowid",
            |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, String>(3)?,
                ))
            },
        )?;
        for (session, cell, call, front_id) in calls {
            let Ok(cell_id) = cell.parse::<CellId>();
            saved.calls.push(CallRecord {
                session,
                cell_id,
                call: CallId::new(call.cast_unsigned()),
                front_id,
            });
        }
        let answers = self.rows(
            &db,
            "SELECT session, cell, call, result FROM answers ORDER BY rowid",
            |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, Vec<u8>>(3)?,
                ))
            },
        )?;
        for (session, cell, call, result) in answers {
            let Ok(cell_id) = cell.parse::<CellId>();
            let result = decode(&result).map_err(|error| self.read_error(error))?;
            saved.answers.push(AnswerRecord {
                session,
                cell_id,
                call: CallId::new(call.cast_unsigned()),
                result,
            });
        }
        Ok(saved)
    }

    /// Writes `checkpoint` as the front's whole state, in one transaction, durable when it
    /// returns. Rows that did not change since the last checkpoint are not written again.
    pub fn checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StateError> {
        let mut db = code_mode_protocol::sync::lock(&self.db);
        let mut written = code_mode_protocol::sync::lock(&self.written);
        let mut now = HashMap::new();
        let write = |error: rusqlite::Error| self.write_error(error);
        let tx = db.transaction().map_err(write)?;
        for (name, value) in &checkpoint.counters {
            tx.execute(
                "INSERT OR REPLACE INTO counters (name, value) VALUES (?1, ?2)",
                params![name, value.cast_signed()],
            )
            .map_err(write)?;
        }
        let mut cells_kept: HashSet<(String, String)> = HashSet::new();
        for session in &checkpoint.sessions {
            // Sorted, so that the same map always encodes the same.
            let sorted: std::collections::BTreeMap<&String, &std::sync::Arc<str>> =
                session.state.stored.iter().collect();
            let stored = encode(&sorted).map_err(|error| self.write_error(error))?;
            let key = format!("s\u{0}{}", session.id);
            let hash = hash_of(&[session.options.as_bytes(), &stored]);
            if written.get(&key) != Some(&hash) {
                tx.execute(
                    "INSERT INTO sessions (id, options, stored) VALUES (?1, ?2, ?3)
                     ON CONFLICT (id) DO UPDATE SET options = ?2, stored = ?3",
                    params![session.id, session.options, stored],
                )
                .map_err(write)?;
            }
            now.insert(key, hash);
            for cell in &session.state.cells {
                let record = encode(&cell_row(cell)).map_err(|error| self.write_error(error))?;
                let key = format!("c\u{0}{}\u{0}{}", session.id, cell.cell_id);
                let hash = hash_of(&[&record]);
                if written.get(&key) != Some(&hash) {
                    tx.execute(
                        "INSERT OR REPLACE INTO cells (session, cell, record) VALUES (?1, ?2, ?3)",
                        params![session.id, cell.cell_id.to_string(), record],
                    )
                    .map_err(write)?;
                }
                now.insert(key, hash);
                cells_kept.insert((session.id.clone(), cell.cell_id.to_string()));
            }
        }
        // What is gone from the front is gone from the database.
        let sessions: HashSet<&str> = checkpoint
            .sessions
            .iter()
            .map(|session| session.id.as_str())
            .collect();
        remove_gone(&tx, &cells_kept, &sessions).map_err(write)?;
        tx.execute("DELETE FROM calls", []).map_err(write)?;
        for call in &checkpoint.calls {
            tx.execute(
                "INSERT OR REPLACE INTO calls (session, cell, call, front_id) VALUES (?1, ?2, ?3, ?4)",
                params![
                    call.session,
                    call.cell_id.to_string(),
                    call.call.number().cast_signed(),
                    call.front_id
                ],
            )
            .map_err(write)?;
        }
        tx.commit().map_err(write)?;
        *written = now;
        Ok(())
    }

    /// Records the answer that came for a nested call, durable when it returns: the front
    /// hands it to the cell afterwards, so a restart between the two still delivers it.
    pub fn record_answer(&self, answer: &AnswerRecord) -> Result<(), StateError> {
        let result = encode(&answer.result).map_err(|error| self.write_error(error))?;
        let db = code_mode_protocol::sync::lock(&self.db);
        db.execute(
            "INSERT OR REPLACE INTO answers (session, cell, call, result) VALUES (?1, ?2, ?3, ?4)",
            params![
                answer.session,
                answer.cell_id.to_string(),
                answer.call.number().cast_signed(),
                result
            ],
        )
        .map_err(|error| self.write_error(error))?;
        Ok(())
    }

    /// Caps the database at about `bytes` (whole pages, at least the pages it has): a
    /// write past the cap fails as a full disk does, and keeps what was written before.
    pub fn cap_bytes(&self, bytes: u64) -> Result<(), StateError> {
        let page_size: i64 = {
            let db = code_mode_protocol::sync::lock(&self.db);
            db.query_row("PRAGMA page_size", [], |row| row.get(0))
                .map_err(|error| self.write_error(error))?
        };
        self.cap_pages(bytes / page_size.max(512).cast_unsigned())
    }

    /// Caps the database at `pages` pages of its page size (tests: a full disk without
    /// filling one).
    #[doc(hidden)]
    pub fn cap_pages(&self, pages: u64) -> Result<(), StateError> {
        let db = code_mode_protocol::sync::lock(&self.db);
        db.pragma_update(None, "max_page_count", pages.cast_signed())
            .map_err(|error| self.write_error(error))
    }
}

fn cell_row(cell: &DurableCell) -> CellRow {
    CellRow {
        journal: cell.journal.clone().into(),
        exec_call_id: cell.exec_call_id.clone(),
        in_flight: cell
            .in_flight
            .iter()
            .map(|call| CallRow {
                call: call.call_id,
                tool_name: call.tool_name.clone(),
                kind: call.kind.into(),
                input: call.input.clone(),
                exec_call_id: call.exec_call_id.clone(),
            })
            .collect(),
    }
}

fn durable_cell(cell_id: CellId, row: CellRow) -> DurableCell {
    let journal: CellJournal = row.journal.into();
    DurableCell {
        in_flight: row
            .in_flight
            .into_iter()
            .map(|call| NestedToolCall {
                cell_id: cell_id.clone(),
                call_id: call.call,
                tool_name: call.tool_name,
                kind: call.kind.into(),
                input: call.input,
                exec_call_id: call.exec_call_id,
            })
            .collect(),
        cell_id,
        journal,
        exec_call_id: row.exec_call_id,
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    bincode::serde::encode_to_vec(value, code_mode_wire::codec::bincode_config())
        .map_err(|error| error.to_string())
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    code_mode_wire::codec::decode_body(bytes).map_err(|error| error.to_string())
}

/// A hash of the parts, to tell a changed row from one written already (within one
/// process: the hasher's keys are fixed).
fn hash_of(parts: &[&[u8]]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    parts.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests;
