//! Counters, gauges and histograms for `/metrics` (Prometheus text format),
//! shared by every task through an `Arc<Metrics>`. Recording never blocks on
//! IO: plain atomics, and a short mutex for the few labelled counters.
//!
//! The metric names are part of the contract with operators (dashboards,
//! `contrib/prometheus/alerts.yml`); the README lists them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the latency histograms: from a local round
/// trip to an upstream timeout.
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// A latency histogram with [`LATENCY_BUCKETS`].
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations at or below each bound (not cumulative here; summed
    /// when rendered).
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    /// Observations above the last bound.
    over: AtomicU64,
    /// Sum of all observations, microseconds.
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        match LATENCY_BUCKETS.iter().position(|bound| seconds <= *bound) {
            Some(index) => self.buckets[index].fetch_add(1, Ordering::Relaxed),
            None => self.over.fetch_add(1, Ordering::Relaxed),
        };
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// How many observations.
    pub fn count(&self) -> u64 {
        self.buckets
            .iter()
            .map(|bucket| bucket.load(Ordering::Relaxed))
            .sum::<u64>()
            + self.over.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.over.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

/// A counter with one label, for the few label values known at the call
/// site (`&'static str`), e.g. poll errors by kind.
#[derive(Debug, Default)]
pub struct LabelledCounter {
    /// Count per label value.
    counts: Mutex<BTreeMap<&'static str, u64>>,
}

impl LabelledCounter {
    /// Adds one for `label`.
    pub fn inc(&self, label: &'static str) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        *counts.entry(label).or_insert(0) += 1;
    }

    /// The count for `label`.
    pub fn get(&self, label: &str) -> u64 {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(label).copied().unwrap_or(0)
    }

    fn render(&self, out: &mut String, name: &str, label: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        for (value, count) in counts.iter() {
            let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {count}");
        }
    }
}

/// Every metric the bridge exports.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Agent polls completed successfully.
    pub polls_ok: AtomicU64,
    /// Agent polls that failed (any error).
    pub polls_failed: AtomicU64,
    /// Failed polls by kind (`timeout`, `connect`, `http`, ...).
    pub poll_errors: LabelledCounter,
    /// How long an agent poll took (one or two requests).
    pub poll_duration: Histogram,
    /// Status transitions committed.
    pub transitions: AtomicU64,
    /// History records committed.
    pub history_records: AtomicU64,
    /// History commits that failed and were retried.
    pub history_errors: AtomicU64,
    /// Changes waiting for the history writer.
    pub history_queue_depth: AtomicU64,
    /// Transitions merged away while the database was unavailable.
    pub history_merged: AtomicU64,
    /// How long a history batch took to commit.
    pub history_batch_duration: Histogram,
    /// When history last committed (ms since the epoch; 0 before the first).
    pub history_last_commit_ms: AtomicU64,
    /// MQTT messages handed to the client.
    pub mqtt_published: AtomicU64,
    /// Events waiting for a broker acknowledgement.
    pub mqtt_outbox_depth: AtomicU64,
    /// Events resent after a reconnect.
    pub mqtt_resent: AtomicU64,
    /// MQTT (re)connections.
    pub mqtt_connects: AtomicU64,
    /// 1 while the publishing connection is up.
    pub mqtt_connected: AtomicU64,
    /// 1 while the command connection is up.
    pub mqtt_commands_connected: AtomicU64,
    /// Broker connection failures by kind (`credentials`, `tls`, ...).
    pub mqtt_errors: LabelledCounter,
    /// Queue commands answered `ok`.
    pub commands_ok: AtomicU64,
    /// Queue commands answered `error`.
    pub commands_failed: AtomicU64,
    /// Queue commands by outcome: `ok` or the error code.
    pub command_outcomes: LabelledCounter,
    /// How long a queue command took from receipt to answer.
    pub command_duration: Histogram,
    /// Audit rows not written (the audit queue was full or the database
    /// failed).
    pub audit_dropped: AtomicU64,
    /// Request messages ignored before parsing (not a request topic, an
    /// oversized topic).
    pub requests_ignored: AtomicU64,
    /// Several bridges on one database: the last coordination step's view
    /// (`None` with one bridge on SQLite).
    pub cluster: Mutex<Option<ClusterView>>,
    /// Why history cannot be recorded right now (a full disk, a read-only
    /// file, a database that does not answer): the last batch's error,
    /// cleared by the next commit. `None` while history is recorded.
    pub history_failure: Mutex<Option<String>>,
}

/// What this bridge knows about the bridges sharing its database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// This bridge's id.
    pub bridge: String,
    /// Agents held by each live bridge, by id.
    pub shares: Vec<(String, usize)>,
    /// Agents this bridge polls now.
    pub owned: usize,
    /// False once coordination has failed for longer than a lease: this
    /// bridge polls nothing until it coordinates again.
    pub coordinated: bool,
}

