//! The report queries, on SQLite and PostgreSQL. Reads only; never writes to
//! the history.
//!
//! The summary is split so that the database does the bulk work with plain
//! sums and the exact arithmetic stays in one pure place
//! ([`super::summary::combine`]):
//! - per period, per agent and status, the summed durations of the closed
//!   intervals that start in the period (`GROUP BY agent, status` read in
//!   index order from `intervals_report`, migration `..._report_indexes`:
//!   no table access, no sort), and per agent the calls starting in it;
//! - at each period boundary (and at the range end), per agent, the one
//!   interval that started before it and had not ended by then (an agent's
//!   intervals never overlap, so it is the agent's last one before the
//!   boundary: one backward index seek per agent). These few intervals, and
//!   only these, cross a boundary or are still open, so they are the only
//!   ones whose plain sum is not already exact.
//!
//! Agents are passed as a list (a JSON array for SQLite's `json_each`, a
//! `text[]` for PostgreSQL); "every agent" is read first with a skip scan
//! over the `(agent, started_at)` index, one seek per distinct agent.

use sqlx::{PgPool, Row, SqlitePool};

use super::period::Period;
use super::summary::TotalsByAgent;
use super::summary::{combine, ReportInterval, StartedCalls, StartedSum, TimelineInterval};
use super::ReportError;
use crate::history::Store;
use crate::model::{AgentId, Status};

