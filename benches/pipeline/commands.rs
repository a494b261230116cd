//! The command phase: queue commands in flight over MQTT, their latency and
//! outcomes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rumqttc::{Event, Packet, QoS};
use serde_json::Value as Json;
use tokio::sync::oneshot;

use crate::settings::{Settings, COMMAND_QUEUE, FIRST_TRING_EXTENSION, STARTUP_LIMIT};
use crate::stats::{lock, percentile};
use crate::subscriber::mqtt_client;
use crate::table::{Report, Row};

/// Longest wait for one command's response.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Commands started this soon after the phase began are not measured
/// (connections and the dispatcher warming up).
const COMMAND_WARMUP: Duration = Duration::from_millis(500);

/// What the command phase measured.
pub struct CommandResults {
    /// Commands answered within the phase (after its warm-up).
    pub answered: u64,
    /// Of those, answered `{"status":"error"}`.
    pub errors: u64,
    /// Commands that got no response within [`COMMAND_TIMEOUT`].
    pub timeouts: u64,
    /// Request → response latencies, microseconds, sorted.
    pub latencies: Vec<i64>,
    /// Seconds measured (after the warm-up).
    pub seconds: f64,
    /// One error response, for the report.
    pub sample_error: Option<String>,
}

impl CommandResults {
    pub fn rows(&self, report: &mut Report, settings: &Settings) {
        let per_second = self.answered as f64 / self.seconds.max(1e-9);
        report.push(Row::info(
            &format!(
                "commands/s ({} in flight, add/remove queue {COMMAND_QUEUE})",
                settings.commands_in_flight
            ),
            format!(
                "{per_second:.0}/s ({} in {:.1} s)",
                self.answered, self.seconds
            ),
            Some(per_second),
            "1/s",
        ));
        for (label, fraction) in [("p50", 0.50), ("p99", 0.99)] {
            let value = percentile(&self.latencies, fraction).map(|micros| micros as f64 / 1000.0);
            report.push(Row::info(
                &format!("command request → response {label}"),
                value.map_or("-".to_owned(), |ms| format!("{ms:.2} ms")),
                value,
                "ms",
            ));
        }
        let failed = self.errors + self.timeouts;
        let mut measured = format!(
            "{} error responses, {} timeouts",
            self.errors, self.timeouts
        );
        if let Some(error) = &self.sample_error {
            measured.push_str(&format!(" (e.g. {error})"));
        }
        report.push(Row::check(
            "command failures",
            measured,
            Some(failed as f64),
            "count",
            "0",
            failed == 0,
        ));
    }
}

/// A command's outcome as the response listener saw it.
pub struct CommandResponse {
    /// When the response arrived.
    pub received: Instant,
    /// True for `"status":"ok"`.
    pub ok: bool,
    /// The payload, for errors.
    pub payload: String,
}

/// Publishes add/remove commands with unique transactions, `in_flight` at a
/// time, and times each response.
pub async fn run_commands(
    broker: &str,
    base: &str,
    settings: &Settings,
) -> anyhow::Result<CommandResults> {
    let (client, mut eventloop) = mqtt_client(broker, "commands")?;
    let pending: Arc<Mutex<HashMap<u64, oneshot::Sender<CommandResponse>>>> =
        Arc::new(Mutex::new(HashMap::new()));
    let filter = format!("{base}/response/queue/{COMMAND_QUEUE}/+");
    let (subscribed_sender, subscribed) = oneshot::channel();
    let listener = {
        let pending = pending.clone();
        let client = client.clone();
        tokio::spawn(async move {
            let mut subscribed_sender = Some(subscribed_sender);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        let received = Instant::now();
                        let Ok(response) = serde_json::from_slice::<Json>(&publish.payload) else {
                            continue;
                        };
                        let Some(transaction) = response.get("transaction").and_then(Json::as_u64)
                        else {
                            continue;
                        };
                        if let Some(waiter) = lock(&pending).remove(&transaction) {
                            let _ = waiter.send(CommandResponse {
                                received,
                                ok: response.get("status").and_then(Json::as_str) == Some("ok"),
                                payload: response.to_string(),
                            });
                        }
                    }
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = client.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(sender) = subscribed_sender.take() {
                            let _ = sender.send(());
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        })
    };
    tokio::time::timeout(STARTUP_LIMIT, subscribed)
        .await
        .context("the command client got no SUBACK")?
        .context("the command client stopped")?;

    let started = Instant::now();
    let measure_from = started + COMMAND_WARMUP;
    let deadline = started + settings.command_time;
    let transactions = Arc::new(AtomicU64::new(1));
    let mut workers = Vec::new();
    for worker in 0..settings.commands_in_flight {
        let client = client.clone();
        let pending = pending.clone();
        let transactions = transactions.clone();
        let base = base.to_owned();
        let extension = FIRST_TRING_EXTENSION as usize + worker % settings.agents.max(1) as usize;
        workers.push(tokio::spawn(async move {
            // (started, latency micros or None for a timeout, ok, payload)
            let mut outcomes = Vec::new();
            let mut add = true;
            while Instant::now() < deadline {
                let transaction = transactions.fetch_add(1, Ordering::Relaxed);
                let action = if add { "add" } else { "remove" };
                add = !add;
                let (sender, receiver) = oneshot::channel();
                lock(&pending).insert(transaction, sender);
                let payload =
                    format!(r#"{{"extension":"{extension}","transaction":{transaction}}}"#);
                let sent = Instant::now();
                let topic = format!("{base}/request/queue/{COMMAND_QUEUE}/{action}");
                if client
                    .publish(topic, QoS::AtLeastOnce, false, payload)
                    .await
                    .is_err()
                {
                    break;
                }
                match tokio::time::timeout(COMMAND_TIMEOUT, receiver).await {
                    Ok(Ok(response)) => {
                        let latency = response.received.duration_since(sent).as_micros() as i64;
                        outcomes.push((sent, Some(latency), response.ok, response.payload));
                    }
                    _ => {
                        lock(&pending).remove(&transaction);
                        outcomes.push((sent, None, false, String::new()));
                    }
                }
            }
            outcomes
        }));
    }
    let mut results = CommandResults {
        answered: 0,
        errors: 0,
        timeouts: 0,
        latencies: Vec::new(),
        seconds: 0.0,
        sample_error: None,
    };
    let mut last_answer = measure_from;
    for worker in workers {
        for (sent, latency, ok, payload) in worker.await.context("a command worker panicked")? {
            if sent < measure_from {
                continue;
            }
            match latency {
                Some(latency) => {
                    results.answered += 1;
                    results.latencies.push(latency);
                    last_answer = last_answer.max(sent + Duration::from_micros(latency as u64));
                    if !ok {
                        results.errors += 1;
                        results.sample_error.get_or_insert(payload);
                    }
                }
                None => results.timeouts += 1,
            }
        }
    }
    results.latencies.sort_unstable();
    results.seconds = last_answer.duration_since(measure_from).as_secs_f64();
    listener.abort();
    let _ = client.try_disconnect();
    Ok(results)
}
