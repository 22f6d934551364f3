//! The newer helpers of contract section 8: `audio` (8.1), `as_settled` and
//! `stream_settled` (8.2).

use crate::harness::run;
use code_mode_protocol::ContentItem;

/// A PCM WAV clip of `samples` 16-bit mono samples at 8 kHz (8 samples, 16 bytes, a millisecond), as
/// a `data:` URL built in JS.
const WAV_JS: &str = r#"
    function wav(samples) {
        const bytes = new Uint8Array(44 + samples * 2);
        const view = new DataView(bytes.buffer);
        const ascii = (at, s) => { for (let i = 0; i < s.length; i++) bytes[at + i] = s.charCodeAt(i); };
        ascii(0, "RIFF"); view.setUint32(4, 36 + samples * 2, true); ascii(8, "WAVEfmt ");
        view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
        view.setUint32(24, 8000, true); view.setUint32(28, 16000, true);
        view.setUint16(32, 2, true); view.setUint16(34, 16, true);
        ascii(36, "data"); view.setUint32(40, samples * 2, true);
        const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let encoded = "";
        for (let i = 0; i < bytes.length; i += 3) {
            const n = (bytes[i] << 16) | ((bytes[i + 1] ?? 0) << 8) | (bytes[i + 2] ?? 0);
            encoded += alphabet[n >> 18] + alphabet[(n >> 12) & 63]
                + (i + 1 < bytes.length ? alphabet[(n >> 6) & 63] : "=")
                + (i + 2 < bytes.length ? alphabet[n & 63] : "=");
        }
        return "data:audio/wav;base64," + encoded;
    }
"#;

fn audio(url: &str) -> ContentItem {
    ContentItem::InputAudio {
        audio_url: url.to_owned(),
    }
}

