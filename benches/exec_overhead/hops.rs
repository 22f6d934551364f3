//! `--sections hops`: where one paced exec and one nested tool call spend their time,
//! from the runtime's hop marks (`code_mode::hops` trace events).

use super::*;

/// The hop marks seen since the last [`take_marks`], with when they were made (wall
/// clock, so that the runtime process's marks line up with this process's).
pub(crate) static MARKS: std::sync::Mutex<Vec<(&'static str, Duration)>> =
    std::sync::Mutex::new(Vec::new());

/// Set while the hops table runs: IPC runtimes are started with their hop marks on.
pub(crate) static TRACE_RUNTIME_HOPS: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

pub(crate) fn take_marks() -> Vec<(&'static str, Duration)> {
    std::mem::take(
        &mut *MARKS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )
}

/// Keeps one copy of each mark name (there are a few dozen).
pub(crate) fn intern(name: &str) -> &'static str {
    static NAMES: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let mut names = NAMES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(known) = names.iter().find(|known| **known == name) {
        return known;
    }
    let name: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.push(name);
    name
}

/// A runtime process's hop mark, from one of its log lines as the host forwards them
/// (`2026-11-22T00:06:33.123456Z TRACE ... hop="name"`): the mark and when it was made.
pub(crate) fn runtime_mark(line: &str) -> Option<(&'static str, Duration)> {
    let (_, rest) = line.split_once("hop=\"")?;
    let (name, _) = rest.split_once('"')?;
    let stamp = line.split_whitespace().next()?;
    let (date, time) = stamp.trim_end_matches('Z').split_once('T')?;
    let mut date = date.split('-').map(str::parse::<i64>);
    let (year, month, day) = (date.next()?.ok()?, date.next()?.ok()?, date.next()?.ok()?);
    let mut time = time.split(':');
    let (hours, minutes) = (
        time.next()?.parse::<u64>().ok()?,
        time.next()?.parse::<u64>().ok()?,
    );
    let seconds: f64 = time.next()?.parse().ok()?;
    // Days since 1970-01-01 of a proleptic Gregorian date.
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * m + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = u64::try_from(era * 146_097 + day_of_era - 719_468).ok()?;
    let whole = days * 86_400 + hours * 3_600 + minutes * 60;
    Some((
        intern(&format!("{name} (runtime)")),
        Duration::from_secs(whole) + Duration::from_secs_f64(seconds),
    ))
}

/// Records every `code_mode::hops` event, and the runtime process's marks among the log
/// lines the host forwards.
pub(crate) struct HopLayer;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for HopLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Fields(Option<String>, Option<String>);
        impl tracing::field::Visit for Fields {
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                if field.name() == "hop" {
                    self.0 = Some(value.to_owned());
                }
            }
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.1 = Some(format!("{value:?}"));
                }
            }
        }
        let at = wall_clock();
        let mut fields = Fields(None, None);
        event.record(&mut fields);
        let mark = match fields {
            Fields(Some(name), _) => Some((intern(&name), at)),
            Fields(None, Some(line)) if event.metadata().target() == "code_mode_bin" => {
                runtime_mark(&line)
            }
            _ => None,
        };
        if let Some(mark) = mark {
            add_mark(mark);
        }
    }
}

