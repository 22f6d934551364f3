//! `text`, `console.*`, `image` and `generatedImage`.

use crate::harness::run;
use code_mode::protocol::{ContentItem, ImageDetail};

const PNG: &str = "data:image/png;base64,iVBORw0KGgo=";

fn image(url: &str, detail: ImageDetail) -> ContentItem {
    ContentItem::InputImage {
        image_url: url.to_owned(),
        detail,
    }
}

#[test]
fn text_converts_primitives_with_string_conversion() {
    let r = run(r#"
        text("plain"); text(42); text(-0); text(1e21); text(true); text(10n);
        text(null); text(undefined); text(); text("");
    "#);
    assert_eq!(
        r.ok_texts(),
        [
            "plain",
            "42",
            "0",
            "1e+21",
            "true",
            "10",
            "null",
            "undefined",
            "undefined",
            ""
        ]
    );
}

#[test]
fn text_serializes_other_values_as_json_in_key_order() {
    let r = run(r#"
        text({ b: 1, a: [1, "x", null], u: undefined, f() {} });
        text([undefined, () => 1]);
        text({ toJSON() { return { via: "toJSON" }; } });
        text(new Map([[1, 2]]));
        text(new Date(Date.UTC(2025, 0, 2)));
    "#);
    assert_eq!(
        r.ok_texts(),
        [
            r#"{"b":1,"a":[1,"x",null]}"#,
            "[null,null]",
            r#"{"via":"toJSON"}"#,
            "{}",
            r#""2025-01-02T00:00:00.000Z""#,
        ]
    );
}

#[test]
fn text_falls_back_to_string_when_json_yields_nothing() {
    let r = run(r#"
        text(Symbol("s"));
        text(function named() { return 1; });
        text({ toJSON() { return undefined; }, toString() { return "via toString"; } });
    "#);
    assert_eq!(
        r.ok_texts(),
        [
            "Symbol(s)",
            "function named() { return 1; }",
            "via toString"
        ]
    );
}

#[test]
fn text_propagates_stringify_errors() {
    let r = run(r#"
        text("before");
        const a = {}; a.self = a;
        try { text(a); } catch (e) { text("caught: " + (e instanceof TypeError)); }
        text(a);
    "#);
    assert_eq!(r.texts(), ["before", "caught: true"]);
    let error = r.error().expect("an uncaught cycle fails the cell");
    assert!(
        error.starts_with("TypeError: Converting circular structure to JSON"),
        "{error}"
    );
}

#[test]
fn output_helpers_return_undefined() {
    let r = run(r#"
        const results = [text("a"), console.log("b"), image("data:image/png;base64,AA=="),
            notify("n"), yield_control(), store("k", 1)];
        text(JSON.stringify(results.map(r => r === undefined)));
    "#);
    assert_eq!(
        r.items().last(),
        Some(&ContentItem::text("[true,true,true,true,true,true]"))
    );
}

#[test]
fn console_methods_join_formatted_arguments() {
    let r = run(r#"
        console.log("a", 1, { b: 2 }, null);
        console.info("info"); console.warn("warn"); console.error("error"); console.debug("debug");
        console.log();
    "#);
    assert_eq!(
        r.ok_texts(),
        [r#"a 1 {"b":2} null"#, "info", "warn", "error", "debug", ""]
    );
}

#[test]
fn image_accepts_urls_items_and_mcp_blocks() {
    let source = format!(
        r#"
        image("{PNG}");
        image("{PNG}", "low");
        image({{ image_url: "{PNG}", detail: "auto" }});
        image({{ image_url: "{PNG}", detail: "auto" }}, "original");
        image({{ type: "image", data: "iVBORw0KGgo=", mimeType: "image/jpeg" }});
        image({{ type: "image", data: "{PNG}", mimeType: "image/jpeg" }});
        image({{ type: "image", data: "AAAA", mimeType: "image/gif", _meta: {{ "codex/imageDetail": "low" }} }});
        image({{ type: "image", data: "AAAA", mimeType: "image/gif", _meta: {{ "codex/imageDetail": "low" }} }}, "high");
        image("DATA:image/png;base64,AA==", null);
    "#
    );
    let r = run(&source);
    assert_eq!(r.error(), None);
    assert_eq!(
        r.items(),
        [
            image(PNG, ImageDetail::High),
            image(PNG, ImageDetail::Low),
            image(PNG, ImageDetail::Auto),
            image(PNG, ImageDetail::Original),
            image("data:image/jpeg;base64,iVBORw0KGgo=", ImageDetail::High),
            image(PNG, ImageDetail::High),
            image("data:image/gif;base64,AAAA", ImageDetail::Low),
            image("data:image/gif;base64,AAAA", ImageDetail::High),
            image("DATA:image/png;base64,AA==", ImageDetail::High),
        ]
    );
}

/// Runs each call in its own `try` and returns what each threw, asserting plain strings.
fn thrown(calls: &[&str]) -> Vec<String> {
    let body: String = calls
        .iter()
        .map(|call| {
            format!(
                "try {{ {call}; text('no error'); }} catch (e) {{ text(typeof e === 'string' ? e : 'NOT A STRING: ' + e); }}\n"
            )
        })
        .collect();
    let r = run(&body);
    assert_eq!(r.error(), None);
    assert_eq!(r.items().len(), calls.len(), "{:?}", r.events);
    r.texts()
}

#[test]
fn image_errors_are_the_contract_strings() {
    let expects = "image expects a non-empty image URL string, an object with image_url and optional detail, or a raw MCP image block";
    let remote = "Tool call failed: remote image URLs are not supported in tool outputs. Pass a base64 data URI instead";
    let invalid = "Tool call failed: invalid image output. Pass a base64 data URI instead";
    let one_of = "image detail must be one of: auto, low, high, original";
    let string = "image detail must be a string when provided";
    let cases = [
        (r#"image("")"#, expects),
        ("image()", expects),
        ("image(42)", expects),
        ("image(null)", expects),
        ("image([])", expects),
        (r#"image({ image_url: "" })"#, expects),
        (r#"image({ image_url: 5 })"#, expects),
        (
            r#"image({ content: [{ type: "image", data: "AA", mimeType: "image/png" }] })"#,
            expects,
        ),
        (r#"image("http://example.com/a.png")"#, remote),
        (r#"image("HTTPS://example.com/a.png")"#, remote),
        (r#"image({ image_url: "https://x/y.png" })"#, remote),
        (r#"image("file:///etc/passwd")"#, invalid),
        (r#"image("iVBORw0KGgo=")"#, invalid),
        (r#"image("data:image/png;base64,AA==", "ultra")"#, one_of),
        (
            r#"image({ image_url: "data:image/png;base64,AA==", detail: "HIGH" })"#,
            one_of,
        ),
        (r#"image("data:image/png;base64,AA==", 1)"#, string),
        (
            r#"image({ image_url: "data:image/png;base64,AA==", detail: true })"#,
            string,
        ),
        (
            r#"image({ type: "text", text: "hi" })"#,
            r#"image only accepts MCP image blocks, got "text""#,
        ),
        (
            r#"image({ type: "image" })"#,
            "image expected MCP image data",
        ),
        (
            r#"image({ type: "image", data: "" })"#,
            "image expected MCP image data",
        ),
        (
            r#"image({ type: "image", data: "AA", _meta: { "codex/imageDetail": "huge" } })"#,
            one_of,
        ),
    ];
    let calls: Vec<&str> = cases.iter().map(|(call, _)| *call).collect();
    let expected: Vec<&str> = cases.iter().map(|(_, error)| *error).collect();
    assert_eq!(thrown(&calls), expected);
}

#[test]
fn generated_image_appends_image_then_hint() {
    let source = format!(
        r#"
        generatedImage({{ image_url: "{PNG}", output_hint: "Saved as cat.png" }});
        generatedImage({{ image_url: "{PNG}" }});
        generatedImage({{ image_url: "{PNG}", output_hint: null }});
    "#
    );
    let r = run(&source);
    assert_eq!(r.error(), None);
    assert_eq!(
        r.items(),
        [
            image(PNG, ImageDetail::High),
            ContentItem::text("Saved as cat.png"),
            image(PNG, ImageDetail::High),
            image(PNG, ImageDetail::High),
        ]
    );
}

#[test]
fn generated_image_errors_are_the_contract_strings() {
    let expects = "generatedImage expects an image generation result object";
    let cases = [
        ("generatedImage()", expects),
        (r#"generatedImage("data:image/png;base64,AA==")"#, expects),
        ("generatedImage({})", expects),
        (r#"generatedImage({ image_url: "" })"#, expects),
        (
            r#"generatedImage({ image_url: "data:image/png;base64,AA==", output_hint: 3 })"#,
            "generatedImage output_hint must be a string when provided",
        ),
        (
            r#"generatedImage({ image_url: "http://x/y.png" })"#,
            "Tool call failed: remote image URLs are not supported in tool outputs. Pass a base64 data URI instead",
        ),
        (
            r#"generatedImage({ image_url: "/tmp/y.png" })"#,
            "Tool call failed: invalid image output. Pass a base64 data URI instead",
        ),
    ];
    let calls: Vec<&str> = cases.iter().map(|(call, _)| *call).collect();
    let expected: Vec<&str> = cases.iter().map(|(_, error)| *error).collect();
    assert_eq!(thrown(&calls), expected);
}
