//! The store's own encoding of what it keeps (format 2): a cell's header (what it started
//! from), the batches its journal grew by, its tail (counters and the calls it waits on),
//! stored values and answers. These types belong to this crate alone, so a change of the
//! wire protocol changes nothing here; each blob starts with the version of its layout,
//! and a layout that changes gets a new version that reads the old ones.

use code_mode_protocol::journal::{CellJournal, JournalCommand};
use code_mode_protocol::{
    CallId, CellId, JsonText, NestedToolCall, StoredValues, ToolDefinition, ToolError, ToolKind,
};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// What the `format` row of a store says: this crate's layout, nothing of the wire's.
pub(crate) const FORMAT: &str = "code-mode-state 2";

/// The layout version every blob starts with.
const BLOB_VERSION: u8 = 1;

/// Blobs are at most this big when read (a corrupt length never allocates more).
const MAX_BLOB: usize = 1 << 30;

/// A tool a cell was given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Tool {
    name: String,
    description: String,
    freeform: bool,
    deferred: bool,
}

/// What a cell started from: written once, when the store first sees the cell.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Header {
    source: String,
    tools: Vec<Tool>,
    stored: Vec<(String, String)>,
    seed: u64,
    exec_call_id: Option<String>,
}

/// A command that entered a cell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Command {
    Answered {
        call: u64,
        result: Result<String, String>,
    },
    TimerFired {
        id: u64,
    },
}

/// What a cell's journal grew by between two writes: appended, never rewritten.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Growth {
    clock: Vec<u64>,
    issued: Vec<(u64, String)>,
    entered: Vec<Command>,
}

/// A call a cell waits on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Waiting {
    call: u64,
    tool_name: String,
    freeform: bool,
    input: Option<String>,
    exec_call_id: Option<String>,
}

/// What is rewritten of a cell when it changes: its counters and the calls it waits on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Tail {
    outputs: u64,
    notifications: u64,
    yields: u64,
    in_flight: Vec<Waiting>,
}

fn freeform(kind: ToolKind) -> bool {
    matches!(kind, ToolKind::Freeform)
}

fn kind(freeform: bool) -> ToolKind {
    if freeform {
        ToolKind::Freeform
    } else {
        ToolKind::Function
    }
}

fn command(entered: &JournalCommand) -> Command {
    match entered {
        JournalCommand::ToolResult { call, result } => Command::Answered {
            call: call.number(),
            result: result_out(result),
        },
        JournalCommand::TimerFired { id } => Command::TimerFired { id: *id },
    }
}

/// An answer as the store keeps it.
pub(crate) fn result_out(result: &Result<JsonText, ToolError>) -> Result<String, String> {
    match result {
        Ok(json) => Ok(json.as_str().to_owned()),
        Err(error) => Err(error.message().to_owned()),
    }
}

/// An answer as the store gave it back.
pub(crate) fn result_in(result: Result<String, String>) -> Result<JsonText, ToolError> {
    result.map(JsonText::new).map_err(ToolError::new)
}

impl Header {
    pub(crate) fn of(journal: &CellJournal, exec_call_id: Option<&String>) -> Self {
        let mut stored: Vec<(String, String)> = journal
            .stored
            .iter()
            .map(|(key, json)| (key.clone(), json.to_string()))
            .collect();
        stored.sort();
        Self {
            source: journal.source.clone(),
            tools: journal
                .tools
                .iter()
                .map(|tool| Tool {
                    name: tool.name.clone(),
                    description: tool.description.clone(),
                    freeform: freeform(tool.kind),
                    deferred: tool.deferred,
                })
                .collect(),
            stored,
            seed: journal.seed,
            exec_call_id: exec_call_id.cloned(),
        }
    }
}

