//! Hand-computed expectations for the pure summary and timeline, and the
//! output formats. The SQL path is checked against these computations in
//! `tests/report.rs`.

use chrono::{DateTime, Utc};

use super::format::{from_csv, render_summary, render_timeline, OutputFormat};
use super::period::{self, Granularity, Period, RangeBound, ReportRange};
use super::summary::{ReportInterval, SummaryRow, TimelineInterval, TimelineRow};
use super::*;
use crate::model::{AgentId, Status};

const AMSTERDAM: chrono_tz::Tz = chrono_tz::Europe::Amsterdam;

/// `(agent, status, start, end)`; times RFC 3339, end `None` = open.
pub(crate) type Spec<'a> = (&'a str, &'a str, &'a str, Option<&'a str>);

pub(crate) fn at(raw: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(raw)
        .unwrap_or_else(|e| panic!("{raw}: {e}"))
        .with_timezone(&Utc)
}

pub(crate) fn ms(raw: &str) -> i64 {
    at(raw).timestamp_millis()
}

pub(crate) fn agent(raw: &str) -> AgentId {
    AgentId::parse(raw).unwrap()
}

/// Report intervals from specs; a status written `on_call*` is a resumed
/// interval (stored without seq).
pub(crate) fn intervals(specs: &[Spec]) -> Vec<ReportInterval> {
    specs
        .iter()
        .map(|(id, status, start, end)| ReportInterval {
            agent: agent(id),
            status: status.trim_end_matches('*').parse().unwrap(),
            started_at_ms: ms(start),
            ended_at_ms: end.map(ms),
            resumed: status.ends_with('*'),
        })
        .collect()
}

pub(crate) fn settings() -> ReportSettings {
    ReportSettings {
        tz: AMSTERDAM,
        agents: vec![(agent("carol"), "Carol C.".to_owned())].into(),
        limits: crate::report::ReportLimits::default(),
    }
}

fn bound(raw: &str) -> Option<RangeBound> {
    Some(raw.parse().unwrap())
}

/// A row as `agent period period_s [status=s ...] [calls=n avg=s longest=s]
/// [occ=x]`, listing only non-zero statuses; also checks that the statuses
/// add up to `recorded_s` and the logged-in ones to `logged_in_s`.
fn describe(row: &SummaryRow) -> String {
    let statuses = [
        ("offline", row.offline_s),
        ("paused", row.paused_s),
        ("busy", row.busy_s),
        ("unavailable", row.unavailable_s),
        ("available", row.available_s),
        ("ringing", row.ringing_s),
        ("on_call", row.on_call_s),
        ("wrapup", row.wrapup_s),
        ("unknown", row.unknown_s),
    ];
    let sum: f64 = statuses.iter().map(|(_, s)| s).sum();
    assert_eq!(sum, row.recorded_s, "{row:?}");
    assert_eq!(
        row.logged_in_s,
        sum - row.offline_s - row.unknown_s,
        "{row:?}"
    );
    let mut out = format!("{} {} {}", row.agent, row.period, row.period_s);
    for (name, seconds) in statuses {
        if seconds != 0.0 {
            out += &format!(" {name}={seconds}");
        }
    }
    if row.calls > 0 {
        out += &format!(
            " calls={} avg={} longest={}",
            row.calls,
            row.average_call_s.unwrap(),
            row.longest_call_s.unwrap()
        );
    } else {
        assert_eq!((row.average_call_s, row.longest_call_s), (None, None));
    }
    if let Some(occupancy) = row.occupancy {
        out += &format!(" occ={occupancy}");
    }
    out
}

