//! Nothing secret of ours reaches a tool. Each test runs again in a child process of this
//! binary whose environment holds the secrets a serving process has (the state URL, the
//! MCP token, exporter headers), a harmless variable every tool may see and one the tools
//! file names; there the tool source spawns its process for real, and that process's
//! environment is checked. (Setting the secrets in this process instead would race the
//! other tests.)

use code_mode_tools::ToolSet;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Set in the child process: it runs the test's body instead of spawning a child again.
const CHILD: &str = "CODE_MODE_TOOLS_TEST_ENVIRONMENT_CHILD";

/// What a serving process may hold that no tool should see.
const SECRETS: [(&str, &str); 3] = [
    (
        "CODE_MODE_STATE_URL",
        "postgres://code:state-password-hunter2@db.invalid/state",
    ),
    ("CODE_MODE_MCP_TOKEN", "mcp-token-0123456789abcdef"),
    (
        "OTEL_EXPORTER_OTLP_HEADERS",
        "authorization=Bearer otlp-collector-secret",
    ),
];

/// Inherited by every tool (the locale's time zone), with a value of our own.
const ALLOWED: (&str, &str) = ("TZ", "UTC0");

/// In our environment, and passed only because the tools file's `env_vars` names it.
const PASSED: (&str, &str) = ("CODE_MODE_TEST_PASSED_BY_NAME", "passed-by-name");

/// Set by the tools file's `env`.
const SET: (&str, &str) = ("TOOL_GREETING", "hello from the tools file");

/// The `env` and `env_vars` lines every tools file here gives its tool or server.
fn env_lines() -> String {
    format!(
        "env = {{ {} = \"{}\" }}\nenv_vars = [\"{}\"]\n",
        SET.0, SET.1, PASSED.0
    )
}

/// In the test process: runs `test` (this module's test of that name) in a child process
/// with the secrets in its environment, checks that it ran and passed, and returns true.
/// In that child: returns false, and the caller goes on with the test's body.
fn ran_in_child(test: &str) -> bool {
    if std::env::var_os(CHILD).is_some() {
        for (name, _) in SECRETS.iter().chain([&ALLOWED, &PASSED]) {
            assert!(
                std::env::var_os(name).is_some(),
                "the child's environment lacks {name}"
            );
        }
        return false;
    }
    let module = module_path!()
        .split_once("::")
        .map_or(module_path!(), |(_, module)| module);
    let name = format!("{module}::{test}");
    let exe = std::env::current_exe().expect("this test binary");
    let output = std::process::Command::new(exe)
        .args([name.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .envs(SECRETS)
        .envs([ALLOWED, PASSED])
        .env(CHILD, "1")
        .output()
        .expect("the child test ran");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{name} in a child with the secrets set:\n{stdout}\n{stderr}"
    );
    true
}

/// A fresh directory with `tools.toml`, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new(test: &str, tools_file: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "code-mode-tools-environment-{}-{test}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a directory");
        std::fs::write(dir.join("tools.toml"), tools_file).expect("written");
        Self(dir)
    }

    fn tools_file(&self) -> PathBuf {
        self.0.join("tools.toml")
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// Checks the output of `env` in a tool's process: no secret (by name or by value), none
/// of our other variables, `PATH` and the allowed variable as ours has them, and what the
/// tools file named. A failure names the variables seen, never their values (they are
/// this machine's).
fn check_environment(source: &str, env_output: &str) {
    let seen: BTreeMap<&str, &str> = env_output
        .lines()
        .filter_map(|line| line.split_once('='))
        .collect();
    let names: Vec<&str> = seen.keys().copied().collect();
    for (name, value) in SECRETS {
        assert!(
            !seen.contains_key(name),
            "{source} sees {name}; it sees {names:?}"
        );
        assert!(
            !env_output.contains(value),
            "{source} sees the value of {name}; it sees {names:?}"
        );
    }
    assert!(
        !seen.contains_key(CHILD),
        "{source} sees {CHILD}, a variable of ours that is not allowed; it sees {names:?}"
    );
    let path = std::env::var("PATH").expect("a PATH");
    assert!(
        seen.get("PATH") == Some(&path.as_str()),
        "{source}: PATH is not ours; it sees {names:?}"
    );
    for (name, value, why) in [
        (ALLOWED.0, ALLOWED.1, "inherited"),
        (SET.0, SET.1, "`env`"),
        (PASSED.0, PASSED.1, "`env_vars`"),
    ] {
        assert_eq!(seen.get(name), Some(&value), "{source}: {name} ({why})");
    }
}

#[test]
fn a_command_tool_sees_path_and_what_the_file_names_but_no_secret() {
    if ran_in_child("a_command_tool_sees_path_and_what_the_file_names_but_no_secret") {
        return;
    }
    let dir = Dir::new(
        "command",
        &format!(
            "[[tool]]\nname = \"environment\"\ncommand = [\"env\"]\n{}",
            env_lines()
        ),
    );
    let set = ToolSet::parse(Some(&dir.tools_file()), &[]).expect("the tools file");
    let output = runtime()
        .block_on(set.call("environment", None, &CancellationToken::new()))
        .expect("the tool ran");
    check_environment("a command tool", output.as_str().expect("env's text"));
}

#[test]
fn the_shell_builtin_sees_path_and_what_the_file_names_but_no_secret() {
    if ran_in_child("the_shell_builtin_sees_path_and_what_the_file_names_but_no_secret") {
        return;
    }
    let dir = Dir::new("shell", &format!("[builtin.shell]\n{}", env_lines()));
    let set =
        ToolSet::parse(Some(&dir.tools_file()), &["shell".to_owned()]).expect("the tools file");
    let output = runtime()
        .block_on(set.call(
            "exec_command",
            Some(json!({"command": "env"})),
            &CancellationToken::new(),
        ))
        .expect("the command ran");
    assert_eq!(output["exit_code"], json!(0), "{output}");
    check_environment(
        "the shell built-in",
        output["stdout"].as_str().expect("its stdout"),
    );
}

/// A stdio MCP server in `sh` that writes its environment to the file named by its
/// argument, then answers `initialize` (with the version asked for) and `tools/list`
/// (no tools). rmcp writes compact JSON, one message a line.
const ENV_MCP_SERVER: &str = r#"env > "$1"
while IFS= read -r line; do
  id=$(printf '%s\n' "$line" | sed -n 's/.*"id":\([0-9][0-9]*\).*/\1/p')
  case $line in
    *'"method":"initialize"'*)
      version=$(printf '%s\n' "$line" | sed -n 's/.*"protocolVersion":"\([^"]*\)".*/\1/p')
      printf '{"jsonrpc":"2.0","id":%s,"result":{"protocolVersion":"%s","capabilities":{"tools":{}},"serverInfo":{"name":"environment","version":"0"}}}\n' "$id" "$version" ;;
    *'"method":"tools/list"'*)
      printf '{"jsonrpc":"2.0","id":%s,"result":{"tools":[]}}\n' "$id" ;;
    *'"method":"ping"'*)
      printf '{"jsonrpc":"2.0","id":%s,"result":{}}\n' "$id" ;;
  esac
