use super::*;
use crate::sqlite::Sqlite;
use crate::written::{Op, Undo, Written};
use code_mode_protocol::ToolKind;
use code_mode_protocol::journal::CellJournal;
use code_mode_protocol::journal::JournalCommand;
use code_mode_protocol::{NestedToolCall, StoredValues};
use std::path::Path;
use std::sync::Arc;

/// A fresh directory of its own under the system's temporary directory.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "code-mode-state-{name}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos())
    ));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

fn cell(number: u64, answered: u64) -> DurableCell {
    let cell_id = CellId::new(number);
    let mut journal = CellJournal::start(
        format!("text(await tools.slow({{n: {number}}}))"),
        Arc::from([]),
        Arc::new(StoredValues::from([("k".to_owned(), Arc::from("1"))])),
        42 + number,
    );
    journal.clock = vec![1, 2, 3];
    journal.issued = vec![(7, "slow".to_owned()), (8, "slow".to_owned())];
    journal.entered = (1..=answered)
        .map(|call| JournalCommand::ToolResult {
            call: CallId::new(call),
            result: Ok(JsonText::new(format!("{call}"))),
        })
        .collect();
    journal.outputs = 1;
    DurableCell {
        in_flight: vec![NestedToolCall {
            cell_id: cell_id.clone(),
            call_id: CallId::new(2),
            tool_name: "slow".to_owned(),
            kind: ToolKind::Function,
            input: Some(JsonText::new("{\"n\":2}")),
            exec_call_id: Some("call_x".to_owned()),
        }],
        cell_id,
        journal,
        exec_call_id: Some("call_x".to_owned()),
    }
}

fn checkpoint(cells: Vec<DurableCell>, value: &str) -> Changes {
    Changes {
        removed: Vec::new(),
        counters: vec![("last_session".to_owned(), 3)],
        sessions: vec![SessionRecord {
            id: "s1".to_owned(),
            options: "{\"max_yield_time_ms\":100}".to_owned(),
            state: DurableState {
                stored: StoredValues::from([("k".to_owned(), Arc::from(value))]),
                cells,
            },
        }],
        calls: vec![CallRecord {
            session: "s1".to_owned(),
            cell_id: CellId::new(1),
            call: CallId::new(2),
            front_id: "c9".to_owned(),
        }],
    }
}

fn stored_value(saved: &Saved) -> String {
    saved.sessions[0].state.stored["k"].to_string()
}

fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime")
        .block_on(future)
}

/// Options for tests: no time to live, no patience (a failure is the caller's at once).
fn options() -> StoreOptions {
    StoreOptions {
        max_bytes: None,
        ttl: None,
        patience: std::time::Duration::ZERO,
        durability: Durability::Disk,
        replica: None,
        lease: LEASE,
        ca: None,
        deployment: None,
    }
}

fn open(dir: &Path) -> Result<(Keeper, Saved), StateError> {
    Keeper::open_sqlite(dir, "jsonl", options())
}

fn write(keeper: &Keeper, changes: Changes) -> Result<(), StateError> {
    block_on(keeper.write(changes))
}

fn removed(id: &str) -> Changes {
    Changes {
        removed: vec![id.to_owned()],
        ..Changes::default()
    }
}

