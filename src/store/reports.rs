//! The report queries. Reads only, on the reader pool; never writes.
//!
//! A summary is split so that the database does the bulk work with plain
//! sums and the exact arithmetic stays in one pure place (`report::summary::combine`):
//! - per period, per agent and status, the summed durations of the closed
//!   intervals that start in the period (read from the covering index
//!   `intervals_agent_time (agent, started_at, status, ended_at, seq)`,
//!   migration `..._one_agent_index` on SQLite: no table access), and per
//!   agent the calls starting in it;
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
//! The dialects differ in algorithm here, and only here: on SQLite every
//! summary query returns its rows packed into one JSON array
//! (`json_group_array`), because sqlx hands SQLite rows over one by one at
//! several microseconds each, which for the ~35,000 (agent, status) sums of
//! a 5,000-agent day would cost more than the query itself; PostgreSQL rows
//! arrive in binary batches and are read directly. SQLite reads the sums per
//! agent chunk (the list lets it seek `intervals_agent_time` per agent);
//! PostgreSQL hashes them and is split by time instead.

use std::future::Future;

use futures_util::stream::{self, StreamExt as _, TryStreamExt as _};
use serde::de::DeserializeOwned;

use crate::model::{AgentId, Status};

use super::dialect::{with_pool, Dialect};
use super::rows::{agent_from_db, status_from_db};
use super::{Store, StoreError};

/// One stored status interval, as much of it as the summary needs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReportInterval {
    /// The agent.
    pub agent: AgentId,
    /// The status during the interval.
    pub status: Status,
    /// Start, milliseconds since the epoch (UTC).
    pub started_at_ms: i64,
    /// End, milliseconds since the epoch; `None` while the interval is open
    /// (the agent's current status), which counts up to `now`.
    pub ended_at_ms: Option<i64>,
    /// True when the bridge synthesised the interval on restart (stored
    /// without a `seq`): a resumed `on_call` continues a call already
    /// counted, so it is not a new call.
    pub resumed: bool,
}

/// What the database sums for one agent, period and status: the durations
/// of the closed intervals that start in the period (an open one adds 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartedSum {
    /// The agent.
    pub agent: AgentId,
    /// Index into the periods.
    pub period: usize,
    /// The status.
    pub status: Status,
    /// Summed `ended_at - started_at` of the closed intervals.
    pub ms: i64,
}

/// What the database counts for one agent and period: the calls (`on_call`
/// intervals with a `seq`) that start in the period, an open one with
/// duration 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartedCalls {
    /// The agent.
    pub agent: AgentId,
    /// Index into the periods.
    pub period: usize,
    /// How many.
    pub calls: u64,
    /// Their summed durations (closed ones).
    pub call_ms: i64,
    /// The longest of them (closed ones).
    pub longest_call_ms: i64,
}

/// One stored interval with everything the timeline shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineInterval {
    /// The agent.
    pub agent: AgentId,
    /// The status.
    pub status: Status,
    /// The raw upstream reason, when not available.
    pub reason: Option<String>,
    /// The extension status, when available.
    pub extension_status: Option<String>,
    /// The number the agent was reached at.
    pub destination: Option<String>,
    /// Start, milliseconds since the epoch.
    pub started_at_ms: i64,
    /// End, milliseconds since the epoch; `None` while open.
    pub ended_at_ms: Option<i64>,
}

/// Everything the database contributes to a summary; see the module doc.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SummaryParts {
    /// Closed-interval sums per agent, period and status.
    pub started: Vec<StartedSum>,
    /// Calls per agent and period.
    pub calls: Vec<StartedCalls>,
    /// The intervals in progress at a period boundary or at the range end,
    /// each once, by agent and start.
    pub crossing: Vec<ReportInterval>,
}

/// At most this many queries of one summary run at once, each on its own
/// reader connection (and so, for SQLite, its own thread); 2 uses both
/// cores of a small machine and leaves a reader connection free.
const PARALLEL_QUERIES: usize = 2;

