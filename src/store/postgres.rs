//! What only PostgreSQL does differently: many rows travel as one array per
//! column, read with `UNNEST`, so a batch of any size is one statement per
//! kind; `text` cannot hold NUL. No business rules here.

use std::borrow::Cow;

use sqlx::{PgConnection, PgPool};

use super::audit::{AuditRow, AuditWrites};
use super::dialect::{BulkWrites, WritePool};
use super::rows::{
    BatchRows, Close, CloseById, ClosedInterval, DailyRows, DetailUpdate, LastRow, NewInterval,
};

/// Starts a write transaction that the server ends when it sits idle
/// between two statements for a second: a bridge paused inside a batch
/// (SIGSTOP, a frozen VM, a swap storm) would otherwise hold its row locks
/// (the `last_seq` counter, its leases `FOR SHARE`) and stall every other
/// bridge's history and take-overs until it wakes. A second is shorter than
/// the shortest lease (`takeover_after` ≥ 2 s gives leases ≥ 1.33 s), so
/// the locks are gone before the leases expire; the paused bridge finds its
/// transaction rolled back when it wakes, which its writer treats as an
/// unknown outcome (it asks whether the batch landed). `SET LOCAL`: it ends
/// with the transaction, so a connection pooler never carries it to
/// another client, and long transactions (`begin_long_write`) have no
/// limit.
const BEGIN_SHORT_WRITE: &str = "BEGIN; SET LOCAL idle_in_transaction_session_timeout = 1000";

/// New details for open intervals, one array per column.
const UPDATE_DETAILS: &str = "UPDATE intervals AS i \
     SET reason = u.reason, extension_status = u.extension_status, destination = u.destination \
     FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[]) \
         AS u (agent, reason, extension_status, destination) \
     WHERE i.agent = u.agent AND i.ended_at IS NULL";

/// Sets `bridge_meta` values, one array per column.
const SET_METAS: &str = "INSERT INTO bridge_meta (key, value) \
     SELECT * FROM UNNEST($1::text[], $2::bigint[]) \
     ON CONFLICT (key) DO UPDATE SET value = excluded.value";

/// Ends open intervals (never before their start), one array per column.
const CLOSE_OPEN: &str = "UPDATE intervals AS i \
     SET ended_at = GREATEST(i.started_at, c.ended_at) \
     FROM UNNEST($1::text[], $2::bigint[]) AS c (agent, ended_at) \
     WHERE i.agent = c.agent AND i.ended_at IS NULL \
     RETURNING i.agent, i.status, i.started_at, i.ended_at, i.seq";

/// Ends intervals by id, one array per column.
const CLOSE_BY_ID: &str = "UPDATE intervals AS i SET ended_at = c.ended_at \
     FROM UNNEST($1::bigint[], $2::bigint[]) AS c (id, ended_at) WHERE i.id = c.id \
     RETURNING i.agent, i.status, i.started_at, i.ended_at, i.seq";

/// Adds to the time per day, agent and status, one array per column.
const ADD_DAILY_STATUS: &str = "INSERT INTO daily_status (day_start, agent, status, ms) \
     SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::bigint[]) \
     ON CONFLICT (day_start, agent, status) DO UPDATE SET ms = daily_status.ms + excluded.ms";

/// Adds to the calls per day and agent, one array per column.
const ADD_DAILY_CALLS: &str =
    "INSERT INTO daily_calls (day_start, agent, calls, call_ms, longest_ms) \
     SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[]) \
     ON CONFLICT (day_start, agent) DO UPDATE SET calls = daily_calls.calls + excluded.calls, \
       call_ms = daily_calls.call_ms + excluded.call_ms, \
       longest_ms = GREATEST(daily_calls.longest_ms, excluded.longest_ms)";

/// Inserts rows, one array per column.
const INSERT_INTERVALS: &str = "INSERT INTO intervals \
     (agent, status, reason, extension_status, destination, started_at, ended_at, seq, bridge) \
     SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
         $6::bigint[], $7::bigint[], $8::bigint[], $9::text[])";

/// The database's clock in ms since the epoch (every lease time is on it,
/// so bridges on hosts with different clocks agree).
#[allow(dead_code)]
pub(crate) const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// Of the agents in `$1`, those whose lease bridge `$2` holds now, locked
/// against a take-over until the transaction ends.
const OWNED_AGENTS: &str = "SELECT agent FROM agent_leases WHERE agent = ANY($1) AND bridge = $2 \
     AND expires_at > (extract(epoch from clock_timestamp()) * 1000)::bigint FOR SHARE";

