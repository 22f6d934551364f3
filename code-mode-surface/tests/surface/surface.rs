//! The model-facing surface: pragma errors, JSON Schema → TypeScript, the `exec`
//! description, the tool specs and the response formatter, against golden files.

use crate::golden::assert_golden;
use code_mode_protocol::{CellResponse, ContentItem, ImageDetail, ToolKind};
use code_mode_surface::*;
use serde_json::{Value, json};
use std::fmt::Write;
use std::time::Duration;

#[test]
fn pragma_parsing_and_every_error() {
    let inputs = [
        "text(1)",
        "// @exec: {\"yield_time_ms\": 2500}\ntext(1)\ntext(2)",
        "  // @exec: {\"max_output_tokens\": 0, \"yield_time_ms\": 9007199254740991}\ntext(1)",
        "// @exec: {\"yield_time_ms\": 1e3}\ntext(1)",
        "// @exec: {}\ntext(1)",
        "// not a pragma\ntext(1)",
        "",
        "   \n\t ",
        "// @exec: {\"yield_time_ms\": 10}",
        "// @exec: {\"yield_time_ms\": 10}\n   \n",
        "// @exec:\ntext(1)",
        "// @exec: [1, 2]\ntext(1)",
        "// @exec: 5\ntext(1)",
        "// @exec: {yield_time_ms: 10}\ntext(1)",
        "// @exec: {\"yield_time_ms\": 10\ntext(1)",
        "// @exec: {\"timeout\": 10}\ntext(1)",
        "// @exec: {\"yield_time_ms\": 10, \"extra\": true}\ntext(1)",
        "// @exec: {\"yield_time_ms\": -1}\ntext(1)",
        "// @exec: {\"yield_time_ms\": 1.5}\ntext(1)",
        "// @exec: {\"yield_time_ms\": \"10\"}\ntext(1)",
        "// @exec: {\"max_output_tokens\": 9007199254740992}\ntext(1)",
        "// @exec: {\"max_output_tokens\": null}\ntext(1)",
    ];
    let mut out = String::new();
    for input in inputs {
        writeln!(out, "input: {input:?}").unwrap();
        match parse_exec_source(input) {
            Ok(parsed) => writeln!(
                out,
                "ok: source {:?}, yield_time_ms {:?}, max_output_tokens {:?}\n",
                parsed.source, parsed.yield_time_ms, parsed.max_output_tokens
            )
            .unwrap(),
            Err(error) => writeln!(out, "error: {error}\n").unwrap(),
        }
    }
    assert_golden("pragma.txt", &out);
}

#[test]
fn pragma_defaults() {
    let parsed = parse_exec_source("text(1)").unwrap();
    assert_eq!(parsed.max_output_tokens_or_default(), 10_000);
    assert_eq!(DEFAULT_MAX_OUTPUT_TOKENS, 10_000);
}

