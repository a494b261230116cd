//! Store and writer tests against real databases: an SQLite file in a
//! tempdir always, and the same suite against PostgreSQL when
//! `PBX2MQTT_TEST_POSTGRES_URL` is set, each test in a database of its own
//! (created fresh, dropped after) so tests run in parallel.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::config::default_reasons;
use crate::latest::LatestStates;
use crate::metrics::Metrics;
use crate::model::{AgentId, AgentReading, AgentState, Change, Committed, Previous, Status};
use crate::status::{unknown_state, Observation, Tracker};

use super::test_database::{backend_tests, Backend, TestDatabase};

/// How long a test waits for something that should happen at once.
const WAIT: Duration = Duration::from_secs(20);

/// Runs one SQL statement directly, bypassing the store's API.
async fn raw(store: &Store, sql: &str) -> Result<u64, sqlx::Error> {
    match store {
        Store::Sqlite(pool) => sqlx::query(sql)
            .execute(pool)
            .await
            .map(|done| done.rows_affected()),
        Store::Postgres(pool) => sqlx::query(sql)
            .execute(pool)
            .await
            .map(|done| done.rows_affected()),
    }
}

/// Reads one `bridge_meta` value directly.
async fn meta(store: &Store, key: &str) -> Option<i64> {
    let sql = format!("SELECT value FROM bridge_meta WHERE key = '{key}'");
    match store {
        Store::Sqlite(pool) => sqlx::query_scalar(&sql).fetch_optional(pool).await.unwrap(),
        Store::Postgres(pool) => sqlx::query_scalar(&sql).fetch_optional(pool).await.unwrap(),
    }
}

/// A fixed instant plus `seconds`.
fn at(seconds: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 8, 0, 0).unwrap() + chrono::Duration::seconds(seconds)
}

fn agent(id: &str) -> AgentId {
    AgentId::parse(id).unwrap()
}

/// An agent's state entering `status` at `since`.
fn state(id: &str, status: Status, since: i64, seq: u64) -> AgentState {
    let mut state = unknown_state(agent(id), format!("Agent {id}"), at(since));
    state.status = status;
    state.on_a_call = status.on_a_call();
    state.available = Some(matches!(
        status,
        Status::Available | Status::Ringing | Status::OnCall | Status::Wrapup
    ));
    state.destination = Some("31201234567".into());
    state.extension_status = match status {
        Status::OnCall => Some("called".into()),
        Status::Ringing => Some("calling".into()),
        Status::Wrapup => Some("wrapup".into()),
        _ => None,
    };
    state.reason = (status == Status::Paused).then(|| "pause".into());
    state.seq = seq;
    state
}

/// What a test compares of an interval: agent, status, start and end (s
/// after `at(0)`), seq.
type Row = (String, Status, i64, Option<i64>, Option<u64>);

fn rows(intervals: &[Interval]) -> Vec<Row> {
    let seconds = |time: DateTime<Utc>| (time - at(0)).num_seconds();
    intervals
        .iter()
        .map(|interval| {
            (
                interval.agent.to_string(),
                interval.status,
                seconds(interval.started_at),
                interval.ended_at.map(seconds),
                interval.seq,
            )
        })
        .collect()
}

fn row(agent: &str, status: Status, start: i64, end: Option<i64>, seq: Option<u64>) -> Row {
    (agent.to_owned(), status, start, end, seq)
}