/// Summarizes `specs` over `from..=to` and compares the described rows.
fn check(
    specs: &[Spec],
    (from, to): (&str, &str),
    by: Granularity,
    agents: &[&str],
    now: &str,
    expected: &[&str],
) {
    let now = at(now);
    let request = SummaryRequest {
        range: ReportRange::resolve(bound(from), bound(to), AMSTERDAM, now).unwrap(),
        by,
        agents: agents.iter().map(|id| agent(id)).collect(),
    };
    let report = summarize(&intervals(specs), &request, &settings(), now).unwrap();
    let actual: Vec<String> = report.rows.iter().map(describe).collect();
    assert_eq!(actual, expected, "{from}..{to} by {by}");
}

/// History of `intervals_crossing_midnight_are_split_and_calls_count_where_they_start`.
pub(crate) const CROSSING_MIDNIGHT: &[Spec] = &[
    (
        "alice",
        "available",
        "2026-03-26T22:00:00+01:00",
        Some("2026-03-26T23:55:00+01:00"),
    ),
    (
        "alice",
        "on_call",
        "2026-03-26T23:55:00+01:00",
        Some("2026-03-27T00:05:00+01:00"),
    ),
    (
        "alice",
        "wrapup",
        "2026-03-27T00:05:00+01:00",
        Some("2026-03-27T00:06:00+01:00"),
    ),
    (
        "alice",
        "offline",
        "2026-03-27T00:06:00+01:00",
        Some("2026-03-27T08:00:00+01:00"),
    ),
];

/// History of `an_open_interval_counts_up_to_now_clamped_to_the_range`.
pub(crate) const OPEN_CALL: &[Spec] = &[
    (
        "bob",
        "available",
        "2026-11-22T08:00:00+01:00",
        Some("2026-11-22T09:00:00+01:00"),
    ),
    ("bob", "on_call", "2026-11-22T09:00:00+01:00", None),
];

/// History of `the_spring_forward_day_has_23_hours_and_the_numbers_add_up`.
pub(crate) const SPRING_FORWARD: &[Spec] = &[
    (
        "alice",
        "offline",
        "2026-03-28T18:00:00+01:00",
        Some("2026-03-29T08:00:00+02:00"),
    ),
    (
        "alice",
        "available",
        "2026-03-29T08:00:00+02:00",
        Some("2026-03-29T12:00:00+02:00"),
    ),
    (
        "alice",
        "paused",
        "2026-03-29T12:00:00+02:00",
        Some("2026-03-29T12:30:00+02:00"),
    ),
    (
        "alice",
        "ringing",
        "2026-03-29T12:30:00+02:00",
        Some("2026-03-29T12:30:10+02:00"),
    ),
    (
        "alice",
        "on_call",
        "2026-03-29T12:30:10+02:00",
        Some("2026-03-29T12:40:10+02:00"),
    ),
    (
        "alice",
        "wrapup",
        "2026-03-29T12:40:10+02:00",
        Some("2026-03-29T12:45:00+02:00"),
    ),
    (
        "alice",
        "offline",
        "2026-03-29T12:45:00+02:00",
        Some("2026-03-30T08:00:00+02:00"),
    ),
];

/// History of `the_fall_back_day_has_25_hours_and_the_numbers_add_up`.
pub(crate) const FALL_BACK: &[Spec] = &[
    (
        "alice",
        "unknown",
        "2026-10-24T20:00:00+02:00",
        Some("2026-10-25T02:30:00+02:00"),
    ),
    // 02:30 happens twice; this is the second one (+01:00).
    (
        "alice",
        "offline",
        "2026-10-25T02:30:00+02:00",
        Some("2026-10-25T02:30:00+01:00"),
    ),
    ("alice", "available", "2026-10-25T02:30:00+01:00", None),
];

