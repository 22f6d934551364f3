//! Format 1, read once to be rewritten: a database whose journals, stored values and
//! answers were bincode, in the shapes the wire's payload types had at wire 11, tagged
//! `code-mode-state 1, wire <version>`. Format 2 replaced it at wire 11; a database of an
//! older wire is refused, as format 1 always refused another version's.
//!
//! The shapes are frozen here, not borrowed from `code-mode-wire`: the wire changes with
//! every protocol version, and an old database must read the same whatever it becomes.
//! The state crate never depends on the wire.

use crate::{AnswerRecord, CallRecord, Saved, SessionRecord};
use code_mode_protocol::durable::{DurableCell, DurableState};
use code_mode_protocol::journal::{CellJournal, JournalCommand};
use code_mode_protocol::model::{ToolDefinition, ToolKind};
use code_mode_protocol::{CallId, CellId, JsonText, NestedToolCall, StoredValues, ToolError};
use rusqlite::Connection;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::Arc;

/// The wire version of the last format-1 databases.
const LAST_WIRE: u32 = 11;

/// Whether `format` is format 1 written with [`LAST_WIRE`].
pub(crate) fn reads(format: &str) -> bool {
    format == format!("code-mode-state 1, wire {LAST_WIRE}")
}

/// A cell's row in format 1.
#[derive(Deserialize)]
struct CellRow {
    journal: JournalRow,
    exec_call_id: Option<String>,
    in_flight: Vec<CallRow>,
}

#[derive(Deserialize)]
struct CallRow {
    /// `tool-N`.
    call: String,
    tool_name: String,
    kind: KindRow,
    input: Option<String>,
    exec_call_id: Option<String>,
}

/// A cell's journal in format 1.
#[derive(Deserialize)]
struct JournalRow {
    source: String,
    tools: Vec<ToolRow>,
    stored: HashMap<String, String>,
    seed: u64,
    clock: Vec<u64>,
    issued: Vec<(u64, String)>,
    entered: Vec<CommandRow>,
    outputs: u64,
    notifications: u64,
    yields: u64,
}

#[derive(Deserialize)]
struct ToolRow {
    name: String,
    description: String,
    kind: KindRow,
    deferred: bool,
}

#[derive(Deserialize)]
enum KindRow {
    Function,
    Freeform,
}

#[derive(Deserialize)]
enum CommandRow {
    ToolResult {
        /// `tool-N`.
        call: String,
        result: Result<String, String>,
    },
    TimerFired {
        id: u64,
    },
}

impl From<KindRow> for ToolKind {
    fn from(kind: KindRow) -> Self {
        match kind {
            KindRow::Function => ToolKind::Function,
            KindRow::Freeform => ToolKind::Freeform,
        }
    }
}

impl TryFrom<JournalRow> for CellJournal {
    type Error = String;

