//! The model-facing vocabulary: output items a cell produces and the kinds of nested tools.
//!
//! Owned here because the runtime (`code-mode`), the wire (`code-mode-bin`) and the agent
//! core (`code-mode-host`) all speak it. Enums are externally tagged on purpose: bincode is
//! not self-describing, so internally tagged or untagged representations would not
//! round-trip over the wire.

use std::fmt;

/// How much detail the model should see in an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ImageDetail {
    Auto,
    Low,
    #[default]
    High,
    Original,
}

impl ImageDetail {
    /// Every accepted spelling, in the order the contract's error message lists them.
    pub const ALL: [ImageDetail; 4] = [
        ImageDetail::Auto,
        ImageDetail::Low,
        ImageDetail::High,
        ImageDetail::Original,
    ];

    /// The lower-case name used by models and in JavaScript (`"auto"`, `"low"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ImageDetail::Auto => "auto",
            ImageDetail::Low => "low",
            ImageDetail::High => "high",
            ImageDetail::Original => "original",
        }
    }

    /// Parses the exact lower-case name; anything else is `None`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|detail| detail.as_str() == name)
    }
}

impl fmt::Display for ImageDetail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One item of a cell's output, in the order the cell produced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContentItem {
    /// `input_text { text }`
    InputText { text: String },
    /// `input_image { image_url, detail }`; `image_url` is always a `data:` URL.
    InputImage {
        image_url: String,
        detail: ImageDetail,
    },
    /// `input_audio { audio_url }`; `audio_url` is always a `data:` URL.
    InputAudio { audio_url: String },
}

impl ContentItem {
    /// A text item.
    pub fn text(text: impl Into<String>) -> Self {
        ContentItem::InputText { text: text.into() }
    }

    /// The text of a text item, `None` for an image or a clip.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            ContentItem::InputText { text } => Some(text),
            ContentItem::InputImage { .. } | ContentItem::InputAudio { .. } => None,
        }
    }
}

/// How a nested tool takes its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ToolKind {
    /// A JSON function tool: its input is a JSON value.
    #[default]
    Function,
    /// A freeform tool: its input is a string (`input: string` in the declaration).
    Freeform,
}

impl ToolKind {
    /// `"function"` or `"freeform"`, as the contract names them.
    pub fn as_str(self) -> &'static str {
        match self {
            ToolKind::Function => "function",
            ToolKind::Freeform => "freeform",
        }
    }
}

/// Maximum nesting of arrays and objects in any JSON value a cell sends, receives or
/// stores, everywhere in code-mode.
pub const JSON_DEPTH_LIMIT: usize = 128;

/// The deepest nesting of arrays and objects in a JSON text (0 for a scalar). Linear and
/// without recursion, so it is safe on any input; meant to run before a parser that
/// recurses.
pub fn json_nesting_depth(json: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for byte in json.bytes() {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Why [`parse_json`] refused a JSON text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    #[error("value is nested deeper than the limit of {JSON_DEPTH_LIMIT} levels")]
    TooDeep,
    #[error("it is not valid JSON ({0})")]
    Invalid(String),
}

/// JSON text with every escaped lone surrogate half (`"\ud800"` without its partner)
/// replaced by `\ufffd`, the replacement character; everything else is kept byte for byte.
///
/// JavaScript strings may hold lone halves and `JSON.stringify` writes them as escapes, but
/// a Rust string cannot hold one, so a strict parser refuses such text. The contract turns
/// them into U+FFFD wherever text leaves a cell (`text`, `notify`, tool arguments) and
/// accepts them the same way in tool results. Linear, and borrowed when there is nothing
/// to replace.
pub fn replace_lone_surrogate_escapes(json: &str) -> std::borrow::Cow<'_, str> {
    /// The value of the `\uXXXX` escape starting at `at` (which points at the backslash).
    fn escape_at(bytes: &[u8], at: usize) -> Option<u16> {
        let hex = bytes.get(at..at + 6)?;
        if hex[0] != b'\\' || hex[1] != b'u' {
            return None;
        }
        let digits = std::str::from_utf8(&hex[2..]).ok()?;
        u16::from_str_radix(digits, 16).ok()
    }
    let is_high = |unit: u16| (0xD800..0xDC00).contains(&unit);
    let is_low = |unit: u16| (0xDC00..0xE000).contains(&unit);

    let bytes = json.as_bytes();
    // Cheap precheck: no escape of a surrogate at all (the common case).
    if !bytes
        .windows(3)
        .any(|w| w[0] == b'\\' && w[1] == b'u' && matches!(w[2], b'd' | b'D'))
    {
        return std::borrow::Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len());
    let (mut copied, mut at, mut in_string) = (0usize, 0usize, false);
    while at < bytes.len() {
        match bytes[at] {
            b'"' => {
                in_string = !in_string;
                at += 1;
            }
            b'\\' if in_string => match escape_at(bytes, at) {
                Some(unit) if is_high(unit) => {
                    if escape_at(bytes, at + 6).is_some_and(is_low) {
                        at += 12; // a proper pair
                    } else {
                        out.push_str(&json[copied..at]);
                        out.push_str("\\ufffd");
                        at += 6;
                        copied = at;
                    }
                }
                Some(unit) if is_low(unit) => {
                    out.push_str(&json[copied..at]);
                    out.push_str("\\ufffd");
                    at += 6;
                    copied = at;
                }
                Some(_) => at += 6,
                // Any other escape is two bytes (`\"`, `\\`, `\n`, ...).
                None => at += 2,
            },
            _ => at += 1,
        }
    }
    if copied == 0 {
        return std::borrow::Cow::Borrowed(json);
    }
    out.push_str(&json[copied.min(json.len())..]);
    std::borrow::Cow::Owned(out)
}