/// The latest interval of each agent in `$1`, with the agent's latest
/// seq; locked against a second bridge resuming at the same time.
const LATEST_INTERVALS: &str = "SELECT i.id, i.agent, i.status, i.reason, i.extension_status, \
     i.destination, i.started_at, i.ended_at, \
     (SELECT s.seq FROM intervals s WHERE s.agent = i.agent AND s.seq IS NOT NULL \
       ORDER BY s.started_at DESC, s.id DESC LIMIT 1) \
     FROM unnest($1::text[]) AS a(agent) CROSS JOIN LATERAL ( \
       SELECT * FROM intervals b WHERE b.agent = a.agent \
       ORDER BY b.started_at DESC, b.id DESC LIMIT 1 FOR UPDATE) i";

/// Closed intervals after row id `$1`, by id, at most `$2`.
const CLOSED_AFTER: &str = "SELECT id, agent, status, started_at, ended_at, seq FROM intervals \
     WHERE id > $1 AND ended_at IS NOT NULL ORDER BY id LIMIT $2";

/// Inserts audit rows, one array per column.
const INSERT_AUDITS: &str = "INSERT INTO command_audit (received_at, topic, request, action, \
     queue, agent, extension, outcome, error_code, error, upstream_latency_ms, \"transaction\") \
     SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], \
       $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::bigint[], $12::text[])";

/// Text as PostgreSQL accepts it: `text` cannot hold NUL, and a value it
/// rejects would fail the batch on every retry, so NUL becomes U+FFFD.
pub(crate) fn pg_text(text: Option<&str>) -> Option<Cow<'_, str>> {
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

impl WritePool for PgPool {
    type Database = sqlx::Postgres;

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        super::dialect::begin_on_clean_connection(self, Some(BEGIN_SHORT_WRITE)).await
    }

    async fn begin_long_write(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        super::dialect::begin_on_clean_connection(self, None).await
    }
}

