//! Reports on the status history (`product.md` §4): the per-agent, per-period
//! summary and the timeline of intervals, as tables, CSV or JSON, for the
//! `report` CLI and the HTTP API.
//!
//! Layout: `period` cuts ranges into local days/weeks/months (pure);
//! `summary` computes rows from lists of intervals (pure); `query` fetches or
//! aggregates the same numbers in SQL on SQLite and PostgreSQL; `format`
//! renders; `cli` is the `report` subcommand. This module never writes to the
//! history and never decides what is stored; it only reads.

pub mod cli;
pub mod format;
pub mod period;
pub mod summary;

use chrono::{DateTime, FixedOffset, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::config::{AgentConfig, ReportConfig};
use crate::localtime::is_start_of_local_day;
use crate::model::AgentId;
use crate::store::{Store, StoreError};

pub use cli::ReportCommand;
pub use format::OutputFormat;
pub use period::{Granularity, Period, RangeBound, RangeError, ReportRange};
pub use summary::{ReportInterval, SummaryRow, TimelineInterval, TimelineRow};

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A request parameter is wrong; `parameter` is its CLI/HTTP name.
    #[error("invalid `{parameter}`: {message}")]
    InvalidParameter {
        /// `from`, `to`, `agent`, `by` or `format`.
        parameter: &'static str,
        /// What is wrong and what to write instead.
        message: String,
    },
    /// The history database failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The history holds a value the report does not understand.
    #[error("history holds an unexpected value: {0}")]
    Corrupt(String),
    /// The request is over one of the `[report]` limits; refused before the
    /// work (or as soon as the limit is reached), never half answered.
    #[error("{message}")]
    LimitExceeded {
        /// The configuration key of the limit, e.g. `report.max_cells`.
        limit: &'static str,
        /// The limit's value.
        max: usize,
        /// The request's value (at least `max + 1`).
        value: usize,
        /// What is too big, the limit and what to ask for instead.
        message: String,
    },
    /// The report did not finish within `report.timeout`.
    #[error("the report did not finish within report.timeout ({} s); ask for fewer agents or a shorter range, or raise report.timeout", .0.as_secs_f64())]
    TimedOut(std::time::Duration),
}

impl ReportError {
    /// An [`ReportError::InvalidParameter`].
    pub fn invalid(parameter: &'static str, message: impl ToString) -> Self {
        ReportError::InvalidParameter {
            parameter,
            message: message.to_string(),
        }
    }

    /// True when the request itself is wrong or too big (HTTP 400, CLI exit
    /// code 2), not the database or the history.
    pub fn is_bad_request(&self) -> bool {
        matches!(
            self,
            ReportError::InvalidParameter { .. } | ReportError::LimitExceeded { .. }
        )
    }
}

/// The bounds on reports (`[report]`): cells of a summary, rows of a
/// timeline, time of one report, reports at once over HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportLimits {
    /// `report.max_cells`: agents × periods of one summary.
    pub max_cells: usize,
    /// `report.max_timeline_rows`: intervals of one timeline.
    pub max_timeline_rows: usize,
    /// `report.timeout`: the longest one report may take.
    pub timeout: std::time::Duration,
    /// `report.max_concurrent`: reports running at once over HTTP.
    pub max_concurrent: usize,
}

impl Default for ReportLimits {
    /// The configuration's defaults (the README's `[report]` table).
    fn default() -> Self {
        Self {
            max_cells: 200_000,
            max_timeline_rows: 500_000,
            timeout: std::time::Duration::from_secs(30),
            max_concurrent: 2,
        }
    }
}

impl ReportLimits {
    /// The limits of the `[report]` section.
    pub fn from_config(report: &ReportConfig) -> Self {
        Self {
            max_cells: report.max_cells,
            max_timeline_rows: report.max_timeline_rows,
            timeout: report.timeout,
            max_concurrent: report.max_concurrent,
        }
    }

