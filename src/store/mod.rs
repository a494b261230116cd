//! The store: the one SQL layer. Every statement pbx2mqtt runs against its
//! database is in this module, for both backends (SQLite by default,
//! PostgreSQL at scale); no other module sees a pool, a row or a dialect.
//!
//! Layout:
//! - this file: [`Store`], opening and migrating, closing;
//! - `dialect.rs`: the differences between the two SQL dialects, the
//!   [`dialect::with_pool!`] macro for bodies written once;
//! - `rows.rs` (pure): what a batch of changes or a restart writes, and
//!   stored rows decoded back into values;
//! - `intervals.rs`: status history (record, heartbeat, resume, read);
//! - `delivery.rs`: which events the broker has acknowledged, and the
//!   events after that mark, rebuilt from history;
//! - `audit.rs`: the queue-command audit table;
//! - `cluster.rs`: several bridges on one database (heartbeats, agent
//!   leases); `transactions.rs`: queue commands claimed by transaction
//!   across bridges;
//! - `daily.rs`: per-day totals kept as history is written, for fast
//!   reports over whole days;
//! - `reports.rs`: the report queries;
//! - `sqlite.rs`, `postgres.rs`: only what differs in algorithm.
//!
//! Every time column is `BIGINT` milliseconds since the Unix epoch, UTC (see
//! `migrations/`). The store holds no business rules (those are in
//! `rows.rs`, the history writer and the report core) and never puts a
//! database password in an error or a log line.

mod audit;
mod checkpoint;
mod cluster;
mod daily;
mod delivery;
pub(crate) mod dialect;
mod error;
mod intervals;
mod open;
mod postgres;
mod reports;
mod rows;
mod sqlite;
mod sqlite_thread;
mod transactions;
mod url;

#[cfg(test)]
mod cluster_tests;
#[cfg(test)]
pub(crate) mod test_database;
#[cfg(test)]
pub(crate) mod tests;

pub use audit::{AuditEntry, AuditOutcome, AuditRecord, MAX_REQUEST_CHARS};
pub use checkpoint::{keep_wal_short, Checkpointed, CHECKPOINT_EVERY};
pub use cluster::{owner_of, ClusterTick};
pub use daily::{DailyParts, DailyTotals};
pub use error::StoreError;
pub use intervals::{assign_seqs, CommitOptions, CommitOutcome, ResumedAgents};
pub use reports::{ReportInterval, StartedCalls, StartedSum, SummaryParts, TimelineInterval};
pub use rows::{Handover, Interval};
pub use sqlite_thread::configure_sqlite;
pub use transactions::Claim;
pub use url::redact_url;

use self::dialect::with_pool;

/// The history database. Cheap to clone (the pools are shared handles).
#[derive(Debug, Clone)]
pub struct Store {
    /// The pool every write goes through but what `thread` takes on a
    /// writable SQLite file (the history writer's batches, heartbeats,
    /// acknowledged mark and closing at a stop): PostgreSQL's history, the
    /// history's start-up bursts (resume, take-over, the per-day rebuild), a
    /// cluster member's leaving, audit, leases, claims, migrations, and the
    /// readiness checks.
    writer: Backend,
    /// The pool reports and the HTTP API read with (read-only connections
    /// on SQLite), so a long report never delays a history batch.
    reader: Backend,
    /// On a writable SQLite file, the history writer's own connection on a
    /// thread of its own: batches, heartbeats, the acknowledged mark and a
    /// stop's closing of the history, each in one hand-over
    /// (`sqlite_thread.rs`). One connection, so every
    /// batch finds its page cache warm: two connections taking turns would
    /// each find its cache emptied by the other's last commit and read the
    /// pages back. `None` on PostgreSQL.
    thread: Option<std::sync::Arc<sqlite_thread::SqliteThread>>,
    /// The time zone of the per-day totals this store keeps as it writes
    /// (see `daily.rs`); `None` keeps none.
    daily: Option<chrono_tz::Tz>,
}

/// The pool of one backend.
#[derive(Debug, Clone)]
pub(crate) enum Backend {
    /// An SQLite file in WAL mode with `synchronous=FULL`.
    Sqlite(sqlx::SqlitePool),
    /// A PostgreSQL database.
    Postgres(sqlx::PgPool),
}

impl Store {
    /// The backend's name, for logs: `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        with_pool!(&self.writer, |_pool, dialect| dialect.name())
    }

    /// True on PostgreSQL (several bridges may share it); false on SQLite
    /// (one bridge per file).
    pub fn is_shared(&self) -> bool {
        matches!(self.writer, Backend::Postgres(_))
    }

    /// Answers when the database does (a trivial query).
    pub async fn ping(&self) -> Result<(), StoreError> {
        with_pool!(&self.writer, |pool, _d| {
            sqlx::query("SELECT 1").execute(pool).await.map(drop)
        })
        .map_err(StoreError::query("checking the database"))
    }

    /// Closes the pools, waiting for in-flight queries. SQLite checkpoints
    /// its WAL when the last connection closes.
    pub async fn close(self) {
        if let Some(thread) = &self.thread {
            thread.close().await;
        }
        with_pool!(self.reader, |pool, _d| pool.close().await);
        with_pool!(self.writer, |pool, _d| pool.close().await);
    }

    /// Runs one SQL statement as given, bypassing the store's API; the
    /// number of rows it changed. For tests and benchmarks that set up data
    /// or faults (triggers); the bridge never calls it.
    #[doc(hidden)]
    pub async fn execute_unchecked(&self, sql: &str) -> Result<u64, StoreError> {
        with_pool!(&self.writer, |pool, _d| {
            sqlx::query(sql)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })
        .map_err(StoreError::query("running a statement"))
    }

    /// Reads one integer with a statement given as is (see
    /// [`Store::execute_unchecked`]).
    #[doc(hidden)]
    pub async fn scalar_unchecked(&self, sql: &str) -> Result<Option<i64>, StoreError> {
        with_pool!(&self.writer, |pool, _d| {
            sqlx::query_scalar(sql).fetch_optional(pool).await
        })
        .map_err(StoreError::query("reading a value"))
    }

    /// The SQLite pool, for benchmarks that bulk-load test data with
    /// SQLite's own tools; `None` on PostgreSQL.
    #[doc(hidden)]
    pub fn sqlite_pool(&self) -> Option<&sqlx::SqlitePool> {
        match &self.writer {
            Backend::Sqlite(pool) => Some(pool),
            Backend::Postgres(_) => None,
        }
    }

    /// The PostgreSQL pool, for benchmarks that bulk-load test data with
    /// `COPY`; `None` on SQLite.
    #[doc(hidden)]
    pub fn postgres_pool(&self) -> Option<&sqlx::PgPool> {
        match &self.writer {
            Backend::Sqlite(_) => None,
            Backend::Postgres(pool) => Some(pool),
        }
    }
}
