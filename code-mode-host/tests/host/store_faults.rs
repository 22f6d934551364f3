//! The Postgres store against its own faults, on real clusters: a server restarted under
//! a keeper, TLS as `sslmode` says (verified against a test CA, and never plaintext when
//! TLS is required), replicas that start together on an empty database, leases renewed
//! whatever the time to live, a held session with no use past its time to live expired,
//! the size cap counting every session, deployments kept apart, a journal step the
//! store has with another body failing its whole commit, and a dead replica told from a
//! live one (its liveness lock) with its `replicas` row pruned.

use code_mode_conformance::PgCluster;
use code_mode_conformance::remote::Pki;
use code_mode_host::state::{Claimed, Keeper, StateError, StoreOptions};
use std::time::Duration;

use super::stored::{one_session, sql};

fn options() -> StoreOptions {
    StoreOptions {
        patience: Duration::ZERO,
        ..StoreOptions::default()
    }
}

/// A keeper opened on the keeper's own thread (its blocking client may not start on the
/// test's runtime thread).
fn open(url: &str, options: StoreOptions) -> Result<Keeper, StateError> {
    let url = url.to_owned();
    std::thread::spawn(move || Keeper::open_postgres(&url, "jsonl", options).map(|(k, _)| k))
        .join()
        .expect("the opening thread")
}

/// The server stops (every connection cut) and comes back 600 ms later: a write made
/// during the outage is tried again within the keeper's patience and lands once the
/// server is back; the writes after it go through the new connection. Before, the
/// keeper kept its dead connection and every write failed with "connection closed".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_under_a_keeper_loses_no_write() {
    let cluster = PgCluster::start();
    let keeper = open(
        &cluster.url,
        StoreOptions {
            patience: Duration::from_secs(10),
            ..StoreOptions::default()
        },
    )
    .expect("opens");
    keeper
        .write(one_session("s1", "\"before\""))
        .await
        .expect("written before the restart");
    cluster.stop();
    let cluster = std::sync::Arc::new(cluster);
    let restart = {
        let cluster = std::sync::Arc::clone(&cluster);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(600));
            cluster.start_again();
        })
    };
    let written = keeper.write(one_session("s1", "\"during\"")).await;
    restart.join().expect("the restarting thread");
    written.expect("the write made during the outage lands once the server is back");
    keeper
        .write(one_session("s1", "\"after\""))
        .await
        .expect("written after the restart");
    let value = sql(
        &cluster.url,
        "SELECT json FROM code_mode_jsonl.stored WHERE session = 's1' AND key = 'k'",
    );
    assert_eq!(value.as_deref(), Some("\"after\""));
}

/// `sslmode=verify-full` against a server whose certificate the test CA signed: it
/// connects with the CA named by `--state-ca` or by `sslrootcert`, and is refused with
/// another CA (the chain is checked, not just encrypted). `require` against a server that
/// declines TLS fails with what happened, and never goes on in plaintext; neither does
/// the default off TLS when the URL names a host name the certificate holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tls_is_verified_as_sslmode_says_and_never_falls_back_to_plaintext() {
    let pki = Pki::new("code-mode state test CA");
    let cluster = PgCluster::start_tcp(Some(&pki.server()));
    let scratch = code_mode_conformance::Scratch::new();
    let ca = scratch.write("ca.pem", &pki.ca_pem());
    let other = scratch.write("other.pem", &Pki::new("another CA").ca_pem());

    let with_ca = StoreOptions {
        ca: Some(ca.clone()),
        ..options()
    };
    let keeper = open(
        &cluster.tcp_url("localhost", "sslmode=verify-full"),
        with_ca,
    )
    .expect("verify-full with the server's CA connects");
    keeper
        .write(one_session("s1", "\"over TLS\""))
        .await
        .expect("written over TLS");
    drop(keeper);
    let url = cluster.tcp_url(
        "localhost",
        &format!("sslmode=verify-full sslrootcert='{}'", ca.display()),
    );
    let _second = open(&url, options()).expect("sslrootcert names the CA as well");
    let used = sql(&cluster.url, "SELECT count(*) FROM pg_stat_ssl WHERE ssl");
    assert_ne!(used.as_deref(), Some("0"), "a connection over TLS is open");

    let refused = open(
        &cluster.tcp_url("localhost", "sslmode=verify-full"),
        StoreOptions {
            ca: Some(other),
            ..options()
        },
    )
    .expect_err("a certificate of another CA is refused");
    let text = refused.to_string();
    assert!(text.contains("certificate"), "{text}");

    let plain = PgCluster::start_tcp(None);
    for mode in [
        "sslmode=require",
        "sslmode=verify-ca",
        "sslmode=verify-full",
    ] {
        let refused = open(
            &plain.tcp_url("localhost", mode),
            StoreOptions {
                ca: Some(ca.clone()),
                ..options()
            },
        )
        .expect_err("a server without TLS is refused, never used in plaintext");
        let text = refused.to_string();
        assert!(text.contains("does not support TLS"), "{mode}: {text}");
    }
    open(&plain.tcp_url("localhost", "sslmode=disable"), options())
        .expect("plaintext when the URL says disable");
}

