//! Hibernation out of process: cells parked on calls nobody answers give their threads
//! back in the runtime process when their session hibernates them (`hibernate_after_ms`),
//! and keep one each when it does not (`hibernate: false`). Read from the runtime's own
//! thread count, so a runtime that ignored the option fails. The same through `code-mode
//! mcp`'s `--hibernate-after-ms` and `--no-hibernation` flags.

use super::JsonlServer;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Cells parked in each session.
const PARKED: usize = 50;

/// Threads the runtime may gain or lose besides the cells': its pool's prepared threads
/// (taken by cells, then made again by its keeper).
const POOL_SLACK: usize = 8;

/// The runtime process of the server `pid`: its one child that is `code-mode-bin` (its
/// tools' processes are children too).
pub(super) fn runtime_of(pid: u32) -> u32 {
    let runtimes: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the server's tasks")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|pid| pid.parse().ok())
                .collect::<Vec<u32>>()
        })
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/comm"))
                .is_ok_and(|comm| comm.trim() == "code-mode-bin")
        })
        .collect();
    assert_eq!(runtimes.len(), 1, "one runtime process: {runtimes:?}");
    runtimes[0]
}

fn threads(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("the runtime's status")
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|count| count.trim().parse().ok())
        .expect("a thread count")
}

/// The default delay before a cell hibernates (`DEFAULT_HIBERNATE_AFTER_MS`): what a
/// runtime that ignored the session's option would use.
const DEFAULT_DELAY: Duration = Duration::from_secs(5);

