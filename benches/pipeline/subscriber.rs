//! The outside world's MQTT side: a subscriber timing every transition event,
//! the bench's MQTT clients, and clearing the retained topics afterwards.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde::Deserialize;
use tokio::sync::{oneshot, watch};

use pbx2mqtt::config::BrokerUrl;

use crate::settings::{FIRST_EXTENSION, STARTUP_LIMIT};
use crate::stats::{lock, percentile};

/// One event as the subscriber received it.
#[derive(Debug, Clone)]
pub struct EventSample {
    /// When it arrived (wall clock, microseconds since the epoch).
    pub received_micros: i64,
    /// Its `at` field (microseconds since the epoch; the payload has
    /// milliseconds).
    pub at_micros: i64,
    /// Its `seq`.
    pub seq: u64,
    /// True for a transition to `unknown` (a poll failed `stale_after` times).
    pub to_unknown: bool,
}

/// The fields of an event the bench reads.
#[derive(Deserialize)]
pub struct EventPayload {
    /// RFC 3339 with milliseconds.
    pub at: String,
    /// The bridge-wide sequence number.
    pub seq: u64,
    /// The new status.
    pub to: String,
}

/// An MQTT client subscribed to `<base>/agent/+/event` and `bridge/state`,
/// recording the receipt time of every event at once in its event loop.
pub struct EventSubscriber {
    /// Every event received.
    pub samples: Arc<Mutex<Vec<EventSample>>>,
    /// The latest `bridge/state` payload.
    pub bridge_state: watch::Receiver<String>,
    /// Event payloads that did not parse.
    pub malformed: Arc<AtomicU64>,
    /// The event loop task.
    pub task: tokio::task::JoinHandle<()>,
}

impl EventSubscriber {
    pub async fn connect(broker: &str, base: &str) -> anyhow::Result<Self> {
        let (client, mut eventloop) = mqtt_client(broker, "events")?;
        let filters = [
            format!("{base}/agent/+/event"),
            format!("{base}/bridge/state"),
        ];
        let state_topic = format!("{base}/bridge/state");
        let samples = Arc::new(Mutex::new(Vec::with_capacity(64 * 1024)));
        let malformed = Arc::new(AtomicU64::new(0));
        let (state_sender, bridge_state) = watch::channel(String::new());
        let (subscribed_sender, subscribed) = oneshot::channel();
        let task = {
            let samples = samples.clone();
            let malformed = malformed.clone();
            tokio::spawn(async move {
                let mut subscribed_sender = Some(subscribed_sender);
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::Publish(publish))) => {
                            let received_micros = Utc::now().timestamp_micros();
                            if publish.topic == state_topic {
                                let _ = state_sender
                                    .send(String::from_utf8_lossy(&publish.payload).into_owned());
                                continue;
                            }
                            match parse_event(&publish.payload, received_micros) {
                                Some(sample) => lock(&samples).push(sample),
                                None => {
                                    malformed.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            for filter in &filters {
                                let _ = client.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                            }
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
            .context("the event subscriber got no SUBACK: is the broker up?")?
            .context("the event subscriber stopped")?;
        Ok(Self {
            samples,
            bridge_state,
            malformed,
            task,
        })
    }

    pub async fn wait_online(&self, within: Duration) -> anyhow::Result<()> {
        let mut state = self.bridge_state.clone();
        tokio::time::timeout(within, state.wait_for(|state| state == "online"))
            .await
            .context("the bridge did not publish `online`")?
            .context("the event subscriber stopped")?;
        Ok(())
    }

    /// Events received in `[from, to)`.
    pub fn samples_between(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<EventSample> {
        let (from, to) = (from.timestamp_micros(), to.timestamp_micros());
        lock(&self.samples)
            .iter()
            .filter(|sample| sample.received_micros >= from && sample.received_micros < to)
            .cloned()
            .collect()
    }

    /// Median receipt − `at` of the events received in the last `span`.
    pub fn recent_median_latency_ms(&self, span: Duration) -> Option<f64> {
        let since = Utc::now().timestamp_micros() - span.as_micros() as i64;
        let mut latencies: Vec<i64> = lock(&self.samples)
            .iter()
            .rev()
            .take_while(|sample| sample.received_micros >= since)
            .map(|sample| sample.received_micros - sample.at_micros)
            .collect();
        latencies.sort_unstable();
        percentile(&latencies, 0.5).map(|micros| micros as f64 / 1000.0)
    }

    pub fn malformed(&self) -> u64 {
        self.malformed.load(Ordering::Relaxed)
    }
}

impl Drop for EventSubscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn parse_event(payload: &[u8], received_micros: i64) -> Option<EventSample> {
    let event: EventPayload = serde_json::from_slice(payload).ok()?;
    let at = DateTime::parse_from_rfc3339(&event.at).ok()?;
    Some(EventSample {
        received_micros,
        at_micros: at.timestamp_micros(),
        seq: event.seq,
        to_unknown: event.to == "unknown",
    })
}

/// A rumqttc client with a unique id; the caller drives the event loop.
pub fn mqtt_client(broker: &str, role: &str) -> anyhow::Result<(AsyncClient, rumqttc::EventLoop)> {
    let url = BrokerUrl::parse(broker)?;
    let (host, port) = (url.host(), url.port());
    let id = format!("pbx2mqtt-bench-{role}-{:08x}", rand::random::<u32>());
    let mut options = MqttOptions::new(id, host, port);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_max_packet_size(1 << 20, 1 << 20)
        .set_inflight(500);
    let (client, mut eventloop) = AsyncClient::new(options, 4096);
    // A well-configured consumer: no Nagle delay on its acknowledgements.
    let mut network = eventloop.network_options();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);
    Ok((client, eventloop))
}

/// Publishes an empty retained message on every retained topic the bridge
/// used, so a persistent broker does not keep them.
pub async fn clear_retained(broker: &str, base: &str, agents: u32) -> anyhow::Result<()> {
    let (client, mut eventloop) = mqtt_client(broker, "cleanup")?;
    let mut topics = vec![
        format!("{base}/bridge/state"),
        format!("{base}/bridge/info"),
    ];
    for offset in 0..agents {
        let agent = format!("agent{}", FIRST_EXTENSION + offset);
        topics.push(format!("{base}/agent/{agent}"));
        topics.push(format!("{base}/agent/{agent}/status"));
    }
    let expected = topics.len();
    let publisher = {
        let client = client.clone();
        tokio::spawn(async move {
            for topic in topics {
                if client
                    .publish(topic, QoS::AtLeastOnce, true, Vec::<u8>::new())
                    .await
                    .is_err()
                {
                    break;
                }
            }
        })
    };
    let acknowledged = tokio::time::timeout(Duration::from_secs(60), async {
        let mut acknowledged = 0;
        while acknowledged < expected {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acknowledged += 1,
                Ok(_) => {}
                Err(error) => return Err(anyhow::anyhow!("broker connection failed: {error}")),
            }
        }
        Ok(acknowledged)
    })
    .await;
    publisher.abort();
    let _ = client.try_disconnect();
    match acknowledged {
        Ok(result) => result.map(|_| ()),
        Err(_) => bail!("not every clearing publish was acknowledged within 60 s"),
    }
}
