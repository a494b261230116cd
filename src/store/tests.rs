//! Store tests against real databases: an SQLite file in a tempdir always,
//! and the same suite against PostgreSQL when `PBX2MQTT_TEST_POSTGRES_URL`
//! is set, each test in a database of its own (created fresh, dropped after)
//! so tests run in parallel. The history fixtures here (`at`, `state`,
//! `rows`...) are shared with the writer's tests.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

use super::*;
use crate::config::default_reasons;
use crate::model::{AgentId, AgentReading, AgentState, Status};
use crate::status::{unknown_state, Observation, Tracker};

use super::test_database::{backend_tests, TestDatabase};

/// How long a test waits for something that should happen at once.
pub(crate) const WAIT: Duration = Duration::from_secs(20);

/// Runs one SQL statement directly, bypassing the store's API.
pub(crate) async fn raw(store: &Store, sql: &str) -> Result<u64, StoreError> {
    store.execute_unchecked(sql).await
}

/// Reads one `bridge_meta` value directly.
pub(crate) async fn meta(store: &Store, key: &str) -> Option<i64> {
    let sql = format!("SELECT value FROM bridge_meta WHERE key = '{key}'");
    store.scalar_unchecked(&sql).await.unwrap()
}

/// A fixed instant plus `seconds`.
pub(crate) fn at(seconds: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 8, 0, 0).unwrap() + chrono::Duration::seconds(seconds)
}

pub(crate) fn agent(id: &str) -> AgentId {
    AgentId::parse(id).unwrap()
}

