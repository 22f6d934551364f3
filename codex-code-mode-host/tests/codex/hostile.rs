//! Every case of HOSTILE.md through the Codex front, over gRPC on stdio: the host and a
//! bystander session on it survive each one, the bystander keeps its stored value, and the
//! hostile session's next cell works. (Codex's own host is killed or hung by several of
//! these; CODEX.md has the figures.)

use code_mode_conformance::hostile::{CPU, CPU_BUDGET_MS, Outcome, corpus};
use code_mode_host::protocol::{CellFailure, CellId, CellResponse, ContentItem, FailureKind};
use codex_code_mode_host::client::{Driver, Responder, exec_request, tool};
use codex_code_mode_host::proto;
use std::sync::Arc;

/// `echo` answers its argument; `big` a string of as many bytes as its argument.
fn responder() -> Responder {
    Arc::new(|call: &proto::ToolInvocation| {
        match call.tool_name.as_ref().map(|name| name.name.as_str()) {
            Some("big") => {
                let bytes: usize = call.input_json.trim().parse().unwrap_or(0);
                Ok(format!("\"{}\"", "x".repeat(bytes)))
            }
            _ if call.input_json.is_empty() => Ok("null".to_owned()),
            _ => Ok(call.input_json.clone()),
        }
    })
}

/// The outcome as the corpus classifies it: the client-truncation form (raw items, no
/// `Script error:` item), as a completed cell response.
fn response(outcome: &proto::CellOutcome) -> Option<CellResponse> {
    let Some(proto::cell_outcome::Status::Completed(completed)) = &outcome.status else {
        return None;
    };
    let content_items = outcome
        .content_items
        .iter()
        .filter_map(|item| match &item.item {
            Some(proto::content_item::Item::InputText(text)) => {
                Some(ContentItem::text(text.text.clone()))
            }
            _ => None,
        })
        .collect();
    // Codex's protocol carries the text only; the corpus checks texts, so every failure is
    // read as a script error.
    let failure = Some(completed.error_text.clone())
        .filter(|text| !text.is_empty())
        .map(|text| CellFailure::new(FailureKind::ScriptError, text));
    Some(CellResponse::result(
        CellId::from(outcome.cell_id.clone()),
        content_items,
        failure,
    ))
}

/// A case as it reads on Codex's surface, which the front's sessions have: its globals are
/// writable (a cell can delete `text`), and it has no `console` (the flood goes through
/// `text`, and must still meet the CPU budget).
fn codex_surface(
    (name, source, expected): (&'static str, &'static str, Outcome),
) -> (&'static str, &'static str, Outcome) {
    match name {
        "20 overwriting helpers" => (
            name,
            source,
            Outcome::ErrorStarting("ReferenceError: text is not defined"),
        ),
        "26 console flood" => (name, "for (;;) text('x');", Outcome::Error(CPU)),
        _ => (name, source, expected),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_hostile_corpus_through_the_codex_front() {
    let budget = CPU_BUDGET_MS.to_string();
    let mut host = crate::spawn(&crate::our_host(), &["--cpu-budget-ms", &budget]).await;
    let open = |truncation| proto::OpenSessionRequest {
        output_truncation: truncation,
        max_pending_delegate_calls: 4096,
        ..Default::default()
    };
    let mut bystander = Driver::open(host.client.clone(), open(2), responder())
        .await
        .expect("bystander");
    bystander
        .run(exec_request(r#"store("mine", "kept");"#))
        .await
        .expect("store");
    let mut hostile = Driver::open(host.client.clone(), open(0), responder())
        .await
        .expect("hostile");
    let tools = vec![tool("echo", "echo", None), tool("big", "big", None)];
    let mut failures = Vec::new();
    for (name, source, expected) in corpus().into_iter().map(codex_surface) {
        let mut request = exec_request(source);
        request.enabled_tools = tools.clone();
        request.yield_time_ms = 60_000;
        match hostile.run(request).await {
            Ok(outcome) => match response(&outcome) {
                Some(response) if expected.matches(&response) => {}
                _ => failures.push(format!(
                    "{name}: unexpected {}",
                    codex_code_mode_host::client::render_outcome(&outcome)
                        .chars()
                        .take(400)
                        .collect::<String>()
                )),
            },
            Err(status) => failures.push(format!("{name}: status {status:?}")),
        }
        let next = hostile.run(exec_request(r#"text("next")"#)).await;
        if !next.is_ok_and(|outcome| {
            codex_code_mode_host::client::render_outcome(&outcome).ends_with(r#"[text "next"]"#)
        }) {
            failures.push(format!("{name}: the next cell of the session did not work"));
        }
        let kept = bystander.run(exec_request(r#"text(load("mine"))"#)).await;
        if !kept.is_ok_and(|outcome| {
            codex_code_mode_host::client::render_outcome(&outcome).ends_with(r#"[text "kept"]"#)
        }) {
            failures.push(format!(
                "{name}: the bystander lost its stored value or its host"
            ));
        }
    }
    assert!(
        host.child().try_wait().expect("try_wait").is_none(),
        "the host is alive"
    );
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
