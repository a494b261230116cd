//! Per-day totals (migration `..._daily_totals`): per agent and local day,
//! the time in each status and the calls, added in the same transaction that
//! closes the intervals, so a report over whole days reads a few thousand
//! rows however long the history is (`product.md` §8).
//!
//! Only closed intervals are counted; a report adds each agent's open
//! interval itself. The days are cut in one time zone, recorded in
//! `daily_rollup`; when the configured zone differs (or the totals were
//! never built, e.g. after an upgrade), [`Store::keep_daily_totals`] rebuilds
//! them from the intervals in one transaction. Reports whose periods are not
//! whole days in that zone use the intervals instead (`reports.rs`).

use chrono_tz::Tz;

use crate::model::AgentId;

use super::dialect::{with_pool, BulkWrites, WritePool};
use super::reports::{AgentList, Param, ReportInterval, ReportReads, StartedCalls, StartedSum};
use super::rows::{agent_from_db, daily_rows, status_from_db, ClosedInterval};
use super::{Store, StoreError};

/// A row of [`period_status_sql`]: agent, status, ms.
type TimeRow = (String, String, i64);

/// A row of [`period_calls_sql`]: agent, calls, call_ms, longest_ms.
type CallsRow = (String, i64, i64, i64);

/// Intervals read per step of a rebuild.
const REBUILD_PAGE: usize = 50_000;

/// The time zone the totals are cut in.
const READ_ZONE: &str = "SELECT timezone FROM daily_rollup WHERE id = 1";

/// Per agent and status, the time in days `[$1, $2)`.
fn period_status_sql(filtered: bool, dialect: super::dialect::Dialect) -> String {
    let agents = if filtered {
        format!(
            " AND {}",
            super::reports::agent_in_list(dialect, "agent", 3)
        )
    } else {
        String::new()
    };
    format!(
        "SELECT agent, status, CAST(SUM(ms) AS BIGINT) AS ms FROM daily_status \
         WHERE day_start >= $1 AND day_start < $2{agents} GROUP BY agent, status"
    )
}

/// Per agent, the calls of days `[$1, $2)`.
fn period_calls_sql(filtered: bool, dialect: super::dialect::Dialect) -> String {
    let agents = if filtered {
        format!(
            " AND {}",
            super::reports::agent_in_list(dialect, "agent", 3)
        )
    } else {
        String::new()
    };
    format!(
        "SELECT agent, CAST(SUM(calls) AS BIGINT) AS calls, CAST(SUM(call_ms) AS BIGINT) AS call_ms, \
         CAST(MAX(longest_ms) AS BIGINT) AS longest_ms FROM daily_calls \
         WHERE day_start >= $1 AND day_start < $2{agents} GROUP BY agent"
    )
}

/// The open intervals (of the agents in `$1` when filtered).
fn open_sql(filtered: bool, dialect: super::dialect::Dialect) -> String {
    let agents = if filtered {
        format!(
            " AND {}",
            super::reports::agent_in_list(dialect, "agent", 1)
        )
    } else {
        String::new()
    };
    format!("SELECT agent, status, started_at, seq FROM intervals WHERE ended_at IS NULL{agents}")
}

/// A summary's database part from the per-day totals: per period, agent and
/// status the time in the period of the closed intervals; per period and
/// agent the calls starting in it; and every open interval.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DailyParts {
    /// Time of closed intervals in each period (already cut at its bounds).
    pub time: Vec<StartedSum>,
    /// Closed calls starting in each period.
    pub calls: Vec<StartedCalls>,
    /// The open intervals.
    pub open: Vec<ReportInterval>,
}

/// What [`Store::keep_daily_totals`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DailyTotals {
    /// The totals were already kept in this zone.
    Current,
    /// They were rebuilt from this many closed intervals.
    Rebuilt {
        /// Closed intervals read.
        intervals: u64,
    },
}

impl Store {
    /// From now on this store adds to the per-day totals in `tz` as it
    /// writes; rebuilds them first when they were kept in another zone or
    /// never built (in one transaction: readers see the old totals or the
    /// new, and a writer of another bridge waits).
    pub async fn keep_daily_totals(&mut self, tz: Tz) -> Result<DailyTotals, StoreError> {
        let current: Option<String> = with_pool!(&self.writer, |pool, _d| {
            sqlx::query_scalar(READ_ZONE).fetch_optional(pool).await
        })
        .map_err(StoreError::query("reading the per-day totals' time zone"))?;
        if current.as_deref() == Some(tz.name()) {
            self.daily = Some(tz);
            return Ok(DailyTotals::Current);
        }
        let intervals = self.rebuild_daily_totals(tz).await?;
        self.daily = Some(tz);
        Ok(DailyTotals::Rebuilt { intervals })
    }