/// History of `weeks_and_months_group_days_across_dst`.
pub(crate) const WEEKS_AND_MONTHS: &[Spec] = &[
    // One hour available every day at noon from Friday 27 to Tuesday 31
    // March, spanning the spring-forward Sunday and a week boundary.
    (
        "alice",
        "available",
        "2026-03-27T12:00:00+01:00",
        Some("2026-03-27T13:00:00+01:00"),
    ),
    (
        "alice",
        "available",
        "2026-03-28T12:00:00+01:00",
        Some("2026-03-28T13:00:00+01:00"),
    ),
    (
        "alice",
        "available",
        "2026-03-29T12:00:00+02:00",
        Some("2026-03-29T13:00:00+02:00"),
    ),
    (
        "alice",
        "on_call",
        "2026-03-30T12:00:00+02:00",
        Some("2026-03-30T13:00:00+02:00"),
    ),
    (
        "alice",
        "on_call",
        "2026-03-31T23:30:00+02:00",
        Some("2026-04-01T00:30:00+02:00"),
    ),
];

/// History of `a_resumed_call_after_a_restart_is_not_a_new_call`.
pub(crate) const RESUMED_CALL: &[Spec] = &[
    (
        "alice",
        "on_call",
        "2026-06-01T10:00:00+02:00",
        Some("2026-06-01T10:05:00+02:00"),
    ),
    (
        "alice",
        "unknown",
        "2026-06-01T10:05:00+02:00",
        Some("2026-06-01T10:06:00+02:00"),
    ),
    (
        "alice",
        "on_call*",
        "2026-06-01T10:06:00+02:00",
        Some("2026-06-01T10:10:00+02:00"),
    ),
    (
        "alice",
        "on_call",
        "2026-06-01T11:00:00+02:00",
        Some("2026-06-01T11:01:00+02:00"),
    ),
];

const LATER: &str = "2027-01-01T00:00:00Z";

#[test]
fn intervals_crossing_midnight_are_split_and_calls_count_where_they_start() {
    let history = CROSSING_MIDNIGHT;
    check(
        history,
        ("2026-03-26", "2026-03-27"),
        Granularity::Day,
        &["alice"],
        LATER,
        &[
            "alice 2026-03-26 86400 available=6900 on_call=300 calls=1 avg=600 longest=600 occ=0.0417",
            "alice 2026-03-27 86400 offline=28440 on_call=300 wrapup=60 occ=1",
        ],
    );
    // Starting the report at 2026-03-27 loses the call (it started before)
    // but keeps its time.
    check(
        history,
        ("2026-03-27", "2026-03-27"),
        Granularity::Total,
        &[],
        LATER,
        &[
            "alice total 86400 offline=28440 on_call=300 wrapup=60 occ=1",
            "carol total 86400",
        ],
    );
}

#[test]
fn an_open_interval_counts_up_to_now_clamped_to_the_range() {
    let history = OPEN_CALL;
    // Now is 09:30 local: the open call has lasted 30 minutes.
    check(
        history,
        ("2026-11-22", "2026-11-22"),
        Granularity::Day,
        &["bob"],
        "2026-11-22T09:30:00+01:00",
        &["bob 2026-11-22 86400 available=3600 on_call=1800 calls=1 avg=1800 longest=1800 occ=0.3333"],
    );
    // A report of an earlier range stops at its end; the call, as a call of
    // the day it started, still has its full length up to now.
    check(
        history,
        ("2026-11-22T08:30:00+01:00", "2026-11-22T09:10:00+01:00"),
        Granularity::Total,
        &["bob"],
        "2026-11-22T09:30:00+01:00",
        &["bob total 2400 available=1800 on_call=600 calls=1 avg=1800 longest=1800 occ=0.25"],
    );
}

