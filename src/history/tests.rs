//! Writer tests against real databases (both backends, as the store's
//! tests): commit before publish, increasing `seq`, and a batch kept and
//! retried while the database fails.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{ChangeQueue, HistoryWriter};
use crate::clock::Clock;
use crate::latest::{LatestStates, RecentEvents};
use crate::metrics::Metrics;
use crate::model::{Change, Previous, Status};
use crate::store::test_database::{backend_tests, Backend, TestDatabase};
use crate::store::tests::{agent, at, meta, raw, row, rows, state, wait_until, WAIT};
use crate::store::Store;
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

/// A writer on `store` with its queue.
struct RunningWriter {
    changes: ChangeQueue,
    latest: LatestStates,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl RunningWriter {
    /// Stops the writer and waits (at most [`WAIT`]) until it has.
    async fn stop(&mut self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, &mut self.task)
            .await
            .expect("the writer stops")
            .unwrap();
    }
}

fn spawn_writer(store: &Store, last_seq: u64, shutdown_timeout: Duration) -> RunningWriter {
    let changes = ChangeQueue::new();
    let latest = LatestStates::new([], last_seq);
    let metrics = Arc::new(Metrics::default());
    let shutdown = CancellationToken::new();
    let writer = HistoryWriter::new(
        store.clone(),
        changes.clone(),
        last_seq,
        latest.clone(),
        metrics.clone(),
        Clock::system(),
        shutdown_timeout,
    );
    let task = tokio::spawn(writer.run(shutdown.clone()));
    RunningWriter {
        changes,
        latest,
        metrics,
        shutdown,
        task,
    }
}

/// The events committed from `from` on, waiting until there are `count`.
async fn committed_events(latest: &LatestStates, from: u64, count: usize) -> Vec<(String, u64)> {
    let mut found = Vec::new();
    wait_until("events committed", || {
        found = match latest.events_from(from, usize::MAX) {
            RecentEvents::Here(events) => events
                .into_iter()
                .map(|event| (event.agent.to_string(), event.seq))
                .collect(),
            RecentEvents::InHistory => Vec::new(),
        };
        found.len() >= count
    })
    .await;
    found
}

async fn writer_commits_then_publishes_with_increasing_seq(database: &TestDatabase) {
    let store = database.open().await;
    // Seqs are taken from the database's counter, which a resume left at 10.
    raw(
        &store,
        "INSERT INTO bridge_meta (key, value) VALUES ('last_seq', 10)",
    )
    .await
    .unwrap();
    let mut writer = spawn_writer(&store, 10, Duration::from_secs(10));
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
        writer.changes.push(change);
    }
    let events = committed_events(&writer.latest, 11, 3).await;
    assert_eq!(
        events,
        [
            ("alice".to_owned(), 11),
            ("bob".to_owned(), 12),
            ("alice".to_owned(), 13),
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
    assert_eq!(writer.metrics.transitions.load(Ordering::Relaxed), 3);

    // Changes waiting at shutdown are still committed; then every open
    // interval is closed at the stop time.
    writer
        .changes
        .push(transition("bob", Status::Paused, 1, Status::Available, 3));
    writer.stop().await;
    assert_eq!(writer.latest.committed_seq(), 14);
    assert_eq!(store.last_seq().await.unwrap(), 14);
    assert!(meta(&store, "heartbeat_at").await.is_some());
    let after = store
        .intervals(None, at(-10), at(1_000_000_000))
        .await
        .unwrap();
    assert!(
        after.iter().all(|interval| interval.ended_at.is_some()),
        "history closed on a graceful stop: {after:?}"
    );
    store.close().await;
}

/// Installs a trigger that makes every insert into `intervals` fail; the
/// statements that remove it again.
async fn block_history(database: &TestDatabase, store: &Store) -> &'static [&'static str] {
    let (block, unblock): (&[&str], &'static [&'static str]) = match database.backend {
        Backend::Sqlite => (
            &[
                "CREATE TRIGGER test_block_history BEFORE INSERT ON intervals \
               BEGIN SELECT RAISE(ABORT, 'history blocked by test'); END",
            ],
            &["DROP TRIGGER test_block_history"],
        ),
        Backend::Postgres => (
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
        raw(store, sql).await.unwrap();
    }
    unblock
}

