//! The memory of recent transactions, so that a request redelivered (QoS 1)
//! or repeated within `commands.dedup_window` is answered from memory instead
//! of running twice.
//!
//! Pure and bounded: the caller passes the time, the cache holds at most
//! about `max_bytes` (each key counted at [`ENTRY_BYTES`] plus its response)
//! and forgets the oldest first. A request whose twin is still running is
//! remembered as in flight; the dispatcher answers the twin when the first
//! one completes. Requests without a `transaction` are never deduplicated.
//! The dispatcher forgets failed commands once answered, so a retry after
//! an error runs again (every operation is safe to repeat).
//!
//! A key is kept as a 128-bit digest of its topic and transaction (two
//! SipHash-1-3 hashes with random keys of this process), not as its text:
//! a burst of commands remembers three times as many transactions in the
//! same memory. Two different requests would share a digest with a
//! probability of about n²/2¹²⁹, some 10⁻³¹ for the thousands remembered.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher as _;
use std::time::{Duration, Instant};

/// The default bound on the cache's memory: about 4,000 transactions with
/// their responses of a hundred-odd bytes (`docs/performance.md`).
pub const DEFAULT_MAX_BYTES: usize = 1024 * 1024;

/// What one remembered key costs besides its response: its share of the
/// hash table (a 56-byte slot, tables at most 7/8 full) and of the order
/// (32 bytes), and the response's allocation header.
pub const ENTRY_BYTES: usize = 128;

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

/// A key as the cache keeps it.
type Digest = u128;

/// One remembered key.
#[derive(Debug, Clone)]
struct Entry {
    /// When the key was first seen (the window starts here).
    first_seen: Instant,
    /// `None` while in flight, then the response payload.
    response: Option<Box<[u8]>>,
    /// Duplicates that arrived while in flight, to answer on completion.
    waiting: usize,
}

impl Entry {
    /// What this entry counts against the cache's bound.
    fn bytes(&self) -> usize {
        ENTRY_BYTES + self.response.as_ref().map_or(0, |response| response.len())
    }
}

/// Recently seen transactions, bounded in time and memory.
#[derive(Debug)]
pub struct DedupCache {
    /// How long a key is remembered after it was first seen.
    window: Duration,
    /// The entries' bytes ([`Entry::bytes`]) stay within this.
    max_bytes: usize,
    /// The entries' bytes now.
    bytes: usize,
    /// The two hashers of a key's digest.
    hashers: [RandomState; 2],
    /// The remembered keys.
    entries: HashMap<Digest, Entry>,
    /// Keys in the order they were first seen, for expiry and eviction.
    order: VecDeque<(Instant, Digest)>,
}

