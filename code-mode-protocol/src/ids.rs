//! The ids a session hands out: [`CellId`] for a cell, [`CallId`] for one of its nested
//! tool calls, and [`ToolError`], the typed failure of a tool call.
//!
//! Text becomes an id once, where it enters (a model's `wait`, a JSON-lines request, a
//! wire frame); everything behind that edge compares numbers. `Display` writes the
//! model-facing text, which parsing reads back exactly.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// The id of a cell: the generation of the runtime that runs it and its number in its
/// session (`1`, `2`, ...).
///
/// A session that never lost its runtime is generation 1, whose ids are the bare numbers.
/// When a host replaces a lost runtime process, the cells of the new process are
/// generation 2 (`g2:1`, `g2:2`, ...), and so on, so that an id of a lost cell never names
/// a new one.
///
/// Text that is no cell id in this form (`abc`, `01`, `g1:3`) is kept as it was given: it
/// never names a cell, and `wait` on it answers `exec cell <text> not found` with the text
/// unchanged.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CellId(Repr);

#[derive(Clone, PartialEq, Eq, Hash)]
enum Repr {
    Cell { generation: u64, number: u64 },
    Foreign(Box<str>),
}

impl CellId {
    /// Cell `number` of a session's first runtime.
    pub const fn new(number: u64) -> Self {
        Self(Repr::Cell {
            generation: 1,
            number,
        })
    }

    /// The same cell number in runtime generation `generation` (at least 1).
    pub fn in_generation(&self, generation: u64) -> Self {
        match self.0 {
            Repr::Cell { number, .. } => Self(Repr::Cell {
                generation: generation.max(1),
                number,
            }),
            Repr::Foreign(_) => self.clone(),
        }
    }

    /// The runtime generation; `None` for text that names no cell.
    pub fn generation(&self) -> Option<u64> {
        match self.0 {
            Repr::Cell { generation, .. } => Some(generation),
            Repr::Foreign(_) => None,
        }
    }

    /// The cell's number in its session; `None` for text that names no cell.
    pub fn number(&self) -> Option<u64> {
        match self.0 {
            Repr::Cell { number, .. } => Some(number),
            Repr::Foreign(_) => None,
        }
    }

    /// Reads an id from its text. Never fails: text in no id form is kept, and names no
    /// cell.
    pub fn parse(text: &str) -> Self {
        let parsed = match text.strip_prefix('g').and_then(|rest| rest.split_once(':')) {
            Some((generation, number)) => parse_decimal(generation)
                .filter(|generation| *generation >= 2)
                .zip(parse_decimal(number)),
            None => parse_decimal(text).map(|number| (1, number)),
        };
        match parsed {
            Some((generation, number)) => Self(Repr::Cell { generation, number }),
            None => Self(Repr::Foreign(text.into())),
        }
    }
}

/// A decimal number written the one way `Display` writes it: no sign, no leading zero.
fn parse_decimal(text: &str) -> Option<u64> {
    let canonical = !text.is_empty()
        && text.bytes().all(|byte| byte.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    canonical.then(|| text.parse().ok()).flatten()
}

impl fmt::Display for CellId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Cell {
                generation: 1,
                number,
            } => write!(f, "{number}"),
            Repr::Cell { generation, number } => write!(f, "g{generation}:{number}"),
            Repr::Foreign(text) => f.write_str(text),
        }
    }
}

impl fmt::Debug for CellId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CellId({:?})", self.to_string())
    }
}

impl FromStr for CellId {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Self::parse(text))
    }
}

impl From<&str> for CellId {
    fn from(text: &str) -> Self {
        Self::parse(text)
    }
}

impl From<String> for CellId {
    fn from(text: String) -> Self {
        Self::parse(&text)
    }
}

impl From<&String> for CellId {
    fn from(text: &String) -> Self {
        Self::parse(text)
    }
}

impl From<&CellId> for CellId {
    fn from(id: &CellId) -> Self {
        id.clone()
    }
}

impl PartialEq<str> for CellId {
    fn eq(&self, other: &str) -> bool {
        match &self.0 {
            Repr::Foreign(text) => **text == *other,
            Repr::Cell { .. } => Self::parse(other) == *self,
        }
    }
}

impl PartialEq<&str> for CellId {
    fn eq(&self, other: &&str) -> bool {
        *self == **other
    }
}

impl PartialEq<String> for CellId {
    fn eq(&self, other: &String) -> bool {
        *self == **other
    }
}

/// The id of a nested tool call: `tool-1`, `tool-2`, ..., numbered per cell in the order
/// the cell made its calls.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallId(u64);

impl CallId {
    pub const fn new(number: u64) -> Self {
        Self(number)
    }

