use super::*;
use code_mode_protocol::ToolKind;
use code_mode_protocol::journal::JournalCommand;
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

fn checkpoint(cells: Vec<DurableCell>, value: &str) -> Checkpoint {
    Checkpoint {
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

#[test]
fn a_checkpoint_comes_back_whole_in_the_next_process() {
    let dir = scratch("round");
    let store = StateStore::open(&dir, "jsonl").expect("opens");
    store
        .checkpoint(&checkpoint(vec![cell(1, 1), cell(2, 0)], "\"a\""))
        .expect("written");
    let answer = AnswerRecord {
        session: "s1".to_owned(),
        cell_id: CellId::new(1),
        call: CallId::new(2),
        result: Err(ToolError::new("no")),
    };
    store.record_answer(&answer).expect("recorded");
    drop(store);
    let store = StateStore::open(&dir, "jsonl").expect("opens again");
    let saved = store.load().expect("loads");
    assert_eq!(saved.counter("last_session"), 3);
    assert_eq!(saved.counter("never"), 0);
    assert_eq!(saved.sessions.len(), 1);
    assert_eq!(saved.sessions[0].options, "{\"max_yield_time_ms\":100}");
    assert_eq!(stored_value(&saved), "\"a\"");
    assert_eq!(saved.sessions[0].state.cells, vec![cell(1, 1), cell(2, 0)]);
    assert_eq!(
        saved.front_id("s1", &CellId::new(1), CallId::new(2)),
        Some("c9")
    );
    assert_eq!(
        saved.answer("s1", &CellId::new(1), CallId::new(2)),
        Some(&Err(ToolError::new("no")))
    );
    // A cell that is gone takes its answers with it; a session that is gone, its cells.
    store
        .checkpoint(&checkpoint(vec![cell(2, 1)], "\"b\""))
        .expect("written");
    let saved = store.load().expect("loads");
    assert_eq!(saved.sessions[0].state.cells, vec![cell(2, 1)]);
    assert_eq!(stored_value(&saved), "\"b\"");
    assert!(saved.answers.is_empty());
    store.checkpoint(&Checkpoint::default()).expect("written");
    let saved = store.load().expect("loads");
    assert!(saved.sessions.is_empty() && saved.calls.is_empty());
    assert_eq!(saved.counter("last_session"), 3, "counters stay");
}

#[test]
fn one_process_at_a_time_holds_a_database() {
    let dir = scratch("busy");
    let first = StateStore::open(&dir, "jsonl").expect("opens");
    let second = StateStore::open(&dir, "jsonl").expect_err("held by the first");
    assert!(matches!(second, StateError::InUse { .. }), "{second}");
    drop(first);
    StateStore::open(&dir, "jsonl").expect("free again");
    // Another front's database in the same directory is its own.
    let other = StateStore::open(&dir, "codex").expect("another file");
    assert!(other.path().ends_with("codex.sqlite3"));
}

#[test]
fn a_file_that_is_not_a_database_is_refused_and_left_as_it_is() {
    let dir = scratch("corrupt");
    let path = dir.join("jsonl.sqlite3");
    let garbage = b"this is not a database, and a front must not write over it".repeat(100);
    std::fs::write(&path, &garbage).expect("written");
    let error = StateStore::open(&dir, "jsonl").expect_err("refused");
    assert!(matches!(error, StateError::Corrupt { .. }), "{error}");
    assert!(error.to_string().contains("left as it is"), "{error}");
    assert_eq!(std::fs::read(&path).expect("still there"), garbage);
}

#[test]
fn a_database_of_another_format_is_refused() {
    let dir = scratch("foreign");
    let store = StateStore::open(&dir, "jsonl").expect("opens");
    code_mode_protocol::sync::lock(&store.db)
        .execute(
            "UPDATE meta SET value = 'code-mode-state 0' WHERE key = 'format'",
            [],
        )
        .expect("rewritten");
    drop(store);
    let error = StateStore::open(&dir, "jsonl").expect_err("refused");
    assert!(matches!(error, StateError::Foreign { .. }), "{error}");
}

#[test]
fn a_full_disk_refuses_the_write_and_keeps_the_state_before_it() {
    let dir = scratch("full");
    let store = StateStore::open(&dir, "jsonl").expect("opens");
    store
        .checkpoint(&checkpoint(vec![cell(1, 0)], "\"small\""))
        .expect("written");
    store.cap_pages(8).expect("capped");
    let big = format!("\"{}\"", "x".repeat(1 << 20));
    let error = store
        .checkpoint(&checkpoint(vec![cell(1, 1)], &big))
        .expect_err("no room");
    assert!(matches!(error, StateError::Write { .. }), "{error}");
    assert!(error.to_string().contains("full"), "{error}");
    let saved = store.load().expect("loads");
    assert_eq!(stored_value(&saved), "\"small\"");
    assert_eq!(saved.sessions[0].state.cells, vec![cell(1, 0)]);
}

#[test]
fn a_write_torn_by_a_kill_is_rolled_back_to_the_one_before() {
    let dir = scratch("torn");
    let store = StateStore::open(&dir, "jsonl").expect("opens");
    store
        .checkpoint(&checkpoint(vec![cell(1, 0)], "\"first\""))
        .expect("written");
    let wal = dir.join("jsonl.sqlite3-wal");
    let first_len = std::fs::metadata(&wal).expect("a log").len();
    store
        .checkpoint(&checkpoint(vec![cell(1, 1)], "\"second\""))
        .expect("written");
    // What a kill in the middle of the second write leaves: the files as they are, with
    // the log cut inside the second transaction.
    let copy = scratch("torn-copy");
    std::fs::copy(dir.join("jsonl.sqlite3"), copy.join("jsonl.sqlite3")).expect("copied");
    let log = std::fs::read(&wal).expect("read");
    assert!(log.len() as u64 > first_len + 100);
    let cut = usize::try_from(first_len).expect("fits") + 100;
    std::fs::write(copy.join("jsonl.sqlite3-wal"), &log[..cut]).expect("cut");
    let saved = StateStore::open(&copy, "jsonl")
        .expect("opens")
        .load()
        .expect("loads");
    assert_eq!(stored_value(&saved), "\"first\"");
    assert_eq!(saved.sessions[0].state.cells, vec![cell(1, 0)]);
    drop(store);
}

#[test]
fn the_directory_and_its_database_are_private_to_their_owner() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let mode = |path: &Path| std::fs::symlink_metadata(path).expect("stat").mode() & 0o777;
    let dir = scratch("private").join("state");
    let store = StateStore::open(&dir, "jsonl").expect("opens");
    store
        .checkpoint(&checkpoint(vec![cell(1, 0)], "\"secret\""))
        .expect("written");
    assert_eq!(mode(&dir), 0o700);
    for name in ["jsonl.sqlite3", "jsonl.sqlite3-wal", "jsonl.sqlite3-shm"] {
        let path = dir.join(name);
        if path.exists() {
            assert_eq!(mode(&path), 0o600, "{name}");
        }
    }
    drop(store);
    // A directory others may write is refused, and left as it is.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o770)).unwrap();
    let error = StateStore::open(&dir, "jsonl").expect_err("refused");
    assert!(error.to_string().contains("chmod 700"), "{error}");
    assert_eq!(mode(&dir), 0o770);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    // A database planted as a link is not followed.
    let elsewhere = scratch("private-elsewhere").join("other.sqlite3");
    std::fs::write(&elsewhere, b"").unwrap();
    std::os::unix::fs::symlink(&elsewhere, dir.join("mcp.sqlite3")).unwrap();
    let error = StateStore::open(&dir, "mcp").expect_err("refused");
    assert!(error.to_string().contains("symbolic link"), "{error}");
    // A state directory named through a link is refused too.
    let link = scratch("private-link").join("state");
    std::os::unix::fs::symlink(&dir, &link).unwrap();
    assert!(StateStore::open(&link, "jsonl").is_err());
}
