//! Writer tests against real databases (both backends, as the store's
//! tests): commit before publish, increasing `seq`, and a batch kept and
//! retried while the database fails.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::HistoryWriter;
use crate::latest::LatestStates;
use crate::metrics::Metrics;
use crate::model::{Change, Committed, Previous, Status};
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
    let (block, unblock): (&[&str], &[&str]) = match database.backend {
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
    writer_commits_then_publishes_with_increasing_seq,
    writer_keeps_and_retries_a_batch_while_the_database_fails,
);