#[test]
fn every_schema_construct_renders_to_typescript() {
    let recursive = json!({
        "type": "object",
        "properties": {
            "value": { "type": "number" },
            "next": { "$ref": "#" }
        },
        "required": ["value"]
    });
    let cases: Vec<(&str, Value)> = vec![
        ("true", json!(true)),
        ("false", json!(false)),
        ("empty schema", json!({})),
        ("const", json!({ "const": "fixed" })),
        ("enum", json!({ "enum": ["a", "b", 3, null, true] })),
        (
            "anyOf",
            json!({ "anyOf": [{ "type": "string" }, { "type": "number" }] }),
        ),
        (
            "oneOf",
            json!({ "oneOf": [{ "const": 1 }, { "type": "array", "items": { "type": "string" } }] }),
        ),
        (
            "allOf",
            json!({ "allOf": [
            { "type": "object", "properties": { "a": { "type": "string" } }, "required": ["a"] },
            { "type": "object", "properties": { "b": { "type": "integer" } } }
        ] }),
        ),
        ("type array", json!({ "type": ["string", "null"] })),
        (
            "object with descriptions",
            json!({
                "type": "object",
                "description": "ignored at the top",
                "properties": {
                    "zeta": { "type": "boolean", "description": "Last by name.\nTwo lines." },
                    "alpha": { "type": "string", "description": "First by name." },
                    "with-dash": { "type": "number" },
                    "9lives": { "type": "null" },
                    "$ok_id": { "type": "string" }
                },
                "required": ["alpha", "with-dash"]
            }),
        ),
        (
            "additionalProperties schema",
            json!({
                "type": "object",
                "properties": { "known": { "type": "string" } },
                "additionalProperties": { "type": "number" }
            }),
        ),
        (
            "additionalProperties true",
            json!({
                "type": "object",
                "properties": { "known": { "type": "string" } },
                "additionalProperties": true
            }),
        ),
        ("bare object", json!({ "type": "object" })),
        (
            "closed empty object",
            json!({ "type": "object", "additionalProperties": false }),
        ),
        (
            "nested object",
            json!({
                "type": "object",
                "properties": {
                    "outer": {
                        "type": "object",
                        "properties": { "inner": { "type": "array", "items": { "type": "object", "properties": { "x": { "type": "number" } }, "required": ["x"] } } },
                        "required": ["inner"]
                    }
                }
            }),
        ),
        (
            "array of unions",
            json!({ "type": "array", "items": { "type": ["string", "number"] } }),
        ),
        ("array without items", json!({ "type": "array" })),
        (
            "tuple with prefixItems",
            json!({ "type": "array", "prefixItems": [{ "type": "string" }, { "type": "number" }], "items": false }),
        ),
        (
            "open tuple",
            json!({ "type": "array", "prefixItems": [{ "type": "string" }], "items": { "type": "boolean" } }),
        ),
        (
            "draft-7 tuple",
            json!({ "type": "array", "items": [{ "type": "string" }, { "const": 2 }], "additionalItems": { "type": "null" } }),
        ),
        ("recursive $ref to the root", recursive),
        (
            "$ref into $defs with ~0 and ~1",
            json!({
                "$defs": { "a/b": { "type": "string" }, "c~d": { "enum": [1, 2] } },
                "type": "object",
                "properties": {
                    "slash": { "$ref": "#/$defs/a~1b" },
                    "tilde": { "$ref": "#/$defs/c~0d" }
                }
            }),
        ),
        (
            "$ref with sibling keywords",
            json!({
                "definitions": { "base": { "type": "object", "properties": { "id": { "type": "string" } }, "required": ["id"] } },
                "$ref": "#/definitions/base",
                "properties": { "extra": { "type": "number" } }
            }),
        ),
        (
            "$ref with only a description beside it",
            json!({
                "definitions": { "name": { "type": "string" } },
                "$ref": "#/definitions/name",
                "description": "just an annotation"
            }),
        ),
        (
            "mutually recursive $refs",
            json!({
                "definitions": {
                    "tree": { "type": "object", "properties": { "children": { "type": "array", "items": { "$ref": "#/definitions/tree" } } } }
                },
                "$ref": "#/definitions/tree"
            }),
        ),
        (
            "unresolvable and remote $refs",
            json!({
                "type": "object",
                "properties": {
                    "missing": { "$ref": "#/definitions/nope" },
                    "remote": { "$ref": "https://example.com/schema.json" }
                }
            }),
        ),
        (
            "union inside intersection",
            json!({ "allOf": [{ "anyOf": [{ "type": "string" }, { "type": "number" }] }, { "const": 1 }] }),
        ),
    ];
    let mut out = String::new();
    for (name, schema) in cases {
        writeln!(out, "## {name}\n{}\n", schema_to_typescript(&schema, 0)).unwrap();
    }
    assert_golden("schemas.txt", &out);
}

