//! The command connection: the bridge's second broker connection, which
//! subscribes to the request topics (and Home Assistant's status and the
//! bridge's own discovery configs), hands requests to the dispatcher and
//! publishes its responses. Keeping it apart from the publisher means no
//! message on a subscribed topic (a flood, an oversized or malformed one)
//! can stop or delay status publishing.
//!
//! - A persistent session (clean start off): a request published while the
//!   bridge reconnects is delivered afterwards and runs once.
//! - MQTT 5: subscriptions with retain-as-published, so a retained request
//!   is recognised (and refused and cleared) whenever it arrives. MQTT 3.1.1
//!   brokers clear the retain flag of a message delivered live, so a
//!   retained request published while the bridge is subscribed looks like a
//!   plain one and runs; after every live request the connection therefore
//!   subscribes to the request filters again (the same filters: the
//!   subscription is replaced, nothing is delivered twice, and the broker
//!   sends what is retained under them, flagged), so a retained request is
//!   refused and cleared right after it ran once, and never replays. At
//!   most one such SUBSCRIBE is in flight at a time. The
//!   CONNECT announces `mqtt.max_packet_size`, so the broker drops bigger
//!   messages. MQTT 3.1.1 cannot announce a limit: this connection then
//!   reads any size (the request is refused as too large), which is what
//!   keeps an oversized retained message from becoming a reconnect loop.
//! - Requests wait in a bounded backlog for the dispatcher; while it is
//!   full the connection stops reading (the broker holds the rest), so every
//!   request received is answered and none is dropped.
//! - A retained discovery config under this bridge's node that is not one
//!   of the configs it publishes (an agent taken out of the configuration)
//!   is removed with an empty retained message.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::client::{Client, Connection, Filter, Message, NetEvent, Protocol};
use super::session::{self, Session};
use super::{Incoming, Outgoing};
use crate::homeassistant::CurrentConfigs;
use crate::metrics::Metrics;

/// Requests held for the dispatcher at most; beyond this the connection
/// stops reading until it catches up.
const REQUEST_BACKLOG: usize = 1024;

/// The longest request topic handled; longer ones are ignored (no request
/// topic of ours comes near it) so a hostile topic costs nothing.
const MAX_TOPIC_BYTES: usize = 512;

/// How long shutdown waits for the last responses to be acknowledged.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(3);

/// What the command connection subscribes to, and what it does with it.
#[derive(Debug, Clone)]
pub struct Subscriptions {
    /// The request filters.
    pub requests: Vec<String>,
    /// Home Assistant's status topic (its birth message), when discovery is
    /// on.
    pub ha_status: Option<String>,
    /// The filter of this bridge's own discovery configs, and which of
    /// them it publishes now.
    pub discovery: Option<(String, CurrentConfigs)>,
    /// Several bridges: the MQTT 5 / 3.1.1 shared subscription group the
    /// request filters join (`$share/<group>/...`), so each request goes
    /// to one bridge.
    pub shared_group: Option<String>,
    /// This bridge's own `online`/`offline`.
    pub presence: Presence,
}

/// This bridge's presence among several: its own state topic (`online`
/// on connect, `offline` as the last will and on a clean stop) and, with
/// several bridges, the overall `bridge/state`, which a bridge that stops
/// or dies sets `offline`: every other bridge then says `online` again
/// (the publisher's `reannounce`), so it means "at least one bridge is up".
#[derive(Debug, Clone)]
pub struct Presence {
    /// `<base>/bridge/<id>/state`.
    pub own: String,
    /// `<base>/bridge/state`, watched with several bridges.
    pub overall: Option<String>,
    /// Woken when another bridge set the overall state `offline`.
    pub reannounce: Arc<Notify>,
}

