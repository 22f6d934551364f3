//! What Python hands a new session, as JSON: its tools (and which need a person's
//! approval), its options and the stored values it starts from. A bad value is a
//! `ValueError` that names it.

use code_mode_protocol::{
    ApprovalNeed, CellLimits, JsonText, SessionOptions, StoredValues, Surface, ToolKind,
};
use code_mode_surface::ToolDescription;
use pyo3::PyResult;
use pyo3::exceptions::PyValueError;
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};

fn parse(what: &str, text: &str) -> PyResult<Value> {
    serde_json::from_str(text).map_err(|error| PyValueError::new_err(format!("{what}: {error}")))
}

/// The Python tools as the session reads them: their descriptions, the names of those that
/// are coroutine functions, and the ones whose calls wait on a person's approval (issue 86).
pub(crate) struct PythonTools {
    pub(crate) descriptions: Vec<ToolDescription>,
    pub(crate) async_tools: HashSet<String>,
    pub(crate) approvals: HashMap<String, ApprovalNeed>,
}

/// The Python tools: `[{"name", "description", "input_schema", "deferred", "is_async",
/// "approval", "approval_reason"}]` (`approval`: whether every call waits on a person;
/// `approval_reason`: why, as the approver and the model read it).
pub(crate) fn tools(text: &str) -> PyResult<PythonTools> {
    let Value::Array(tools) = parse("tools", text)? else {
        return Err(PyValueError::new_err("tools: expected a list"));
    };
    let mut read = PythonTools {
        descriptions: Vec::with_capacity(tools.len()),
        async_tools: HashSet::new(),
        approvals: HashMap::new(),
    };
    for tool in tools {
        let name = tool["name"]
            .as_str()
            .filter(|name| !name.is_empty())
            .ok_or_else(|| PyValueError::new_err("a tool needs a name"))?;
        if tool["is_async"].as_bool().unwrap_or(false) {
            read.async_tools.insert(name.to_owned());
        }
        if tool["approval"].as_bool().unwrap_or(false) {
            let reason = tool["approval_reason"].as_str().map(str::to_owned);
            read.approvals
                .insert(name.to_owned(), ApprovalNeed { reason });
        }
        let schema = |key: &str| tool.get(key).filter(|schema| !schema.is_null()).cloned();
        read.descriptions.push(ToolDescription {
            name: name.to_owned(),
            description: tool["description"].as_str().unwrap_or_default().to_owned(),
            kind: ToolKind::Function,
            input_schema: schema("input_schema"),
            output_schema: schema("output_schema"),
            deferred: tool["deferred"].as_bool().unwrap_or(false),
            ..ToolDescription::default()
        });
    }
    Ok(read)
}

/// A number option: absent or `null` is `None`, anything but a non-negative integer is
/// refused.
fn number(options: &Map<String, Value>, key: &str) -> PyResult<Option<u64>> {
    match options.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value.as_u64().map(Some).ok_or_else(|| {
            PyValueError::new_err(format!(
                "{key}: expected a non-negative integer, got {value}"
            ))
        }),
    }
}

/// `{"heap_mb", "cpu_ms", "output_bytes", "max_tool_payload_bytes",
/// "max_in_flight_tool_calls", "max_stored_bytes", "surface": "contract"|"codex",
/// "hibernate_after_ms" (null: never), "reuse_isolates"}`.
pub(crate) fn session_options(text: &str) -> PyResult<SessionOptions> {
    let Value::Object(options) = parse("options", text)? else {
        return Err(PyValueError::new_err("options: expected an object"));
    };
    let mut session = SessionOptions::default();
    let defaults = CellLimits::default();
    session.limits = CellLimits {
        heap_bytes: number(&options, "heap_mb")?.map_or(defaults.heap_bytes, |mb| mb * 1024 * 1024),
        cpu_budget_ms: number(&options, "cpu_ms")?.unwrap_or(defaults.cpu_budget_ms),
        output_bytes: number(&options, "output_bytes")?.unwrap_or(defaults.output_bytes),
        max_in_flight_tool_calls: number(&options, "max_in_flight_tool_calls")?
            .unwrap_or(defaults.max_in_flight_tool_calls),
        max_tool_payload_bytes: number(&options, "max_tool_payload_bytes")?
            .unwrap_or(defaults.max_tool_payload_bytes),
    };
    if let Some(bytes) = number(&options, "max_stored_bytes")? {
        session.max_stored_bytes = bytes;
    }
    session.surface = match options.get("surface").and_then(Value::as_str) {
        None | Some("contract") => Surface::Contract,
        Some("codex") => Surface::Codex,
        Some(other) => {
            return Err(PyValueError::new_err(format!(
                "surface: expected \"contract\" or \"codex\", got {other:?}"
            )));
        }
    };
    if options.contains_key("hibernate_after_ms") {
        session.hibernate_after_ms = number(&options, "hibernate_after_ms")?;
    }
    if let Some(reuse) = options.get("reuse_isolates").and_then(Value::as_bool) {
        session.reuse_isolates = reuse;
    }
    Ok(session)
}

/// A JSON object of stored values (`None`: none).
pub(crate) fn stored_values(text: Option<&str>) -> PyResult<StoredValues> {
    let Some(text) = text else {
        return Ok(StoredValues::new());
    };
    let Value::Object(values) = parse("stored values", text)? else {
        return Err(PyValueError::new_err("stored values: expected an object"));
    };
    Ok(values
        .iter()
        .map(|(key, value)| (key.clone(), JsonText::from_value(value).as_str().into()))
        .collect())
}
