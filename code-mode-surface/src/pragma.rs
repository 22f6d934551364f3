//! `exec`'s input: raw JavaScript with an optional first-line pragma
//! `// @exec: {"yield_time_ms": 10000, "max_output_tokens": 1000}` (contract section 1).

use serde_json::Value;

/// The pragma's prefix on the first line.
pub const PRAGMA_PREFIX: &str = "// @exec:";

/// Default output budget of an `exec` call, in tokens.
pub const DEFAULT_MAX_OUTPUT_TOKENS: u64 = 10_000;

/// The largest integer a pragma field may hold: 2^53 - 1, JavaScript's largest safe integer.
pub const MAX_SAFE_INTEGER: u64 = 9_007_199_254_740_991;

/// `exec`'s input, pragma parsed and removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedExec {
    /// The JavaScript to run (without the pragma line).
    pub source: String,
    pub yield_time_ms: Option<u64>,
    pub max_output_tokens: Option<u64>,
}

impl ParsedExec {
    /// The output budget, default applied.
    pub fn max_output_tokens_or_default(&self) -> u64 {
        self.max_output_tokens.unwrap_or(DEFAULT_MAX_OUTPUT_TOKENS)
    }
}

/// Why `exec`'s input was refused. The `Display` texts are returned to the model verbatim.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecParseError {
    #[error(
        "exec expects raw JavaScript source text (non-empty). Provide JS only, optionally with first-line `// @exec: {{\"yield_time_ms\": 10000, \"max_output_tokens\": 1000}}`."
    )]
    Empty,
    #[error("exec pragma must be followed by JavaScript source on subsequent lines")]
    NoSourceAfterPragma,
    #[error(
        "exec pragma must be a JSON object with supported fields `yield_time_ms` and `max_output_tokens`"
    )]
    NotAnObject,
    #[error(
        "exec pragma must be valid JSON with supported fields `yield_time_ms` and `max_output_tokens`: {0}"
    )]
    InvalidJson(String),
    #[error("exec pragma only supports `yield_time_ms` and `max_output_tokens`; got `{0}`")]
    UnknownField(String),
    #[error(
        "exec pragma fields `yield_time_ms` and `max_output_tokens` must be non-negative safe integers"
    )]
    InvalidValue,
}

/// Splits off and validates the pragma. Without one, the whole input is the source.
pub fn parse_exec_source(input: &str) -> Result<ParsedExec, ExecParseError> {
    if input.trim().is_empty() {
        return Err(ExecParseError::Empty);
    }
    let (first_line, rest) = match input.split_once('\n') {
        Some((first, rest)) => (first, rest),
        None => (input, ""),
    };
    let Some(pragma) = first_line.trim_start().strip_prefix(PRAGMA_PREFIX) else {
        return Ok(ParsedExec {
            source: input.to_owned(),
            yield_time_ms: None,
            max_output_tokens: None,
        });
    };
    if rest.trim().is_empty() {
        return Err(ExecParseError::NoSourceAfterPragma);
    }
    let pragma = pragma.trim();
    if pragma.is_empty() {
        return Err(ExecParseError::NotAnObject);
    }
    let value: Value = serde_json::from_str(pragma)
        .map_err(|error| ExecParseError::InvalidJson(error.to_string()))?;
    let Value::Object(fields) = value else {
        return Err(ExecParseError::NotAnObject);
    };
    let mut parsed = ParsedExec {
        source: rest.to_owned(),
        yield_time_ms: None,
        max_output_tokens: None,
    };
    for (key, value) in &fields {
        let slot = match key.as_str() {
            "yield_time_ms" => &mut parsed.yield_time_ms,
            "max_output_tokens" => &mut parsed.max_output_tokens,
            other => return Err(ExecParseError::UnknownField(other.to_owned())),
        };
        *slot = Some(safe_integer(value).ok_or(ExecParseError::InvalidValue)?);
    }
    Ok(parsed)
}

/// A JSON number that JavaScript would call a non-negative safe integer (`10`, `10.0`,
/// `1e3`), or `None`.
fn safe_integer(value: &Value) -> Option<u64> {
    let number = value.as_number()?;
    if let Some(integer) = number.as_u64() {
        return (integer <= MAX_SAFE_INTEGER).then_some(integer);
    }
    let float = number.as_f64()?;
    let integral = float.fract() == 0.0 && (0.0..=MAX_SAFE_INTEGER as f64).contains(&float);
    // -0.0 is an integer in JavaScript too; `as` maps it to 0.
    integral.then_some(float as u64)
}
