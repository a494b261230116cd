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
//! Only the hot path comes here: batches, the heartbeat and the
//! acknowledged mark. Start-up, shutdown and rare paths (resume, closing
//! the history, `batch_landed`) keep sqlx's history pool; the statements
//! and the rows are the ones `sqlite.rs` and `rows.rs` give sqlx.
//! A job handed over always runs to its end (commit or rollback), even if
//! the caller stopped waiting for it.

use std::path::Path;
use std::sync::{mpsc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use super::rows::ClosedInterval;
use super::url::redact_url;
use super::StoreError;

/// A job for the thread.
type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// The connection's settings (those of sqlx's history pool, `open.rs`).
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
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
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
        let (jobs, receive) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("pbx2mqtt-history".into())
            .spawn(move || {
                let mut connection = connection;
                for job in receive {
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
        let sent = lock(&self.jobs).as_ref().is_some_and(|jobs| {
            jobs.send(Box::new(move |connection: &mut Connection| {
                let _ = answer.send(job(connection));
            }))
            .is_ok()
        });
        if !sent {
            return Err(gone());
        }
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

/// A poisoned lock only means a holder panicked; the value is still valid.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The error of a job the thread could not take.
fn gone() -> StoreError {
    StoreError::query("handing a batch to the history thread")(sqlx::Error::WorkerCrashed)
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
        .map_err(|error| ("committing a history batch", error))?;
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