/// Waits (with a timeout) until `condition` holds.
async fn wait_until(what: &str, condition: impl Fn() -> bool) {
    tokio::time::timeout(WAIT, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting until {what}"));
}

async fn record_and_read_back(database: &TestDatabase) {
    let store = database.open().await;
    store
        .record(&[
            state("alice", Status::Available, 0, 1),
            state("bob", Status::Paused, 5, 2),
            state("alice", Status::OnCall, 10, 3),
        ])
        .await
        .unwrap();
    store
        .record(&[state("alice", Status::Wrapup, 70, 4)])
        .await
        .unwrap();
    let all = store.intervals(None, at(0), at(1000)).await.unwrap();
    assert_eq!(
        rows(&all),
        [
            row("alice", Status::Available, 0, Some(10), Some(1)),
            row("alice", Status::OnCall, 10, Some(70), Some(3)),
            row("alice", Status::Wrapup, 70, None, Some(4)),
            row("bob", Status::Paused, 5, None, Some(2)),
        ]
    );
    let call = &all[1];
    assert_eq!(call.extension_status.as_deref(), Some("called"));
    assert_eq!(call.destination.as_deref(), Some("31201234567"));
    assert_eq!(all[3].reason.as_deref(), Some("pause"));
    // Overlap with [from, to): touching the edges is not overlapping.
    let alice = store
        .intervals(Some(&agent("alice")), at(10), at(70))
        .await
        .unwrap();
    assert_eq!(
        rows(&alice),
        [row("alice", Status::OnCall, 10, Some(70), Some(3))]
    );
    let late = store.intervals(None, at(5000), at(6000)).await.unwrap();
    assert_eq!(
        rows(&late),
        [
            row("alice", Status::Wrapup, 70, None, Some(4)),
            row("bob", Status::Paused, 5, None, Some(2))
        ]
    );
    assert!(store
        .intervals(None, at(-100), at(0))
        .await
        .unwrap()
        .is_empty());
    store.close().await;
}

async fn schema_allows_one_open_interval_per_agent(database: &TestDatabase) {
    let store = database.open().await;
    store
        .record(&[state("alice", Status::Available, 0, 1)])
        .await
        .unwrap();
    let second_open = "INSERT INTO intervals (agent, status, started_at) VALUES ('alice', 'paused', 1772352000000)";
    let error = raw(&store, second_open).await.unwrap_err();
    let unique = error
        .as_database_error()
        .map(|error| error.is_unique_violation());
    assert_eq!(unique, Some(true), "{error}");
    // Closed intervals for the same agent are fine.
    let closed = "INSERT INTO intervals (agent, status, started_at, ended_at) VALUES ('alice', 'paused', 1, 2)";
    assert_eq!(raw(&store, closed).await.unwrap(), 1);
    store.close().await;
}

async fn last_seq_is_persisted_and_never_lowered(database: &TestDatabase) {
    let store = database.open().await;
    assert_eq!(store.last_seq().await.unwrap(), 0);
    store
        .record(&[
            state("alice", Status::Available, 0, 41),
            state("alice", Status::Paused, 1, 42),
        ])
        .await
        .unwrap();
    store.close().await;
    let store = database.open().await;
    assert_eq!(store.last_seq().await.unwrap(), 42);
    store
        .record(&[state("bob", Status::Available, 2, 7)])
        .await
        .unwrap();
    assert_eq!(store.last_seq().await.unwrap(), 42);
    let seqs: Vec<_> = store
        .intervals(None, at(0), at(10))
        .await
        .unwrap()
        .iter()
        .map(|interval| interval.seq)
        .collect();
    assert_eq!(seqs, [Some(41), Some(42), Some(7)]);
    store.close().await;
}

async fn resume_closes_at_heartbeat_records_the_gap_and_causes_no_transition(
    database: &TestDatabase,
) {
    let store = database.open().await;
    store
        .record(&[
            state("alice", Status::Available, 0, 1),
            state("alice", Status::OnCall, 10, 2),
            state("bob", Status::Paused, 20, 3),
        ])
        .await
        .unwrap();
    store.heartbeat(at(60)).await.unwrap();
    store.close().await; // As after kill -9: intervals still open.

    let store = database.open().await;
    let configured = [
        (agent("alice"), "Alice".to_owned()),
        (agent("bob"), "Bob".to_owned()),
        (agent("carol"), "Carol".to_owned()),
    ];
    let resumed = store.resume(&configured, at(300)).await.unwrap();
    assert_eq!(resumed.last_seq, 3);
    let alice = &resumed.states[0];
    assert_eq!(
        (
            alice.name.as_str(),
            alice.status,
            alice.since,
            alice.updated,
            alice.seq
        ),
        ("Alice", Status::OnCall, at(300), at(300), 2)
    );
    assert_eq!((alice.on_a_call, alice.available), (true, Some(true)));
    assert_eq!(alice.extension_status.as_deref(), Some("called"));
    assert_eq!(resumed.states[1].status, Status::Paused);
    assert_eq!(resumed.states[1].seq, 3);
    assert_eq!(
        resumed.states[2],
        unknown_state(agent("carol"), "Carol".into(), at(300))
    );
    assert_eq!(
        rows(&store.intervals(None, at(0), at(1000)).await.unwrap()),
        [
            row("alice", Status::Available, 0, Some(10), Some(1)),
            row("alice", Status::OnCall, 10, Some(60), Some(2)),
            row("alice", Status::Unknown, 60, Some(300), None),
            row("alice", Status::OnCall, 300, None, None),
            row("bob", Status::Paused, 20, Some(60), Some(3)),
            row("bob", Status::Unknown, 60, Some(300), None),
            row("bob", Status::Paused, 300, None, None),
        ]
    );
    assert_eq!(
        meta(&store, "heartbeat_at").await,
        Some(at(300).timestamp_millis())
    );

    // The first poll after the restart finds the same status: no transition.
    let mut tracker = Tracker::new(resumed.states.clone(), default_reasons(), 3);
    let same_call = AgentReading {
        available: true,
        reason: String::new(),
        destination: Some("31201234567".into()),
        extension_status: Some("called".into()),
    };
    assert_eq!(
        tracker.observe(&agent("alice"), Observation::Reading(same_call), at(301)),
        None
    );

    // The next real transition ends the resumed interval.
    store
        .record(&[state("alice", Status::Wrapup, 400, 4)])
        .await
        .unwrap();
    let alice = store
        .intervals(Some(&agent("alice")), at(300), at(1000))
        .await
        .unwrap();
    assert_eq!(
        rows(&alice),
        [
            row("alice", Status::OnCall, 300, Some(400), None),
            row("alice", Status::Wrapup, 400, None, Some(4)),
        ]
    );
    store.close().await;
}

async fn resume_closes_removed_agents_and_continues_unknown(database: &TestDatabase) {
    let store = database.open().await;
    store
        .record(&[
            state("gone", Status::Available, 0, 1),
            state("lost", Status::Unknown, 5, 2),
        ])
        .await
        .unwrap();
    store.heartbeat(at(30)).await.unwrap();
    let configured = [(agent("lost"), "Lost".to_owned())];
    let resumed = store.resume(&configured, at(100)).await.unwrap();
    assert_eq!(resumed.states.len(), 1);
    let lost = &resumed.states[0];
    assert_eq!(
        (lost.status, lost.since, lost.seq, lost.available),
        (Status::Unknown, at(5), 2, None)
    );
    assert_eq!(
        rows(&store.intervals(None, at(0), at(1000)).await.unwrap()),
        [
            row("gone", Status::Available, 0, Some(30), Some(1)),
            row("lost", Status::Unknown, 5, None, Some(2)),
        ]
    );
    // Resuming again with nothing recorded in between changes nothing but
    // the split at the restart.
    let again = store
        .resume(&[(agent("gone"), "Gone".to_owned())], at(200))
        .await
        .unwrap();
    assert_eq!(again.states[0].status, Status::Unknown);
    assert_eq!(
        again.states[0].seq, 0,
        "gone's history is closed; it starts over"
    );
    store.close().await;
}

async fn text_round_trips_and_nul_never_blocks_the_writer(database: &TestDatabase) {
    let store = database.open().await;
    let odd = "pauze \"koffie\" ☕ '; DROP TABLE intervals; -- \\ é";
    let mut paused = state("alice", Status::Unavailable, 0, 1);
    paused.reason = Some(odd.into());
    paused.destination = Some("<31&20>".into());
    let mut nul = state("bob", Status::Unavailable, 0, 2);
    nul.reason = Some("a\0b".into());
    store.record(&[paused, nul]).await.unwrap();
    let stored = store.intervals(None, at(0), at(10)).await.unwrap();
    assert_eq!(stored[0].reason.as_deref(), Some(odd));
    assert_eq!(stored[0].destination.as_deref(), Some("<31&20>"));
    let bob = stored[1].reason.as_deref().unwrap();
    assert!(bob == "a\0b" || bob == "a\u{fffd}b", "{bob:?}");
    store.close().await;
}

async fn readers_run_beside_the_writer(database: &TestDatabase) {
    let store = database.open().await;
    let writer_store = store.clone();
    let writing = tokio::spawn(async move {
        for batch in 0..40i64 {
            let states: Vec<_> = (0..250i64)
                .map(|index| {
                    let status = if batch % 2 == 0 {
                        Status::Available
                    } else {
                        Status::Paused
                    };
                    state(
                        &format!("agent-{index}"),
                        status,
                        batch,
                        (batch * 250 + index + 1) as u64,
                    )
                })
                .collect();
            writer_store.record(&states).await.unwrap();
        }
    });
    let mut reads = 0;
    while !writing.is_finished() {
        store.intervals(None, at(0), at(100)).await.unwrap();
        store.last_seq().await.unwrap();
        reads += 1;
    }
    writing.await.unwrap();
    assert!(reads > 0);
    assert_eq!(store.last_seq().await.unwrap(), 40 * 250);
    assert_eq!(
        store.intervals(None, at(0), at(100)).await.unwrap().len(),
        40 * 250
    );
    store.close().await;
}

/// A transition change (the writer assigns seq).
fn transition(id: &str, from: Status, from_since: i64, to: Status, since: i64) -> Change {
    Change {
        state: state(id, to, since, 0),
        previous: Some(Previous {
            status: from,
            since: at(from_since),
        }),
    }
}

/// A writer on `store` with its channels.
struct RunningWriter {
    changes: mpsc::Sender<Change>,
    committed: mpsc::Receiver<Committed>,
    latest: LatestStates,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn spawn_writer(store: &Store, last_seq: u64) -> RunningWriter {
    let (changes, changes_receiver) = mpsc::channel(64);
    let (committed_sender, committed) = mpsc::channel(64);
    let latest = LatestStates::default();
    let metrics = Arc::new(Metrics::default());
    let shutdown = CancellationToken::new();
    let writer = HistoryWriter::new(
        store.clone(),
        changes_receiver,
        committed_sender,
        last_seq,
        latest.clone(),
        metrics.clone(),
    );
    let task = tokio::spawn(writer.run(shutdown.clone()));
    RunningWriter {
        changes,
        committed,
        latest,
        metrics,
        shutdown,
        task,
    }
}

async fn receive(committed: &mut mpsc::Receiver<Committed>) -> Committed {
    tokio::time::timeout(WAIT, committed.recv())
        .await
        .expect("a committed change in time")
        .expect("the writer is running")
}

async fn writer_commits_then_publishes_with_increasing_seq(database: &TestDatabase) {
    let store = database.open().await;
    let mut writer = spawn_writer(&store, 10);
    let mut detail = state("alice", Status::Available, 0, 0);
    detail.extension_status = Some("idle".into());
    let changes = [
        transition("alice", Status::Unknown, -5, Status::Available, 0),
        Change {
            state: detail,
            previous: None,
        },
        transition("bob", Status::Unknown, -5, Status::Paused, 1),
        transition("alice", Status::Available, 0, Status::OnCall, 2),
    ];
    for change in changes {
        writer.changes.send(change).await.unwrap();
    }
    let mut seen = Vec::new();
    for _ in 0..4 {
        let committed = receive(&mut writer.committed).await;
        let event_seq = committed.event.as_ref().map(|event| event.seq);
        seen.push((
            committed.state.agent.to_string(),
            committed.state.seq,
            event_seq,
        ));
    }
    assert_eq!(
        seen,
        [
            ("alice".to_owned(), 11, Some(11)),
            ("alice".to_owned(), 11, None),
            ("bob".to_owned(), 12, Some(12)),
            ("alice".to_owned(), 13, Some(13)),
        ]
    );
    // Committed before published: the rows and the latest states are there.
    let stored = store.intervals(None, at(-10), at(100)).await.unwrap();
    assert_eq!(
        rows(&stored),
        [
            row("alice", Status::Available, 0, Some(2), Some(11)),
            row("alice", Status::OnCall, 2, None, Some(13)),
            row("bob", Status::Paused, 1, None, Some(12)),
        ]
    );
    assert_eq!(
        stored[0].extension_status.as_deref(),
        Some("idle"),
        "detail change stored in place"
    );
    assert_eq!(store.last_seq().await.unwrap(), 13);
    let alice = writer.latest.get(&agent("alice")).unwrap();
    assert_eq!((alice.status, alice.seq), (Status::OnCall, 13));
    assert_eq!(writer.latest.snapshot().len(), 2);
    assert_eq!(writer.metrics.history_records.load(Ordering::Relaxed), 4);
    assert_eq!(writer.metrics.transitions.load(Ordering::Relaxed), 3);

    // Changes queued at shutdown are still committed and published.
    writer
        .changes
        .send(transition("bob", Status::Paused, 1, Status::Available, 3))
        .await
        .unwrap();
    writer.shutdown.cancel();
    tokio::time::timeout(WAIT, writer.task)
        .await
        .unwrap()
        .unwrap();
    let last = receive(&mut writer.committed).await;
    assert_eq!((last.state.agent.as_str(), last.state.seq), ("bob", 14));
    assert_eq!(store.last_seq().await.unwrap(), 14);
    assert!(meta(&store, "heartbeat_at").await.is_some());
    store.close().await;
}

async fn writer_keeps_and_retries_a_batch_while_the_database_fails(database: &TestDatabase) {
    let store = database.open().await;
    let (block, unblock): (&[&str], &[&str]) = match store {
        Store::Sqlite(_) => (
            &[
                "CREATE TRIGGER test_block_history BEFORE INSERT ON intervals \
               BEGIN SELECT RAISE(ABORT, 'history blocked by test'); END",
            ],
            &["DROP TRIGGER test_block_history"],
        ),
        Store::Postgres(_) => (
            &[
                "CREATE FUNCTION test_block_history() RETURNS trigger LANGUAGE plpgsql \
                 AS $$ BEGIN RAISE EXCEPTION 'history blocked by test'; END $$",
                "CREATE TRIGGER test_block_history BEFORE INSERT ON intervals \
                 FOR EACH ROW EXECUTE FUNCTION test_block_history()",
            ],
            &["DROP TRIGGER test_block_history ON intervals"],
        ),
    };
    for sql in block {
        raw(&store, sql).await.unwrap();
    }
    let mut writer = spawn_writer(&store, 0);
    writer
        .changes
        .send(transition(
            "alice",
            Status::Unknown,
            0,
            Status::Available,
            1,
        ))
        .await
        .unwrap();
    writer
        .changes
        .send(transition(
            "alice",
            Status::Available,
            1,
            Status::Ringing,
            2,
        ))
        .await
        .unwrap();
    let metrics = writer.metrics.clone();
    wait_until("two commits failed", || {
        metrics.history_errors.load(Ordering::Relaxed) >= 2
    })
    .await;
    assert!(
        writer.committed.try_recv().is_err(),
        "nothing is published before it is stored"
    );
    assert!(store
        .intervals(None, at(0), at(100))
        .await
        .unwrap()
        .is_empty());
    // More changes arrive while failing; then the database recovers.
    writer
        .changes
        .send(transition("alice", Status::Ringing, 2, Status::OnCall, 3))
        .await
        .unwrap();
    for sql in unblock {
        raw(&store, sql).await.unwrap();
    }
    let mut seqs = Vec::new();
    for _ in 0..3 {
        seqs.push(receive(&mut writer.committed).await.state.seq);
    }
    assert_eq!(seqs, [1, 2, 3]);
    assert_eq!(
        rows(&store.intervals(None, at(0), at(100)).await.unwrap()),
        [
            row("alice", Status::Available, 1, Some(2), Some(1)),
            row("alice", Status::Ringing, 2, Some(3), Some(2)),
            row("alice", Status::OnCall, 3, None, Some(3)),
        ]
    );
    writer.shutdown.cancel();
    tokio::time::timeout(WAIT, writer.task)
        .await
        .unwrap()
        .unwrap();
    store.close().await;
}

backend_tests!(
    record_and_read_back,
    schema_allows_one_open_interval_per_agent,
    last_seq_is_persisted_and_never_lowered,
    resume_closes_at_heartbeat_records_the_gap_and_causes_no_transition,
    resume_closes_removed_agents_and_continues_unknown,
    writer_commits_then_publishes_with_increasing_seq,
    writer_keeps_and_retries_a_batch_while_the_database_fails,
    text_round_trips_and_nul_never_blocks_the_writer,
    readers_run_beside_the_writer,
);

/// A path to `target` relative to the working directory (`../..` up to the
/// root, then down), without changing the process-wide working directory.
fn relative_to_working_directory(target: &std::path::Path) -> std::path::PathBuf {
    let working = std::env::current_dir().unwrap();
    let mut relative = std::path::PathBuf::new();
    for _ in working.components().skip(1) {
        relative.push("..");
    }
    relative.join(target.strip_prefix("/").unwrap())
}

#[tokio::test]
async fn sqlite_file_and_directories_are_created_when_missing() {
    let dir = tempfile::tempdir().unwrap();
    let relative = relative_to_working_directory(&dir.path().join("nested/data/pbx2mqtt.db"));
    assert!(relative.is_relative());
    let store = Store::open(&format!("sqlite://{}", relative.display()))
        .await
        .unwrap();
    assert_eq!(store.backend(), "sqlite");
    store
        .record(&[state("alice", Status::Available, 0, 1)])
        .await
        .unwrap();
    store.close().await;
    assert!(dir.path().join("nested/data/pbx2mqtt.db").is_file());

    let absolute = dir.path().join("other/history.db");
    let store = Store::open(&format!("sqlite://{}", absolute.display()))
        .await
        .unwrap();
    assert_eq!(store.last_seq().await.unwrap(), 0);
    store.close().await;
    assert!(absolute.is_file());
}

#[tokio::test]
async fn sqlite_uses_wal_and_full_sync() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}/h.db", dir.path().display()))
        .await
        .unwrap();
    let Store::Sqlite(pool) = &store else {
        unreachable!()
    };
    let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(pool)
        .await
        .unwrap();
    let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(pool)
        .await
        .unwrap();
    let foreign_keys: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(pool)
        .await
        .unwrap();
    let cache_size: i64 = sqlx::query_scalar("PRAGMA cache_size")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(
        (journal.as_str(), synchronous, foreign_keys, cache_size),
        ("wal", 2, 1, -4096)
    );
    store.close().await;
}