impl DedupCache {
    /// A cache remembering keys for `window`, in at most about `max_bytes`
    /// (however small, one key with a short response fits).
    pub fn new(window: Duration, max_bytes: usize) -> Self {
        Self {
            window,
            max_bytes: max_bytes.max(2 * ENTRY_BYTES),
            bytes: 0,
            hashers: [RandomState::new(), RandomState::new()],
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

    /// What the remembered keys count against the bound.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Looks `key` up at `now`; a [`Seen::New`] key is remembered as in flight.
    pub fn check(&mut self, key: &DedupKey, now: Instant) -> Seen {
        self.expire(now);
        let digest = self.digest(key);
        if let Some(entry) = self.entries.get_mut(&digest) {
            return match &entry.response {
                Some(response) => Seen::Answered(response.to_vec()),
                None => {
                    entry.waiting += 1;
                    Seen::InFlight
                }
            };
        }
        if self.window.is_zero() {
            return Seen::New;
        }
        let entry = Entry {
            first_seen: now,
            response: None,
            waiting: 0,
        };
        self.bytes += entry.bytes();
        self.entries.insert(digest, entry);
        self.order.push_back((now, digest));
        self.evict_over_bound();
        Seen::New
    }

    /// Records the response of an in-flight key; returns how many duplicates
    /// arrived meanwhile (each must get `response` too). A response too
    /// large for the bound on its own is not remembered.
    pub fn complete(&mut self, key: &DedupKey, response: Vec<u8>) -> usize {
        let digest = self.digest(key);
        let Some(entry) = self.entries.get_mut(&digest) else {
            return 0;
        };
        let waiting = std::mem::take(&mut entry.waiting);
        if ENTRY_BYTES + response.len() > self.max_bytes {
            self.remove(digest);
            return waiting;
        }
        self.bytes -= entry.bytes();
        entry.response = Some(response.into_boxed_slice());
        self.bytes += entry.bytes();
        self.evict_over_bound();
        waiting
    }

    /// Forgets a key whatever its state (a failed command: a retry with the
    /// same transaction runs again).
    pub fn forget(&mut self, key: &DedupKey) {
        self.remove(self.digest(key));
    }

    /// Forgets an in-flight key whose command never completed (its task
    /// failed); returns how many duplicates were waiting for it.
    pub fn abandon(&mut self, key: &DedupKey) -> usize {
        let digest = self.digest(key);
        match self.entries.get(&digest) {
            Some(entry) if entry.response.is_none() => {
                self.remove(digest).map_or(0, |entry| entry.waiting)
            }
            _ => 0,
        }
    }

    /// The key as the cache keeps it.
    fn digest(&self, key: &DedupKey) -> Digest {
        let [first, second] = self.hashers.each_ref().map(|hasher| hasher.hash_one(key));
        (Digest::from(first) << 64) | Digest::from(second)
    }

    /// Removes a key and its place in `order` (so `order` never holds more
    /// than `entries`); returns the entry.
    fn remove(&mut self, digest: Digest) -> Option<Entry> {
        let entry = self.entries.remove(&digest)?;
        self.bytes -= entry.bytes();
        // A linear search, but only on the rare forget/abandon path and
        // over the remembered keys; usually the key is among the newest.
        if let Some(index) = self
            .order
            .iter()
            .rposition(|&(first_seen, queued)| first_seen == entry.first_seen && queued == digest)
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

    /// Forgets the oldest keys until the rest fit the bound.
    fn evict_over_bound(&mut self) {
        while self.bytes > self.max_bytes && !self.order.is_empty() {
            self.evict_oldest();
        }
    }

    /// Forgets the oldest key (unless it was re-added since).
    fn evict_oldest(&mut self) {
        if let Some((first_seen, digest)) = self.order.pop_front() {
            if self
                .entries
                .get(&digest)
                .is_some_and(|entry| entry.first_seen == first_seen)
            {
                if let Some(entry) = self.entries.remove(&digest) {
                    self.bytes -= entry.bytes();
                }
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
        // Room for three keys with one-byte responses.
        let mut cache = DedupCache::new(Duration::from_secs(600), 3 * (ENTRY_BYTES + 1));
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
        let mut cache = DedupCache::new(Duration::from_secs(1), 1000 * ENTRY_BYTES);
        for i in 0..10_000u64 {
            cache.check(&key(&i.to_string()), start + Duration::from_millis(i));
        }
        assert!(cache.len() <= 1000, "{}", cache.len());
    }

    #[test]
    fn abandoned_and_zero_window() {
        let now = Instant::now();
        let mut cache = DedupCache::new(Duration::from_secs(60), 10 * ENTRY_BYTES);
        cache.check(&key("x"), now);
        cache.check(&key("x"), now);
        assert_eq!(cache.abandon(&key("x")), 1);
        assert_eq!(cache.check(&key("x"), now), Seen::New);
        cache.complete(&key("x"), b"error".to_vec());
        cache.forget(&key("x"));
        assert_eq!(cache.bytes(), 0);
        assert_eq!(cache.check(&key("x"), now), Seen::New);
        assert_eq!(cache.order.len(), cache.len());
        assert_eq!(cache.bytes(), ENTRY_BYTES);
        let mut disabled = DedupCache::new(Duration::ZERO, 10 * ENTRY_BYTES);
        assert_eq!(disabled.check(&key("x"), now), Seen::New);
        assert_eq!(disabled.check(&key("x"), now), Seen::New);
        assert!(disabled.is_empty());
    }

    #[test]
    fn forgotten_keys_leave_no_trace_in_the_order() {
        // Failed commands are forgotten (and abandoned ones too): thousands of
        // them within one window must not grow the eviction order.
        let start = Instant::now();
        let mut cache = DedupCache::new(Duration::from_secs(600), 8 * (ENTRY_BYTES + 2));
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

    #[test]
    fn large_responses_count_by_their_size_and_one_over_the_bound_is_not_kept() {
        let start = Instant::now();
        let mut cache = DedupCache::new(Duration::from_secs(600), 10 * 1024);
        for i in 0..100u64 {
            let now = start + Duration::from_millis(i);
            assert_eq!(cache.check(&key(&i.to_string()), now), Seen::New);
            cache.complete(&key(&i.to_string()), vec![b'x'; 1000]);
            assert!(cache.bytes() <= 10 * 1024, "{}", cache.bytes());
        }
        // Nine of them fit: 9 × (128 + 1000) bytes.
        assert_eq!(cache.len(), 9);
        assert_eq!(cache.bytes(), 9 * (ENTRY_BYTES + 1000));
        let now = start + Duration::from_secs(1);
        assert_eq!(
            cache.check(&key("99"), now),
            Seen::Answered(vec![b'x'; 1000])
        );
        assert_eq!(cache.check(&key("90"), now), Seen::New);

        // A response larger than the whole bound: its duplicates are still
        // answered, but it is not remembered, and nothing else is pushed out.
        let before = cache.len();
        assert_eq!(cache.check(&key("huge"), now), Seen::New);
        assert_eq!(cache.check(&key("huge"), now), Seen::InFlight);
        assert_eq!(cache.complete(&key("huge"), vec![b'x'; 20 * 1024]), 1);
        assert_eq!(cache.check(&key("huge"), now), Seen::New);
        assert_eq!(cache.len(), before + 1);
        assert_eq!(
            cache.check(&key("99"), now),
            Seen::Answered(vec![b'x'; 1000])
        );

        // Everything expires, and the count of bytes comes back to zero.
        cache.check(&key("later"), now + Duration::from_secs(601));
        assert_eq!((cache.len(), cache.bytes()), (1, ENTRY_BYTES));
        assert_eq!(cache.order.len(), 1);
    }

    #[test]
    fn the_default_bound_holds_thousands_of_ordinary_answers() {
        // An ordinary answer: `{"status":"ok","data":{...},"transaction":...}`.
        let answer = br#"{"status":"ok","data":{"queue":"500","extension":"6001","added":true},"transaction":"12345678"}"#;
        let start = Instant::now();
        let mut cache = DedupCache::new(Duration::from_secs(600), DEFAULT_MAX_BYTES);
        for i in 0..20_000u64 {
            let key = key(&i.to_string());
            cache.check(&key, start + Duration::from_micros(i));
            cache.complete(&key, answer.to_vec());
        }
        assert!(cache.bytes() <= DEFAULT_MAX_BYTES);
        assert!((4_000..5_000).contains(&cache.len()), "{}", cache.len());
    }
}
