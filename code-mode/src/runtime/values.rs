//! Conversions between JS values and what the runtime hands out: JSON text, display text
//! and error text.
//!
//! JSON goes through V8's built-in serializer and parser (the C++ `v8::JSON` API), never
//! through the global `JSON` object, so a cell that replaces `JSON.stringify` or
//! `JSON.parse` changes nothing here. Every function that can run user code (getters,
//! `toJSON`, `toString`, proxies) returns `None` when that code throws or the cell is being
//! stopped, leaving the exception pending for the caller to propagate or catch.

use super::JSON_DEPTH_LIMIT;

/// Message of a JSON value nested deeper than [`JSON_DEPTH_LIMIT`].
pub(crate) fn depth_error_detail() -> String {
    format!("value is nested deeper than the limit of {JSON_DEPTH_LIMIT} levels")
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

/// The result of JSON serialization with `JSON.stringify` semantics.
pub(crate) enum Json {
    /// Serialized JSON text.
    Text(String),
    /// `JSON.stringify` yields `undefined` for this value (undefined, a function, a symbol,
    /// or a `toJSON` that returns one of those).
    Nothing,
}

/// `JSON.stringify(value)` with V8's built-in serializer. `None`: an exception is pending
/// (a cycle, a BigInt, a throwing getter or `toJSON`, a stack overflow, termination).
pub(crate) fn stringify(
    scope: &v8::PinScope<'_, '_>,
    value: v8::Local<'_, v8::Value>,
) -> Option<Json> {
    let json = v8::json::stringify(scope, value)?;
    let text = json.to_rust_string_lossy(scope);
    // The C++ API converts an `undefined` result to the string "undefined"; that text is
    // never valid JSON (a string value would be quoted), so it can only mean "nothing".
    if text == "undefined" {
        Some(Json::Nothing)
    } else {
        Some(Json::Text(text))
    }
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

/// `String(value)`: like `ToString`, but a symbol gives `Symbol(description)` instead of
/// throwing. `None`: user code threw (or the cell is stopping).
pub(crate) fn string_conversion(
    scope: &v8::PinScope<'_, '_>,
    value: v8::Local<'_, v8::Value>,
) -> Option<String> {
    if value.is_string() {
        return Some(value.to_rust_string_lossy(scope));
    }
    if let Ok(symbol) = v8::Local::<v8::Symbol>::try_from(value) {
        let description = symbol.description(scope);
        let description = if description.is_undefined() {
            String::new()
        } else {
            description.to_rust_string_lossy(scope)
        };
        return Some(format!("Symbol({description})"));
    }
    Some(value.to_string(scope)?.to_rust_string_lossy(scope))
}

/// How `text(value)` and `console.log` show a value: strings, numbers, booleans, bigints,
/// `null` and `undefined` by string conversion; anything else as JSON, or by string
/// conversion when JSON yields nothing. `None`: an exception is pending (e.g. a cycle).
pub(crate) fn display_string(
    scope: &v8::PinScope<'_, '_>,
    value: v8::Local<'_, v8::Value>,
) -> Option<String> {
    let primitive = value.is_string()
        || value.is_number()
        || value.is_boolean()
        || value.is_big_int()
        || value.is_null_or_undefined();
    if primitive {
        return string_conversion(scope, value);
    }
    match stringify(scope, value)? {
        Json::Text(text) => Some(text),
        Json::Nothing => string_conversion(scope, value),
    }
}

/// The text of a caught exception for use inside another message: `String(exception)`,
/// falling back to V8's side-effect-free description. Never fails.
pub(crate) fn exception_message(
    scope: &mut v8::PinScope<'_, '_>,
    exception: v8::Local<'_, v8::Value>,
) -> String {
    v8::tc_scope!(let tc, scope);
    if let Some(text) = string_conversion(tc, exception) {
        return text;
    }
    tc.reset();
    side_effect_free_text(tc, exception)
}

/// V8's description of a value that runs no user code (`#<Object>`, `[object Object]`).
fn side_effect_free_text(scope: &v8::PinScope<'_, '_>, value: v8::Local<'_, v8::Value>) -> String {
    value
        .to_detail_string(scope)
        .map(|text| text.to_rust_string_lossy(scope))
        .unwrap_or_else(|| "uncaught exception (its value could not be described)".to_owned())
}

/// The error text of an uncaught exception (contract 3.5): the thrown value's `stack` when
/// it is a string, else the value's string conversion, else V8's side-effect-free
/// description. Total: never panics, and user code it reaches (a `stack` getter, a
/// `toString`) runs under the cell's termination like any other JS.
pub(crate) fn error_text(
    scope: &mut v8::PinScope<'_, '_>,
    exception: v8::Local<'_, v8::Value>,
) -> String {
    v8::tc_scope!(let tc, scope);
    if let Ok(object) = v8::Local::<v8::Object>::try_from(exception) {
        let key = v8_str(tc, "stack");
        match object.get(tc, key.into()) {
            Some(stack) if stack.is_string() => return stack.to_rust_string_lossy(tc),
            Some(_) => {}
            None => tc.reset(),
        }
    }
    if let Some(text) = string_conversion(tc, exception) {
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
