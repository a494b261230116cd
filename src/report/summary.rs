//! The summary and timeline computations (`product.md` §4), from plain lists
//! of intervals: time per status split at period boundaries, calls, average
//! and longest call, occupancy. The SQL side (`query.rs`) computes the same
//! [`PeriodTotals`] in the database; both feed [`build_summary_rows`].
//!
//! Pure: no IO and no clock (the caller passes `now`).

use std::collections::BTreeMap;

use chrono::{DateTime, FixedOffset, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::period::{from_millis, in_zone, Period};
use crate::model::{AgentId, Status};
pub use crate::store::{DailyParts, ReportInterval, StartedCalls, StartedSum, TimelineInterval};

/// The raw sums for one agent and one period, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PeriodTotals {
    /// Time in each status, indexed like [`Status::ALL`].
    pub status_ms: [i64; 9],
    /// `on_call` intervals that start in the period.
    pub calls: u64,
    /// The summed full durations of those calls.
    pub call_ms: i64,
    /// The longest of those calls.
    pub longest_call_ms: i64,
}

impl PeriodTotals {
    /// Time in one status.
    pub fn ms(&self, status: Status) -> i64 {
        self.status_ms[status_index(status)]
    }
}

/// The position of `status` in [`Status::ALL`] (and in
/// [`PeriodTotals::status_ms`]).
pub fn status_index(status: Status) -> usize {
    // `Status::ALL` lists every variant, so the search always succeeds.
    Status::ALL
        .iter()
        .position(|candidate| *candidate == status)
        .unwrap_or(0)
}

/// Every agent's totals, one entry per period (same order as the periods).
pub type TotalsByAgent = BTreeMap<AgentId, Vec<PeriodTotals>>;

/// Sums `intervals` into `periods` (sorted, contiguous).
///
/// An interval's time is split at period boundaries; an open interval ends at
/// `now`. An `on_call` interval (not resumed) is a call of the period it
/// starts in, with its full duration (an open call up to `now`), even when it
/// runs past the period. An agent gets an entry when one of its intervals has time in, or
/// is a call of, some period; agents without intervals are not added here.
pub fn accumulate(intervals: &[ReportInterval], periods: &[Period], now_ms: i64) -> TotalsByAgent {
    let mut totals = TotalsByAgent::new();
    let (Some(first), Some(last)) = (periods.first(), periods.last()) else {
        return totals;
    };
    let (range_start, range_end) = (first.start_ms(), last.end_ms());
    for interval in intervals {
        let start = interval.started_at_ms;
        let end = interval.ended_at_ms.unwrap_or(now_ms);
        if start >= range_end || (end <= range_start && start < range_start) {
            continue;
        }
        // The first period that ends after the interval starts.
        let first_index = periods.partition_point(|period| period.end_ms() <= start);
        for (index, period) in periods.iter().enumerate().skip(first_index) {
            if period.start_ms() >= end.max(start.saturating_add(1)) {
                break;
            }
            let overlap = end.min(period.end_ms()) - start.max(period.start_ms());
            let starts_here = start >= period.start_ms();
            if overlap <= 0 && !starts_here {
                continue;
            }
            let agent_totals = totals
                .entry(interval.agent.clone())
                .or_insert_with(|| vec![PeriodTotals::default(); periods.len()]);
            let period_totals = &mut agent_totals[index];
            period_totals.status_ms[status_index(interval.status)] += overlap.max(0);
            if starts_here && interval.status == Status::OnCall && !interval.resumed {
                let duration = (end - start).max(0);
                period_totals.calls += 1;
                period_totals.call_ms += duration;
                period_totals.longest_call_ms = period_totals.longest_call_ms.max(duration);
            }
        }
    }
    totals
}

/// Exact totals from the database's plain sums plus the intervals in
/// progress at a period boundary or at the range end (`crossing`: per agent
/// and boundary, the interval that started before it and had not ended,
/// open intervals included; each once).
///
/// Only those intervals can end after their period or be open, so the plain
/// sums are exact for every other interval. For each crossing interval the
/// database's contribution (its closed duration, in the period it starts in)
/// is taken out again and [`accumulate`]'s exact one put in. The result
/// equals [`accumulate`] over all intervals.
pub fn combine(
    started: &[StartedSum],
    calls: &[StartedCalls],
    crossing: &[ReportInterval],
    periods: &[Period],
    now_ms: i64,
) -> TotalsByAgent {
    let mut totals = TotalsByAgent::new();
    add_sums(&mut totals, started, calls, periods);
    for interval in crossing {
        let start = interval.started_at_ms;
        let Some(index) = periods
            .iter()
            .position(|period| period.start_ms() <= start && start < period.end_ms())
        else {
            continue;
        };
        let Some(entry) = totals.get_mut(&interval.agent) else {
            continue;
        };
        let counted = interval.ended_at_ms.map_or(0, |end| end - start);
        let period_totals = &mut entry[index];
        period_totals.status_ms[status_index(interval.status)] -= counted;
        if interval.status == Status::OnCall && !interval.resumed {
            period_totals.calls = period_totals.calls.saturating_sub(1);
            period_totals.call_ms -= counted;
        }
    }
    add_totals(&mut totals, accumulate(crossing, periods, now_ms), periods);
    totals
}

