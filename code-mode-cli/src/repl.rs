//! `code-mode repl`: one session; each entry is a cell, so `store`/`load` carry values
//! across entries. Commands start with `:`.
//!
//! On a terminal it behaves as people expect of a REPL (node, python, deno): line editing
//! and history (rustyline; kept in `~/.code_mode_history`), and an entry runs as soon as
//! it is complete (no open bracket, string, template or comment, and no trailing
//! operator); an incomplete one continues on the next line. Ctrl-C while a cell runs
//! interrupts it (the session's `interrupt`: every running cell is terminated, the session
//! and its stored values stay) and returns to the prompt; Ctrl-C on a line being typed
//! clears it; Ctrl-C at an empty prompt, or Ctrl-D, quits. Under a pipe an entry ends at a
//! blank line or at the end of input, and there are no prompts.

use crate::output::{Printer, terminal_safe};
use crate::tools::{CliDelegate, ToolSet, sink_now};
use crate::{Failure, session};
use code_mode_protocol::{
    CellResponse, CodeModeSession, ExecRequest, SessionError, SessionOptions, WaitRequest, texts,
};
use code_mode_surface::{format_response, parse_exec_source, status_line};
use futures_util::FutureExt;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::AsyncBufReadExt;

pub struct ReplOptions {
    pub tools: Option<PathBuf>,
    pub builtins: Vec<String>,
    pub yield_ms: Option<u64>,
    /// Where the cells run.
    pub runtime: crate::session::RuntimeArgs,
    /// Whether the session's cells reuse its isolates (CONTRACT §7).
    pub reuse_isolates: bool,
    pub runtime_log: String,
}

mod terminal;

const HELP: &str =
    "Enter JavaScript; a complete entry runs as a cell (under a pipe: at a blank line).
Ctrl-C stops the running cells; Ctrl-C on an empty line, or Ctrl-D, quits. Commands:
  :wait <cell id> [yield ms]   more output from a running cell
  :terminate <cell id>         stop a running cell
  :help                        this text
  :quit                        leave (end of input does too)";

#[expect(clippy::print_stdout, reason = "the CLI's output is its stdout")]
pub async fn repl(options: ReplOptions) -> Result<(), Failure> {
    let tools = ToolSet::load(options.tools.as_deref(), &options.builtins)
        .await
        .map_err(|error| Failure::usage(error.to_string()))?;
    let delegate = Arc::new(CliDelegate::new(
        tools.clone(),
        sink_now(|text| println!("[notify] {}", terminal_safe(text))),
    ));
    let session_options = SessionOptions {
        reuse_isolates: options.reuse_isolates,
        ..SessionOptions::default()
    };
    let session = session::open(
        &options.runtime,
        delegate,
        session_options,
        &options.runtime_log,
    )
    .map_err(Failure::runtime)?;
    let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let mut repl = Repl {
        session,
        tools,
        yield_ms: options.yield_ms,
        printer: Printer::new(None),
        failed: false,
        interrupts: None,
    };
    if interactive {
        terminal::run(&mut repl).await?;
    } else {
        piped(&mut repl).await?;
    }
    repl.session.shutdown().await;
    repl.tools.stop().await;
    if repl.failed {
        Err(Failure::script())
    } else {
        Ok(())
    }
}

/// Entries from a pipe: each ends at a blank line or at the end of input.
async fn piped(repl: &mut Repl) -> Result<(), Failure> {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut entry = String::new();
    loop {
        let line = lines
            .next_line()
            .await
            .map_err(|error| Failure::usage(format!("cannot read input: {error}")))?;
        let Some(line) = line else {
            repl.run_entry(&std::mem::take(&mut entry)).await;
            break;
        };
        if line.trim_start().starts_with(':') && entry.trim().is_empty() {
            if !repl.command(line.trim()).await {
                break;
            }
        } else if line.trim().is_empty() {
            repl.run_entry(&std::mem::take(&mut entry)).await;
        } else {
            entry.push_str(&line);
            entry.push('\n');
        }
    }
    Ok(())
}

