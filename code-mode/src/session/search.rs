//! `tools.tool_search` answered (contract 8.3): the BM25 index over a tool set's deferred
//! tools, and the set a cell gets with `tool_search` added (its name, declaration and
//! texts are the protocol crate's `search`). Only sessions that run cells use it.
//!
//! The index is a small module of its own rather than a crate: what is indexed is fixed by
//! the contract (a tool's name split on `_`, `.`, `-` and camelCase, its namespace, its
//! description and declaration), ties must keep the tools' order, and the whole of it is
//! an inverted index and one formula. The BM25 crates on offer bring their own tokenizers
//! (language detection, stemmers) and their own tie order, which would have to be worked
//! around for both; identifiers need the splitting above more than a stemmer.
//!
//! A [`SearchableTools`] is built once per tool set and shared by every cell that uses
//! the same set ([`SearchCache`]), so a session with thousands of deferred tools builds
//! their index once, not per exec.

use code_mode_internal::sync::lock;
use code_mode_protocol::search::{
    DEFAULT_SEARCH_LIMIT, LIMIT_NOT_POSITIVE, QUERY_EMPTY, TOOL_SEARCH_NAME, tool_search_definition,
};
use code_mode_protocol::{JsonText, ToolDefinition, ToolError, js_tool_name};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// BM25's term-frequency saturation.
const K1: f64 = 1.2;
/// BM25's length normalisation.
const B: f64 = 0.75;
/// How many times a token of the tool's name counts, against once for the description: a
/// tool named for what the query asks is the better match.
const NAME_WEIGHT: u32 = 3;

/// English words that say nothing about a tool: a query in plain words ("what is the
/// weather in Paris") should not rank tools by them.
const STOP_WORDS: [&str; 32] = [
    "a", "an", "and", "are", "as", "at", "be", "by", "can", "do", "for", "from", "how", "i", "in",
    "is", "it", "me", "my", "of", "on", "or", "that", "the", "this", "to", "use", "what", "which",
    "with", "you", "your",
];

/// The words of `text`, as the index and the queries see them: split on everything that
/// is not a letter or a digit, and on camelCase humps (`getWeather`, `HTTPServer`),
/// lower-cased, with a plural `s` dropped (`files` finds `file`) and `STOP_WORDS` left
/// out.
pub fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let characters: Vec<char> = text.chars().collect();
    for (at, &character) in characters.iter().enumerate() {
        if !character.is_alphanumeric() {
            push_token(&mut out, &mut word);
            continue;
        }
        if character.is_uppercase() && !word.is_empty() {
            let previous = characters[at - 1];
            let next_is_lower = characters.get(at + 1).is_some_and(|c| c.is_lowercase());
            // `getWeather` splits before `W`; `HTTPServer` splits before the `S` of `Server`.
            if previous.is_lowercase()
                || previous.is_ascii_digit()
                || (previous.is_uppercase() && next_is_lower)
            {
                push_token(&mut out, &mut word);
            }
        }
        word.extend(character.to_lowercase());
    }
    push_token(&mut out, &mut word);
    out
}

fn push_token(out: &mut Vec<String>, word: &mut String) {
    if word.is_empty() {
        return;
    }
    let mut token = std::mem::take(word);
    if STOP_WORDS.contains(&token.as_str()) {
        return;
    }
    if token.len() > 3 && token.ends_with('s') && !token.ends_with("ss") {
        token.pop();
    }
    out.push(token);
}

/// One search result: the tool's JavaScript name and its description (declaration
/// included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub name: String,
    pub description: String,
}

/// A BM25 index over the deferred tools of one tool set.
#[derive(Debug, Default)]
pub struct ToolIndex {
    /// The indexed tools, in the set's order: (JS name, description).
    tools: Vec<(String, String)>,
    /// term → (tool, term frequency), tools in ascending order.
    postings: HashMap<String, Vec<(u32, u32)>>,
    /// Each tool's length in weighted tokens.
    lengths: Vec<u32>,
    average_length: f64,
}