/// Exact totals from the per-day totals (`store::DailyParts`: the time of
/// closed intervals already cut at the period bounds, the closed calls by
/// the period they start in) plus every open interval. Equals
/// [`accumulate`] over all intervals when every period is a run of whole
/// days in the zone the totals were kept in.
pub fn combine_daily(parts: &DailyParts, periods: &[Period], now_ms: i64) -> TotalsByAgent {
    let mut totals = TotalsByAgent::new();
    add_sums(&mut totals, &parts.time, &parts.calls, periods);
    add_totals(
        &mut totals,
        accumulate(&parts.open, periods, now_ms),
        periods,
    );
    totals
}

/// Adds per-period sums from the database to `totals`.
fn add_sums(
    totals: &mut TotalsByAgent,
    sums: &[StartedSum],
    calls: &[StartedCalls],
    periods: &[Period],
) {
    let empty = || vec![PeriodTotals::default(); periods.len()];
    for sum in sums.iter().filter(|sum| sum.period < periods.len()) {
        let entry = totals.entry(sum.agent.clone()).or_insert_with(empty);
        entry[sum.period].status_ms[status_index(sum.status)] += sum.ms;
    }
    for call in calls.iter().filter(|call| call.period < periods.len()) {
        let entry = &mut totals.entry(call.agent.clone()).or_insert_with(empty)[call.period];
        entry.calls += call.calls;
        entry.call_ms += call.call_ms;
        entry.longest_call_ms = entry.longest_call_ms.max(call.longest_call_ms);
    }
}

/// Adds `more` (totals of the same periods) to `totals`.
fn add_totals(totals: &mut TotalsByAgent, more: TotalsByAgent, periods: &[Period]) {
    for (agent, exact) in more {
        let entry = totals
            .entry(agent)
            .or_insert_with(|| vec![PeriodTotals::default(); periods.len()]);
        for (period_totals, add) in entry.iter_mut().zip(exact) {
            for (ms, more) in period_totals.status_ms.iter_mut().zip(add.status_ms) {
                *ms += more;
            }
            period_totals.calls += add.calls;
            period_totals.call_ms += add.call_ms;
            period_totals.longest_call_ms = period_totals.longest_call_ms.max(add.longest_call_ms);
        }
    }
}

/// One row of the summary: one agent in one period. The field names are the
/// JSON keys and CSV columns (documented in the README); times are seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SummaryRow {
    /// The agent's id.
    pub agent: String,
    /// The configured display name (the id when not configured).
    pub name: String,
    /// `2026-03-29`, `2026-W13`, `2026-03` or `total`.
    pub period: String,
    /// Period start in the report time zone (clipped to the range).
    pub period_start: DateTime<FixedOffset>,
    /// Period end (exclusive) in the report time zone.
    pub period_end: DateTime<FixedOffset>,
    /// Length of the period (82800 on a 23-hour day).
    pub period_s: f64,
    /// Time covered by history: the sum of every status column.
    pub recorded_s: f64,
    /// Time logged in: every status but `offline` and `unknown`.
    pub logged_in_s: f64,
    /// Time `offline`.
    pub offline_s: f64,
    /// Time `paused`.
    pub paused_s: f64,
    /// Time `busy`.
    pub busy_s: f64,
    /// Time `unavailable`.
    pub unavailable_s: f64,
    /// Time `available`.
    pub available_s: f64,
    /// Time `ringing`.
    pub ringing_s: f64,
    /// Time `on_call`.
    pub on_call_s: f64,
    /// Time `wrapup`.
    pub wrapup_s: f64,
    /// Time `unknown` (bridge down or agent not pollable).
    pub unknown_s: f64,
    /// Calls: entries into `on_call` that start in this period.
    pub calls: u64,
    /// Mean full duration of those calls; `null` without calls.
    pub average_call_s: Option<f64>,
    /// Longest of those calls; `null` without calls.
    pub longest_call_s: Option<f64>,
    /// (`ringing`+`on_call`+`wrapup`+`busy`) / (`logged_in` − `paused`),
    /// 0 to 1, four decimals; `null` when the denominator is 0.
    pub occupancy: Option<f64>,
}

