//! The SQLite backend of the history [`super::Store`]: executes the plans of
//! `plan.rs` with SQLite SQL.
//!
//! Every write transaction starts with `BEGIN IMMEDIATE`, so it takes the
//! write lock up front (waiting up to the busy timeout) instead of failing
//! when a read turns into a write. Bulk rows travel as one JSON array
//! parameter read with `json_each`, so a batch of any size is a handful of
//! statements. No business rules here: they live in `plan.rs`.

use chrono::{DateTime, Utc};
use sqlx::SqlitePool;

use crate::model::AgentId;

use super::plan::{
    plan_resume, seq_from_db, seq_to_db, to_millis, BatchPlan, CloseById, NewInterval,
};
use super::store::{interval_from_row, open_interval_from_row, Interval, Resume, StoreError};

/// Starts a write transaction.
const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

/// New details for open intervals: `[[agent, reason, extension_status, destination], ...]`.
const UPDATE_DETAILS: &str = "UPDATE intervals \
     SET reason = u.value ->> 1, extension_status = u.value ->> 2, destination = u.value ->> 3 \
     FROM json_each(?1) AS u \
     WHERE intervals.agent = u.value ->> 0 AND intervals.ended_at IS NULL";

/// Ends open intervals: `[[agent, ended_at], ...]`; never before their start.
const CLOSE_OPEN: &str = "UPDATE intervals \
     SET ended_at = max(intervals.started_at, c.value ->> 1) \
     FROM json_each(?1) AS c \
     WHERE intervals.agent = c.value ->> 0 AND intervals.ended_at IS NULL";

/// Inserts rows: `[[agent, status, reason, extension_status, destination, started_at, ended_at, seq], ...]`.
const INSERT_INTERVALS: &str = "INSERT INTO intervals \
     (agent, status, reason, extension_status, destination, started_at, ended_at, seq) \
     SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, value ->> 6, value ->> 7 \
     FROM json_each(?1) ORDER BY key";

/// Raises `last_seq`, never lowers it.
const RAISE_LAST_SEQ: &str = "INSERT INTO bridge_meta (key, value) VALUES ('last_seq', ?1) \
     ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)";

/// Sets `heartbeat_at`.
const SET_HEARTBEAT: &str = "INSERT INTO bridge_meta (key, value) VALUES ('heartbeat_at', ?1) \
     ON CONFLICT (key) DO UPDATE SET value = excluded.value";

/// Reads one `bridge_meta` value.
const READ_META: &str = "SELECT value FROM bridge_meta WHERE key = ?1";

/// Every open interval.
const SELECT_OPEN: &str =
    "SELECT id, agent, status, reason, extension_status, destination, started_at, seq \
     FROM intervals WHERE ended_at IS NULL ORDER BY agent";

/// The seq of an agent's most recent interval that has one.
const LATEST_SEQ_OF_AGENT: &str = "SELECT seq FROM intervals \
     WHERE agent = ?1 AND seq IS NOT NULL ORDER BY started_at DESC, id DESC LIMIT 1";

/// Ends one interval by id.
const CLOSE_BY_ID: &str = "UPDATE intervals SET ended_at = ?2 WHERE id = ?1";

/// Intervals of everyone overlapping `[?2, ?1)`.
const SELECT_RANGE: &str =
    "SELECT agent, status, reason, extension_status, destination, started_at, ended_at, seq \
     FROM intervals WHERE started_at < ?1 AND (ended_at IS NULL OR ended_at > ?2) \
     ORDER BY agent, started_at, id";

/// Intervals of agent `?3` overlapping `[?2, ?1)`.
const SELECT_RANGE_OF_AGENT: &str =
    "SELECT agent, status, reason, extension_status, destination, started_at, ended_at, seq \
     FROM intervals WHERE agent = ?3 AND started_at < ?1 AND (ended_at IS NULL OR ended_at > ?2) \
     ORDER BY agent, started_at, id";

/// A stored interval row, as selected by `SELECT_RANGE*`.
type IntervalRow = (
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
    Option<i64>,
    Option<i64>,
);

/// An open interval row, as selected by `SELECT_OPEN`.
type OpenRow = (
    i64,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
    Option<i64>,
);

/// The JSON parameter for a list of rows.
fn json_rows<T: serde::Serialize>(rows: &[T]) -> String {
    // Serialising tuples of strings, options and integers cannot fail.
    serde_json::to_string(rows).expect("history rows serialise to JSON")
}

