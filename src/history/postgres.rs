//! The PostgreSQL backend of the history [`super::Store`]: executes the
//! plans of `plan.rs` with PostgreSQL SQL.
//!
//! Bulk rows travel as one array parameter per column, read with `UNNEST`,
//! so a batch of any size is a handful of statements. No business rules
//! here: they live in `plan.rs`.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::model::AgentId;

use super::plan::{plan_resume, seq_from_db, seq_to_db, to_millis, BatchPlan, NewInterval};
use super::store::{interval_from_row, open_interval_from_row, Interval, Resume, StoreError};

/// New details for open intervals, one array per column.
const UPDATE_DETAILS: &str = "UPDATE intervals AS i \
     SET reason = u.reason, extension_status = u.extension_status, destination = u.destination \
     FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[]) \
         AS u (agent, reason, extension_status, destination) \
     WHERE i.agent = u.agent AND i.ended_at IS NULL";

/// Ends open intervals (never before their start), one array per column.
const CLOSE_OPEN: &str = "UPDATE intervals AS i \
     SET ended_at = GREATEST(i.started_at, c.ended_at) \
     FROM UNNEST($1::text[], $2::bigint[]) AS c (agent, ended_at) \
     WHERE i.agent = c.agent AND i.ended_at IS NULL";

/// Inserts rows, one array per column.
const INSERT_INTERVALS: &str = "INSERT INTO intervals \
     (agent, status, reason, extension_status, destination, started_at, ended_at, seq) \
     SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
         $6::bigint[], $7::bigint[], $8::bigint[])";

/// Raises `last_seq`, never lowers it.
const RAISE_LAST_SEQ: &str = "INSERT INTO bridge_meta (key, value) VALUES ('last_seq', $1) \
     ON CONFLICT (key) DO UPDATE SET value = GREATEST(bridge_meta.value, excluded.value)";

/// Sets `heartbeat_at`.
const SET_HEARTBEAT: &str = "INSERT INTO bridge_meta (key, value) VALUES ('heartbeat_at', $1) \
     ON CONFLICT (key) DO UPDATE SET value = excluded.value";

/// Reads one `bridge_meta` value.
const READ_META: &str = "SELECT value FROM bridge_meta WHERE key = $1";

/// Every open interval, locked against a second bridge resuming at once.
const SELECT_OPEN: &str =
    "SELECT id, agent, status, reason, extension_status, destination, started_at, seq \
     FROM intervals WHERE ended_at IS NULL ORDER BY agent FOR UPDATE";

/// The seq of an agent's most recent interval that has one.
const LATEST_SEQ_OF_AGENT: &str = "SELECT seq FROM intervals \
     WHERE agent = $1 AND seq IS NOT NULL ORDER BY started_at DESC, id DESC LIMIT 1";

/// Ends intervals by id, one array per column.
const CLOSE_BY_ID: &str = "UPDATE intervals AS i SET ended_at = c.ended_at \
     FROM UNNEST($1::bigint[], $2::bigint[]) AS c (id, ended_at) WHERE i.id = c.id";

/// Intervals of everyone overlapping `[$2, $1)`. Agents sort by byte
/// value, as in SQLite, whatever the database's collation.
const SELECT_RANGE: &str =
    "SELECT agent, status, reason, extension_status, destination, started_at, ended_at, seq \
     FROM intervals WHERE started_at < $1 AND (ended_at IS NULL OR ended_at > $2) \
     ORDER BY agent COLLATE \"C\", started_at, id";

/// Intervals of agent `$3` overlapping `[$2, $1)`.
const SELECT_RANGE_OF_AGENT: &str =
    "SELECT agent, status, reason, extension_status, destination, started_at, ended_at, seq \
     FROM intervals WHERE agent = $3 AND started_at < $1 AND (ended_at IS NULL OR ended_at > $2) \
     ORDER BY agent COLLATE \"C\", started_at, id";

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

/// Text as PostgreSQL accepts it: `text` cannot hold NUL, and a value it
/// rejects would fail the batch on every retry, so NUL becomes U+FFFD.
fn pg_text(text: Option<&str>) -> Option<Cow<'_, str>> {
    text.map(|text| {
        if text.contains('\0') {
            Cow::Owned(text.replace('\0', "\u{fffd}"))
        } else {
            Cow::Borrowed(text)
        }
    })
}

