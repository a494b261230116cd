//! What only SQLite does differently: write transactions take the lock up
//! front (`BEGIN IMMEDIATE`, waiting up to the busy timeout instead of
//! failing when a read turns into a write); many rows travel as one JSON
//! array read with `json_each` (audit rows as chunks of bound `VALUES`), so
//! a batch of any size is one statement per kind; and a history batch's
//! statements go to the connection's thread together, in one round trip
//! ([`WRITE_BATCH`]). No business rules here.

use std::sync::LazyLock;

use sqlx::{SqliteConnection, SqlitePool};

use super::audit::{AuditRow, AuditWrites};
use super::dialect::{BulkWrites, WritePool};
use super::rows::{
    daily_rows, BatchRows, Close, CloseById, ClosedInterval, DailyRows, LastRow, NewInterval,
};
use super::sqlite_thread::{closed_rows, execute, StepError};

/// Starts a write transaction.
const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

/// New details for open intervals: `[[agent, reason, extension_status, destination], ...]`.
const UPDATE_DETAILS: &str = "UPDATE intervals \
     SET reason = u.value ->> 1, extension_status = u.value ->> 2, destination = u.value ->> 3 \
     FROM json_each($1) AS u \
     WHERE intervals.agent = u.value ->> 0 AND intervals.ended_at IS NULL";

/// Ends intervals by id: `[[id, ended_at], ...]`.
const CLOSE_BY_ID: &str = "UPDATE intervals SET ended_at = c.value ->> 1 \
     FROM json_each($1) AS c WHERE intervals.id = c.value ->> 0 \
     RETURNING intervals.agent, intervals.status, intervals.started_at, intervals.ended_at, \
     intervals.seq";

/// Adds to the time per day, agent and status: `[[day_start, agent, status, ms], ...]`.
const ADD_DAILY_STATUS: &str = "INSERT INTO daily_status (day_start, agent, status, ms) \
     SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3 FROM json_each($1) WHERE true \
     ON CONFLICT (day_start, agent, status) DO UPDATE SET ms = daily_status.ms + excluded.ms";

/// Adds to the calls per day and agent: `[[day_start, agent, calls,
/// call_ms, longest_ms], ...]`.
const ADD_DAILY_CALLS: &str =
    "INSERT INTO daily_calls (day_start, agent, calls, call_ms, longest_ms) \
     SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4 \
     FROM json_each($1) WHERE true \
     ON CONFLICT (day_start, agent) DO UPDATE SET calls = daily_calls.calls + excluded.calls, \
       call_ms = daily_calls.call_ms + excluded.call_ms, \
       longest_ms = max(daily_calls.longest_ms, excluded.longest_ms)";

/// Both per-day additions in one round trip to sqlx's connection thread:
/// [`ADD_DAILY_STATUS`] `$1`, [`ADD_DAILY_CALLS`] `$2`; an empty array adds
/// nothing.
static ADD_DAILY: LazyLock<String> =
    LazyLock::new(|| numbered(&[ADD_DAILY_STATUS, ADD_DAILY_CALLS]));

/// Sets `bridge_meta` values: `[[key, value], ...]`.
const SET_METAS: &str = "INSERT INTO bridge_meta (key, value) \
     SELECT value ->> 0, value ->> 1 FROM json_each($1) WHERE true \
     ON CONFLICT (key) DO UPDATE SET value = excluded.value";

/// Ends open intervals, never before their start: `[[agent, ended_at], ...]`.
const CLOSE_OPEN: &str =
    "UPDATE intervals SET ended_at = max(intervals.started_at, c.value ->> 1) \
     FROM json_each($1) AS c WHERE intervals.agent = c.value ->> 0 AND intervals.ended_at IS NULL \
     RETURNING intervals.agent, intervals.status, intervals.started_at, intervals.ended_at, \
     intervals.seq";

