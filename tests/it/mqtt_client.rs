//! A test MQTT client: subscribes, records every message, and lets a test
//! wait (with a timeout) for the message it expects. No sleeps.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

/// The largest packet the test clients send or read: above the 17 MB
/// message of the oversized-request tests.
const MAX_PACKET: usize = 64 << 20;

/// One received message.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    /// MQTT 5 correlation data (a [`V5Client`] only).
    pub correlation_data: Option<Vec<u8>>,
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
        options.set_max_packet_size(MAX_PACKET, MAX_PACKET);
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
                            correlation_data: None,
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
        wait_in(&mut self.messages, &mut self.seen, within, what, matches).await
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

async fn wait_in(
    messages: &mut mpsc::UnboundedReceiver<Message>,
    seen: &mut Vec<Message>,
    within: Duration,
    what: &str,
    matches: impl Fn(&Message) -> bool,
) -> Message {
    if let Some(found) = seen.iter().find(|m| matches(m)) {
        return found.clone();
    }
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, messages.recv()).await {
            Ok(Some(message)) => {
                seen.push(message.clone());
                if matches(&message) {
                    return message;
                }
            }
            Ok(None) => panic!("test client stopped while waiting for {what}"),
            Err(_) => panic!(
                "timed out after {within:?} waiting for {what}; saw {} messages: {:?}",
                seen.len(),
                seen.iter()
                    .rev()
                    .take(10)
                    .map(|m| format!("{} {}", m.topic, m.text()))
                    .collect::<Vec<_>>()
            ),
        }
    }
}

/// An MQTT 5 test client: publishes requests with a response topic and
/// correlation data, and records the correlation data of what it receives.
pub struct V5Client {
    pub client: rumqttc::v5::AsyncClient,
    messages: mpsc::UnboundedReceiver<Message>,
    /// Everything received so far, in order.
    pub seen: Vec<Message>,
}

impl V5Client {
    /// Connects to `url` with MQTT 5 and subscribes to `filters`.
    pub async fn connect(url: &str, filters: &[String]) -> V5Client {
        use rumqttc::v5::mqttbytes::v5::Packet as V5Packet;
        use rumqttc::v5::mqttbytes::QoS as V5QoS;
        use rumqttc::v5::{
            AsyncClient as V5AsyncClient, Event as V5Event, MqttOptions as V5Options,
        };

        let url = pbx2mqtt::config::BrokerUrl::parse(url).unwrap();
        let id = format!("test5-{}", rand::random::<u64>());
        let mut options = V5Options::new(id, url.host(), url.port());
        options.set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(Some(MAX_PACKET as u32));
        let (client, mut eventloop) = V5AsyncClient::new(options, 1024);
        let (tx, messages) = mpsc::unbounded_channel();
        let (subscribed_tx, mut subscribed) = mpsc::unbounded_channel();
        let resubscriber = client.clone();
        let wanted: Vec<String> = filters.to_vec();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(V5Event::Incoming(V5Packet::ConnAck(_))) => {
                        for filter in &wanted {
                            let _ = resubscriber.try_subscribe(filter.clone(), V5QoS::AtLeastOnce);
                        }
                    }
                    Ok(V5Event::Incoming(V5Packet::Publish(p))) => {
                        let message = Message {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                            correlation_data: p
                                .properties
                                .and_then(|props| props.correlation_data)
                                .map(|data| data.to_vec()),
                        };
                        if tx.send(message).is_err() {
                            return;
                        }
                    }
                    Ok(V5Event::Incoming(V5Packet::SubAck(_))) => {
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
        V5Client {
            client,
            messages,
            seen: Vec::new(),
        }
    }

    /// Publishes a QoS 1 request naming `response_topic` and
    /// `correlation_data`.
    pub async fn request(
        &self,
        topic: &str,
        payload: impl Into<Vec<u8>>,
        response_topic: &str,
        correlation_data: &[u8],
    ) {
        let properties = rumqttc::v5::mqttbytes::v5::PublishProperties {
            response_topic: Some(response_topic.to_owned()),
            correlation_data: Some(bytes::Bytes::copy_from_slice(correlation_data)),
            ..Default::default()
        };
        self.client
            .publish_with_properties(
                topic.to_owned(),
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                false,
                payload.into(),
                properties,
            )
            .await
            .unwrap();
    }

    /// Publishes a QoS 1 message without properties.
    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>, retain: bool) {
        self.client
            .publish(
                topic.to_owned(),
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                retain,
                payload.into(),
            )
            .await
            .unwrap();
    }

    /// Waits up to `within` for a message satisfying `matches`.
    pub async fn wait_for(
        &mut self,
        within: Duration,
        what: &str,
        matches: impl Fn(&Message) -> bool,
    ) -> Message {
        wait_in(&mut self.messages, &mut self.seen, within, what, matches).await
    }
}
