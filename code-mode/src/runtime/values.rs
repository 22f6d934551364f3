//! Conversions between JS values and what the runtime hands out: JSON text, display text
//! and error text.
//!
//! JSON goes through V8's built-in serializer and parser (the C++ `v8::JSON` API), never
//! through the global `JSON` object, so a cell that replaces `JSON.stringify` or
//! `JSON.parse` changes nothing here. Every function that can run user code (getters,
//! `toJSON`, `toString`, proxies) returns `None` when that code throws or the cell is being
//! stopped, leaving the exception pending for the caller to propagate or catch.
//!
//! **Every string that leaves V8 is bounded before it is copied.** A V8 string can be far
//! larger than what it costs the cell (`"x".repeat(1e8)` is a few bytes of heap until it is
//! flattened), so every copy into Rust goes through [`bounded_string`] with a named cap,
//! which reads the string's length first and copies at most the cap, or through a length
//! check that refuses the value without copying it. ARCHITECTURE.md lists which cap
//! covers which string.

use super::JSON_DEPTH_LIMIT;

/// The most bytes of an error text copied out of V8: a thrown value's `stack`, its string
/// conversion, its side-effect-free description, and the message of an exception quoted
/// inside a helper's error. Enough for any real stack trace (V8 keeps ten frames).
pub(crate) const ERROR_TEXT_MAX_BYTES: usize = 64 * 1024;

/// The most bytes of a short string quoted inside a message (an import specifier, an MCP
/// image block's `type`): these only name something, so more would only be noise.
pub(crate) const QUOTED_MAX_BYTES: usize = 1024;

/// Message of a JSON value nested deeper than [`JSON_DEPTH_LIMIT`].
pub(crate) fn depth_error_detail() -> String {
    code_mode_protocol::texts::nested_too_deep(JSON_DEPTH_LIMIT)
}

/// A V8 string for `text`. Strings longer than V8's maximum become the empty string; the
/// runtime never builds such strings itself.
pub(crate) fn v8_str<'s>(scope: &v8::PinScope<'s, '_>, text: &str) -> v8::Local<'s, v8::String> {
    v8::String::new(scope, text).unwrap_or_else(|| v8::String::empty(scope))
}

/// Throws `message` as a plain JS string, the contract's way for helpers to fail.
pub(crate) fn throw_string(scope: &v8::PinScope<'_, '_>, message: &str) {
    let message = v8_str(scope, message);
    scope.throw_exception(message.into());
}

/// Copies at most `max_bytes` of UTF-8 out of a V8 string. The length is read first: a
/// string that cannot fit is never copied whole, only its first `max_bytes` UTF-16 units
/// (each becomes at least one byte of UTF-8). A cut text ends with a visible marker that
/// gives the original length in characters (UTF-16 units, as JS counts them), so the
/// result may exceed `max_bytes` by the marker's length. Lone surrogate halves become
/// U+FFFD, as in every string the runtime hands out.
pub(crate) fn bounded_string(
    scope: &v8::PinScope<'_, '_>,
    string: v8::Local<'_, v8::String>,
    max_bytes: usize,
) -> String {
    let length = string.length();
    // Three bytes of UTF-8 per UTF-16 unit at most: such a string always fits.
    if length.saturating_mul(3) <= max_bytes {
        return string.to_rust_string_lossy(scope);
    }
    let taken = length.min(max_bytes);
    let mut units = vec![0u16; taken];
    string.write_v2(scope, 0, &mut units, v8::WriteFlags::empty());
    let mut text = String::from_utf16_lossy(&units);
    if taken == length && text.len() <= max_bytes {
        return text;
    }
    let mut end = max_bytes.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(&truncation_marker(length));
    text
}

/// The marker appended to a text cut by [`bounded_string`].
pub(crate) fn truncation_marker(length: usize) -> String {
    code_mode_protocol::texts::text_truncated(length)
}

/// [`bounded_string`] for a value known to be a string; other values give `None`.
pub(crate) fn bounded_value_string(
    scope: &v8::PinScope<'_, '_>,
    value: v8::Local<'_, v8::Value>,
    max_bytes: usize,
) -> Option<String> {
    let string = v8::Local::<v8::String>::try_from(value).ok()?;
    Some(bounded_string(scope, string, max_bytes))
}

