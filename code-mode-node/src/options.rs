//! What JS hands a new session: its options (a typed object, declared to TypeScript from
//! here), its tools (and which of them wait on a person's approval) and the stored values
//! it starts from (JSON text: schemas are any JSON). A bad value is a `TypeError`-like
//! error (`InvalidArg`) that names it.

use code_mode_protocol::{
    ApprovalNeed, CellLimits, JsonText, SessionOptions, StoredValues, Surface, ToolKind,
};
use code_mode_surface::ToolDescription;
use napi::{Error, Status};
use napi_derive::napi;
use serde_json::Value;
use std::collections::HashMap;

/// A session's limits and behaviour; every field is optional (the runtime's defaults).
#[napi(object)]
#[derive(Default, Clone)]
pub struct NativeOptions {
    /// Heap limit of each cell, in MiB (128).
    pub heap_mb: Option<u32>,
    /// CPU time each cell may use, in ms (30 000; waiting on tools does not count).
    pub cpu_ms: Option<u32>,
    /// Output each cell may produce, in bytes.
    pub output_bytes: Option<u32>,
    /// The largest argument or result of one nested call, in bytes.
    pub max_tool_payload_bytes: Option<u32>,
    /// Nested calls one cell may have in flight.
    pub max_in_flight_tool_calls: Option<u32>,
    /// Stored values' size cap for the session, in bytes.
    pub max_stored_bytes: Option<u32>,
    /// `"contract"` (the default) or `"codex"`: the globals a cell sees.
    pub surface: Option<String>,
    /// How long a cell waits on nothing but nested calls before it hibernates, in ms.
    pub hibernate_after_ms: Option<u32>,
    /// `false`: a cell waiting on nested calls never hibernates.
    pub hibernate: Option<bool>,
    /// Whether a session's next cell may reuse its last cell's isolate.
    pub reuse_isolates: Option<bool>,
}

/// An error for a bad argument, named.
pub(crate) fn invalid(what: &str, detail: impl std::fmt::Display) -> Error {
    Error::new(Status::InvalidArg, format!("{what}: {detail}"))
}

/// The session options of `options`.
pub(crate) fn session_options(options: &NativeOptions) -> napi::Result<SessionOptions> {
    let mut session = SessionOptions::default();
    let defaults = CellLimits::default();
    let or = |value: Option<u32>, default: u64| value.map_or(default, u64::from);
    session.limits = CellLimits {
        heap_bytes: options
            .heap_mb
            .map_or(defaults.heap_bytes, |mb| u64::from(mb) * 1024 * 1024),
        cpu_budget_ms: or(options.cpu_ms, defaults.cpu_budget_ms),
        output_bytes: or(options.output_bytes, defaults.output_bytes),
        max_in_flight_tool_calls: or(
            options.max_in_flight_tool_calls,
            defaults.max_in_flight_tool_calls,
        ),
        max_tool_payload_bytes: or(
            options.max_tool_payload_bytes,
            defaults.max_tool_payload_bytes,
        ),
    };
    if let Some(bytes) = options.max_stored_bytes {
        session.max_stored_bytes = u64::from(bytes);
    }
    session.surface = match options.surface.as_deref() {
        None | Some("contract") => Surface::Contract,
        Some("codex") => Surface::Codex,
        Some(other) => {
            return Err(invalid(
                "surface",
                format!("expected \"contract\" or \"codex\", got {other:?}"),
            ));
        }
    };
    if options.hibernate == Some(false) {
        session.hibernate_after_ms = None;
    } else if let Some(ms) = options.hibernate_after_ms {
        session.hibernate_after_ms = Some(u64::from(ms));
    }
    if let Some(reuse) = options.reuse_isolates {
        session.reuse_isolates = reuse;
    }
    Ok(session)
}

/// The JS tools as a session reads them: their descriptions, and the ones whose every
/// call waits on a person's approval (issue 86), with why.
pub(crate) struct JsTools {
    pub(crate) descriptions: Vec<ToolDescription>,
    pub(crate) approvals: HashMap<String, ApprovalNeed>,
}

/// The JS tools: a JSON list of `{name, description, inputSchema, outputSchema, deferred,
/// needsApproval, approvalReason}` (`needsApproval`: whether every call waits on a
/// person; `approvalReason`: why, as the approver and the model read it).
pub(crate) fn tools(text: &str) -> napi::Result<JsTools> {
    let Value::Array(tools) =
        serde_json::from_str(text).map_err(|error| invalid("tools", error))?
    else {
        return Err(invalid("tools", "expected a list"));
    };
    let mut read = JsTools {
        descriptions: Vec::with_capacity(tools.len()),
        approvals: HashMap::new(),
    };
    for tool in tools {
        let name = tool["name"]
            .as_str()
            .filter(|name| !name.is_empty())
            .ok_or_else(|| invalid("tools", "a tool needs a name"))?;
        if read.descriptions.iter().any(|known| known.name == name) {
            return Err(invalid("tools", format!("two tools are named {name}")));
        }
        if tool["needsApproval"].as_bool().unwrap_or(false) {
            let reason = tool["approvalReason"].as_str().map(str::to_owned);
            read.approvals
                .insert(name.to_owned(), ApprovalNeed { reason });
        }
        let schema = |key: &str| tool.get(key).filter(|schema| !schema.is_null()).cloned();
        read.descriptions.push(ToolDescription {
            name: name.to_owned(),
            description: tool["description"].as_str().unwrap_or_default().to_owned(),
            kind: ToolKind::Function,
            input_schema: schema("inputSchema"),
            output_schema: schema("outputSchema"),
            deferred: tool["deferred"].as_bool().unwrap_or(false),
            ..ToolDescription::default()
        });
    }
    Ok(read)
}

/// A JSON object of stored values (`None`: none).
pub(crate) fn stored_values(text: Option<&str>) -> napi::Result<StoredValues> {
    let Some(text) = text else {
        return Ok(StoredValues::new());
    };
    let Value::Object(values) =
        serde_json::from_str(text).map_err(|error| invalid("storedValues", error))?
    else {
        return Err(invalid("storedValues", "expected an object"));
    };
    Ok(values
        .iter()
        .map(|(key, value)| (key.clone(), JsonText::from_value(value).as_str().into()))
        .collect())
}
