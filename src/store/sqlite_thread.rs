//! The SQLite history writer's connection on a thread of its own, which
//! runs a whole history batch per hand-over.
//!
//! Through sqlx every statement is a round trip between the async writer
//! and sqlx's connection thread, `BEGIN` and `COMMIT` two each (each waits
//! for the other side's acknowledgement), every result wakes the writer
//! again, and the connection's return to the pool is one more: about a
//! dozen context switches per batch, the largest part of the bridge's CPU
//! at 5,000 agents (`docs/performance.md`, ninth round). Here the batch
//! (begin, the seqs, the rows, the per-day totals, commit) runs in one go
//! on this thread: one hand-over to it, one answer back.
//!
//! The history writer's jobs come here: batches, the heartbeat, the
//! acknowledged mark and a graceful stop's closing of the history.
//! Start-up and rare paths (resume, `batch_landed`, a cluster member's
//! leaving) go through sqlx's writing pool; the
//! statements and the rows are the ones `sqlite.rs` and `rows.rs` give
//! sqlx. The queue of jobs is bounded ([`JOBS_QUEUED`]): a caller waits for
//! room, as it would for a pool's connection.
//! A job handed over always runs to its end (commit or rollback), even if
//! the caller stopped waiting for it.

use std::path::Path;
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use super::rows::ClosedInterval;
use super::url::redact_url;
use super::StoreError;

/// A job for the thread.
type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// Jobs waiting for the thread, at most: the history writer hands over one
/// at a time (a batch, the heartbeat, the acknowledged mark or the stop's
/// closing of the history) and waits
/// for it; a few more cover jobs whose callers stopped waiting.
const JOBS_QUEUED: usize = 8;

/// The connection's settings (`open.rs`: those of the writing pool, but
/// the checkpoint only as a safety net).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ThreadSettings {
    /// How long a statement waits for another connection's lock.
    pub busy_timeout: Duration,
    /// The page cache, KiB.
    pub cache_kib: u32,
    /// WAL pages after which a commit checkpoints (a safety net).
    pub autocheckpoint_pages: u32,
    /// The WAL is truncated to this after a checkpoint.
    pub wal_size_limit_bytes: u64,
}