/// Every status, quoted for an `IN (...)` list, so the `(agent, status, ...)`
/// index is searched per agent and status.
fn status_list() -> String {
    Status::ALL
        .iter()
        .map(|status| format!("'{}'", status.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The agent-list condition on parameter `$n`: SQLite reads a JSON array,
/// PostgreSQL a `text[]`.
pub(crate) fn agent_in_list(dialect: Dialect, column: &str, n: usize) -> String {
    match dialect {
        Dialect::Sqlite => format!("{column} IN (SELECT value FROM json_each(${n}))"),
        Dialect::Postgres => format!("{column} = ANY(${n})"),
    }
}

/// Every agent that has history, by id (skip scan; PostgreSQL reads the
/// recursive CTE the same way). Column: agent.
const ALL_AGENTS: &str = "\
    WITH RECURSIVE agents(agent) AS ( \
      SELECT (SELECT MIN(agent) FROM intervals) \
      UNION ALL \
      SELECT (SELECT MIN(n.agent) FROM intervals n WHERE n.agent > agents.agent) \
      FROM agents WHERE agents.agent IS NOT NULL) \
    SELECT agent FROM agents WHERE agent IS NOT NULL";

/// Per agent and status, the summed durations of the closed intervals that
/// start in `[$1, $2)`, of the agents in `$3` when `filtered`.
/// Columns: agent, status, ms.
fn started_sql(dialect: Dialect, filtered: bool) -> String {
    let agents = if filtered {
        format!("{} AND ", agent_in_list(dialect, "agent", 3))
    } else {
        String::new()
    };
    format!(
        "SELECT agent, status, CAST(SUM(ended_at - started_at) AS BIGINT) AS ms \
         FROM intervals \
         WHERE {agents}status IN ({}) AND started_at >= $1 AND started_at < $2 \
         GROUP BY agent, status",
        status_list(),
    )
}

/// Per agent, the calls starting in `[$1, $2)` (of the agents in `$3` when
/// `filtered`): `on_call` intervals opened by a transition (a `seq`; resumed
/// ones have none). An open call adds 0 here; `combine` completes it.
/// Columns: agent, calls, call_ms, longest_ms.
fn calls_sql(dialect: Dialect, filtered: bool) -> String {
    let agents = if filtered {
        format!("{} AND ", agent_in_list(dialect, "agent", 3))
    } else {
        String::new()
    };
    format!(
        "SELECT agent, CAST(COUNT(*) AS BIGINT) AS calls, \
           CAST(SUM(ended_at - started_at) AS BIGINT) AS call_ms, \
           CAST(MAX(ended_at - started_at) AS BIGINT) AS longest_ms \
         FROM intervals \
         WHERE {agents}status = 'on_call' AND started_at >= $1 AND started_at < $2 \
           AND seq IS NOT NULL \
         GROUP BY agent",
    )
}

/// Per agent in `$2`, the interval in progress at the boundary `$1`: the
/// last one that started before it (ties: the later row), if it had not
/// ended. Columns: agent, status, started_at, ended_at, seq.
fn crossing_sql(dialect: Dialect) -> &'static str {
    dialect.pick(
        "SELECT i.agent, i.status, i.started_at, i.ended_at, i.seq \
         FROM json_each($2) AS a \
         JOIN intervals i ON i.id = ( \
           SELECT b.id FROM intervals b WHERE b.agent = a.value AND b.started_at < $1 \
           ORDER BY b.started_at DESC, b.id DESC LIMIT 1) \
         WHERE i.ended_at IS NULL OR i.ended_at > $1",
        "SELECT i.agent, i.status, i.started_at, i.ended_at, i.seq \
         FROM unnest($2::text[]) AS a(agent) \
         CROSS JOIN LATERAL ( \
           SELECT b.agent, b.status, b.started_at, b.ended_at, b.seq FROM intervals b \
           WHERE b.agent = a.agent AND b.started_at < $1 \
           ORDER BY b.started_at DESC, b.id DESC LIMIT 1) i \
         WHERE i.ended_at IS NULL OR i.ended_at > $1",
    )
}

/// One agent's (`$1`) intervals overlapping `[$2, $3)`, by start: the one in
/// progress at `$2`, then at most `$4` of those starting inside, read in
/// index order (`(agent, started_at)`: `intervals_agent_time` on SQLite) and no further: a timeline
/// over its limit stops reading at the limit.
const TIMELINE: &str = "\
    SELECT agent, status, reason, extension_status, destination, started_at, ended_at FROM (\
      SELECT agent, status, reason, extension_status, destination, started_at, ended_at \
      FROM intervals WHERE agent = $1 AND started_at < $2 \
      ORDER BY started_at DESC, id DESC LIMIT 1) crossing \
    WHERE ended_at IS NULL OR ended_at > $2 \
    UNION ALL \
    SELECT agent, status, reason, extension_status, destination, started_at, ended_at FROM (\
      SELECT agent, status, reason, extension_status, destination, started_at, ended_at \
      FROM intervals WHERE agent = $1 AND started_at >= $2 AND started_at < $3 \
      ORDER BY started_at, id LIMIT $4) inside \
    ORDER BY started_at";

/// A row of [`crossing_sql`]: agent, status, started_at, ended_at, seq.
type CrossingRow = (String, String, i64, Option<i64>, Option<i64>);

/// A timeline row, as selected by [`TIMELINE`].
type TimelineDbRow = (
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
    Option<i64>,
);

/// A list of agents in both parameter forms.
pub(crate) struct AgentList {
    /// The ids, for PostgreSQL's `text[]`.
    ids: Vec<String>,
    /// The ids as a JSON array, for SQLite's `json_each`.
    json: String,
}

impl AgentList {
    /// The list of `ids`.
    pub(crate) fn new(ids: &[String]) -> Self {
        Self {
            ids: ids.to_vec(),
            json: serde_json::Value::from(ids.to_vec()).to_string(),
        }
    }
}

/// A bound parameter of a report query.
#[derive(Clone, Copy)]
pub(crate) enum Param<'a> {
    /// A number (a time in ms).
    Int(i64),
    /// A list of agents.
    Agents(&'a AgentList),
}

/// How one backend runs a report query and hands back its rows.
pub(crate) trait ReportReads {
    /// Runs `sql` with `params`; `columns` names its result columns (SQLite
    /// packs them into one JSON value). Rows come back as `T` either way.
    fn report_rows<T>(
        &self,
        sql: &str,
        columns: &str,
        params: &[Param<'_>],
    ) -> impl Future<Output = Result<Vec<T>, sqlx::Error>> + Send
    where
        T: DeserializeOwned
            + for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
            + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>
            + Send
            + Unpin;
}

impl ReportReads for sqlx::SqlitePool {
    async fn report_rows<T>(
        &self,
        sql: &str,
        columns: &str,
        params: &[Param<'_>],
    ) -> Result<Vec<T>, sqlx::Error>
    where
        T: DeserializeOwned
            + for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
            + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>
            + Send
            + Unpin,
    {
        let packed_sql = format!("SELECT json_group_array(json_array({columns})) FROM ({sql})");
        let mut query = sqlx::query_scalar::<_, String>(&packed_sql);
        for param in params {
            query = match param {
                Param::Int(value) => query.bind(*value),
                Param::Agents(list) => query.bind(list.json.as_str()),
            };
        }
        let packed = query.fetch_one(self).await?;
        serde_json::from_str(&packed).map_err(|error| sqlx::Error::Decode(Box::new(error)))
    }
}

impl ReportReads for sqlx::PgPool {
    async fn report_rows<T>(
        &self,
        sql: &str,
        _columns: &str,
        params: &[Param<'_>],
    ) -> Result<Vec<T>, sqlx::Error>
    where
        T: DeserializeOwned
            + for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
            + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>
            + Send
            + Unpin,
    {
        let mut query = sqlx::query_as::<_, T>(sql);
        for param in params {
            query = match param {
                Param::Int(value) => query.bind(*value),
                Param::Agents(list) => query.bind(list.ids.clone()),
            };
        }
        query.fetch_all(self).await
    }
}

/// One query of a summary.
#[derive(Debug, Clone, Copy)]
enum SummaryQuery {
    /// Sums of the intervals of period `period` starting in `[from, to)`.
    Started { period: usize, from: i64, to: i64 },
    /// Calls of period `period` starting in `[from, to)`.
    Calls { period: usize, from: i64, to: i64 },
    /// Intervals in progress at `boundary`.
    Crossing { boundary: i64 },
}

/// Which agents a [`SummaryQuery`] covers.
#[derive(Debug, Clone, Copy)]
enum Scope {
    /// Every agent (no list; PostgreSQL sums only).
    Every,
    /// The whole list at once (PostgreSQL sums).
    Whole,
    /// One chunk of the list.
    Chunk(usize),
}

/// What a [`SummaryQuery`] found.
enum Found {
    Started(Vec<StartedSum>),
    Calls(Vec<StartedCalls>),
    Crossing(Vec<ReportInterval>),
}

impl Store {
    /// Every agent with history, by id.
    pub async fn agents_with_history(&self) -> Result<Vec<String>, StoreError> {
        with_pool!(&self.reader, |pool, _d| {
            pool.report_rows::<(String,)>(ALL_AGENTS, "agent", &[])
                .await
        })
        .map(|rows| rows.into_iter().map(|(agent,)| agent).collect())
        .map_err(StoreError::query("listing the agents with history"))
    }

    /// The database's part of a summary for `agents` (empty: every agent
    /// with history) over `periods`, each `[start, end)` in ms, contiguous
    /// and in order.
    ///
    /// The work is split in [`PARALLEL_QUERIES`] parts that run at once: by
    /// agent for the boundary seeks (and for SQLite's sums, which seek per
    /// agent anyway), by time for PostgreSQL's sums (each part hashes part
    /// of the rows; the sums of the parts add up).
    pub async fn summary_parts(
        &self,
        agents: &[AgentId],
        periods: &[(i64, i64)],
    ) -> Result<SummaryParts, StoreError> {
        let Some(&(_, range_end)) = periods.last() else {
            return Ok(SummaryParts::default());
        };
        let every_agent = agents.is_empty();
        let agents: Vec<String> = if every_agent {
            self.agents_with_history().await?
        } else {
            agents.iter().map(|a| a.as_str().to_owned()).collect()
        };
        if agents.is_empty() {
            return Ok(SummaryParts::default());
        }
        let chunk_size = agents.len().div_ceil(PARALLEL_QUERIES);
        let chunks: Vec<AgentList> = agents.chunks(chunk_size).map(AgentList::new).collect();
        let whole = AgentList::new(&agents);
        let dialect = with_pool!(&self.reader, |_pool, dialect| dialect);
        // (query, the agent list it filters on; None: every agent)
        let mut queries: Vec<(SummaryQuery, Scope)> = Vec::new();
        for (period, &(from, to)) in periods.iter().enumerate() {
            match dialect {
                Dialect::Sqlite => {
                    for chunk in 0..chunks.len() {
                        let scope = Scope::Chunk(chunk);
                        queries.push((SummaryQuery::Started { period, from, to }, scope));
                        queries.push((SummaryQuery::Calls { period, from, to }, scope));
                    }
                }
                Dialect::Postgres => {
                    let scope = if every_agent {
                        Scope::Every
                    } else {
                        Scope::Whole
                    };
                    for (from, to) in split_time(from, to, PARALLEL_QUERIES) {
                        queries.push((SummaryQuery::Started { period, from, to }, scope));
                        queries.push((SummaryQuery::Calls { period, from, to }, scope));
                    }
                }
            }
            for chunk in 0..chunks.len() {
                queries.push((
                    SummaryQuery::Crossing { boundary: from },
                    Scope::Chunk(chunk),
                ));
            }
        }
        for chunk in 0..chunks.len() {
            let boundary = range_end;
            queries.push((SummaryQuery::Crossing { boundary }, Scope::Chunk(chunk)));
        }
        let (chunks, whole) = (&chunks, &whole);
        let found: Vec<Found> = stream::iter(queries)
            .map(|(query, scope)| {
                let list = match scope {
                    Scope::Every => None,
                    Scope::Whole => Some(whole),
                    Scope::Chunk(index) => chunks.get(index),
                };
                self.run_summary_query(dialect, query, list)
            })
            .buffer_unordered(PARALLEL_QUERIES)
            .try_collect()
            .await?;
        let mut parts = SummaryParts::default();
        for result in found {
            match result {
                Found::Started(rows) => parts.started.extend(rows),
                Found::Calls(rows) => parts.calls.extend(rows),
                Found::Crossing(rows) => parts.crossing.extend(rows),
            }
        }
        // An interval crossing several boundaries was found at each of them.
        parts.crossing.sort();
        parts.crossing.dedup();
        Ok(parts)
    }

    /// Runs one summary query; `list` is `None` for every agent
    /// (PostgreSQL sums only).
    async fn run_summary_query(
        &self,
        dialect: Dialect,
        query: SummaryQuery,
        list: Option<&AgentList>,
    ) -> Result<Found, StoreError> {
        let filtered = list.is_some();
        let mut params = Vec::with_capacity(3);
        let failed = StoreError::query("running a report query");
        match query {
            SummaryQuery::Started { period, from, to } => {
                params.extend([Param::Int(from), Param::Int(to)]);
                params.extend(list.map(Param::Agents));
                let sql = started_sql(dialect, filtered);
                let rows: Vec<(String, String, Option<i64>)> =
                    with_pool!(&self.reader, |pool, _d| {
                        pool.report_rows(&sql, "agent, status, ms", &params).await
                    })
                    .map_err(failed)?;
                let found = rows.into_iter().map(|(agent, status, ms)| {
                    Ok(StartedSum {
                        agent: agent_from_db(&agent)?,
                        period,
                        status: status_from_db(&status)?,
                        ms: ms.unwrap_or(0),
                    })
                });
                Ok(Found::Started(found.collect::<Result<_, StoreError>>()?))
            }
            SummaryQuery::Calls { period, from, to } => {
                params.extend([Param::Int(from), Param::Int(to)]);
                params.extend(list.map(Param::Agents));
                let sql = calls_sql(dialect, filtered);
                let rows: Vec<(String, i64, Option<i64>, Option<i64>)> =
                    with_pool!(&self.reader, |pool, _d| {
                        pool.report_rows(&sql, "agent, calls, call_ms, longest_ms", &params)
                            .await
                    })
                    .map_err(failed)?;
                let found = rows.into_iter().map(|(agent, calls, call_ms, longest)| {
                    Ok(StartedCalls {
                        agent: agent_from_db(&agent)?,
                        period,
                        calls: u64::try_from(calls).map_err(StoreError::invalid_row)?,
                        call_ms: call_ms.unwrap_or(0),
                        longest_call_ms: longest.unwrap_or(0),
                    })
                });
                Ok(Found::Calls(found.collect::<Result<_, StoreError>>()?))
            }
            SummaryQuery::Crossing { boundary } => {
                params.push(Param::Int(boundary));
                params.extend(list.map(Param::Agents));
                let sql = crossing_sql(dialect);
                let rows: Vec<CrossingRow> = with_pool!(&self.reader, |pool, _d| {
                    pool.report_rows(sql, "agent, status, started_at, ended_at, seq", &params)
                        .await
                })
                .map_err(failed)?;
                let found =
                    rows.into_iter()
                        .map(|(agent, status, started_at_ms, ended_at_ms, seq)| {
                            Ok(ReportInterval {
                                agent: agent_from_db(&agent)?,
                                status: status_from_db(&status)?,
                                started_at_ms,
                                ended_at_ms,
                                resumed: seq.is_none(),
                            })
                        });
                Ok(Found::Crossing(found.collect::<Result<_, StoreError>>()?))
            }
        }
    }

    /// One agent's intervals overlapping `[from_ms, to_ms)`, by start, at
    /// most `limit` of them (the first ones); the database reads no more.
    pub async fn timeline_intervals(
        &self,
        agent: &AgentId,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<Vec<TimelineInterval>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<TimelineDbRow> = with_pool!(&self.reader, |pool, _d| {
            sqlx::query_as(TIMELINE)
                .bind(agent.as_str())
                .bind(from_ms)
                .bind(to_ms)
                .bind(limit)
                .fetch_all(pool)
                .await
        })
        .map_err(StoreError::query("reading a timeline"))?;
        // The interval in progress at `from` comes first; with `limit`
        // inside ones there may be one too many.
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        rows.into_iter()
            .take(limit)
            .map(
                |(
                    agent,
                    status,
                    reason,
                    extension_status,
                    destination,
                    started_at_ms,
                    ended_at_ms,
                )| {
                    Ok(TimelineInterval {
                        agent: agent_from_db(&agent)?,
                        status: status_from_db(&status)?,
                        reason,
                        extension_status,
                        destination,
                        started_at_ms,
                        ended_at_ms,
                    })
                },
            )
            .collect()
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_database::TestDatabase;

    /// Every report query on SQLite reads `intervals` through the one agent
    /// index (migration `..._one_agent_index`), never by scanning the table.
    #[tokio::test]
    async fn report_queries_seek_the_agent_index_on_sqlite() {
        let database = TestDatabase::sqlite().await;
        let pool = database.store.sqlite_pool().unwrap();
        // (what, SQL, parameters, which one is the agent list).
        let queries = [
            ("summary", started_sql(Dialect::Sqlite, true), 3, Some(3)),
            ("calls", calls_sql(Dialect::Sqlite, true), 3, Some(3)),
            (
                "crossing",
                crossing_sql(Dialect::Sqlite).to_owned(),
                2,
                Some(2),
            ),
            ("timeline", TIMELINE.to_owned(), 4, None),
            ("agents", ALL_AGENTS.to_owned(), 0, None),
        ];
        for (what, sql, parameters, list) in queries {
            let explain = format!("EXPLAIN QUERY PLAN {sql}");
            let mut query = sqlx::query_as::<_, (i64, i64, i64, String)>(&explain);
            for parameter in 1..=parameters {
                query = query.bind(if Some(parameter) == list {
                    r#"["alice"]"#.to_owned()
                } else {
                    parameter.to_string()
                });
            }
            let plan: Vec<String> = query
                .fetch_all(pool)
                .await
                .unwrap()
                .into_iter()
                .map(|(_, _, _, step)| step)
                .collect();
            assert!(
                plan.iter()
                    .any(|step| step.contains("intervals_agent_time")),
                "{what}: {plan:?}"
            );
            assert!(
                !plan.iter().any(|step| step.starts_with("SCAN intervals")
                    || step.starts_with("SCAN b")
                    || step.starts_with("SCAN n")),
                "{what}: {plan:?}"
            );
        }
        database.finish().await;
    }

    #[test]
    fn time_is_split_into_contiguous_parts() {
        assert_eq!(split_time(0, 10, 2), [(0, 5), (5, 10)]);
        assert_eq!(split_time(0, 11, 3), [(0, 3), (3, 6), (6, 11)]);
        assert_eq!(split_time(5, 6, 2), [(5, 6)]);
        assert_eq!(split_time(5, 7, 1), [(5, 7)]);
    }
}