#[test]
fn what_is_written_comes_back_whole_in_the_next_process() {
    let dir = scratch("round");
    let (keeper, _) = open(&dir).expect("opens");
    write(&keeper, checkpoint(vec![cell(1, 1), cell(2, 0)], "\"a\"")).expect("written");
    let commits = keeper.stats().commits;
    write(&keeper, checkpoint(vec![cell(1, 1), cell(2, 0)], "\"a\"")).expect("written");
    assert_eq!(
        keeper.stats().commits,
        commits,
        "nothing changed, nothing committed"
    );
    let answer = AnswerRecord {
        session: "s1".to_owned(),
        cell_id: CellId::new(1),
        call: CallId::new(2),
        result: Err(ToolError::new("no")),
    };
    block_on(keeper.record_answer(answer)).expect("recorded");
    drop(keeper);
    let (keeper, saved) = open(&dir).expect("opens again");
    assert_eq!(saved.counter("last_session"), 3);
    assert_eq!(saved.counter("never"), 0);
    assert_eq!(saved.sessions.len(), 1);
    assert_eq!(saved.sessions[0].options, "{\"max_yield_time_ms\":100}");
    assert_eq!(stored_value(&saved), "\"a\"");
    let mut cells = saved.sessions[0].state.cells.clone();
    cells.sort_by_key(|cell| cell.cell_id.to_string());
    assert_eq!(cells, vec![cell(1, 1), cell(2, 0)]);
    assert_eq!(
        saved.front_id("s1", &CellId::new(1), CallId::new(2)),
        Some("c9")
    );
    assert_eq!(
        saved.answer("s1", &CellId::new(1), CallId::new(2)),
        Some(&Err(ToolError::new("no")))
    );
    // A cell that grew is appended to; one that ended takes its answers with it.
    write(&keeper, checkpoint(vec![cell(2, 1)], "\"b\"")).expect("written");
    drop(keeper);
    let (keeper, saved) = open(&dir).expect("opens again");
    assert_eq!(saved.sessions[0].state.cells, vec![cell(2, 1)]);
    assert_eq!(stored_value(&saved), "\"b\"");
    assert!(saved.answers.is_empty());
    // A cell that grows after a restart goes on from what was read back.
    write(&keeper, checkpoint(vec![cell(2, 2)], "\"b\"")).expect("written");
    drop(keeper);
    let (keeper, saved) = open(&dir).expect("opens again");
    assert_eq!(saved.sessions[0].state.cells, vec![cell(2, 2)]);
    // A session not named is left as it is; a removed one goes with all it had.
    write(&keeper, Changes::default()).expect("written");
    drop(keeper);
    let (keeper, saved) = open(&dir).expect("opens again");
    assert_eq!(saved.sessions.len(), 1, "a session not named stays");
    write(&keeper, removed("s1")).expect("written");
    drop(keeper);
    let (_keeper, saved) = open(&dir).expect("opens again");
    assert!(saved.sessions.is_empty() && saved.calls.is_empty());
    assert_eq!(saved.counter("last_session"), 3, "counters stay");
}

#[test]
fn only_what_changed_is_written() {
    let mut written = Written::default();
    let first = checkpoint(vec![cell(1, 0)], "\"a\"");
    let ops = written.plan(&first, &mut Undo::default()).expect("planned");
    assert!(ops.iter().any(|op| matches!(op, Op::CellStart { .. })));
    let again = written.plan(&first, &mut Undo::default()).expect("planned");
    assert!(
        again.is_empty(),
        "nothing changed, nothing written: {again:?}"
    );
    // One more answer: one appended batch, no header, no value, no session row.
    let grown = written
        .plan(&checkpoint(vec![cell(1, 1)], "\"a\""), &mut Undo::default())
        .expect("planned");
    assert!(
        matches!(grown.as_slice(), [Op::CellGrowth { seq: 1, .. }]),
        "{grown:?}"
    );
    // A value that changed is the only one written; the same text in another `Arc` is
    // not a change.
    let mut other = checkpoint(vec![cell(1, 1)], "\"a\"");
    other.sessions[0]
        .state
        .stored
        .insert("big".to_owned(), Arc::from("[1]"));
    let ops = written.plan(&other, &mut Undo::default()).expect("planned");
    assert!(
        matches!(ops.as_slice(), [Op::Value { key, json: Some(_), .. }] if key == "big"),
        "{ops:?}"
    );
    // Undone, the plan is as if it never was.
    let mut undo = Undo::default();
    let ops = written
        .plan(&checkpoint(vec![cell(1, 2)], "\"c\""), &mut undo)
        .expect("planned");
    assert_eq!(ops.len(), 3, "{ops:?}");
    written.undo(undo);
    let again = written
        .plan(&checkpoint(vec![cell(1, 2)], "\"c\""), &mut Undo::default())
        .expect("planned");
    assert_eq!(again.len(), 3, "{again:?}");
}