async fn writer_keeps_and_retries_a_batch_while_the_database_fails(database: &TestDatabase) {
    let store = database.open().await;
    let unblock = block_history(database, &store).await;
    let mut writer = spawn_writer(&store, 0, Duration::from_secs(10));
    writer.changes.push(transition(
        "alice",
        Status::Unknown,
        0,
        Status::Available,
        1,
    ));
    writer.changes.push(transition(
        "alice",
        Status::Available,
        1,
        Status::Ringing,
        2,
    ));
    let metrics = writer.metrics.clone();
    wait_until("two commits failed", || {
        metrics.history_errors.load(Ordering::Relaxed) >= 2
    })
    .await;
    assert_eq!(
        writer.latest.committed_seq(),
        0,
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
        .push(transition("alice", Status::Ringing, 2, Status::OnCall, 3));
    for sql in unblock {
        raw(&store, sql).await.unwrap();
    }
    let events = committed_events(&writer.latest, 1, 3).await;
    assert_eq!(
        events.iter().map(|(_, seq)| *seq).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(metrics.history_failure(), None, "/readyz is ready again");
    assert_eq!(
        rows(&store.intervals(None, at(0), at(100)).await.unwrap()),
        [
            row("alice", Status::Available, 1, Some(2), Some(1)),
            row("alice", Status::Ringing, 2, Some(3), Some(2)),
            row("alice", Status::OnCall, 3, None, Some(3)),
        ]
    );
    writer.stop().await;
    store.close().await;
}

/// A failure left behind by a batch that was then dropped (its agents taken
/// over by another bridge, see `CommitOutcome::Fenced`) is cleared by the
/// next stored batch: `/readyz` never keeps reporting a failure that is over.
async fn a_stored_batch_clears_a_failure_left_behind(database: &TestDatabase) {
    let store = database.open().await;
    let mut writer = spawn_writer(&store, 0, Duration::from_secs(10));
    writer
        .metrics
        .set_history_failure(Some("history database failed earlier".into()));
    writer.changes.push(transition(
        "alice",
        Status::Unknown,
        0,
        Status::Available,
        1,
    ));
    committed_events(&writer.latest, 1, 1).await;
    assert_eq!(writer.metrics.history_failure(), None);
    writer.stop().await;
    store.close().await;
}

/// With the database failing, a stop still ends within the shutdown
/// timeout (and says what it could not store), and the next start continues
/// after the last stored seq.
async fn shutdown_is_bounded_while_the_database_fails(database: &TestDatabase) {
    let store = database.open().await;
    block_history(database, &store).await;
    let writer = spawn_writer(&store, 5, Duration::from_millis(500));
    writer.changes.push(transition(
        "alice",
        Status::Unknown,
        0,
        Status::Available,
        1,
    ));
    let metrics = writer.metrics.clone();
    wait_until("a commit failed", || {
        metrics.history_errors.load(Ordering::Relaxed) >= 1
    })
    .await;
    writer.shutdown.cancel();
    tokio::time::timeout(WAIT, writer.task)
        .await
        .expect("the writer stops although the database keeps failing")
        .unwrap();
    assert_eq!(
        writer.latest.committed_seq(),
        5,
        "nothing claimed as stored"
    );
    store.close().await;
}

backend_tests!(
    writer_commits_then_publishes_with_increasing_seq,
    writer_keeps_and_retries_a_batch_while_the_database_fails,
    a_stored_batch_clears_a_failure_left_behind,
    shutdown_is_bounded_while_the_database_fails,
);