/// Now by the wall clock (which the runtime process's marks share).
fn wall_clock() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// Keeps one mark for the next [`take_marks`].
fn add_mark(mark: (&'static str, Duration)) {
    MARKS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(mark);
}

/// Adds to `since_call` the time from the caller's call to each mark's first time among
/// one exec's `marks`, in the order of the marks (the runtime's as well as this
/// process's): where a mode's extra time builds up along the exec.
pub(crate) fn add_since_call(
    marks: &[(&'static str, Duration)],
    since_call: &mut Vec<(String, Vec<u128>)>,
) {
    let mut marks = marks.to_vec();
    marks.sort_by_key(|(_, at)| *at);
    let Some(&(_, called)) = marks.iter().find(|(name, _)| *name == CALLER_CALLS) else {
        return;
    };
    let mut seen = Vec::new();
    for (name, at) in marks {
        if at < called || seen.contains(&name) {
            continue;
        }
        seen.push(name);
        let nanos = at.saturating_sub(called).as_nanos();
        match since_call.iter_mut().find(|(known, _)| known == name) {
            Some((_, times)) => times.push(nanos),
            None => since_call.push((name.to_owned(), vec![nanos])),
        }
    }
}

/// The marks the hops table makes around each paced exec, as its caller sees it.
const CALLER_CALLS: &str = "the caller calls exec";
const CALLER_HAS_ANSWER: &str = "the caller has the exec's answer";

/// Adds the time between consecutive marks to `spans`, keyed `from → to`.
pub(crate) fn add_spans(
    marks: &mut [(&'static str, Duration)],
    spans: &mut Vec<(String, Vec<u128>)>,
) {
    marks.sort_by_key(|(_, at)| *at);
    for pair in marks.windows(2) {
        let key = format!("{} → {}", pair[0].0, pair[1].0);
        let nanos = pair[1].1.saturating_sub(pair[0].1).as_nanos();
        match spans.iter_mut().find(|(known, _)| *known == key) {
            Some((_, times)) => times.push(nanos),
            None => spans.push((key, vec![nanos])),
        }
    }
}

#[expect(clippy::print_stdout, reason = "the benchmark's tables are its output")]
pub(crate) fn print_spans(title: &str, spans: &mut [(String, Vec<u128>)]) {
    println!("{title:<72} {:>7} {:>10}", "count", "p50");
    for (key, times) in spans.iter_mut() {
        times.sort_unstable();
        println!(
            "  {key:<70} {:>7} {:>10}",
            times.len(),
            format_duration(percentile(times, 0.5))
        );
    }
}

/// Per-hop times of paced execs and of sequential nested calls, in process and over IPC
/// (the runtime process's marks merged in by wall clock), once per `--tracing` mode, each
/// in a child of its own (a process has one subscriber).
pub(crate) fn hops_table(options: &Options) {
    let exe = std::env::current_exe().expect("this benchmark's path");
    for mode in &options.tracing {
        let status = Command::new(&exe)
            .args(["--child-hops", &options.samples.to_string()])
            .env(TRACING_ENV, mode)
            .status()
            .expect("run a child");
        assert!(status.success(), "the hops child ({mode}) failed");
    }
}

/// The hops child: its subscriber records the hop marks (and, traced, exports every span
/// as the exec table's children do), then both transports' tables are printed.
pub(crate) fn hops_child(samples: usize) {
    use tracing_subscriber::Layer as _;
    TRACE_RUNTIME_HOPS.store(true, std::sync::atomic::Ordering::SeqCst);
    let marks = HopLayer.with_filter(
        tracing_subscriber::filter::Targets::new()
            .with_target("code_mode::hops", tracing::Level::TRACE)
            .with_target("code_mode_bin", tracing::Level::INFO),
    );
    let telemetry = dead_collector_telemetry();
    code_mode_trace::init_subscriber(marks, telemetry.as_ref());
    #[expect(clippy::print_stdout, reason = "the benchmark's tables are its output")]
    {
        println!(
            "hops, tracing {}",
            std::env::var(TRACING_ENV).unwrap_or_default()
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    for transport in ["in-process", "ipc"] {
        runtime.block_on(hops_of(transport, samples));
    }
}

/// The hops table of one transport.
pub(crate) async fn hops_of(transport: &str, samples: usize) {
    let subject = warmed(transport, Arc::new(EchoTools)).await;
    let session = &subject.sessions[0];
    let (mut spans, mut since_call) = (Vec::new(), Vec::new());
    tokio::time::sleep(PACE).await;
    take_marks();
    for _ in 0..samples.max(1) {
        let (called, answered) = timed_exec(session).await;
        add_mark((CALLER_CALLS, called));
        add_mark((CALLER_HAS_ANSWER, answered));
        // The isolate is reset for the next cell meanwhile, off the exec's path; its
        // marks belong to this sample (and the runtime's log lines arrive).
        tokio::time::sleep(PACE).await;
        let mut marks = take_marks();
        add_since_call(&marks, &mut since_call);
        add_spans(&mut marks, &mut spans);
    }
    print_spans(
        &format!("paced exec, {transport} (mark → next mark)"),
        &mut spans,
    );
    print_since_call(
        &format!("paced exec, {transport} (each mark's first time since the caller's call)"),
        &mut since_call,
    );
    tokio::time::sleep(PACE).await;
    back_to_back(session, transport, samples).await;
    tokio::time::sleep(PACE).await;
    call_hops(session, &format!("nested tool call, {transport}")).await;
    subject.shutdown().await;
    // The same calls answered 0.3 ms late, as an agent core that computes its answers (a
    // Python one, a real tool): where the answer's way back waits on threads that slept.
    let delay = Duration::from_micros(300);
    let subject = warmed(transport, Arc::new(SlowEcho(delay))).await;
    let session = &subject.sessions[0];
    tokio::time::sleep(PACE).await;
    call_hops(
        session,
        &format!("nested tool call answered after {delay:?}, {transport}"),
    )
    .await;
    subject.shutdown().await;
}

/// A session on `transport` with `delegate`, past its cold start and one exec.
async fn warmed(transport: &str, delegate: Arc<dyn CodeModeSessionDelegate>) -> Subject {
    let subject = Subject::open(transport, delegate, 1).await;
    tokio::time::sleep(COLD_PAUSE).await;
    subject.sessions[0]
        .execute(ExecRequest::new(trivial_source()))
        .await
        .expect("warm-up exec");
    subject
}

/// Answers every call with its input after a set time, off the runtime's threads (a
/// blocking thread sleeps it).
struct SlowEcho(Duration);

impl CodeModeSessionDelegate for SlowEcho {
    fn invoke_tool(
        &self,
        call: NestedToolCall,
        _: CancellationToken,
    ) -> BoxFuture<'_, Result<JsonText, ToolError>> {
        let delay = self.0;
        Box::pin(async move {
            let _ = tokio::task::spawn_blocking(move || std::thread::sleep(delay)).await;
            Ok(call.input.unwrap_or_else(|| JsonText::new("null")))
        })
    }
}

/// The hops of `ROUND_TRIPS` sequential nested calls in one cell, mark to next mark.
async fn call_hops(session: &Arc<dyn CodeModeSession>, title: &str) {
    let calls = ExecRequest::new(format!(
        "for (let i = 0; i < {ROUND_TRIPS}; i++) await tools.mcp__bench__tool_0(i);"
    ))
    .with_tools(tools(1));
    take_marks();
    session.execute(calls).await.expect("round-trip exec");
    tokio::time::sleep(PACE * 4).await;
    let mut marks = take_marks();
    marks.sort_by_key(|(_, at)| *at);
    // Only the calls' own marks, from the first call's emission to the last answer.
    let is = |name: &str, wanted: &str| name.starts_with(wanted);
    let first = marks
        .iter()
        .position(|(name, _)| is(name, "cell thread emits the tool call"))
        .unwrap_or(0);
    let last = marks
        .iter()
        .rposition(|(name, _)| is(name, "cell thread has the tool result"))
        .unwrap_or(marks.len().saturating_sub(1));
    let mut calls_marks = marks[first..=last].to_vec();
    let mut spans = Vec::new();
    add_spans(&mut calls_marks, &mut spans);
    print_spans(&format!("{title} (mark → next mark)"), &mut spans);
}

/// Prints `since_call` in the order of each mark's p50.
fn print_since_call(title: &str, since_call: &mut [(String, Vec<u128>)]) {
    for (_, times) in since_call.iter_mut() {
        times.sort_unstable();
    }
    since_call.sort_by_key(|(_, times)| percentile(times, 0.5));
    print_spans(title, since_call);
}

/// Each mark's first time since the caller's call among `samples` execs back to back: the
/// marks of one exec are those between its call and its answer, so the end of the cell
/// before it (the isolate's reset, its spans handed back) shows where it overlaps.
async fn back_to_back(session: &Arc<dyn CodeModeSession>, transport: &str, samples: usize) {
    take_marks();
    let mut exchanges = Vec::with_capacity(samples.max(1));
    for _ in 0..samples.max(1) {
        exchanges.push(timed_exec(session).await);
    }
    // The runtime's log lines arrive.
    tokio::time::sleep(PACE * 4).await;
    let mut marks = take_marks();
    marks.sort_by_key(|(_, at)| *at);
    let mut since_call = Vec::new();
    for (called, answered) in exchanges {
        let mut within: Vec<_> = marks
            .iter()
            .filter(|(_, at)| *at >= called && *at <= answered)
            .copied()
            .collect();
        within.push((CALLER_CALLS, called));
        within.push((CALLER_HAS_ANSWER, answered));
        add_since_call(&within, &mut since_call);
    }
    print_since_call(
        &format!("back-to-back exec, {transport} (each mark's first time since the caller's call)"),
        &mut since_call,
    );
}

/// One trivial exec: when the caller called and when it had the answer (wall clock).
async fn timed_exec(session: &Arc<dyn CodeModeSession>) -> (Duration, Duration) {
    let called = wall_clock();
    session
        .execute(ExecRequest::new(trivial_source()))
        .await
        .expect("an exec of the hops table");
    (called, wall_clock())
}
