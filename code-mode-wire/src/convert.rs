//! The one place where the API's types become the wire's payloads and back
//! ([`crate::payload`]). Both ends convert here: the host when it sends a request and
//! reads a response, the runtime when it reads a request and sends a response.
//!
//! Every conversion is total: whatever one side can say, the other can read. A field
//! added to an API type is carried only once a conversion here names it.

use crate::payload as wire;
use code_mode_protocol::calls as api_calls;
use code_mode_protocol::model as api_model;
use code_mode_protocol::session as api;
use std::sync::Arc;

/// `From` both ways between an API enum and its wire twin whose variants carry nothing.
macro_rules! mirror_enum {
    ($api:ty, $wire:ty: $($variant:ident),+ $(,)?) => {
        impl From<$api> for $wire {
            fn from(value: $api) -> Self {
                match value {
                    $(<$api>::$variant => Self::$variant,)+
                }
            }
        }

        impl From<$wire> for $api {
            fn from(value: $wire) -> Self {
                match value {
                    $(<$wire>::$variant => Self::$variant,)+
                }
            }
        }
    };
}

/// `From` both ways between an API struct and its wire twin, field by field (each field
/// converted with `Into`; most are the same type on both sides).
macro_rules! mirror_struct {
    ($api:ty, $wire:ty: $($field:ident),+ $(,)?) => {
        impl From<$api> for $wire {
            fn from(value: $api) -> Self {
                Self { $($field: value.$field.into(),)+ }
            }
        }

        impl From<$wire> for $api {
            fn from(value: $wire) -> Self {
                Self { $($field: value.$field.into(),)+ }
            }
        }
    };
}

mirror_enum!(api::Surface, wire::Surface: Contract, Codex);
mirror_enum!(api_model::ToolKind, wire::ToolKind: Function, Freeform);
mirror_enum!(api_model::ImageDetail, wire::ImageDetail: Auto, Low, High, Original);
mirror_enum!(
    api::FailureKind,
    wire::FailureKind: ScriptError,
    OutOfMemory,
    CpuBudget,
    Stalled,
    StoppedUnexpectedly,
    RuntimeLost,
    NotFound,
);
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

impl From<api::ExecRequest> for wire::ExecRequest {
    fn from(request: api::ExecRequest) -> Self {
        let api::ExecRequest {
            source,
            tools,
            yield_time_ms,
            tool_call_id,
        } = request;
        Self {
            source,
            tools: tools_to_wire(&tools),
            yield_time_ms,
            tool_call_id,
        }
    }
}

impl From<wire::ExecRequest> for api::ExecRequest {
    fn from(request: wire::ExecRequest) -> Self {
        let wire::ExecRequest {
            source,
            tools,
            yield_time_ms,
            tool_call_id,
        } = request;
        Self {
            source,
            tools: tools_from_wire(tools),
            yield_time_ms,
            tool_call_id,
        }
    }
}

impl From<api_calls::SessionCall> for wire::SessionCall {
    fn from(call: api_calls::SessionCall) -> Self {
        use api_calls::SessionCall as Api;
        match call {
            Api::Execute(request) => Self::Execute(request.into()),
            Api::Wait(request) => Self::Wait(request.into()),
            Api::Terminate { cell_id } => Self::Terminate { cell_id },
            Api::ExecuteToPending(request) => Self::ExecuteToPending(request.into()),
            Api::WaitToPending { cell_id } => Self::WaitToPending { cell_id },
            Api::Interrupt => Self::Interrupt,
            Api::Shutdown => Self::Shutdown,
        }
    }
}

impl From<wire::SessionCall> for api_calls::SessionCall {
    fn from(call: wire::SessionCall) -> Self {
        use wire::SessionCall as Wire;
        match call {
            Wire::Execute(request) => Self::Execute(request.into()),
            Wire::Wait(request) => Self::Wait(request.into()),
            Wire::Terminate { cell_id } => Self::Terminate { cell_id },
            Wire::ExecuteToPending(request) => Self::ExecuteToPending(request.into()),
            Wire::WaitToPending { cell_id } => Self::WaitToPending { cell_id },
            Wire::Interrupt => Self::Interrupt,
            Wire::Shutdown => Self::Shutdown,
        }
    }
}

impl From<api_model::ContentItem> for wire::ContentItem {
    fn from(item: api_model::ContentItem) -> Self {
        use api_model::ContentItem as Api;
        match item {
            Api::InputText { text } => Self::InputText { text },
            Api::InputImage { image_url, detail } => Self::InputImage {
                image_url,
                detail: detail.into(),
            },
            Api::InputAudio { audio_url } => Self::InputAudio { audio_url },
        }
    }
}