impl ToolIndex {
    /// Indexes the deferred tools of `tools`.
    pub fn build(tools: &[ToolDefinition]) -> Self {
        let mut index = ToolIndex::default();
        for tool in tools.iter().filter(|tool| tool.deferred) {
            let number = index.tools.len() as u32;
            let mut frequencies: HashMap<String, u32> = HashMap::new();
            let mut length = 0;
            // The original name carries the namespace (`mcp__github__search_issues`).
            for token in tokens(&tool.name) {
                *frequencies.entry(token).or_default() += NAME_WEIGHT;
                length += NAME_WEIGHT;
            }
            for token in tokens(&tool.description) {
                *frequencies.entry(token).or_default() += 1;
                length += 1;
            }
            for (term, frequency) in frequencies {
                index
                    .postings
                    .entry(term)
                    .or_default()
                    .push((number, frequency));
            }
            index.lengths.push(length);
            index
                .tools
                .push((js_tool_name(&tool.name), tool.description.clone()));
        }
        for postings in index.postings.values_mut() {
            postings.sort_unstable_by_key(|(tool, _)| *tool);
        }
        let total: u64 = index.lengths.iter().map(|&length| u64::from(length)).sum();
        index.average_length = if index.lengths.is_empty() {
            0.0
        } else {
            total as f64 / index.lengths.len() as f64
        };
        index
    }

    /// How many tools are indexed.
    pub fn len(&self) -> usize {
        self.tools.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }

    /// The tools that match `query`, best first, at most `limit`; tools of equal score
    /// keep the set's order, and a tool that shares no word with the query is left out.
    pub fn search(&self, query: &str, limit: usize) -> Vec<Hit> {
        let mut terms = tokens(query);
        terms.sort_unstable();
        terms.dedup();
        let count = self.tools.len() as f64;
        let mut scores = vec![0.0f64; self.tools.len()];
        for term in &terms {
            let Some(postings) = self.postings.get(term) else {
                continue;
            };
            let containing = postings.len() as f64;
            let idf = ((count - containing + 0.5) / (containing + 0.5) + 1.0).ln();
            for &(tool, frequency) in postings {
                let frequency = f64::from(frequency);
                let length = f64::from(self.lengths[tool as usize]);
                let norm = K1 * (1.0 - B + B * length / self.average_length);
                scores[tool as usize] += idf * frequency * (K1 + 1.0) / (frequency + norm);
            }
        }
        let mut ranked: Vec<(usize, f64)> = scores
            .into_iter()
            .enumerate()
            .filter(|(_, score)| *score > 0.0)
            .collect();
        let by_rank = |a: &(usize, f64), b: &(usize, f64)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if ranked.len() > limit {
            ranked.select_nth_unstable_by(limit, by_rank);
            ranked.truncate(limit);
        }
        ranked.sort_unstable_by(by_rank);
        ranked
            .into_iter()
            .map(|(tool, _)| {
                let (name, description) = &self.tools[tool];
                Hit {
                    name: name.clone(),
                    description: description.clone(),
                }
            })
            .collect()
    }
}

/// A tool set with deferred tools, as a cell gets it: the set plus `tool_search` (any tool
/// of the set with that JavaScript name is left out), and the index that answers it,
/// built at the first search (never on an exec's path).
#[derive(Debug)]
pub struct SearchableTools {
    /// The set the cell enables.
    pub tools: Arc<[ToolDefinition]>,
    index: std::sync::OnceLock<ToolIndex>,
}

impl SearchableTools {
    /// `None` when no tool of `tools` is deferred: then there is nothing to search.
    pub fn build(tools: &[ToolDefinition]) -> Option<Self> {
        if !tools.iter().any(|tool| tool.deferred) {
            return None;
        }
        // `tool_search` first: a runtime prepares functions ahead for the tools up to the
        // last one bound eagerly, so the eager ones come before the deferred thousands.
        let mut enabled: Vec<ToolDefinition> = Vec::with_capacity(tools.len() + 1);
        enabled.push(tool_search_definition());
        enabled.extend(
            tools
                .iter()
                .filter(|tool| {
                    let shadowed = js_tool_name(&tool.name) == TOOL_SEARCH_NAME;
                    if shadowed {
                        tracing::warn!(tool = %tool.name, "left out: `tools.tool_search` searches the deferred tools");
                    }
                    !shadowed
                })
                .cloned(),
        );
        Some(Self {
            tools: enabled.into(),
            index: std::sync::OnceLock::new(),
        })
    }

