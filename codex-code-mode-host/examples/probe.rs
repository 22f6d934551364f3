//! Runs cells on a host binary and prints each outcome: `probe HOST [truncation] < cells`,
//! cells separated by lines holding only `----`. For comparing hosts by hand.

use codex_code_mode_host::client::{Driver, StdioHost, exec_request, render_outcome, tool};
use codex_code_mode_host::proto;
use std::io::Read;
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let host = args.next().ok_or("usage: probe HOST [truncation]")?;
    let truncation: i32 = args.next().map(|t| t.parse()).transpose()?.unwrap_or(2);
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input)?;
    let mut command = tokio::process::Command::new(&host);
    command.args(["--listen", "grpc+stdio://"]);
    let host = StdioHost::spawn(command).await?;
    let responder: codex_code_mode_host::client::Responder = Arc::new(|call| {
        if call.input_json.contains("fail") {
            Err("tool failed: boom".to_owned())
        } else {
            Ok(format!("{{\"echo\":{}}}", call.input_json))
        }
    });
    let mut driver = Driver::open(
        host.client.clone(),
        proto::OpenSessionRequest {
            output_truncation: truncation,
            max_pending_delegate_calls: 4096,
            ..Default::default()
        },
        responder,
    )
    .await?;
    let mut last_cell = String::new();
    for source in input.split("\n----\n") {
        let mut request = exec_request(source.trim_end());
        request.enabled_tools = vec![
            tool("echo", "echo", None),
            tool("ns__search", "search", Some("ns")),
        ];
        if let Some(rest) = source.strip_prefix("// yield ") {
            request.yield_time_ms = rest.lines().next().unwrap_or("0").trim().parse()?;
        }
        if let Some(rest) = source.strip_prefix("// tokens ") {
            request.max_output_tokens = Some(rest.lines().next().unwrap_or("0").trim().parse()?);
        }
        let started = std::time::Instant::now();
        match driver.execute(request).await {
            Ok(events) => {
                for event in events.into_iter().map(short) {
                    match event.event {
                        Some(proto::execute_event::Event::Started(started)) => {
                            last_cell = started.cell_id.clone();
                            println!("started cell {}", started.cell_id)
                        }
                        Some(proto::execute_event::Event::Outcome(outcome)) => {
                            println!("outcome {}", render_outcome(&outcome))
                        }
                        None => println!("empty event"),
                    }
                }
            }
            Err(status) => println!("status {:?} {:?}", status.code(), status.message()),
        }
        eprintln!("took {:?}", started.elapsed());
        if source.contains("// wait") {
            match driver.wait(&last_cell, 10_000, None).await {
                Ok(response) => println!(
                    "wait header {:?} {:?}",
                    response
                        .metadata()
                        .get("codex-code-mode-result-buffered-for-ns")
                        .cloned(),
                    response.into_inner().cell.map(|cell| match cell {
                        proto::wait_response::Cell::LiveCell(o) =>
                            format!("live {}", render_outcome(&o)),
                        proto::wait_response::Cell::MissingCell(o) =>
                            format!("missing {}", render_outcome(&o)),
                    })
                ),
                Err(status) => println!("wait status {:?} {:?}", status.code(), status.message()),
            }
        }
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    for event in driver.events.lock().unwrap().iter() {
        println!(
            "event {:?}",
            event.event.as_ref().map(|e| match e {
                proto::session_event::Event::Opened(o) =>
                    format!("opened truncation {}", o.output_truncation),
                proto::session_event::Event::Notification(n) => format!(
                    "notification cell {} call {} {:?} uuid {}",
                    n.cell_id,
                    n.call_id,
                    n.text,
                    uuid::Uuid::parse_str(&n.notification_id).is_ok()
                ),
                proto::session_event::Event::CellClosed(c) =>
                    format!("closed cell {} tools {}", c.cell_id, c.tool_call_count),
            })
        );
    }
    for call in driver.invocations.lock().unwrap().iter() {
        println!(
            "call cell {} {} {:?} kind {} input {:?} seq {}",
            call.cell_id,
            call.runtime_tool_call_id,
            call.tool_name,
            call.kind,
            call.input_json,
            call.sequence
        );
    }
    Ok(())
}
fn short(mut event: proto::ExecuteEvent) -> proto::ExecuteEvent {
    if let Some(proto::execute_event::Event::Outcome(outcome)) = &mut event.event {
        for item in &mut outcome.content_items {
            if let Some(proto::content_item::Item::InputText(text)) = &mut item.item
                && text.text.len() > 600
            {
                let len = text.text.len();
                let mut head = 300;
                while !text.text.is_char_boundary(head) {
                    head -= 1;
                }
                let mut tail = len - 300;
                while !text.text.is_char_boundary(tail) {
                    tail += 1;
                }
                text.text = format!(
                    "{}<<{} bytes>>{}",
                    &text.text[..head],
                    len,
                    &text.text[tail..]
                );
            }
        }
    }
    event
}