#[test]
fn agents_without_data_get_zero_rows_and_configured_agents_are_listed() {
    let history: &[Spec] = &[(
        "alice",
        "available",
        "2026-05-04T09:00:00+02:00",
        Some("2026-05-04T10:00:00+02:00"),
    )];
    // Named agents: exactly those, zeros for bob.
    check(
        history,
        ("2026-05-04", "2026-05-04"),
        Granularity::Day,
        &["bob", "alice"],
        LATER,
        &[
            "alice 2026-05-04 86400 available=3600 occ=0",
            "bob 2026-05-04 86400",
        ],
    );
    // Default: every configured agent (carol) plus every agent with data.
    check(
        history,
        ("2026-05-04", "2026-05-05"),
        Granularity::Day,
        &[],
        LATER,
        &[
            "alice 2026-05-04 86400 available=3600 occ=0",
            "alice 2026-05-05 86400",
            "carol 2026-05-04 86400",
            "carol 2026-05-05 86400",
        ],
    );
    // Data outside the range does not list an agent.
    check(
        history,
        ("2026-05-05", "2026-05-05"),
        Granularity::Day,
        &[],
        LATER,
        &["carol 2026-05-05 86400"],
    );
}

#[test]
fn the_spring_forward_day_has_23_hours_and_the_numbers_add_up() {
    let history = SPRING_FORWARD;
    // 00:00+01 to 08:00+02 is 7 hours; 12:45+02 to midnight is 11h15m.
    check(
        history,
        ("2026-03-29", "2026-03-29"),
        Granularity::Day,
        &["alice"],
        LATER,
        &["alice 2026-03-29 82800 offline=65700 paused=1800 available=14400 ringing=10 on_call=600 wrapup=290 calls=1 avg=600 longest=600 occ=0.0588"],
    );
}

#[test]
fn the_fall_back_day_has_25_hours_and_the_numbers_add_up() {
    let history = FALL_BACK;
    check(
        history,
        ("2026-10-25", "2026-10-25"),
        Granularity::Day,
        &["alice"],
        LATER,
        &["alice 2026-10-25 90000 offline=3600 available=77400 unknown=9000 occ=0"],
    );
}

#[test]
fn weeks_and_months_group_days_across_dst() {
    let history = WEEKS_AND_MONTHS;
    check(
        history,
        ("2026-03-23", "2026-04-05"),
        Granularity::Week,
        &["alice"],
        LATER,
        &[
            "alice 2026-W13 601200 available=10800 occ=0",
            "alice 2026-W14 604800 on_call=7200 calls=2 avg=3600 longest=3600 occ=1",
        ],
    );
    check(
        history,
        ("2026-03-01", "2026-04-30"),
        Granularity::Month,
        &["alice"],
        LATER,
        &[
            "alice 2026-03 2674800 available=10800 on_call=5400 calls=2 avg=3600 longest=3600 occ=0.3333",
            "alice 2026-04 2592000 on_call=1800 occ=1",
        ],
    );
}

#[test]
fn a_resumed_call_after_a_restart_is_not_a_new_call() {
    let history = RESUMED_CALL;
    check(
        history,
        ("2026-06-01T10:00:00+02:00", "2026-06-01T12:00:00+02:00"),
        Granularity::Total,
        &["alice"],
        LATER,
        &["alice total 7200 on_call=600 unknown=60 calls=2 avg=180 longest=300 occ=1"],
    );
}

fn sample_summary() -> SummaryReport {
    let now = at("2026-11-22T09:30:00+01:00");
    let specs = [
        (
            "alice",
            "available",
            "2026-11-21T22:00:00+01:00",
            Some("2026-11-22T09:00:00+01:00"),
        ),
        ("alice", "on_call", "2026-11-22T09:00:00+01:00", None),
        ("bob", "paused", "2026-11-22T08:00:00+01:00", None),
    ];
    let request = SummaryRequest {
        range: ReportRange::resolve(bound("2026-11-21"), bound("2026-11-22"), AMSTERDAM, now)
            .unwrap(),
        by: Granularity::Day,
        agents: Vec::new(),
    };
    summarize(&intervals(&specs), &request, &settings(), now).unwrap()
}