/// Inserts rows in the open transaction.
async fn insert_rows(
    connection: &mut sqlx::SqliteConnection,
    rows: &[NewInterval<'_>],
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let rows: Vec<_> = rows
        .iter()
        .map(|row| {
            (
                row.agent,
                row.status,
                row.reason,
                row.extension_status,
                row.destination,
                row.started_at,
                row.ended_at,
                row.seq,
            )
        })
        .collect();
    sqlx::query(INSERT_INTERVALS)
        .bind(json_rows(&rows))
        .execute(connection)
        .await
        .map_err(StoreError::query("inserting intervals"))?;
    Ok(())
}

/// Executes a batch plan in one transaction.
pub(crate) async fn record(
    pool: &SqlitePool,
    plan: &BatchPlan<'_>,
    heartbeat_at: Option<DateTime<Utc>>,
) -> Result<(), StoreError> {
    let mut transaction = pool
        .begin_with(BEGIN_WRITE)
        .await
        .map_err(StoreError::query("starting a history transaction"))?;
    if !plan.detail_updates.is_empty() {
        let rows: Vec<_> = plan
            .detail_updates
            .iter()
            .map(|update| {
                (
                    update.agent,
                    update.reason,
                    update.extension_status,
                    update.destination,
                )
            })
            .collect();
        sqlx::query(UPDATE_DETAILS)
            .bind(json_rows(&rows))
            .execute(&mut *transaction)
            .await
            .map_err(StoreError::query("updating open intervals"))?;
    }
    if !plan.closes.is_empty() {
        let rows: Vec<_> = plan
            .closes
            .iter()
            .map(|close| (close.agent, close.ended_at))
            .collect();
        sqlx::query(CLOSE_OPEN)
            .bind(json_rows(&rows))
            .execute(&mut *transaction)
            .await
            .map_err(StoreError::query("closing open intervals"))?;
    }
    insert_rows(&mut transaction, &plan.inserts).await?;
    if let Some(max_seq) = plan.max_seq {
        sqlx::query(RAISE_LAST_SEQ)
            .bind(seq_to_db(max_seq))
            .execute(&mut *transaction)
            .await
            .map_err(StoreError::query("storing last_seq"))?;
    }
    if let Some(at) = heartbeat_at {
        sqlx::query(SET_HEARTBEAT)
            .bind(to_millis(at))
            .execute(&mut *transaction)
            .await
            .map_err(StoreError::query("storing the heartbeat"))?;
    }
    transaction
        .commit()
        .await
        .map_err(StoreError::query("committing a history batch"))
}

/// Stores the heartbeat.
pub(crate) async fn heartbeat(pool: &SqlitePool, at: DateTime<Utc>) -> Result<(), StoreError> {
    let mut transaction = pool
        .begin_with(BEGIN_WRITE)
        .await
        .map_err(StoreError::query("starting a heartbeat transaction"))?;
    sqlx::query(SET_HEARTBEAT)
        .bind(to_millis(at))
        .execute(&mut *transaction)
        .await
        .map_err(StoreError::query("storing the heartbeat"))?;
    transaction
        .commit()
        .await
        .map_err(StoreError::query("committing the heartbeat"))
}

/// Reads one `bridge_meta` value.
async fn read_meta(
    connection: &mut sqlx::SqliteConnection,
    key: &str,
) -> Result<Option<i64>, StoreError> {
    sqlx::query_scalar(READ_META)
        .bind(key)
        .fetch_optional(connection)
        .await
        .map_err(StoreError::query("reading bridge_meta"))
}

/// The stored `last_seq`.
pub(crate) async fn last_seq(pool: &SqlitePool) -> Result<u64, StoreError> {
    let mut connection = pool
        .acquire()
        .await
        .map_err(StoreError::query("reading last_seq"))?;
    Ok(read_meta(&mut connection, "last_seq")
        .await?
        .map_or(0, seq_from_db))
}

/// Resumes after a restart (see [`super::Store::resume`]).
pub(crate) async fn resume(
    pool: &SqlitePool,
    agents: &[(AgentId, String)],
    now: DateTime<Utc>,
) -> Result<Resume, StoreError> {
    let mut transaction = pool
        .begin_with(BEGIN_WRITE)
        .await
        .map_err(StoreError::query("starting the resume transaction"))?;
    let heartbeat = read_meta(&mut transaction, "heartbeat_at").await?;
    let last_seq = read_meta(&mut transaction, "last_seq")
        .await?
        .map_or(0, seq_from_db);
    let rows: Vec<OpenRow> = sqlx::query_as(SELECT_OPEN)
        .fetch_all(&mut *transaction)
        .await
        .map_err(StoreError::query("reading open intervals"))?;
    let mut open = Vec::with_capacity(rows.len());
    for (id, agent, status, reason, extension_status, destination, started_at, seq) in rows {
        let latest_seq = match seq {
            Some(seq) => Some(seq),
            None => sqlx::query_scalar(LATEST_SEQ_OF_AGENT)
                .bind(&agent)
                .fetch_optional(&mut *transaction)
                .await
                .map_err(StoreError::query("reading an agent's last seq"))?,
        };
        open.push(open_interval_from_row(
            id,
            &agent,
            &status,
            (reason, extension_status, destination),
            started_at,
            latest_seq,
        )?);
    }
    let plan = plan_resume(&open, agents, heartbeat, now)?;
    for CloseById { id, ended_at } in &plan.closes {
        sqlx::query(CLOSE_BY_ID)
            .bind(id)
            .bind(ended_at)
            .execute(&mut *transaction)
            .await
            .map_err(StoreError::query("closing open intervals"))?;
    }
    insert_rows(&mut transaction, &plan.inserts).await?;
    sqlx::query(SET_HEARTBEAT)
        .bind(to_millis(now))
        .execute(&mut *transaction)
        .await
        .map_err(StoreError::query("storing the heartbeat"))?;
    transaction
        .commit()
        .await
        .map_err(StoreError::query("committing the resume"))?;
    Ok(Resume {
        states: plan.states,
        last_seq,
    })
}

/// The intervals overlapping `[from, to)`.
pub(crate) async fn intervals(
    pool: &SqlitePool,
    agent: Option<&AgentId>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<Interval>, StoreError> {
    let query = match agent {
        Some(agent) => sqlx::query_as(SELECT_RANGE_OF_AGENT)
            .bind(to_millis(to))
            .bind(to_millis(from))
            .bind(agent.as_str()),
        None => sqlx::query_as(SELECT_RANGE)
            .bind(to_millis(to))
            .bind(to_millis(from)),
    };
    let rows: Vec<IntervalRow> = query
        .fetch_all(pool)
        .await
        .map_err(StoreError::query("reading intervals"))?;
    rows.into_iter()
        .map(
            |(agent, status, reason, extension_status, destination, started_at, ended_at, seq)| {
                interval_from_row(
                    agent,
                    status,
                    reason,
                    extension_status,
                    destination,
                    started_at,
                    ended_at,
                    seq,
                )
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The query plan of `sql` with one JSON parameter, one line per step.
    async fn query_plan(pool: &SqlitePool, sql: &str, parameter: &str) -> Vec<String> {
        let rows: Vec<(i64, i64, i64, String)> =
            sqlx::query_as(&format!("EXPLAIN QUERY PLAN {sql}"))
                .bind(parameter)
                .fetch_all(pool)
                .await
                .unwrap();
        rows.into_iter().map(|(_, _, _, detail)| detail).collect()
    }

    /// Bulk updates of open intervals must look agents up in the partial
    /// index, never scan the (possibly huge) table.
    #[tokio::test]
    async fn bulk_updates_use_the_open_interval_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = super::super::Store::open(&format!("sqlite://{}/h.db", dir.path().display()))
            .await
            .unwrap();
        let super::super::Store::Sqlite(pool) = &store else {
            unreachable!()
        };
        for (sql, parameter) in [
            (CLOSE_OPEN, r#"[["alice", 5]]"#),
            (UPDATE_DETAILS, r#"[["alice", "why", null, null]]"#),
        ] {
            let plan = query_plan(pool, sql, parameter).await;
            assert!(
                plan.iter()
                    .any(|step| step.contains("intervals_one_open_per_agent")),
                "{sql}: {plan:?}"
            );
            assert!(
                !plan.iter().any(|step| step.starts_with("SCAN intervals")),
                "{sql}: {plan:?}"
            );
        }
        store.close().await;
    }
}
