//! JSON Schema → TypeScript type expressions, for the tool declarations in `exec`'s
//! description.
//!
//! Handled: `true` (`unknown`), `false` (`never`), `const` and `enum` (literal unions),
//! `anyOf`/`oneOf` (`|`), `allOf` (`&`), `type` (also as an array: a union), objects
//! (sorted keys, `?` for optional, `[key: string]: T` for `additionalProperties`, a bare
//! object is `[key: string]: unknown`), property descriptions as `//` comments, arrays and
//! tuples (`prefixItems`, or `items` as an array), and local `$ref`s (`#` and `#/...`
//! JSON pointers with `~0`/`~1`), each expanded at most twice along one path and then
//! `unknown`, so recursive schemas terminate. A `$ref` with sibling keywords is an
//! intersection. Anything else is `unknown`.

use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};

/// How many times one `$ref` may be expanded along a single path.
pub const MAX_REF_EXPANSIONS: usize = 2;

/// Spaces per indentation level.
const INDENT: &str = "  ";

/// Binding strength of a rendered type, to know when parentheses are needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Prec {
    Union,
    Intersection,
    Primary,
}

struct Ts {
    text: String,
    prec: Prec,
}

impl Ts {
    fn primary(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            prec: Prec::Primary,
        }
    }

    fn unknown() -> Self {
        Self::primary("unknown")
    }

    /// The text, parenthesised if it binds looser than `at_least`.
    fn at(self, at_least: Prec) -> String {
        if self.prec < at_least {
            format!("({})", self.text)
        } else {
            self.text
        }
    }
}

/// Renders `schema` as a TypeScript type, at indentation `level` (for multi-line objects).
/// `$ref`s resolve against `schema` itself.
pub fn schema_to_typescript(schema: &Value, level: usize) -> String {
    Renderer::new(schema).render(schema, level).text
}

struct Renderer<'a> {
    root: &'a Value,
    /// Expansions of each `$ref` along the current path.
    expansions: HashMap<String, usize>,
}

impl<'a> Renderer<'a> {
    fn new(root: &'a Value) -> Self {
        Self {
            root,
            expansions: HashMap::new(),
        }
    }

    fn render(&mut self, schema: &'a Value, level: usize) -> Ts {
        match schema {
            Value::Bool(true) => Ts::unknown(),
            Value::Bool(false) => Ts::primary("never"),
            Value::Object(map) => self.render_object_schema(map, level),
            _ => Ts::unknown(),
        }
    }

    fn render_object_schema(&mut self, map: &'a Map<String, Value>, level: usize) -> Ts {
        let rest = self.render_keywords(map, level);
        match map.get("$ref") {
            // A `$ref` with sibling keywords is the intersection of both; with only
            // annotations beside it, it is the referenced type alone.
            Some(Value::String(reference)) => {
                let target = self.resolve(reference, level);
                match rest {
                    Some(rest) => intersection(vec![target, rest]),
                    None => target,
                }
            }
            _ => rest.unwrap_or_else(Ts::unknown),
        }
    }

    /// Everything but `$ref`: the base type and the combinators, intersected; `None` when
    /// the schema constrains nothing.
    fn render_keywords(&mut self, map: &'a Map<String, Value>, level: usize) -> Option<Ts> {
        let mut members = Vec::new();
        if let Some(base) = self.render_base(map, level) {
            members.push(base);
        }
        for keyword in ["anyOf", "oneOf"] {
            if let Some(Value::Array(options)) = map.get(keyword) {
                let options = options
                    .iter()
                    .map(|option| self.render(option, level))
                    .collect();
                members.push(union(options));
            }
        }
        if let Some(Value::Array(parts)) = map.get("allOf") {
            members.extend(parts.iter().map(|part| self.render(part, level)));
        }
        (!members.is_empty()).then(|| intersection(members))
    }

    /// The type from `const`, `enum`, `type`, or the shape keywords.
    fn render_base(&mut self, map: &'a Map<String, Value>, level: usize) -> Option<Ts> {
        if let Some(constant) = map.get("const") {
            return Some(literal(constant));
        }
        if let Some(Value::Array(values)) = map.get("enum") {
            return Some(union(values.iter().map(literal).collect()));
        }
        match map.get("type") {
            Some(Value::String(kind)) => Some(self.render_type(kind, map, level)),
            Some(Value::Array(kinds)) => {
                let kinds = kinds
                    .iter()
                    .filter_map(Value::as_str)
                    .map(|kind| self.render_type(kind, map, level))
                    .collect();
                Some(union(kinds))
            }
            _ => {
                let object_like = ["properties", "additionalProperties", "required"]
                    .iter()
                    .any(|key| map.contains_key(*key));
                let array_like = map.contains_key("items") || map.contains_key("prefixItems");
                if object_like {
                    Some(self.render_object(map, level))
                } else if array_like {
                    Some(self.render_array(map, level))
                } else {
                    None
                }
            }
        }
    }

    fn render_type(&mut self, kind: &str, map: &'a Map<String, Value>, level: usize) -> Ts {
        match kind {
            "string" => Ts::primary("string"),
            "number" | "integer" => Ts::primary("number"),
            "boolean" => Ts::primary("boolean"),
            "null" => Ts::primary("null"),
            "object" => self.render_object(map, level),
            "array" => self.render_array(map, level),
            _ => Ts::unknown(),
        }
    }