/// The command connection task. Build with [`CommandConnection::new`], then
/// `run` it.
pub struct CommandConnection {
    /// What to subscribe to.
    subscriptions: Subscriptions,
    /// Requests to the dispatcher; dropped at shutdown, after the backlog,
    /// which tells the dispatcher to finish.
    requests: Option<mpsc::Sender<Incoming>>,
    /// Requests waiting for room in that channel.
    backlog: VecDeque<Incoming>,
    /// Responses from the dispatcher.
    responses: mpsc::Receiver<Outgoing>,
    /// False once the dispatcher closed its side.
    responses_open: bool,
    /// Messages waiting for room in rumqttc.
    out: VecDeque<Message>,
    /// Woken when Home Assistant says `online`.
    rediscover: Arc<Notify>,
    /// Request payloads are cut to this many bytes plus one (the dispatcher
    /// refuses anything over `commands.max_payload_bytes` anyway).
    max_request_bytes: usize,
    /// Shared counters.
    metrics: Arc<Metrics>,
    /// True between CONNACK and the next connection error.
    connected: bool,
    /// MQTT 3.1.1: subscribing again to the request filters, to find
    /// retained requests that arrived live (see the module doc).
    recheck: Recheck,
}

/// MQTT 3.1.1's second look for retained requests.
#[derive(Debug, Default)]
struct Recheck {
    /// The connection speaks 3.1.1 (set on connect).
    needed: bool,
    /// A live request arrived since the last SUBSCRIBE went out.
    due: bool,
    /// A SUBSCRIBE went out and its SUBACK has not come back.
    in_flight: bool,
}

/// Local work for the command connection.
pub enum Work {
    /// A response (or a clear) to publish.
    Response(Outgoing),
    /// The dispatcher is gone.
    ResponsesClosed,
    /// Room for one request in the dispatcher's channel.
    Room(mpsc::OwnedPermit<Incoming>),
}