/// The result of JSON serialization with `JSON.stringify` semantics.
pub(crate) enum Json<'s> {
    /// Serialized JSON text, still inside V8: copy it out with a bound.
    Text(v8::Local<'s, v8::String>),
    /// `JSON.stringify` yields `undefined` for this value (undefined, a function, a symbol,
    /// or a `toJSON` that returns one of those).
    Nothing,
}

/// `JSON.stringify(value)` with V8's built-in serializer. `None`: an exception is pending
/// (a cycle, a BigInt, a throwing getter or `toJSON`, a stack overflow, termination).
pub(crate) fn stringify<'s>(
    scope: &v8::PinScope<'s, '_>,
    value: v8::Local<'_, v8::Value>,
) -> Option<Json<'s>> {
    let json = v8::json::stringify(scope, value)?;
    // The C++ API converts an `undefined` result to the string "undefined"; that text is
    // never valid JSON (a string value would be quoted), so it can only mean "nothing".
    const UNDEFINED: &str = "undefined";
    if json.length() == UNDEFINED.len() && json.to_rust_string_lossy(scope) == UNDEFINED {
        Some(Json::Nothing)
    } else {
        Some(Json::Text(json))
    }
}

/// Why JSON text was not copied out of V8.
pub(crate) enum JsonTextError {
    /// The text has this many bytes of UTF-8, more than allowed.
    TooLarge(usize),
    /// It nests deeper than [`JSON_DEPTH_LIMIT`].
    TooDeep,
}

/// Copies JSON text out of V8 if it has at most `max_bytes` bytes of UTF-8 and nests no
/// deeper than the limit; a larger text is refused before any copy.
pub(crate) fn json_text(
    scope: &v8::PinScope<'_, '_>,
    json: v8::Local<'_, v8::String>,
    max_bytes: u64,
) -> Result<String, JsonTextError> {
    // Counting UTF-8 bytes copies nothing.
    let bytes = json.utf8_length(scope);
    if bytes as u64 > max_bytes {
        return Err(JsonTextError::TooLarge(bytes));
    }
    let text = json.to_rust_string_lossy(scope);
    if exceeds_depth_limit(&text) {
        return Err(JsonTextError::TooDeep);
    }
    Ok(text)
}

/// Parses JSON text with V8's built-in parser. `__proto__` keys become own data
/// properties, never prototypes. `None`: the text is not valid JSON (exception pending).
pub(crate) fn parse<'s>(
    scope: &v8::PinScope<'s, '_>,
    json: &str,
) -> Option<v8::Local<'s, v8::Value>> {
    let text = v8::String::new(scope, json)?;
    v8::json::parse(scope, text)
}

/// Whether a JSON text nests deeper than [`JSON_DEPTH_LIMIT`].
pub(crate) fn exceeds_depth_limit(json: &str) -> bool {
    code_mode_protocol::model::json_nesting_depth(json) > JSON_DEPTH_LIMIT
}

/// `String(value)`, copied with at most `max_bytes` (see [`bounded_string`]): like
/// `ToString`, but a symbol gives `Symbol(description)` instead of throwing. `None`: user
/// code threw (or the cell is stopping).
pub(crate) fn string_conversion(
    scope: &v8::PinScope<'_, '_>,
    value: v8::Local<'_, v8::Value>,
    max_bytes: usize,
) -> Option<String> {
    if let Some(text) = bounded_value_string(scope, value, max_bytes) {
        return Some(text);
    }
    if let Ok(symbol) = v8::Local::<v8::Symbol>::try_from(value) {
        let description = symbol.description(scope);
        let description = bounded_value_string(scope, description, max_bytes).unwrap_or_default();
        return Some(format!("Symbol({description})"));
    }
    let string = value.to_string(scope)?;
    Some(bounded_string(scope, string, max_bytes))
}