/// Two replicas start at the same moment on an empty database, twenty times: both come
/// up (the schema is made under an advisory lock; before, one of them could fail on a
/// duplicate key in `pg_namespace`).
#[test]
fn two_replicas_starting_together_on_an_empty_database_both_come_up() {
    let cluster = PgCluster::start();
    for round in 0..20 {
        sql(&cluster.url, &format!("CREATE DATABASE round{round}"));
        let url = cluster
            .url
            .replace("dbname=postgres", &format!("dbname=round{round}"));
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let replicas: Vec<_> = (0..2)
            .map(|_| {
                let (url, barrier) = (url.clone(), std::sync::Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    Keeper::open_postgres(&url, "mcp", options()).map(|_| ())
                })
            })
            .collect();
        for replica in replicas {
            replica
                .join()
                .expect("the replica's thread")
                .unwrap_or_else(|error| panic!("round {round}: a replica did not start: {error}"));
        }
    }
}

/// `--state-ttl never`: the keeper still renews its leases (renewal ran inside expiry,
/// which a time to live of never skipped), so another replica finds the session held
/// long after one lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_renewed_with_no_time_to_live() {
    let cluster = PgCluster::start();
    let short = StoreOptions {
        ttl: None,
        lease: Duration::from_millis(600),
        ..options()
    };
    let a = open(&cluster.url, short.clone()).expect("A opens");
    a.write(one_session("s1", "\"A's\""))
        .await
        .expect("A writes");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let b = open(&cluster.url, short).expect("B opens");
    let held = b.claim("s1").await.expect("asked");
    assert!(
        matches!(held, Claimed::Live),
        "A lives and renews: {held:?}"
    );
}

/// A session its replica holds but nothing wrote for longer than the time to live is
/// deleted, with everything it had (before, a held session never expired on Postgres),
/// and its holder learns it is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_session_with_no_use_past_its_time_to_live_expires() {
    let cluster = PgCluster::start();
    let keeper = open(
        &cluster.url,
        StoreOptions {
            ttl: Some(Duration::from_secs(3600)),
            lease: Duration::from_millis(300),
            ..options()
        },
    )
    .expect("opens");
    keeper
        .write(one_session("idle", "\"old\""))
        .await
        .expect("written");
    keeper
        .write(one_session("busy", "\"new\""))
        .await
        .expect("written");
    let two_hours_ago = "extract(epoch from now())::BIGINT - 7200";
    sql(
        &cluster.url,
        &format!("UPDATE code_mode_jsonl.sessions SET touched = {two_hours_ago} WHERE id = 'idle'"),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while keeper.stats().expired == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(keeper.stats().expired, 1, "the idle session expired");
    assert!(keeper.expired("idle"));
    assert!(!keeper.expired("busy"));
    let left = sql(
        &cluster.url,
        "SELECT string_agg(id, ',' ORDER BY id) FROM code_mode_jsonl.sessions",
    );
    assert_eq!(left.as_deref(), Some("busy"));
    let values = sql(
        &cluster.url,
        "SELECT count(*) FROM code_mode_jsonl.stored WHERE session = 'idle'",
    );
    assert_eq!(values.as_deref(), Some("0"), "its values went with it");
}