/// Inserts intervals in array order: `[[agent, status, reason,
/// extension_status, destination, started_at, ended_at, seq, bridge], ...]`.
const INSERT_INTERVALS: &str = "INSERT INTO intervals \
     (agent, status, reason, extension_status, destination, started_at, ended_at, seq, bridge) \
     SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, \
     value ->> 6, value ->> 7, value ->> 8 FROM json_each($1)";

/// The most rows one JSON array carries outside a history batch (an
/// import): a text of a few megabytes, far below SQLite's limit on a bound
/// value (a billion bytes, about six million interval rows).
const JSON_CHUNK_ROWS: usize = 50_000;

/// A history batch in one round trip to the connection's thread:
/// [`SET_METAS`] `$1`, [`UPDATE_DETAILS`] `$2`, [`CLOSE_OPEN`] `$3` (the
/// only statement returning rows) and [`INSERT_INTERVALS`] `$4`, in that
/// order. An empty array is a statement that does nothing, so the text is
/// the same for every batch and its statements are prepared once.
static WRITE_BATCH: LazyLock<String> =
    LazyLock::new(|| numbered(&[SET_METAS, UPDATE_DETAILS, CLOSE_OPEN, INSERT_INTERVALS]));

/// Statements of one parameter `$1` each, as one multi-statement query
/// whose statement `n` (from 1) takes `$n`.
fn numbered(statements: &[&str]) -> String {
    statements
        .iter()
        .enumerate()
        .map(|(index, statement)| statement.replace("$1", &format!("${}", index + 1)))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The latest interval of each agent in the JSON array `$1`, with the
/// agent's latest seq.
const LATEST_INTERVALS: &str = "SELECT i.id, i.agent, i.status, i.reason, i.extension_status, \
     i.destination, i.started_at, i.ended_at, \
     (SELECT s.seq FROM intervals s WHERE s.agent = i.agent AND s.seq IS NOT NULL \
       ORDER BY s.started_at DESC, s.id DESC LIMIT 1) \
     FROM json_each($1) AS a JOIN intervals i ON i.id = ( \
       SELECT b.id FROM intervals b WHERE b.agent = a.value \
       ORDER BY b.started_at DESC, b.id DESC LIMIT 1)";

/// Closed intervals after row id `$1`, by id, at most `$2`, packed as one
/// JSON array of `[id, agent, status, started_at, ended_at, seq]`.
const CLOSED_AFTER: &str = "SELECT json_group_array(json_array(id, agent, status, started_at, \
     ended_at, seq)) FROM (SELECT id, agent, status, started_at, ended_at, seq FROM intervals \
     WHERE id > $1 AND ended_at IS NOT NULL ORDER BY id LIMIT $2)";

/// The largest number of rows one multi-row audit statement carries (12
/// bound values per row: well under SQLite's limit of 32766).
const CHUNK_ROWS: usize = 256;

/// The row counts multi-row audit statements are built for: a batch is cut
/// into as many chunks of the largest size as fit, then of the next, so a
/// batch of `n` rows below [`CHUNK_ROWS`] takes one statement per bit set in
/// `n`, each a round trip to the connection's thread. Nine shapes, each
/// prepared once and kept in sqlx's statement cache.
const CHUNK_SIZES: [usize; 9] = [CHUNK_ROWS, 128, 64, 32, 16, 8, 4, 2, 1];

/// `rows` cut into chunks of the sizes in `CHUNK_SIZES`.
fn chunks<T>(mut rows: &[T]) -> Vec<&[T]> {
    let mut out = Vec::new();
    while !rows.is_empty() {
        // CHUNK_SIZES ends with 1, so a size always fits.
        let size = CHUNK_SIZES
            .into_iter()
            .find(|&size| size <= rows.len())
            .unwrap_or(1);
        let (chunk, rest) = rows.split_at(size);
        out.push(chunk);
        rows = rest;
    }
    out
}

/// `count` copies of a parenthesised group of `width` placeholders, comma
/// separated and numbered from 1.
fn placeholders(width: usize, count: usize) -> String {
    let mut out = String::with_capacity(count * width * 5);
    for row in 0..count {
        if row > 0 {
            out.push(',');
        }
        out.push('(');
        for column in 0..width {
            if column > 0 {
                out.push(',');
            }
            out.push('$');
            out.push_str(&(row * width + column + 1).to_string());
        }
        out.push(')');
    }
    out
}

/// The JSON parameter for a list of rows.
fn json_rows<T: serde::Serialize>(rows: &[T]) -> String {
    // Serialising tuples of strings, options and integers cannot fail.
    serde_json::to_string(rows).unwrap_or_else(|_| "[]".to_owned())
}

/// Closes as rows of [`CLOSE_OPEN`]'s parameter.
fn close_rows<'a>(rows: &[Close<'a>]) -> Vec<(&'a str, i64)> {
    rows.iter().map(|c| (c.agent, c.ended_at)).collect()
}

