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
//!
//! On SQLite every summary query returns its rows packed into one JSON array
//! (`json_group_array`): sqlx hands SQLite rows over one by one at several
//! microseconds each, which for the ~35,000 (agent, status) sums of a
//! 5,000-agent day would cost more than the query itself. PostgreSQL rows
//! arrive in binary batches and are read directly.

use serde::de::DeserializeOwned;
use sqlx::Row;

use super::period::Period;
use super::summary::TotalsByAgent;
use super::summary::{combine, ReportInterval, StartedCalls, StartedSum, TimelineInterval};
use super::ReportError;
use crate::history::Store;
use crate::model::{AgentId, Status};

/// Which SQL dialect a statement is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// The agent list condition on parameter `n`: SQLite reads a JSON array,
    /// PostgreSQL a `text[]`.
    fn agent_in_list(self, column: &str, n: usize) -> String {
        match self {
            Dialect::Sqlite => format!("{column} IN (SELECT value FROM json_each(?{n}))"),
            Dialect::Postgres => format!("{column} = ANY(${n})"),
        }
    }

    /// Parameter `n` (1-based).
    fn param(self, n: usize) -> String {
        match self {
            Dialect::Sqlite => format!("?{n}"),
            Dialect::Postgres => format!("${n}"),
        }
    }

    /// Wraps a query for this dialect: on SQLite, all rows as one JSON array
    /// of arrays of `columns`.
    fn packed(self, query: String, columns: &str) -> String {
        match self {
            Dialect::Sqlite => {
                format!("SELECT json_group_array(json_array({columns})) FROM ({query})")
            }
            Dialect::Postgres => query,
        }
    }
}