/// Handle to the thread; closing it ends the thread after its current job.
#[derive(Debug)]
pub(crate) struct SqliteThread {
    /// Where jobs go; `None` once closed.
    jobs: Mutex<Option<tokio::sync::mpsc::Sender<Job>>>,
    /// The thread, joined on close.
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// A failed step of a job: what it was doing and SQLite's error.
pub(crate) type StepError = (&'static str, rusqlite::Error);

impl SqliteThread {
    /// Opens the existing (migrated) database at `path` and starts the
    /// thread that owns the connection; errors name `url` (password
    /// removed).
    pub(crate) fn open(
        path: &Path,
        url: &str,
        settings: ThreadSettings,
    ) -> Result<Self, StoreError> {
        let failed = |detail: String| StoreError::Connect {
            url: redact_url(url),
            detail,
        };
        let connection = connect(path, settings)
            .map_err(|error| failed(format!("the history thread's connection: {error}")))?;
        let (jobs, mut receive) = tokio::sync::mpsc::channel::<Job>(JOBS_QUEUED);
        let thread = std::thread::Builder::new()
            .name("pbx2mqtt-history".into())
            .spawn(move || {
                let mut connection = connection;
                while let Some(job) = receive.blocking_recv() {
                    job(&mut connection);
                }
            })
            .map_err(|error| failed(format!("cannot start the history thread: {error}")))?;
        Ok(Self {
            jobs: Mutex::new(Some(jobs)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Runs `job` on the thread and waits for its answer. An error when the
    /// thread was closed (or died).
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Connection) -> T + Send + 'static,
    ) -> Result<T, StoreError> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        // A clone, so no lock is held while waiting for room.
        let jobs = lock(&self.jobs).clone().ok_or_else(gone)?;
        jobs.send(Box::new(move |connection: &mut Connection| {
            let _ = answer.send(job(connection));
        }))
        .await
        .map_err(|_| gone())?;
        answered.await.map_err(|_| gone())
    }

    /// Ends the thread after the job it runs, closing the connection, and
    /// waits for it.
    pub(crate) async fn close(&self) {
        drop(lock(&self.jobs).take());
        let thread = lock(&self.thread).take();
        if let Some(thread) = thread {
            // A job panicked: the connection is gone either way.
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// The connection, with the settings of sqlx's history pool.
fn connect(path: &Path, settings: ThreadSettings) -> Result<Connection, rusqlite::Error> {
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    connection.busy_timeout(settings.busy_timeout)?;
    connection.pragma_update(None, "foreign_keys", "ON")?;
    // journal_mode = WAL is the file's (set when sqlx's pools opened it).
    connection.pragma_update(None, "synchronous", "FULL")?;
    connection.pragma_update(None, "cache_size", -i64::from(settings.cache_kib))?;
    connection.pragma_update(None, "wal_autocheckpoint", settings.autocheckpoint_pages)?;
    connection.pragma_update(None, "journal_size_limit", settings.wal_size_limit_bytes)?;
    Ok(connection)
}

/// How many bytes of one statement's journal SQLite keeps in memory before
/// it moves it to a temporary file (SQLite's own default is 64 KiB). A
/// batch's closing and updating statements keep such a journal (the pages
/// they change, to undo the statement alone): at 5,000 agents polled every
/// second it passed 64 KiB in many commits, and each of those created a
/// file in the temp directory, wrote the journal there and unlinked it
/// (six file operations and a write per page; `docs/performance.md`, tenth
/// round). This is the most SQLite can take: it moves the journal to the
/// file a piece of this size per write, and its Unix file layer writes at
/// most 128 KiB − 1 bytes at a time (a larger setting fails the statement
/// with "database or disk is full"). A larger statement (the first batch
/// after a restart or an outage) still goes to a file: memory stays bounded.
const STATEMENT_JOURNAL_IN_MEMORY: i32 = 128 * 1024 - 1;

/// Sets SQLite's process-wide settings (a statement journal kept in memory up
/// to `STATEMENT_JOURNAL_IN_MEMORY`, 128 KiB − 1);
/// call from `main` before any database opens. False when SQLite had
/// already started, which leaves its defaults (as in tests that open a
/// store without `main`).
pub fn configure_sqlite() -> bool {
    // SAFETY: `sqlite3_config` takes an `int` after this option. It must
    // not race SQLite's initialisation in another thread: `main` calls it
    // before the runtime starts any thread or opens a connection. After
    // SQLite has initialised it is refused (SQLITE_MISUSE) and changes
    // nothing.
    let code = unsafe {
        rusqlite::ffi::sqlite3_config(
            rusqlite::ffi::SQLITE_CONFIG_STMTJRNL_SPILL,
            std::os::raw::c_int::from(STATEMENT_JOURNAL_IN_MEMORY),
        )
    };
    code == rusqlite::ffi::SQLITE_OK
}

/// A poisoned lock only means a holder panicked; the value is still valid.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The error of a job the thread could not take (closed, or a job
/// panicked).
fn gone() -> StoreError {
    StoreError::query("handing a write to the history thread")(sqlx::Error::WorkerCrashed)
}

/// A [`StepError`] as a store error.
pub(crate) fn step_error((action, source): StepError) -> StoreError {
    StoreError::Sqlite { action, source }
}

/// Runs `steps` in a write transaction (`BEGIN IMMEDIATE`) and commits;
/// on any error the transaction is rolled back and nothing stays.
pub(crate) fn in_write_transaction<T>(
    connection: &mut Connection,
    steps: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StepError>,
) -> Result<T, StepError> {
    let transaction = connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|error| ("starting a history transaction", error))?;
    let value = steps(&transaction)?;
    transaction
        .commit()
        .map_err(|error| ("committing a history transaction", error))?;
    Ok(value)
}

/// Runs one cached statement with `parameters`, as step `action`.
pub(crate) fn execute(
    transaction: &rusqlite::Transaction<'_>,
    action: &'static str,
    sql: &str,
    parameters: impl rusqlite::Params,
) -> Result<(), StepError> {
    transaction
        .prepare_cached(sql)
        .and_then(|mut statement| statement.execute(parameters))
        .map(drop)
        .map_err(|error| (action, error))
}

/// The closed intervals a closing statement returns (`agent, status,
/// started_at, ended_at, seq`).
pub(crate) fn closed_rows(
    transaction: &rusqlite::Transaction<'_>,
    action: &'static str,
    sql: &str,
    parameters: impl rusqlite::Params,
) -> Result<Vec<ClosedInterval>, StepError> {
    transaction
        .prepare_cached(sql)
        .and_then(|mut statement| {
            statement
                .query_map(parameters, |row| {
                    Ok(ClosedInterval {
                        agent: row.get(0)?,
                        status: row.get(1)?,
                        started_at: row.get(2)?,
                        ended_at: row.get(3)?,
                        seq: row.get(4)?,
                    })
                })?
                .collect()
        })
        .map_err(|error| (action, error))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::FutureExt as _;

    use crate::model::{Change, Previous, Status};
    use crate::store::test_database::TestDatabase;
    use crate::store::tests::{at, meta, state};
    use crate::store::{CommitOptions, CommitOutcome, Store};

    fn transition(id: &str, status: Status, since: i64) -> Change {
        Change {
            state: state(id, status, since, 0),
            previous: Some(Previous {
                status: Status::Unknown,
                since: at(0),
            }),
        }
    }

    fn options(batch_id: i64) -> CommitOptions<'static> {
        CommitOptions {
            bridge: "b1",
            fenced: false,
            batch_id,
            heartbeat_at: None,
        }
    }

    async fn commit(store: &Store, batch_id: i64, changes: &mut [Change]) -> u64 {
        match store.commit_changes(changes, &options(batch_id)).await {
            Ok(CommitOutcome::Stored { first_seq }) => first_seq,
            other => panic!("stored: {other:?}"),
        }
    }

    /// (agent, ended) of every interval, by id.
    async fn intervals(store: &Store) -> Vec<(String, bool)> {
        let mut rows: Vec<_> = store
            .intervals(None, at(0), at(1000))
            .await
            .unwrap()
            .into_iter()
            .map(|i| (i.agent.to_string(), i.ended_at.is_some()))
            .collect();
        rows.sort();
        rows
    }

    #[tokio::test]
    async fn a_batch_that_fails_on_the_thread_leaves_nothing_and_the_next_lands() {
        let database = TestDatabase::sqlite().await;
        let store = &database.store;
        assert!(
            store.thread.is_some(),
            "an SQLite store commits on its thread"
        );
        assert_eq!(
            commit(store, 1, &mut [transition("alice", Status::Available, 10)]).await,
            1
        );
        // The batch closes alice's interval, then fails inserting bob's.
        store
            .execute_unchecked(
                "CREATE TRIGGER refuse_bob BEFORE INSERT ON intervals WHEN NEW.agent = 'bob' \
                 BEGIN SELECT RAISE(ABORT, 'bob refused'); END",
            )
            .await
            .unwrap();
        let mut batch = [
            transition("alice", Status::Paused, 20),
            transition("bob", Status::Available, 21),
        ];
        let error = store
            .commit_changes(&mut batch, &options(2))
            .await
            .expect_err("the trigger refuses bob");
        let message = error.to_string();
        assert!(
            message.contains("writing a history batch") && message.contains("bob refused"),
            "{message}"
        );
        assert_eq!(store.batch_landed("b1", 2).await.unwrap(), None);
        assert_eq!(
            store.last_seq().await.unwrap(),
            1,
            "the seqs were rolled back"
        );
        assert_eq!(
            intervals(store).await,
            [("alice".to_owned(), false)],
            "alice still open, no bob"
        );

        // The thread and its connection carry on: the retry lands whole.
        store
            .execute_unchecked("DROP TRIGGER refuse_bob")
            .await
            .unwrap();
        assert_eq!(commit(store, 2, &mut batch).await, 2);
        assert_eq!([batch[0].state.seq, batch[1].state.seq], [2, 3]);
        assert_eq!(store.batch_landed("b1", 2).await.unwrap(), Some(2));
        assert_eq!(
            intervals(store).await,
            [
                ("alice".to_owned(), false),
                ("alice".to_owned(), true),
                ("bob".to_owned(), false)
            ]
        );
    }

    #[tokio::test]
    async fn a_batch_whose_caller_stopped_waiting_still_lands_whole() {
        let database = TestDatabase::sqlite().await;
        let store = &database.store;
        let mut batch = [
            transition("alice", Status::Available, 10),
            transition("bob", Status::Paused, 11),
        ];
        // Polled once (the batch is handed over), then dropped: as when the
        // shutdown deadline passes during a commit. (Should the thread have
        // answered within that one poll, the batch landed all the same.)
        let _ = store.commit_changes(&mut batch, &options(5)).now_or_never();
        // The writer's unknown-outcome check finds the whole batch.
        let mut landed = None;
        for _ in 0..500 {
            landed = store.batch_landed("b1", 5).await.unwrap();
            if landed.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(landed, Some(1));
        assert_eq!(store.last_seq().await.unwrap(), 2);
        assert_eq!(
            intervals(store).await,
            [("alice".to_owned(), false), ("bob".to_owned(), false)]
        );
    }

    #[tokio::test]
    async fn heartbeat_and_acked_mark_go_through_the_thread_and_a_closed_store_says_so() {
        let database = TestDatabase::sqlite().await;
        let store = database.store.clone();
        store.heartbeat(at(30)).await.unwrap();
        store.store_acked_seq("b1", 9).await.unwrap();
        store.store_acked_seq("b1", 4).await.unwrap();
        assert_eq!(
            meta(&store, "heartbeat_at").await,
            Some(at(30).timestamp_millis())
        );
        assert_eq!(meta(&store, "acked_seq").await, Some(9), "never lowered");

        let other = store.clone();
        store.close().await;
        let error = other
            .commit_changes(
                &mut [transition("alice", Status::Available, 40)],
                &options(1),
            )
            .await
            .expect_err("the store is closed");
        assert!(error.to_string().contains("history thread"), "{error}");
        let error = other.heartbeat(at(41)).await.expect_err("closed");
        assert!(error.to_string().contains("history thread"), "{error}");
    }

    #[tokio::test]
    async fn an_in_memory_store_has_no_thread_and_commits_through_sqlx() {
        // A second connection to `:memory:` would be another database.
        let store = Store::open("sqlite::memory:").await.unwrap();
        assert!(store.thread.is_none());
        assert_eq!(
            commit(&store, 1, &mut [transition("alice", Status::Available, 10)]).await,
            1
        );
        store.heartbeat(at(11)).await.unwrap();
        assert_eq!(intervals(&store).await, [("alice".to_owned(), false)]);
        assert_eq!(
            meta(&store, "heartbeat_at").await,
            Some(at(11).timestamp_millis())
        );
        // A stop's closing of the history too.
        assert_eq!(store.close_history(at(12)).await.unwrap(), 1);
        assert_eq!(intervals(&store).await, [("alice".to_owned(), true)]);
        assert_eq!(
            meta(&store, "heartbeat_at").await,
            Some(at(12).timestamp_millis())
        );
        store.close().await;
    }

    /// Set in the child process that [`statement_journals_stay_in_memory_up_to_128_kib`]
    /// starts: `configure` (call `configure_sqlite` first) or `default`.
    const JOURNAL_CHILD: &str = "PBX2MQTT_TEST_STATEMENT_JOURNAL";

    /// Whether one statement changing the open rows of `agents` agents
    /// (inside a transaction that wrote before it, as a batch does)
    /// created a file in `temp_dir`, SQLite's temp directory.
    fn statement_made_a_temp_file(
        connection: &rusqlite::Connection,
        temp_dir: &std::path::Path,
        agents: usize,
    ) -> bool {
        let modified = || std::fs::metadata(temp_dir).unwrap().modified().unwrap();
        let before = modified();
        // The directory's time has a tick's granularity, or a second's on a
        // file system that keeps whole seconds.
        let whole_seconds = before
            .duration_since(std::time::UNIX_EPOCH)
            .is_ok_and(|since| since.subsec_nanos() == 0);
        std::thread::sleep(Duration::from_millis(if whole_seconds {
            1_100
        } else {
            30
        }));
        let transaction = connection.unchecked_transaction().unwrap();
        transaction
            .execute("UPDATE meta SET value = value + 1", [])
            .unwrap();
        let closed = transaction
            .execute(
                "UPDATE open_rows SET ended_at = 1 WHERE agent < ?1 AND ended_at IS NULL",
                [agents as i64],
            )
            .unwrap();
        assert_eq!(closed, agents);
        transaction.rollback().unwrap();
        modified() != before
    }

    /// The child's side: a table whose rows fill about 18 to a page, like
    /// the intervals (a partial unique index on the open ones).
    fn journal_child(mode: &str) {
        if mode == "configure" {
            assert!(
                super::configure_sqlite(),
                "SQLite had already started in the child"
            );
        }
        let temp_dir = std::path::PathBuf::from(std::env::var("SQLITE_TMPDIR").unwrap());
        let dir = tempfile::tempdir().unwrap();
        let connection = rusqlite::Connection::open(dir.path().join("j.db")).unwrap();
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 CREATE TABLE meta (value INTEGER NOT NULL);
                 INSERT INTO meta VALUES (0);
                 CREATE TABLE open_rows (id INTEGER PRIMARY KEY, agent INTEGER NOT NULL,
                     ended_at INTEGER, pad BLOB) STRICT;
                 CREATE UNIQUE INDEX open_rows_one ON open_rows (agent) WHERE ended_at IS NULL;
                 WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 19999)
                 INSERT INTO open_rows (agent, pad) SELECT i, zeroblob(200) FROM n;",
            )
            .unwrap();
        // About 20 rows' pages and a few of the index (a busy tick's batch):
        // over SQLite's 64 KiB, under 128 KiB.
        let medium = statement_made_a_temp_file(&connection, &temp_dir, 360);
        // About 800 pages.
        let large = statement_made_a_temp_file(&connection, &temp_dir, 15_000);
        println!("journal child: medium={medium} large={large}");
    }

    #[test]
    fn statement_journals_stay_in_memory_up_to_128_kib() {
        if let Ok(mode) = std::env::var(JOURNAL_CHILD) {
            return journal_child(&mode);
        }
        // SQLite's settings are the process's, made before it starts: each
        // case runs this test again in a process of its own.
        let run = |mode: &str| {
            let temp_dir = tempfile::tempdir().unwrap();
            let output = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "store::sqlite_thread::tests::statement_journals_stay_in_memory_up_to_128_kib",
                    "--exact",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(JOURNAL_CHILD, mode)
                .env("SQLITE_TMPDIR", temp_dir.path())
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            assert!(
                output.status.success(),
                "{mode}: {stdout}{}",
                String::from_utf8_lossy(&output.stderr)
            );
            stdout
                .lines()
                .find_map(|line| line.split_once("journal child: ").map(|(_, found)| found))
                .unwrap_or_else(|| panic!("{mode}: the child did not run: {stdout}"))
                .to_owned()
        };
        // SQLite's default writes the medium statement's journal to a file
        // (so the check below can see one)...
        assert_eq!(run("default"), "medium=true large=true");
        // ... the bridge's setting keeps it in memory, and still spills a
        // large one.
        assert_eq!(run("configure"), "medium=false large=true");
    }
}