/// One row of [`INSERT_INTERVALS`]'s parameter.
type InsertRow<'a> = (
    &'a str,
    &'static str,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    i64,
    Option<i64>,
    Option<i64>,
    Option<&'a str>,
);

/// New intervals as rows of [`INSERT_INTERVALS`]'s parameter.
fn insert_rows<'a>(rows: &[NewInterval<'a>]) -> Vec<InsertRow<'a>> {
    rows.iter()
        .map(|r| {
            (
                r.agent,
                r.status,
                r.reason,
                r.extension_status,
                r.destination,
                r.started_at,
                r.ended_at,
                r.seq,
                r.bridge,
            )
        })
        .collect()
}

/// A history batch's parameters, in [`WRITE_BATCH`]'s order: the
/// `bridge_meta` values, detail updates, closes and inserts.
fn batch_parameters(meta: &[(String, i64)], rows: &BatchRows<'_>) -> [String; 4] {
    let details: Vec<_> = rows
        .detail_updates
        .iter()
        .map(|u| (u.agent, u.reason, u.extension_status, u.destination))
        .collect();
    [
        json_rows(meta),
        json_rows(&details),
        json_rows(&close_rows(&rows.closes)),
        json_rows(&insert_rows(&rows.inserts)),
    ]
}

/// The per-day additions' parameters: time per status, then calls.
fn daily_parameters(rows: &DailyRows) -> [String; 2] {
    let status: Vec<_> = rows
        .status
        .iter()
        .map(|r| (r.day_start, &r.agent, &r.status, r.ms))
        .collect();
    let calls: Vec<_> = rows
        .calls
        .iter()
        .map(|r| (r.day_start, &r.agent, r.calls, r.call_ms, r.longest_ms))
        .collect();
    [json_rows(&status), json_rows(&calls)]
}

/// Writes a history batch's rows on the history thread's connection
/// (`sqlite_thread.rs`): [`WRITE_BATCH`]'s statements one by one with the
/// same parameters, those with nothing to do skipped; the intervals closed.
pub(crate) fn write_batch_on(
    transaction: &rusqlite::Transaction<'_>,
    meta: &[(String, i64)],
    rows: &BatchRows<'_>,
) -> Result<Vec<ClosedInterval>, StepError> {
    const ACTION: &str = "writing a history batch";
    let [metas, details, closes, inserts] = batch_parameters(meta, rows);
    if !meta.is_empty() {
        execute(transaction, ACTION, SET_METAS, [metas])?;
    }
    if !rows.detail_updates.is_empty() {
        execute(transaction, ACTION, UPDATE_DETAILS, [details])?;
    }
    let closed = match rows.closes.is_empty() {
        true => Vec::new(),
        false => closed_rows(transaction, ACTION, CLOSE_OPEN, [closes])?,
    };
    if !rows.inserts.is_empty() {
        execute(transaction, ACTION, INSERT_INTERVALS, [inserts])?;
    }
    Ok(closed)
}

