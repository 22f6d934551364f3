//! The one place where the API's types become the wire's payloads and back
//! ([`crate::payload`]). Both ends convert here: the host when it sends a request and
//! reads a response, the runtime when it reads a request and sends a response.
//!
//! Every conversion is total: whatever one side can say, the other can read. A field
//! added to an API type is carried only once a conversion here names it.

use crate::payload as wire;
use code_mode_internal::calls as api_calls;
use code_mode_protocol::ids as api_ids;
use code_mode_protocol::journal as api_journal;
use code_mode_protocol::json_text::JsonText;
use code_mode_protocol::model as api_model;
use code_mode_protocol::session as api;
use code_mode_protocol::stored::StoredValues;
use std::sync::Arc;

/// One field across: with `Into` (most fields are the same type on both sides), or with
/// the converter named beside it.
macro_rules! cross {
    ($value:expr) => {
        ::core::convert::Into::into($value)
    };
    ($value:expr, $convert:path) => {
        $convert($value)
    };
}

/// `From` both ways between an API enum and its wire twin with the same variants: those
/// that carry nothing (`unit`), one value converted with `Into` (`tuple`), and named
/// fields, each converted with `Into` or the converter after its colon (`fields`).
macro_rules! mirror_enum {
    ($api:ty, $wire:ty {
        $(unit: $($unit:ident),+ ;)?
        $(tuple: $($tuple:ident),+ ;)?
        $(fields: $($variant:ident { $($field:ident $(: $convert:path)?),+ }),+ ;)?
    }) => {
        mirror_enum!(@one $api => $wire {
            $(unit: $($unit),+ ;)?
            $(tuple: $($tuple),+ ;)?
            $(fields: $($variant { $($field $(: $convert)?),+ }),+ ;)?
        });
        mirror_enum!(@one $wire => $api {
            $(unit: $($unit),+ ;)?
            $(tuple: $($tuple),+ ;)?
            $(fields: $($variant { $($field $(: $convert)?),+ }),+ ;)?
        });
    };
    (@one $from:ty => $to:ty {
        $(unit: $($unit:ident),+ ;)?
        $(tuple: $($tuple:ident),+ ;)?
        $(fields: $($variant:ident { $($field:ident $(: $convert:path)?),+ }),+ ;)?
    }) => {
        impl From<$from> for $to {
            fn from(value: $from) -> Self {
                type Source = $from;
                match value {
                    $($(Source::$unit => Self::$unit,)+)?
                    $($(Source::$tuple(inner) => Self::$tuple(inner.into()),)+)?
                    $($(Source::$variant { $($field),+ } => Self::$variant {
                        $($field: cross!($field $(, $convert)?),)+
                    },)+)?
                }
            }
        }
    };
}

/// `From` both ways between an API struct and its wire twin, field by field (each field
/// converted with `Into`, or with the converter after its colon).
macro_rules! mirror_struct {
    ($api:ty, $wire:ty: $($field:ident $(: $convert:path)?),+ $(,)?) => {
        impl From<$api> for $wire {
            fn from(value: $api) -> Self {
                Self { $($field: cross!(value.$field $(, $convert)?),)+ }
            }
        }

        impl From<$wire> for $api {
            fn from(value: $wire) -> Self {
                Self { $($field: cross!(value.$field $(, $convert)?),)+ }
            }
        }
    };
}

impl From<api_ids::CellId> for wire::CellId {
    fn from(id: api_ids::CellId) -> Self {
        Self(id.to_string())
    }
}

impl From<&api_ids::CellId> for wire::CellId {
    fn from(id: &api_ids::CellId) -> Self {
        Self(id.to_string())
    }
}

impl From<wire::CellId> for api_ids::CellId {
    fn from(id: wire::CellId) -> Self {
        api_ids::CellId::parse(&id.0)
    }
}

impl From<&wire::CellId> for api_ids::CellId {
    fn from(id: &wire::CellId) -> Self {
        api_ids::CellId::parse(&id.0)
    }
}

impl From<api_ids::CallId> for wire::CallId {
    fn from(id: api_ids::CallId) -> Self {
        Self(id.number())
    }
}