/// The size cap counts every session's rows: past it a write that adds data fails as on
/// a full disk (before, on Postgres the cap only refused new sessions), and a session
/// closed gives its room back at the next measure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_size_cap_fails_writes_past_it_and_closing_gives_room_back() {
    let cluster = PgCluster::start();
    let keeper = open(
        &cluster.url,
        StoreOptions {
            max_bytes: Some(64 * 1024),
            lease: Duration::from_millis(300),
            ..options()
        },
    )
    .expect("opens");
    // Values Postgres cannot compress (a stream of pseudo-random digits), so that the rows
    // take what they hold.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut noise = || {
        (0..8 * 1024)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                char::from(b'0' + (state % 10) as u8)
            })
            .collect::<String>()
    };
    let mut full = None;
    for number in 0..40 {
        let value = format!("\"{}\"", noise());
        match keeper
            .write(one_session(&format!("s{number}"), &value))
            .await
        {
            Ok(()) => tokio::time::sleep(Duration::from_millis(150)).await,
            Err(error) => {
                full = Some(error);
                break;
            }
        }
    }
    let full = full.expect("a write past the cap fails");
    assert!(matches!(full, StateError::Full { .. }), "{full}");
    assert!(keeper.admit().is_err(), "no new session near the cap");
    for number in 0..40 {
        keeper.remove(&format!("s{number}"));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while keeper.admit().is_err() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    keeper.admit().expect("room again once the sessions closed");
    keeper
        .write(one_session("again", "\"small\""))
        .await
        .expect("a write fits again");
}

/// Two deployments on one database keep their sessions apart: one cannot claim, and
/// does not see, a session of the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_deployments_on_one_database_share_no_session() {
    let cluster = PgCluster::start();
    let deployment = |name: &str| StoreOptions {
        deployment: Some(name.to_owned()),
        ..options()
    };
    let blue = open(&cluster.url, deployment("blue")).expect("blue opens");
    blue.write(one_session("s1", "\"blue's\""))
        .await
        .expect("written");
    sql(
        &cluster.url,
        "UPDATE code_mode_jsonl_blue.sessions SET lease_until = 0",
    );
    let green = open(&cluster.url, deployment("green")).expect("green opens");
    let claimed = green.claim("s1").await.expect("asked");
    assert!(matches!(claimed, Claimed::Absent), "{claimed:?}");
    let refused = open(&cluster.url, deployment("Blue-1")).expect_err("not a name");
    assert!(refused.to_string().contains("deployment name"), "{refused}");
}

/// A session with one cell whose journal has `answers` answers, and stored value `k`.
fn with_cell(answers: u64, value: &str) -> code_mode_host::state::Changes {
    use code_mode_host::protocol::journal::{CellJournal, JournalCommand};
    use code_mode_host::protocol::{CallId, CellId, JsonText};
    let mut changes = one_session("s1", value);
    let mut journal = CellJournal::start(
        "text(await tools.t()); text(await tools.t())".to_owned(),
        std::sync::Arc::from([]),
        std::sync::Arc::default(),
        7,
    );
    journal.issued = (1..=answers).map(|_| (9, "t".to_owned())).collect();
    journal.entered = (1..=answers)
        .map(|call| JournalCommand::ToolResult {
            call: CallId::new(call),
            result: Ok(JsonText::new(format!("{call}"))),
        })
        .collect();
    changes.sessions[0].state.cells = vec![code_mode_host::DurableCell {
        cell_id: CellId::new(1),
        journal,
        exec_call_id: None,
        in_flight: Vec::new(),
    }];
    changes
}

