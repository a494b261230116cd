//! Poll gaps: for every virtual agent, the wall-clock time between two
//! successive `ivr.getAgentAvail` requests about it, so a benchmark can check
//! that no agent waited much longer than the bridge's poll interval
//! (`GET /control/stats` → `poll_gaps`, reset with `DELETE
//! /control/poll-gaps`).
//!
//! It is updated on every request, so it uses atomics only (no lock) and
//! costs one swap and a few adds per request. Time comes from a monotonic
//! clock, never from the simulated [`super::agents::SimClock`], which tests
//! can move forward. This module does no IO.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Width of one histogram bucket: gap percentiles are reported to the
/// millisecond above.
const BUCKET_MICROS: u64 = 1_000;

/// Histogram buckets: gaps up to 10 s are binned per millisecond; longer
/// gaps land in the last bucket (the maximum stays exact).
const BUCKETS: usize = 10_000;

/// Gap statistics since the last reset, as `/control/stats` shows them. All
/// durations are in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollGaps {
    /// Gaps measured: polls whose agent had been polled before. A gap counts
    /// when its second poll arrives after the last reset.
    pub count: u64,
    /// Mean gap.
    pub mean_micros: u64,
    /// Median gap (upper bound of its millisecond bucket).
    pub p50_micros: u64,
    /// 99th percentile gap (upper bound of its millisecond bucket).
    pub p99_micros: u64,
    /// 99.9th percentile gap (upper bound of its millisecond bucket).
    pub p999_micros: u64,
    /// Longest gap.
    pub max_micros: u64,
    /// Belfabriek extension id of the agent with the longest gap.
    pub max_agent: Option<String>,
    /// The longest any agent has gone, right now, without a poll (since its
    /// last poll, or since the simulator started for an agent never polled):
    /// an agent that is no longer polled at all shows here, not in the gaps.
    pub longest_waiting_micros: u64,
    /// Belfabriek extension id of that agent.
    pub longest_waiting_agent: Option<String>,
}

/// Records poll times per agent (by index, in extension order).
#[derive(Debug)]
pub struct PollGapRecorder {
    /// Time zero of every stored timestamp.
    origin: Instant,
    /// Per agent: microseconds since `origin` of its last poll, plus one (0:
    /// never polled).
    last_poll: Vec<AtomicU64>,
    /// Gap counts per millisecond bucket.
    histogram: Vec<AtomicU64>,
    /// Gaps measured.
    count: AtomicU64,
    /// Sum of the gaps measured.
    total_micros: AtomicU64,
    /// Longest gap.
    max_micros: AtomicU64,
    /// Index of the agent with the longest gap, plus one (0: none).
    max_agent: AtomicU64,
}

impl PollGapRecorder {
    /// A recorder for `agents` agents, none polled yet.
    pub fn new(agents: usize) -> Self {
        Self {
            origin: Instant::now(),
            last_poll: (0..agents).map(|_| AtomicU64::new(0)).collect(),
            histogram: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            total_micros: AtomicU64::new(0),
            max_micros: AtomicU64::new(0),
            max_agent: AtomicU64::new(0),
        }
    }

    /// The instant every recorded time is measured from.
    pub fn origin(&self) -> Instant {
        self.origin
    }

