//! The memory of recent transactions, so that a request redelivered (QoS 1)
//! or repeated within `commands.dedup_window` is answered from memory instead
//! of running twice.
//!
//! Pure and bounded: the caller passes the time. Answered keys take at most
//! about `max_bytes` (each counted at [`ENTRY_BYTES`] plus its response);
//! past that the earliest answered are forgotten first. A request whose
//! twin is still running is remembered as in flight, apart, and never
//! pushed out: the cache counts the twins, and the dispatcher answers them
//! when the first one completes or fails (not when another bridge runs it,
//! which answers on the same topic, nor when its task panics). Keys in
//! flight are bounded by the dispatcher's running commands and backlog.
//! Requests without a `transaction` are never deduplicated. Only successes
//! are remembered: a failed command is abandoned, so a retry after an error
//! runs again (every operation is safe to repeat).
//!
//! A key is kept as a 128-bit digest of its topic and transaction (two
//! SipHash-1-3 hashes of it under the keys of two [`RandomState`]s, which
//! differ), not as its text. Two different requests would share a digest
//! with a probability of about n²/2¹²⁹: some 10⁻³¹ for the thousands
//! remembered. The hashers' keys are the only thing the cache draws from
//! outside, once, when it is made.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher as _;
use std::time::{Duration, Instant};

/// The default bound on the memory of answered keys: some 4,000
/// transactions with answers of a hundred-odd bytes.
pub const DEFAULT_MAX_BYTES: usize = 1024 * 1024;

/// What one answered key costs besides its response, at most: its
/// hash-table slot (48 bytes: the 16-byte digest, the time, the boxed
/// response; and a control byte) in a table at least 7/16 full, its place
/// in the order (16 bytes, in a ring at least half full) and the
/// response's allocation header (16). A full table and ring cost 88.
pub const ENTRY_BYTES: usize = 160;

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
    /// Not seen within the window: run it (the key is now in flight,
    /// unless the window is zero).
    New,
    /// The first request is still running; answer this one when it ends.
    InFlight,
    /// Already answered: send this response again.
    Answered(Vec<u8>),
}

/// A key as the cache keeps it.
type Digest = u128;

/// A key whose command runs.
#[derive(Debug, Clone, Copy)]
struct Running {
    /// When the key was first seen (the window starts here).
    first_seen: Instant,
    /// Duplicates that arrived meanwhile, to answer on completion.
    waiting: usize,
}

/// An answered key.
#[derive(Debug, Clone)]
struct Answered {
    /// When the key was first seen (the window starts here).
    first_seen: Instant,
    /// The response payload.
    response: Box<[u8]>,
}

impl Answered {
    /// What this key counts against the cache's bound.
    fn bytes(&self) -> usize {
        ENTRY_BYTES + self.response.len()
    }
}

/// Recently seen transactions, bounded in time and memory.
#[derive(Debug)]
pub struct DedupCache {
    /// How long an answered key is remembered after it was first seen.
    window: Duration,
    /// The answered keys' bytes ([`Answered::bytes`]) stay within this.
    max_bytes: usize,
    /// The answered keys' bytes now.
    bytes: usize,
    /// The two hashers of a key's digest.
    hashers: [RandomState; 2],
    /// Keys whose command runs.
    running: HashMap<Digest, Running>,
    /// Answered keys.
    answered: HashMap<Digest, Answered>,
    /// Answered keys in the order they were answered, for eviction and
    /// expiry (nearly the order they were first seen: a key answered
    /// later than one seen after it is expired by [`Self::check`] itself).
    order: VecDeque<Digest>,
}