    /// Whether the index is built (a search then takes microseconds; the first one of a
    /// large set builds it, which takes milliseconds).
    pub fn is_indexed(&self) -> bool {
        self.index.get().is_some()
    }

    /// The index of the deferred tools, built on first use.
    pub fn index(&self) -> &ToolIndex {
        self.index.get_or_init(|| ToolIndex::build(&self.tools))
    }

    /// Answers a `tool_search` call whose argument is `input` (JSON text, or none).
    pub fn answer(&self, input: Option<&JsonText>) -> Result<JsonText, ToolError> {
        let (query, limit) = search_arguments(input).map_err(ToolError::new)?;
        let tools: Vec<Value> = self
            .index()
            .search(&query, limit)
            .into_iter()
            .map(|hit| json!({ "name": hit.name, "description": hit.description }))
            .collect();
        Ok(JsonText::new(json!({ "tools": tools }).to_string()))
    }
}

/// The query and the limit of a `tool_search` argument.
fn search_arguments(input: Option<&JsonText>) -> Result<(String, usize), String> {
    let value: Value = match input {
        Some(text) => serde_json::from_str(text.as_str())
            .map_err(|error| format!("tool_search expects {{ query, limit? }}: {error}"))?,
        None => Value::Null,
    };
    let Value::Object(arguments) = value else {
        return Err("tool_search expects an object: { query: string, limit?: number }".to_owned());
    };
    let query = match arguments.get("query") {
        Some(Value::String(query)) => query.trim().to_owned(),
        None | Some(Value::Null) => String::new(),
        Some(_) => return Err("query must be a string".to_owned()),
    };
    if query.is_empty() {
        return Err(QUERY_EMPTY.to_owned());
    }
    let limit = match arguments.get("limit") {
        None | Some(Value::Null) => DEFAULT_SEARCH_LIMIT,
        Some(Value::Number(number)) => {
            let limit = number.as_f64().unwrap_or(0.0);
            if limit < 1.0 {
                return Err(LIMIT_NOT_POSITIVE.to_owned());
            }
            // A fraction is rounded down; anything past the set's size returns it all.
            limit.min(u32::MAX.into()) as usize
        }
        Some(_) => return Err("limit must be a number".to_owned()),
    };
    Ok((query, limit))
}

/// The searchable form of the last tool set a session's cells used, built again only when
/// the set changes (compared by pointer first, then by content).
#[derive(Debug, Default)]
pub struct SearchCache {
    last: Mutex<Option<CachedSet>>,
}

/// A tool set and its searchable form (`None`: nothing of it is deferred).
type CachedSet = (Arc<[ToolDefinition]>, Option<Arc<SearchableTools>>);