impl Growth {
    /// What `journal` has past the first `clock`, `issued` and `entered` entries.
    pub(crate) fn past(journal: &CellJournal, clock: usize, issued: usize, entered: usize) -> Self {
        Self {
            clock: journal.clock[clock..].to_vec(),
            issued: journal.issued[issued..].to_vec(),
            entered: journal.entered[entered..].iter().map(command).collect(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.clock.is_empty() && self.issued.is_empty() && self.entered.is_empty()
    }
}

impl Tail {
    pub(crate) fn of(journal: &CellJournal, in_flight: &[NestedToolCall]) -> Self {
        Self {
            outputs: journal.outputs,
            notifications: journal.notifications,
            yields: journal.yields,
            in_flight: in_flight
                .iter()
                .map(|call| Waiting {
                    call: call.call_id.number(),
                    tool_name: call.tool_name.clone(),
                    freeform: freeform(call.kind),
                    input: call.input.as_ref().map(|input| input.as_str().to_owned()),
                    exec_call_id: call.exec_call_id.clone(),
                })
                .collect(),
        }
    }
}

/// A cell put back together from its header, its growth in order and its tail.
pub(crate) fn cell(
    cell_id: CellId,
    header: Header,
    growth: impl IntoIterator<Item = Growth>,
    tail: Tail,
) -> code_mode_protocol::durable::DurableCell {
    let tools: Arc<[ToolDefinition]> = header
        .tools
        .into_iter()
        .map(|tool| {
            ToolDefinition::new(tool.name, tool.description, kind(tool.freeform))
                .with_deferred(tool.deferred)
        })
        .collect();
    let stored: StoredValues = header
        .stored
        .into_iter()
        .map(|(key, json)| (key, Arc::from(json)))
        .collect();
    let mut journal = CellJournal::start(header.source, tools, Arc::new(stored), header.seed);
    for grown in growth {
        journal.clock.extend(grown.clock);
        journal.issued.extend(grown.issued);
        journal
            .entered
            .extend(grown.entered.into_iter().map(|entered| match entered {
                Command::Answered { call, result } => JournalCommand::ToolResult {
                    call: CallId::new(call),
                    result: result_in(result),
                },
                Command::TimerFired { id } => JournalCommand::TimerFired { id },
            }));
    }
    journal.outputs = tail.outputs;
    journal.notifications = tail.notifications;
    journal.yields = tail.yields;
    code_mode_protocol::durable::DurableCell {
        in_flight: tail
            .in_flight
            .into_iter()
            .map(|waiting| NestedToolCall {
                cell_id: cell_id.clone(),
                call_id: CallId::new(waiting.call),
                tool_name: waiting.tool_name,
                kind: kind(waiting.freeform),
                input: waiting.input.map(JsonText::new),
                exec_call_id: waiting.exec_call_id,
            })
            .collect(),
        cell_id,
        journal,
        exec_call_id: header.exec_call_id,
    }
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_BLOB>()
}

/// `value` as a blob: its layout version, then its encoding.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    let mut blob = vec![BLOB_VERSION];
    bincode::serde::encode_into_std_write(value, &mut blob, config())
        .map_err(|error| error.to_string())?;
    Ok(blob)
}

/// A blob back as a value; a layout this build does not know, or bytes that do not decode
/// whole, are an error.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(blob: &[u8]) -> Result<T, String> {
    let Some((&version, body)) = blob.split_first() else {
        return Err("an empty record".to_owned());
    };
    if version != BLOB_VERSION {
        return Err(format!(
            "a record of layout {version}, which this build does not read (it reads {BLOB_VERSION})"
        ));
    }
    let (value, read) =
        bincode::serde::decode_from_slice(body, config()).map_err(|error| error.to_string())?;
    if read != body.len() {
        return Err(format!(
            "{} bytes past the end of a record",
            body.len() - read
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blob_of_another_layout_or_with_bytes_past_its_end_is_refused() {
        let blob = encode(&Tail {
            outputs: 1,
            notifications: 2,
            yields: 3,
            in_flight: Vec::new(),
        })
        .expect("encodes");
        assert!(decode::<Tail>(&blob).is_ok());
        let mut other = blob.clone();
        other[0] = 9;
        assert!(decode::<Tail>(&other).unwrap_err().contains("layout 9"));
        let mut longer = blob;
        longer.push(0);
        assert!(
            decode::<Tail>(&longer)
                .unwrap_err()
                .contains("past the end")
        );
        assert!(decode::<Tail>(&[]).is_err());
    }
}
