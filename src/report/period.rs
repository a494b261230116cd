//! Report ranges and periods: parsing `--from`/`--to`, and cutting a range
//! into days, ISO weeks or calendar months at local midnight in the report
//! time zone, so a daylight-saving day has 23 or 25 hours.
//!
//! Pure: no IO and no clock (the caller passes `now`).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Days, FixedOffset, Months, NaiveDate, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// At most this many periods in one report, so a request like "every day
/// for a century" cannot tie up the server.
pub const MAX_PERIODS: usize = 5_000;

/// How a report range is cut into periods (`--by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    /// One period per local calendar day (the default).
    #[default]
    Day,
    /// One period per ISO week, Monday to Monday.
    Week,
    /// One period per calendar month.
    Month,
    /// One period: the whole range.
    Total,
}

impl Granularity {
    /// The name used in `--by`, `by=` and the JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Day => "day",
            Granularity::Week => "week",
            Granularity::Month => "month",
            Granularity::Total => "total",
        }
    }
}

impl fmt::Display for Granularity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Granularity {
    type Err = String;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        match raw {
            "day" => Ok(Granularity::Day),
            "week" => Ok(Granularity::Week),
            "month" => Ok(Granularity::Month),
            "total" => Ok(Granularity::Total),
            other => Err(format!(
                "unknown period {}: use day, week, month or total",
                crate::text::quoted(other)
            )),
        }
    }
}

/// One end of a report range as the user wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeBound {
    /// A local calendar date (`2026-03-29`): the whole day in the report
    /// time zone.
    Date(NaiveDate),
    /// An exact instant (RFC 3339, `2026-03-29T08:00:00+02:00`).
    Instant(DateTime<FixedOffset>),
}

/// Why a range bound or a range is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// The text is neither a date nor an RFC 3339 timestamp.
    #[error(
        "{0:?} is not a date (YYYY-MM-DD) or an RFC 3339 timestamp (2026-03-29T08:00:00+02:00)"
    )]
    Unparsable(String),
    /// `from` is not before `to`.
    #[error("the range is empty: `from` ({from}) must be before `to` ({to})")]
    Empty {
        /// The resolved start.
        from: String,
        /// The resolved end.
        to: String,
    },
    /// Too many periods.
    #[error(
        "the range has more than {MAX_PERIODS} periods; use a shorter range or a coarser `by`"
    )]
    TooManyPeriods,
}

impl FromStr for RangeBound {
    type Err = RangeError;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let raw = raw.trim();
        if let Ok(date) = NaiveDate::parse_from_str(raw, "%Y-%m-%d") {
            return Ok(RangeBound::Date(date));
        }
        DateTime::parse_from_rfc3339(raw)
            .map(RangeBound::Instant)
            .map_err(|_| RangeError::Unparsable(crate::text::shorten(raw, 64)))
    }
}

/// A resolved report range: the half-open interval `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportRange {
    /// The first instant included.
    pub from: DateTime<Utc>,
    /// The first instant no longer included.
    pub to: DateTime<Utc>,
}

impl ReportRange {
    /// Resolves `--from`/`--to` in the report time zone.
    ///
    /// A date `from` starts at that day's local midnight; a date `to` is
    /// inclusive: the range ends at the following local midnight (so
    /// `--from 2026-03-01 --to 2026-03-31` is March). A timestamp is an
    /// exact instant (`to` exclusive). `from` defaults to the start of
    /// today, `to` to the end of today (local).
    pub fn resolve(
        from: Option<RangeBound>,
        to: Option<RangeBound>,
        tz: Tz,
        now: DateTime<Utc>,
    ) -> Result<Self, RangeError> {
        let today = local_date(now, tz);
        let from = match from {
            None => start_of_local_day(today, tz),
            Some(RangeBound::Date(date)) => start_of_local_day(date, tz),
            Some(RangeBound::Instant(instant)) => instant.with_timezone(&Utc),
        };
        let to = match to {
            None => start_of_local_day(next_day(today), tz),
            Some(RangeBound::Date(date)) => start_of_local_day(next_day(date), tz),
            Some(RangeBound::Instant(instant)) => instant.with_timezone(&Utc),
        };
        if from >= to {
            return Err(RangeError::Empty {
                from: from.with_timezone(&tz).to_rfc3339(),
                to: to.with_timezone(&tz).to_rfc3339(),
            });
        }
        Ok(Self { from, to })
    }
}

/// One period of a report, clipped to the report range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Period {
    /// `2026-03-29` (day), `2026-W13` (ISO week), `2026-03` (month) or
    /// `total`.
    pub label: String,
    /// The first instant of the period (or the range start).
    pub start: DateTime<Utc>,
    /// The first instant after the period (or the range end).
    pub end: DateTime<Utc>,
}