#[test]
fn a_second_write_of_one_journal_step_fails() {
    let dir = scratch("append");
    let (mut store, _) = Sqlite::open(&dir, "jsonl", Durability::Disk).expect("opens");
    let growth = |seq| Op::CellGrowth {
        session: "s1".to_owned(),
        cell: "1".to_owned(),
        seq,
        growth: vec![1, 0, 0, 0],
    };
    crate::store::Backend::apply(&mut store, &[growth(0)]).expect("written");
    let error = crate::store::Backend::apply(&mut store, &[growth(1), growth(0)])
        .expect_err("step 0 was written");
    assert!(error.to_string().contains("UNIQUE"), "{error}");
    let steps: i64 = store
        .connection()
        .query_row("SELECT count(*) FROM growth", [], |row| row.get(0))
        .expect("counted");
    assert_eq!(steps, 1, "the failed transaction left nothing");
}

#[test]
fn writes_queued_during_a_commit_share_the_next_one() {
    let dir = scratch("group");
    let (keeper, _) = open(&dir).expect("opens");
    let keeper = Arc::new(keeper);
    let writes = 64;
    block_on(async {
        let mut all = Vec::new();
        for number in 0..writes {
            let keeper = Arc::clone(&keeper);
            let mut changes = checkpoint(vec![cell(1, 0)], "\"a\"");
            changes.sessions[0].id = format!("s{number}");
            changes.calls.clear();
            all.push(async move { keeper.write(changes).await });
        }
        for outcome in join_all(all).await {
            outcome.expect("written");
        }
    });
    let commits = keeper.stats().commits;
    assert!(
        commits < writes / 4,
        "{commits} commits for {writes} writes"
    );
    assert_eq!(keeper.stats().sessions, writes);
    drop(keeper);
    let (_, saved) = open(&dir).expect("opens again");
    assert_eq!(saved.sessions.len() as u64, writes);
}

/// An answer recorded "soon" shares the commit of the write that follows it; alone, it is
/// written within a few milliseconds. Either way it comes back in the next process.
#[test]
fn an_answer_recorded_soon_shares_the_next_commit_or_is_written_alone_shortly() {
    let dir = scratch("soon");
    let (keeper, _) = open(&dir).expect("opens");
    write(&keeper, checkpoint(vec![cell(1, 1)], "\"a\"")).expect("written");
    let answer = |call: u64, text: &str| AnswerRecord {
        session: "s1".to_owned(),
        cell_id: CellId::new(1),
        call: CallId::new(call),
        result: Err(ToolError::new(text)),
    };
    let before = keeper.stats().commits;
    block_on(async {
        let recorded = keeper.record_answer_soon(answer(2, "first"));
        keeper
            .write(checkpoint(vec![cell(1, 1)], "\"b\""))
            .await
            .expect("written");
        recorded.await.expect("recorded");
    });
    assert_eq!(
        keeper.stats().commits,
        before + 1,
        "the answer went with the write"
    );
    block_on(keeper.record_answer_soon(answer(3, "alone"))).expect("recorded");
    assert_eq!(keeper.stats().commits, before + 2);
    drop(keeper);
    let (_, saved) = open(&dir).expect("opens again");
    assert_eq!(stored_value(&saved), "\"b\"");
    for (call, text) in [(2, "first"), (3, "alone")] {
        assert_eq!(
            saved.answer("s1", &CellId::new(1), CallId::new(call)),
            Some(&Err(ToolError::new(text)))
        );
    }
}