    /// Refuses a summary of `agents` × `periods` cells over `max_cells`;
    /// `who` says which agents were counted.
    pub fn check_cells(&self, agents: usize, periods: usize, who: &str) -> Result<(), ReportError> {
        let cells = agents.saturating_mul(periods);
        if cells <= self.max_cells {
            return Ok(());
        }
        Err(ReportError::LimitExceeded {
            limit: "report.max_cells",
            max: self.max_cells,
            value: cells,
            message: format!(
                "the summary would have {cells} cells ({agents} {who} × {periods} periods), over report.max_cells {}; ask for fewer agents, a shorter range or a coarser `by`",
                self.max_cells
            ),
        })
    }

    /// Refuses a list of more agent ids than `max` (`limit` names it): a
    /// report for more agents than that is over its limit whatever the range.
    /// Called while the list is read, so it never grows past `max + 1`.
    pub fn check_agent_count(
        count: usize,
        max: usize,
        limit: &'static str,
    ) -> Result<(), ReportError> {
        if count <= max {
            return Ok(());
        }
        Err(ReportError::LimitExceeded {
            limit,
            max,
            value: count,
            message: format!(
                "more than {max} agent ids, over {limit} {max} (every agent is at least one row); ask for fewer agents"
            ),
        })
    }

    /// The error of a timeline that reached `max_timeline_rows + 1` rows.
    pub fn timeline_too_long(&self) -> ReportError {
        let max = self.max_timeline_rows;
        ReportError::LimitExceeded {
            limit: "report.max_timeline_rows",
            max,
            value: max.saturating_add(1),
            message: format!(
                "the timeline has more than {max} intervals, over report.max_timeline_rows {max}; ask for fewer agents or a shorter range"
            ),
        }
    }
}

/// What reports need besides the history: the time zone and the configured
/// agents (their display names, and who to list when no agent is asked for).
#[derive(Debug, Clone)]
pub struct ReportSettings {
    /// Periods are cut at local midnight in this zone; times are shown in it.
    pub tz: Tz,
    /// Configured agents with their display names, in configuration order
    /// (shared: the HTTP server's state is cloned for every request).
    pub agents: std::sync::Arc<[(AgentId, String)]>,
    /// The bounds on one report.
    pub limits: ReportLimits,
}

impl ReportSettings {
    /// Settings from the `[report]` section and the `[[agents]]`.
    pub fn from_config(report: &ReportConfig, agents: &[AgentConfig]) -> Self {
        Self {
            tz: report.tz(),
            agents: agents
                .iter()
                .map(|agent| (agent.id.clone(), agent.display_name().to_owned()))
                .collect(),
            limits: ReportLimits::from_config(report),
        }
    }
}

/// A summary request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SummaryRequest {
    /// The range `[from, to)`.
    pub range: ReportRange,
    /// How the range is cut.
    pub by: Granularity,
    /// Only these agents (each gets rows, zeros without history); empty means
    /// every configured agent plus every agent with history in the range.
    pub agents: Vec<AgentId>,
}

/// A timeline request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineRequest {
    /// The range `[from, to)`: intervals overlapping it are listed.
    pub range: ReportRange,
    /// The agents (at least one).
    pub agents: Vec<AgentId>,
}

/// A summary: the JSON document of `report summary --format json` and
/// `GET /api/reports/summary`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SummaryReport {
    /// The report time zone, e.g. `Europe/Amsterdam`.
    pub timezone: String,
    /// Range start, in the report time zone.
    pub from: DateTime<FixedOffset>,
    /// Range end (exclusive), in the report time zone.
    pub to: DateTime<FixedOffset>,
    /// `day`, `week`, `month` or `total`.
    pub by: Granularity,
    /// The `now` open intervals were counted up to.
    pub generated_at: DateTime<FixedOffset>,
    /// One row per agent and period, by agent id then period.
    pub rows: Vec<SummaryRow>,
}

/// A timeline: the JSON document of `report timeline --format json` and
/// `GET /api/reports/timeline`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineReport {
    /// The report time zone.
    pub timezone: String,
    /// Range start, in the report time zone.
    pub from: DateTime<FixedOffset>,
    /// Range end (exclusive), in the report time zone.
    pub to: DateTime<FixedOffset>,
    /// The `now` open intervals were counted up to.
    pub generated_at: DateTime<FixedOffset>,
    /// The intervals overlapping the range, by agent id then start.
    pub intervals: Vec<TimelineRow>,
}