/// Adds the intervals `closed` to the per-day totals on the history
/// thread's connection, when the totals are kept (`daily`).
pub(crate) fn add_closed_daily_on(
    transaction: &rusqlite::Transaction<'_>,
    daily: Option<chrono_tz::Tz>,
    closed: &[ClosedInterval],
) -> Result<(), StepError> {
    let Some(tz) = daily else {
        return Ok(());
    };
    add_daily_on(transaction, &daily_rows(closed, tz))
}

/// Adds to the per-day totals on the history thread's connection.
fn add_daily_on(
    transaction: &rusqlite::Transaction<'_>,
    rows: &DailyRows,
) -> Result<(), StepError> {
    const ACTION: &str = "adding to the per-day totals";
    let [status, calls] = daily_parameters(rows);
    if !rows.status.is_empty() {
        execute(transaction, ACTION, ADD_DAILY_STATUS, [status])?;
    }
    if !rows.calls.is_empty() {
        execute(transaction, ACTION, ADD_DAILY_CALLS, [calls])?;
    }
    Ok(())
}

impl WritePool for SqlitePool {
    type Database = sqlx::Sqlite;

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        super::dialect::begin_on_clean_connection(self, Some(BEGIN_WRITE)).await
    }

    async fn begin_long_write(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        self.begin_write().await
    }
}

impl BulkWrites for SqliteConnection {
    async fn close_open_of(
        &mut self,
        agents: &[String],
        at: i64,
    ) -> Result<Vec<ClosedInterval>, sqlx::Error> {
        sqlx::query_as(
            "UPDATE intervals SET ended_at = max(started_at, $1) \
             WHERE ended_at IS NULL AND agent IN (SELECT value FROM json_each($2)) \
             RETURNING agent, status, started_at, ended_at, seq",
        )
        .bind(at)
        .bind(json_rows(agents))
        .fetch_all(&mut *self)
        .await
    }

    async fn close_by_id(
        &mut self,
        rows: &[CloseById],
    ) -> Result<Vec<ClosedInterval>, sqlx::Error> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<_> = rows.iter().map(|c| (c.id, c.ended_at)).collect();
        sqlx::query_as(CLOSE_BY_ID)
            .bind(json_rows(&rows))
            .fetch_all(self)
            .await
    }

    async fn owned_agents(
        &mut self,
        agents: &[&str],
        bridge: &str,
    ) -> Result<Vec<String>, sqlx::Error> {
        // One bridge per SQLite file in service; the same rule as on
        // PostgreSQL all the same (the write transaction holds the lock).
        let agents = serde_json::to_string(agents).unwrap_or_else(|_| "[]".to_owned());
        sqlx::query_scalar(
            "SELECT agent FROM agent_leases WHERE bridge = $2 \
             AND expires_at > CAST(unixepoch('subsec') * 1000 AS INTEGER) \
             AND agent IN (SELECT value FROM json_each($1))",
        )
        .bind(agents)
        .bind(bridge)
        .fetch_all(&mut *self)
        .await
    }

    async fn insert_intervals(&mut self, rows: &[NewInterval<'_>]) -> Result<(), sqlx::Error> {
        for chunk in rows.chunks(JSON_CHUNK_ROWS) {
            sqlx::query(INSERT_INTERVALS)
                .bind(json_rows(&insert_rows(chunk)))
                .execute(&mut *self)
                .await?;
        }
        Ok(())
    }

    async fn latest_intervals(&mut self, agents: &[&str]) -> Result<Vec<LastRow>, sqlx::Error> {
        sqlx::query_as(LATEST_INTERVALS)
            .bind(json_rows(agents))
            .fetch_all(&mut *self)
            .await
    }

    async fn closed_intervals_after(
        &mut self,
        after: i64,
        limit: usize,
    ) -> Result<Vec<(i64, ClosedInterval)>, sqlx::Error> {
        // Packed into one JSON value: sqlx hands SQLite rows over one at a
        // time at several microseconds each.
        let packed: String = sqlx::query_scalar(CLOSED_AFTER)
            .bind(after)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_one(&mut *self)
            .await?;
        let rows: Vec<(i64, String, String, i64, i64, Option<i64>)> =
            serde_json::from_str(&packed).map_err(|error| sqlx::Error::Decode(Box::new(error)))?;
        Ok(rows
            .into_iter()
            .map(|(id, agent, status, started_at, ended_at, seq)| {
                (
                    id,
                    ClosedInterval {
                        agent,
                        status,
                        started_at,
                        ended_at,
                        seq,
                    },
                )
            })
            .collect())
    }

    async fn add_daily(&mut self, rows: &DailyRows) -> Result<(), sqlx::Error> {
        let [status, calls] = daily_parameters(rows);
        sqlx::query(ADD_DAILY.as_str())
            .bind(status)
            .bind(calls)
            .execute(&mut *self)
            .await
            .map(drop)
    }

    async fn write_batch(
        &mut self,
        meta: &[(String, i64)],
        rows: &BatchRows<'_>,
    ) -> Result<Vec<ClosedInterval>, sqlx::Error> {
        let [metas, details, closes, inserts] = batch_parameters(meta, rows);
        // Only the closing statement returns rows.
        sqlx::query_as(WRITE_BATCH.as_str())
            .bind(metas)
            .bind(details)
            .bind(closes)
            .bind(inserts)
            .fetch_all(&mut *self)
            .await
    }
}