/// Parses JSON text from anywhere, hostile included: the nesting is checked against
/// [`JSON_DEPTH_LIMIT`] by a linear scan first, so the recursive parser never sees more.
/// Key order is preserved. Escaped lone surrogate halves become U+FFFD (see
/// [`replace_lone_surrogate_escapes`]).
pub fn parse_json(text: &str) -> Result<serde_json::Value, JsonError> {
    if json_nesting_depth(text) > JSON_DEPTH_LIMIT {
        return Err(JsonError::TooDeep);
    }
    let text = replace_lone_surrogate_escapes(text);
    let mut deserializer = serde_json::Deserializer::from_str(&text);
    deserializer.disable_recursion_limit();
    let value = serde::Deserialize::deserialize(&mut deserializer)
        .map_err(|error: serde_json::Error| JsonError::Invalid(error.to_string()))?;
    deserializer
        .end()
        .map_err(|error| JsonError::Invalid(error.to_string()))?;
    Ok(value)
}

/// A nested tool enabled for a cell: what the runtime needs to bind `tools.<js name>` and
/// list it in `ALL_TOOLS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolDefinition {
    /// The tool's original name, namespace included (e.g. `mcp__github__search`).
    pub name: String,
    /// Shown to the cell in `ALL_TOOLS` (contract 8.3: the description followed by the
    /// tool's TypeScript declaration, as `ToolDescription::definition` writes it) and
    /// searched by `tools.tool_search` when the tool is deferred.
    pub description: String,
    pub kind: ToolKind,
    /// Callable and listed in `ALL_TOOLS`, but left out of the `exec` description: the
    /// cell finds it with `tools.tool_search` (contract 8.3).
    pub deferred: bool,
}

impl ToolDefinition {
    pub fn new(name: impl Into<String>, description: impl Into<String>, kind: ToolKind) -> Self {
        Self {
            name: name.into(),
            description: description.into(),
            kind,
            deferred: false,
        }
    }

    /// The same tool, deferred (or not).
    pub fn with_deferred(mut self, deferred: bool) -> Self {
        self.deferred = deferred;
        self
    }

    /// The name the cell calls it by: `tools.<js_name>`.
    pub fn js_name(&self) -> String {
        js_tool_name(&self.name)
    }
}

