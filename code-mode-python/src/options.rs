//! What Python hands a new session: its options, typed ([`NativeOptions`]), and, as JSON,
//! its tools (and which need a person's approval) and the stored values it starts from.
//! A bad value is a `ValueError` that names it (a value of the wrong type, a `TypeError`).

use code_mode_protocol::{
    ApprovalNeed, CellLimits, JsonText, SessionOptions, StoredValues, Surface, ToolKind,
};
use code_mode_surface::ToolDescription;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use serde_json::Value;
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

/// A session's options as `code_mode.Session(**options)` takes them, typed: each `None` is
/// the default (`never_hibernate`: `hibernate_after_ms=None` was given). Read when the
/// session opens ([`session_options`]).
#[pyclass(module = "code_mode._native", name = "Options", frozen, get_all)]
#[derive(Debug, Clone, Default)]
pub struct NativeOptions {
    heap_mb: Option<u64>,
    cpu_ms: Option<u64>,
    output_bytes: Option<u64>,
    max_tool_payload_bytes: Option<u64>,
    max_in_flight_tool_calls: Option<u64>,
    max_stored_bytes: Option<u64>,
    surface: Option<String>,
    hibernate_after_ms: Option<u64>,
    never_hibernate: bool,
    reuse_isolates: Option<bool>,
}

/// `value` of option `name`, which must not be negative.
fn non_negative(name: &str, value: Option<i64>) -> PyResult<Option<u64>> {
    value
        .map(|value| {
            u64::try_from(value).map_err(|_| {
                PyValueError::new_err(format!(
                    "{name}: expected a non-negative integer, got {value}"
                ))
            })
        })
        .transpose()
}

#[pymethods]
impl NativeOptions {
    #[new]
    #[pyo3(signature = (*, heap_mb=None, cpu_ms=None, output_bytes=None, max_tool_payload_bytes=None, max_in_flight_tool_calls=None, max_stored_bytes=None, surface=None, hibernate_after_ms=None, never_hibernate=false, reuse_isolates=None))]
    #[expect(
        clippy::too_many_arguments,
        reason = "the session's keyword options, each optional"
    )]
    fn new(
        heap_mb: Option<i64>,
        cpu_ms: Option<i64>,
        output_bytes: Option<i64>,
        max_tool_payload_bytes: Option<i64>,
        max_in_flight_tool_calls: Option<i64>,
        max_stored_bytes: Option<i64>,
        surface: Option<String>,
        hibernate_after_ms: Option<i64>,
        never_hibernate: bool,
        reuse_isolates: Option<bool>,
    ) -> PyResult<Self> {
        if let Some(other) = surface
            .as_deref()
            .filter(|surface| !matches!(*surface, "contract" | "codex"))
        {
            return Err(PyValueError::new_err(format!(
                "surface: expected \"contract\" or \"codex\", got {other:?}"
            )));
        }
        Ok(Self {
            heap_mb: non_negative("heap_mb", heap_mb)?,
            cpu_ms: non_negative("cpu_ms", cpu_ms)?,
            output_bytes: non_negative("output_bytes", output_bytes)?,
            max_tool_payload_bytes: non_negative("max_tool_payload_bytes", max_tool_payload_bytes)?,
            max_in_flight_tool_calls: non_negative(
                "max_in_flight_tool_calls",
                max_in_flight_tool_calls,
            )?,
            max_stored_bytes: non_negative("max_stored_bytes", max_stored_bytes)?,
            surface,
            hibernate_after_ms: non_negative("hibernate_after_ms", hibernate_after_ms)?,
            never_hibernate,
            reuse_isolates,
        })
    }

    fn __repr__(&self) -> String {
        format!("{self:?}")
    }
}

/// The session options `options` give (the defaults where they give none).
pub(crate) fn session_options(options: &NativeOptions) -> SessionOptions {
    let mut session = SessionOptions::default();
    let defaults = CellLimits::default();
    session.limits = CellLimits {
        heap_bytes: options
            .heap_mb
            .map_or(defaults.heap_bytes, |mb| mb.saturating_mul(1024 * 1024)),
        cpu_budget_ms: options.cpu_ms.unwrap_or(defaults.cpu_budget_ms),
        output_bytes: options.output_bytes.unwrap_or(defaults.output_bytes),
        max_in_flight_tool_calls: options
            .max_in_flight_tool_calls
            .unwrap_or(defaults.max_in_flight_tool_calls),
        max_tool_payload_bytes: options
            .max_tool_payload_bytes
            .unwrap_or(defaults.max_tool_payload_bytes),
    };
    if let Some(bytes) = options.max_stored_bytes {
        session.max_stored_bytes = bytes;
    }
    session.surface = match options.surface.as_deref() {
        Some("codex") => Surface::Codex,
        _ => Surface::Contract,
    };
    if options.never_hibernate {
        session.hibernate_after_ms = None;
    } else if let Some(after) = options.hibernate_after_ms {
        session.hibernate_after_ms = Some(after);
    }
    if let Some(reuse) = options.reuse_isolates {
        session.reuse_isolates = reuse;
    }
    session
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