#[tokio::test]
async fn open_errors_name_the_problem_and_never_the_password() {
    let error = Store::open("mysql://bridge:hunter2@db/history")
        .await
        .unwrap_err();
    assert!(
        matches!(error, StoreError::UnsupportedScheme { .. }),
        "{error}"
    );
    let message = error.to_string();
    assert!(
        message.contains("unsupported scheme") && !message.contains("hunter2"),
        "{message}"
    );

    // Nothing listens on port 1.
    let error = Store::open("postgres://bridge:hunter2@127.0.0.1:1/history")
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, StoreError::Connect { .. }), "{message}");
    assert!(
        !message.contains("hunter2") && message.contains("127.0.0.1:1"),
        "{message}"
    );
}

/// Throughput of `record` (not an assertion): `cargo test --release --lib
/// history::tests::bench -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, not a test"]
async fn bench_record_throughput() {
    const AGENTS: usize = 5_000;
    const INTERVALS: usize = 200_000;
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some(database) = TestDatabase::create(backend).await else {
            continue;
        };
        let store = database.open().await;
        let elapsed = bench_record(&store, AGENTS, INTERVALS).await.unwrap();
        println!(
            "{backend:?}: {INTERVALS} intervals for {AGENTS} agents in batches of {BATCH_MAX}: {:.0} ms, {:.0} intervals/s",
            elapsed.as_secs_f64() * 1000.0,
            INTERVALS as f64 / elapsed.as_secs_f64()
        );
        store.close().await;
        database.finish().await;
    }
}