impl From<wire::CallId> for api_ids::CallId {
    fn from(id: wire::CallId) -> Self {
        api_ids::CallId::new(id.0)
    }
}

impl From<JsonText> for wire::JsonText {
    fn from(text: JsonText) -> Self {
        Self(text.into_string())
    }
}

impl From<wire::JsonText> for JsonText {
    fn from(text: wire::JsonText) -> Self {
        JsonText::new(text.0)
    }
}

impl From<api_ids::ToolError> for wire::ToolError {
    fn from(error: api_ids::ToolError) -> Self {
        Self(error.into_message())
    }
}

impl From<wire::ToolError> for api_ids::ToolError {
    fn from(error: wire::ToolError) -> Self {
        api_ids::ToolError::new(error.0)
    }
}

/// A nested call's result across, either way.
pub fn tool_result<T: From<U>, E: From<F>, U, F>(result: Result<U, F>) -> Result<T, E> {
    result.map(T::from).map_err(E::from)
}

mirror_enum!(api::Surface, wire::Surface { unit: Contract, Codex; });
mirror_enum!(api_journal::JournalCommand, wire::JournalCommand {
    fields: ToolResult { call, result: tool_result }, TimerFired { id };
});
mirror_enum!(api_journal::JournalEntry, wire::JournalEntry {
    unit: Yielded, NotDurable;
    tuple: Clock;
    fields: Started { seed }, Issued { call, hash, tool }, Entered { index, command };
});

mirror_struct!(
    api_journal::CellJournal,
    wire::CellJournal: source,
    tools: tool_list,
    stored: stored_map,
    seed,
    clock,
    issued,
    entered: items,
    outputs,
    notifications,
    yields,
);

/// A cell's starting stored values across: the API shares the map (`Arc`), the wire sends
/// it.
trait StoredMap<To> {
    fn cross(self) -> To;
}

impl StoredMap<StoredValues> for Arc<StoredValues> {
    fn cross(self) -> StoredValues {
        Arc::unwrap_or_clone(self)
    }
}

impl StoredMap<Arc<StoredValues>> for StoredValues {
    fn cross(self) -> Arc<StoredValues> {
        Arc::new(self)
    }
}

fn stored_map<To, From: StoredMap<To>>(stored: From) -> To {
    stored.cross()
}

mirror_enum!(api_model::ToolKind, wire::ToolKind { unit: Function, Freeform; });
mirror_enum!(api_model::ImageDetail, wire::ImageDetail { unit: Auto, Low, High, Original; });
mirror_enum!(api::FailureKind, wire::FailureKind {
    unit: ScriptError, OutOfMemory, CpuBudget, Stalled, StoppedUnexpectedly, RuntimeLost,
        NotFound, ReplayDiverged;
});
mirror_enum!(api_calls::SessionCall, wire::SessionCall {
    unit: Interrupt, Shutdown;
    tuple: Execute, Wait, ExecuteToPending;
    fields: Terminate { cell_id }, WaitToPending { cell_id };
});
mirror_enum!(api_model::ContentItem, wire::ContentItem {
    fields: InputText { text }, InputImage { image_url, detail }, InputAudio { audio_url };
});
mirror_enum!(api::CellResponse, wire::CellResponse {
    fields:
        Yielded { cell_id, content_items: items, wall_time },
        Terminated { cell_id, content_items: items, wall_time },
        Result { cell_id, content_items: items, failure: option, wall_time };
});
mirror_enum!(api::PendingOutcome, wire::PendingOutcome {
    tuple: Completed;
    fields: Pending { cell_id, content_items: items, pending_tool_call_ids: items, wall_time };
});
mirror_struct!(
    api::CellLimits,
    wire::CellLimits: heap_bytes,
    cpu_budget_ms,
    output_bytes,
    max_in_flight_tool_calls,
    max_tool_payload_bytes,
);
mirror_struct!(
    api::SessionOptions,
    wire::SessionOptions: max_yield_time_ms,
    limits,
    reuse_isolates,
    max_stored_bytes,
    surface,
    hibernate_after_ms,
);
mirror_struct!(api::WaitRequest, wire::WaitRequest: cell_id, yield_time_ms);
mirror_struct!(api::CellFailure, wire::CellFailure: kind, text);