#[test]
fn summary_csv_parses_back_to_the_same_rows() {
    let report = sample_summary();
    let csv = render_summary(&report, OutputFormat::Csv).unwrap();
    assert!(
        csv.starts_with(
            "agent,name,period,period_start,period_end,period_s,recorded_s,logged_in_s,offline_s,\
         paused_s,busy_s,unavailable_s,available_s,ringing_s,on_call_s,wrapup_s,unknown_s,calls,\
         average_call_s,longest_call_s,occupancy\n"
        ),
        "{csv}"
    );
    assert!(csv.contains(",2026-11-22T00:00:00+01:00,"), "{csv}");
    let parsed: Vec<SummaryRow> = from_csv(&csv).unwrap();
    assert_eq!(parsed, report.rows);
    assert_eq!(parsed.len(), 6);
    let empty = SummaryReport {
        rows: Vec::new(),
        ..report
    };
    let csv = render_summary(&empty, OutputFormat::Csv).unwrap();
    assert_eq!(csv.lines().count(), 1, "header only: {csv}");
}

#[test]
fn summary_json_field_names_are_stable() {
    let report = sample_summary();
    let json: serde_json::Value =
        serde_json::from_str(&render_summary(&report, OutputFormat::Json).unwrap()).unwrap();
    let keys = |value: &serde_json::Value| -> Vec<String> {
        value
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<Vec<_>>()
    };
    let mut top = keys(&json);
    top.sort();
    assert_eq!(
        top,
        ["by", "from", "generated_at", "rows", "timezone", "to"]
    );
    assert_eq!(json["timezone"], "Europe/Amsterdam");
    assert_eq!(json["by"], "day");
    assert_eq!(json["from"], "2026-11-21T00:00:00+01:00");
    let row = &json["rows"][1];
    let mut fields = keys(row);
    fields.sort();
    let mut expected: Vec<&str> = <SummaryRow as format::CsvHeader>::HEADER.to_vec();
    expected.sort();
    assert_eq!(fields, expected);
    assert_eq!(row["agent"], "alice");
    assert_eq!(row["period"], "2026-11-22");
    assert_eq!(row["on_call_s"], 1800.0);
    assert_eq!(row["calls"], 1);
    assert_eq!(row["occupancy"], 0.0526);
    assert_eq!(json["rows"][2]["name"], "bob");
    assert_eq!(json["rows"][4]["name"], "Carol C.");
    assert!(json["rows"][4]["occupancy"].is_null());
}

#[test]
fn summary_table_is_aligned_with_clock_durations() {
    let table = render_summary(&sample_summary(), OutputFormat::Table).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0],
        "Summary by day from 2026-11-21 00:00:00+01:00 to 2026-11-23 00:00:00+01:00 (Europe/Amsterdam)"
    );
    assert_eq!(
        lines[1],
        "agent  period      logged in  available  ringing  on call   wrapup     busy   paused  \
         unavail.  offline  unknown  calls  avg call  longest  occupancy"
    );
    assert_eq!(
        lines[3],
        "alice  2026-11-22    9:30:00    9:00:00  0:00:00  0:30:00  0:00:00  0:00:00  0:00:00   \
         0:00:00  0:00:00  0:00:00      1   0:30:00  0:30:00       5.3%"
    );
    assert!(
        lines[4].ends_with("0         -        -          -"),
        "{table}"
    );
    assert_eq!(lines.len(), 8, "{table}");
}

fn timeline_specs() -> Vec<TimelineInterval> {
    let row = |id: &str, status: Status, start: &str, end: Option<&str>| TimelineInterval {
        agent: agent(id),
        status,
        reason: (status == Status::Paused).then(|| "pause".to_owned()),
        extension_status: (status == Status::OnCall).then(|| "called".to_owned()),
        destination: Some("201".to_owned()),
        started_at_ms: ms(start),
        ended_at_ms: end.map(ms),
    };
    vec![
        row(
            "alice",
            Status::Available,
            "2026-03-28T22:00:00+01:00",
            Some("2026-03-29T03:30:00+02:00"),
        ),
        row(
            "alice",
            Status::OnCall,
            "2026-03-29T03:30:00+02:00",
            Some("2026-03-29T03:40:00+02:00"),
        ),
        row("bob", Status::Paused, "2026-03-29T09:00:00+02:00", None),
        row("alice", Status::Paused, "2026-03-29T03:40:00+02:00", None),
        row(
            "alice",
            Status::Offline,
            "2026-03-27T10:00:00+01:00",
            Some("2026-03-28T22:00:00+01:00"),
        ),
    ]
}