/// Seconds from milliseconds (exact to the millisecond).
pub fn seconds(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

/// Builds the rows for `agents` (in that order) from their totals; an agent
/// without totals gets rows of zeros.
pub fn build_summary_rows(
    agents: &[(AgentId, String)],
    totals: &TotalsByAgent,
    periods: &[Period],
    tz: Tz,
) -> Vec<SummaryRow> {
    let zeros = vec![PeriodTotals::default(); periods.len()];
    let mut rows = Vec::with_capacity(agents.len() * periods.len());
    for (agent, name) in agents {
        let agent_totals = totals.get(agent).unwrap_or(&zeros);
        for (period, period_totals) in periods.iter().zip(agent_totals) {
            rows.push(summary_row(agent, name, period, period_totals, tz));
        }
    }
    rows
}

fn summary_row(
    agent: &AgentId,
    name: &str,
    period: &Period,
    totals: &PeriodTotals,
    tz: Tz,
) -> SummaryRow {
    let ms = |status| totals.ms(status);
    let recorded: i64 = totals.status_ms.iter().sum();
    let logged_in: i64 = Status::ALL
        .into_iter()
        .filter(|status| status.logged_in())
        .map(ms)
        .sum();
    let occupied = ms(Status::Ringing) + ms(Status::OnCall) + ms(Status::Wrapup) + ms(Status::Busy);
    let workable = logged_in - ms(Status::Paused);
    let occupancy =
        (workable > 0).then(|| (occupied as f64 / workable as f64 * 10_000.0).round() / 10_000.0);
    let calls = totals.calls;
    SummaryRow {
        agent: agent.to_string(),
        name: name.to_owned(),
        period: period.label.clone(),
        period_start: in_zone(period.start, tz),
        period_end: in_zone(period.end, tz),
        period_s: seconds(period.end_ms() - period.start_ms()),
        recorded_s: seconds(recorded),
        logged_in_s: seconds(logged_in),
        offline_s: seconds(ms(Status::Offline)),
        paused_s: seconds(ms(Status::Paused)),
        busy_s: seconds(ms(Status::Busy)),
        unavailable_s: seconds(ms(Status::Unavailable)),
        available_s: seconds(ms(Status::Available)),
        ringing_s: seconds(ms(Status::Ringing)),
        on_call_s: seconds(ms(Status::OnCall)),
        wrapup_s: seconds(ms(Status::Wrapup)),
        unknown_s: seconds(ms(Status::Unknown)),
        calls,
        average_call_s: (calls > 0).then(|| seconds(totals.call_ms / calls as i64)),
        longest_call_s: (calls > 0).then(|| seconds(totals.longest_call_ms)),
        occupancy,
    }
}

/// One row of the timeline. The field names are the JSON keys and CSV
/// columns (documented in the README).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineRow {
    /// The agent's id.
    pub agent: String,
    /// The status.
    pub status: Status,
    /// When the interval began, in the report time zone (not clipped to the
    /// range: the first interval may start before `from`).
    pub started_at: DateTime<FixedOffset>,
    /// When it ended; `null` while it is the agent's current status.
    pub ended_at: Option<DateTime<FixedOffset>>,
    /// Its full length in seconds (an open interval up to now).
    pub duration_s: f64,
    /// The raw upstream reason, when not available.
    pub reason: Option<String>,
    /// The extension status, when available.
    pub extension_status: Option<String>,
    /// The number the agent was reached at.
    pub destination: Option<String>,
}

/// The timeline rows of the intervals that overlap `[from_ms, to_ms)`, in
/// order of agent (as listed in `agents`) and start, unclipped.
pub fn build_timeline_rows(
    agents: &[AgentId],
    intervals: &[TimelineInterval],
    from_ms: i64,
    to_ms: i64,
    now_ms: i64,
    tz: Tz,
) -> Vec<TimelineRow> {
    let mut rows = Vec::new();
    for agent in agents {
        let mut selected: Vec<&TimelineInterval> = intervals
            .iter()
            .filter(|interval| {
                &interval.agent == agent
                    && interval.started_at_ms < to_ms
                    && (interval.started_at_ms >= from_ms
                        || interval.ended_at_ms.is_none_or(|end| end > from_ms))
            })
            .collect();
        selected.sort_by_key(|interval| interval.started_at_ms);
        rows.extend(
            selected
                .into_iter()
                .map(|interval| timeline_row(interval, now_ms, tz)),
        );
    }
    rows
}

/// One timeline row from one interval.
pub fn timeline_row(interval: &TimelineInterval, now_ms: i64, tz: Tz) -> TimelineRow {
    let end = interval.ended_at_ms.unwrap_or(now_ms);
    TimelineRow {
        agent: interval.agent.to_string(),
        status: interval.status,
        started_at: in_zone(from_millis(interval.started_at_ms), tz),
        ended_at: interval.ended_at_ms.map(|ms| in_zone(from_millis(ms), tz)),
        duration_s: seconds((end - interval.started_at_ms).max(0)),
        reason: interval.reason.clone(),
        extension_status: interval.extension_status.clone(),
        destination: interval.destination.clone(),
    }
}

/// The instant `now` in milliseconds, for the functions above.
pub fn now_ms(now: DateTime<Utc>) -> i64 {
    now.timestamp_millis()
}
