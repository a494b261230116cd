//! The bridge's wall clock, which never goes backwards.
//!
//! Status intervals are stamped with wall-clock time (reports are about the
//! time of day), but a wall clock can be stepped back (an NTP correction, a
//! wrong RTC fixed by hand, a VM restored). If a transition were stamped
//! with the stepped-back time, its interval would start before the one it
//! ends, intervals would overlap and reports would count time twice. So
//! every time the bridge stamps comes from a [`Clock`]: the system time, but
//! never earlier than a time it already handed out or the latest time found
//! in history. While the system clock is behind, time stands still (intervals
//! get shorter, never negative); when it catches up, time moves on.
//!
//! The core takes `now` as a value; only the tasks at the edges read a
//! clock, so tests inject a [`Clock::manual`] one.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};

/// A shared, monotonic wall clock. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Clock {
    /// The latest time handed out (or raised to), ms since the epoch.
    floor_ms: Arc<AtomicI64>,
    /// Where readings come from.
    source: Source,
}

/// Where a [`Clock`] reads the time.
#[derive(Debug, Clone)]
enum Source {
    /// The system clock.
    System,
    /// A time set by tests, ms since the epoch.
    Manual(Arc<AtomicI64>),
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl Clock {
    /// The system clock, made monotonic.
    pub fn system() -> Self {
        Self {
            floor_ms: Arc::new(AtomicI64::new(i64::MIN)),
            source: Source::System,
        }
    }

    /// A clock that reads `start` until [`Clock::set`] moves it (tests).
    pub fn manual(start: DateTime<Utc>) -> Self {
        Self {
            floor_ms: Arc::new(AtomicI64::new(i64::MIN)),
            source: Source::Manual(Arc::new(AtomicI64::new(start.timestamp_millis()))),
        }
    }

    /// Sets a manual clock's reading (forwards or backwards); no effect on
    /// the system clock.
    pub fn set(&self, to: DateTime<Utc>) {
        if let Source::Manual(reading) = &self.source {
            reading.store(to.timestamp_millis(), Ordering::SeqCst);
        }
    }

    /// The reading of the underlying clock, ms, unguarded.
    fn reading_ms(&self) -> i64 {
        match &self.source {
            Source::System => Utc::now().timestamp_millis(),
            Source::Manual(reading) => reading.load(Ordering::SeqCst),
        }
    }

    /// Now: the underlying reading, or the latest time already handed out
    /// when the reading is earlier.
    pub fn now(&self) -> DateTime<Utc> {
        let reading = self.reading_ms();
        let previous = self.floor_ms.fetch_max(reading, Ordering::SeqCst);
        millis(previous.max(reading))
    }

    /// Never hand out a time before `at` (the latest time found in history
    /// at start).
    pub fn raise_to(&self, at: DateTime<Utc>) {
        self.floor_ms
            .fetch_max(at.timestamp_millis(), Ordering::SeqCst);
    }

    /// How far the underlying clock is behind the latest time handed out,
    /// in ms (0 when it is not): how far it was stepped back.
    pub fn behind_ms(&self) -> i64 {
        self.floor_ms
            .load(Ordering::SeqCst)
            .saturating_sub(self.reading_ms())
            .max(0)
    }
}

/// A time in ms as a `DateTime`, clamped to chrono's range.
fn millis(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(seconds: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + seconds, 0).unwrap()
    }

    #[test]
    fn a_fresh_clock_is_not_behind() {
        assert_eq!(Clock::system().behind_ms(), 0);
        assert_eq!(Clock::manual(at(0)).behind_ms(), 0);
    }

    #[test]
    fn a_clock_stepped_back_stands_still_until_it_catches_up() {
        let clock = Clock::manual(at(100));
        assert_eq!(clock.now(), at(100));
        clock.set(at(-500)); // stepped back ten minutes
        assert_eq!(clock.now(), at(100));
        assert_eq!(clock.behind_ms(), 600_000);
        clock.set(at(50));
        assert_eq!(clock.now(), at(100));
        clock.set(at(101));
        assert_eq!(clock.now(), at(101));
        assert_eq!(clock.behind_ms(), 0);
    }

    #[test]
    fn history_raises_the_floor() {
        let clock = Clock::manual(at(0));
        clock.raise_to(at(30));
        assert_eq!(clock.now(), at(30));
        let shared = clock.clone();
        clock.set(at(40));
        assert_eq!(shared.now(), at(40));
        assert!(Clock::system().now() > at(-1_000_000_000));
    }
}