impl CommandConnection {
    /// A command connection handing requests to `requests`.
    pub fn new(
        subscriptions: Subscriptions,
        requests: mpsc::Sender<Incoming>,
        responses: mpsc::Receiver<Outgoing>,
        rediscover: Arc<Notify>,
        max_request_bytes: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            subscriptions,
            requests: Some(requests),
            backlog: VecDeque::new(),
            responses,
            responses_open: true,
            out: VecDeque::new(),
            rediscover,
            max_request_bytes,
            metrics,
            connected: false,
            recheck: Recheck::default(),
        }
    }

    /// The request filters, joined to the shared group when there is one.
    fn request_filters(&self) -> Vec<Filter> {
        self.subscriptions
            .requests
            .iter()
            .map(|path| Filter {
                path: match &self.subscriptions.shared_group {
                    Some(group) => format!("$share/{group}/{path}"),
                    None => path.clone(),
                },
                retain_as_published: true,
            })
            .collect()
    }

    /// Runs until `shutdown`; then waits (at most `flush_timeout`) for the
    /// dispatcher to close its side (it answers everything it received
    /// first), publishes what is left and disconnects cleanly. The broker
    /// keeps the session.
    pub async fn run(
        mut self,
        client: Client,
        mut connection: Connection,
        shutdown: CancellationToken,
        flush_timeout: Duration,
    ) {
        let metrics = self.metrics.clone();
        session::run(&mut self, &client, &mut connection, &shutdown, &metrics).await;
        // Requests still held go to the dispatcher, which answers everything
        // it receives; closing the channel after them tells it to finish.
        if let Some(requests) = self.requests.take() {
            for request in std::mem::take(&mut self.backlog) {
                if requests.send(request).await.is_err() {
                    break;
                }
            }
        }
        let connected = self.connected;
        let flush = async {
            loop {
                let polled = {
                    let poll = connection.poll();
                    tokio::pin!(poll);
                    loop {
                        self.hand_over(&client);
                        // Handed to rumqttc is enough: it writes them before
                        // the DISCONNECT requested after them.
                        if !self.responses_open && self.out.is_empty() {
                            break None;
                        }
                        tokio::select! {
                            event = &mut poll => break Some(event),
                            response = self.responses.recv(), if self.responses_open => match response {
                                Some(response) => self.queue_response(response),
                                None => self.responses_open = false,
                            },
                        }
                    }
                };
                match polled {
                    None => break,
                    Some(Ok(event)) => self.on_event(event, &client),
                    Some(Err(_)) => {
                        self.connected = false;
                        if !self.responses_open {
                            return;
                        }
                    }
                }
            }
            // A clean stop sends no last will: say it.
            if self.connected {
                self.out
                    .push_back(presence(&self.subscriptions.presence.own, "offline"));
                while !self.out.is_empty() || connection.inflight() > 0 {
                    self.hand_over(&client);
                    match connection.poll().await {
                        Ok(event) => self.on_event(event, &client),
                        Err(_) => return,
                    }
                }
            }
            let _ = client.try_disconnect();
            while let Ok(event) = connection.poll().await {
                if event == NetEvent::Disconnected {
                    break;
                }
            }
        };
        if tokio::time::timeout(flush_timeout.max(SHUTDOWN_FLUSH), flush)
            .await
            .is_err()
            && connected
        {
            warn!("the last command responses were not all published in time");
        }
    }

    fn queue_response(&mut self, response: Outgoing) {
        self.out.push_back(Message {
            topic: response.topic,
            payload: Bytes::from(response.payload),
            retain: response.retain,
            correlation_data: response.correlation_data,
        });
    }

    /// A message on a subscribed topic.
    fn on_received(&mut self, received: super::client::Received) {
        if self.subscriptions.presence.overall.as_deref() == Some(received.topic.as_str()) {
            if received.payload.as_ref() == b"offline" {
                debug!("another bridge went offline; saying this one is online");
                self.subscriptions.presence.reannounce.notify_one();
            }
            return;
        }
        if self.subscriptions.ha_status.as_deref() == Some(received.topic.as_str()) {
            if received.payload.as_ref() == b"online" {
                self.rediscover.notify_one();
            }
            return;
        }
        if let Some((filter, current)) = &self.subscriptions.discovery {
            if topic_matches(filter, &received.topic) {
                if !received.payload.is_empty() && !current.contains(&received.topic) {
                    info!(topic = %received.topic, "removing a discovery config of an agent no longer configured");
                    self.out.push_back(Message {
                        topic: received.topic,
                        payload: Bytes::new(),
                        retain: true,
                        correlation_data: None,
                    });
                }
                return;
            }
        }
        if received.topic.len() > MAX_TOPIC_BYTES {
            Metrics::inc(&self.metrics.requests_ignored);
            debug!(
                bytes = received.topic.len(),
                "ignoring a message with an oversized topic"
            );
            return;
        }
        if self.recheck.needed && !received.retain && !received.payload.is_empty() {
            self.recheck.due = true;
        }
        let keep = received
            .payload
            .len()
            .min(self.max_request_bytes.saturating_add(1));
        self.backlog.push_back(Incoming {
            topic: received.topic,
            payload: received.payload.slice(..keep).to_vec(),
            retain: received.retain,
            response_topic: received.response_topic,
            correlation_data: received.correlation_data,
        });
    }
}

impl Session for CommandConnection {
    type Work = Work;

