//! The measuring children: each runs in a fresh process (so that one run's memory and
//! threads do not colour the next) and prints one line of figures for the tables.

use super::*;

/// One sample, run in a child process; prints `key=value` pairs on stdout.
pub(crate) async fn child(transport: &str, tool_spec: &str, warm_iterations: usize) {
    let tools = tools_for(tool_spec);
    let request = || ExecRequest::new(trivial_source()).with_tools(Arc::clone(&tools));
    let subject = Subject::open(transport, Arc::new(EchoTools), 1).await;
    let session = &subject.sessions[0];
    let spawn = subject.spawn;
    let rss = || subject.peak_rss_kib();
    let rss_before = rss();
    tokio::time::sleep(COLD_PAUSE).await;
    let started = Instant::now();
    let response = session.execute(request()).await.expect("cold exec");
    let cold = started.elapsed();
    assert_eq!(
        response.initial_response.content_items().len(),
        1,
        "the cell printed"
    );
    let rss_after_cold = rss();
    // One warm-up, then the measured iterations.
    session.execute(request()).await.expect("warm-up exec");
    let mut warm = Vec::with_capacity(warm_iterations);
    for _ in 0..warm_iterations {
        let started = Instant::now();
        session.execute(request()).await.expect("warm exec");
        warm.push(started.elapsed().as_nanos());
    }
    let mut paced = Vec::with_capacity(warm_iterations);
    for _ in 0..warm_iterations {
        tokio::time::sleep(PACE).await;
        let started = Instant::now();
        session.execute(request()).await.expect("paced exec");
        paced.push(started.elapsed().as_nanos());
    }
    // The typical cell in JavaScript and in TypeScript, alternating.
    let (mut typical_js, mut typical_ts) = (Vec::new(), Vec::new());
    for _ in 0..warm_iterations {
        for (source, times) in [(TYPICAL_JS, &mut typical_js), (TYPICAL_TS, &mut typical_ts)] {
            let started = Instant::now();
            let response = session
                .execute(ExecRequest::new(unique(source)))
                .await
                .expect("typical exec");
            times.push(started.elapsed().as_nanos());
            assert_eq!(
                response.initial_response.content_items()[0].as_text(),
                Some("a,b,c 6"),
                "the typical cell ran"
            );
        }
    }
    // Nested tool calls: one cell, many sequential round trips.
    let round_trips = ExecRequest::new(format!(
        "for (let i = 0; i < {ROUND_TRIPS}; i++) await tools.mcp__bench__tool_0(i); text('done');"
    ))
    .with_tools(self::tools(1));
    let started = Instant::now();
    session.execute(round_trips).await.expect("round-trip exec");
    let round_trip = started.elapsed().as_nanos() / u128::from(ROUND_TRIPS);
    // With deferred tools: `tools.tool_search` as a cell sees it, per call (a round trip
    // to the session, which answers from its index).
    let search = if tools.iter().any(|tool| tool.deferred) {
        let searches = ExecRequest::new(format!(
            "const queries = ['weather in paris', 'create an invoice', 'list calendar events', 'send a message', 'update ticket 7'];
            for (let i = 0; i < {ROUND_TRIPS}; i++) await tools.tool_search({{ query: queries[i % queries.length] }});
            text('done');"
        ))
        .with_tools(Arc::clone(&tools));
        // Once to build the index (once per tool set), then timed.
        session
            .execute(searches.clone())
            .await
            .expect("search exec");
        let started = Instant::now();
        let response = session.execute(searches).await.expect("search exec");
        assert_eq!(
            response.initial_response.content_items()[0].as_text(),
            Some("done"),
            "the searches ran: {:?}",
            response.initial_response
        );
        started.elapsed().as_nanos() / u128::from(ROUND_TRIPS)
    } else {
        0
    };
    subject.shutdown().await;
    let join = |times: &[u128]| {
        times
            .iter()
            .map(u128::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    #[expect(
        clippy::print_stdout,
        reason = "the child reports to its parent on stdout"
    )]
    {
        println!(
            "cold_ns={} spawn_ns={} rss_delta_kib={} round_trip_ns={round_trip} search_ns={search} warm_ns={} paced_ns={} js_ns={} ts_ns={}",
            cold.as_nanos(),
            spawn.map_or(0, |spawn| spawn.as_nanos()),
            rss_after_cold.saturating_sub(rss_before),
            join(&warm),
            join(&paced),
            join(&typical_js),
            join(&typical_ts)
        );
    }
}

