//! A test MQTT client: subscribes, records every message, and lets a test
//! wait (with a timeout) for the message it expects. No sleeps.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

/// One received message.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

impl Message {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or_else(|e| {
            panic!(
                "payload on {} is not JSON ({e}): {}",
                self.topic,
                self.text()
            )
        })
    }
}

/// A connected test client.
pub struct TestClient {
    pub client: AsyncClient,
    messages: mpsc::UnboundedReceiver<Message>,
    /// Everything received so far, in order.
    pub seen: Vec<Message>,
}

impl TestClient {
    /// Connects to `url` (mqtt://host:port) and subscribes to `filters`.
    pub async fn connect(url: &str, filters: &[String]) -> TestClient {
        let url = pbx2mqtt::config::BrokerUrl::parse(url).unwrap();
        let (host, port) = (url.host().to_owned(), url.port());
        let id = format!("test-{}", rand::random::<u64>());
        let mut options = MqttOptions::new(id, host, port);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(1 << 24, 1 << 24);
        let (client, mut eventloop) = AsyncClient::new(options, 1024);
        let (tx, messages) = mpsc::unbounded_channel();
        let (subscribed_tx, mut subscribed) = mpsc::unbounded_channel();
        // Subscribe on every CONNACK: a restarted broker forgets sessions.
        let resubscriber = client.clone();
        let wanted: Vec<String> = filters.to_vec();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        for filter in &wanted {
                            let _ = resubscriber.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let message = Message {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                        };
                        if tx.send(message).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = subscribed_tx.send(());
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        for _ in filters {
            tokio::time::timeout(Duration::from_secs(10), subscribed.recv())
                .await
                .expect("no SUBACK within 10 s");
        }
        TestClient {
            client,
            messages,
            seen: Vec::new(),
        }
    }

    /// Waits up to `within` for a message satisfying `matches`, returning it.
    /// Messages before it are kept in `seen`.
    pub async fn wait_for(
        &mut self,
        within: Duration,
        what: &str,
        matches: impl Fn(&Message) -> bool,
    ) -> Message {
        if let Some(found) = self.seen.iter().find(|m| matches(m)) {
            return found.clone();
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.messages.recv()).await {
                Ok(Some(message)) => {
                    self.seen.push(message.clone());
                    if matches(&message) {
                        return message;
                    }
                }
                Ok(None) => panic!("test client stopped while waiting for {what}"),
                Err(_) => panic!(
                    "timed out after {within:?} waiting for {what}; saw {} messages: {:?}",
                    self.seen.len(),
                    self.seen
                        .iter()
                        .rev()
                        .take(10)
                        .map(|m| format!("{} {}", m.topic, m.text()))
                        .collect::<Vec<_>>()
                ),
            }
        }
    }

    /// Waits for a message on exactly `topic`.
    pub async fn wait_topic(&mut self, topic: &str, within: Duration) -> Message {
        self.wait_for(within, topic, |m| m.topic == topic).await
    }

    /// Drops everything seen so far (so the next wait sees only new messages).
    pub fn forget(&mut self) {
        while let Ok(message) = self.messages.try_recv() {
            self.seen.push(message);
        }
        self.seen.clear();
    }

    /// Clears every retained message this client has seen, so test runs do
    /// not pile up retained topics on a shared broker.
    pub async fn clear_retained(&mut self) {
        self.forget_into_seen();
        let topics: std::collections::BTreeSet<String> = self
            .seen
            .iter()
            .filter(|m| m.retain || m.topic.contains("/agent/") || m.topic.contains("/bridge/"))
            .map(|m| m.topic.clone())
            .collect();
        for topic in topics {
            let _ = self
                .client
                .publish(topic, QoS::AtLeastOnce, true, Vec::new())
                .await;
        }
    }

    /// Moves everything received so far into `seen`, without waiting.
    pub fn forget_into_seen(&mut self) {
        while let Ok(message) = self.messages.try_recv() {
            self.seen.push(message);
        }
    }

    /// Publishes a message.
    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>, retain: bool) {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload.into())
            .await
            .unwrap();
    }
}