/// Polls every future in turn until all are done (each first poll queues its write).
async fn join_all<T>(futures: Vec<impl std::future::Future<Output = T>>) -> Vec<T> {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut done: Vec<Option<T>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|context| {
        for (future, slot) in futures.iter_mut().zip(done.iter_mut()) {
            if slot.is_none()
                && let std::task::Poll::Ready(value) = future.as_mut().poll(context)
            {
                *slot = Some(value);
            }
        }
        if done.iter().all(Option::is_some) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    done.into_iter().map(|slot| slot.expect("done")).collect()
}

/// Opens a copy of `fixture` twice (the first open rewrites it) and checks that it holds
/// what the fixtures were written with, in tables clustered on their keys.
fn open_fixture_twice(name: &str, fixture: &str) {
    let dir = scratch(name);
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(fixture);
    std::fs::copy(&fixture, dir.join("jsonl.sqlite3")).expect("copied");
    for round in 0..2 {
        let (_keeper, saved) = open(&dir).unwrap_or_else(|error| panic!("round {round}: {error}"));
        assert_eq!(saved.counter("last_session"), 3);
        assert_eq!(saved.counter("generations"), 4);
        let ids: Vec<&str> = saved
            .sessions
            .iter()
            .map(|record| record.id.as_str())
            .collect();
        assert_eq!(ids, ["s1", "s2"]);
        let mut cells = saved.sessions[0].state.cells.clone();
        cells.sort_by_key(|cell| cell.cell_id.to_string());
        assert_eq!(cells, vec![cell(1, 1), cell(2, 0)]);
        let mut third = cell(3, 2);
        third
            .journal
            .entered
            .push(JournalCommand::TimerFired { id: 5 });
        third.journal.tools = Arc::from([code_mode_protocol::ToolDefinition::new(
            "slow",
            "Slow.",
            ToolKind::Function,
        )]);
        assert_eq!(saved.sessions[1].state.cells, vec![third]);
        assert_eq!(&*saved.sessions[1].state.stored["big"], "[1,2,3]");
        assert_eq!(
            saved.answer("s1", &CellId::new(1), CallId::new(2)),
            Some(&Err(ToolError::new("no")))
        );
        assert_eq!(
            saved.answer("s2", &CellId::new(3), CallId::new(2)),
            Some(&Ok(JsonText::new("{\"ok\":true}")))
        );
        assert_eq!(
            saved.front_id("s1", &CellId::new(1), CallId::new(2)),
            Some("c9")
        );
    }
    let db = rusqlite::Connection::open(dir.join("jsonl.sqlite3")).expect("opens");
    let mut statement = db
        .prepare("SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name != 'meta'")
        .expect("prepared");
    let tables: Vec<(String, String)> = statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .expect("read")
        .collect::<Result<_, _>>()
        .expect("read");
    assert_eq!(tables.len(), 7, "{tables:?}");
    for (name, sql) in tables {
        assert!(sql.contains("WITHOUT ROWID"), "{name}: {sql}");
    }
}

#[test]
fn a_database_of_format_one_is_rewritten_in_this_format_and_reads_whole() {
    open_fixture_twice("format-one", "format-1.sqlite3");
}

/// Format 2 as the first version of it wrote it (every table with a rowid, the fixture of
/// format 1 opened by it): its tables are rebuilt clustered, and hold what they held.
#[test]
fn a_database_of_format_two_with_rowid_tables_is_rebuilt_clustered_and_reads_whole() {
    open_fixture_twice("format-two", "format-2.sqlite3");
}

#[test]
fn one_process_at_a_time_holds_a_database() {
    let dir = scratch("busy");
    let first = open(&dir).expect("opens");
    let second = open(&dir).expect_err("held by the first");
    assert!(matches!(second, StateError::InUse { .. }), "{second}");
    drop(first);
    open(&dir).expect("free again");
    // Another front's database in the same directory is its own.
    let (other, _) = Keeper::open_sqlite(&dir, "codex", options()).expect("another file");
    assert!(other.describe().ends_with("codex.sqlite3"));
}

/// The approvals book's name cannot name a front end's sessions: its database (and its
/// Postgres schema) would be the book's.
#[test]
fn a_front_cannot_take_the_approvals_books_name() {
    let dir = scratch("reserved");
    for front in ["approvals", "approvals_eu"] {
        let refused = Keeper::open_sqlite(&dir, front, options()).expect_err("reserved");
        assert!(
            matches!(refused, StateError::ReservedFront { .. }),
            "{refused}"
        );
        let refused = Keeper::open_postgres("host=/nowhere", front, options())
            .expect_err("reserved, before any connection");
        assert!(
            matches!(refused, StateError::ReservedFront { .. }),
            "{refused}"
        );
    }
    assert!(!dir.join("approvals.sqlite3").exists());
    Keeper::open_sqlite(&dir, "approver", options()).expect("another name is a front's");
}

#[test]
fn a_file_that_is_not_a_database_is_refused_and_left_as_it_is() {
    let dir = scratch("corrupt");
    let path = dir.join("jsonl.sqlite3");
    let garbage = b"this is not a database, and a front must not write over it".repeat(100);
    std::fs::write(&path, &garbage).expect("written");
    let error = open(&dir).expect_err("refused");
    assert!(matches!(error, StateError::Corrupt { .. }), "{error}");
    assert!(error.to_string().contains("left as it is"), "{error}");
    assert_eq!(std::fs::read(&path).expect("still there"), garbage);
}

#[test]
fn a_database_of_another_format_or_front_is_refused() {
    let dir = scratch("foreign");
    let (store, _) = Sqlite::open(&dir, "jsonl", Durability::Disk).expect("opens");
    store
        .connection()
        .execute(
            "UPDATE meta SET value = 'code-mode-state 1, wire 0' WHERE key = 'format'",
            [],
        )
        .expect("rewritten");
    drop(store);
    let error = open(&dir).expect_err("refused");
    assert!(matches!(error, StateError::Foreign { .. }), "{error}");
    let dir = scratch("other-front");
    drop(open(&dir).expect("opens"));
    std::fs::rename(dir.join("jsonl.sqlite3"), dir.join("mcp.sqlite3")).expect("renamed");
    let error = Keeper::open_sqlite(&dir, "mcp", options()).expect_err("refused");
    assert!(matches!(error, StateError::OtherFront { .. }), "{error}");
}

#[test]
fn a_full_disk_refuses_the_write_and_keeps_the_state_before_it() {
    let dir = scratch("full");
    let capped = StoreOptions {
        max_bytes: Some(256 * 1024),
        ..options()
    };
    let (keeper, _) = Keeper::open_sqlite(&dir, "jsonl", capped.clone()).expect("opens");
    write(&keeper, checkpoint(vec![cell(1, 0)], "\"small\"")).expect("written");
    keeper.admit().expect("room for a new session");
    let big = format!("\"{}\"", "x".repeat(1 << 20));
    let error = write(&keeper, checkpoint(vec![cell(1, 1)], &big)).expect_err("no room");
    assert!(matches!(error, StateError::Write { .. }), "{error}");
    assert!(error.to_string().contains("full"), "{error}");
    // What was refused is not remembered as written: the next write tries it again.
    write(&keeper, checkpoint(vec![cell(1, 1)], "\"small\"")).expect("written");
    drop(keeper);
    let (_, saved) = Keeper::open_sqlite(&dir, "jsonl", capped).expect("opens again");
    assert_eq!(stored_value(&saved), "\"small\"");
    assert_eq!(saved.sessions[0].state.cells, vec![cell(1, 1)]);
}

#[test]
fn past_seven_eighths_of_the_cap_new_sessions_are_refused_with_the_figures() {
    let dir = scratch("cap");
    let (keeper, _) = open(&dir).expect("opens");
    let big = format!("\"{}\"", "x".repeat(200 * 1024));
    write(&keeper, checkpoint(vec![], &big)).expect("written");
    let bytes = keeper.stats().bytes;
    assert!(bytes > 200 * 1024, "{bytes}");
    drop(keeper);
    let capped = |max_bytes| StoreOptions {
        max_bytes: Some(max_bytes),
        ..options()
    };
    let (keeper, _) =
        Keeper::open_sqlite(&dir, "jsonl", capped(bytes * 8 / 7 + 8192)).expect("opens");
    keeper.admit().expect("under seven eighths");
    drop(keeper);
    let (keeper, _) = Keeper::open_sqlite(&dir, "jsonl", capped(bytes)).expect("opens");
    let error = keeper.admit().expect_err("past seven eighths");
    assert!(matches!(error, StateError::Full { .. }), "{error}");
    assert!(error.to_string().contains("--state-max-bytes"), "{error}");
    assert_eq!(keeper.stats().sessions, 1);
}

#[test]
fn sessions_nobody_wrote_for_their_time_to_live_expire() {
    let dir = scratch("ttl");
    let (keeper, _) = open(&dir).expect("opens");
    write(&keeper, checkpoint(vec![cell(1, 0)], "\"old\"")).expect("written");
    let mut fresh = checkpoint(vec![cell(1, 0)], "\"new\"");
    fresh.sessions[0].id = "s2".to_owned();
    fresh.calls.clear();
    write(&keeper, fresh).expect("written");
    drop(keeper);
    {
        let (store, _) = Sqlite::open(&dir, "jsonl", Durability::Disk).expect("opens");
        let two_days_ago = crate::store::now() - 2 * 24 * 3600;
        store
            .connection()
            .execute(
                "UPDATE sessions SET touched = ?1 WHERE id = 's1'",
                [two_days_ago],
            )
            .expect("aged");
    }
    let (keeper, saved) = Keeper::open_sqlite(
        &dir,
        "jsonl",
        StoreOptions {
            ttl: Some(DEFAULT_TTL),
            ..options()
        },
    )
    .expect("opens");
    let ids: Vec<&str> = saved
        .sessions
        .iter()
        .map(|record| record.id.as_str())
        .collect();
    assert_eq!(ids, ["s2"]);
    assert!(saved.calls.is_empty(), "the expired session's calls went");
    assert_eq!(keeper.stats().expired, 1);
    assert_eq!(keeper.stats().sessions, 1);
    drop(keeper);
    let (store, _) = Sqlite::open(&dir, "jsonl", Durability::Disk).expect("opens");
    for table in ["stored", "cells", "growth", "calls"] {
        let left: i64 = store
            .connection()
            .query_row(
                &format!("SELECT count(*) FROM {table} WHERE session = 's1'"),
                [],
                |row| row.get(0),
            )
            .expect("counted");
        assert_eq!(left, 0, "{table}");
    }
}

/// Where each commit of the write-ahead log `log`'s current run ends (the end of its commit
/// frame). The log is kept at its size and written over from its start after a
/// checkpoint, so its length says nothing of where the last commit is: a run's frames
/// carry the salts of the log's header, and a commit frame the database's size.
fn commit_ends(log: &[u8]) -> Vec<usize> {
    let word = |at: usize| u32::from_be_bytes(log[at..at + 4].try_into().expect("4 bytes"));
    let frame = 24 + usize::try_from(word(8)).expect("a page size");
    let salts = &log[16..24];
    let (mut ends, mut at) = (Vec::new(), 32);
    while at + frame <= log.len() && &log[at + 8..at + 16] == salts {
        let commit = word(at + 4) != 0;
        at += frame;
        if commit {
            ends.push(at);
        }
    }
    ends
}

#[test]
fn a_write_torn_by_a_kill_is_rolled_back_to_the_one_before() {
    let dir = scratch("torn");
    let (keeper, _) = open(&dir).expect("opens");
    write(&keeper, checkpoint(vec![cell(1, 0)], "\"first\"")).expect("written");
    let wal = dir.join("jsonl.sqlite3-wal");
    let first = commit_ends(&std::fs::read(&wal).expect("a log"));
    write(&keeper, checkpoint(vec![cell(1, 1)], "\"second\"")).expect("written");
    // What a kill in the middle of the second write leaves: the files as they are, with
    // the log cut inside the second transaction.
    let copy = scratch("torn-copy");
    std::fs::copy(dir.join("jsonl.sqlite3"), copy.join("jsonl.sqlite3")).expect("copied");
    let log = std::fs::read(&wal).expect("read");
    let second = commit_ends(&log);
    assert_eq!(second.len(), first.len() + 1, "{first:?} {second:?}");
    let first_end = *first.last().expect("the first write's commit");
    assert!(second[first.len()] > first_end + 100);
    std::fs::write(copy.join("jsonl.sqlite3-wal"), &log[..first_end + 100]).expect("cut");
    let (_, saved) = open(&copy).expect("opens");
    assert_eq!(stored_value(&saved), "\"first\"");
    assert_eq!(saved.sessions[0].state.cells, vec![cell(1, 0)]);
    drop(keeper);
}

#[test]
fn the_directory_and_its_database_are_private_to_their_owner() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let mode = |path: &Path| {
        std::fs::symlink_metadata(path)
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
            .mode()
            & 0o777
    };
    let dir = scratch("private").join("state");
    let (keeper, _) = open(&dir).expect("opens");
    write(&keeper, checkpoint(vec![cell(1, 0)], "\"secret\"")).expect("written");
    assert_eq!(mode(&dir), 0o700);
    // While the keeper has it open, the database has its log beside it (no shared-memory
    // file: one process holds it): every file there is private, and both are there.
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("the directory reads")
        .map(|entry| {
            let entry = entry.expect("an entry");
            let name = entry.file_name().to_string_lossy().into_owned();
            assert_eq!(mode(&entry.path()), 0o600, "{name}");
            name
        })
        .collect();
    names.sort();
    assert!(
        names.starts_with(&["jsonl.sqlite3".to_owned(), "jsonl.sqlite3-wal".to_owned()]),
        "{names:?}"
    );
    drop(keeper);
    // A directory others may write is refused, and left as it is.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o770)).unwrap();
    let error = open(&dir).expect_err("refused");
    assert!(error.to_string().contains("chmod 700"), "{error}");
    assert_eq!(mode(&dir), 0o770);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    // A database planted as a link is not followed.
    let elsewhere = scratch("private-elsewhere").join("other.sqlite3");
    std::fs::write(&elsewhere, b"").unwrap();
    std::os::unix::fs::symlink(&elsewhere, dir.join("mcp.sqlite3")).unwrap();
    let error = Keeper::open_sqlite(&dir, "mcp", options()).expect_err("refused");
    let planted = dir.join("mcp.sqlite3");
    assert!(
        error.to_string().contains(&format!(
            "{} is a symbolic link, which is never followed",
            planted.display()
        )),
        "{error}"
    );
    assert_eq!(
        std::fs::read(&elsewhere).unwrap(),
        b"",
        "the link's target is untouched"
    );
    // A state directory named through a link is refused too, as a link.
    let link = scratch("private-link").join("state");
    std::os::unix::fs::symlink(&dir, &link).unwrap();
    let error = open(&link).expect_err("refused");
    assert!(
        error.to_string().contains(&format!(
            "{} is a symbolic link, which is never followed",
            link.display()
        )),
        "{error}"
    );
}