done
"#;

#[test]
fn an_mcp_stdio_server_sees_path_and_what_the_file_names_but_no_secret() {
    if ran_in_child("an_mcp_stdio_server_sees_path_and_what_the_file_names_but_no_secret") {
        return;
    }
    let dir = Dir::new(
        "mcp",
        &format!(
            "[[mcp_server]]\nname = \"environment\"\ncommand = [\"sh\", \"server.sh\", \"environment.txt\"]\n{}",
            env_lines()
        ),
    );
    std::fs::write(dir.0.join("server.sh"), ENV_MCP_SERVER).expect("written");
    let mut set = ToolSet::parse(Some(&dir.tools_file()), &[]).expect("the tools file");
    runtime().block_on(async {
        set.start(Arc::new(|| {})).await;
        let down = set.unavailable();
        set.stop().await;
        assert!(
            down.is_empty(),
            "the server did not start: {}",
            down.first().map_or("", |source| source.reason.as_str())
        );
    });
    let written = read(&dir.0.join("environment.txt"));
    check_environment("an MCP stdio server", &written);
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

#[test]
fn a_bad_variable_name_and_env_vars_on_a_url_server_are_refused() {
    let dir = Dir::new(
        "bad-name",
        "[[tool]]\nname = \"t\"\ncommand = \"true\"\nenv = { \"A=B\" = \"v\" }\n",
    );
    let error = ToolSet::parse(Some(&dir.tools_file()), &[])
        .err()
        .expect("refused");
    let text = error.to_string();
    assert!(text.contains("tool `t`") && text.contains("A=B"), "{text}");
    let dir = Dir::new(
        "url-env-vars",
        "[[mcp_server]]\nname = \"web\"\nurl = \"http://127.0.0.1:9/mcp\"\nenv_vars = [\"X\"]\n",
    );
    let error = ToolSet::parse(Some(&dir.tools_file()), &[])
        .err()
        .expect("refused");
    assert!(error.to_string().contains("env_vars"), "{error}");
}
