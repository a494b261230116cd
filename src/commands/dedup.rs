//! The memory of recent transactions, so that a request redelivered (QoS 1)
//! or repeated within `commands.dedup_window` is answered from memory instead
//! of running twice.
//!
//! Pure and bounded: the caller passes the time, the cache holds at most
//! `capacity` entries and forgets the oldest first. A request whose twin is
//! still running is remembered as in flight; the dispatcher answers the twin
//! when the first one completes. Requests without a `transaction` are never
//! deduplicated. The dispatcher forgets failed commands once answered, so a
//! retry after an error runs again (every operation is safe to repeat).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The default bound on remembered transactions.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// Identifies a request for deduplication: the same transaction on the same
/// request topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DedupKey {
    /// The full request topic.
    pub topic: String,
    /// The transaction's JSON text (so `"1"` and `1` differ).
    pub transaction: String,
}

/// What the cache knows about a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Not seen within the window: run it (the key is now in flight).
    New,
    /// The first request is still running; answer this one when it ends.
    InFlight,
    /// Already answered: send this response again.
    Answered(Vec<u8>),
}

/// One remembered key.
#[derive(Debug, Clone)]
struct Entry {
    /// When the key was first seen (the window starts here).
    first_seen: Instant,
    /// `None` while in flight, then the response payload.
    response: Option<Vec<u8>>,
    /// Duplicates that arrived while in flight, to answer on completion.
    waiting: usize,
}

/// Recently seen transactions, bounded in time and number.
#[derive(Debug)]
pub struct DedupCache {
    /// How long a key is remembered after it was first seen.
    window: Duration,
    /// At most this many keys are remembered.
    capacity: usize,
    /// The remembered keys (shared with `order`: one copy of each topic
    /// and transaction, 10,000 of them after a burst of commands).
    entries: HashMap<Arc<DedupKey>, Entry>,
    /// Keys in the order they were first seen, for expiry and eviction.
    order: VecDeque<(Instant, Arc<DedupKey>)>,
}

