//! The one place the two SQL dialects differ.
//!
//! Most statements are written once: both backends take `$1`-style
//! placeholders (sqlx binds SQLite's `$N` by number), portable `CASE`
//! instead of `max()`/`GREATEST()`, and `ON CONFLICT ... DO UPDATE`. The
//! [`with_pool!`] macro runs such a body once per backend, with the pool of
//! that backend bound, so one body serves both pool types.
//!
//! What is left differs in algorithm, not spelling, and is written twice, in
//! `sqlite.rs` and `postgres.rs`, behind the traits below:
//! - [`BulkWrites`]: many rows in one statement: SQLite binds chunks of
//!   `VALUES` (or one JSON array read with `json_each`), PostgreSQL binds one
//!   array per column and reads them with `UNNEST`.
//! - [`WritePool::begin_write`]: SQLite takes the write lock up front
//!   (`BEGIN IMMEDIATE`), PostgreSQL starts a plain transaction.
//! - report queries (`reports.rs`): SQLite packs rows into one JSON value,
//!   PostgreSQL streams them in binary.
//!
//! Small spelling differences are [`Dialect`] methods.

use std::future::Future;

use super::rows::{BatchRows, CloseById, ClosedInterval, DailyRows, LastRow, NewInterval};

/// Which SQL dialect a statement is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// SQLite 3.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

impl Dialect {
    /// `sqlite` or `postgres`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgres",
        }
    }

    /// One of two spellings of a statement.
    pub(crate) fn pick(self, sqlite: &'static str, postgres: &'static str) -> &'static str {
        match self {
            Dialect::Sqlite => sqlite,
            Dialect::Postgres => postgres,
        }
    }
}

/// Runs `$body` with `$pool` bound to the store's pool and `$dialect` to its
/// [`Dialect`]. The body is compiled once per backend, so it may use
/// anything both pool types offer (sqlx queries with `$N` placeholders,
/// [`WritePool`], [`BulkWrites`] on a connection).
macro_rules! with_pool {
    ($backend:expr, |$pool:ident, $dialect:ident| $body:expr) => {
        match $backend {
            $crate::store::Backend::Sqlite($pool) => {
                #[allow(unused_variables)]
                let $dialect = $crate::store::dialect::Dialect::Sqlite;
                $body
            }
            $crate::store::Backend::Postgres($pool) => {
                #[allow(unused_variables)]
                let $dialect = $crate::store::dialect::Dialect::Postgres;
                $body
            }
        }
    };
}

pub(crate) use with_pool;

/// A pool that can start a write transaction.
pub(crate) trait WritePool {
    /// The sqlx database.
    type Database: sqlx::Database;

    /// Starts a transaction that will write and goes from statement to
    /// statement at once (a history batch, a lease step, a claim). On
    /// PostgreSQL it may sit idle between statements for at most
    /// a second (`BEGIN_SHORT_WRITE` in `postgres.rs`).
    fn begin_write(
        &self,
    ) -> impl Future<Output = Result<sqlx::Transaction<'static, Self::Database>, sqlx::Error>> + Send;

    /// Starts a transaction that will write with long work of its own
    /// between statements (rebuilding the per-day totals, an import): no
    /// idle limit.
    fn begin_long_write(
        &self,
    ) -> impl Future<Output = Result<sqlx::Transaction<'static, Self::Database>, sqlx::Error>> + Send;
}

/// Begins a transaction (with `statement`, or `BEGIN`) on a connection of
/// `pool` that is not still inside an earlier one. A COMMIT that fails (a
/// full disk: `SQLITE_FULL`) can leave sqlx's transaction depth of the
/// connection above zero, and every later `begin` on it fails ("non-zero
/// transaction depth"): history would never be recorded again. Such a
/// connection is closed, and a fresh one taken.
pub(crate) async fn begin_on_clean_connection<DB: sqlx::Database>(
    pool: &sqlx::Pool<DB>,
    statement: Option<&'static str>,
) -> Result<sqlx::Transaction<'static, DB>, sqlx::Error> {
    use sqlx::TransactionManager;
    // Every connection of the pool may be stuck: one more try than it has.
    for _ in 0..=pool.options().get_max_connections() {
        let mut connection = pool.acquire().await?;
        if DB::TransactionManager::get_transaction_depth(&connection) == 0 {
            // `Transaction::begin` is how `Pool::begin_with` starts one on
            // an acquired connection.
            return sqlx::Transaction::begin(connection, statement.map(Into::into)).await;
        }
        tracing::warn!("a database connection was left inside a failed transaction; closing it");
        connection.close_on_drop();
    }
    pool.begin().await
}

/// Statements over many rows, bound as a whole (one round trip per batch,
/// not per row). Implemented on each backend's connection.
pub(crate) trait BulkWrites {
    /// Writes a history batch in the open transaction: the `bridge_meta`
    /// values `meta`, then the detail updates, closes and inserts of `rows`,
    /// in that order; the intervals it closed. On SQLite one round trip to
    /// the connection's thread.
    fn write_batch(
        &mut self,
        meta: &[(String, i64)],
        rows: &BatchRows<'_>,
    ) -> impl Future<Output = Result<Vec<ClosedInterval>, sqlx::Error>> + Send;

    /// Ends the open intervals of `agents` at `at` (never before their
    /// start); the intervals it closed.
    fn close_open_of(
        &mut self,
        agents: &[String],
        at: i64,
    ) -> impl Future<Output = Result<Vec<ClosedInterval>, sqlx::Error>> + Send;

    /// Ends intervals by row id; the intervals it closed.
    fn close_by_id(
        &mut self,
        rows: &[CloseById],
    ) -> impl Future<Output = Result<Vec<ClosedInterval>, sqlx::Error>> + Send;

    /// Of `agents`, those whose lease `bridge` holds now (by the database's
    /// clock), locked until the transaction ends so no other bridge takes
    /// them meanwhile. SQLite (one bridge per file) owns them all.
    fn owned_agents(
        &mut self,
        agents: &[&str],
        bridge: &str,
    ) -> impl Future<Output = Result<Vec<String>, sqlx::Error>> + Send;

    /// Inserts intervals.
    fn insert_intervals(
        &mut self,
        rows: &[NewInterval<'_>],
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// The latest interval (open or closed) of each of `agents` that has
    /// one, with the agent's latest seq (for resuming after a restart).
    fn latest_intervals(
        &mut self,
        agents: &[&str],
    ) -> impl Future<Output = Result<Vec<LastRow>, sqlx::Error>> + Send;

    /// Up to `limit` closed intervals with a row id above `after`, by id,
    /// with their ids (for rebuilding the per-day totals page by page).
    fn closed_intervals_after(
        &mut self,
        after: i64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<(i64, ClosedInterval)>, sqlx::Error>> + Send;

    /// Adds to the per-day totals (each key once in `rows`).
    fn add_daily(
        &mut self,
        rows: &DailyRows,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
}