    fn try_from(row: JournalRow) -> Result<Self, String> {
        let entered = row
            .entered
            .into_iter()
            .map(|command| {
                Ok(match command {
                    CommandRow::ToolResult { call, result } => JournalCommand::ToolResult {
                        call: call_id(&call)?,
                        result: result.map(JsonText::new).map_err(ToolError::new),
                    },
                    CommandRow::TimerFired { id } => JournalCommand::TimerFired { id },
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(CellJournal {
            source: row.source,
            tools: row
                .tools
                .into_iter()
                .map(|tool| {
                    ToolDefinition::new(tool.name, tool.description, tool.kind.into())
                        .with_deferred(tool.deferred)
                })
                .collect(),
            stored: Arc::new(stored_values(row.stored)),
            seed: row.seed,
            clock: row.clock,
            issued: row.issued,
            entered,
            outputs: row.outputs,
            notifications: row.notifications,
            yields: row.yields,
        })
    }
}

/// A call id as format 1 wrote it: `tool-` and the call's number.
fn call_id(text: &str) -> Result<CallId, String> {
    text.strip_prefix("tool-")
        .and_then(|number| number.parse().ok())
        .map(CallId::new)
        .ok_or_else(|| format!("`{text}` is no call id"))
}

fn stored_values(stored: impl IntoIterator<Item = (String, String)>) -> StoredValues {
    stored
        .into_iter()
        .map(|(key, value)| (key, Arc::from(value)))
        .collect()
}

/// The most bytes format 1 decodes for one value (its frames' bound): a length that says
/// more is refused before anything is allocated.
const MAX_VALUE_BYTES: usize = 64 * 1024 * 1024;

/// Format 1's encoding: bincode's standard configuration, little-endian, variable-length
/// integers, at most [`MAX_VALUE_BYTES`], the whole value and nothing after it.
fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let config = bincode::config::standard()
        .with_little_endian()
        .with_variable_int_encoding()
        .with_limit::<MAX_VALUE_BYTES>();
    let (value, used) =
        bincode::serde::decode_from_slice(bytes, config).map_err(|error| error.to_string())?;
    if used != bytes.len() {
        return Err(format!("{} bytes after the value", bytes.len() - used));
    }
    Ok(value)
}

/// Every row `sql` selects, as `(text, text, i64, blob)` (absent columns read as empty).
fn rows<R>(
    db: &Connection,
    sql: &str,
    row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<R>,
) -> Result<Vec<R>, String> {
    let mut statement = db.prepare(sql).map_err(|error| error.to_string())?;
    let rows = statement
        .query_map([], row)
        .map_err(|error| error.to_string())?;
    rows.collect::<rusqlite::Result<Vec<R>>>()
        .map_err(|error| error.to_string())
}

/// Everything a format-1 database holds.
pub(crate) fn read(db: &Connection) -> Result<Saved, String> {
    let mut saved = Saved::default();
    for (name, value) in rows(db, "SELECT name, value FROM counters", |row| {
        Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
    })? {
        saved.counters.insert(name, value.cast_unsigned());
    }
    for (id, options, stored) in rows(
        db,
        "SELECT id, options, stored FROM sessions ORDER BY rowid",
        |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, Vec<u8>>(2)?,
            ))
        },
    )? {
        let stored: BTreeMap<String, String> =
            decode(&stored).map_err(|error| format!("session {id}'s stored values: {error}"))?;
        let stored = stored_values(stored);
        saved.sessions.push(SessionRecord {
            id,
            options,
            state: DurableState {
                stored,
                cells: Vec::new(),
            },
        });
    }
    for (session, cell, record) in rows(
        db,
        "SELECT session, cell, record FROM cells ORDER BY rowid",
        |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, Vec<u8>>(2)?,
            ))
        },
    )? {
        let Ok(cell_id) = cell.parse::<CellId>();
        let record: CellRow = decode(&record)
            .map_err(|error| format!("cell {cell} of session {session}: {error}"))?;
        if let Some(of) = saved.sessions.iter_mut().find(|kept| kept.id == session) {
            let cell = durable_cell(cell_id, record)
                .map_err(|error| format!("cell {cell} of session {session}: {error}"))?;
            of.state.cells.push(cell);
        }
    }
    for (session, cell, call, front_id) in rows(
        db,
        "SELECT session, cell, call, front_id FROM calls ORDER BY rowid",
        |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, i64>(2)?,
                row.get::<_, String>(3)?,
            ))
        },
    )? {
        let Ok(cell_id) = cell.parse::<CellId>();
        saved.calls.push(CallRecord {
            session,
            cell_id,
            call: CallId::new(call.cast_unsigned()),
            front_id,
        });
    }
    for (session, cell, call, result) in rows(
        db,
        "SELECT session, cell, call, result FROM answers ORDER BY rowid",
        |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, i64>(2)?,
                row.get::<_, Vec<u8>>(3)?,
            ))
        },
    )? {
        let Ok(cell_id) = cell.parse::<CellId>();
        let result: Result<String, String> = decode(&result)?;
        let result = result.map(JsonText::new).map_err(ToolError::new);
        saved.answers.push(AnswerRecord {
            session,
            cell_id,
            call: CallId::new(call.cast_unsigned()),
            result,
        });
    }
    Ok(saved)
}

fn durable_cell(cell_id: CellId, row: CellRow) -> Result<DurableCell, String> {
    let journal = CellJournal::try_from(row.journal)?;
    let in_flight = row
        .in_flight
        .into_iter()
        .map(|call| {
            Ok(NestedToolCall {
                cell_id: cell_id.clone(),
                call_id: call_id(&call.call)?,
                tool_name: call.tool_name,
                kind: call.kind.into(),
                input: call.input.map(JsonText::new),
                exec_call_id: call.exec_call_id,
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(DurableCell {
        in_flight,
        cell_id,
        journal,
        exec_call_id: row.exec_call_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A length prefix that says more than format 1's bound is refused before anything is
    /// allocated: a damaged database is an error at open, never an abort.
    #[test]
    fn a_damaged_length_is_refused_not_allocated() {
        // A journal whose source claims 2^40 bytes: 253 marks a u64 length.
        let mut bytes = vec![253];
        bytes.extend_from_slice(&(1_u64 << 40).to_le_bytes());
        let refused = decode::<JournalRow>(&bytes).map(|_| ()).unwrap_err();
        assert!(refused.contains("LimitExceeded"), "{refused}");
    }

    /// Call ids are read as format 1 wrote them, and nothing else passes for one.
    #[test]
    fn call_ids_read_as_written() {
        assert_eq!(call_id("tool-7"), Ok(CallId::new(7)));
        assert!(call_id("7").is_err());
        assert!(call_id("tool-x").is_err());
    }
}