fn timeline_report(agents: &[&str]) -> TimelineReport {
    let now = at("2026-03-29T10:00:00+02:00");
    let request = TimelineRequest {
        range: ReportRange::resolve(bound("2026-03-29"), bound("2026-03-29"), AMSTERDAM, now)
            .unwrap(),
        agents: agents.iter().map(|id| agent(id)).collect(),
    };
    timeline_of(&timeline_specs(), &request, &settings(), now).unwrap()
}

#[test]
fn the_timeline_lists_overlapping_intervals_unclipped_in_local_time() {
    let report = timeline_report(&["bob", "alice"]);
    let actual: Vec<String> = report
        .intervals
        .iter()
        .map(|row| {
            format!(
                "{} {} {} {} {}",
                row.agent,
                row.status,
                row.started_at.to_rfc3339(),
                row.ended_at
                    .map_or("open".to_owned(), |end| end.to_rfc3339()),
                row.duration_s
            )
        })
        .collect();
    assert_eq!(
        actual,
        [
            "alice available 2026-03-28T22:00:00+01:00 2026-03-29T03:30:00+02:00 16200",
            "alice on_call 2026-03-29T03:30:00+02:00 2026-03-29T03:40:00+02:00 600",
            "alice paused 2026-03-29T03:40:00+02:00 open 22800",
            "bob paused 2026-03-29T09:00:00+02:00 open 3600",
        ]
    );
    let request = TimelineRequest {
        range: ReportRange::resolve(None, None, AMSTERDAM, at(LATER)).unwrap(),
        agents: Vec::new(),
    };
    let error = timeline_of(&[], &request, &settings(), at(LATER)).unwrap_err();
    assert!(error.to_string().contains("`agent`"), "{error}");
}

#[test]
fn timeline_csv_parses_back_and_json_names_are_stable() {
    let report = timeline_report(&["alice"]);
    let csv = render_timeline(&report, OutputFormat::Csv).unwrap();
    assert!(
        csv.starts_with(
            "agent,status,started_at,ended_at,duration_s,reason,extension_status,destination\n"
        ),
        "{csv}"
    );
    let parsed: Vec<TimelineRow> = from_csv(&csv).unwrap();
    assert_eq!(parsed, report.intervals);
    let json: serde_json::Value =
        serde_json::from_str(&render_timeline(&report, OutputFormat::Json).unwrap()).unwrap();
    let mut top: Vec<&String> = json.as_object().unwrap().keys().collect();
    top.sort();
    assert_eq!(top, ["from", "generated_at", "intervals", "timezone", "to"]);
    let first = &json["intervals"][2];
    assert_eq!(first["status"], "paused");
    assert_eq!(first["reason"], "pause");
    assert!(first["ended_at"].is_null());
    let mut fields: Vec<&String> = first.as_object().unwrap().keys().collect();
    fields.sort();
    let mut expected: Vec<&str> = <TimelineRow as format::CsvHeader>::HEADER.to_vec();
    expected.sort();
    assert_eq!(fields, expected);
    let table = render_timeline(&report, OutputFormat::Table).unwrap();
    assert!(
        table.contains("alice  paused     2026-03-29 03:40:00+02:00  (current)"),
        "{table}"
    );
}