/// Waits up to `within` for `holds` of the runtime's thread count; the last count.
fn until_threads(runtime: u32, within: Duration, holds: impl Fn(usize) -> bool) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let count = threads(runtime);
        if holds(count) || Instant::now() > deadline {
            return count;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Opens session `name` with `options`, then parks [`PARKED`] cells in it on calls that
/// are announced and never answered; `id` is the first request id to use.
fn park(server: &mut JsonlServer, options: Value, id: u64) -> u64 {
    let reply =
        server.ask(&json!({"id": id, "method": "open_session", "params": options}).to_string());
    let session = reply["result"]["session"]
        .as_str()
        .expect("a session")
        .to_owned();
    let mut announced = 0;
    for n in 0..PARKED as u64 {
        let params = json!({
            "session": session,
            "source": format!("const v = await tools.work({{n: {n}}}); text(v);"),
            "tools": [{"name": "work"}],
            "yield_time_ms": 20,
        });
        server.send(&json!({"id": id + 1 + n, "method": "exec", "params": params}).to_string());
    }
    // Every exec yielded, and every call was announced: each cell waits on its call.
    let mut answered = 0;
    while answered < PARKED || announced < PARKED {
        let line = server.next();
        match line.get("event").and_then(Value::as_str) {
            Some("tool_call") => announced += 1,
            Some(_) => {}
            None => {
                assert_eq!(line["result"]["response"]["type"], "yielded", "{line}");
                answered += 1;
            }
        }
    }
    id + 1 + PARKED as u64
}

#[test]
fn parked_cells_give_their_threads_back_only_when_their_session_hibernates_them() {
    let mut server = JsonlServer::start_with(&["serve", "--jsonl"]);
    let warm = server.ask(&json!({"id": 1, "method": "open_session", "params": {}}).to_string());
    let session = warm["result"]["session"]
        .as_str()
        .expect("a session")
        .to_owned();
    let ran = server.ask(
        &json!({"id": 2, "method": "exec", "params": {"session": session, "source": "text('warm')"}})
            .to_string(),
    );
    assert_eq!(ran["result"]["response"]["type"], "result", "{ran}");
    let runtime = runtime_of(server.child.id());
    let before = threads(runtime);

    // Hibernating at once: 50 parked cells leave the thread count where it was (give or
    // take the pool's own threads), well before the default delay would have hibernated
    // them.
    let next = park(&mut server, json!({"hibernate_after_ms": 0}), 10);
    let within = DEFAULT_DELAY * 4 / 5;
    let hibernated = until_threads(runtime, within, |count| count <= before + POOL_SLACK);
    assert!(
        hibernated <= before + POOL_SLACK,
        "{PARKED} cells of a session that hibernates at once still held threads after {within:?}: {before} before, {hibernated} after"
    );

    // Never hibernating: each parked cell holds a thread of its own, still after the
    // default delay.
    park(&mut server, json!({"hibernate": false}), next);
    let held = until_threads(runtime, Duration::from_secs(30), |count| {
        count + POOL_SLACK >= hibernated + PARKED
    });
    assert!(
        held + POOL_SLACK >= hibernated + PARKED,
        "{PARKED} cells that never hibernate hold a thread each: {hibernated} before, {held} after"
    );
    std::thread::sleep(DEFAULT_DELAY + Duration::from_secs(1));
    let later = threads(runtime);
    assert!(
        later + POOL_SLACK >= hibernated + PARKED,
        "cells that never hibernate gave their threads back after the default delay: {later}"
    );
    let _ = server.child.kill();
    let _ = server.child.wait();
}

/// `code-mode mcp` with `--hibernate-after-ms` and `--no-hibernation`: the flags reach the
/// runtime's cells end to end. Cells parked on calls of a command tool that takes a
/// minute give their threads back at once with `--hibernate-after-ms 0`, and keep one each
/// past the default delay with `--no-hibernation`.
#[test]
fn the_mcp_commands_hibernation_flags_reach_its_cells() {
    let scratch = super::Scratch::new();
    let tools = scratch.write(
        "tools.toml",
        "[[tool]]\nname = \"slow\"\ndescription = \"Takes a minute.\"\ncommand = [\"sleep\", \"60\"]\n",
    );
    let tools = tools.to_str().expect("a UTF-8 path");
    let (mut at_once, runtime, before) =
        mcp_parking(&["--tools", tools, "--hibernate-after-ms", "0"]);
    let within = DEFAULT_DELAY * 4 / 5;
    let hibernated = until_threads(runtime, within, |count| count <= before + POOL_SLACK);
    assert!(
        hibernated <= before + POOL_SLACK,
        "{PARKED} cells under --hibernate-after-ms 0 still held threads after {within:?}: {before} before, {hibernated} after"
    );
    at_once.stop();

    let (mut never, runtime, before) = mcp_parking(&["--tools", tools, "--no-hibernation"]);
    std::thread::sleep(DEFAULT_DELAY + Duration::from_secs(1));
    let later = threads(runtime);
    assert!(
        later + POOL_SLACK >= before + PARKED,
        "cells under --no-hibernation gave their threads back after the default delay: {before} before, {later} after"
    );
    never.stop();
}

/// A `code-mode mcp` server over stdio with `args`, initialized, one cell run to warm its
/// runtime, then [`PARKED`] cells parked on the `slow` tool: the server, its runtime's pid
/// and the runtime's thread count before the parked cells.
fn mcp_parking(args: &[&str]) -> (McpStdio, u32, usize) {
    let mut all = vec!["mcp"];
    all.extend_from_slice(args);
    let mut server = McpStdio(JsonlServer::start_with(&all));
    server.ask(
        1,
        "initialize",
        json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}),
    );
    server
        .0
        .send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string());
    let warm = server.exec(2, "text('warm')");
    assert!(warm.to_string().contains("warm"), "{warm}");
    let runtime = runtime_of(server.0.child.id());
    let before = threads(runtime);
    for n in 0..PARKED as u64 {
        let parked = server.exec(
            10 + n,
            "// @exec: {\"yield_time_ms\": 0}\nawait tools.slow({}); text('never');",
        );
        assert!(parked.to_string().contains("Script running"), "{parked}");
    }
    (server, runtime, before)
}

/// `code-mode mcp` over stdio: JSON-RPC lines.
struct McpStdio(JsonlServer);

impl McpStdio {
    /// Sends a request and returns its result (notifications in between are skipped).
    fn ask(&mut self, id: u64, method: &str, params: Value) -> Value {
        let request = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.0.send(&request.to_string());
        loop {
            let reply = self.0.next();
            if reply["id"] == id {
                assert!(reply.get("error").is_none(), "{method}: {reply}");
                return reply["result"].clone();
            }
        }
    }

    fn exec(&mut self, id: u64, code: &str) -> Value {
        self.ask(
            id,
            "tools/call",
            json!({"name": "exec", "arguments": {"code": code}}),
        )
    }

    fn stop(&mut self) {
        let _ = self.0.child.kill();
        let _ = self.0.child.wait();
    }
}
