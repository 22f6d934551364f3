//! [`JsonText`]: a tool payload kept as the JSON text it travels as. A tool argument leaves
//! V8 as text (`JSON.stringify`), crosses the wire as text and is parsed into a value only
//! where a value is really needed (an agent core's delegate that takes
//! `serde_json::Value`); a result goes back the same way and is parsed once, by the cell's
//! `JSON.parse`. Passing text through saves a parse and a serialisation at every hop that
//! only forwards it (up to the 32 MiB payload limit each).

use crate::model::{JsonError, parse_json};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Text meant to be JSON. Holding one promises nothing: it is checked where it is used,
/// by [`JsonText::to_value`] (the bounded parser) or by the cell's `JSON.parse`, which
/// rejects the call with a clear message. Serialises as a plain string.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JsonText(String);

impl JsonText {
    /// Wraps text as it arrived (from V8, the wire or a delegate).
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// The text of `value`.
    pub fn from_value(value: &serde_json::Value) -> Self {
        Self(value.to_string())
    }

    /// Parses the text with the bounded parser ([`parse_json`]): nesting limited, escaped
    /// lone surrogates replaced by U+FFFD.
    pub fn to_value(&self) -> Result<serde_json::Value, JsonError> {
        parse_json(&self.0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for JsonText {
    /// At most 200 bytes of the text: payloads may be megabytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 200;
        if self.0.len() <= SHOWN {
            return write!(f, "JsonText({:?})", self.0);
        }
        let mut end = SHOWN;
        while !self.0.is_char_boundary(end) {
            end -= 1;
        }
        write!(f, "JsonText({:?}… {} bytes)", &self.0[..end], self.0.len())
    }
}

impl fmt::Display for JsonText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for JsonText {
    fn from(text: String) -> Self {
        Self(text)
    }
}

impl From<&str> for JsonText {
    fn from(text: &str) -> Self {
        Self(text.to_owned())
    }
}

impl From<&serde_json::Value> for JsonText {
    fn from(value: &serde_json::Value) -> Self {
        Self::from_value(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_passes_through_and_parses_on_demand() {
        let text = JsonText::new(r#"{"b":1,"a":"\ud800"}"#);
        assert_eq!(text.as_str(), r#"{"b":1,"a":"\ud800"}"#);
        let value = text.to_value().unwrap();
        assert_eq!(value["a"], "\u{fffd}");
        assert_eq!(JsonText::from_value(&value).as_str(), r#"{"b":1,"a":"�"}"#);
        assert!(JsonText::new("{").to_value().is_err());
        assert!(JsonText::new("[".repeat(10_000)).to_value().is_err());
    }

    #[test]
    fn it_serialises_as_a_plain_string_and_debug_is_bounded() {
        let text = JsonText::new("[1,2]");
        assert_eq!(serde_json::to_string(&text).unwrap(), r#""[1,2]""#);
        let long = JsonText::new(format!("\"{}\"", "é".repeat(1_000)));
        let shown = format!("{long:?}");
        assert!(
            shown.len() < 300 && shown.ends_with("2002 bytes)"),
            "{shown}"
        );
    }
}