/// The summary from the history store: totals aggregated in SQL per agent
/// and period (see `query`), then the same row building as [`summarize`].
pub async fn summary(
    store: &Store,
    request: &SummaryRequest,
    settings: &ReportSettings,
    now: DateTime<Utc>,
) -> Result<SummaryReport, ReportError> {
    let periods = request_periods(request, settings)?;
    let mut agents = request.agents.clone();
    agents.sort();
    agents.dedup();
    let limits = &settings.limits;
    if agents.is_empty() {
        limits.check_cells(settings.agents.len(), periods.len(), "configured agents")?;
        // Every configured agent and every agent with history: the queries
        // below read each of them in every period, so count them first.
        let mut every: std::collections::BTreeSet<String> =
            store.agents_with_history().await?.into_iter().collect();
        every.extend(settings.agents.iter().map(|(id, _)| id.as_str().to_owned()));
        limits.check_cells(
            every.len(),
            periods.len(),
            "agents (configured or with history)",
        )?;
    } else {
        limits.check_cells(agents.len(), periods.len(), "agents")?;
    }
    let now_ms = now.timestamp_millis();
    let bounds: Vec<(i64, i64)> = periods
        .iter()
        .map(|period| (period.start_ms(), period.end_ms()))
        .collect();
    let whole_days = periods.iter().all(|period| {
        is_start_of_local_day(period.start, settings.tz)
            && is_start_of_local_day(period.end, settings.tz)
    });
    let daily = if whole_days {
        store.daily_parts(settings.tz, &agents, &bounds).await?
    } else {
        None
    };
    let totals = match daily {
        Some(parts) => summary::combine_daily(&parts, &periods, now_ms),
        None => {
            let parts = store.summary_parts(&agents, &bounds).await?;
            summary::combine(
                &parts.started,
                &parts.calls,
                &parts.crossing,
                &periods,
                now_ms,
            )
        }
    };
    Ok(assemble_summary(request, settings, &periods, &totals, now))
}

/// The checks of a summary request that need no database: the range cuts
/// into at most [`period::MAX_PERIODS`] periods, and the agents named times
/// the periods fit `report.max_cells`. [`summary`] makes them again (and,
/// for every agent, counts the agents with history first).
pub fn check_summary(
    request: &SummaryRequest,
    settings: &ReportSettings,
) -> Result<(), ReportError> {
    let periods = request_periods(request, settings)?;
    let mut agents: Vec<&AgentId> = request.agents.iter().collect();
    agents.sort();
    agents.dedup();
    if agents.is_empty() {
        settings
            .limits
            .check_cells(settings.agents.len(), periods.len(), "configured agents")
    } else {
        settings
            .limits
            .check_cells(agents.len(), periods.len(), "agents")
    }
}

/// The timeline from the history store: each agent's intervals overlapping
/// the range, unclipped, by agent id then start.
pub async fn timeline(
    store: &Store,
    request: &TimelineRequest,
    settings: &ReportSettings,
    now: DateTime<Utc>,
) -> Result<TimelineReport, ReportError> {
    let agents = timeline_agents(request)?;
    let (from_ms, to_ms) = (
        request.range.from.timestamp_millis(),
        request.range.to.timestamp_millis(),
    );
    let max_rows = settings.limits.max_timeline_rows;
    let mut rows = Vec::new();
    for agent in &agents {
        // Reads at most one row past the limit, so a too-long timeline is
        // known without reading it all.
        let room = max_rows.saturating_add(1).saturating_sub(rows.len());
        let intervals = store
            .timeline_intervals(agent, from_ms, to_ms, room)
            .await?;
        if rows.len() + intervals.len() > max_rows {
            return Err(settings.limits.timeline_too_long());
        }
        rows.extend(
            intervals.iter().map(|interval| {
                summary::timeline_row(interval, now.timestamp_millis(), settings.tz)
            }),
        );
    }
    Ok(assemble_timeline(request, settings, rows, now))
}

