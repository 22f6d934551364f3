//! `code-mode run`: runs one cell, following its yields to the end, printing output as it
//! arrives and the final status in the model's format. Ctrl-C terminates the cell.

use crate::output::{Printer, terminal_safe};
use crate::tools::{CliDelegate, ToolSet, sink_now};
use crate::{Failure, session};
use code_mode_protocol::{
    CellResponse, ContentItem, ExecRequest, SessionOptions, WaitRequest, texts,
};
use code_mode_surface::json::{items_json, response_json};
use code_mode_surface::{format_response, parse_exec_source, status_line};
use serde_json::json;
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub struct RunOptions {
    pub file: PathBuf,
    pub tools: Option<PathBuf>,
    pub builtins: Vec<String>,
    pub yield_ms: Option<u64>,
    pub max_output_tokens: Option<u64>,
    pub json: bool,
    /// Where the cells run.
    pub runtime: crate::session::RuntimeArgs,
    pub save_media: Option<PathBuf>,
    pub runtime_log: String,
}

/// Reads a cell's source from a file or, for `-`, from stdin.
pub fn read_source(file: &PathBuf) -> Result<String, Failure> {
    if file.as_os_str() == "-" {
        let mut source = String::new();
        std::io::stdin()
            .read_to_string(&mut source)
            .map_err(|error| Failure::usage(format!("cannot read the cell from stdin: {error}")))?;
        return Ok(source);
    }
    std::fs::read_to_string(file)
        .map_err(|error| Failure::usage(format!("cannot read {}: {error}", file.display())))
}

#[expect(clippy::print_stdout, reason = "the CLI's output is its stdout")]
pub async fn run(options: RunOptions) -> Result<(), Failure> {
    let source = read_source(&options.file)?;
    let parsed = parse_exec_source(&source).map_err(|error| Failure::usage(error.to_string()))?;
    let tools = ToolSet::load(options.tools.as_deref(), &options.builtins)
        .await
        .map_err(|error| Failure::usage(error.to_string()))?;
    let yield_ms = options.yield_ms.or(parsed.yield_time_ms);
    let max_tokens = options
        .max_output_tokens
        .or(parsed.max_output_tokens)
        .unwrap_or(parsed.max_output_tokens_or_default());
    let notifications = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = if options.json {
        let notifications = Arc::clone(&notifications);
        sink_now(move |text| code_mode_internal::sync::lock(&notifications).push(text.to_owned()))
    } else {
        sink_now(|text| println!("[notify] {}", terminal_safe(text)))
    };
    let definitions = tools.definitions();
    let delegate = Arc::new(CliDelegate::new(tools.clone(), sink));
    let session = session::open(
        &options.runtime,
        delegate,
        SessionOptions::default(),
        &options.runtime_log,
    )
    .map_err(Failure::runtime)?;

    let started_at = Instant::now();
    let mut request = ExecRequest::new(parsed.source).with_tools(definitions);
    request.yield_time_ms = yield_ms;
    let started = session
        .execute(request)
        .await
        .map_err(|e| Failure::runtime(e.to_string()))?;
    let cell_id = started.cell_id;
    let mut response = started.initial_response;
    let mut printer = Printer::new(options.save_media.clone());
    let mut all_items: Vec<ContentItem> = Vec::new();
    loop {
        // What the model would see of this observation, within the budget.
        let shown = format_response(&response, max_tokens);
        let error_item = usize::from(response.error_text().is_some());
        for item in &shown[1..shown.len() - error_item] {
            all_items.push(item.clone());
            if !options.json {
                printer.print(item);
            }
        }
        if !matches!(response, CellResponse::Yielded { .. }) {
            break;
        }
        let mut wait = WaitRequest::new(cell_id.clone());
        wait.yield_time_ms = yield_ms;
        response = tokio::select! {
            next = session.wait(wait) => next.map_err(|e| Failure::runtime(e.to_string()))?,
            _ = tokio::signal::ctrl_c() => {
                session.terminate(cell_id.clone()).await.map_err(|e| Failure::runtime(e.to_string()))?
            }
        };
    }
    let wall_time = started_at.elapsed();
    session.shutdown().await;
    tools.stop().await;
    if options.json {
        let mut result = response_json(&response);
        result["content_items"] = items_json(&all_items);
        let report = json!({
            "status": status_line(&response),
            "cell_id": cell_id,
            "wall_time_ms": wall_time.as_millis() as u64,
            "notifications": *code_mode_internal::sync::lock(&notifications),
            "response": result,
        });
        println!("{report}");
    } else {
        println!(
            "{}\n{}",
            status_line(&response),
            texts::wall_time(wall_time.as_secs_f64())
        );
        if let Some(error) = response.error_text() {
            println!("{}", texts::script_error(&terminal_safe(error)));
        }
    }
    match response {
        CellResponse::Result { failure: None, .. } => Ok(()),
        _ => Err(Failure::script()),
    }
}