impl AuditWrites for SqliteConnection {
    async fn insert_audits(&mut self, rows: &[AuditRow<'_>]) -> Result<(), sqlx::Error> {
        for chunk in chunks(rows) {
            let sql = format!(
                "INSERT INTO command_audit (received_at, topic, request, action, queue, agent, \
                 extension, outcome, error_code, error, upstream_latency_ms, \"transaction\") \
                 VALUES {}",
                placeholders(12, chunk.len())
            );
            let mut query = sqlx::query(&sql);
            for row in chunk {
                let entry = row.entry;
                query = query
                    .bind(row.received_at)
                    .bind(&entry.topic)
                    .bind(row.request.as_ref())
                    .bind(&entry.action)
                    .bind(&entry.queue)
                    .bind(&entry.agent)
                    .bind(&entry.extension)
                    .bind(entry.outcome.as_str())
                    .bind(&entry.error_code)
                    .bind(&entry.error)
                    .bind(entry.upstream_latency_ms)
                    .bind(&entry.transaction);
            }
            query.execute(&mut *self).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_database::TestDatabase;

    /// The steps of a query plan.
    fn steps(rows: Vec<(i64, i64, i64, String)>) -> Vec<String> {
        rows.into_iter().map(|(_, _, _, detail)| detail).collect()
    }

    /// Checks that a plan looks agents up in the partial index of open
    /// intervals and never scans the (possibly huge) table.
    fn check(what: &str, plan: &[String]) {
        assert!(
            plan.iter()
                .any(|step| step.contains("intervals_one_open_per_agent")),
            "{what}: {plan:?}"
        );
        assert!(
            !plan.iter().any(|step| step.starts_with("SCAN intervals")),
            "{what}: {plan:?}"
        );
    }

    #[tokio::test]
    async fn bulk_updates_use_the_open_interval_index() {
        let database = TestDatabase::sqlite().await;
        let pool = database.store.sqlite_pool().unwrap();
        let close = sqlx::query_as(&format!("EXPLAIN QUERY PLAN {CLOSE_OPEN}"))
            .bind(r#"[["alice", 5], ["bob", 6]]"#)
            .fetch_all(pool)
            .await
            .unwrap();
        check("close", &steps(close));
        let details = sqlx::query_as(&format!("EXPLAIN QUERY PLAN {UPDATE_DETAILS}"))
            .bind(r#"[["alice", "why", null, null]]"#)
            .fetch_all(pool)
            .await
            .unwrap();
        check("details", &steps(details));
        database.finish().await;
    }

    #[test]
    fn a_history_batch_is_four_statements_each_with_its_own_parameter() {
        let statements: Vec<&str> = WRITE_BATCH.split("; ").collect();
        assert_eq!(statements.len(), 4, "{}", *WRITE_BATCH);
        for (index, statement) in statements.iter().enumerate() {
            let own = format!("${}", index + 1);
            assert!(statement.contains(&own), "{statement}");
            assert_eq!(statement.matches('$').count(), 1, "{statement}");
        }
        assert!(statements[2].contains("RETURNING"));
    }

    #[tokio::test]
    async fn a_history_batch_that_fails_midway_leaves_nothing_behind() {
        use sqlx::Connection;
        let database = TestDatabase::sqlite().await;
        let pool = database.store.sqlite_pool().unwrap();
        let mut connection = pool.acquire().await.unwrap();
        let open = |agent: &'static str, started_at: i64| NewInterval {
            agent,
            status: "available",
            reason: None,
            extension_status: None,
            destination: None,
            started_at,
            ended_at: None,
            seq: Some(started_at),
            bridge: None,
        };
        let first = BatchRows {
            inserts: vec![open("alice", 1)],
            ..BatchRows::default()
        };
        let mut transaction = connection.begin().await.unwrap();
        let closed = transaction
            .write_batch(&[("batch:test".to_owned(), 1)], &first)
            .await
            .unwrap();
        assert!(closed.is_empty());
        transaction.commit().await.unwrap();

        // Closes alice's interval, then opens two for bob: the second
        // breaks the one-open-interval-per-agent index in the last statement.
        let second = BatchRows {
            closes: vec![Close {
                agent: "alice",
                ended_at: 5,
            }],
            inserts: vec![open("bob", 5), open("bob", 6)],
            ..BatchRows::default()
        };
        let mut transaction = connection.begin().await.unwrap();
        let error = transaction
            .write_batch(&[("batch:test".to_owned(), 2)], &second)
            .await
            .expect_err("two open intervals for one agent");
        assert!(error.to_string().contains("UNIQUE"), "{error}");
        drop(transaction);

        let marker: i64 =
            sqlx::query_scalar("SELECT value FROM bridge_meta WHERE key = 'batch:test'")
                .fetch_one(&mut *connection)
                .await
                .unwrap();
        assert_eq!(marker, 1, "the failed batch's marker was rolled back");
        let rows: Vec<(String, Option<i64>)> =
            sqlx::query_as("SELECT agent, ended_at FROM intervals ORDER BY id")
                .fetch_all(&mut *connection)
                .await
                .unwrap();
        assert_eq!(
            rows,
            [("alice".to_owned(), None)],
            "alice still open, no bob"
        );

        // The same connection writes the next batch normally.
        let third = BatchRows {
            closes: vec![Close {
                agent: "alice",
                ended_at: 7,
            }],
            inserts: vec![open("bob", 7)],
            ..BatchRows::default()
        };
        let mut transaction = connection.begin().await.unwrap();
        let closed = transaction.write_batch(&[], &third).await.unwrap();
        transaction.commit().await.unwrap();
        assert_eq!(closed.len(), 1);
        assert_eq!((closed[0].agent.as_str(), closed[0].ended_at), ("alice", 7));
        drop(connection);
        database.finish().await;
    }

    #[test]
    fn batches_are_cut_into_few_statement_shapes() {
        let rows: Vec<usize> = (0..(2 * CHUNK_ROWS + 35)).collect();
        let sizes: Vec<usize> = chunks(&rows).iter().map(|chunk| chunk.len()).collect();
        assert_eq!(sizes, [CHUNK_ROWS, CHUNK_ROWS, 32, 2, 1]);
        let sizes: Vec<usize> = chunks(&rows[..15]).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, [8, 4, 2, 1], "one statement per bit of the count");
        assert!(chunks::<usize>(&[]).is_empty());
        assert_eq!(placeholders(2, 3), "($1,$2),($3,$4),($5,$6)");
    }
}
