//! Format 1, read once to be rewritten: a database whose journals, stored values and
//! answers were encoded with the wire's payload types (`code-mode-wire`, bincode), tagged
//! `code-mode-state 1, wire <version>`. Format 2 replaced it at wire 11, and the payload
//! types format 1 stored have not changed since (wire 12 added messages only), so a
//! database of wire 11 is read; one of an older wire is refused, as format 1 always
//! refused another version's.

use crate::{AnswerRecord, CallRecord, Saved, SessionRecord};
use code_mode_protocol::durable::{DurableCell, DurableState};
use code_mode_protocol::journal::CellJournal;
use code_mode_protocol::{CallId, CellId, JsonText, NestedToolCall, StoredValues, ToolError};
use code_mode_wire::payload;
use rusqlite::Connection;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The wire version of the last format-1 databases: their payloads decode with this
/// build's types (a change to one of those types must end this reading).
const LAST_WIRE: u32 = 11;

/// Whether `format` is format 1 written with [`LAST_WIRE`].
pub(crate) fn reads(format: &str) -> bool {
    format == format!("code-mode-state 1, wire {LAST_WIRE}")
}

/// A cell's row in format 1.
#[derive(Deserialize)]
struct CellRow {
    journal: payload::CellJournal,
    exec_call_id: Option<String>,
    in_flight: Vec<CallRow>,
}

#[derive(Deserialize)]
struct CallRow {
    call: CallId,
    tool_name: String,
    kind: payload::ToolKind,
    input: Option<JsonText>,
    exec_call_id: Option<String>,
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    code_mode_wire::codec::decode_body(bytes).map_err(|error| error.to_string())
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
        let stored: BTreeMap<String, Arc<str>> =
            decode(&stored).map_err(|error| format!("session {id}'s stored values: {error}"))?;
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
            of.state.cells.push(durable_cell(cell_id, record));
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
        let result: Result<JsonText, ToolError> = decode(&result)?;
        saved.answers.push(AnswerRecord {
            session,
            cell_id,
            call: CallId::new(call.cast_unsigned()),
            result,
        });
    }
    Ok(saved)
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