    /// Microseconds since the recorder was made.
    pub fn now_micros(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX - 1)
    }

    /// Records a poll of agent `index` now.
    pub fn record(&self, index: usize) {
        self.record_at(index, self.now_micros());
    }

    /// Records a poll of agent `index` at `now` (microseconds since the
    /// recorder was made). Unknown indexes are ignored.
    pub fn record_at(&self, index: usize, now: u64) {
        let Some(slot) = self.last_poll.get(index) else {
            return;
        };
        let previous = slot.swap(now + 1, Ordering::Relaxed);
        if previous == 0 {
            return;
        }
        let gap = now.saturating_sub(previous - 1);
        let bucket = usize::try_from(gap / BUCKET_MICROS)
            .unwrap_or(BUCKETS - 1)
            .min(BUCKETS - 1);
        self.histogram[bucket].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.total_micros.fetch_add(gap, Ordering::Relaxed);
        if gap > self.max_micros.fetch_max(gap, Ordering::Relaxed) {
            // Racy against another new maximum at the same instant; the
            // agent named is then one of the two, which is good enough.
            self.max_agent.store(index as u64 + 1, Ordering::Relaxed);
        }
    }

    /// Forgets the gaps measured so far (not the agents' last poll times, so
    /// the first gap after a reset is still whole). Not atomic as a whole: a
    /// poll during the reset may be half counted.
    pub fn reset(&self) {
        for bucket in &self.histogram {
            bucket.store(0, Ordering::Relaxed);
        }
        self.count.store(0, Ordering::Relaxed);
        self.total_micros.store(0, Ordering::Relaxed);
        self.max_micros.store(0, Ordering::Relaxed);
        self.max_agent.store(0, Ordering::Relaxed);
    }

    /// The statistics now; `name_of(index)` gives an agent's extension id.
    pub fn snapshot(&self, name_of: impl Fn(usize) -> String) -> PollGaps {
        self.snapshot_at(self.now_micros(), name_of)
    }

    /// The statistics at `now` (microseconds since the recorder was made).
    fn snapshot_at(&self, now: u64, name_of: impl Fn(usize) -> String) -> PollGaps {
        let counts: Vec<u64> = self
            .histogram
            .iter()
            .map(|bucket| bucket.load(Ordering::Relaxed))
            .collect();
        let count: u64 = counts.iter().sum();
        let max_micros = self.max_micros.load(Ordering::Relaxed);
        let percentile = |fraction: f64| -> u64 {
            if count == 0 {
                return 0;
            }
            let rank = ((count as f64 * fraction).ceil() as u64).clamp(1, count);
            let mut seen = 0;
            for (bucket, bucket_count) in counts.iter().enumerate() {
                seen += bucket_count;
                if seen >= rank {
                    if bucket == BUCKETS - 1 {
                        return max_micros;
                    }
                    return ((bucket as u64 + 1) * BUCKET_MICROS).min(max_micros);
                }
            }
            max_micros
        };
        let named = |plus_one: u64| (plus_one > 0).then(|| name_of(plus_one as usize - 1));
        let mut longest_waiting_micros = 0;
        let mut longest_waiting_index = 0;
        for (index, slot) in self.last_poll.iter().enumerate() {
            let last = slot.load(Ordering::Relaxed).saturating_sub(1);
            let waiting = now.saturating_sub(last);
            if waiting > longest_waiting_micros {
                longest_waiting_micros = waiting;
                longest_waiting_index = index as u64 + 1;
            }
        }
        PollGaps {
            count,
            mean_micros: self
                .total_micros
                .load(Ordering::Relaxed)
                .checked_div(count)
                .unwrap_or(0),
            p50_micros: percentile(0.50),
            p99_micros: percentile(0.99),
            p999_micros: percentile(0.999),
            max_micros,
            max_agent: named(self.max_agent.load(Ordering::Relaxed)),
            longest_waiting_micros,
            longest_waiting_agent: named(longest_waiting_index),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::simulator::{Simulator, SimulatorConfig};
    use crate::xmlrpc::{encode_call, Value};

    fn name(index: usize) -> String {
        (1001 + index).to_string()
    }

    /// Feeds `(agent index, at micros)` polls to a recorder of 3 agents and
    /// compares the snapshot at `now`.
    fn check(polls: &[(usize, u64)], now: u64, expected: PollGaps) {
        let recorder = PollGapRecorder::new(3);
        for &(index, at) in polls {
            recorder.record_at(index, at);
        }
        assert_eq!(recorder.snapshot_at(now, name), expected, "{polls:?}");
    }

    #[test]
    fn gaps_are_measured_per_agent() {
        // Nothing polled: every agent has waited since the start.
        check(
            &[],
            5_000,
            PollGaps {
                longest_waiting_micros: 5_000,
                longest_waiting_agent: Some("1001".into()),
                ..PollGaps::default()
            },
        );
        // One poll per agent: no gap yet.
        check(
            &[(0, 100), (1, 200), (2, 300)],
            1_000,
            PollGaps {
                longest_waiting_micros: 900,
                longest_waiting_agent: Some("1001".into()),
                ..PollGaps::default()
            },
        );
        // Agent 1002 waited 500 ms, the others 250 ms; unknown index ignored.
        check(
            &[
                (0, 0),
                (1, 0),
                (2, 0),
                (0, 250_000),
                (2, 250_000),
                (1, 500_000),
                (7, 500_000),
            ],
            600_000,
            PollGaps {
                count: 3,
                mean_micros: 333_333,
                p50_micros: 251_000,
                p99_micros: 500_000,
                p999_micros: 500_000,
                max_micros: 500_000,
                max_agent: Some("1002".into()),
                longest_waiting_micros: 350_000,
                longest_waiting_agent: Some("1001".into()),
            },
        );
        // A gap beyond the histogram keeps its exact maximum.
        check(
            &[(2, 0), (2, 60_000_000)],
            60_000_000,
            PollGaps {
                count: 1,
                mean_micros: 60_000_000,
                p50_micros: 60_000_000,
                p99_micros: 60_000_000,
                p999_micros: 60_000_000,
                max_micros: 60_000_000,
                max_agent: Some("1003".into()),
                longest_waiting_micros: 60_000_000,
                longest_waiting_agent: Some("1001".into()),
            },
        );
    }

    #[test]
    fn reset_forgets_gaps_but_not_the_last_polls() {
        let recorder = PollGapRecorder::new(1);
        recorder.record_at(0, 0);
        recorder.record_at(0, 900_000);
        recorder.reset();
        assert_eq!(recorder.snapshot_at(900_000, name).count, 0);
        recorder.record_at(0, 1_400_000);
        let gaps = recorder.snapshot_at(1_400_000, name);
        assert_eq!((gaps.count, gaps.max_micros), (1, 500_000));
    }

    fn avail_call(extension: &str) -> Vec<u8> {
        encode_call(
            "ivr.getAgentAvail",
            &[Value::Struct(vec![
                ("accountCode".into(), Value::String("1234".into())),
                ("extensionId".into(), Value::String(extension.into())),
            ])],
        )
    }

    #[tokio::test]
    async fn stats_show_poll_gaps_and_delete_resets_them() {
        let shutdown = CancellationToken::new();
        let config = SimulatorConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            agents: 2,
            seed: Some(1),
            ..SimulatorConfig::default()
        };
        let simulator = Simulator::start(config, shutdown.clone()).await.unwrap();
        let client = reqwest::Client::new();
        for extension in ["1001", "1001", "1002", "1001"] {
            let response = client
                .post(simulator.belfabriek_url())
                .body(avail_call(extension))
                .send()
                .await
                .unwrap();
            assert!(response.status().is_success());
        }
        // `general.getExtensionStatus` is not a poll start: no gap.
        let status_call = encode_call(
            "general.getExtensionStatus",
            &[Value::Struct(vec![
                ("accountCode".into(), Value::String("1234".into())),
                ("extensionId".into(), Value::String("1002".into())),
            ])],
        );
        client
            .post(simulator.belfabriek_url())
            .body(status_call)
            .send()
            .await
            .unwrap();
        let stats = client
            .get(format!("{}/stats", simulator.control_url()))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let stats: serde_json::Value = serde_json::from_slice(&stats).unwrap();
        assert_eq!(stats["poll_gaps"]["count"], 2, "{stats}");
        assert_eq!(stats["poll_gaps"]["max_agent"], "1001", "{stats}");
        assert_eq!(simulator.counts().poll_gaps.count, 2);

        let reset = client
            .delete(format!("{}/poll-gaps", simulator.control_url()))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let reset: PollGaps = serde_json::from_slice(&reset).unwrap();
        assert_eq!((reset.count, reset.max_agent), (0, None));
        tokio::time::sleep(Duration::from_millis(2)).await;
        client
            .post(simulator.belfabriek_url())
            .body(avail_call("1002"))
            .send()
            .await
            .unwrap();
        let gaps = simulator.counts().poll_gaps;
        assert_eq!(gaps.count, 1);
        assert_eq!(gaps.max_agent.as_deref(), Some("1002"));
        assert!(gaps.max_micros >= 2_000, "{gaps:?}");
        shutdown.cancel();
        simulator.join().await.unwrap();
    }
}