/// What the SQL of `query.rs` returns for `intervals` (in insertion order),
/// computed naively: the sums of the intervals starting in each period and
/// the intervals in progress at each boundary.
fn as_the_database_would(
    intervals: &[ReportInterval],
    periods: &[Period],
) -> (
    Vec<summary::StartedSum>,
    Vec<summary::StartedCalls>,
    Vec<ReportInterval>,
) {
    use std::collections::BTreeMap;
    let mut sums: BTreeMap<(AgentId, usize, Status), i64> = BTreeMap::new();
    let mut calls: BTreeMap<(AgentId, usize), (u64, i64, i64)> = BTreeMap::new();
    for (index, period) in periods.iter().enumerate() {
        for interval in intervals
            .iter()
            .filter(|i| i.started_at_ms >= period.start_ms() && i.started_at_ms < period.end_ms())
        {
            let closed = interval
                .ended_at_ms
                .map_or(0, |end| end - interval.started_at_ms);
            *sums
                .entry((interval.agent.clone(), index, interval.status))
                .or_default() += closed;
            if interval.status == Status::OnCall && !interval.resumed {
                let entry = calls.entry((interval.agent.clone(), index)).or_default();
                entry.0 += 1;
                entry.1 += closed;
                entry.2 = entry.2.max(closed);
            }
        }
    }
    let mut crossing = Vec::new();
    let boundaries = periods
        .iter()
        .map(Period::start_ms)
        .chain(periods.last().map(Period::end_ms));
    for boundary in boundaries {
        let mut agents: Vec<&AgentId> = intervals.iter().map(|i| &i.agent).collect();
        agents.sort();
        agents.dedup();
        for agent in agents {
            let last = intervals
                .iter()
                .filter(|i| &i.agent == agent && i.started_at_ms < boundary)
                .max_by_key(|i| i.started_at_ms); // ties: the later one
            if let Some(last) = last {
                if last.ended_at_ms.is_none_or(|end| end > boundary) {
                    crossing.push(last.clone());
                }
            }
        }
    }
    crossing.sort_by(|a, b| (&a.agent, a.started_at_ms).cmp(&(&b.agent, b.started_at_ms)));
    crossing.dedup();
    let sums = sums
        .into_iter()
        .map(|((agent, period, status), ms)| summary::StartedSum {
            agent,
            period,
            status,
            ms,
        })
        .collect();
    let calls = calls
        .into_iter()
        .map(
            |((agent, period), (calls, call_ms, longest_call_ms))| summary::StartedCalls {
                agent,
                period,
                calls,
                call_ms,
                longest_call_ms,
            },
        )
        .collect();
    (sums, calls, crossing)
}

/// A random history: per agent, back-to-back intervals (sometimes a gap,
/// sometimes zero length), the last one possibly open.
pub(crate) fn random_history(
    seed: u64,
    agents: usize,
    per_agent: usize,
    start_ms: i64,
) -> Vec<ReportInterval> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut all = Vec::new();
    for index in 0..agents {
        let mut at = start_ms + rng.gen_range(0..6 * 3_600_000);
        for position in 0..per_agent {
            let length = match rng.gen_range(0..10) {
                0 => 0,
                1 => rng.gen_range(0..3 * 86_400_000),
                _ => rng.gen_range(1..4 * 3_600_000),
            };
            let last = position + 1 == per_agent;
            all.push(ReportInterval {
                agent: agent(&format!("agent-{index}")),
                status: Status::ALL[rng.gen_range(0..9)],
                started_at_ms: at,
                ended_at_ms: (!last || rng.gen_bool(0.5)).then_some(at + length),
                resumed: rng.gen_bool(0.1),
            });
            at += length;
            if rng.gen_bool(0.1) {
                at += rng.gen_range(0..3_600_000);
            }
        }
    }
    // The store inserts in time order.
    all.sort_by_key(|interval| interval.started_at_ms);
    all
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

    #[test]
    fn combining_the_database_sums_equals_the_reference(
        seed in 0u64..u64::MAX,
        from_hours in 0i64..200,
        length_hours in 1i64..400,
        now_hours in 0i64..500,
        by in 0usize..4,
    ) {
        let base = ms("2026-03-20T00:00:00+01:00");
        let history = random_history(seed, 3, 30, base);
        let hour = 3_600_000;
        let range = ReportRange {
            from: period::from_millis(base + from_hours * hour),
            to: period::from_millis(base + (from_hours + length_hours) * hour),
        };
        let by = [Granularity::Day, Granularity::Week, Granularity::Month, Granularity::Total][by];
        let periods = period::periods(range, by, AMSTERDAM).unwrap();
        let now_ms = base + now_hours * hour;
        let (sums, calls, crossing) = as_the_database_would(&history, &periods);
        let combined = summary::combine(&sums, &calls, &crossing, &periods, now_ms);
        let reference = summary::accumulate(&history, &periods, now_ms);
        proptest::prop_assert_eq!(combined, reference);
    }
}