/// Runs an observation; with `interrupts` (on a terminal), Ctrl-C meanwhile interrupts the
/// session's running cells, and the observation then returns their termination.
async fn interruptible(
    session: &dyn CodeModeSession,
    interrupts: Option<&mut tokio::signal::unix::Signal>,
    observation: impl std::future::Future<Output = Result<CellResponse, SessionError>>,
) -> Result<CellResponse, SessionError> {
    let Some(interrupts) = interrupts else {
        return observation.await;
    };
    // A Ctrl-C that came while no cell ran (at the prompt the line editor reads it as a
    // key, so this only drains strays) is not for this observation.
    while interrupts.recv().now_or_never().is_some() {}
    tokio::pin!(observation);
    tokio::select! {
        response = &mut observation => response,
        _ = interrupts.recv() => {
            // (The terminal echoes the ^C itself.)
            if let Err(error) = session.interrupt().await {
                eprintln!("code-mode: the interrupt failed: {}", terminal_safe(&error.to_string()));
            }
            observation.await
        }
    }
}

struct Repl {
    session: Box<dyn CodeModeSession>,
    /// Read again for every cell: an MCP server may change its tools meanwhile.
    tools: ToolSet,
    yield_ms: Option<u64>,
    printer: Printer,
    failed: bool,
    /// On a terminal: Ctrl-C, which interrupts the observation in progress.
    interrupts: Option<tokio::signal::unix::Signal>,
}

impl Repl {
    #[expect(clippy::print_stdout, reason = "the CLI's output is its stdout")]
    fn error(&mut self, message: &str) {
        self.failed = true;
        println!("code-mode: {}", terminal_safe(message));
    }

    async fn run_entry(&mut self, entry: &str) {
        if entry.trim().is_empty() {
            return;
        }
        let parsed = match parse_exec_source(entry) {
            Ok(parsed) => parsed,
            Err(error) => return self.error(&error.to_string()),
        };
        let max_tokens = parsed.max_output_tokens_or_default();
        self.tools.settled().await;
        let mut request = ExecRequest::new(parsed.source).with_tools(self.tools.definitions());
        request.yield_time_ms = parsed.yield_time_ms.or(self.yield_ms);
        let session = &*self.session;
        let observation = async move {
            session
                .execute(request)
                .await
                .map(|started| started.initial_response)
        };
        match interruptible(session, self.interrupts.as_mut(), observation).await {
            Ok(response) => self.show(&response, max_tokens),
            Err(error) => self.error(&error.to_string()),
        }
    }

    /// Runs a `:` command; `false` to leave.
    async fn command(&mut self, line: &str) -> bool {
        let mut words = line.split_whitespace();
        let command = words.next().unwrap_or_default();
        let argument = words.next();
        match (command, argument) {
            (":quit" | ":exit" | ":q", _) => return false,
            (":help" | ":h", _) => self.say(HELP),
            (":wait", Some(cell_id)) => {
                let mut request = WaitRequest::new(cell_id);
                request.yield_time_ms = match words.next().map(str::parse) {
                    Some(Ok(ms)) => Some(ms),
                    Some(Err(_)) => {
                        self.error(
                            "`:wait` takes a cell id and an optional yield time in milliseconds",
                        );
                        return true;
                    }
                    None => self.yield_ms,
                };
                let observation = self.session.wait(request);
                match interruptible(&*self.session, self.interrupts.as_mut(), observation).await {
                    Ok(response) => self.show(&response, u64::MAX / 8),
                    Err(error) => self.error(&error.to_string()),
                }
            }
            (":terminate", Some(cell_id)) => match self.session.terminate(cell_id.into()).await {
                Ok(response) => self.show(&response, u64::MAX / 8),
                Err(error) => self.error(&error.to_string()),
            },
            (":wait" | ":terminate", None) => self.error(&format!("`{command}` needs a cell id")),
            _ => self.error(&format!("unknown command `{command}` (try :help)")),
        }
        true
    }

    #[expect(clippy::print_stdout, reason = "the CLI's output is its stdout")]
    fn say(&self, text: &str) {
        println!("{text}");
    }

    #[expect(clippy::print_stdout, reason = "the CLI's output is its stdout")]
    fn show(&mut self, response: &CellResponse, max_tokens: u64) {
        if response.is_missing_cell() {
            let message = response
                .error_text()
                .unwrap_or("exec cell not found")
                .to_owned();
            return self.error(&message);
        }
        let shown = format_response(response, max_tokens);
        let error_item = usize::from(response.error_text().is_some());
        for item in &shown[1..shown.len() - error_item] {
            self.printer.print(item);
        }
        println!("{}", status_line(response));
        if let Some(error) = response.error_text() {
            self.failed = true;
            println!("{}", texts::script_error(&terminal_safe(error)));
        }
        if let CellResponse::Yielded { cell_id, .. } = response {
            println!(
                "(cell {cell_id} is still running: `:wait {cell_id}` for more output, `:terminate {cell_id}` to stop it)"
            );
        }
    }
}