/// An agent's state entering `status` at `since`.
pub(crate) fn state(id: &str, status: Status, since: i64, seq: u64) -> AgentState {
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
pub(crate) type Row = (String, Status, i64, Option<i64>, Option<u64>);

pub(crate) fn rows(intervals: &[Interval]) -> Vec<Row> {
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

pub(crate) fn row(
    agent: &str,
    status: Status,
    start: i64,
    end: Option<i64>,
    seq: Option<u64>,
) -> Row {
    (agent.to_owned(), status, start, end, seq)
}

/// Waits (with a timeout) until `condition` holds.
pub(crate) async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
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
    let unique = match &error {
        StoreError::Query { source, .. } => source
            .as_database_error()
            .map(|error| error.is_unique_violation()),
        _ => None,
    };
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
    let gone = &again.states[0];
    assert_eq!(
        (gone.status, gone.since, gone.seq),
        (Status::Unknown, at(30), 1),
        "gone's history was closed before the last stop: unknown since then"
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

/// The per-day totals kept while the store writes (batches that close
/// intervals across local midnight, a resume that closes and records the
/// gap) are exactly those a rebuild from the intervals gives.
async fn daily_totals_follow_every_write_and_match_a_rebuild(database: &TestDatabase) {
    let tz = chrono_tz::Europe::Amsterdam;
    let mut store = database.open().await;
    assert_eq!(
        store.keep_daily_totals(tz).await.unwrap(),
        DailyTotals::Rebuilt { intervals: 0 }
    );
    // at(0) is 09:00 local; 15 hours later it is midnight.
    let hour = 3600;
    store
        .record(&[
            state("alice", Status::Available, 0, 1),
            state("bob", Status::Paused, 10, 2),
            state("alice", Status::OnCall, 14 * hour, 3),
            state("alice", Status::Wrapup, 16 * hour, 4),
        ])
        .await
        .unwrap();
    store.heartbeat(at(17 * hour)).await.unwrap();
    let configured = [
        (agent("alice"), "Alice".to_owned()),
        (agent("bob"), "Bob".to_owned()),
    ];
    store.resume(&configured, at(20 * hour)).await.unwrap();
    let days = |day: i64| {
        let start = at(15 * hour + day * 24 * hour).timestamp_millis();
        (start - 24 * 3_600_000, start)
    };
    let periods = [days(0), days(1), days(2)];
    let sorted = |mut parts: DailyParts| {
        parts
            .time
            .sort_by(|a, b| (&a.agent, a.period, a.status).cmp(&(&b.agent, b.period, b.status)));
        parts
            .calls
            .sort_by(|a, b| (&a.agent, a.period).cmp(&(&b.agent, b.period)));
        parts.open.sort();
        parts
    };
    let kept = sorted(store.daily_parts(tz, &[], &periods).await.unwrap().unwrap());
    assert!(
        kept.time.iter().any(|sum| sum.agent.as_str() == "alice"
            && sum.status == Status::OnCall
            && sum.period == 0
            && sum.ms == 3_600_000),
        "the call's hour before midnight: {kept:?}"
    );
    assert_eq!(kept.calls.len(), 1, "one call, on the day it started");
    assert_eq!(kept.calls[0].call_ms, 2 * 3_600_000);
    assert_eq!(kept.open.len(), 2, "both agents resumed an open interval");
    store
        .execute_unchecked("DELETE FROM daily_rollup")
        .await
        .unwrap();
    let other = database.open().await;
    assert!(
        other
            .daily_parts(tz, &[], &periods)
            .await
            .unwrap()
            .is_none(),
        "no totals, no answer: the report reads the intervals"
    );
    assert!(matches!(
        store.keep_daily_totals(tz).await.unwrap(),
        DailyTotals::Rebuilt { intervals } if intervals > 0
    ));
    let rebuilt = sorted(store.daily_parts(tz, &[], &periods).await.unwrap().unwrap());
    assert_eq!(kept, rebuilt);

    // A graceful stop closes both open intervals (on SQLite on the history
    // thread) and adds them to the totals, as a rebuild would.
    assert_eq!(store.close_history(at(21 * hour)).await.unwrap(), 2);
    assert_eq!(
        meta(&store, "heartbeat_at").await,
        Some(at(21 * hour).timestamp_millis())
    );
    let closed = sorted(store.daily_parts(tz, &[], &periods).await.unwrap().unwrap());
    assert!(closed.open.is_empty(), "nothing open after the stop");
    assert_ne!(closed.time, rebuilt.time, "the last hour was added");
    store
        .execute_unchecked("DELETE FROM daily_rollup")
        .await
        .unwrap();
    assert!(matches!(
        store.keep_daily_totals(tz).await.unwrap(),
        DailyTotals::Rebuilt { intervals } if intervals > 0
    ));
    let rebuilt = sorted(store.daily_parts(tz, &[], &periods).await.unwrap().unwrap());
    assert_eq!(closed, rebuilt);
    store.close().await;
    other.close().await;
}

/// A committed batch leaves its marker (so a writer that lost the answer to
/// its COMMIT can ask whether it landed) and the heartbeat when due; a batch
/// with only detail changes updates the open interval in place.
async fn a_committed_batch_leaves_its_marker_and_heartbeat(database: &TestDatabase) {
    use crate::model::{Change, Previous};
    let store = database.open().await;
    let transition = |id: &str, status: Status, since: i64| Change {
        state: state(id, status, since, 0),
        previous: Some(Previous {
            status: Status::Unknown,
            since: at(0),
        }),
    };
    let options = |batch_id: i64, heartbeat: Option<i64>| CommitOptions {
        bridge: "b1",
        fenced: false,
        batch_id,
        heartbeat_at: heartbeat.map(at),
    };
    assert_eq!(store.batch_landed("b1", 7).await.unwrap(), None);

    let mut batch = vec![
        transition("alice", Status::Available, 10),
        transition("bob", Status::Paused, 11),
    ];
    let outcome = store
        .commit_changes(&mut batch, &options(7, Some(12)))
        .await
        .unwrap();
    let CommitOutcome::Stored { first_seq } = outcome else {
        panic!("stored: {outcome:?}");
    };
    assert_eq!(
        [batch[0].state.seq, batch[1].state.seq],
        [first_seq, first_seq + 1]
    );
    assert_eq!(store.batch_landed("b1", 7).await.unwrap(), Some(first_seq));
    assert_eq!(
        store.batch_landed("b1", 8).await.unwrap(),
        None,
        "not this batch"
    );
    assert_eq!(
        store.batch_landed("b2", 7).await.unwrap(),
        None,
        "another bridge"
    );
    assert_eq!(
        meta(&store, "heartbeat_at").await,
        Some(at(12).timestamp_millis())
    );

    // Details only (no transition): the marker says so with seq 0, the
    // heartbeat stays, and alice's open interval takes the new reason.
    let mut details = state("alice", Status::Available, 10, first_seq);
    details.reason = Some("new reason".into());
    let mut batch = vec![Change {
        state: details,
        previous: None,
    }];
    store
        .commit_changes(&mut batch, &options(8, None))
        .await
        .unwrap();
    assert_eq!(store.batch_landed("b1", 8).await.unwrap(), Some(0));
    assert_eq!(
        meta(&store, "heartbeat_at").await,
        Some(at(12).timestamp_millis())
    );
    let intervals = store.intervals(None, at(0), at(100)).await.unwrap();
    assert_eq!(intervals.len(), 2, "{intervals:?}");
    let alice = intervals
        .iter()
        .find(|i| i.agent.as_str() == "alice")
        .unwrap();
    assert_eq!(alice.reason.as_deref(), Some("new reason"));
    assert_eq!(alice.ended_at, None);
    store.close().await;
}

backend_tests!(
    a_committed_batch_leaves_its_marker_and_heartbeat,
    daily_totals_follow_every_write_and_match_a_rebuild,
    record_and_read_back,
    schema_allows_one_open_interval_per_agent,
    last_seq_is_persisted_and_never_lowered,
    resume_closes_at_heartbeat_records_the_gap_and_causes_no_transition,
    resume_closes_removed_agents_and_continues_unknown,
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

/// One SQLite setting of a connection of `pool`.
pub(crate) async fn pragma<T>(pool: &sqlx::SqlitePool, name: &str) -> T
where
    T: for<'r> sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite> + Send + Unpin,
{
    sqlx::query_scalar(&format!("PRAGMA {name}"))
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn sqlite_uses_wal_and_full_sync() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}/h.db", dir.path().display()))
        .await
        .unwrap();
    // The writing connections checkpoint on their own; 1 MiB of cache, WAL,
    // FULL, foreign keys, the WAL file cut back to 16 MiB after a burst.
    let Backend::Sqlite(pool) = &store.writer else {
        panic!("an SQLite store")
    };
    let journal: String = pragma(pool, "journal_mode").await;
    // The settings checked on both connections, after journal_mode.
    const SETTINGS: [&str; 5] = [
        "synchronous",
        "foreign_keys",
        "cache_size",
        "wal_autocheckpoint",
        "journal_size_limit",
    ];
    let mut settings = Vec::new();
    for name in SETTINGS {
        settings.push(pragma::<i64>(pool, name).await);
    }
    assert_eq!(
        (journal, settings),
        ("wal".to_owned(), vec![2, 1, -1024, 4000, 16 * 1024 * 1024])
    );
    // The history thread's connection, which commits every batch: the
    // same, with a checkpoint only as a safety net (`checkpoint.rs`
    // checkpoints off its path).
    let thread = store
        .thread
        .as_ref()
        .expect("an SQLite store's history thread");
    let on_thread = thread
        .run(|connection| {
            let journal: String =
                connection.query_row("PRAGMA journal_mode", [], |row| row.get(0))?;
            let mut settings = Vec::new();
            for name in SETTINGS {
                settings.push(
                    connection
                        .query_row(&format!("PRAGMA {name}"), [], |row| row.get::<_, i64>(0))?,
                );
            }
            Ok::<_, rusqlite::Error>((journal, settings))
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        on_thread,
        (
            "wal".to_owned(),
            vec![2, 1, -1024, 16_000, 16 * 1024 * 1024]
        )
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