/// The summary computed from a list of intervals (the pure reference the SQL
/// path must match). `intervals` may hold more than the range and agents.
pub fn summarize(
    intervals: &[ReportInterval],
    request: &SummaryRequest,
    settings: &ReportSettings,
    now: DateTime<Utc>,
) -> Result<SummaryReport, ReportError> {
    let periods = request_periods(request, settings)?;
    let selected: Vec<ReportInterval> = if request.agents.is_empty() {
        intervals.to_vec()
    } else {
        intervals
            .iter()
            .filter(|interval| request.agents.contains(&interval.agent))
            .cloned()
            .collect()
    };
    let totals = summary::accumulate(&selected, &periods, now.timestamp_millis());
    Ok(assemble_summary(request, settings, &periods, &totals, now))
}

/// The timeline computed from a list of intervals (the pure reference).
pub fn timeline_of(
    intervals: &[TimelineInterval],
    request: &TimelineRequest,
    settings: &ReportSettings,
    now: DateTime<Utc>,
) -> Result<TimelineReport, ReportError> {
    let agents = timeline_agents(request)?;
    let rows = summary::build_timeline_rows(
        &agents,
        intervals,
        request.range.from.timestamp_millis(),
        request.range.to.timestamp_millis(),
        now.timestamp_millis(),
        settings.tz,
    );
    Ok(assemble_timeline(request, settings, rows, now))
}

fn request_periods(
    request: &SummaryRequest,
    settings: &ReportSettings,
) -> Result<Vec<Period>, ReportError> {
    period::periods(request.range, request.by, settings.tz)
        .map_err(|error| ReportError::invalid("by", error))
}

fn timeline_agents(request: &TimelineRequest) -> Result<Vec<AgentId>, ReportError> {
    if request.agents.is_empty() {
        return Err(ReportError::invalid(
            "agent",
            "name at least one agent, e.g. `agent=alice`",
        ));
    }
    let mut agents = request.agents.clone();
    agents.sort();
    agents.dedup();
    Ok(agents)
}

fn assemble_summary(
    request: &SummaryRequest,
    settings: &ReportSettings,
    periods: &[Period],
    totals: &summary::TotalsByAgent,
    now: DateTime<Utc>,
) -> SummaryReport {
    let mut agents: Vec<AgentId> = if request.agents.is_empty() {
        let mut all: Vec<AgentId> = settings.agents.iter().map(|(id, _)| id.clone()).collect();
        all.extend(totals.keys().cloned());
        all
    } else {
        request.agents.clone()
    };
    agents.sort();
    agents.dedup();
    let names: std::collections::HashMap<&AgentId, &str> = settings
        .agents
        .iter()
        .map(|(id, name)| (id, name.as_str()))
        .collect();
    let named: Vec<(AgentId, String)> = agents
        .into_iter()
        .map(|agent| {
            let name = names
                .get(&agent)
                .map_or_else(|| agent.to_string(), |n| (*n).to_owned());
            (agent, name)
        })
        .collect();
    SummaryReport {
        timezone: settings.tz.name().to_owned(),
        from: period::in_zone(request.range.from, settings.tz),
        to: period::in_zone(request.range.to, settings.tz),
        by: request.by,
        generated_at: period::in_zone(period::from_millis(now.timestamp_millis()), settings.tz),
        rows: summary::build_summary_rows(&named, totals, periods, settings.tz),
    }
}

fn assemble_timeline(
    request: &TimelineRequest,
    settings: &ReportSettings,
    intervals: Vec<TimelineRow>,
    now: DateTime<Utc>,
) -> TimelineReport {
    TimelineReport {
        timezone: settings.tz.name().to_owned(),
        from: period::in_zone(request.range.from, settings.tz),
        to: period::in_zone(request.range.to, settings.tz),
        generated_at: period::in_zone(period::from_millis(now.timestamp_millis()), settings.tz),
        intervals,
    }
}

#[cfg(test)]
pub(crate) mod tests;

#[cfg(test)]
pub(crate) mod sql_tests;