    /// Rebuilds the per-day totals in `tz` from every closed interval.
    async fn rebuild_daily_totals(&self, tz: Tz) -> Result<u64, StoreError> {
        let failed = || StoreError::query("rebuilding the per-day totals");
        with_pool!(&self.writer, |pool, _d| {
            let mut transaction = pool.begin_long_write().await.map_err(failed())?;
            for sql in [
                "DELETE FROM daily_rollup",
                "DELETE FROM daily_status",
                "DELETE FROM daily_calls",
            ] {
                sqlx::query(sql)
                    .execute(&mut *transaction)
                    .await
                    .map_err(failed())?;
            }
            let mut after = i64::MIN;
            let mut read = 0u64;
            loop {
                let page = transaction
                    .closed_intervals_after(after, REBUILD_PAGE)
                    .await
                    .map_err(failed())?;
                let Some(&(last_id, _)) = page.last() else {
                    break;
                };
                after = last_id;
                read += page.len() as u64;
                let closed: Vec<ClosedInterval> =
                    page.into_iter().map(|(_, interval)| interval).collect();
                transaction
                    .add_daily(&daily_rows(&closed, tz))
                    .await
                    .map_err(failed())?;
            }
            sqlx::query("INSERT INTO daily_rollup (id, timezone) VALUES (1, $1)")
                .bind(tz.name())
                .execute(&mut *transaction)
                .await
                .map_err(failed())?;
            transaction.commit().await.map_err(failed())?;
            Ok(read)
        })
    }

    /// Adds closed intervals to the per-day totals, when this store keeps
    /// them; inside the caller's transaction.
    pub(crate) async fn add_daily<C: BulkWrites + Send>(
        &self,
        connection: &mut C,
        closed: &[ClosedInterval],
    ) -> Result<(), StoreError> {
        let Some(tz) = self.daily else {
            return Ok(());
        };
        let rows = daily_rows(closed, tz);
        if rows.is_empty() {
            return Ok(());
        }
        connection
            .add_daily(&rows)
            .await
            .map_err(StoreError::query("adding to the per-day totals"))
    }

    /// The database's part of a summary from the per-day totals, or `None`
    /// when they are not kept in `tz` (the caller then reads the intervals).
    /// `periods` are `[start, end)` in ms, each a run of whole local days in
    /// `tz`; `agents` empty means every agent.
    pub async fn daily_parts(
        &self,
        tz: Tz,
        agents: &[AgentId],
        periods: &[(i64, i64)],
    ) -> Result<Option<DailyParts>, StoreError> {
        let failed = || StoreError::query("reading the per-day totals");
        let zone: Option<String> = with_pool!(&self.reader, |pool, _d| {
            sqlx::query_scalar(READ_ZONE).fetch_optional(pool).await
        })
        .map_err(failed())?;
        if zone.as_deref() != Some(tz.name()) {
            return Ok(None);
        }
        let ids: Vec<String> = agents.iter().map(|a| a.as_str().to_owned()).collect();
        let list = AgentList::new(&ids);
        let filtered = !agents.is_empty();
        let mut parts = DailyParts::default();
        for (period, &(from, to)) in periods.iter().enumerate() {
            let mut params = vec![Param::Int(from), Param::Int(to)];
            if filtered {
                params.push(Param::Agents(&list));
            }
            let (time, calls): (Vec<TimeRow>, Vec<CallsRow>) =
                with_pool!(&self.reader, |pool, dialect| {
                    let time = pool
                        .report_rows(
                            &period_status_sql(filtered, dialect),
                            "agent, status, ms",
                            &params,
                        )
                        .await;
                    let calls = pool
                        .report_rows(
                            &period_calls_sql(filtered, dialect),
                            "agent, calls, call_ms, longest_ms",
                            &params,
                        )
                        .await;
                    time.and_then(|time| Ok((time, calls?)))
                })
                .map_err(failed())?;
            for (agent, status, ms) in time {
                parts.time.push(StartedSum {
                    agent: agent_from_db(&agent)?,
                    period,
                    status: status_from_db(&status)?,
                    ms,
                });
            }
            for (agent, calls, call_ms, longest_call_ms) in calls {
                parts.calls.push(StartedCalls {
                    agent: agent_from_db(&agent)?,
                    period,
                    calls: u64::try_from(calls).map_err(StoreError::invalid_row)?,
                    call_ms,
                    longest_call_ms,
                });
            }
        }
        let params: Vec<Param<'_>> = if filtered {
            vec![Param::Agents(&list)]
        } else {
            Vec::new()
        };
        let open: Vec<(String, String, i64, Option<i64>)> =
            with_pool!(&self.reader, |pool, dialect| {
                pool.report_rows(
                    &open_sql(filtered, dialect),
                    "agent, status, started_at, seq",
                    &params,
                )
                .await
            })
            .map_err(failed())?;
        for (agent, status, started_at_ms, seq) in open {
            parts.open.push(ReportInterval {
                agent: agent_from_db(&agent)?,
                status: status_from_db(&status)?,
                started_at_ms,
                ended_at_ms: None,
                resumed: seq.is_none(),
            });
        }
        Ok(Some(parts))
    }
}