/// Every status, quoted for an `IN (...)` list, so the `(agent, status, ...)`
/// index is searched per agent and status.
fn status_list() -> String {
    Status::ALL
        .iter()
        .map(|status| format!("'{}'", status.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every agent that has history, by id (skip scan; PostgreSQL reads the
/// recursive CTE the same way).
fn all_agents_sql(dialect: Dialect) -> String {
    let query = "\
        WITH RECURSIVE agents(agent) AS ( \
          SELECT (SELECT MIN(agent) FROM intervals) \
          UNION ALL \
          SELECT (SELECT MIN(n.agent) FROM intervals n WHERE n.agent > agents.agent) \
          FROM agents WHERE agents.agent IS NOT NULL) \
        SELECT agent FROM agents WHERE agent IS NOT NULL"
        .to_owned();
    match dialect {
        Dialect::Sqlite => format!("SELECT json_group_array(agent) FROM ({query})"),
        Dialect::Postgres => query,
    }
}

/// Per agent and status, the summed durations of the closed intervals that
/// start in `[$1, $2)`, of the agents in `$3` when `filtered`.
/// Columns: agent, status, ms.
///
/// SQLite must always be `filtered`: the agent list is what lets it read
/// `intervals_report` in (agent, status) order. PostgreSQL groups by hash
/// and needs no list for every agent.
fn started_sql(dialect: Dialect, filtered: bool) -> String {
    let agents = if filtered {
        format!("{} AND ", dialect.agent_in_list("agent", 3))
    } else {
        String::new()
    };
    let query = format!(
        "SELECT agent, status, CAST(SUM(ended_at - started_at) AS BIGINT) AS ms \
         FROM intervals \
         WHERE {agents}status IN ({}) AND started_at >= {} AND started_at < {} \
         GROUP BY agent, status",
        status_list(),
        dialect.param(1),
        dialect.param(2),
    );
    dialect.packed(query, "agent, status, ms")
}

/// Per agent, the calls starting in `[$1, $2)` (of the agents in `$3` when
/// `filtered`): `on_call` intervals opened by a transition (a `seq`; resumed
/// ones have none). An open call adds 0 here; `combine` completes it.
/// Columns: agent, calls, call_ms, longest_ms.
fn calls_sql(dialect: Dialect, filtered: bool) -> String {
    let agents = if filtered {
        format!("{} AND ", dialect.agent_in_list("agent", 3))
    } else {
        String::new()
    };
    let query = format!(
        "SELECT agent, CAST(COUNT(*) AS BIGINT) AS calls, \
           CAST(SUM(ended_at - started_at) AS BIGINT) AS call_ms, \
           CAST(MAX(ended_at - started_at) AS BIGINT) AS longest_ms \
         FROM intervals \
         WHERE {agents}status = 'on_call' AND started_at >= {} AND started_at < {} \
           AND seq IS NOT NULL \
         GROUP BY agent",
        dialect.param(1),
        dialect.param(2),
    );
    dialect.packed(query, "agent, calls, call_ms, longest_ms")
}

/// Per agent in `$2`, the interval in progress at the boundary `$1`: the
/// last one that started before it (ties: the later row), if it had not
/// ended. Columns: agent, status, started_at, ended_at, seq.
fn crossing_sql(dialect: Dialect) -> String {
    match dialect {
        Dialect::Sqlite => dialect.packed(
            "SELECT i.agent, i.status, i.started_at, i.ended_at, i.seq \
             FROM json_each(?2) AS a \
             JOIN intervals i ON i.id = ( \
               SELECT b.id FROM intervals b WHERE b.agent = a.value AND b.started_at < ?1 \
               ORDER BY b.started_at DESC, b.id DESC LIMIT 1) \
             WHERE i.ended_at IS NULL OR i.ended_at > ?1"
                .to_owned(),
            "agent, status, started_at, ended_at, seq",
        ),
        Dialect::Postgres => "\
            SELECT i.agent, i.status, i.started_at, i.ended_at, i.seq \
            FROM unnest($2::text[]) AS a(agent) \
            CROSS JOIN LATERAL ( \
              SELECT b.agent, b.status, b.started_at, b.ended_at, b.seq FROM intervals b \
              WHERE b.agent = a.agent AND b.started_at < $1 \
              ORDER BY b.started_at DESC, b.id DESC LIMIT 1) i \
            WHERE i.ended_at IS NULL OR i.ended_at > $1"
            .to_owned(),
    }
}

/// One agent's (`$1`) intervals overlapping `[$2, $3)`, by start: the one in
/// progress at `$2`, then those starting inside.
fn timeline_sql(dialect: Dialect) -> String {
    let columns = "agent, status, reason, extension_status, destination, started_at, ended_at";
    let (agent, from, to) = (dialect.param(1), dialect.param(2), dialect.param(3));
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

/// At most this many queries of one summary run at once, each on its own
/// connection (and so, for SQLite, its own thread). The SQLite pool has 4
/// connections and PostgreSQL 5, one of which the history writer may be
/// using; 2 uses both cores of a small machine.
const PARALLEL_QUERIES: usize = 2;

/// One query of a summary.
#[derive(Debug, Clone, Copy)]
enum Job {
    /// Sums of the intervals of period `period` starting in `[from, to)`.
    Started { period: usize, from: i64, to: i64 },
    /// Calls of period `period` starting in `[from, to)`.
    Calls { period: usize, from: i64, to: i64 },
    /// Intervals in progress at `boundary`.
    Crossing { boundary: i64 },
}

/// Which agents a query covers.
#[derive(Debug, Clone, Copy)]
enum Scope {
    /// Every agent (no list; PostgreSQL sums only).
    Every,
    /// The agents of one chunk of the list.
    Chunk(usize),
}

/// What a [`Job`] found.
enum Found {
    Started(Vec<StartedSum>),
    Calls(Vec<StartedCalls>),
    Crossing(Vec<ReportInterval>),
}

/// A slice of the agent list, in both parameter forms.
struct AgentChunk {
    /// The ids, for PostgreSQL's `text[]`.
    ids: Vec<String>,
    /// The ids as a JSON array, for SQLite's `json_each`.
    json: String,
}

/// The summary totals per agent and period for `agents` (empty: every
/// agent with history).
///
/// The work is split in [`PARALLEL_QUERIES`] parts that run at once: by
/// agent for the boundary seeks (and for SQLite's sums, which seek per
/// agent anyway), by time for PostgreSQL's sums (each part hashes half the
/// rows; the sums of the parts add up).
pub async fn summary_totals(
    store: &Store,
    agents: &[AgentId],
    periods: &[Period],
    now_ms: i64,
) -> Result<TotalsByAgent, ReportError> {
    use futures_util::stream::{self, StreamExt as _, TryStreamExt as _};

    let Some(range_end) = periods.last().map(Period::end_ms) else {
        return Ok(TotalsByAgent::new());
    };
    let every_agent = agents.is_empty();
    let agents: Vec<String> = if every_agent {
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
    let chunk_size = agents.len().div_ceil(PARALLEL_QUERIES);
    let chunks: Vec<AgentChunk> = agents
        .chunks(chunk_size)
        .map(|ids| AgentChunk {
            ids: ids.to_vec(),
            json: serde_json::Value::from(ids.to_vec()).to_string(),
        })
        .collect();
    let by_agent = || (0..chunks.len()).map(Scope::Chunk);
    let mut tasks: Vec<(Job, Scope)> = Vec::new();
    for (period, bounds) in periods.iter().enumerate() {
        let (from, to) = (bounds.start_ms(), bounds.end_ms());
        match store {
            Store::Sqlite(_) => {
                for scope in by_agent() {
                    tasks.push((Job::Started { period, from, to }, scope));
                    tasks.push((Job::Calls { period, from, to }, scope));
                }
            }
            Store::Postgres(_) => {
                let scope = if every_agent {
                    Scope::Every
                } else {
                    Scope::Chunk(0)
                };
                for (from, to) in split_time(from, to, PARALLEL_QUERIES) {
                    tasks.push((Job::Started { period, from, to }, scope));
                    tasks.push((Job::Calls { period, from, to }, scope));
                }
            }
        }
        tasks.extend(by_agent().map(|scope| (Job::Crossing { boundary: from }, scope)));
    }
    tasks.extend(by_agent().map(|scope| {
        (
            Job::Crossing {
                boundary: range_end,
            },
            scope,
        )
    }));
    // PostgreSQL takes the whole list in one chunk when it filters its sums.
    let whole = AgentChunk {
        json: String::new(),
        ids: if every_agent {
            Vec::new()
        } else {
            agents.clone()
        },
    };
    let chunks = &chunks;
    let whole = &whole;
    let found: Vec<Found> = stream::iter(tasks)
        .map(|(job, scope)| {
            let chunk = match (store, job, scope) {
                (_, _, Scope::Every) => None,
                (Store::Postgres(_), Job::Started { .. } | Job::Calls { .. }, _) => Some(whole),
                (_, _, Scope::Chunk(index)) => chunks.get(index),
            };
            run_job(store, chunk, job)
        })
        .buffer_unordered(PARALLEL_QUERIES)
        .try_collect()
        .await?;
    let (mut started, mut calls, mut crossing) = (Vec::new(), Vec::new(), Vec::new());
    for result in found {
        match result {
            Found::Started(rows) => started.extend(rows),
            Found::Calls(rows) => calls.extend(rows),
            Found::Crossing(rows) => crossing.extend(rows),
        }
    }
    // An interval crossing several boundaries was found at each of them.
    crossing.sort_by(|a, b| (&a.agent, a.started_at_ms).cmp(&(&b.agent, b.started_at_ms)));
    crossing.dedup();
    Ok(combine(&started, &calls, &crossing, periods, now_ms))
}

/// `[from, to)` cut into `parts` contiguous pieces (fewer when it is short).
fn split_time(from: i64, to: i64, parts: usize) -> Vec<(i64, i64)> {
    let parts = i64::try_from(parts.max(1))
        .unwrap_or(1)
        .min((to - from).max(1));
    let step = (to - from) / parts;
    (0..parts)
        .map(|part| {
            let start = from + part * step;
            let end = if part + 1 == parts { to } else { start + step };
            (start, end)
        })
        .collect()
}

/// Runs one query; `chunk` is `None` for every agent (PostgreSQL sums only).
async fn run_job(
    store: &Store,
    chunk: Option<&AgentChunk>,
    job: Job,
) -> Result<Found, ReportError> {
    let filtered = chunk.is_some();
    let empty = AgentChunk {
        ids: Vec::new(),
        json: "[]".to_owned(),
    };
    let chunk = chunk.unwrap_or(&empty);
    match job {
        Job::Started { period, from, to } => {
            let rows: Vec<(String, String, Option<i64>)> = match store {
                Store::Sqlite(pool) => {
                    let packed: String =
                        sqlx::query_scalar(&started_sql(Dialect::Sqlite, filtered))
                            .bind(from)
                            .bind(to)
                            .bind(&chunk.json)
                            .fetch_one(pool)
                            .await?;
                    unpack(&packed)?
                }
                Store::Postgres(pool) => {
                    let sql = started_sql(Dialect::Postgres, filtered);
                    let query = sqlx::query_as(&sql).bind(from).bind(to);
                    let query = if filtered {
                        query.bind(&chunk.ids)
                    } else {
                        query
                    };
                    query.fetch_all(pool).await?
                }
            };
            let found = rows.into_iter().map(|(agent, status, ms)| {
                Ok(StartedSum {
                    agent: parse_agent(&agent)?,
                    period,
                    status: parse_status(&status)?,
                    ms: ms.unwrap_or(0),
                })
            });
            Ok(Found::Started(found.collect::<Result<_, ReportError>>()?))
        }
        Job::Calls { period, from, to } => {
            type CallsRow = (String, i64, Option<i64>, Option<i64>);
            let rows: Vec<CallsRow> = match store {
                Store::Sqlite(pool) => {
                    let packed: String = sqlx::query_scalar(&calls_sql(Dialect::Sqlite, filtered))
                        .bind(from)
                        .bind(to)
                        .bind(&chunk.json)
                        .fetch_one(pool)
                        .await?;
                    unpack(&packed)?
                }
                Store::Postgres(pool) => {
                    let sql = calls_sql(Dialect::Postgres, filtered);
                    let query = sqlx::query_as(&sql).bind(from).bind(to);
                    let query = if filtered {
                        query.bind(&chunk.ids)
                    } else {
                        query
                    };
                    query.fetch_all(pool).await?
                }
            };
            let found = rows.into_iter().map(|(agent, calls, call_ms, longest)| {
                Ok(StartedCalls {
                    agent: parse_agent(&agent)?,
                    period,
                    calls: u64::try_from(calls).map_err(corrupt)?,
                    call_ms: call_ms.unwrap_or(0),
                    longest_call_ms: longest.unwrap_or(0),
                })
            });
            Ok(Found::Calls(found.collect::<Result<_, ReportError>>()?))
        }
        Job::Crossing { boundary } => {
            type CrossingRow = (String, String, i64, Option<i64>, Option<i64>);
            let rows: Vec<CrossingRow> = match store {
                Store::Sqlite(pool) => {
                    let packed: String = sqlx::query_scalar(&crossing_sql(Dialect::Sqlite))
                        .bind(boundary)
                        .bind(&chunk.json)
                        .fetch_one(pool)
                        .await?;
                    unpack(&packed)?
                }
                Store::Postgres(pool) => {
                    sqlx::query_as(&crossing_sql(Dialect::Postgres))
                        .bind(boundary)
                        .bind(&chunk.ids)
                        .fetch_all(pool)
                        .await?
                }
            };
            let found = rows
                .into_iter()
                .map(|(agent, status, started_at_ms, ended_at_ms, seq)| {
                    Ok(ReportInterval {
                        agent: parse_agent(&agent)?,
                        status: parse_status(&status)?,
                        started_at_ms,
                        ended_at_ms,
                        resumed: seq.is_none(),
                    })
                });
            Ok(Found::Crossing(found.collect::<Result<_, ReportError>>()?))
        }
    }
}

/// Every agent with history, by id.
pub async fn all_agents(store: &Store) -> Result<Vec<String>, ReportError> {
    Ok(match store {
        Store::Sqlite(pool) => {
            let packed: String = sqlx::query_scalar(&all_agents_sql(Dialect::Sqlite))
                .fetch_one(pool)
                .await?;
            unpack(&packed)?
        }
        Store::Postgres(pool) => {
            sqlx::query_scalar(&all_agents_sql(Dialect::Postgres))
                .fetch_all(pool)
                .await?
        }
    })
}

/// Rows packed by SQLite's `json_group_array`.
fn unpack<T: DeserializeOwned>(packed: &str) -> Result<Vec<T>, ReportError> {
    serde_json::from_str(packed).map_err(|error| corrupt(format!("packed rows: {error}")))
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
            let rows = sqlx::query(&timeline_sql(Dialect::Sqlite))
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
            let rows = sqlx::query(&timeline_sql(Dialect::Postgres))
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

#[cfg(test)]
mod tests {
    use super::split_time;

    #[test]
    fn time_is_split_into_contiguous_parts() {
        assert_eq!(split_time(0, 10, 2), [(0, 5), (5, 10)]);
        assert_eq!(split_time(0, 11, 3), [(0, 3), (3, 6), (6, 11)]);
        assert_eq!(split_time(5, 6, 2), [(5, 6)]);
        assert_eq!(split_time(5, 7, 1), [(5, 7)]);
    }
}