#[test]
fn a_time_to_live_reads_as_the_command_lines_write_it() {
    let secs = |seconds| Ok(Ttl(Some(std::time::Duration::from_secs(seconds))));
    assert_eq!(parse_ttl("90m"), secs(5400));
    assert_eq!(parse_ttl("24h"), secs(86_400));
    assert_eq!(parse_ttl("7d"), secs(604_800));
    assert_eq!(parse_ttl("30"), secs(30));
    assert_eq!(parse_ttl("45s"), secs(45));
    assert_eq!(parse_ttl("never"), Ok(Ttl(None)));
    for bad in ["", "0", "h", "-1h", "1w", "1.5h", "99999999999999999999d"] {
        let error = parse_ttl(bad).expect_err(bad);
        assert!(error.contains("not a time to live"), "{error}");
    }
}

#[test]
fn durability_disk_syncs_every_commit_and_process_leaves_it_to_the_system() {
    for (durability, expected) in [(Durability::Disk, 2), (Durability::Process, 1)] {
        let dir = scratch("durability");
        let (store, _) = Sqlite::open(&dir, "jsonl", durability).expect("opens");
        let synchronous: i64 = store
            .connection()
            .query_row("PRAGMA synchronous", [], |row| row.get(0))
            .expect("read");
        assert_eq!(synchronous, expected, "{durability:?}");
    }
    assert_eq!("disk".parse(), Ok(Durability::Disk));
    assert_eq!("process".parse(), Ok(Durability::Process));
    assert!("fast".parse::<Durability>().is_err());
}