fn tools_for_description() -> Vec<ToolDescription> {
    vec![
        ToolDescription {
            name: "read_file".into(),
            description: "Reads a UTF-8 text file.".into(),
            kind: ToolKind::Function,
            input_schema: Some(json!({
                "type": "object",
                "properties": {
                    "path": { "type": "string", "description": "Absolute path." },
                    "limit": { "type": "integer", "description": "Maximum lines." }
                },
                "required": ["path"],
                "additionalProperties": false
            })),
            output_schema: Some(json!({ "type": "string" })),
            ..ToolDescription::default()
        },
        ToolDescription {
            name: "apply_patch".into(),
            description: "Applies a patch in the apply_patch format.".into(),
            kind: ToolKind::Freeform,
            ..ToolDescription::default()
        },
        ToolDescription {
            name: "list_dir".into(),
            description: "Lists a directory.".into(),
            input_schema: Some(json!({
                "type": "object",
                "properties": { "path": { "type": "string" } }
            })),
            ..ToolDescription::default()
        },
        ToolDescription {
            name: "mcp__github__search-issues".into(),
            namespace: Some("github".into()),
            namespace_description: Some("Tools of the GitHub MCP server.".into()),
            description: "Searches issues.".into(),
            input_schema: Some(json!({
                "type": "object",
                "properties": { "query": { "type": "string" } },
                "required": ["query"]
            })),
            output_schema: Some(json!({
                "type": "object",
                "properties": {
                    "content": { "type": "array", "items": {} },
                    "structuredContent": {
                        "type": "object",
                        "properties": { "total": { "type": "integer" }, "items": { "type": "array", "items": { "$ref": "#/$defs/issue" } } },
                        "required": ["total"]
                    },
                    "isError": { "type": "boolean" }
                },
                "required": ["content"],
                "$defs": { "issue": { "type": "object", "properties": { "title": { "type": "string" } }, "required": ["title"] } }
            })),
            ..ToolDescription::default()
        },
        ToolDescription {
            name: "mcp__github__get_issue".into(),
            namespace: Some("github".into()),
            namespace_description: Some("Tools of the GitHub MCP server.".into()),
            description: "Gets one issue.".into(),
            input_schema: Some(json!({
                "type": "object",
                "properties": { "number": { "type": "integer" } },
                "required": ["number"]
            })),
            output_schema: Some(json!({
                "type": "object",
                "properties": { "content": { "type": "array" }, "isError": { "type": "boolean" } }
            })),
            ..ToolDescription::default()
        },
        ToolDescription {
            name: "mcp__notes__add".into(),
            namespace: Some("notes".into()),
            namespace_description: Some("   ".into()),
            description: "Adds a note.".into(),
            input_schema: Some(
                json!({ "type": "object", "properties": { "text": { "type": "string" } }, "required": ["text"] }),
            ),
            ..ToolDescription::default()
        },
        ToolDescription {
            name: "rarely_used".into(),
            description: "Deferred: only in ALL_TOOLS.".into(),
            deferred: true,
            ..ToolDescription::default()
        },
        ToolDescription {
            name: "also_rare".into(),
            description: "Deferred too.".into(),
            deferred: true,
            ..ToolDescription::default()
        },
    ]
}

#[test]
fn the_exec_description_with_every_kind_of_tool() {
    assert_golden(
        "description.txt",
        &exec_description(&tools_for_description()),
    );
}

#[test]
fn the_exec_description_without_tools() {
    assert_golden("description_empty.txt", &exec_description(&[]));
}

#[test]
fn tool_specs() {
    let exec = exec_tool_spec(&tools_for_description());
    assert_eq!(exec.name(), "exec");
    let json = exec.to_json();
    assert_eq!(json["type"], "custom");
    assert_eq!(
        json["description"],
        exec_description(&tools_for_description())
    );
    let wait = serde_json::to_string_pretty(&wait_tool_spec().to_json()).unwrap();
    assert_golden("wait_spec.json", &wait);
}