impl Metrics {
    /// Adds one to a counter.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Sets a gauge.
    pub fn set(gauge: &AtomicU64, value: u64) {
        gauge.store(value, Ordering::Relaxed);
    }

    /// The cluster view, if several bridges may share the database.
    pub fn cluster_view(&self) -> Option<ClusterView> {
        self.cluster
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces the cluster view.
    pub fn set_cluster_view(&self, view: ClusterView) {
        *self
            .cluster
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(view);
    }

    /// Why history is not being recorded, if it is not.
    pub fn history_failure(&self) -> Option<String> {
        self.history_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Records (`Some`) or clears (`None`) why history is not recorded.
    pub fn set_history_failure(&self, failure: Option<String>) {
        *self
            .history_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = failure;
    }

    /// Counts a failed poll of `kind`.
    pub fn poll_error(&self, kind: &'static str) {
        self.poll_errors.inc(kind);
    }

    /// The Prometheus text exposition; `agents_by_status` lists every
    /// status with the number of agents in it now.
    pub fn render(&self, agents_by_status: &[(&str, u64)]) -> String {
        let mut out = String::with_capacity(8192);
        let _ = writeln!(
            out,
            "# HELP pbx2mqtt_build_info The running version\n# TYPE pbx2mqtt_build_info gauge\n\
             pbx2mqtt_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        let _ = writeln!(
            out,
            "# HELP pbx2mqtt_agents Agents in each status\n# TYPE pbx2mqtt_agents gauge"
        );
        for (status, count) in agents_by_status {
            let _ = writeln!(out, "pbx2mqtt_agents{{status=\"{status}\"}} {count}");
        }
        let load = |value: &AtomicU64| value.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP pbx2mqtt_polls_total Agent polls\n# TYPE pbx2mqtt_polls_total counter\n\
             pbx2mqtt_polls_total{{result=\"ok\"}} {}\npbx2mqtt_polls_total{{result=\"error\"}} {}",
            load(&self.polls_ok),
            load(&self.polls_failed)
        );
        self.poll_errors.render(
            &mut out,
            "pbx2mqtt_poll_errors_total",
            "kind",
            "Failed agent polls by kind",
        );
        self.poll_duration.render(
            &mut out,
            "pbx2mqtt_poll_duration_seconds",
            "How long an agent poll took",
        );
        let _ = writeln!(
            out,
            "# HELP pbx2mqtt_commands_total Queue commands by result\n# TYPE pbx2mqtt_commands_total counter\n\
             pbx2mqtt_commands_total{{result=\"ok\"}} {}\npbx2mqtt_commands_total{{result=\"error\"}} {}",
            load(&self.commands_ok),
            load(&self.commands_failed)
        );
        self.command_outcomes.render(
            &mut out,
            "pbx2mqtt_command_outcomes_total",
            "code",
            "Queue commands by outcome code (ok or the error code)",
        );
        self.command_duration.render(
            &mut out,
            "pbx2mqtt_command_duration_seconds",
            "How long a queue command took from receipt to answer",
        );
        self.history_batch_duration.render(
            &mut out,
            "pbx2mqtt_history_batch_seconds",
            "How long a history batch took to commit",
        );
        self.mqtt_errors.render(
            &mut out,
            "pbx2mqtt_mqtt_errors_total",
            "kind",
            "Broker connection failures by kind",
        );
        let last_commit = load(&self.history_last_commit_ms) as f64 / 1000.0;
        let scalars: [(&str, &str, &str, f64); 17] = [
            (
                "pbx2mqtt_transitions_total",
                "counter",
                "Status transitions committed",
                load(&self.transitions) as f64,
            ),
            (
                "pbx2mqtt_history_records_total",
                "counter",
                "History records committed",
                load(&self.history_records) as f64,
            ),
            (
                "pbx2mqtt_history_errors_total",
                "counter",
                "History commits that failed and were retried",
                load(&self.history_errors) as f64,
            ),
            (
                "pbx2mqtt_history_queue_depth",
                "gauge",
                "Changes waiting for the history writer",
                load(&self.history_queue_depth) as f64,
            ),
            (
                "pbx2mqtt_history_merged_total",
                "counter",
                "Transitions merged away while the database was unavailable",
                load(&self.history_merged) as f64,
            ),
            (
                "pbx2mqtt_history_last_commit_timestamp_seconds",
                "gauge",
                "Unix time of the last history commit (heartbeats commit every second)",
                last_commit,
            ),
            (
                "pbx2mqtt_history_failing",
                "gauge",
                "1 while history batches fail (see /readyz for why)",
                f64::from(u8::from(self.history_failure().is_some())),
            ),
            (
                "pbx2mqtt_mqtt_published_total",
                "counter",
                "MQTT messages published",
                load(&self.mqtt_published) as f64,
            ),
            (
                "pbx2mqtt_mqtt_outbox_depth",
                "gauge",
                "Events awaiting broker acknowledgement",
                load(&self.mqtt_outbox_depth) as f64,
            ),
            (
                "pbx2mqtt_mqtt_resent_total",
                "counter",
                "Events resent after a reconnect",
                load(&self.mqtt_resent) as f64,
            ),
            (
                "pbx2mqtt_mqtt_connects_total",
                "counter",
                "MQTT connections",
                load(&self.mqtt_connects) as f64,
            ),
            (
                "pbx2mqtt_mqtt_connected",
                "gauge",
                "1 while the publishing connection is up",
                load(&self.mqtt_connected) as f64,
            ),
            (
                "pbx2mqtt_mqtt_commands_connected",
                "gauge",
                "1 while the command connection is up",
                load(&self.mqtt_commands_connected) as f64,
            ),
            (
                "pbx2mqtt_audit_dropped_total",
                "counter",
                "Command audit rows not written",
                load(&self.audit_dropped) as f64,
            ),
            (
                "pbx2mqtt_requests_ignored_total",
                "counter",
                "Messages on request topics ignored before parsing",
                load(&self.requests_ignored) as f64,
            ),
            (
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size in bytes",
                resident_memory_bytes() as f64,
            ),
            (
                "process_open_fds",
                "gauge",
                "Number of open file descriptors",
                open_fds() as f64,
            ),
        ];
        for (name, kind, help, value) in scalars {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        if let Some(view) = self.cluster_view() {
            let _ = writeln!(
                out,
                "# HELP pbx2mqtt_cluster_agents Agents held by each live bridge\n\
                 # TYPE pbx2mqtt_cluster_agents gauge"
            );
            for (bridge, count) in &view.shares {
                let _ = writeln!(
                    out,
                    "pbx2mqtt_cluster_agents{{bridge=\"{bridge}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "# HELP pbx2mqtt_cluster_owned_agents Agents this bridge polls now\n\
                 # TYPE pbx2mqtt_cluster_owned_agents gauge\npbx2mqtt_cluster_owned_agents {}\n\
                 # HELP pbx2mqtt_cluster_coordinated 1 while this bridge coordinates with the others\n\
                 # TYPE pbx2mqtt_cluster_coordinated gauge\npbx2mqtt_cluster_coordinated {}",
                view.owned,
                u8::from(view.coordinated)
            );
        }
        out
    }
}

/// The process's resident memory, from `/proc/self/statm` (0 elsewhere).
pub fn resident_memory_bytes() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// The process's open file descriptors, from `/proc/self/fd` (0 elsewhere).
pub fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_has_every_family_once_with_its_type() {
        let metrics = Metrics::default();
        metrics.poll_duration.observe(Duration::from_millis(3));
        metrics.poll_duration.observe(Duration::from_secs(30));
        metrics.poll_error("timeout");
        metrics.command_outcomes.inc("invalid_queue");
        let text = metrics.render(&[("available", 3), ("on_call", 1)]);
        for line in [
            "pbx2mqtt_agents{status=\"available\"} 3",
            "pbx2mqtt_poll_errors_total{kind=\"timeout\"} 1",
            "pbx2mqtt_poll_duration_seconds_bucket{le=\"0.005\"} 1",
            "pbx2mqtt_poll_duration_seconds_bucket{le=\"+Inf\"} 2",
            "pbx2mqtt_poll_duration_seconds_count 2",
            "pbx2mqtt_command_outcomes_total{code=\"invalid_queue\"} 1",
            "pbx2mqtt_build_info{version=",
            "# TYPE pbx2mqtt_history_last_commit_timestamp_seconds gauge",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        let mut families = std::collections::HashSet::new();
        for line in text.lines().filter(|line| line.starts_with("# TYPE ")) {
            assert!(families.insert(line.to_owned()), "{line} twice");
        }
        assert!(resident_memory_bytes() > 0 && open_fds() > 0);
    }
}