    fn name(&self) -> &'static str {
        "commands"
    }

    async fn next_work(&mut self) -> Work {
        let room = async {
            match &self.requests {
                Some(requests) if !self.backlog.is_empty() => {
                    requests.clone().reserve_owned().await
                }
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            response = self.responses.recv(), if self.responses_open => match response {
                Some(response) => Work::Response(response),
                None => Work::ResponsesClosed,
            },
            permit = room => match permit {
                Ok(permit) => Work::Room(permit),
                // The dispatcher is gone: nothing can be answered any more.
                Err(_) => Work::ResponsesClosed,
            },
        }
    }

    fn on_work(&mut self, work: Work, _client: &Client) {
        match work {
            Work::Response(response) => self.queue_response(response),
            Work::ResponsesClosed => {
                self.responses_open = false;
                if !self.backlog.is_empty() {
                    warn!(
                        requests = self.backlog.len(),
                        "the command dispatcher stopped; requests not answered"
                    );
                    self.backlog.clear();
                }
            }
            Work::Room(permit) => {
                if let Some(request) = self.backlog.pop_front() {
                    permit.send(request);
                }
            }
        }
    }

    fn hand_over(&mut self, client: &Client) {
        if !self.connected {
            return;
        }
        if self.recheck.due
            && !self.recheck.in_flight
            && client.try_subscribe(&self.request_filters()).is_ok()
        {
            self.recheck.due = false;
            self.recheck.in_flight = true;
        }
        while let Some(message) = self.out.front() {
            if client.try_publish(message).is_err() {
                return;
            }
            Metrics::inc(&self.metrics.mqtt_published);
            self.out.pop_front();
        }
    }

    fn read_network(&self) -> bool {
        self.backlog.len() < REQUEST_BACKLOG
    }

    fn on_connected(&mut self, session_present: bool, client: &Client) {
        self.connected = true;
        self.recheck = Recheck {
            needed: client.protocol() == Protocol::V311,
            // This SUBSCRIBE delivers what is retained anyway.
            due: false,
            in_flight: true,
        };
        Metrics::set(&self.metrics.mqtt_commands_connected, 1);
        self.out
            .push_front(presence(&self.subscriptions.presence.own, "online"));
        let mut filters = self.request_filters();
        filters.extend(
            self.subscriptions
                .presence
                .overall
                .iter()
                .map(|path| Filter {
                    path: path.clone(),
                    retain_as_published: false,
                }),
        );
        filters.extend(self.subscriptions.ha_status.iter().map(|path| Filter {
            path: path.clone(),
            retain_as_published: false,
        }));
        filters.extend(self.subscriptions.discovery.iter().map(|(path, _)| Filter {
            path: path.clone(),
            retain_as_published: true,
        }));
        if client.try_subscribe(&filters).is_err() {
            warn!("cannot subscribe to the request topics: the request queue is full");
        }
        info!(
            session_present,
            "command connection up; subscribed to the request topics"
        );
    }

    fn on_event(&mut self, event: NetEvent, _client: &Client) {
        match event {
            NetEvent::Received(received) => self.on_received(received),
            NetEvent::SubscriptionsRefused(refused) => {
                // Every SUBACK: SUBSCRIBEs go out one at a time.
                self.recheck.in_flight = false;
                if !refused.is_empty() {
                    tracing::error!(
                        ?refused,
                        "the broker refused some subscriptions (check its ACL for the request topics)"
                    );
                }
            }
            _ => {}
        }
    }

    fn on_disconnected(&mut self) {
        self.connected = false;
        self.recheck = Recheck::default();
        Metrics::set(&self.metrics.mqtt_commands_connected, 0);
    }
}

/// A retained presence message.
fn presence(topic: &str, payload: &'static str) -> Message {
    Message {
        topic: topic.to_owned(),
        payload: Bytes::from_static(payload.as_bytes()),
        retain: true,
        correlation_data: None,
    }
}

/// True when `topic` matches the MQTT filter `filter` (`+` one level, `#`
/// the rest).
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut topic_levels = topic.split('/');
    for level in filter.split('/') {
        match level {
            "#" => return true,
            "+" => {
                if topic_levels.next().is_none() {
                    return false;
                }
            }
            exact => {
                if topic_levels.next() != Some(exact) {
                    return false;
                }
            }
        }
    }
    topic_levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::topic_matches;

    #[test]
    fn filters_match_topics_level_by_level() {
        let filter = "homeassistant/+/pbx2mqtt/+/config";
        assert!(topic_matches(
            filter,
            "homeassistant/sensor/pbx2mqtt/a_status/config"
        ));
        assert!(!topic_matches(
            filter,
            "homeassistant/sensor/other/a_status/config"
        ));
        assert!(!topic_matches(
            filter,
            "homeassistant/sensor/pbx2mqtt/a/b/config"
        ));
        assert!(topic_matches("a/#", "a/b/c"));
        assert!(!topic_matches("a/+", "a"));
    }
}