/// One text column of many rows, ready to bind as `text[]`.
fn pg_texts<'a, T>(
    rows: &'a [T],
    column: impl Fn(&'a T) -> Option<&'a str>,
) -> Vec<Option<Cow<'a, str>>> {
    rows.iter().map(|row| pg_text(column(row))).collect()
}

/// Inserts rows in the open transaction.
async fn insert_rows(
    connection: &mut sqlx::PgConnection,
    rows: &[NewInterval<'_>],
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(INSERT_INTERVALS)
        .bind(rows.iter().map(|row| row.agent).collect::<Vec<_>>())
        .bind(rows.iter().map(|row| row.status).collect::<Vec<_>>())
        .bind(pg_texts(rows, |row| row.reason))
        .bind(pg_texts(rows, |row| row.extension_status))
        .bind(pg_texts(rows, |row| row.destination))
        .bind(rows.iter().map(|row| row.started_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|row| row.ended_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|row| row.seq).collect::<Vec<_>>())
        .execute(connection)
        .await
        .map_err(StoreError::query("inserting intervals"))?;
    Ok(())
}

/// Executes a batch plan in one transaction.
pub(crate) async fn record(
    pool: &PgPool,
    plan: &BatchPlan<'_>,
    heartbeat_at: Option<DateTime<Utc>>,
) -> Result<(), StoreError> {
    let mut transaction = pool
        .begin()
        .await
        .map_err(StoreError::query("starting a history transaction"))?;
    if !plan.detail_updates.is_empty() {
        let updates = &plan.detail_updates;
        sqlx::query(UPDATE_DETAILS)
            .bind(
                updates
                    .iter()
                    .map(|update| update.agent)
                    .collect::<Vec<_>>(),
            )
            .bind(pg_texts(updates, |update| update.reason))
            .bind(pg_texts(updates, |update| update.extension_status))
            .bind(pg_texts(updates, |update| update.destination))
            .execute(&mut *transaction)
            .await
            .map_err(StoreError::query("updating open intervals"))?;
    }
    if !plan.closes.is_empty() {
        sqlx::query(CLOSE_OPEN)
            .bind(
                plan.closes
                    .iter()
                    .map(|close| close.agent)
                    .collect::<Vec<_>>(),
            )
            .bind(
                plan.closes
                    .iter()
                    .map(|close| close.ended_at)
                    .collect::<Vec<_>>(),
            )
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
pub(crate) async fn heartbeat(pool: &PgPool, at: DateTime<Utc>) -> Result<(), StoreError> {
    sqlx::query(SET_HEARTBEAT)
        .bind(to_millis(at))
        .execute(pool)
        .await
        .map_err(StoreError::query("storing the heartbeat"))?;
    Ok(())
}

/// Reads one `bridge_meta` value.
async fn read_meta(
    connection: &mut sqlx::PgConnection,
    key: &str,
) -> Result<Option<i64>, StoreError> {
    sqlx::query_scalar(READ_META)
        .bind(key)
        .fetch_optional(connection)
        .await
        .map_err(StoreError::query("reading bridge_meta"))
}

/// The stored `last_seq`.
pub(crate) async fn last_seq(pool: &PgPool) -> Result<u64, StoreError> {
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
    pool: &PgPool,
    agents: &[(AgentId, String)],
    now: DateTime<Utc>,
) -> Result<Resume, StoreError> {
    let mut transaction = pool
        .begin()
        .await
        .map_err(StoreError::query("starting the resume transaction"))?;
    let rows: Vec<OpenRow> = sqlx::query_as(SELECT_OPEN)
        .fetch_all(&mut *transaction)
        .await
        .map_err(StoreError::query("reading open intervals"))?;
    let heartbeat = read_meta(&mut transaction, "heartbeat_at").await?;
    let last_seq = read_meta(&mut transaction, "last_seq")
        .await?
        .map_or(0, seq_from_db);
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
    if !plan.closes.is_empty() {
        sqlx::query(CLOSE_BY_ID)
            .bind(plan.closes.iter().map(|close| close.id).collect::<Vec<_>>())
            .bind(
                plan.closes
                    .iter()
                    .map(|close| close.ended_at)
                    .collect::<Vec<_>>(),
            )
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
    pool: &PgPool,
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