impl Period {
    /// The period's start in milliseconds since the epoch.
    pub fn start_ms(&self) -> i64 {
        self.start.timestamp_millis()
    }

    /// The period's end in milliseconds since the epoch.
    pub fn end_ms(&self) -> i64 {
        self.end.timestamp_millis()
    }
}

/// Cuts `range` into periods at local midnights in `tz`. The first and last
/// periods are partial when the range starts or ends inside one.
pub fn periods(range: ReportRange, by: Granularity, tz: Tz) -> Result<Vec<Period>, RangeError> {
    let mut periods = Vec::new();
    let mut start = range.from;
    while start < range.to {
        if periods.len() >= MAX_PERIODS {
            return Err(RangeError::TooManyPeriods);
        }
        let date = local_date(start, tz);
        let (label, next_date) = match by {
            Granularity::Day => (date.format("%Y-%m-%d").to_string(), Some(next_day(date))),
            Granularity::Week => {
                let week = date.iso_week();
                let monday = date - Days::new(u64::from(date.weekday().num_days_from_monday()));
                (
                    format!("{}-W{:02}", week.year(), week.week()),
                    monday.checked_add_days(Days::new(7)),
                )
            }
            Granularity::Month => {
                let first = date.with_day(1).unwrap_or(date);
                (
                    date.format("%Y-%m").to_string(),
                    first.checked_add_months(Months::new(1)),
                )
            }
            Granularity::Total => ("total".to_owned(), None),
        };
        let end = next_date
            .map(|next| start_of_local_day(next, tz))
            .filter(|end| *end < range.to && *end > start)
            .unwrap_or(range.to);
        periods.push(Period { label, start, end });
        start = end;
    }
    Ok(periods)
}

pub use crate::localtime::{local_date, start_of_local_day};

/// An instant shown in `tz` with its offset, e.g. `2026-03-29T03:00:00+02:00`.
pub fn in_zone(instant: DateTime<Utc>, tz: Tz) -> DateTime<FixedOffset> {
    instant.with_timezone(&tz).fixed_offset()
}

/// An instant in milliseconds since the epoch as a UTC time (clamped to the
/// representable range).
pub fn from_millis(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or(if ms < 0 {
        DateTime::<Utc>::MIN_UTC
    } else {
        DateTime::<Utc>::MAX_UTC
    })
}

