//! `--sections wake`: how long a hibernated cell takes to answer, against the length of
//! its journal. A cell makes `N` nested calls answered at once (its journal: `N` answers),
//! then waits on a call the benchmark holds. With hibernation at 0 ms the cell gives its
//! isolate back at that wait; the benchmark then answers, and times from the answer to the
//! cell's result (the rebuild on a fresh isolate, the replay of `N` answers, the rest of
//! the cell). The same with hibernation off is the baseline: the answer reaches a live
//! cell.

use super::*;
use code_mode_internal::sync::lock;
use code_mode_protocol::{CellResponse, WaitRequest};
use std::sync::Mutex;
use tokio::sync::{Notify, oneshot};

/// Answers `echo` at once and holds `hold` until [`Holding::release`].
#[derive(Default)]
struct Holding {
    held: Mutex<Option<oneshot::Sender<JsonText>>>,
    started: Notify,
}

impl CodeModeSessionDelegate for Holding {
    fn invoke_tool(
        &self,
        call: NestedToolCall,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<JsonText, ToolError>> {
        if call.tool_name != "hold" {
            return Box::pin(
                async move { Ok(call.input.unwrap_or_else(|| JsonText::new("null"))) },
            );
        }
        let (release, released) = oneshot::channel();
        *lock(&self.held) = Some(release);
        self.started.notify_one();
        Box::pin(async move {
            tokio::select! {
                answer = released => answer.map_err(|_| ToolError::new("released without an answer")),
                () = cancel.cancelled() => Err(ToolError::cancelled()),
            }
        })
    }
}

impl Holding {
    fn release(&self) {
        if let Some(release) = lock(&self.held).take() {
            let _ = release.send(JsonText::new("\"held\""));
        }
    }
}

/// One child: `samples` cells with a journal of `log` answers, hibernating at 0 ms (`on`)
/// or never; prints the answer-to-result times in nanoseconds.
pub(crate) async fn wake_child(transport: &str, log: usize, on: bool, samples: usize) {
    let delegate = Arc::new(Holding::default());
    let options = SessionOptions {
        hibernate_after_ms: on.then_some(0),
        ..SessionOptions::default()
    };
    let dyn_delegate: Arc<dyn CodeModeSessionDelegate> = delegate.clone();
    let subject = Subject::open_with(transport, dyn_delegate, 1, options).await;
    let session = Arc::clone(&subject.sessions[0]);
    let tools: Arc<[ToolDefinition]> = ["echo", "hold"]
        .into_iter()
        .map(|name| ToolDefinition::new(name, "bench", ToolKind::Function))
        .collect();
    let mut times = Vec::with_capacity(samples);
    for sample in 0..samples {
        let source = format!(
            "// {sample}\nfor (let i = 0; i < {log}; i++) await tools.echo(i);\ntext(await tools.hold());"
        );
        let started_hold = delegate.started.notified();
        let started = session
            .execute(
                ExecRequest::new(source)
                    .with_tools(Arc::clone(&tools))
                    .with_yield_time_ms(0),
            )
            .await
            .expect("exec");
        started_hold.await;
        // Long enough for the hibernation (at 0 ms) to be over.
        tokio::time::sleep(Duration::from_millis(30)).await;
        let waiting = {
            let session = Arc::clone(&session);
            let cell = started.cell_id.clone();
            tokio::spawn(async move {
                let response = session
                    .wait(WaitRequest::new(cell).with_yield_time_ms(30_000))
                    .await
                    .expect("wait");
                (response, Instant::now())
            })
        };
        // The wait reaches the cell first.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let answered = Instant::now();
        delegate.release();
        let (response, done) = waiting.await.expect("the wait task");
        assert!(
            matches!(&response, CellResponse::Result { failure: None, .. }),
            "the cell failed: {response:?}"
        );
        times.push(done.duration_since(answered).as_nanos());
    }
    let joined: Vec<String> = times.iter().map(u128::to_string).collect();
    #[expect(
        clippy::print_stdout,
        reason = "the child reports to its parent on stdout"
    )]
    {
        println!("wake_ns={}", joined.join(","));
    }
}

/// The wake table: answer-to-result p50, mean and p95, hibernating and live, for journals
/// of 0, 10 and 100 answers.
#[expect(clippy::print_stdout, reason = "the benchmark's tables are its output")]
pub(crate) fn wake_table(options: &Options) {
    println!();
    println!(
        "{:<10} {:<10} {:>6} {:>10} {:>10} {:>10}",
        "wake", "transport", "log", "p50", "mean", "p95"
    );
    for transport in &options.transports {
        for log in [0usize, 10, 100] {
            for (label, on) in [("live", false), ("hibernated", true)] {
                let line = run_child(&[
                    "--child-wake".to_owned(),
                    (*transport).to_owned(),
                    log.to_string(),
                    on.to_string(),
                    options.samples.to_string(),
                ]);
                let pairs = parse_pairs(&line);
                let mut times = pairs.get("wake_ns").cloned().unwrap_or_default();
                times.sort_unstable();
                let mean = mean(&times);
                println!(
                    "{:<10} {:<10} {:>6} {:>10} {:>10} {:>10}",
                    label,
                    transport,
                    log,
                    format_duration(percentile(&times, 0.5)),
                    format_duration(mean),
                    format_duration(percentile(&times, 0.95))
                );
            }
        }
    }
}