impl DedupCache {
    /// A cache remembering keys for `window`, at most `capacity` of them.
    pub fn new(window: Duration, capacity: usize) -> Self {
        Self {
            window,
            capacity: capacity.max(1),
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// How many keys are remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Looks `key` up at `now`; a [`Seen::New`] key is remembered as in flight.
    pub fn check(&mut self, key: &DedupKey, now: Instant) -> Seen {
        self.expire(now);
        if let Some(entry) = self.entries.get_mut(key) {
            return match &entry.response {
                Some(response) => Seen::Answered(response.clone()),
                None => {
                    entry.waiting += 1;
                    Seen::InFlight
                }
            };
        }
        if self.window.is_zero() {
            return Seen::New;
        }
        let key = Arc::new(key.clone());
        self.entries.insert(
            key.clone(),
            Entry {
                first_seen: now,
                response: None,
                waiting: 0,
            },
        );
        self.order.push_back((now, key));
        while self.entries.len() > self.capacity {
            self.evict_oldest();
        }
        Seen::New
    }

    /// Records the response of an in-flight key; returns how many duplicates
    /// arrived meanwhile (each must get `response` too).
    pub fn complete(&mut self, key: &DedupKey, response: Vec<u8>) -> usize {
        match self.entries.get_mut(key) {
            Some(entry) => {
                entry.response = Some(response);
                std::mem::take(&mut entry.waiting)
            }
            None => 0,
        }
    }

    /// Forgets a key whatever its state (a failed command: a retry with the
    /// same transaction runs again).
    pub fn forget(&mut self, key: &DedupKey) {
        self.remove(key);
    }

    /// Forgets an in-flight key whose command never completed (its task
    /// failed); returns how many duplicates were waiting for it.
    pub fn abandon(&mut self, key: &DedupKey) -> usize {
        match self.entries.get(key) {
            Some(entry) if entry.response.is_none() => self.remove(key).map_or(0, |e| e.waiting),
            _ => 0,
        }
    }

    /// Removes a key and its place in `order` (so `order` never holds more
    /// than `entries`); returns the entry.
    fn remove(&mut self, key: &DedupKey) -> Option<Entry> {
        let entry = self.entries.remove(key)?;
        // A linear search, but only on the rare forget/abandon path and
        // over at most `capacity` items; usually the key is among the newest.
        if let Some(index) = self
            .order
            .iter()
            .rposition(|(first_seen, queued)| *first_seen == entry.first_seen && **queued == *key)
        {
            self.order.remove(index);
        }
        Some(entry)
    }

    /// Forgets keys first seen a full window before `now`.
    fn expire(&mut self, now: Instant) {
        while let Some((first_seen, _)) = self.order.front() {
            if now.saturating_duration_since(*first_seen) < self.window {
                break;
            }
            self.evict_oldest();
        }
    }

    /// Forgets the oldest key (unless it was re-added since).
    fn evict_oldest(&mut self) {
        if let Some((first_seen, key)) = self.order.pop_front() {
            if self
                .entries
                .get(&*key)
                .is_some_and(|entry| entry.first_seen == first_seen)
            {
                self.entries.remove(&*key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(transaction: &str) -> DedupKey {
        DedupKey {
            topic: "pbx2mqtt/request/queue/500/add".into(),
            transaction: transaction.into(),
        }
    }

    #[test]
    fn a_repeat_within_the_window_is_answered_from_memory() {
        let start = Instant::now();
        let mut cache = DedupCache::new(Duration::from_secs(60), 100);
        assert_eq!(cache.check(&key("1"), start), Seen::New);
        assert_eq!(cache.check(&key("1"), start), Seen::InFlight);
        assert_eq!(cache.complete(&key("1"), b"answer".to_vec()), 1);
        let later = start + Duration::from_secs(59);
        assert_eq!(
            cache.check(&key("1"), later),
            Seen::Answered(b"answer".to_vec())
        );
        // Another topic or another transaction is another request.
        assert_eq!(cache.check(&key("2"), later), Seen::New);
        let other_topic = DedupKey {
            topic: "pbx2mqtt/request/queue/500/remove".into(),
            transaction: "1".into(),
        };
        assert_eq!(cache.check(&other_topic, later), Seen::New);
        // After the window it runs again.
        let expired = start + Duration::from_secs(60);
        assert_eq!(cache.check(&key("1"), expired), Seen::New);
    }

    #[test]
    fn memory_is_bounded_and_the_oldest_goes_first() {
        let start = Instant::now();
        let mut cache = DedupCache::new(Duration::from_secs(600), 3);
        for (i, transaction) in ["a", "b", "c", "d"].iter().enumerate() {
            let now = start + Duration::from_millis(i as u64);
            assert_eq!(cache.check(&key(transaction), now), Seen::New);
            cache.complete(&key(transaction), transaction.as_bytes().to_vec());
        }
        assert_eq!(cache.len(), 3);
        let now = start + Duration::from_secs(1);
        assert_eq!(cache.check(&key("d"), now), Seen::Answered(b"d".to_vec()));
        assert_eq!(cache.check(&key("a"), now), Seen::New);
        assert_eq!(cache.len(), 3);
        // Many keys over time: the cache stays within its bound.
        let mut cache = DedupCache::new(Duration::from_secs(1), 1000);
        for i in 0..10_000u64 {
            cache.check(&key(&i.to_string()), start + Duration::from_millis(i));
        }
        assert!(cache.len() <= 1000, "{}", cache.len());
    }

    #[test]
    fn abandoned_and_zero_window() {
        let now = Instant::now();
        let mut cache = DedupCache::new(Duration::from_secs(60), 10);
        cache.check(&key("x"), now);
        cache.check(&key("x"), now);
        assert_eq!(cache.abandon(&key("x")), 1);
        assert_eq!(cache.check(&key("x"), now), Seen::New);
        cache.complete(&key("x"), b"error".to_vec());
        cache.forget(&key("x"));
        assert_eq!(cache.check(&key("x"), now), Seen::New);
        assert_eq!(cache.order.len(), cache.len());
        let mut disabled = DedupCache::new(Duration::ZERO, 10);
        assert_eq!(disabled.check(&key("x"), now), Seen::New);
        assert_eq!(disabled.check(&key("x"), now), Seen::New);
        assert!(disabled.is_empty());
    }

    #[test]
    fn forgotten_keys_leave_no_trace_in_the_order() {
        // Failed commands are forgotten (and abandoned ones too): thousands of
        // them within one window must not grow the eviction order.
        let start = Instant::now();
        let mut cache = DedupCache::new(Duration::from_secs(600), 8);
        for i in 0..10_000u64 {
            let now = start + Duration::from_millis(i);
            let failed = key(&format!("failed-{i}"));
            assert_eq!(cache.check(&failed, now), Seen::New);
            if i % 2 == 0 {
                cache.complete(&failed, b"error".to_vec());
                cache.forget(&failed);
            } else {
                cache.abandon(&failed);
            }
            if i % 100 == 0 {
                let kept = key(&format!("ok-{i}"));
                cache.check(&kept, now);
                cache.complete(&kept, b"ok".to_vec());
            }
            assert!(
                cache.order.len() <= 8,
                "order grew to {}",
                cache.order.len()
            );
        }
        assert_eq!(cache.order.len(), cache.len());
        // The successes are still remembered.
        let later = start + Duration::from_secs(11);
        assert_eq!(
            cache.check(&key("ok-9900"), later),
            Seen::Answered(b"ok".to_vec())
        );
    }
}
