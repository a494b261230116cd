//! Local calendar days in a time zone. Pure.
//!
//! Reports cut periods at local midnights, and the store keeps per-day
//! totals on the same days; both use these functions, so a day means the
//! same thing everywhere, including the 23- and 25-hour days of a
//! daylight-saving change.

use chrono::{DateTime, LocalResult, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

/// The local calendar date of an instant in `tz`.
pub fn local_date(instant: DateTime<Utc>, tz: Tz) -> NaiveDate {
    instant.with_timezone(&tz).date_naive()
}

/// The instant a local calendar day begins in `tz`: local midnight, or in the
/// few zones whose daylight-saving change skips midnight, the first local
/// time of that day that exists.
pub fn start_of_local_day(date: NaiveDate, tz: Tz) -> DateTime<Utc> {
    let midnight = date.and_time(NaiveTime::MIN);
    let mut local = midnight;
    // A gap is at most a few hours; step through it a quarter hour at a time.
    for _ in 0..=(24 * 4) {
        match tz.from_local_datetime(&local) {
            LocalResult::Single(instant) => return instant.with_timezone(&Utc),
            LocalResult::Ambiguous(earliest, _) => return earliest.with_timezone(&Utc),
            LocalResult::None => local += chrono::Duration::minutes(15),
        }
    }
    // No zone has a day-long gap; reading midnight as UTC keeps us total.
    Utc.from_utc_datetime(&midnight)
}

/// True when `instant` is the start of its local day in `tz`.
pub fn is_start_of_local_day(instant: DateTime<Utc>, tz: Tz) -> bool {
    start_of_local_day(local_date(instant, tz), tz) == instant
}

/// The local days `[start_ms, end_ms)` touches, each as (the day's start in
/// ms, the milliseconds of the span in that day). A span of zero length
/// gives its day with 0. Times are milliseconds since the epoch.
pub fn split_by_local_day(start_ms: i64, end_ms: i64, tz: Tz) -> Vec<(i64, i64)> {
    let Some(start) = DateTime::from_timestamp_millis(start_ms) else {
        return Vec::new();
    };
    let mut date = local_date(start, tz);
    let mut day_start = start_of_local_day(date, tz).timestamp_millis();
    let mut pieces = Vec::with_capacity(1);
    let mut from = start_ms;
    loop {
        let Some(next) = date.succ_opt() else {
            pieces.push((day_start, end_ms.max(from) - from));
            return pieces;
        };
        let next_start = start_of_local_day(next, tz).timestamp_millis();
        if end_ms <= next_start {
            pieces.push((day_start, end_ms.max(from) - from));
            return pieces;
        }
        pieces.push((day_start, next_start - from));
        from = next_start;
        date = next;
        day_start = next_start;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::Europe::Amsterdam;

    fn ms(text: &str) -> i64 {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn spans_split_at_local_midnight_across_daylight_saving_days() {
        // 2026-03-29 has 23 hours in Amsterdam; 2026-10-25 has 25.
        let pieces = split_by_local_day(
            ms("2026-03-28T22:00:00+01:00"),
            ms("2026-03-30T01:00:00+02:00"),
            Amsterdam,
        );
        assert_eq!(
            pieces,
            [
                (ms("2026-03-28T00:00:00+01:00"), 2 * 3_600_000),
                (ms("2026-03-29T00:00:00+01:00"), 23 * 3_600_000),
                (ms("2026-03-30T00:00:00+02:00"), 3_600_000),
            ]
        );
        let autumn = split_by_local_day(
            ms("2026-10-25T00:00:00+02:00"),
            ms("2026-10-26T00:00:00+01:00"),
            Amsterdam,
        );
        assert_eq!(autumn, [(ms("2026-10-25T00:00:00+02:00"), 25 * 3_600_000)]);
        let instant = ms("2026-05-01T12:00:00+02:00");
        assert_eq!(
            split_by_local_day(instant, instant, Amsterdam),
            [(ms("2026-05-01T00:00:00+02:00"), 0)]
        );
        assert!(is_start_of_local_day(
            DateTime::from_timestamp_millis(ms("2026-03-30T00:00:00+02:00")).unwrap(),
            Amsterdam
        ));
    }
}