#[test]
fn with_disk_durability_the_log_is_written_to_its_size_before_the_first_commit() {
    use std::os::unix::fs::MetadataExt;
    let dir = scratch("warm-log");
    let (store, _) = Sqlite::open(&dir, "jsonl", Durability::Disk).expect("opens");
    let pragma = |name: &str| -> i64 {
        store
            .connection()
            .query_row(&format!("PRAGMA {name}"), [], |row| row.get(0))
            .expect("read")
    };
    let wraps_at = u64::try_from(pragma("page_size") * pragma("wal_autocheckpoint")).unwrap();
    let log = std::fs::metadata(dir.join("jsonl.sqlite3-wal")).expect("the log");
    assert!(log.len() >= wraps_at, "{} < {wraps_at}", log.len());
    // Written blocks, not a hole the first commits would fill.
    assert!(log.blocks() * 512 >= wraps_at, "{} blocks", log.blocks());
    // The scratch table is gone, and the database did not grow by the log's size.
    let scratch_tables: i64 = store
        .connection()
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'log_warmup'",
            [],
            |row| row.get(0),
        )
        .expect("read");
    assert_eq!(scratch_tables, 0);
    let database = std::fs::metadata(dir.join("jsonl.sqlite3")).expect("the database");
    assert!(database.len() < 256 * 1024, "{}", database.len());
    drop(store);
    // Written to, then opened again (the log written ahead again), it reads what it had;
    // with process durability (no sync at commit) the log is left to grow as SQLite grows
    // it.
    let (keeper, _) = open(&dir).expect("opens");
    write(&keeper, checkpoint(vec![cell(1, 0)], "\"kept\"")).expect("written");
    drop(keeper);
    let (_, saved) = open(&dir).expect("reopens");
    assert_eq!(stored_value(&saved), "\"kept\"");
    assert_eq!(saved.sessions[0].state.cells, vec![cell(1, 0)]);
    let other = scratch("cold-log");
    let (store, _) = Sqlite::open(&other, "jsonl", Durability::Process).expect("opens");
    let synchronous: i64 = store
        .connection()
        .query_row("PRAGMA synchronous", [], |row| row.get(0))
        .expect("read");
    assert_eq!(synchronous, 1, "process durability keeps NORMAL");
    let log = std::fs::metadata(other.join("jsonl.sqlite3-wal")).map_or(0, |m| m.len());
    assert!(log < wraps_at, "{log}");
}