impl DedupCache {
    /// A cache remembering keys for `window`, the answered ones in at most
    /// about `max_bytes` (however small, one key with a short response fits).
    pub fn new(window: Duration, max_bytes: usize) -> Self {
        Self {
            window,
            max_bytes: max_bytes.max(2 * ENTRY_BYTES),
            bytes: 0,
            hashers: [RandomState::new(), RandomState::new()],
            running: HashMap::new(),
            answered: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// How many keys are remembered (running or answered).
    pub fn len(&self) -> usize {
        self.running.len() + self.answered.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What the answered keys count against the bound.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Looks `key` up at `now`; a [`Seen::New`] key is remembered as in
    /// flight (unless the window is zero).
    pub fn check(&mut self, key: &DedupKey, now: Instant) -> Seen {
        self.expire(now);
        let digest = self.digest(key);
        if let Some(answered) = self.answered.get(&digest) {
            if !self.expired(answered, now) {
                return Seen::Answered(answered.response.to_vec());
            }
            // Behind a key answered before it in `order`: gone all the same.
            self.remove_answered(digest);
        }
        if let Some(running) = self.running.get_mut(&digest) {
            running.waiting += 1;
            return Seen::InFlight;
        }
        if !self.window.is_zero() {
            let running = Running {
                first_seen: now,
                waiting: 0,
            };
            self.running.insert(digest, running);
        }
        Seen::New
    }

    /// Records the response of an in-flight key; returns how many duplicates
    /// arrived meanwhile (each must get `response` too). A response too
    /// large for the bound on its own is not remembered.
    pub fn complete(&mut self, key: &DedupKey, response: Vec<u8>) -> usize {
        let digest = self.digest(key);
        let Some(running) = self.running.remove(&digest) else {
            return 0;
        };
        let answered = Answered {
            first_seen: running.first_seen,
            response: response.into_boxed_slice(),
        };
        if answered.bytes() <= self.max_bytes {
            self.bytes += answered.bytes();
            self.order.push_back(digest);
            self.answered.insert(digest, answered);
            while self.bytes > self.max_bytes {
                self.evict_oldest();
            }
        }
        running.waiting
    }

    /// Forgets an in-flight key whose command did not succeed (it failed,
    /// was refused as busy, or another bridge runs it): a retry runs again.
    /// Returns how many duplicates were waiting for it.
    pub fn abandon(&mut self, key: &DedupKey) -> usize {
        let digest = self.digest(key);
        self.running
            .remove(&digest)
            .map_or(0, |running| running.waiting)
    }

    /// The key as the cache keeps it.
    fn digest(&self, key: &DedupKey) -> Digest {
        let [first, second] = self.hashers.each_ref().map(|hasher| hasher.hash_one(key));
        (Digest::from(first) << 64) | Digest::from(second)
    }

    /// True when `answered` was first seen a full window before `now`.
    fn expired(&self, answered: &Answered, now: Instant) -> bool {
        now.saturating_duration_since(answered.first_seen) >= self.window
    }

    /// Forgets the earliest answered keys while they are expired.
    fn expire(&mut self, now: Instant) {
        while let Some(digest) = self.order.front() {
            match self.answered.get(digest) {
                Some(answered) if !self.expired(answered, now) => break,
                _ => self.evict_oldest(),
            }
        }
    }

    /// Forgets the earliest answered key.
    fn evict_oldest(&mut self) {
        if let Some(digest) = self.order.pop_front() {
            self.drop_answered(digest);
        }
    }

    /// Forgets one answered key and its place in `order` (near the front:
    /// only a key that overstayed its window is removed this way).
    fn remove_answered(&mut self, digest: Digest) {
        self.drop_answered(digest);
        if let Some(at) = self.order.iter().position(|&queued| queued == digest) {
            self.order.remove(at);
        }
    }

    /// Takes an answered key out of the map and its bytes off the count
    /// (its place in `order` is the caller's).
    fn drop_answered(&mut self, digest: Digest) {
        if let Some(answered) = self.answered.remove(&digest) {
            self.bytes -= answered.bytes();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    fn key(transaction: &str) -> DedupKey {
        DedupKey {
            topic: "pbx2mqtt/request/queue/500/add".into(),
            transaction: transaction.into(),
        }
    }

    /// The cache's own bookkeeping agrees with what it holds.
    fn assert_consistent(cache: &DedupCache) {
        let bytes: usize = cache.answered.values().map(Answered::bytes).sum();
        assert_eq!(cache.bytes, bytes);
        assert!(
            cache.bytes <= cache.max_bytes,
            "{} > {}",
            cache.bytes,
            cache.max_bytes
        );
        assert_eq!(cache.order.len(), cache.answered.len());
        assert!(cache
            .running
            .keys()
            .all(|key| !cache.answered.contains_key(key)));
    }

    #[test]
    fn a_repeat_within_the_window_is_answered_from_memory() {
        let start = Instant::now();
        let mut cache = DedupCache::new(Duration::from_secs(60), 100 * ENTRY_BYTES);
        assert_eq!(cache.check(&key("1"), start), Seen::New);
        assert_eq!(cache.check(&key("1"), start), Seen::InFlight);
        assert_eq!(cache.complete(&key("1"), b"answer".to_vec()), 1);
        let later = start + Duration::from_secs(59);
        assert_eq!(
            cache.check(&key("1"), later),
            Seen::Answered(b"answer".to_vec())
        );
        // Another topic or another transaction is another request, and so
        // is the same text split differently between them.
        assert_eq!(cache.check(&key("2"), later), Seen::New);
        let other_topic = DedupKey {
            topic: "pbx2mqtt/request/queue/500/remove".into(),
            transaction: "1".into(),
        };
        assert_eq!(cache.check(&other_topic, later), Seen::New);
        let split = |topic: &str, transaction: &str| DedupKey {
            topic: topic.into(),
            transaction: transaction.into(),
        };
        assert_eq!(cache.check(&split("a/b", "c1"), later), Seen::New);
        cache.complete(&split("a/b", "c1"), b"x".to_vec());
        assert_eq!(cache.check(&split("a/bc", "1"), later), Seen::New);
        assert_eq!(
            cache.check(&split("a/b", "c1"), later),
            Seen::Answered(b"x".to_vec())
        );
        // After the window it runs again.
        let expired = start + Duration::from_secs(60);
        assert_eq!(cache.check(&key("1"), expired), Seen::New);
        assert_consistent(&cache);
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
        assert_consistent(&cache);
        // Many keys over time: the cache stays within its bound.
        let mut cache = DedupCache::new(Duration::from_secs(1), 1000 * (ENTRY_BYTES + 2));
        for i in 0..10_000u64 {
            let key = key(&i.to_string());
            cache.check(&key, start + Duration::from_millis(i));
            cache.complete(&key, b"ok".to_vec());
        }
        assert!(cache.len() <= 1000, "{}", cache.len());
        assert_consistent(&cache);
    }

    #[test]
    fn abandoned_and_zero_window() {
        let now = Instant::now();
        let mut cache = DedupCache::new(Duration::from_secs(60), 10 * ENTRY_BYTES);
        cache.check(&key("x"), now);
        cache.check(&key("x"), now);
        assert_eq!(cache.abandon(&key("x")), 1);
        assert_eq!(cache.check(&key("x"), now), Seen::New);
        assert_eq!(cache.abandon(&key("x")), 0);
        assert_eq!(cache.check(&key("x"), now), Seen::New);
        // Abandoning an answered key changes nothing.
        cache.complete(&key("x"), b"ok".to_vec());
        assert_eq!(cache.abandon(&key("x")), 0);
        assert_eq!(cache.check(&key("x"), now), Seen::Answered(b"ok".to_vec()));
        assert_consistent(&cache);
        let mut disabled = DedupCache::new(Duration::ZERO, 10 * ENTRY_BYTES);
        assert_eq!(disabled.check(&key("x"), now), Seen::New);
        assert_eq!(disabled.check(&key("x"), now), Seen::New);
        assert_eq!(disabled.complete(&key("x"), b"ok".to_vec()), 0);
        assert!(disabled.is_empty());
    }

    #[test]
    fn abandoned_keys_leave_no_trace_and_push_nothing_out() {
        // Failed commands are abandoned: thousands of them within one window
        // must neither grow the cache nor push out the successes.
        let start = Instant::now();
        let mut cache = DedupCache::new(Duration::from_secs(600), 8 * (ENTRY_BYTES + 2));
        for i in 0..10_000u64 {
            let now = start + Duration::from_millis(i);
            let failed = key(&format!("failed-{i}"));
            assert_eq!(cache.check(&failed, now), Seen::New);
            cache.abandon(&failed);
            if i % 2_000 == 0 {
                let kept = key(&format!("ok-{i}"));
                cache.check(&kept, now);
                cache.complete(&kept, b"ok".to_vec());
            }
            assert!(cache.len() <= 8, "grew to {}", cache.len());
        }
        assert_consistent(&cache);
        let later = start + Duration::from_secs(11);
        for i in (0..10_000).step_by(2_000) {
            assert_eq!(
                cache.check(&key(&format!("ok-{i}")), later),
                Seen::Answered(b"ok".to_vec())
            );
        }
    }

    #[test]
    fn a_running_key_is_never_pushed_out_and_its_duplicates_are_counted() {
        let start = Instant::now();
        let mut cache = DedupCache::new(Duration::from_secs(600), 4 * (ENTRY_BYTES + 100));
        assert_eq!(cache.check(&key("slow"), start), Seen::New);
        assert_eq!(cache.check(&key("slow"), start), Seen::InFlight);
        // A burst of quick commands fills the memory many times over.
        for i in 0..1_000u64 {
            let quick = key(&i.to_string());
            cache.check(&quick, start + Duration::from_millis(i));
            cache.complete(&quick, vec![b'x'; 100]);
        }
        assert_eq!(cache.check(&key("slow"), start), Seen::InFlight);
        assert_eq!(cache.complete(&key("slow"), b"done".to_vec()), 2);
        assert_eq!(
            cache.check(&key("slow"), start + Duration::from_secs(2)),
            Seen::Answered(b"done".to_vec())
        );
        assert_consistent(&cache);
    }

    #[test]
    fn large_responses_count_by_their_size_and_one_over_the_bound_is_not_kept() {
        let start = Instant::now();
        let mut cache = DedupCache::new(Duration::from_secs(600), 10 * 1024);
        for i in 0..100u64 {
            let now = start + Duration::from_millis(i);
            assert_eq!(cache.check(&key(&i.to_string()), now), Seen::New);
            cache.complete(&key(&i.to_string()), vec![b'x'; 1000]);
            assert_consistent(&cache);
        }
        // As many as fit, the newest.
        let fit = 10 * 1024 / (ENTRY_BYTES + 1000);
        assert_eq!(cache.len(), fit);
        assert_eq!(cache.bytes(), fit * (ENTRY_BYTES + 1000));
        let now = start + Duration::from_secs(1);
        assert_eq!(
            cache.check(&key("99"), now),
            Seen::Answered(vec![b'x'; 1000])
        );
        assert_eq!(cache.check(&key("90"), now), Seen::New);
        assert_eq!(cache.abandon(&key("90")), 0);

        // A response larger than the whole bound: its duplicates are still
        // answered, but it is not remembered, and nothing else is pushed out.
        assert_eq!(cache.check(&key("huge"), now), Seen::New);
        assert_eq!(cache.check(&key("huge"), now), Seen::InFlight);
        assert_eq!(cache.complete(&key("huge"), vec![b'x'; 20 * 1024]), 1);
        assert_eq!(cache.len(), fit);
        assert_eq!(cache.check(&key("huge"), now), Seen::New);
        assert_eq!(
            cache.check(&key("99"), now),
            Seen::Answered(vec![b'x'; 1000])
        );

        // Everything expires, and the count of bytes comes back to zero.
        cache.abandon(&key("huge"));
        cache.check(&key("later"), now + Duration::from_secs(601));
        assert_eq!((cache.len(), cache.bytes()), (1, 0));
        assert_consistent(&cache);
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
        assert_consistent(&cache);
        assert_eq!(
            cache.len(),
            DEFAULT_MAX_BYTES / (ENTRY_BYTES + answer.len())
        );
        assert!((4_000..4_500).contains(&cache.len()), "{}", cache.len());
    }

    #[test]
    fn entry_bytes_covers_a_just_grown_table_and_ring() {
        let slot = std::mem::size_of::<(Digest, Answered)>() + 1;
        let place = std::mem::size_of::<Digest>();
        let header = 16;
        // A table just grown is 7/16 full, a ring just grown half full.
        assert!(ENTRY_BYTES >= slot * 16 / 7 + place * 2 + header);
        // A full one costs less.
        assert!(slot * 8 / 7 + place + header < ENTRY_BYTES);
    }

    #[test]
    fn a_key_answered_late_is_still_forgotten_a_window_after_it_was_first_seen() {
        let start = Instant::now();
        let window = Duration::from_secs(10);
        let mut cache = DedupCache::new(window, 100 * ENTRY_BYTES);
        // A slow command first seen at 0, answered at 9 s; a quick one
        // first seen at 5 s and answered at once, so ahead of it in order.
        assert_eq!(cache.check(&key("slow"), start), Seen::New);
        let quick_seen = start + Duration::from_secs(5);
        assert_eq!(cache.check(&key("quick"), quick_seen), Seen::New);
        cache.complete(&key("quick"), b"q".to_vec());
        cache.complete(&key("slow"), b"s".to_vec());
        let at_ten = start + window;
        assert_eq!(
            cache.check(&key("quick"), at_ten),
            Seen::Answered(b"q".to_vec())
        );
        assert_eq!(cache.check(&key("slow"), at_ten), Seen::New);
        assert_consistent(&cache);
        assert_eq!(cache.check(&key("quick"), quick_seen + window), Seen::New);
        assert_eq!(cache.bytes(), 0);
        assert_consistent(&cache);
    }

    #[derive(Debug, Clone)]
    enum Step {
        Check(u8),
        Complete(u8, usize),
        Abandon(u8),
        Wait(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u8..12).prop_map(Step::Check),
            (0u8..12, 0usize..1_500).prop_map(|(key, length)| Step::Complete(key, length)),
            (0u8..12).prop_map(Step::Abandon),
            (0u64..400).prop_map(Step::Wait),
        ]
    }

    proptest! {
        /// Whatever happens, the bookkeeping holds, the bound holds, and
        /// every duplicate told "in flight" is counted by the completion or
        /// abandonment of its key.
        #[test]
        fn any_sequence_keeps_the_books_and_counts_every_duplicate(
            steps in proptest::collection::vec(step(), 1..200),
        ) {
            let mut now = Instant::now();
            let mut cache = DedupCache::new(Duration::from_secs(1), 4 * ENTRY_BYTES + 2_000);
            // For each key in flight: the duplicates told "in flight"; for
            // each key: when it was last new.
            let mut told = HashMap::new();
            let mut first_seen = HashMap::new();
            for step in steps {
                match step {
                    Step::Check(k) => match cache.check(&key(&k.to_string()), now) {
                        Seen::New => {
                            prop_assert!(!told.contains_key(&k));
                            told.insert(k, 0usize);
                            first_seen.insert(k, now);
                        }
                        Seen::InFlight => *told.get_mut(&k).expect("a key in flight") += 1,
                        Seen::Answered(_) => {
                            prop_assert!(!told.contains_key(&k));
                            // Never past its window, however late it was answered.
                            prop_assert!(now - first_seen[&k] < Duration::from_secs(1));
                        }
                    },
                    Step::Complete(k, length) => {
                        let waiting = cache.complete(&key(&k.to_string()), vec![0; length]);
                        prop_assert_eq!(waiting, told.remove(&k).unwrap_or(0));
                    }
                    Step::Abandon(k) => {
                        let waiting = cache.abandon(&key(&k.to_string()));
                        prop_assert_eq!(waiting, told.remove(&k).unwrap_or(0));
                    }
                    Step::Wait(millis) => now += Duration::from_millis(millis),
                }
                assert_consistent(&cache);
            }
        }
    }
}
