//! MCP both ways, with real parts: the rmcp fixture server (`tests/fixtures/mcp_server.rs`,
//! built by `cargo test` as the `mcp-fixture` example), the reference servers from npm, and
//! the official Python SDK driving `code-mode mcp`. The npm and Python parts are installed
//! by `scripts/test-deps.sh`, pinned in `code-mode-cli/tests/mcp/`.

use super::mcp_http::HttpServer;
use super::{BIN, JsonlServer, Scratch, code_mode, project_root, run_example, session_id, text};
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The fixture server binary, beside this test binary's directory.
fn fixture() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary");
    let debug = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let path = debug.join("examples").join("mcp-fixture");
    assert!(
        path.exists(),
        "{} is missing: `cargo test -p code-mode-cli` builds it (the `mcp-fixture` example); \
         a run limited with `--test cli` does not",
        path.display()
    );
    path
}

/// Where `scripts/test-deps.sh` installs the npm servers and the Python SDK.
pub(super) fn deps() -> PathBuf {
    project_root().join("code-mode-cli/tests/mcp")
}

pub(super) fn dep(relative: &str) -> PathBuf {
    let path = deps().join(relative);
    assert!(
        path.exists(),
        "{} is missing: run scripts/test-deps.sh (it installs the MCP test servers and the \
         Python MCP SDK, pinned in code-mode-cli/tests/mcp)",
        path.display()
    );
    path
}

/// A tools file with `body`, where `FIXTURE` stands for the fixture server's path.
fn tools_file(scratch: &Scratch, body: &str) -> PathBuf {
    let fixture = fixture();
    scratch.write(
        "tools.toml",
        &body.replace("FIXTURE", &fixture.display().to_string()),
    )
}

/// A tools file with the fixture server alone, as `fx`.
pub(super) fn one_fixture(scratch: &Scratch) -> PathBuf {
    tools_file(
        scratch,
        "[[mcp_server]]\nname = \"fx\"\ncommand = \"FIXTURE\"\n",
    )
}

/// Runs a cell with `--json` and returns the result object.
fn run_json(scratch: &Scratch, cell: &str, tools: &std::path::Path) -> (Value, String) {
    scratch.write("cell.js", cell);
    let output = code_mode(
        &scratch.0,
        &[
            "run",
            "cell.js",
            "--json",
            "--tools",
            tools.to_str().unwrap(),
        ],
        "",
    );
    let stdout = text(&output.stdout);
    let stderr = text(&output.stderr);
    let result: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|error| panic!("{error}: stdout {stdout}\nstderr {stderr}"));
    (result, stderr)
}

/// The text items of a `--json` result, in order.
fn texts(result: &Value) -> Vec<String> {
    result["response"]["content_items"]
        .as_array()
        .expect("content items")
        .iter()
        .filter(|item| item["type"] == "input_text")
        .map(|item| item["text"].as_str().unwrap().to_owned())
        .collect()
}

const FIXTURE_SERVERS: &str = r#"
[[mcp_server]]
name = "fx"
command = "FIXTURE"

[[mcp_server]]
name = "other"
command = "FIXTURE"
args = ["--label", "B"]

[[mcp_server]]
name = "broken"
command = ["FIXTURE", "--fail-start"]

[[mcp_server]]
name = "hung"
command = ["FIXTURE", "--hang"]
startup_timeout_ms = 2500

[[mcp_server]]
name = "gone"
command = "no-such-mcp-server-anywhere"
args = ["x"]
"#;