fn next_day(date: NaiveDate) -> NaiveDate {
    date.succ_opt().unwrap_or(date)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_values_are_quoted_short() {
        for raw in ["x".repeat(10_000), "\u{7f}\u{1dc0}".repeat(5_000)] {
            let messages = [
                raw.parse::<Granularity>().unwrap_err(),
                raw.parse::<RangeBound>().unwrap_err().to_string(),
                raw.parse::<crate::report::OutputFormat>().unwrap_err(),
            ];
            for message in messages {
                assert!(message.chars().count() < 200, "{message}");
            }
        }
    }

    const AMSTERDAM: Tz = chrono_tz::Europe::Amsterdam;

    fn date(raw: &str) -> Option<RangeBound> {
        Some(raw.parse().unwrap())
    }

    fn now() -> DateTime<Utc> {
        "2026-11-22T10:00:00Z".parse().unwrap()
    }

    /// Resolves the range, cuts it and compares `label start end hours` lines.
    fn check(from: &str, to: &str, by: Granularity, expected: &[&str]) {
        let range = ReportRange::resolve(date(from), date(to), AMSTERDAM, now()).unwrap();
        let actual: Vec<String> = periods(range, by, AMSTERDAM)
            .unwrap()
            .iter()
            .map(|p| {
                format!(
                    "{} {} {} {}",
                    p.label,
                    in_zone(p.start, AMSTERDAM).to_rfc3339(),
                    in_zone(p.end, AMSTERDAM).to_rfc3339(),
                    (p.end - p.start).num_minutes() as f64 / 60.0
                )
            })
            .collect();
        assert_eq!(actual, expected, "{from}..{to} by {by}");
    }

    #[test]
    fn days_are_cut_at_local_midnight_with_23_and_25_hour_dst_days() {
        check(
            "2026-03-28",
            "2026-03-30",
            Granularity::Day,
            &[
                "2026-03-28 2026-03-28T00:00:00+01:00 2026-03-29T00:00:00+01:00 24",
                "2026-03-29 2026-03-29T00:00:00+01:00 2026-03-30T00:00:00+02:00 23",
                "2026-03-30 2026-03-30T00:00:00+02:00 2026-03-31T00:00:00+02:00 24",
            ],
        );
        check(
            "2026-10-25",
            "2026-10-25",
            Granularity::Day,
            &["2026-10-25 2026-10-25T00:00:00+02:00 2026-10-26T00:00:00+01:00 25"],
        );
    }

    #[test]
    fn weeks_start_on_monday_and_months_are_calendar_months() {
        // 2026-03-25 is a Wednesday; ISO week 13 starts on Monday 2026-03-23.
        check(
            "2026-03-25",
            "2026-04-06",
            Granularity::Week,
            &[
                "2026-W13 2026-03-25T00:00:00+01:00 2026-03-30T00:00:00+02:00 119",
                "2026-W14 2026-03-30T00:00:00+02:00 2026-04-06T00:00:00+02:00 168",
                "2026-W15 2026-04-06T00:00:00+02:00 2026-04-07T00:00:00+02:00 24",
            ],
        );
        check(
            "2026-02-15",
            "2026-03-31",
            Granularity::Month,
            &[
                "2026-02 2026-02-15T00:00:00+01:00 2026-03-01T00:00:00+01:00 336",
                "2026-03 2026-03-01T00:00:00+01:00 2026-04-01T00:00:00+02:00 743",
            ],
        );
        check(
            "2026-12-28",
            "2027-01-04",
            Granularity::Week,
            &[
                "2026-W53 2026-12-28T00:00:00+01:00 2027-01-04T00:00:00+01:00 168",
                "2027-W01 2027-01-04T00:00:00+01:00 2027-01-05T00:00:00+01:00 24",
            ],
        );
        check(
            "2026-03-01",
            "2026-03-31",
            Granularity::Total,
            &["total 2026-03-01T00:00:00+01:00 2026-04-01T00:00:00+02:00 743"],
        );
    }

    #[test]
    fn timestamps_are_exact_and_partial_periods_are_clipped() {
        check(
            "2026-03-28T22:30:00+01:00",
            "2026-03-29T12:00:00Z",
            Granularity::Day,
            &[
                "2026-03-28 2026-03-28T22:30:00+01:00 2026-03-29T00:00:00+01:00 1.5",
                "2026-03-29 2026-03-29T00:00:00+01:00 2026-03-29T14:00:00+02:00 13",
            ],
        );
    }

    #[test]
    fn defaults_are_today_and_empty_ranges_are_refused() {
        let range = ReportRange::resolve(None, None, AMSTERDAM, now()).unwrap();
        assert_eq!(
            in_zone(range.from, AMSTERDAM).to_rfc3339(),
            "2026-11-22T00:00:00+01:00"
        );
        assert_eq!(
            in_zone(range.to, AMSTERDAM).to_rfc3339(),
            "2026-11-23T00:00:00+01:00"
        );
        let error = ReportRange::resolve(date("2026-03-02"), date("2026-03-01"), AMSTERDAM, now());
        assert!(matches!(error, Err(RangeError::Empty { .. })), "{error:?}");
        for bad in ["2026-13-01", "yesterday", "2026-03-29 08:00", ""] {
            assert!(bad.parse::<RangeBound>().is_err(), "{bad:?}");
        }
        let far =
            ReportRange::resolve(date("2000-01-01"), date("2026-01-01"), AMSTERDAM, now()).unwrap();
        assert_eq!(
            periods(far, Granularity::Day, AMSTERDAM),
            Err(RangeError::TooManyPeriods)
        );
    }

    #[test]
    fn a_midnight_that_does_not_exist_starts_the_day_at_the_first_local_time() {
        // Chile's spring-forward skips midnight to 01:00 (2026-09-06).
        let santiago: Tz = chrono_tz::America::Santiago;
        let day: NaiveDate = "2026-09-06".parse().unwrap();
        let start = in_zone(start_of_local_day(day, santiago), santiago);
        assert_eq!(start.to_rfc3339(), "2026-09-06T01:00:00-03:00");
    }

    proptest::proptest! {
        #[test]
        fn periods_tile_the_range(from_day in 0u64..20_000, days in 1u64..400, by in 0usize..4) {
            let by = [Granularity::Day, Granularity::Week, Granularity::Month, Granularity::Total][by];
            let first = NaiveDate::from_ymd_opt(1990, 1, 1).unwrap() + Days::new(from_day);
            let last = first + Days::new(days - 1);
            let range = ReportRange::resolve(
                Some(RangeBound::Date(first)), Some(RangeBound::Date(last)), AMSTERDAM, now()).unwrap();
            let periods = periods(range, by, AMSTERDAM).unwrap();
            proptest::prop_assert_eq!(periods[0].start, range.from);
            proptest::prop_assert_eq!(periods[periods.len() - 1].end, range.to);
            for pair in periods.windows(2) {
                proptest::prop_assert_eq!(pair[0].end, pair[1].start);
                proptest::prop_assert!(pair[0].start < pair[0].end);
            }
        }

        #[test]
        fn range_bounds_never_panic(raw in "\\PC{0,40}") {
            let _ = raw.parse::<RangeBound>();
        }
    }
}