    /// The call's number in its cell.
    pub const fn number(self) -> u64 {
        self.0
    }
}

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tool-{}", self.0)
    }
}

impl fmt::Debug for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CallId(\"tool-{}\")", self.0)
    }
}

/// Text that is no call id (`tool-` and a number).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a tool call id (tool-1, tool-2, ...)")]
pub struct NotACallId(pub String);

impl FromStr for CallId {
    type Err = NotACallId;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.strip_prefix("tool-")
            .and_then(parse_decimal)
            .map(Self)
            .ok_or_else(|| NotACallId(text.to_owned()))
    }
}

impl PartialEq<str> for CallId {
    fn eq(&self, other: &str) -> bool {
        other.parse() == Ok(*self)
    }
}

impl PartialEq<&str> for CallId {
    fn eq(&self, other: &&str) -> bool {
        *self == **other
    }
}

/// Serialises ids as their text (`Display`) and reads them back with `FromStr`, so that
/// the wire and every JSON form carry the text the model sees.
macro_rules! serde_as_text {
    ($($id:ty),*) => {
        $(
            impl Serialize for $id {
                fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                    serializer.collect_str(self)
                }
            }

            impl<'de> Deserialize<'de> for $id {
                fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                    let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
                    text.parse().map_err(serde::de::Error::custom)
                }
            }
        )*
    };
}

serde_as_text!(CellId, CallId);

/// Why a nested tool call failed, as the cell sees it: its promise rejects with an `Error`
/// whose message is this text.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
#[error("{0}")]
#[serde(transparent)]
pub struct ToolError(String);

impl ToolError {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }

    /// The error of a call whose cell no longer wants the answer: `cancelled`.
    pub fn cancelled() -> Self {
        Self::new(crate::texts::CANCELLED)
    }

    pub fn message(&self) -> &str {
        &self.0
    }

    pub fn into_message(self) -> String {
        self.0
    }
}

impl fmt::Debug for ToolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ToolError({:?})", self.0)
    }
}

impl From<String> for ToolError {
    fn from(message: String) -> Self {
        Self(message)
    }
}

impl From<&str> for ToolError {
    fn from(message: &str) -> Self {
        Self(message.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cell_ids_read_back_what_they_write() {
        for text in ["1", "0", "42", "g2:1", "g17:305"] {
            let id = CellId::parse(text);
            assert!(id.number().is_some(), "{text}");
            assert_eq!(id.to_string(), text);
        }
        assert_eq!(CellId::parse("g3:7").generation(), Some(3));
        assert_eq!(CellId::parse("g3:7").number(), Some(7));
        assert_eq!(CellId::new(7).in_generation(3), CellId::parse("g3:7"));
        assert_eq!(CellId::parse("g3:7").in_generation(1), CellId::new(7));
    }

    #[test]
    fn text_in_no_id_form_names_no_cell_and_is_kept() {
        for text in [
            "",
            "abc",
            "01",
            "-1",
            "+1",
            "g1:3",
            "g0:3",
            "g02:3",
            "g2:",
            "g:2",
            "g2:x",
            "1 ",
            "99999999999999999999999",
        ] {
            let id = CellId::parse(text);
            assert_eq!(id.number(), None, "{text:?}");
            assert_eq!(id.to_string(), text);
            assert_ne!(id, CellId::new(1));
        }
        assert_eq!(CellId::parse("g1:3"), "g1:3");
        assert_ne!(CellId::parse("g1:3"), CellId::new(3));
    }

    #[test]
    fn cell_ids_compare_with_their_text() {
        assert_eq!(CellId::new(3), "3");
        assert_eq!(CellId::new(3).in_generation(2), "g2:3");
        assert_ne!(CellId::new(3), "03");
        assert_ne!(CellId::new(3), "g2:3");
    }

    #[test]
    fn call_ids_are_tool_and_a_number() {
        assert_eq!(CallId::new(4).to_string(), "tool-4");
        assert_eq!("tool-4".parse(), Ok(CallId::new(4)));
        for text in ["tool-", "tool-04", "4", "Tool-4", "tool-x"] {
            assert_eq!(
                text.parse::<CallId>(),
                Err(NotACallId(text.to_owned())),
                "{text}"
            );
        }
    }

    #[test]
    fn ids_serialise_as_their_text() {
        let json = serde_json::to_string(&(CellId::parse("g2:5"), CallId::new(3))).unwrap();
        assert_eq!(json, r#"["g2:5","tool-3"]"#);
        let back: (CellId, CallId) = serde_json::from_str(&json).unwrap();
        assert_eq!(back, (CellId::parse("g2:5"), CallId::new(3)));
        assert!(serde_json::from_str::<CallId>(r#""c1""#).is_err());
    }
}