#[test]
fn cells_call_mcp_tools_and_bad_servers_do_not_stop_the_good_ones() {
    let scratch = Scratch::new();
    let tools = tools_file(&scratch, FIXTURE_SERVERS);
    let cell = r#"
        const echoed = await tools.mcp__fx__echo({ text: "hi" });
        text(echoed);
        // The same tool name on two servers: both are callable, each under its server.
        text((await tools.mcp__other__echo({ text: "hi" })).content[0].text);
        const structured = await tools.mcp__fx__structured();
        text(structured.structuredContent);
        const pixel = await tools.mcp__fx__image({});
        image(pixel.content[1]);
        for (const bad of [() => tools.mcp__fx__fail({}), () => tools.mcp__fx__echo(5), () => tools.mcp__fx__echo("text")]) {
            try { await bad(); text("no rejection"); } catch (error) { text(`rejected: ${error}`); }
        }
        text(`${typeof tools.mcp__broken__echo} ${typeof tools.mcp__hung__echo} ${typeof tools.mcp__gone__echo}`);
        // Nine tools on each of two servers, listed in pages of four.
        text(ALL_TOOLS.filter((tool) => tool.name.startsWith("mcp__")).length);
    "#;
    let (result, stderr) = run_json(&scratch, cell, &tools);
    assert_eq!(result["status"], "Script completed", "{result}\n{stderr}");
    assert_eq!(
        texts(&result),
        [
            r#"{"content":[{"type":"text","text":"hi"}],"isError":false}"#,
            "B:hi",
            r#"{"count":2,"names":["a","b"]}"#,
            "rejected: the fixture failed on purpose",
            "rejected: tools.mcp__fx__echo takes an object of arguments (or none), not a number",
            "rejected: tools.mcp__fx__echo takes an object of arguments (or none), not a string",
            "undefined undefined undefined",
            "18",
        ]
    );
    let image = &result["response"]["content_items"][3];
    assert_eq!(image["type"], "input_image", "{result}");
    assert!(
        image["image_url"]
            .as_str()
            .unwrap()
            .starts_with("data:image/png;base64,iVBORw0KGgo"),
        "{image}"
    );
    // Each bad server is one clear line on stderr; the fail-start one with its own words.
    // A server whose program is missing is one of them, not an error of the tools file.
    assert!(
        stderr.contains(
            "code-mode: MCP server `gone` could not be started: command `no-such-mcp-server-anywhere` was not found; trying again in the background"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("code-mode: MCP server `broken` failed to initialize")
            && stderr.contains(
                "the end of its stderr:\nfixture: refusing to start (missing FIXTURE_TOKEN)"
            ),
        "{stderr}"
    );
    // A slow start is announced after 2 s, then times out; the servers start concurrently,
    // so the good ones were ready long before.
    assert!(
        stderr.contains("code-mode: still starting MCP server `hung` (2 s so far, timeout 2500 ms)")
            && stderr.contains(
                "code-mode: MCP server `hung` did not start within 2500 ms (no answer to `initialize` or `tools/list`)"
            ),
        "{stderr}"
    );
}

#[test]
fn describe_names_the_servers_that_are_down_and_why() {
    let scratch = Scratch::new();
    let tools = tools_file(
        &scratch,
        r#"
[[mcp_server]]
name = "fx"
command = "FIXTURE"

[[mcp_server]]
name = "broken"
command = ["FIXTURE", "--fail-start"]

[[mcp_server]]
name = "gone"
command = "no-such-mcp-server-anywhere"
args = ["--stdio"]
deferred = true
"#,
    );
    let output = code_mode(
        &scratch.0,
        &["describe", "--tools", tools.to_str().unwrap()],
        "",
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    let description = text(&output.stdout);
    let (tools_part, down) = description
        .split_once("\n## Unavailable tool sources\n")
        .unwrap_or_else(|| panic!("no unavailable section: {description}"));
    // The good server's tools are declared; the bad ones are named with their reasons.
    assert!(
        tools_part.contains("mcp__fx__echo(args: {"),
        "{description}"
    );
    let lines: Vec<&str> = down.lines().skip(1).collect();
    assert!(
        lines[0].starts_with("- MCP server `broken`: failed to initialize")
            && lines[0].ends_with(
                "the end of its stderr: fixture: refusing to start (missing FIXTURE_TOKEN)"
            ),
        "{description}"
    );
    assert_eq!(
        lines[1],
        "- MCP server `gone`: could not be started: command `no-such-mcp-server-anywhere` was not found",
        "{description}"
    );
}

#[test]
fn a_server_that_dies_mid_call_fails_the_call_and_starts_again() {
    let scratch = Scratch::new();
    let tools = one_fixture(&scratch);
    let cell = r#"
        try { await tools.mcp__fx__die({}); text("no rejection"); } catch (error) { text(error); }
        text((await tools.mcp__fx__echo({ text: "after the restart" })).content[0].text);
        try { await tools.mcp__fx__big({ bytes: 20000000 }); text("no rejection"); } catch (error) { text(error); }
        const big = await tools.mcp__fx__big({ bytes: 3000000 });
        text(big.content[0].text.length);
    "#;
    let (result, stderr) = run_json(&scratch, cell, &tools);
    assert_eq!(result["status"], "Script completed", "{result}\n{stderr}");
    assert_eq!(
        texts(&result),
        [
            "MCP server `fx` exited during the call to `die`; it is started again on the next call; the end of its stderr:\nfixture: dying on request",
            "after the restart",
            "MCP server `fx` answered `big` with a message over the 16 MiB limit of one MCP message; the server was stopped and is started again on the next call",
            "3000000",
        ]
    );
}

#[test]
fn an_ended_cell_cancels_its_calls_and_later_cells_see_changed_tool_lists() {
    let scratch = Scratch::new();
    let tools = one_fixture(&scratch);
    // Cell 1 leaves a slow call in flight and exits; the server is told (it counts the
    // cancellation). Cell 3 adds a tool; cell 4 sees it.
    let cells = "\
tools.mcp__fx__slow({ ms: 30000 });
await new Promise((resolve) => setTimeout(resolve, 200));
exit();

await new Promise((resolve) => setTimeout(resolve, 300));
text(`cancelled ${(await tools.mcp__fx__cancelled()).content[0].text}`);

text(typeof tools.mcp__fx__added);
await tools.mcp__fx__add_tool();

text((await tools.mcp__fx__added()).content[0].text);

";
    let started = Instant::now();
    let output = code_mode(
        &scratch.0,
        &["repl", "--tools", tools.to_str().unwrap()],
        cells,
    );
    let stdout = text(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        text(&output.stderr)
    );
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|line| !line.starts_with("Script completed") && !line.starts_with("Wall time"))
        .collect();
    assert_eq!(
        lines,
        ["cancelled 1", "undefined", "the added tool"],
        "{stdout}"
    );
    // The slow call did not hold the REPL for its 30 s.
    assert!(started.elapsed() < Duration::from_secs(25));
}

#[test]
fn describe_renders_mcp_tools_under_a_namespace_per_server() {
    let scratch = Scratch::new();
    let tools = tools_file(
        &scratch,
        "[[mcp_server]]\nname = \"fx\"\ncommand = \"FIXTURE\"\ndisabled_tools = [\"die\"]\n\n\
         [[mcp_server]]\nname = \"other\"\ncommand = [\"FIXTURE\"]\nenabled_tools = [\"echo\"]\n",
    );
    let output = code_mode(
        &scratch.0,
        &["describe", "--tools", tools.to_str().unwrap()],
        "",
    );
    let description = text(&output.stdout);
    assert!(output.status.success(), "{description}");
    for expected in [
        "type CallToolResult<T = unknown> = { content: McpContent[]; structuredContent?: T; isError?: boolean };",
        "## Namespace `mcp__fx`\nTools of the MCP server `fx`.",
        "### `mcp__fx__echo`\nEchoes its text.\n```ts\ndeclare const tools: {\n  mcp__fx__echo(args: {\n    // What to echo.\n    text: string;\n  }): Promise<CallToolResult>;\n};",
        "mcp__fx__structured(args: {\n    [key: string]: unknown;\n  }): Promise<CallToolResult<{\n    count: number;\n    names: string[];\n  }>>;",
        "## Namespace `mcp__other`",
        "mcp__other__echo(args: {",
    ] {
        assert!(
            description.contains(expected),
            "missing {expected:?} in\n{description}"
        );
    }
    // The shared MCP types are declared once; filtered tools are not offered.
    assert_eq!(description.matches("type McpContent =").count(), 1);
    assert!(!description.contains("mcp__fx__die"), "{description}");
    assert!(
        !description.contains("mcp__other__structured"),
        "{description}"
    );
}

#[test]
fn bad_mcp_server_entries_name_the_line_and_field() {
    let scratch = Scratch::new();
    for (body, expected) in [
        (
            "[[mcp_server]]\nname = \"fx\"\ncommand = \"true\"\nstartup_timeout_ms = \"soon\"\n",
            "line 4, column 22: invalid type: string \"soon\", expected u64",
        ),
        (
            "[[mcp_server]]\nname = \"fx\"\ncommand = \"true\"\nport = 3\n",
            "line 4, column 1: unknown field `port`",
        ),
        (
            "[[mcp_server]]\nname = \"fx\"\n",
            "MCP server `fx`: needs `command` (a stdio server) or `url` (streamable HTTP)",
        ),
        (
            "[[mcp_server]]\nname = \"fx\"\ncommand = \"true\"\nurl = \"http://127.0.0.1:1/mcp\"\n",
            "MCP server `fx`: give `command` or `url`, not both",
        ),
        (
            "[[mcp_server]]\nname = \"f x\"\ncommand = \"true\"\n",
            "MCP server `f x`: `name` must be letters, digits, `_` or `-`",
        ),
        (
            "[[mcp_server]]\nname = \"fx\"\ncommand = \"true\"\n[[mcp_server]]\nname = \"fx\"\ncommand = \"true\"\n",
            "MCP server `fx`: defined twice",
        ),
        (
            "[[mcp_server]]\nname = \"fx\"\nurl = \"ftp://example\"\n",
            "`url` must be http:// or https://, got `ftp://example`",
        ),
    ] {
        let tools = scratch.write("bad.toml", body);
        let output = code_mode(
            &scratch.0,
            &["describe", "--tools", tools.to_str().unwrap()],
            "",
        );
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{body}: {stderr}");
        assert!(
            stderr.starts_with("code-mode: bad tools file ") && stderr.contains(expected),
            "{body}: expected {expected:?} in {stderr}"
        );
    }
}

#[test]
fn serve_jsonl_offers_mcp_tools_to_its_cells() {
    let scratch = Scratch::new();
    let tools = one_fixture(&scratch);
    let mut server =
        JsonlServer::start_with(&["serve", "--jsonl", "--tools", tools.to_str().unwrap()]);
    let session = session_id(&server.ask(r#"{"id": 0, "method": "open_session", "params": {}}"#));
    let reply = server.ask(
        &serde_json::json!({"id": 1, "method": "exec", "params": {"session": session, "source": "text((await tools.mcp__fx__echo({text: 'over jsonl'})).content[0].text)"}})
            .to_string(),
    );
    assert_eq!(reply["result"]["response"]["type"], "result", "{reply}");
    assert_eq!(
        reply["result"]["response"]["content_items"][0]["text"], "over jsonl",
        "{reply}"
    );
    assert!(server.finish().success());
}

#[test]
fn the_filesystem_server_from_npm() {
    let scratch = Scratch::new();
    let files = scratch.0.join("files");
    std::fs::create_dir_all(files.join("sub")).unwrap();
    std::fs::write(files.join("notes.md"), "# Notes\nalpha\nbeta\n").unwrap();
    std::fs::write(files.join("data.json"), r#"{"n": 41}"#).unwrap();
    std::fs::write(files.join("sub/deep.md"), "deep").unwrap();
    let server = dep("node_modules/.bin/mcp-server-filesystem");
    let tools = scratch.write(
        "tools.toml",
        &format!(
            "[[mcp_server]]\nname = \"fs\"\ncommand = [{:?}, {:?}]\nstartup_timeout_ms = 30000\n",
            server.display().to_string(),
            files.canonicalize().unwrap().display().to_string()
        ),
    );
    let root = files.canonicalize().unwrap().display().to_string();
    let cell = format!(
        r##"
        const root = {root:?};
        const listing = await tools.mcp__fs__list_directory({{ path: root }});
        const names = listing.content[0].text.split("\n").filter((line) => line.startsWith("[FILE]")).map((line) => line.slice(7)).sort();
        text(names.join(","));
        const markdown = names.filter((name) => name.endsWith(".md"));
        for (const name of markdown) {{
            const file = await tools.mcp__fs__read_text_file({{ path: `${{root}}/${{name}}` }});
            text(`${{name}}: ${{file.content[0].text.split("\n").filter((line) => line && !line.startsWith("#")).join("+")}}`);
        }}
        try {{ await tools.mcp__fs__read_text_file({{ path: "/etc/passwd" }}); text("read outside"); }}
        catch (error) {{ text(String(error).includes("outside allowed directories") ? "refused outside" : `other: ${{error}}`); }}
        "##
    );
    let (result, stderr) = run_json(&scratch, &cell, &tools);
    assert_eq!(result["status"], "Script completed", "{result}\n{stderr}");
    assert_eq!(
        texts(&result),
        [
            "data.json,notes.md",
            "notes.md: alpha+beta",
            "refused outside"
        ]
    );
}

#[test]
fn the_everything_server_from_npm() {
    let scratch = Scratch::new();
    let server = dep("node_modules/.bin/mcp-server-everything");
    let tools = scratch.write(
        "tools.toml",
        &format!(
            "[[mcp_server]]\nname = \"everything\"\ncommand = [{:?}]\nstartup_timeout_ms = 30000\n",
            server.display().to_string()
        ),
    );
    let cell = r#"
        const tiny = await tools.mcp__everything__get_tiny_image();
        image(tiny.content.find((block) => block.type === "image"));
        try { await tools.mcp__everything__get_sum({ a: "one", b: 2 }); text("no rejection"); }
        catch (error) { text(String(error).includes("-32602") ? "invalid arguments rejected" : `other: ${error}`); }
        text((await tools.mcp__everything__get_sum({ a: 1, b: 2 })).content[0].text);
        // A 60 s operation left running: `exit()` ends the cell, which cancels the call.
        tools.mcp__everything__trigger_long_running_operation({ duration: 60, steps: 60 });
        await new Promise((resolve) => setTimeout(resolve, 300));
        exit();
    "#;
    let started = Instant::now();
    let (result, stderr) = run_json(&scratch, cell, &tools);
    assert_eq!(result["status"], "Script completed", "{result}\n{stderr}");
    let items = result["response"]["content_items"].as_array().unwrap();
    assert_eq!(items[0]["type"], "input_image", "{result}");
    assert!(
        items[0]["image_url"]
            .as_str()
            .unwrap()
            .starts_with("data:image/png;base64,"),
        "{result}"
    );
    assert_eq!(
        texts(&result),
        ["invalid arguments rejected", "The sum of 1 and 2 is 3."]
    );
    // The run ended with the cell, not with the operation.
    assert!(started.elapsed() < Duration::from_secs(45));
}

/// Runs the Python SDK driver against `code-mode mcp` and returns what it saw.
pub(super) fn drive(args: &[&str]) -> Value {
    let python = dep(".venv/bin/python");
    let output = Command::new(python)
        .arg(deps().join("drive_code_mode.py"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run the Python MCP client");
    let stdout = text(&output.stdout);
    assert!(
        output.status.success(),
        "stdout: {stdout}\nstderr: {}",
        text(&output.stderr)
    );
    serde_json::from_str(&stdout).expect("the driver's JSON")
}

/// A result's text blocks: a header block that starts with `status` and the wall time and
/// ends with `Output:`, then exactly `items`.
pub(super) fn assert_result(blocks: &Value, status: &str, items: &[&str]) {
    let blocks: Vec<&str> = blocks
        .as_array()
        .unwrap_or_else(|| panic!("text blocks: {blocks}"))
        .iter()
        .map(|block| block.as_str().unwrap_or_default())
        .collect();
    let header = blocks.first().copied().unwrap_or_default();
    assert!(
        header.starts_with(&format!("{status}\nWall time ")) && header.ends_with("\nOutput:"),
        "{blocks:?}"
    );
    assert_eq!(&blocks[1..], items, "{blocks:?}");
}

pub(super) fn check_driven(seen: &Value) {
    assert_eq!(seen["tools"], serde_json::json!(["exec", "wait"]), "{seen}");
    let description = seen["exec_description"].as_str().unwrap();
    assert!(
        description.contains("- The `code` argument is the JavaScript source text")
            && description.contains("mcp__fx__echo(args: {"),
        "{description}"
    );
    // Every result is the header block, then a block per item the cell wrote.
    assert_result(
        &seen["exec"],
        "Script running with cell ID 1",
        &["first: from python"],
    );
    assert_eq!(seen["cell_id"], "1");
    assert_result(&seen["wait"], "Script completed", &["second part"]);
    assert_result(&seen["stored"], "Script completed", &["from python"]);
    let failed = &seen["failed"];
    assert_eq!(failed.as_array().map(Vec::len), Some(2), "{failed}");
    assert!(
        failed[0].as_str().unwrap().starts_with("Script failed\n")
            && failed[1]
                .as_str()
                .unwrap()
                .starts_with("Script error:\nError: on purpose"),
        "{failed}"
    );
    // Cell 6's exec request was cancelled after 300 ms, which preempted it; the cell ran
    // on, and the output the preempted observation had (never sent: MCP answers no
    // cancelled request) came first in `wait`.
    assert_result(
        &seen["survived"],
        "Script completed",
        &["early", "survived"],
    );
    let items = &seen["items"];
    assert_eq!(items.as_array().map(Vec::len), Some(5), "{items}");
    assert!(
        items[0][1]
            .as_str()
            .unwrap()
            .starts_with("Script failed\nWall time "),
        "{items}"
    );
    assert_eq!(items[1], serde_json::json!(["text", "2"]), "{items}");
    // An audio item is an MCP audio block with its data and MIME type.
    assert_eq!(
        items[2],
        serde_json::json!(["audio", "audio/mpeg"]),
        "{items}"
    );
    assert_eq!(seen["audio_data"], "SUQz", "{seen}");
    assert_eq!(items[3], serde_json::json!(["text", "mcp ok"]), "{items}");
    assert!(
        items[4][1]
            .as_str()
            .unwrap()
            .starts_with("Script error:\nError: last"),
        "{items}"
    );
    // Cell 7 made the nested server add a tool: the client was told, and `exec`'s
    // description now declares it.
    assert!(
        seen["notified"]
            .as_array()
            .unwrap()
            .contains(&Value::from("notifications/tools/list_changed")),
        "{seen}"
    );
    assert_eq!(seen["added_listed"], true, "{seen}");
    // Cells 4 and 5 notify twice each: as log messages without a progress token, as
    // progress (counting up) with one.
    assert_eq!(
        seen["logged"],
        serde_json::json!([{"cell_id": "4", "text": "one"}, {"cell_id": "4", "text": "two"}])
    );
    assert_eq!(
        seen["progress"],
        serde_json::json!([[1.0, "[cell 5] one"], [2.0, "[cell 5] two"]])
    );
}

#[test]
fn the_python_sdk_drives_code_mode_mcp_over_stdio() {
    let scratch = Scratch::new();
    let tools = one_fixture(&scratch);
    check_driven(&drive(&["stdio", BIN, tools.to_str().unwrap()]));
}

#[test]
fn the_python_sdk_drives_code_mode_mcp_over_http() {
    let scratch = Scratch::new();
    let tools = one_fixture(&scratch);
    let server = HttpServer::start(
        &[
            "mcp",
            "--tools",
            tools.to_str().unwrap(),
            "--http",
            "127.0.0.1:0",
        ],
        &[],
    )
    .expect("the server starts");
    assert!(server.url.starts_with("http://127.0.0.1:") && server.url.ends_with("/mcp"));
    check_driven(&drive(&["http", &server.url]));

    // A streamable-HTTP MCP server as a tool source: this code-mode's cells call the
    // other one's `exec`.
    let client_tools = scratch.write(
        "http-tools.toml",
        &format!(
            "[[mcp_server]]\nname = \"remote\"\nurl = {:?}\nheaders = {{ X-Test = \"1\" }}\n",
            server.url
        ),
    );
    let (result, stderr) = run_json(
        &scratch,
        r#"const answer = await tools.mcp__remote__exec({ code: "text(6 * 7)" });
           text(`${answer.content[0].text.split("\n")[0]} ${answer.content.at(-1).text}`);"#,
        &client_tools,
    );
    assert_eq!(result["status"], "Script completed", "{result}\n{stderr}");
    // The other server's result: its header block, then the item as a block of its own.
    assert_eq!(texts(&result), ["Script completed 42"]);

    // Only /mcp is served.
    let other = server.url.replace("/mcp", "/other");
    let status = drive_status(&other);
    assert_eq!(status, 404);
}

/// The HTTP status of a GET, through Python's standard library.
fn drive_status(url: &str) -> u16 {
    let output = Command::new(dep(".venv/bin/python"))
        .args([
            "-c",
            "import sys, urllib.request, urllib.error\n\
             try:\n    print(urllib.request.urlopen(sys.argv[1]).status)\n\
             except urllib.error.HTTPError as e:\n    print(e.code)",
            url,
        ])
        .output()
        .expect("python");
    text(&output.stdout).trim().parse().expect("a status")
}

#[test]
fn the_mcp_example_runs_as_docs_mcp_shows() {
    dep("node_modules/.bin/mcp-server-filesystem");
    let stdout = run_example("examples/mcp_docs.js", "examples/mcp.toml");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("[notify] reading ") && lines[0].ends_with(" Markdown files"),
        "{stdout}"
    );
    // README.md is read through the MCP server and counted by the command tool.
    let readme = lines
        .iter()
        .position(|line| line.starts_with("README.md: "))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(lines[readme].contains(" words, "), "{stdout}");
    assert_eq!(lines[readme + 1], "  # code-mode", "{stdout}");
    assert_eq!(lines[lines.len() - 2], "Script completed");
}

#[test]
fn a_server_that_failed_to_start_is_tried_again_and_its_tools_appear() {
    let scratch = Scratch::new();
    let ready = scratch.0.join("ready");
    let tools = tools_file(
        &scratch,
        &format!(
            "[[mcp_server]]\nname = \"late\"\ncommand = [\"FIXTURE\", \"--fail-start-until\", {:?}]\n",
            ready.display().to_string()
        ),
    );
    let mut repl = Command::new(BIN)
        .args(["repl", "--tools", tools.to_str().unwrap()])
        .current_dir(&scratch.0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn code-mode repl");
    let mut stdin = repl.stdin.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(repl.stdout.take().unwrap()));
    // Runs one entry; its first output line.
    let mut ask = |entry: &str| -> String {
        use std::io::Write;
        writeln!(stdin, "{entry}\n").unwrap();
        stdin.flush().unwrap();
        let first = lines.next().expect("a line").expect("a line");
        loop {
            let line = lines.next().expect("a line").expect("a line");
            if line.starts_with("Script ") {
                return first;
            }
        }
    };
    assert_eq!(ask("text(typeof tools.mcp__late__echo)"), "undefined");
    std::fs::write(&ready, "").unwrap();
    // Retries back off up to 10 s apart; the tool shows up for a later cell.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = ask("text(typeof tools.mcp__late__echo)");
        if seen == "function" {
            break;
        }
        assert_eq!(seen, "undefined");
        assert!(
            Instant::now() < deadline,
            "the server's tools never appeared"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        ask("text((await tools.mcp__late__echo({ text: \"late\" })).content[0].text)"),
        "late"
    );
    let _ = repl.kill();
    let _ = repl.wait();
}
