//! `--sections sources`: the cost of the runtime's own sources (helpers, the TypeScript
//! stripper) at cell start.

use super::*;

/// A file built beside this benchmark in the same target directory (`release/<relative>`).
pub(crate) fn built(relative: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("this benchmark's path");
    let profile = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let path = profile.join(relative);
    assert!(
        path.exists(),
        "{} is missing; build it with `cargo build --release -p code-mode-cli -p code-mode-bin --bins --examples`",
        path.display()
    );
    path
}

/// Per-call time of nested calls through the `code-mode` CLI, per tool source.
#[expect(clippy::print_stdout, reason = "the benchmark's tables are its output")]
pub(crate) fn sources_table(options: &Options) {
    let cli = built("code-mode");
    let fixture = built("examples/mcp-fixture");
    let dir = std::env::temp_dir().join(format!("code-mode-bench-sources-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let tools = dir.join("tools.toml");
    std::fs::write(
        &tools,
        format!(
            "[[tool]]\nname = \"cat\"\ndescription = \"Answers with its input.\"\ncommand = [\"cat\"]\n\n\
             [[mcp_server]]\nname = \"fx\"\ncommand = [{:?}]\n",
            fixture.display().to_string()
        ),
    )
    .expect("write the tools file");
    println!(
        "{:<28} {:>7} {:>6} {:>10} {:>10} {:>10}",
        "nested call (code-mode CLI)", "samples", "calls", "mean/call", "p50/call", "p95/call"
    );
    for (label, tool, calls) in [
        ("command tool (cat)", "cat", 50),
        ("MCP tool, stdio (rmcp)", "mcp__fx__echo", 400),
    ] {
        let cell = format!(
            "for (let i = 0; i < 5; i++) await tools.{tool}({{ text: \"x\" }});\n\
             const start = Date.now();\n\
             for (let i = 0; i < {calls}; i++) await tools.{tool}({{ text: \"x\" }});\n\
             text(String((Date.now() - start) * 1e6 / {calls}));"
        );
        let cell_path = dir.join("cell.js");
        std::fs::write(&cell_path, cell).expect("write the cell");
        let mut per_call: Vec<u128> = (0..options.samples)
            .map(|_| {
                let output = Command::new(&cli)
                    .args(["run", "--json", "--tools"])
                    .arg(&tools)
                    .arg(&cell_path)
                    .output()
                    .expect("run code-mode");
                let result: serde_json::Value = serde_json::from_slice(&output.stdout)
                    .unwrap_or_else(|error| {
                        panic!(
                            "code-mode run: {error}: {}",
                            String::from_utf8_lossy(&output.stderr)
                        )
                    });
                let text = result["response"]["content_items"][0]["text"]
                    .as_str()
                    .unwrap_or_else(|| panic!("no figure in {result}"));
                text.parse::<f64>().expect("nanoseconds per call") as u128
            })
            .collect();
        per_call.sort_unstable();
        let mean = mean(&per_call);
        println!(
            "{:<28} {:>7} {:>6} {:>10} {:>10} {:>10}",
            label,
            per_call.len(),
            calls,
            format_duration(mean),
            format_duration(percentile(&per_call, 0.5)),
            format_duration(percentile(&per_call, 0.95))
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