/// A journal step the store already has with another body (the cell's journal forked: a
/// second writer, or a store edited by hand) fails the whole commit with the forked
/// journal's error, nothing of it written (the stored value beside it stays as it was);
/// the commit is one query, and the step's own statement stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_step_the_store_has_with_another_body_fails_the_whole_commit() {
    let cluster = PgCluster::start();
    let keeper = open(&cluster.url, options()).expect("opens");
    keeper
        .write(with_cell(1, "\"one\""))
        .await
        .expect("the cell");
    keeper.write(with_cell(2, "\"two\"")).await.expect("a step");
    let seq = sql(&cluster.url, "SELECT max(seq) FROM code_mode_jsonl.growth")
        .expect("the step written")
        .parse::<i64>()
        .expect("a number");
    sql(
        &cluster.url,
        &format!(
            "INSERT INTO code_mode_jsonl.growth (session, cell, seq, body) \
             SELECT session, cell, {}, '\\x00'::bytea FROM code_mode_jsonl.growth LIMIT 1",
            seq + 1
        ),
    );
    let forked = keeper
        .write(with_cell(3, "\"three\""))
        .await
        .expect_err("the next step is in the store with another body");
    assert!(
        matches!(&forked, StateError::Write { detail, .. } if detail.contains("the cell's journal forked")),
        "{forked}"
    );
    assert_eq!(
        sql(
            &cluster.url,
            "SELECT json FROM code_mode_jsonl.stored WHERE session = 's1' AND key = 'k'"
        )
        .as_deref(),
        Some("\"two\""),
        "the failed commit wrote nothing"
    );
}

/// Text a client chooses (stored values' keys and JSON, a session's options, a call's
/// front id, an answer) goes into the one-query commit as literals: every character that
/// means something to SQL, read back byte for byte by the next process, on a connection
/// where backslashes are escapes (`standard_conforming_strings` off) as on one where not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_text_is_kept_byte_for_byte_in_the_one_query_commit() {
    use code_mode_host::protocol::{CallId, CellId, JsonText};
    use code_mode_host::state::{AnswerRecord, CallRecord};
    let cluster = PgCluster::start();
    sql(
        &cluster.url,
        "ALTER DATABASE postgres SET standard_conforming_strings = off",
    );
    let hostile = [
        "'",
        "\\",
        "\\'",
        "''",
        "'; DROP TABLE stored; --",
        "/* x */",
        "$$",
        "$q$",
        "U&'\\0041'",
        "E'\\x41'",
        "ünïcødé ☃ 𝄞",
        "\\x00ff",
        "a\nb\tc\r",
    ];
    let options = StoreOptions {
        replica: Some("pod-h".to_owned()),
        ..options()
    };
    let keeper = {
        let (url, options) = (cluster.url.clone(), options.clone());
        std::thread::spawn(move || Keeper::open_postgres(&url, "jsonl", options).map(|(k, _)| k))
            .join()
            .expect("the opening thread")
            .expect("opens")
    };
    let mut changes = one_session("s1", "\"plain\"");
    let record = &mut changes.sessions[0];
    record.options = hostile.concat();
    for (index, text) in hostile.iter().enumerate() {
        let json = serde_json::Value::String((*text).to_owned()).to_string();
        record.state.stored.insert(
            format!("{index}{text}"),
            std::sync::Arc::from(json.as_str()),
        );
    }
    changes.calls = vec![CallRecord {
        session: "s1".to_owned(),
        cell_id: CellId::new(1),
        call: CallId::new(1),
        front_id: hostile.concat(),
    }];
    let written = changes.sessions[0].clone();
    keeper.write(changes).await.expect("written");
    keeper
        .record_answer(AnswerRecord {
            session: "s1".to_owned(),
            cell_id: CellId::new(1),
            call: CallId::new(1),
            result: Ok(JsonText::new(
                serde_json::Value::String(hostile.concat()).to_string(),
            )),
        })
        .await
        .expect("the answer recorded");
    assert_eq!(
        sql(&cluster.url, "SELECT count(*) FROM code_mode_jsonl.stored").as_deref(),
        Some("14"),
        "every value is its own row"
    );
    drop(keeper);
    let (_again, saved) = {
        let url = cluster.url.clone();
        std::thread::spawn(move || Keeper::open_postgres(&url, "jsonl", options))
            .join()
            .expect("the opening thread")
            .expect("opens again")
    };
    let read = saved
        .sessions
        .iter()
        .find(|record| record.id == "s1")
        .expect("kept");
    assert_eq!(read.options, written.options);
    assert_eq!(read.state.stored, written.state.stored);
    assert_eq!(saved.calls[0].front_id, hostile.concat());
    assert_eq!(
        saved.answers[0].result.as_ref().map(JsonText::as_str).ok(),
        Some(
            serde_json::Value::String(hostile.concat())
                .to_string()
                .as_str()
        )
    );
}