/// Every status, quoted for an `IN (...)` list, so the `(agent, status, ...)`
/// index is searched per agent and status.
fn status_list() -> String {
    Status::ALL
        .iter()
        .map(|status| format!("'{}'", status.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every agent that has history, by id (skip scan).
const SQLITE_ALL_AGENTS: &str = "\
    WITH RECURSIVE agents(agent) AS ( \
      SELECT (SELECT MIN(agent) FROM intervals) \
      UNION ALL \
      SELECT (SELECT MIN(n.agent) FROM intervals n WHERE n.agent > agents.agent) \
      FROM agents WHERE agents.agent IS NOT NULL) \
    SELECT agent FROM agents WHERE agent IS NOT NULL";

/// Same query; PostgreSQL reads the recursive CTE the same way.
const POSTGRES_ALL_AGENTS: &str = SQLITE_ALL_AGENTS;

fn sqlite_started_sql() -> String {
    format!(
        "SELECT agent, status, CAST(SUM(ended_at - started_at) AS BIGINT) AS ms \
         FROM intervals \
         WHERE agent IN (SELECT value FROM json_each(?1)) AND status IN ({}) \
           AND started_at >= ?2 AND started_at < ?3 \
         GROUP BY agent, status",
        status_list()
    )
}

fn postgres_started_sql() -> String {
    format!(
        "SELECT agent, status, CAST(SUM(ended_at - started_at) AS BIGINT) AS ms \
         FROM intervals \
         WHERE agent = ANY($1) AND status IN ({}) \
           AND started_at >= $2 AND started_at < $3 \
         GROUP BY agent, status",
        status_list()
    )
}

/// Calls: `on_call` intervals opened by a transition (a `seq`; resumed ones
/// have none). An open call adds 0 here; `combine` completes it.
const SQLITE_CALLS: &str = "\
    SELECT agent, CAST(COUNT(*) AS BIGINT) AS calls, \
      CAST(SUM(ended_at - started_at) AS BIGINT) AS call_ms, \
      CAST(MAX(ended_at - started_at) AS BIGINT) AS longest_ms \
    FROM intervals \
    WHERE agent IN (SELECT value FROM json_each(?1)) AND status = 'on_call' \
      AND started_at >= ?2 AND started_at < ?3 AND seq IS NOT NULL \
    GROUP BY agent";

const POSTGRES_CALLS: &str = "\
    SELECT agent, CAST(COUNT(*) AS BIGINT) AS calls, \
      CAST(SUM(ended_at - started_at) AS BIGINT) AS call_ms, \
      CAST(MAX(ended_at - started_at) AS BIGINT) AS longest_ms \
    FROM intervals \
    WHERE agent = ANY($1) AND status = 'on_call' \
      AND started_at >= $2 AND started_at < $3 AND seq IS NOT NULL \
    GROUP BY agent";

/// Per agent, the interval in progress at the boundary `?2`: the last one
/// that started before it (ties: the later row), if it had not ended.
const SQLITE_CROSSING: &str = "\
    SELECT i.agent, i.status, i.started_at, i.ended_at, i.seq \
    FROM json_each(?1) AS a \
    JOIN intervals i ON i.id = ( \
      SELECT b.id FROM intervals b WHERE b.agent = a.value AND b.started_at < ?2 \
      ORDER BY b.started_at DESC, b.id DESC LIMIT 1) \
    WHERE i.ended_at IS NULL OR i.ended_at > ?2";

const POSTGRES_CROSSING: &str = "\
    SELECT i.agent, i.status, i.started_at, i.ended_at, i.seq \
    FROM unnest($1::text[]) AS a(agent) \
    CROSS JOIN LATERAL ( \
      SELECT b.agent, b.status, b.started_at, b.ended_at, b.seq FROM intervals b \
      WHERE b.agent = a.agent AND b.started_at < $2 \
      ORDER BY b.started_at DESC, b.id DESC LIMIT 1) i \
    WHERE i.ended_at IS NULL OR i.ended_at > $2";

/// One agent's intervals overlapping `[?2, ?3)`, by start.
const TIMELINE_COLUMNS: &str =
    "agent, status, reason, extension_status, destination, started_at, ended_at";

fn timeline_sql(agent: &str, from: &str, to: &str) -> String {
    let columns = TIMELINE_COLUMNS;
    format!(
        "SELECT {columns} FROM (\
           SELECT {columns} FROM intervals WHERE agent = {agent} AND started_at < {from} \
           ORDER BY started_at DESC, id DESC LIMIT 1) crossing \
         WHERE ended_at IS NULL OR ended_at > {from} \
         UNION ALL \
         SELECT {columns} FROM (\
           SELECT {columns} FROM intervals \
           WHERE agent = {agent} AND started_at >= {from} AND started_at < {to}) inside \
         ORDER BY started_at"
    )
}

/// The summary totals per agent and period for `agents` (empty: every
/// agent with history).
pub async fn summary_totals(
    store: &Store,
    agents: &[AgentId],
    periods: &[Period],
    now_ms: i64,
) -> Result<TotalsByAgent, ReportError> {
    let Some(range_end) = periods.last().map(Period::end_ms) else {
        return Ok(TotalsByAgent::new());
    };
    let agents: Vec<String> = if agents.is_empty() {
        all_agents(store).await?
    } else {
        agents
            .iter()
            .map(|agent| agent.as_str().to_owned())
            .collect()
    };
    if agents.is_empty() {
        return Ok(TotalsByAgent::new());
    }
    // SQLite takes the list as one JSON text parameter.
    let sqlite_list = serde_json::Value::from(agents.clone()).to_string();
    let mut started = Vec::new();
    let mut calls = Vec::new();
    for (index, period) in periods.iter().enumerate() {
        let (from, to) = (period.start_ms(), period.end_ms());
        match store {
            Store::Sqlite(pool) => {
                sqlite_started(pool, &sqlite_list, index, from, to, &mut started).await?;
                sqlite_calls(pool, &sqlite_list, index, from, to, &mut calls).await?;
            }
            Store::Postgres(pool) => {
                postgres_started(pool, &agents, index, from, to, &mut started).await?;
                postgres_calls(pool, &agents, index, from, to, &mut calls).await?;
            }
        }
    }
    let boundaries = periods
        .iter()
        .map(Period::start_ms)
        .chain(std::iter::once(range_end));
    let mut crossing: Vec<ReportInterval> = Vec::new();
    for boundary in boundaries {
        let found = match store {
            Store::Sqlite(pool) => {
                let rows = sqlx::query(SQLITE_CROSSING)
                    .bind(&sqlite_list)
                    .bind(boundary)
                    .fetch_all(pool)
                    .await?;
                rows.iter()
                    .map(read_crossing)
                    .collect::<Result<Vec<_>, _>>()?
            }
            Store::Postgres(pool) => {
                let rows = sqlx::query(POSTGRES_CROSSING)
                    .bind(&agents)
                    .bind(boundary)
                    .fetch_all(pool)
                    .await?;
                rows.iter()
                    .map(read_crossing)
                    .collect::<Result<Vec<_>, _>>()?
            }
        };
        crossing.extend(found);
    }
    // An interval crossing several boundaries was found at each of them.
    crossing.sort_by(|a, b| (&a.agent, a.started_at_ms).cmp(&(&b.agent, b.started_at_ms)));
    crossing.dedup();
    Ok(combine(&started, &calls, &crossing, periods, now_ms))
}

/// Every agent with history, by id.
pub async fn all_agents(store: &Store) -> Result<Vec<String>, ReportError> {
    Ok(match store {
        Store::Sqlite(pool) => {
            sqlx::query_scalar(SQLITE_ALL_AGENTS)
                .fetch_all(pool)
                .await?
        }
        Store::Postgres(pool) => {
            sqlx::query_scalar(POSTGRES_ALL_AGENTS)
                .fetch_all(pool)
                .await?
        }
    })
}

async fn sqlite_started(
    pool: &SqlitePool,
    agents: &str,
    period: usize,
    from: i64,
    to: i64,
    out: &mut Vec<StartedSum>,
) -> Result<(), ReportError> {
    let rows = sqlx::query(&sqlite_started_sql())
        .bind(agents)
        .bind(from)
        .bind(to)
        .fetch_all(pool)
        .await?;
    for row in &rows {
        out.push(read_started(row, period)?);
    }
    Ok(())
}

async fn postgres_started(
    pool: &PgPool,
    agents: &[String],
    period: usize,
    from: i64,
    to: i64,
    out: &mut Vec<StartedSum>,
) -> Result<(), ReportError> {
    let rows = sqlx::query(&postgres_started_sql())
        .bind(agents)
        .bind(from)
        .bind(to)
        .fetch_all(pool)
        .await?;
    for row in &rows {
        out.push(read_started(row, period)?);
    }
    Ok(())
}

async fn sqlite_calls(
    pool: &SqlitePool,
    agents: &str,
    period: usize,
    from: i64,
    to: i64,
    out: &mut Vec<StartedCalls>,
) -> Result<(), ReportError> {
    let rows = sqlx::query(SQLITE_CALLS)
        .bind(agents)
        .bind(from)
        .bind(to)
        .fetch_all(pool)
        .await?;
    for row in &rows {
        out.push(read_calls(row, period)?);
    }
    Ok(())
}

async fn postgres_calls(
    pool: &PgPool,
    agents: &[String],
    period: usize,
    from: i64,
    to: i64,
    out: &mut Vec<StartedCalls>,
) -> Result<(), ReportError> {
    let rows = sqlx::query(POSTGRES_CALLS)
        .bind(agents)
        .bind(from)
        .bind(to)
        .fetch_all(pool)
        .await?;
    for row in &rows {
        out.push(read_calls(row, period)?);
    }
    Ok(())
}

/// One agent's intervals overlapping `[from_ms, to_ms)`, by start.
pub async fn timeline_intervals(
    store: &Store,
    agent: &AgentId,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<TimelineInterval>, ReportError> {
    let rows = match store {
        Store::Sqlite(pool) => {
            let rows = sqlx::query(&timeline_sql("?1", "?2", "?3"))
                .bind(agent.as_str())
                .bind(from_ms)
                .bind(to_ms)
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(read_timeline_row)
                .collect::<Result<Vec<_>, _>>()?
        }
        Store::Postgres(pool) => {
            let rows = sqlx::query(&timeline_sql("$1", "$2", "$3"))
                .bind(agent.as_str())
                .bind(from_ms)
                .bind(to_ms)
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(read_timeline_row)
                .collect::<Result<Vec<_>, _>>()?
        }
    };
    Ok(rows)
}

fn corrupt(error: impl std::fmt::Display) -> ReportError {
    ReportError::Corrupt(error.to_string())
}

fn parse_agent(raw: &str) -> Result<AgentId, ReportError> {
    AgentId::parse(raw).map_err(corrupt)
}

fn parse_status(raw: &str) -> Result<Status, ReportError> {
    raw.parse().map_err(corrupt)
}

fn read_started<R>(row: &R, period: usize) -> Result<StartedSum, ReportError>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let agent: String = row.try_get("agent")?;
    let status: String = row.try_get("status")?;
    let ms: Option<i64> = row.try_get("ms")?;
    Ok(StartedSum {
        agent: parse_agent(&agent)?,
        period,
        status: parse_status(&status)?,
        ms: ms.unwrap_or(0),
    })
}

fn read_calls<R>(row: &R, period: usize) -> Result<StartedCalls, ReportError>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let agent: String = row.try_get("agent")?;
    let calls: Option<i64> = row.try_get("calls")?;
    let call_ms: Option<i64> = row.try_get("call_ms")?;
    let longest: Option<i64> = row.try_get("longest_ms")?;
    Ok(StartedCalls {
        agent: parse_agent(&agent)?,
        period,
        calls: u64::try_from(calls.unwrap_or(0)).map_err(corrupt)?,
        call_ms: call_ms.unwrap_or(0),
        longest_call_ms: longest.unwrap_or(0),
    })
}

fn read_crossing<R>(row: &R) -> Result<ReportInterval, ReportError>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let agent: String = row.try_get("agent")?;
    let status: String = row.try_get("status")?;
    let seq: Option<i64> = row.try_get("seq")?;
    Ok(ReportInterval {
        agent: parse_agent(&agent)?,
        status: parse_status(&status)?,
        started_at_ms: row.try_get("started_at")?,
        ended_at_ms: row.try_get("ended_at")?,
        resumed: seq.is_none(),
    })
}

fn read_timeline_row<R>(row: &R) -> Result<TimelineInterval, ReportError>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let agent: String = row.try_get("agent")?;
    let status: String = row.try_get("status")?;
    Ok(TimelineInterval {
        agent: parse_agent(&agent)?,
        status: parse_status(&status)?,
        reason: row.try_get("reason")?,
        extension_status: row.try_get("extension_status")?,
        destination: row.try_get("destination")?,
        started_at_ms: row.try_get("started_at")?,
        ended_at_ms: row.try_get("ended_at")?,
    })
}