/// Throughput: `sessions` sessions each running trivial cells back to back for `secs`;
/// prints the number of cells and every exec's latency.
pub(crate) async fn throughput_child(transport: &str, sessions: usize, secs: f64) {
    let subject = Subject::open(transport, Arc::new(EchoTools), sessions).await;
    // One exec per session first, so the pool and the connection are warm.
    for session in &subject.sessions {
        session
            .execute(ExecRequest::new(trivial_source()))
            .await
            .expect("warm-up exec");
    }
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let cpu_before = cpu_ns_of_self() + subject.runtime_pid.map_or(0, cpu_ns_of);
    let started = Instant::now();
    let runs: Vec<_> = subject
        .sessions
        .iter()
        .map(|session| {
            let session = Arc::clone(session);
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let started = Instant::now();
                    session
                        .execute(ExecRequest::new(trivial_source()))
                        .await
                        .expect("throughput exec");
                    latencies.push(started.elapsed().as_nanos());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for run in runs {
        latencies.extend(run.await.expect("a throughput session"));
    }
    let elapsed = started.elapsed();
    // CPU of both processes (host and runtime) over the window, whatever the cores did.
    let cpu =
        (cpu_ns_of_self() + subject.runtime_pid.map_or(0, cpu_ns_of)).saturating_sub(cpu_before);
    subject.shutdown().await;
    #[expect(
        clippy::print_stdout,
        reason = "the child reports to its parent on stdout"
    )]
    {
        println!(
            "elapsed_ns={} cpu_ns={cpu} latencies_ns={}",
            elapsed.as_nanos(),
            latencies
                .iter()
                .map(u128::to_string)
                .collect::<Vec<_>>()
                .join(",")
        );
    }
}

/// User and system CPU time this process used so far, in nanoseconds (every thread).
fn cpu_ns_of_self() -> u128 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `getrusage` fills the `rusage` it is given (a valid, writable one here) and
    // touches nothing else.
    let usage = unsafe {
        if libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) != 0 {
            return 0;
        }
        usage.assume_init()
    };
    let ns =
        |time: libc::timeval| time.tv_sec as u128 * 1_000_000_000 + time.tv_usec as u128 * 1_000;
    ns(usage.ru_utime) + ns(usage.ru_stime)
}

/// User and system CPU time another process used so far, in nanoseconds (`utime` and
/// `stime` of `/proc/<pid>/stat`, in clock ticks).
fn cpu_ns_of(pid: u32) -> u128 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // The command name (field 2) may hold spaces; the fields after it follow its `)`.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime field 15.
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|v| v.parse::<u128>().ok())
            .unwrap_or(0)
    };
    // SAFETY: `sysconf` only reads a system constant.
    let per_second = u128::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .unwrap_or(100)
        .max(1);
    (ticks(11) + ticks(12)) * 1_000_000_000 / per_second
}

/// Idle cells: RSS and threads before and after parking `cells` cells on a tool call that
/// never answers, with the session's cells hibernating after `hibernate_after_ms` (or
/// never).
pub(crate) async fn idle_child(transport: &str, cells: usize, hibernate_after_ms: Option<u64>) {
    let options = SessionOptions {
        hibernate_after_ms,
        ..SessionOptions::default()
    };
    let subject = Subject::open_with(transport, Arc::new(ParkingTools), 1, options).await;
    let session = &subject.sessions[0];
    let park =
        || ExecRequest::new("await tools.park(); text('never');").with_tools(tools_named("park"));
    // One parked cell first, so one-time costs (code, first isolate) are not counted.
    park_one(session.as_ref(), park()).await;
    let settle = Duration::from_millis(300);
    tokio::time::sleep(settle).await;
    let before = subject.rss_kib();
    let threads_before = subject.threads();
    let started = Instant::now();
    for _ in 0..cells {
        park_one(session.as_ref(), park()).await;
    }
    let parking = started.elapsed();
    tokio::time::sleep(settle).await;
    let after = subject.rss_kib();
    let threads_after = subject.threads();
    // Then every cell ends with its session, and the runtime sits idle: what does it keep
    // 10 s later (an idle runtime gives back what a burst took)?
    subject.shutdown().await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let idle = subject.rss_kib();
    #[expect(
        clippy::print_stdout,
        reason = "the child reports to its parent on stdout"
    )]
    {
        println!(
            "before_kib={before} after_kib={after} idle_kib={idle} threads_before={threads_before} threads_after={threads_after} parking_ms={}",
            parking.as_millis()
        );
    }
}

pub(crate) fn tools_named(name: &str) -> Arc<[ToolDefinition]> {
    Arc::from(vec![ToolDefinition::new(
        name,
        "Never answers.",
        ToolKind::Function,
    )])
}

/// Starts a cell and returns once it is parked on its tool call.
pub(crate) async fn park_one(session: &dyn CodeModeSession, request: ExecRequest) {
    match session
        .execute_to_pending(request)
        .await
        .expect("park a cell")
        .outcome
    {
        code_mode_protocol::PendingOutcome::Pending { .. } => {}
        code_mode_protocol::PendingOutcome::Completed(response) => {
            panic!("the parked cell completed: {response:?}")
        }
    }
}