    fn render_object(&mut self, map: &'a Map<String, Value>, level: usize) -> Ts {
        let properties: BTreeMap<&'a String, &'a Value> = match map.get("properties") {
            Some(Value::Object(properties)) => properties.iter().collect(),
            _ => BTreeMap::new(),
        };
        let required: Vec<&str> = match map.get("required") {
            Some(Value::Array(names)) => names.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let inner = INDENT.repeat(level + 1);
        let mut lines = Vec::new();
        for (name, property) in &properties {
            if let Some(description) = property.get("description").and_then(Value::as_str) {
                for line in description.trim().lines() {
                    lines.push(format!("{inner}// {}", line.trim_end()));
                }
            }
            let optional = if required.contains(&name.as_str()) {
                ""
            } else {
                "?"
            };
            let rendered = self.render(property, level + 1).text;
            lines.push(format!(
                "{inner}{}{optional}: {rendered};",
                property_name(name)
            ));
        }
        let index_signature = match map.get("additionalProperties") {
            Some(Value::Bool(false)) => None,
            Some(Value::Bool(true)) => Some("unknown".to_owned()),
            Some(schema @ Value::Object(_)) => Some(self.render(schema, level + 1).text),
            _ if properties.is_empty() => Some("unknown".to_owned()),
            _ => None,
        };
        if let Some(value) = index_signature {
            lines.push(format!("{inner}[key: string]: {value};"));
        }
        if lines.is_empty() {
            return Ts::primary("{}");
        }
        let outer = INDENT.repeat(level);
        Ts::primary(format!("{{\n{}\n{outer}}}", lines.join("\n")))
    }

    fn render_array(&mut self, map: &'a Map<String, Value>, level: usize) -> Ts {
        let (prefix, rest) = match (map.get("prefixItems"), map.get("items")) {
            (Some(Value::Array(prefix)), rest) => (Some(prefix), rest),
            (_, Some(Value::Array(prefix))) => (Some(prefix), map.get("additionalItems")),
            (_, items) => (None, items),
        };
        let Some(prefix) = prefix else {
            let element = match rest {
                Some(items) => self.render(items, level),
                None => Ts::unknown(),
            };
            return Ts::primary(format!("{}[]", element.at(Prec::Primary)));
        };
        let mut members: Vec<String> = prefix
            .iter()
            .map(|item| self.render(item, level).text)
            .collect();
        match rest {
            None | Some(Value::Bool(false)) => {}
            Some(rest) => {
                let element = self.render(rest, level);
                members.push(format!("...{}[]", element.at(Prec::Primary)));
            }
        }
        Ts::primary(format!("[{}]", members.join(", ")))
    }

    /// Expands a local `$ref`, at most [`MAX_REF_EXPANSIONS`] times along one path.
    fn resolve(&mut self, reference: &str, level: usize) -> Ts {
        let Some(pointer) = reference.strip_prefix('#') else {
            return Ts::unknown();
        };
        let count = self.expansions.entry(reference.to_owned()).or_insert(0);
        if *count >= MAX_REF_EXPANSIONS {
            return Ts::unknown();
        }
        *count += 1;
        let rendered = match json_pointer(self.root, pointer) {
            Some(target) => self.render(target, level),
            None => Ts::unknown(),
        };
        if let Some(count) = self.expansions.get_mut(reference) {
            *count -= 1;
        }
        rendered
    }
}

/// Follows a JSON pointer (`""` is the root; `~1` is `/`, `~0` is `~`).
fn json_pointer<'v>(root: &'v Value, pointer: &str) -> Option<&'v Value> {
    if pointer.is_empty() {
        return Some(root);
    }
    let mut current = root;
    for token in pointer.strip_prefix('/')?.split('/') {
        let token = token.replace("~1", "/").replace("~0", "~");
        current = match current {
            Value::Object(map) => map.get(&token)?,
            Value::Array(items) => items.get(token.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(current)
}

fn literal(value: &Value) -> Ts {
    Ts::primary(serde_json::to_string(value).unwrap_or_else(|_| "unknown".to_owned()))
}

fn union(mut members: Vec<Ts>) -> Ts {
    match members.len() {
        0 => Ts::primary("never"),
        1 => members.remove(0),
        _ => Ts {
            text: members
                .into_iter()
                .map(|member| member.at(Prec::Union))
                .collect::<Vec<_>>()
                .join(" | "),
            prec: Prec::Union,
        },
    }
}

fn intersection(mut members: Vec<Ts>) -> Ts {
    match members.len() {
        0 => Ts::unknown(),
        1 => members.remove(0),
        _ => Ts {
            text: members
                .into_iter()
                .map(|member| member.at(Prec::Intersection))
                .collect::<Vec<_>>()
                .join(" & "),
            prec: Prec::Intersection,
        },
    }
}

/// A property name as TypeScript accepts it: bare if it is an identifier, else quoted.
fn property_name(name: &str) -> String {
    let mut chars = name.chars();
    let identifier = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
    if identifier {
        name.to_owned()
    } else {
        serde_json::to_string(name).unwrap_or_else(|_| format!("\"{name}\""))
    }
}

/// If `schema` is shaped like an MCP `CallToolResult` (an object whose properties are
/// `content` (an array) and optionally `structuredContent`, `isError`, `_meta`), returns
/// the schema of its `structuredContent` (`None` when absent).
pub fn call_tool_result_payload(schema: &Value) -> Option<Option<&Value>> {
    let properties = schema.get("properties")?.as_object()?;
    let content = properties.get("content")?;
    let content_is_array = content.get("type").and_then(Value::as_str) == Some("array")
        || content.get("items").is_some();
    let known = ["content", "structuredContent", "isError", "_meta"];
    if !content_is_array || !properties.keys().all(|key| known.contains(&key.as_str())) {
        return None;
    }
    Some(properties.get("structuredContent"))
}

/// Renders `schema` with `$ref`s resolved against `root` (for a part of a larger schema).
pub fn subschema_to_typescript(schema: &Value, root: &Value, level: usize) -> String {
    Renderer::new(root).render(schema, level).text
}