#[test]
fn wait_arguments() {
    let parsed = parse_wait_arguments(r#"{"cell_id": "3"}"#).unwrap();
    assert_eq!(
        parsed,
        WaitArguments {
            cell_id: "3".into(),
            yield_time_ms: 10_000,
            max_tokens: 10_000,
            terminate: false
        }
    );
    let parsed = parse_wait_arguments(
        r#"{"cell_id": "g2:1", "yield_time_ms": 250.7, "max_tokens": 5, "terminate": true}"#,
    )
    .unwrap();
    assert_eq!(
        (parsed.yield_time_ms, parsed.max_tokens, parsed.terminate),
        (250, 5, true)
    );
    for (input, error) in [
        ("{}", "wait requires `cell_id`"),
        ("[]", "wait expects a JSON object"),
        (r#"{"cell_id": 3}"#, "wait `cell_id` must be a string"),
        (
            r#"{"cell_id": "1", "yield_time_ms": -5}"#,
            "wait `yield_time_ms` must be a non-negative number",
        ),
        (
            r#"{"cell_id": "1", "terminate": "yes"}"#,
            "wait `terminate` must be a boolean",
        ),
        (
            r#"{"cell_id": "1", "force": true}"#,
            "wait does not support `force`",
        ),
    ] {
        assert_eq!(
            parse_wait_arguments(input).map_err(|error| error.to_string()),
            Err(error.to_owned()),
            "{input}"
        );
    }
}

fn render(items: &[ContentItem]) -> String {
    items
        .iter()
        .map(|item| match item {
            ContentItem::InputText { text } => format!("[text]\n{text}"),
            ContentItem::InputImage { image_url, detail } => {
                format!("[image {detail}] {image_url}")
            }
            ContentItem::InputAudio { audio_url } => format!("[audio] {audio_url}"),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_formatter_for_each_status_with_and_without_truncation() {
    let items = vec![
        ContentItem::text("first line of output"),
        ContentItem::InputImage {
            image_url: "data:image/png;base64,AAAA".into(),
            detail: ImageDetail::Low,
        },
        ContentItem::text("é".repeat(30)),
        ContentItem::text("after the cut"),
        ContentItem::InputAudio {
            audio_url: "data:audio/wav;base64,UklGRg==".into(),
        },
        ContentItem::InputImage {
            image_url: "data:image/png;base64,BBBB".into(),
            detail: ImageDetail::High,
        },
    ];
    let responses = [
        CellResponse::Yielded {
            cell_id: "7".into(),
            content_items: items.clone(),
            wall_time: std::time::Duration::ZERO,
        },
        CellResponse::Result {
            cell_id: "7".into(),
            content_items: items.clone(),
            failure: None,
            wall_time: std::time::Duration::ZERO,
        },
        CellResponse::Result {
            cell_id: "7".into(),
            content_items: items.clone(),
            failure: Some(code_mode_protocol::CellFailure::new(
                code_mode_protocol::FailureKind::ScriptError,
                "TypeError: x is not a function\n    at exec_main.mjs:3:1",
            )),
            wall_time: std::time::Duration::ZERO,
        },
        CellResponse::Terminated {
            cell_id: "g2:4".into(),
            content_items: items,
            wall_time: std::time::Duration::ZERO,
        },
        CellResponse::missing("9"),
    ];
    let mut out = String::new();
    for response in &responses {
        for budget in [10_000, 10] {
            writeln!(
                out,
                "==== {} / budget {budget} tokens",
                status_line(response)
            )
            .unwrap();
            // The Wall time line is the time the provider measured (contract 8.5).
            let response = response
                .clone()
                .with_wall_time(Duration::from_millis(1_250));
            let formatted = format_response(&response, budget);
            writeln!(out, "{}\n", render(&formatted)).unwrap();
        }
    }
    let long_error = CellResponse::Result {
        cell_id: "1".into(),
        content_items: vec![],
        failure: Some(code_mode_protocol::CellFailure::new(
            code_mode_protocol::FailureKind::ScriptError,
            "E".repeat(100),
        )),
        wall_time: std::time::Duration::ZERO,
    };
    writeln!(out, "==== a long error / budget 5 tokens").unwrap();
    writeln!(
        out,
        "{}",
        render(&format_response(
            &long_error.with_wall_time(Duration::from_secs(61)),
            5
        ))
    )
    .unwrap();
    assert_golden("format.txt", &out);
}

/// `count` deferred tools shaped like an MCP server's.
fn deferred_tools(count: usize) -> Vec<ToolDescription> {
    (0..count)
        .map(|n| ToolDescription {
            name: format!("mcp__server{}__tool_{n}", n % 50),
            namespace: Some(format!("mcp__server{}", n % 50)),
            description: format!("Tool number {n}: does thing {n}."),
            input_schema: Some(
                json!({ "type": "object", "properties": { "id": { "type": "string" } }, "required": ["id"] }),
            ),
            deferred: true,
            ..ToolDescription::default()
        })
        .collect()
}

#[test]
fn the_exec_description_with_deferred_tools_declares_only_tool_search() {
    let mut tools = vec![ToolDescription {
        name: "get_time".into(),
        description: "The current time.".into(),
        ..ToolDescription::default()
    }];
    tools.extend(deferred_tools(3));
    let description = exec_description(&tools);
    assert_golden("description_deferred.txt", &description);
    assert!(!description.contains("tool_1"), "{description}");
    // 10 000 deferred tools: the description is as long as with 3, but for the count.
    let mut many = vec![tools[0].clone()];
    many.extend(deferred_tools(10_000));
    let large = exec_description(&many);
    assert_eq!(large.len(), description.len() + "10000".len() - "3".len());
}

#[test]
fn a_definition_carries_the_declaration_and_the_deferred_flag() {
    let tool = &deferred_tools(1)[0];
    let definition = tool.definition();
    assert_eq!(definition.name, "mcp__server0__tool_0");
    assert!(definition.deferred);
    assert_eq!(
        definition.description,
        "Tool number 0: does thing 0.\n```ts\ndeclare const tools: {\n  mcp__server0__tool_0(args: {\n    id: string;\n  }): Promise<unknown>;\n};\n```"
    );
    let undescribed = ToolDescription {
        name: "bare".into(),
        ..ToolDescription::default()
    };
    assert_eq!(
        undescribed.definition().description,
        "```ts\ndeclare const tools: {\n  bare(args?: unknown): Promise<unknown>;\n};\n```"
    );
}

#[test]
fn the_exec_description_names_unavailable_sources_on_one_line_each() {
    use code_mode_surface::{Catalog, UnavailableSource, exec_description_of};
    let unavailable = [
        UnavailableSource {
            name: "MCP server `github`".into(),
            reason: "failed to initialize; the end of its stderr:\nno token\n".into(),
        },
        UnavailableSource {
            name: "MCP server `chatty`".into(),
            reason: "é".repeat(300),
        },
    ];
    let description = exec_description_of(Catalog {
        tools: &[],
        unavailable: &unavailable,
    });
    let section = description
        .split_once("\n## Unavailable tool sources\n")
        .map(|(_, section)| section)
        .expect("the section");
    let lines: Vec<&str> = section.lines().skip(1).collect();
    assert_eq!(
        lines[0],
        "- MCP server `github`: failed to initialize; the end of its stderr: no token"
    );
    assert_eq!(
        lines[1],
        format!("- MCP server `chatty`: {}…", "é".repeat(200))
    );
    assert_eq!(lines.len(), 2);
    // Without unavailable sources there is no section.
    assert!(!exec_description_of(Catalog::of(&[])).contains("Unavailable"));
}