impl SearchCache {
    /// The searchable set for `tools`, or `None` when none of them is deferred.
    pub fn get(&self, tools: &Arc<[ToolDefinition]>) -> Option<Arc<SearchableTools>> {
        let mut last = lock(&self.last);
        if let Some((set, searchable)) = last.as_ref()
            && (Arc::ptr_eq(set, tools) || **set == **tools)
        {
            return searchable.clone();
        }
        let searchable = SearchableTools::build(tools).map(Arc::new);
        *last = Some((Arc::clone(tools), searchable.clone()));
        searchable
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use code_mode_protocol::ToolKind;

    fn tool(name: &str, description: &str) -> ToolDefinition {
        ToolDefinition::new(name, description, ToolKind::Function).with_deferred(true)
    }

    #[test]
    fn tokens_split_names_and_camel_case() {
        assert_eq!(
            tokens("mcp__github__searchIssues get-weather.now HTTPServer v2Api the files class"),
            [
                "mcp", "github", "search", "issue", "get", "weather", "now", "http", "server",
                "v2", "api", "file", "class"
            ]
        );
    }

    #[test]
    fn the_best_match_comes_first_and_ties_keep_the_order() {
        let tools = [
            tool("mcp__files__read_file", "Reads a file from disk."),
            tool("mcp__weather__get_weather", "Current weather for a city."),
            tool(
                "mcp__weather__get_forecast",
                "A weather forecast for the next days.",
            ),
            tool("alpha", "Same words."),
            tool("beta", "Same words."),
            ToolDefinition::new(
                "weather_now",
                "Not deferred: not searched.",
                ToolKind::Function,
            ),
        ];
        let index = ToolIndex::build(&tools);
        assert_eq!(index.len(), 5);
        let names = |query: &str, limit: usize| -> Vec<String> {
            index
                .search(query, limit)
                .into_iter()
                .map(|hit| hit.name)
                .collect()
        };
        assert_eq!(
            names("what is the weather in Paris", 8),
            ["mcp__weather__get_weather", "mcp__weather__get_forecast"]
        );
        assert_eq!(names("forecast", 8), ["mcp__weather__get_forecast"]);
        assert_eq!(names("read files", 1), ["mcp__files__read_file"]);
        assert_eq!(names("same words", 8), ["alpha", "beta"]);
        assert_eq!(names("same words", 1), ["alpha"]);
        assert!(names("nothing matches", 8).is_empty());
    }

    #[test]
    fn answers_and_errors_are_the_contract_strings() {
        let searchable = SearchableTools::build(&[
            tool("get_weather", "Weather.\n```ts\ndeclare const tools: { get_weather(args: { city: string }): Promise<unknown>; };\n```"),
            ToolDefinition::new("tool_search", "a tool of the agent's, shadowed", ToolKind::Function),
        ])
        .expect("a deferred tool makes the set searchable");
        let names: Vec<&str> = searchable
            .tools
            .iter()
            .map(|tool| tool.name.as_str())
            .collect();
        assert_eq!(names, ["tool_search", "get_weather"]);
        assert!(!searchable.tools[0].deferred);
        let answer = |input: &str| searchable.answer(Some(&JsonText::new(input.to_owned())));
        let found: Value =
            serde_json::from_str(answer(r#"{"query":"city weather"}"#).unwrap().as_str()).unwrap();
        assert_eq!(found["tools"][0]["name"], "get_weather");
        assert!(
            found["tools"][0]["description"]
                .as_str()
                .unwrap()
                .contains("city: string")
        );
        for (input, error) in [
            (r#"{"query":"   "}"#, QUERY_EMPTY),
            (r#"{}"#, QUERY_EMPTY),
            (r#"{"query":"w","limit":0}"#, LIMIT_NOT_POSITIVE),
            (r#"{"query":"w","limit":-3}"#, LIMIT_NOT_POSITIVE),
        ] {
            assert_eq!(answer(input).unwrap_err().message(), error, "{input}");
        }
        assert!(
            SearchableTools::build(&[ToolDefinition::new("x", "", ToolKind::Function)]).is_none()
        );
    }

    #[test]
    fn the_cache_builds_once_per_set() {
        let cache = SearchCache::default();
        let set: Arc<[ToolDefinition]> = vec![tool("a", "b")].into();
        let first = cache.get(&set).unwrap();
        let equal: Arc<[ToolDefinition]> = vec![tool("a", "b")].into();
        assert!(Arc::ptr_eq(&first, &cache.get(&equal).unwrap()));
        let other: Arc<[ToolDefinition]> = vec![tool("c", "d")].into();
        assert!(!Arc::ptr_eq(&first, &cache.get(&other).unwrap()));
        let plain: Arc<[ToolDefinition]> =
            vec![ToolDefinition::new("a", "", ToolKind::Function)].into();
        assert!(cache.get(&plain).is_none());
    }
}