impl From<&api_model::ToolDefinition> for wire::ToolDefinition {
    fn from(tool: &api_model::ToolDefinition) -> Self {
        Self {
            name: tool.name.clone(),
            description: tool.description.clone(),
            kind: tool.kind.into(),
            deferred: tool.deferred,
        }
    }
}

impl From<wire::ToolDefinition> for api_model::ToolDefinition {
    fn from(tool: wire::ToolDefinition) -> Self {
        api_model::ToolDefinition::new(tool.name, tool.description, tool.kind.into())
            .with_deferred(tool.deferred)
    }
}

/// The wire form of a tool list.
pub fn tools_to_wire(tools: &[api_model::ToolDefinition]) -> Vec<wire::ToolDefinition> {
    tools.iter().map(wire::ToolDefinition::from).collect()
}

/// The API form of a tool list read from the wire.
pub fn tools_from_wire(tools: Vec<wire::ToolDefinition>) -> Arc<[api_model::ToolDefinition]> {
    tools.into_iter().map(Into::into).collect()
}

mirror_struct!(
    api::ExecRequest,
    wire::ExecRequest: source,
    tools: tool_list,
    yield_time_ms,
    tool_call_id,
);

/// A tool list across: the API shares one list among cells (`Arc<[_]>`), the wire sends
/// a `Vec`.
trait ToolList<To> {
    fn cross(self) -> To;
}

impl ToolList<Vec<wire::ToolDefinition>> for Arc<[api_model::ToolDefinition]> {
    fn cross(self) -> Vec<wire::ToolDefinition> {
        tools_to_wire(&self)
    }
}

impl ToolList<Arc<[api_model::ToolDefinition]>> for Vec<wire::ToolDefinition> {
    fn cross(self) -> Arc<[api_model::ToolDefinition]> {
        tools_from_wire(self)
    }
}

fn tool_list<To, From: ToolList<To>>(tools: From) -> To {
    tools.cross()
}

/// Converts every item of a list.
fn items<T, U: From<T>>(items: Vec<T>) -> Vec<U> {
    items.into_iter().map(U::from).collect()
}

/// Converts an optional value.
fn option<T, U: From<T>>(value: Option<T>) -> Option<U> {
    value.map(U::from)
}

impl From<api_calls::SessionReply> for wire::SessionReply {
    fn from(reply: api_calls::SessionReply) -> Self {
        use api_calls::SessionReply as Api;
        match reply {
            Api::Started(api::StartedCell {
                cell_id,
                initial_response,
            }) => Self::Started {
                cell_id: cell_id.into(),
                initial_response: initial_response.into(),
            },
            Api::Cell(response) => Self::Cell(response.into()),
            Api::StartedPending(api::StartedPendingCell { cell_id, outcome }) => {
                Self::StartedPending {
                    cell_id: cell_id.into(),
                    outcome: outcome.into(),
                }
            }
            Api::Pending(outcome) => Self::Pending(outcome.into()),
            Api::Interrupted(cells) => Self::Interrupted(items(cells)),
            Api::ShutDown => Self::ShutDown,
        }
    }
}

impl From<wire::SessionReply> for api_calls::SessionReply {
    fn from(reply: wire::SessionReply) -> Self {
        use wire::SessionReply as Wire;
        match reply {
            Wire::Started {
                cell_id,
                initial_response,
            } => Self::Started(api::StartedCell {
                cell_id: cell_id.into(),
                initial_response: initial_response.into(),
            }),
            Wire::Cell(response) => Self::Cell(response.into()),
            Wire::StartedPending { cell_id, outcome } => {
                Self::StartedPending(api::StartedPendingCell {
                    cell_id: cell_id.into(),
                    outcome: outcome.into(),
                })
            }
            Wire::Pending(outcome) => Self::Pending(outcome.into()),
            Wire::Interrupted(cells) => Self::Interrupted(items(cells)),
            Wire::ShutDown => Self::ShutDown,
        }
    }
}