#[test]
fn audio_accepts_urls_items_and_mcp_blocks() {
    let r = run(r#"
        const results = [
            audio("data:audio/mpeg;base64,SUQz"),
            audio({ audio_url: "data:audio/ogg;base64,T2dnUw==" }),
            audio({ type: "audio", data: "SUQz", mimeType: "audio/mpeg" }),
            audio({ type: "audio", data: "data:audio/flac;base64,ZkxhQw==", mimeType: "audio/mpeg" }),
            audio({ type: "audio", data: "UklGRg==" }),
        ];
        text(results.every((result) => result === undefined));
    "#);
    assert_eq!(r.error(), None);
    assert_eq!(
        r.items(),
        [
            audio("data:audio/mpeg;base64,SUQz"),
            audio("data:audio/ogg;base64,T2dnUw=="),
            audio("data:audio/mpeg;base64,SUQz"),
            audio("data:audio/flac;base64,ZkxhQw=="),
            audio("data:audio/wav;base64,UklGRg=="),
            ContentItem::text("true"),
        ]
    );
}

#[test]
fn a_wav_clip_shorter_than_25_ms_becomes_a_text_item() {
    let r = run(&format!(
        "{WAV_JS}
        audio(wav(199));
        audio(wav(200));
        audio({{ type: 'audio', data: wav(16).slice('data:audio/wav;base64,'.length), mimeType: 'audio/wav' }});
        audio(wav(16).replace('audio/wav', 'audio/x-wav'));"
    ));
    assert_eq!(r.error(), None);
    let items = r.items();
    assert_eq!(items.len(), 4, "{items:?}");
    assert_eq!(
        items[0],
        ContentItem::text(
            "Audio output omitted because the clip is shorter than 25 ms; use a longer clip."
        )
    );
    assert!(
        matches!(&items[1], ContentItem::InputAudio { audio_url } if audio_url.starts_with("data:audio/wav;base64,UklGR")),
        "{:?}",
        items[1]
    );
    assert_eq!(items[2], items[0]);
    assert_eq!(items[3], items[0]);
}

#[test]
fn audio_errors_are_the_contract_strings() {
    let expects = "audio expects a non-empty audio URL string, an object with audio_url, or a raw MCP audio block";
    let invalid = "Tool call failed: invalid audio output. Pass a base64 data URI instead";
    let cases = [
        ("audio()", expects),
        (r#"audio("")"#, expects),
        ("audio(7)", expects),
        ("audio(null)", expects),
        ("audio([])", expects),
        (r#"audio({ audio_url: "" })"#, expects),
        (r#"audio({ url: "data:audio/wav;base64,AA==" })"#, expects),
        (r#"audio("https://example.com/a.wav")"#, invalid),
        (r#"audio("UklGRg==")"#, invalid),
        (r#"audio({ audio_url: "file:///a.wav" })"#, invalid),
        (
            r#"audio({ type: "image", data: "AA", mimeType: "image/png" })"#,
            r#"audio only accepts MCP audio blocks, got "image""#,
        ),
        (
            r#"audio({ type: "audio" })"#,
            "audio expected MCP audio data",
        ),
        (
            r#"audio({ type: "audio", data: "" })"#,
            "audio expected MCP audio data",
        ),
    ];
    let body: String = cases
        .iter()
        .map(|(call, _)| {
            format!("try {{ {call}; text('no error'); }} catch (e) {{ text(typeof e === 'string' ? e : 'NOT A STRING: ' + e); }}\n")
        })
        .collect();
    let r = run(&body);
    assert_eq!(r.error(), None);
    let expected: Vec<&str> = cases.iter().map(|(_, error)| *error).collect();
    assert_eq!(r.texts(), expected);
}

#[test]
fn audio_counts_against_the_output_cap() {
    use code_mode::runtime::CellLimits;
    let limits = CellLimits {
        output_bytes: 100,
        ..CellLimits::default()
    };
    let r = crate::harness::cell(
        r#"audio("data:audio/mpeg;base64," + "A".repeat(200)); text("after");"#,
    )
    .limits(limits)
    .run();
    assert_eq!(r.error(), None);
    let items = r.items();
    assert_eq!(items.len(), 1, "{items:?}");
    assert!(
        items[0]
            .as_text()
            .is_some_and(|text| text.starts_with("[output truncated")),
        "{items:?}"
    );
}

/// Promises settling after `ms` milliseconds, in JS.
const LATER_JS: &str = r#"
    const later = (ms, value, fail) => new Promise((resolve, reject) =>
        setTimeout(() => (fail ? reject(value) : resolve(value)), ms));
"#;

#[test]
fn as_settled_yields_in_settle_order_with_indices_and_statuses() {
    let r = run(&format!(
        "{LATER_JS}
        const seen = [];
        for await (const result of as_settled([later(60, 'slow'), later(1, 'fast'), later(30, new Error('mid'), true), 7])) {{
            seen.push(result.status === 'fulfilled'
                ? `${{result.index}}:${{result.value}}`
                : `${{result.index}}!${{result.reason.message}}`);
        }}
        text(seen.join(' '));"
    ));
    assert_eq!(r.error(), None);
    assert_eq!(r.ok_texts(), ["3:7 1:fast 2!mid 0:slow"]);
}

#[test]
fn as_settled_keeps_iteration_order_for_inputs_already_settled() {
    let r = run(r#"
        const rejected = Promise.reject("no");
        rejected.catch(() => {});
        const inputs = ["a", Promise.resolve("b"), rejected, { then(resolve) { resolve("d"); } }, "e"];
        const seen = [];
        for await (const r of as_settled(inputs)) seen.push(r.index + r.status[0] + (r.value ?? r.reason));
        text(seen.join(" "));
        text(JSON.stringify(Object.keys((await as_settled(["x"]).next()).value)));
    "#);
    assert_eq!(r.error(), None);
    // A thenable settles a tick after the inputs that were already settled, so it comes
    // after all of them.
    assert_eq!(
        r.ok_texts(),
        ["0fa 1fb 2rno 4fe 3fd", r#"["index","status","value"]"#]
    );
}

#[test]
fn as_settled_takes_a_map_and_reports_its_keys() {
    let r = run(&format!(
        "{LATER_JS}
        const key = {{ name: 'object key' }};
        const inputs = new Map([['weather', later(20, 'sunny')], [key, later(1, 'first')]]);
        const seen = [];
        for await (const r of as_settled(inputs)) seen.push(r.index === key ? 'KEY:' + r.value : r.index + ':' + r.value);
        text(seen.join(' '));"
    ));
    assert_eq!(r.error(), None);
    assert_eq!(r.ok_texts(), ["KEY:first weather:sunny"]);
}

#[test]
fn leaving_as_settled_early_cancels_nothing_and_drops_the_rest() {
    let r = run(&format!(
        "{LATER_JS}
        let finished = 0;
        const track = (p) => p.then((v) => {{ finished += 1; return v; }});
        const results = as_settled([track(later(1, 'a')), track(later(20, 'b')), track(later(40, 'c'))]);
        for await (const r of results) {{ text('first ' + r.value); break; }}
        text(JSON.stringify(await results.next()));
        await later(60);
        text('finished ' + finished);
        text(JSON.stringify(await results.next()));
        const empty = as_settled([]);
        text(JSON.stringify(await empty.next()));
        text(empty[Symbol.asyncIterator]() === empty);"
    ));
    assert_eq!(r.error(), None);
    assert_eq!(
        r.ok_texts(),
        [
            "first a",
            r#"{"done":true}"#,
            "finished 3",
            r#"{"done":true}"#,
            r#"{"done":true}"#,
            "true"
        ]
    );
}

/// `x` is set first but due well after `y` (timers are due from when the cell set them:
/// the margin covers a loaded machine pausing the cell between the two).
#[test]
fn as_settled_observes_each_input_once_and_answers_concurrent_next_calls_in_order() {
    let r = run(&format!(
        "{LATER_JS}
        let thens = 0;
        const thenable = {{ then(resolve) {{ thens += 1; resolve('t'); }} }};
        const results = as_settled([later(100, 'x'), thenable, later(5, 'y')]);
        const steps = await Promise.all([results.next(), results.next(), results.next(), results.next()]);
        text(steps.map((s) => s.done ? 'done' : s.value.value).join(' '));
        text('thens ' + thens);"
    ));
    assert_eq!(r.error(), None);
    assert_eq!(r.ok_texts(), ["t y x done", "thens 1"]);
}

#[test]
fn as_settled_ignores_replaced_globals() {
    let r = run(&format!(
        "{LATER_JS}
        const inputs = [later(5, 1), 2];
        Promise.resolve = () => {{ throw new Error('hijacked resolve'); }};
        Reflect.apply = () => {{ throw new Error('hijacked apply'); }};
        globalThis.Promise = function Fake() {{ throw new Error('hijacked Promise'); }};
        const seen = [];
        for await (const r of as_settled(inputs)) seen.push(r.value);
        text(seen.join(','));
        try {{ as_settled(42); }} catch (e) {{ text(e instanceof TypeError ? 'TypeError: ' + e.message : String(e)); }}"
    ));
    assert_eq!(r.error(), None);
    assert_eq!(
        r.ok_texts(),
        [
            "2,1",
            "TypeError: as_settled expects an iterable or a Map of promises"
        ]
    );
}

#[test]
fn stream_settled_awaits_emit_one_result_at_a_time() {
    let r = run(&format!(
        "{LATER_JS}
        const log = [];
        let inside = 0;
        const done = await stream_settled([later(20, 'b'), later(1, 'a'), later(5, 'boom', true)], async (r) => {{
            inside += 1;
            log.push(`${{r.index}}${{r.status[0]}}${{r.value ?? r.reason}}@${{inside}}`);
            await later(15);
            inside -= 1;
        }});
        text(log.join(' '));
        text(String(done));"
    ));
    assert_eq!(r.error(), None);
    assert_eq!(r.ok_texts(), ["1fa@1 2rboom@1 0fb@1", "undefined"]);
}

#[test]
fn stream_settled_rejects_on_a_missing_callback_and_on_emit_errors() {
    let r = run(r#"
        for (const emit of [undefined, 42, "f"]) {
            try { await stream_settled([1], emit); text("no error"); }
            catch (e) { text(String(e) + " | " + (e instanceof TypeError) + " | " + e.message); }
        }
        let calls = 0;
        try {
            await stream_settled([1, 2, 3], (r) => { calls += 1; if (r.index === 1) throw new Error("emit failed"); });
            text("no error");
        } catch (e) { text(e.message + " after " + calls); }
        text(stream_settled.length + " " + as_settled.length + " " + stream_settled.name + " " + as_settled.name);
    "#);
    assert_eq!(r.error(), None);
    let callback =
        "TypeError: stream_settled requires a callback | true | stream_settled requires a callback";
    assert_eq!(
        r.ok_texts(),
        [
            callback,
            callback,
            callback,
            "emit failed after 2",
            "2 1 stream_settled as_settled"
        ]
    );
}

#[test]
fn the_settled_helpers_cannot_be_replaced() {
    let r = run(r#"
        const before = as_settled;
        let outcome;
        try { globalThis.as_settled = () => 1; outcome = "assigned"; } catch (e) { outcome = e.constructor.name; }
        let deleted;
        try { deleted = delete globalThis.stream_settled; } catch (e) { deleted = e.constructor.name; }
        text(outcome + " " + (as_settled === before) + " " + deleted + " " + typeof stream_settled);
    "#);
    assert_eq!(r.ok_texts(), ["TypeError true TypeError function"]);
}

#[test]
fn deferred_tools_are_found_by_name_and_listed_in_all_tools() {
    use code_mode_protocol::{ToolDefinition, ToolKind};
    let mut tools = crate::harness::default_tools();
    tools.push(
        ToolDefinition::new("mcp__far__echo", "Far away.", ToolKind::Function).with_deferred(true),
    );
    tools.push(
        ToolDefinition::new("echo", "A second echo: shadowed.", ToolKind::Function)
            .with_deferred(true),
    );
    for n in 0..2000 {
        tools.push(
            ToolDefinition::new(
                format!("mcp__many__tool_{n}"),
                format!("Tool {n}."),
                ToolKind::Function,
            )
            .with_deferred(true),
        );
    }
    let r = crate::harness::cell(
        r#"
        const far = tools.mcp__far__echo;
        text([typeof far, far === tools.mcp__far__echo, far.name, "mcp__far__echo" in tools,
              "nope" in tools, typeof tools.nope, Object.isFrozen(tools)].join(" "));
        text(JSON.stringify(await far({ a: 1 })));
        text(JSON.stringify(await tools["mcp__many__tool_1999"]("x")));
        text(ALL_TOOLS.length + " " + Object.isFrozen(ALL_TOOLS) + " " + (ALL_TOOLS === ALL_TOOLS));
        text(JSON.stringify(ALL_TOOLS.filter((t) => t.name === "echo" || t.name === "mcp__far__echo")));
        let assigned;
        try { ALL_TOOLS = []; assigned = "assigned"; } catch (e) { assigned = e.constructor.name; }
        let redefined;
        try { Object.defineProperty(Object.getPrototypeOf(tools), "mcp__far__echo", { value: 1 }); redefined = typeof tools.mcp__far__echo; } catch (e) { redefined = e.constructor.name; }
        text(assigned + " " + redefined + " " + Reflect.ownKeys(globalThis).filter((k) => k === "ALL_TOOLS").length);
        "#,
    )
    .tools(tools)
    .answer(|call| {
        Some(Ok(format!(
            r#"{{"tool":"{}","input":{}}}"#,
            call.name,
            call.input.clone().unwrap_or_else(|| "null".to_owned())
        )))
    })
    .run();
    assert_eq!(r.error(), None, "{:?}", r.events);
    assert_eq!(
        r.ok_texts(),
        [
            "function true mcp__far__echo true false undefined true",
            r#"{"tool":"mcp__far__echo","input":{"a":1}}"#,
            r#"{"tool":"mcp__many__tool_1999","input":"x"}"#,
            "2008 true true",
            r#"[{"name":"echo","description":"Returns its input."},{"name":"mcp__far__echo","description":"Far away."}]"#,
            "TypeError TypeError 1",
        ]
    );
}
