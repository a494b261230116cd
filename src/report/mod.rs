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
}

impl ReportError {
    /// An [`ReportError::InvalidParameter`].
    pub fn invalid(parameter: &'static str, message: impl ToString) -> Self {
        ReportError::InvalidParameter {
            parameter,
            message: message.to_string(),
        }
    }
}

/// What reports need besides the history: the time zone and the configured
/// agents (their display names, and who to list when no agent is asked for).
#[derive(Debug, Clone)]
pub struct ReportSettings {
    /// Periods are cut at local midnight in this zone; times are shown in it.
    pub tz: Tz,
    /// Configured agents with their display names, in configuration order.
    pub agents: Vec<(AgentId, String)>,
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
    let mut rows = Vec::new();
    for agent in &agents {
        let intervals = store.timeline_intervals(agent, from_ms, to_ms).await?;
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