/// A session this process holds is not taken again by a claim (a front asked for it on
/// another connection): taking it would bump its epoch under the live session and leave
/// two live sessions of one id writing the same rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_this_process_holds_is_not_claimed_again() {
    let cluster = PgCluster::start();
    let keeper = open(&cluster.url, options()).expect("opens");
    keeper
        .write(one_session("s1", "\"held\""))
        .await
        .expect("written");
    let claimed = keeper.claim("s1").await.expect("asked");
    assert!(matches!(claimed, Claimed::Absent), "{claimed:?}");
    keeper
        .write(one_session("s1", "\"still held\""))
        .await
        .expect("the live session writes on at its epoch");
    assert_eq!(
        sql(
            &cluster.url,
            "SELECT epoch FROM code_mode_jsonl.sessions WHERE id = 's1'"
        )
        .as_deref(),
        Some("1")
    );
}

/// Each process holds a liveness lock on its connection: while it lives, another asking
/// for its session hears `Live` at once (not `Held`, which it would wait out); once its
/// connection is gone (the process died), its session is `Held` until the lease runs out,
/// and once no lease of it runs, the next replica to advertise itself deletes its row from
/// `replicas`, keeping the live ones'. A clean stop deletes its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_replica_is_told_from_a_live_one_and_its_row_goes() {
    let cluster = PgCluster::start();
    let a = open(&cluster.url, options()).expect("A opens");
    let b = open(&cluster.url, options()).expect("B opens");
    a.write(one_session("s1", "\"A's\""))
        .await
        .expect("A writes");
    b.write(one_session("s2", "\"B's\""))
        .await
        .expect("B writes");
    a.advertise("http://a.test:1").await.expect("A says where");
    b.advertise("http://b.test:1").await.expect("B says where");
    let c = open(&cluster.url, options()).expect("C opens");
    let live = c.claim("s1").await.expect("asked");
    assert!(matches!(live, Claimed::Live), "A lives: {live:?}");
    // A's process dies: its keeper, and so its connection, ends.
    drop(a);
    let locks = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'";
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sql(&cluster.url, locks).as_deref() != Some("2") {
        assert!(
            std::time::Instant::now() < deadline,
            "A's connection never ended: {:?} liveness locks",
            sql(&cluster.url, locks)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dead = c.claim("s1").await.expect("asked");
    assert!(matches!(dead, Claimed::Held { .. }), "A died: {dead:?}");
    let live = c.claim("s2").await.expect("asked");
    assert!(matches!(live, Claimed::Live), "B lives: {live:?}");
    let rows = "SELECT string_agg(address, ' ' ORDER BY address) FROM code_mode_jsonl.replicas";
    assert_eq!(
        sql(&cluster.url, rows).as_deref(),
        Some("http://a.test:1 http://b.test:1")
    );
    // While a lease of A's runs, its row stays (a live replica's lock can be free for a
    // moment; its leases are what it renews).
    c.advertise("http://c.test:1").await.expect("C says where");
    assert_eq!(
        sql(&cluster.url, rows).as_deref(),
        Some("http://a.test:1 http://b.test:1 http://c.test:1")
    );
    sql(
        &cluster.url,
        "UPDATE code_mode_jsonl.sessions SET lease_until = 0 WHERE id = 's1'",
    );
    c.advertise("http://c.test:1").await.expect("C says where");
    assert_eq!(
        sql(&cluster.url, rows).as_deref(),
        Some("http://b.test:1 http://c.test:1"),
        "the dead replica's row went, the live one's stayed"
    );
    b.release_all().await.expect("B stops");
    assert_eq!(sql(&cluster.url, rows).as_deref(), Some("http://c.test:1"));
}