/// New details for agents' open intervals.
async fn update_details(
    connection: &mut PgConnection,
    rows: &[DetailUpdate<'_>],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(UPDATE_DETAILS)
        .bind(rows.iter().map(|u| u.agent).collect::<Vec<_>>())
        .bind(pg_texts(rows, |u| u.reason))
        .bind(pg_texts(rows, |u| u.extension_status))
        .bind(pg_texts(rows, |u| u.destination))
        .execute(connection)
        .await
        .map(drop)
}

/// Ends agents' open intervals (never before their start); the intervals
/// it closed.
async fn close_open(
    connection: &mut PgConnection,
    rows: &[Close<'_>],
) -> Result<Vec<ClosedInterval>, sqlx::Error> {
    let agents: Vec<&str> = rows.iter().map(|c| c.agent).collect();
    let ended_at: Vec<i64> = rows.iter().map(|c| c.ended_at).collect();
    close_by(connection, CLOSE_OPEN, agents, ended_at).await
}

/// Runs a closing statement `sql` over `keys` (agents or row ids) and their
/// `ended_at`, one array each; the intervals it closed.
async fn close_by<'q, K>(
    connection: &mut PgConnection,
    sql: &'static str,
    keys: Vec<K>,
    ended_at: Vec<i64>,
) -> Result<Vec<ClosedInterval>, sqlx::Error>
where
    Vec<K>: sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + 'q,
{
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as(sql)
        .bind(keys)
        .bind(ended_at)
        .fetch_all(connection)
        .await
}

impl BulkWrites for PgConnection {
    async fn write_batch(
        &mut self,
        meta: &[(String, i64)],
        rows: &BatchRows<'_>,
    ) -> Result<Vec<ClosedInterval>, sqlx::Error> {
        if !meta.is_empty() {
            sqlx::query(SET_METAS)
                .bind(meta.iter().map(|(key, _)| key.as_str()).collect::<Vec<_>>())
                .bind(meta.iter().map(|&(_, value)| value).collect::<Vec<_>>())
                .execute(&mut *self)
                .await?;
        }
        update_details(self, &rows.detail_updates).await?;
        let closed = close_open(self, &rows.closes).await?;
        self.insert_intervals(&rows.inserts).await?;
        Ok(closed)
    }

    async fn close_open_of(
        &mut self,
        agents: &[String],
        at: i64,
    ) -> Result<Vec<ClosedInterval>, sqlx::Error> {
        sqlx::query_as(
            "UPDATE intervals SET ended_at = GREATEST(started_at, $1) \
             WHERE ended_at IS NULL AND agent = ANY($2) \
             RETURNING agent, status, started_at, ended_at, seq",
        )
        .bind(at)
        .bind(agents)
        .fetch_all(&mut *self)
        .await
    }

    async fn close_by_id(
        &mut self,
        rows: &[CloseById],
    ) -> Result<Vec<ClosedInterval>, sqlx::Error> {
        let ids: Vec<i64> = rows.iter().map(|c| c.id).collect();
        let ended_at: Vec<i64> = rows.iter().map(|c| c.ended_at).collect();
        close_by(self, CLOSE_BY_ID, ids, ended_at).await
    }

    async fn owned_agents(
        &mut self,
        agents: &[&str],
        bridge: &str,
    ) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(OWNED_AGENTS)
            .bind(agents)
            .bind(bridge)
            .fetch_all(&mut *self)
            .await
    }

    async fn insert_intervals(&mut self, rows: &[NewInterval<'_>]) -> Result<(), sqlx::Error> {
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
            .bind(rows.iter().map(|row| row.bridge).collect::<Vec<_>>())
            .execute(self)
            .await
            .map(drop)
    }

    async fn latest_intervals(&mut self, agents: &[&str]) -> Result<Vec<LastRow>, sqlx::Error> {
        sqlx::query_as(LATEST_INTERVALS)
            .bind(agents)
            .fetch_all(&mut *self)
            .await
    }

    async fn closed_intervals_after(
        &mut self,
        after: i64,
        limit: usize,
    ) -> Result<Vec<(i64, ClosedInterval)>, sqlx::Error> {
        let rows: Vec<(i64, String, String, i64, i64, Option<i64>)> = sqlx::query_as(CLOSED_AFTER)
            .bind(after)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&mut *self)
            .await?;
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
        if !rows.status.is_empty() {
            let status = &rows.status;
            sqlx::query(ADD_DAILY_STATUS)
                .bind(status.iter().map(|r| r.day_start).collect::<Vec<_>>())
                .bind(status.iter().map(|r| r.agent.as_str()).collect::<Vec<_>>())
                .bind(status.iter().map(|r| r.status.as_str()).collect::<Vec<_>>())
                .bind(status.iter().map(|r| r.ms).collect::<Vec<_>>())
                .execute(&mut *self)
                .await?;
        }
        if !rows.calls.is_empty() {
            let calls = &rows.calls;
            sqlx::query(ADD_DAILY_CALLS)
                .bind(calls.iter().map(|r| r.day_start).collect::<Vec<_>>())
                .bind(calls.iter().map(|r| r.agent.as_str()).collect::<Vec<_>>())
                .bind(calls.iter().map(|r| r.calls).collect::<Vec<_>>())
                .bind(calls.iter().map(|r| r.call_ms).collect::<Vec<_>>())
                .bind(calls.iter().map(|r| r.longest_ms).collect::<Vec<_>>())
                .execute(&mut *self)
                .await?;
        }
        Ok(())
    }
}

impl AuditWrites for PgConnection {
    async fn insert_audits(&mut self, rows: &[AuditRow<'_>]) -> Result<(), sqlx::Error> {
        fn text<'a>(
            rows: &'a [AuditRow<'a>],
            column: fn(&'a AuditRow<'a>) -> Option<&'a str>,
        ) -> Vec<Option<Cow<'a, str>>> {
            rows.iter().map(|row| pg_text(column(row))).collect()
        }
        sqlx::query(INSERT_AUDITS)
            .bind(rows.iter().map(|r| r.received_at).collect::<Vec<_>>())
            .bind(text(rows, |r| Some(&r.entry.topic)))
            .bind(text(rows, |r| Some(r.request.as_ref())))
            .bind(text(rows, |r| Some(&r.entry.action)))
            .bind(text(rows, |r| r.entry.queue.as_deref()))
            .bind(text(rows, |r| r.entry.agent.as_deref()))
            .bind(text(rows, |r| r.entry.extension.as_deref()))
            .bind(text(rows, |r| Some(r.entry.outcome.as_str())))
            .bind(text(rows, |r| r.entry.error_code.as_deref()))
            .bind(text(rows, |r| r.entry.error.as_deref()))
            .bind(
                rows.iter()
                    .map(|r| r.entry.upstream_latency_ms)
                    .collect::<Vec<_>>(),
            )
            .bind(text(rows, |r| r.entry.transaction.as_deref()))
            .execute(&mut *self)
            .await
            .map(drop)
    }
}