/// How `text(value)` and `console.log` show a value, copied with at most `max_bytes`:
/// strings, numbers, booleans, bigints, `null` and `undefined` by string conversion;
/// anything else as JSON, or by string conversion when JSON yields nothing. `None`: an
/// exception is pending (e.g. a cycle).
pub(crate) fn display_string(
    scope: &v8::PinScope<'_, '_>,
    value: v8::Local<'_, v8::Value>,
    max_bytes: usize,
) -> Option<String> {
    let primitive = value.is_string()
        || value.is_number()
        || value.is_boolean()
        || value.is_big_int()
        || value.is_null_or_undefined();
    if primitive {
        return string_conversion(scope, value, max_bytes);
    }
    match stringify(scope, value)? {
        Json::Text(text) => Some(bounded_string(scope, text, max_bytes)),
        Json::Nothing => string_conversion(scope, value, max_bytes),
    }
}

/// The text of a caught exception for use inside another message: `String(exception)`,
/// falling back to V8's side-effect-free description. Never fails; at most
/// [`ERROR_TEXT_MAX_BYTES`].
pub(crate) fn exception_message(
    scope: &mut v8::PinScope<'_, '_>,
    exception: v8::Local<'_, v8::Value>,
) -> String {
    v8::tc_scope!(let tc, scope);
    if let Some(text) = string_conversion(tc, exception, ERROR_TEXT_MAX_BYTES) {
        return text;
    }
    tc.reset();
    side_effect_free_text(tc, exception)
}

/// V8's description of a value that runs no user code (`#<Object>`, `[object Object]`).
fn side_effect_free_text(scope: &v8::PinScope<'_, '_>, value: v8::Local<'_, v8::Value>) -> String {
    value
        .to_detail_string(scope)
        .map(|text| bounded_string(scope, text, ERROR_TEXT_MAX_BYTES))
        .unwrap_or_else(|| code_mode_protocol::texts::UNDESCRIBABLE_EXCEPTION.to_owned())
}

/// The error text of an uncaught exception (contract 3.5): the thrown value's `stack` when
/// it is a string, else the value's string conversion, else V8's side-effect-free
/// description, at most [`ERROR_TEXT_MAX_BYTES`] (and a marker). Total: never panics, and
/// user code it reaches (a `stack` getter, a `toString`) runs under the cell's termination
/// like any other JS.
///
/// `stopped` tells whether the cell has stopped (`exit()`, termination). It is asked after
/// each piece of user code: once the cell stopped, nothing more runs and the text is empty
/// (the caller's end check decides the outcome). This matters because V8 lifts a
/// termination once no JS is left on the stack, so user code reached from here afterwards
/// would run unhindered.
pub(crate) fn error_text(
    scope: &mut v8::PinScope<'_, '_>,
    exception: v8::Local<'_, v8::Value>,
    stopped: &dyn Fn() -> bool,
) -> String {
    v8::tc_scope!(let tc, scope);
    if let Ok(object) = v8::Local::<v8::Object>::try_from(exception) {
        let key = v8_str(tc, "stack");
        let stack = object.get(tc, key.into());
        if stopped() || tc.has_terminated() {
            return String::new();
        }
        match stack {
            Some(stack) => {
                if let Some(text) = bounded_value_string(tc, stack, ERROR_TEXT_MAX_BYTES) {
                    return text;
                }
            }
            None => tc.reset(),
        }
    }
    let text = string_conversion(tc, exception, ERROR_TEXT_MAX_BYTES);
    if stopped() || tc.has_terminated() {
        return String::new();
    }
    if let Some(text) = text {
        return text;
    }
    tc.reset();
    side_effect_free_text(tc, exception)
}

/// Whether a caught exception is V8's stack overflow `RangeError`.
pub(crate) fn is_stack_overflow(
    scope: &mut v8::PinScope<'_, '_>,
    exception: v8::Local<'_, v8::Value>,
) -> bool {
    exception.is_native_error()
        && exception_message(scope, exception).contains("Maximum call stack size exceeded")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_limit_allows_exactly_the_limit() {
        let at_limit = format!(
            "{}{}",
            "[".repeat(JSON_DEPTH_LIMIT),
            "]".repeat(JSON_DEPTH_LIMIT)
        );
        assert!(!exceeds_depth_limit(&at_limit));
        let beyond = format!("[{at_limit}]");
        assert!(exceeds_depth_limit(&beyond));
    }
}