impl From<wire::ContentItem> for api_model::ContentItem {
    fn from(item: wire::ContentItem) -> Self {
        use wire::ContentItem as Wire;
        match item {
            Wire::InputText { text } => Self::InputText { text },
            Wire::InputImage { image_url, detail } => Self::InputImage {
                image_url,
                detail: detail.into(),
            },
            Wire::InputAudio { audio_url } => Self::InputAudio { audio_url },
        }
    }
}

/// Converts every item of a list.
fn items<T, U: From<T>>(items: Vec<T>) -> Vec<U> {
    items.into_iter().map(U::from).collect()
}

impl From<api::CellResponse> for wire::CellResponse {
    fn from(response: api::CellResponse) -> Self {
        use api::CellResponse as Api;
        match response {
            Api::Yielded {
                cell_id,
                content_items,
                wall_time,
            } => Self::Yielded {
                cell_id,
                content_items: items(content_items),
                wall_time,
            },
            Api::Terminated {
                cell_id,
                content_items,
                wall_time,
            } => Self::Terminated {
                cell_id,
                content_items: items(content_items),
                wall_time,
            },
            Api::Result {
                cell_id,
                content_items,
                failure,
                wall_time,
            } => Self::Result {
                cell_id,
                content_items: items(content_items),
                failure: failure.map(Into::into),
                wall_time,
            },
        }
    }
}

impl From<wire::CellResponse> for api::CellResponse {
    fn from(response: wire::CellResponse) -> Self {
        use wire::CellResponse as Wire;
        match response {
            Wire::Yielded {
                cell_id,
                content_items,
                wall_time,
            } => Self::Yielded {
                cell_id,
                content_items: items(content_items),
                wall_time,
            },
            Wire::Terminated {
                cell_id,
                content_items,
                wall_time,
            } => Self::Terminated {
                cell_id,
                content_items: items(content_items),
                wall_time,
            },
            Wire::Result {
                cell_id,
                content_items,
                failure,
                wall_time,
            } => Self::Result {
                cell_id,
                content_items: items(content_items),
                failure: failure.map(Into::into),
                wall_time,
            },
        }
    }
}

impl From<api::PendingOutcome> for wire::PendingOutcome {
    fn from(outcome: api::PendingOutcome) -> Self {
        match outcome {
            api::PendingOutcome::Pending {
                cell_id,
                content_items,
                pending_tool_call_ids,
                wall_time,
            } => Self::Pending {
                cell_id,
                content_items: items(content_items),
                pending_tool_call_ids,
                wall_time,
            },
            api::PendingOutcome::Completed(response) => Self::Completed(response.into()),
        }
    }
}

impl From<wire::PendingOutcome> for api::PendingOutcome {
    fn from(outcome: wire::PendingOutcome) -> Self {
        match outcome {
            wire::PendingOutcome::Pending {
                cell_id,
                content_items,
                pending_tool_call_ids,
                wall_time,
            } => Self::Pending {
                cell_id,
                content_items: items(content_items),
                pending_tool_call_ids,
                wall_time,
            },
            wire::PendingOutcome::Completed(response) => Self::Completed(response.into()),
        }
    }
}

impl From<api_calls::SessionReply> for wire::SessionReply {
    fn from(reply: api_calls::SessionReply) -> Self {
        use api_calls::SessionReply as Api;
        match reply {
            Api::Started(api::StartedCell {
                cell_id,
                initial_response,
            }) => Self::Started {
                cell_id,
                initial_response: initial_response.into(),
            },
            Api::Cell(response) => Self::Cell(response.into()),
            Api::StartedPending(api::StartedPendingCell { cell_id, outcome }) => {
                Self::StartedPending {
                    cell_id,
                    outcome: outcome.into(),
                }
            }
            Api::Pending(outcome) => Self::Pending(outcome.into()),
            Api::Interrupted(cells) => Self::Interrupted(cells),
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
                cell_id,
                initial_response: initial_response.into(),
            }),
            Wire::Cell(response) => Self::Cell(response.into()),
            Wire::StartedPending { cell_id, outcome } => {
                Self::StartedPending(api::StartedPendingCell {
                    cell_id,
                    outcome: outcome.into(),
                })
            }
            Wire::Pending(outcome) => Self::Pending(outcome.into()),
            Wire::Interrupted(cells) => Self::Interrupted(cells),
            Wire::ShutDown => Self::ShutDown,
        }
    }
}