/// The JavaScript name of a nested tool (contract section 6): every character outside
/// `[A-Za-z0-9_$]` becomes `_`, a leading digit too; an empty name becomes `_`.
///
/// The one implementation: the runtime binds `tools.<name>` with it and the description
/// builder prints it, so the model always sees the name it can call.
pub fn js_tool_name(name: &str) -> String {
    if name.is_empty() {
        return "_".to_owned();
    }
    name.chars()
        .enumerate()
        .map(|(index, c)| {
            let allowed = c.is_ascii_alphanumeric() || c == '_' || c == '$';
            if !allowed || (index == 0 && c.is_ascii_digit()) {
                '_'
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn js_names_follow_the_contract() {
        assert_eq!(js_tool_name("read_file"), "read_file");
        assert_eq!(
            js_tool_name("mcp__server__do-thing"),
            "mcp__server__do_thing"
        );
        assert_eq!(js_tool_name("a.b/c d"), "a_b_c_d");
        assert_eq!(js_tool_name("9lives"), "_lives");
        assert_eq!(js_tool_name("x9"), "x9");
        assert_eq!(js_tool_name("$dollar"), "$dollar");
        assert_eq!(js_tool_name(""), "_");
        assert_eq!(js_tool_name("é"), "_");
    }

    #[test]
    fn nesting_depth_ignores_brackets_inside_strings() {
        assert_eq!(json_nesting_depth("1"), 0);
        assert_eq!(json_nesting_depth("[]"), 1);
        assert_eq!(json_nesting_depth(r#"{"a":[{"b":"[[[{"}]}"#), 3);
        assert_eq!(json_nesting_depth(r#"["\"[[", ["x"]]"#), 2);
        assert_eq!(json_nesting_depth(r#"["\\", [[]]]"#), 3);
    }

    #[test]
    fn json_is_parsed_within_the_depth_limit_in_key_order() {
        let value = parse_json(r#"{"b":1,"a":[true]}"#).unwrap();
        assert_eq!(value.to_string(), r#"{"b":1,"a":[true]}"#);
        let at_limit = format!(
            "{}{}",
            "[".repeat(JSON_DEPTH_LIMIT),
            "]".repeat(JSON_DEPTH_LIMIT)
        );
        assert!(parse_json(&at_limit).is_ok());
        let deep = format!("[{at_limit}]");
        assert_eq!(parse_json(&deep), Err(JsonError::TooDeep));
        let hostile = "[".repeat(1_000_000);
        assert_eq!(parse_json(&hostile), Err(JsonError::TooDeep));
        assert!(matches!(parse_json("{"), Err(JsonError::Invalid(_))));
        assert!(matches!(parse_json("1 2"), Err(JsonError::Invalid(_))));
    }

    #[test]
    fn lone_surrogate_escapes_become_the_replacement_character() {
        let fix = |text: &str| replace_lone_surrogate_escapes(text).into_owned();
        // Lone halves, either case, at the end, before another escape, in keys.
        assert_eq!(fix(r#""\ud800""#), r#""\ufffd""#);
        assert_eq!(fix(r#""a\uDFFFb""#), r#""a\ufffdb""#);
        assert_eq!(fix(r#"{"\ud83d":"\ude00\n"}"#), r#"{"\ufffd":"\ufffd\n"}"#);
        assert_eq!(fix(r#""\ud83d\ud83d\ude00""#), r#""\ufffd\ud83d\ude00""#);
        // Proper pairs, other escapes, an escaped backslash before `ud800` and text
        // outside strings are kept byte for byte (and borrowed).
        for kept in [
            r#""\ud83d\ude00""#,
            r#""\\ud800""#,
            r#"["\u00e9", "\"\ud83d\ude00\"", 1]"#,
            r#""plain""#,
        ] {
            assert!(matches!(
                replace_lone_surrogate_escapes(kept),
                std::borrow::Cow::Borrowed(_)
            ));
        }
        // What V8 writes for "😀😀".slice(0, 3) parses, with U+FFFD for the cut half.
        let value = parse_json(r#"{"a":"\ud83d\ude00\ud83d"}"#).unwrap();
        assert_eq!(value["a"], "😀\u{fffd}");
        // A truncated escape is still refused by the parser, not mangled.
        assert!(matches!(
            parse_json(r#""\ud8""#),
            Err(JsonError::Invalid(_))
        ));
    }

    #[test]
    fn image_detail_names_round_trip() {
        for detail in ImageDetail::ALL {
            assert_eq!(ImageDetail::parse(detail.as_str()), Some(detail));
        }
        assert_eq!(ImageDetail::parse("HIGH"), None);
        assert_eq!(ImageDetail::default(), ImageDetail::High);
    }
}
