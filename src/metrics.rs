//! Counters and gauges for `/metrics` (Prometheus text format), shared by
//! every task through an `Arc<Metrics>`. Plain atomics: recording never
//! blocks and never allocates.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Every metric the bridge exports.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Agent polls completed successfully.
    pub polls_ok: AtomicU64,
    /// Agent polls that failed (any error).
    pub polls_failed: AtomicU64,
    /// Status transitions detected.
    pub transitions: AtomicU64,
    /// History records committed.
    pub history_records: AtomicU64,
    /// History commits that failed and were retried.
    pub history_errors: AtomicU64,
    /// Changes waiting in the history writer's channel.
    pub history_queue_depth: AtomicU64,
    /// Changes the tracker holds because that channel was full.
    pub history_spill_depth: AtomicU64,
    /// MQTT messages handed to the client.
    pub mqtt_published: AtomicU64,
    /// Events waiting for a broker acknowledgement.
    pub mqtt_outbox_depth: AtomicU64,
    /// Events resent after a reconnect.
    pub mqtt_resent: AtomicU64,
    /// MQTT (re)connections.
    pub mqtt_connects: AtomicU64,
    /// 1 while connected to the broker.
    pub mqtt_connected: AtomicU64,
    /// Queue commands answered `ok`.
    pub commands_ok: AtomicU64,
    /// Queue commands answered `error`.
    pub commands_failed: AtomicU64,
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

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let rows: [(&str, &str, &str, &AtomicU64); 14] = [
            (
                "pbx2mqtt_polls_total{result=\"ok\"}",
                "counter",
                "Agent polls",
                &self.polls_ok,
            ),
            (
                "pbx2mqtt_polls_total{result=\"error\"}",
                "counter",
                "Agent polls",
                &self.polls_failed,
            ),
            (
                "pbx2mqtt_transitions_total",
                "counter",
                "Status transitions",
                &self.transitions,
            ),
            (
                "pbx2mqtt_history_records_total",
                "counter",
                "History records committed",
                &self.history_records,
            ),
            (
                "pbx2mqtt_history_errors_total",
                "counter",
                "History commits retried",
                &self.history_errors,
            ),
            (
                "pbx2mqtt_history_queue_depth",
                "gauge",
                "Changes waiting for the history writer",
                &self.history_queue_depth,
            ),
            (
                "pbx2mqtt_history_spill_depth",
                "gauge",
                "Changes the tracker holds while the history queue is full",
                &self.history_spill_depth,
            ),
            (
                "pbx2mqtt_mqtt_published_total",
                "counter",
                "MQTT messages published",
                &self.mqtt_published,
            ),
            (
                "pbx2mqtt_mqtt_outbox_depth",
                "gauge",
                "Events awaiting broker acknowledgement",
                &self.mqtt_outbox_depth,
            ),
            (
                "pbx2mqtt_mqtt_resent_total",
                "counter",
                "Events resent after reconnect",
                &self.mqtt_resent,
            ),
            (
                "pbx2mqtt_mqtt_connects_total",
                "counter",
                "MQTT connections",
                &self.mqtt_connects,
            ),
            (
                "pbx2mqtt_mqtt_connected",
                "gauge",
                "1 while connected",
                &self.mqtt_connected,
            ),
            (
                "pbx2mqtt_commands_total{result=\"ok\"}",
                "counter",
                "Queue commands",
                &self.commands_ok,
            ),
            (
                "pbx2mqtt_commands_total{result=\"error\"}",
                "counter",
                "Queue commands",
                &self.commands_failed,
            ),
        ];
        let mut out = String::new();
        let mut last_family = "";
        for (name, kind, help, value) in rows {
            let family = name.split('{').next().unwrap_or(name);
            if family != last_family {
                // Writing to a String cannot fail.
                let _ = writeln!(out, "# HELP {family} {help}\n# TYPE {family} {kind}");
                last_family = family;
            }
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
        out
    }
}