#[test]
fn limits_refuse_more_cells_and_agents_than_allowed_naming_the_limit() {
    let limits = ReportLimits {
        max_cells: 200_000,
        ..ReportLimits::default()
    };
    assert!(limits.check_cells(2_000, 100, "agents").is_ok());
    assert!(limits.check_cells(200_000, 1, "agents").is_ok());
    // The request: 2,000 agents, 13 years by day.
    let error = limits.check_cells(2_000, 4_749, "agents").unwrap_err();
    assert!(error.is_bad_request());
    let ReportError::LimitExceeded {
        limit, max, value, ..
    } = &error
    else {
        panic!("{error:?}");
    };
    assert_eq!(
        (*limit, *max, *value),
        ("report.max_cells", 200_000, 9_498_000)
    );
    assert!(
        error.to_string().contains("over report.max_cells 200000"),
        "{error}"
    );
    // No overflow on absurd counts.
    assert!(limits
        .check_cells(usize::MAX, usize::MAX, "agents")
        .is_err());
    assert!(ReportLimits::check_agent_count(100, 100, "report.max_cells").is_ok());
    let error = ReportLimits::check_agent_count(101, 100, "report.max_cells").unwrap_err();
    assert!(
        error.to_string().contains("more than 100 agent ids"),
        "{error}"
    );
    let error = limits.timeline_too_long();
    assert!(
        error
            .to_string()
            .contains("more than 500000 intervals, over report.max_timeline_rows 500000"),
        "{error}"
    );
    assert!(!ReportError::TimedOut(std::time::Duration::from_secs(30)).is_bad_request());
}

#[test]
fn a_summary_request_is_checked_without_the_database() {
    let now = at("2026-11-22T10:00:00Z");
    let request = |from: &str, to: &str, by, agents: &[&str]| SummaryRequest {
        range: ReportRange::resolve(bound(from), bound(to), AMSTERDAM, now).unwrap(),
        by,
        agents: agents.iter().map(|id| agent(id)).collect(),
    };
    let mut settings = settings();
    settings.limits.max_cells = 10;
    let ok = request("2026-03-01", "2026-03-05", Granularity::Day, &["a", "b"]);
    assert!(check_summary(&ok, &settings).is_ok());
    let duplicates = request(
        "2026-03-01",
        "2026-03-05",
        Granularity::Day,
        &["a", "b", "a"],
    );
    assert!(check_summary(&duplicates, &settings).is_ok());
    let over = request("2026-03-01", "2026-03-06", Granularity::Day, &["a", "b"]);
    assert!(matches!(
        check_summary(&over, &settings),
        Err(ReportError::LimitExceeded { value: 12, .. })
    ));
    let coarser = request("2026-03-01", "2026-03-06", Granularity::Total, &["a", "b"]);
    assert!(check_summary(&coarser, &settings).is_ok());
    // Every agent: the configured ones are counted here (1 × 11 days).
    let every = request("2026-03-01", "2026-03-11", Granularity::Day, &[]);
    assert!(matches!(
        check_summary(&every, &settings),
        Err(ReportError::LimitExceeded { value: 11, .. })
    ));
}
