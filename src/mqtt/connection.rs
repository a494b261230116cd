//! The MQTT connection task: the only owner of the rumqttc client and event
//! loop. It publishes committed agent states and transition events, forwards
//! request messages to the command dispatcher and publishes its responses.
//!
//! Guarantees (`product.md` §2):
//! - It always drains its input channels, connected or not, so polling and
//!   history never wait for the broker.
//! - On every (re)connect, in this order: subscribe, `bridge/state` = online,
//!   `bridge/info`, every agent's current state (retained), then every event
//!   the broker has not acknowledged. rumqttc drops unacknowledged QoS 1
//!   messages on a clean session, so the `AckTracker` (`state.rs`) keeps
//!   events until their PUBACK arrives.
//! - Reconnects back off exponentially (capped, with jitter).
//!
//! It must not block: no `.await` on anything but its own `select!`. It is
//! the only module that reaches into rumqttc's internals (the event loop's
//! `state`), each place with a comment saying why; the delivery bookkeeping
//! itself is the pure `AckTracker` (`mqtt::state`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use chrono::{DateTime, SecondsFormat, Utc};
use rand::Rng;
use rumqttc::{
    AsyncClient, ClientError, Event, EventLoop, MqttOptions, Outgoing as Sent, Packet, QoS,
};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::metrics::Metrics;
use crate::model::{AgentId, AgentState, Committed, TransitionEvent};
use crate::mqtt::state::{AckTracker, Pending};
use crate::mqtt::topics::Topics;
use crate::mqtt::{Incoming, Outgoing};

/// Capacity of rumqttc's request channel. Small on purpose: our own queue
/// holds the backlog, so nothing is stranded inside rumqttc on disconnect.
const CLIENT_CHANNEL_CAPACITY: usize = 256;

/// First reconnect delay; doubles per failure up to [`MAX_RECONNECT_DELAY`].
const MIN_RECONNECT_DELAY: Duration = Duration::from_millis(200);

/// Longest reconnect delay.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(30);

/// A connection that stayed up this long resets the reconnect backoff.
const STABLE_CONNECTION: Duration = Duration::from_secs(30);

/// How long shutdown waits for `offline` to be acknowledged.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(3);

/// What `bridge/info` says. Never holds a secret.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BridgeInfo {
    /// Crate version.
    pub version: String,
    /// When the bridge started.
    pub started_at: String,
    /// Number of configured agents.
    pub agents: usize,
    /// The base topic.
    pub base_topic: String,
}

impl BridgeInfo {
    /// Info for a bridge with `agents` agents started at `started_at`.
    pub fn new(agents: usize, base_topic: &str, started_at: DateTime<Utc>) -> Self {
        Self {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: started_at.to_rfc3339_opts(SecondsFormat::Secs, true),
            agents,
            base_topic: base_topic.to_owned(),
        }
    }
}

/// Which input channels are still open.
#[derive(Debug)]
struct Inputs {
    committed_open: bool,
    responses_open: bool,
}

impl Default for Inputs {
    fn default() -> Self {
        Self {
            committed_open: true,
            responses_open: true,
        }
    }
}

/// One message from an input channel.
enum Input {
    Committed(Committed),
    Response(Outgoing),
    CommittedClosed,
    ResponsesClosed,
}

/// Where the connection starts: every agent's state, and the events the
/// broker had not acknowledged when the bridge last stopped.
#[derive(Debug, Clone, Default)]
pub struct StartingPoint {
    /// Every agent's state, republished on connect.
    pub states: Vec<AgentState>,
    /// Events to resend (rebuilt from history), oldest first.
    pub events: Vec<TransitionEvent>,
    /// Every event up to this seq was acknowledged.
    pub acked_seq: u64,
}

/// The channels the connection task serves.
#[derive(Debug)]
pub struct ConnectionChannels {
    /// Committed changes from the history writer.
    pub committed: mpsc::Receiver<Committed>,
    /// Responses (and clears) from the command dispatcher.
    pub responses: mpsc::Receiver<Outgoing>,
    /// Request messages for the command dispatcher.
    pub requests: mpsc::Sender<Incoming>,
    /// The highest seq up to which every event was acknowledged, for the
    /// history writer to store (see `store::delivery`).
    pub acked: watch::Sender<u64>,
}

/// The connection task's state. Build with [`MqttConnection::new`], then
/// `run` it.
pub struct MqttConnection {
    /// rumqttc options (client id, last will, credentials).
    options: MqttOptions,
    /// Topic names.
    topics: Topics,
    /// The `bridge/info` payload.
    info: BridgeInfo,
    /// Latest state per agent: republished on every connect.
    states: BTreeMap<AgentId, AgentState>,
    /// Events awaiting acknowledgement.
    acks: AckTracker,
    /// Messages waiting for room in rumqttc's channel.
    queue: VecDeque<Pending>,
    /// Input and output channels.
    channels: ConnectionChannels,
    /// Shared counters.
    metrics: Arc<Metrics>,
    /// True between CONNACK and the next connection error.
    connected: bool,
    /// Request payloads are cut to this many bytes (the dispatcher refuses
    /// anything over `commands.max_payload_bytes` anyway), so a hostile
    /// publisher cannot queue megabytes per message.
    max_request_bytes: usize,
    /// Requests dropped because the dispatcher was not reading.
    dropped_requests: u64,
    /// The highest event seq seen.
    highest_seq: u64,
}

impl MqttConnection {
    /// A connection that starts from `start`.
    pub fn new(
        options: MqttOptions,
        topics: Topics,
        info: BridgeInfo,
        start: StartingPoint,
        channels: ConnectionChannels,
        metrics: Arc<Metrics>,
        max_request_bytes: usize,
    ) -> Self {
        let states = start
            .states
            .into_iter()
            .map(|state| (state.agent.clone(), state))
            .collect();
        let mut connection = Self {
            options,
            topics,
            info,
            states,
            acks: AckTracker::default(),
            queue: VecDeque::new(),
            channels,
            metrics,
            connected: false,
            max_request_bytes,
            dropped_requests: 0,
            highest_seq: start.acked_seq,
        };
        for event in &start.events {
            let pending = connection.event_message(event);
            connection.acks.add(event.seq, pending);
            connection.highest_seq = connection.highest_seq.max(event.seq);
        }
        if !start.events.is_empty() {
            info!(
                events = start.events.len(),
                "events not acknowledged before the last stop will be resent"
            );
        }
        connection
    }

    /// Tells the history writer how far the broker has acknowledged.
    fn report_acked(&mut self) {
        let mark = self.acks.acked_mark(self.highest_seq);
        self.channels.acked.send_if_modified(|acked| {
            let changed = *acked != mark;
            *acked = mark;
            changed
        });
    }

    /// Runs until `shutdown` is cancelled, then publishes what is left,
    /// `offline`, and disconnects cleanly.
    ///
    /// `EventLoop::poll` is not cancel-safe (dropping it mid-write loses a
    /// packet, dropping it mid-connect restarts the connect), so one poll
    /// future lives until it completes while the input channels are served
    /// beside it; during the reconnect delay they are served too.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let (client, mut eventloop) =
            AsyncClient::new(self.options.clone(), CLIENT_CHANNEL_CAPACITY);
        // Small packets must leave at once: with Nagle's algorithm (rumqttc's
        // default) a publish waits for the broker's delayed ACK, about 40 ms.
        let mut network = eventloop.network_options();
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);
        let mut delay = MIN_RECONNECT_DELAY;
        let mut connected_at: Option<Instant> = None;
        let mut retry_at: Option<Instant> = None;
        let mut inputs = Inputs::default();
        loop {
            if let Some(at) = retry_at.take() {
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return self.shut_down(client, eventloop).await,
                        _ = tokio::time::sleep_until(at) => break,
                        input = self.next_input(&mut inputs) => self.on_input(input, &mut inputs),
                    }
                }
            }
            let polled = {
                let poll = eventloop.poll();
                tokio::pin!(poll);
                loop {
                    self.hand_over(&client);
                    tokio::select! {
                        _ = shutdown.cancelled() => break None,
                        event = &mut poll => break Some(event),
                        input = self.next_input(&mut inputs) => self.on_input(input, &mut inputs),
                    }
                }
            };
            match polled {
                None => break,
                Some(Ok(event)) => {
                    if matches!(event, Event::Incoming(Packet::ConnAck(_))) {
                        connected_at = Some(Instant::now());
                    }
                    self.on_event(event, &client);
                }
                Some(Err(error)) => {
                    // rumqttc internals, on purpose: `poll` returns events
                    // buffered in `state.events` before it reads anything
                    // new, and its public API has no way to drop them. The
                    // dead connection's reports (packet ids, PUBACKs) must
                    // not be read as the next connection's, or the ack
                    // tracker would release events the broker never got.
                    eventloop.state.events.clear();
                    self.on_disconnect(&error.to_string());
                    // Only a connection that lasted resets the backoff: one
                    // the broker accepts and then drops at once (a duplicate
                    // client id, a kick) must not become a reconnect loop.
                    if connected_at
                        .take()
                        .is_some_and(|at| at.elapsed() >= STABLE_CONNECTION)
                    {
                        delay = MIN_RECONNECT_DELAY;
                    }
                    retry_at = Some(Instant::now() + jittered(delay));
                    delay = (delay * 2).min(MAX_RECONNECT_DELAY);
                }
            }
        }
        self.shut_down(client, eventloop).await;
    }

    /// The next message on an input channel; pending forever once both are
    /// closed (the select then waits on the other branches).
    async fn next_input(&mut self, inputs: &mut Inputs) -> Input {
        tokio::select! {
            change = self.channels.committed.recv(), if inputs.committed_open => match change {
                Some(change) => Input::Committed(change),
                None => Input::CommittedClosed,
            },
            response = self.channels.responses.recv(), if inputs.responses_open => match response {
                Some(response) => Input::Response(response),
                None => Input::ResponsesClosed,
            },
            else => std::future::pending().await,
        }
    }

    fn on_input(&mut self, input: Input, inputs: &mut Inputs) {
        match input {
            Input::Committed(change) => self.on_committed(change),
            Input::Response(response) => self.enqueue_response(response),
            Input::CommittedClosed => inputs.committed_open = false,
            Input::ResponsesClosed => inputs.responses_open = false,
        }
    }

    /// Moves queued messages into rumqttc while connected and it has room.
    fn hand_over(&mut self, client: &AsyncClient) {
        if !self.connected {
            return;
        }
        while let Some(pending) = self.queue.front() {
            match client.try_publish(
                pending.topic.clone(),
                pending.qos,
                pending.retain,
                pending.payload.clone(),
            ) {
                Ok(()) => {
                    self.acks.handed_over(pending.seq);
                    self.queue.pop_front();
                    Metrics::inc(&self.metrics.mqtt_published);
                }
                Err(ClientError::TryRequest(_)) => break,
                Err(error) => {
                    error!(%error, "mqtt client rejected a publish");
                    break;
                }
            }
        }
    }

    fn on_event(&mut self, event: Event, client: &AsyncClient) {
        match event {
            Event::Incoming(Packet::ConnAck(_)) => self.on_connect(client),
            Event::Outgoing(Sent::Publish(pkid)) => self.acks.sent(pkid),
            Event::Outgoing(Sent::AwaitAck(pkid)) => self.acks.parked(pkid),
            Event::Incoming(Packet::PubAck(ack)) => {
                self.acks.acknowledged(ack.pkid);
                self.report_acked();
                Metrics::set(&self.metrics.mqtt_outbox_depth, self.acks.len() as u64);
            }
            Event::Incoming(Packet::Publish(publish)) => {
                let keep = publish
                    .payload
                    .len()
                    .min(self.max_request_bytes.saturating_add(1));
                let incoming = Incoming {
                    topic: publish.topic.clone(),
                    payload: publish.payload[..keep].to_vec(),
                    retain: publish.retain,
                };
                if self.channels.requests.try_send(incoming).is_err() {
                    // The dispatcher answers `busy` itself long before this
                    // fills; reaching here means it stopped. Log sparingly.
                    self.dropped_requests += 1;
                    if self.dropped_requests.is_power_of_two() {
                        warn!(topic = %publish.topic, dropped = self.dropped_requests, "dropped a request: the command dispatcher is not reading");
                    }
                }
            }
            _ => {}
        }
    }

    /// Subscribe, `online`, info, every state, then unacknowledged events.
    fn on_connect(&mut self, client: &AsyncClient) {
        self.connected = true;
        Metrics::inc(&self.metrics.mqtt_connects);
        Metrics::set(&self.metrics.mqtt_connected, 1);
        let filters = self
            .topics
            .request_filters()
            .into_iter()
            .map(|filter| rumqttc::SubscribeFilter::new(filter, QoS::AtLeastOnce));
        if let Err(error) = client.try_subscribe_many(filters) {
            error!(%error, "could not subscribe to request topics");
        }
        // Responses still queued stay, after the republish.
        let responses: Vec<Pending> = self
            .queue
            .drain(..)
            .filter(|p| !p.retain && p.seq.is_none())
            .collect();
        self.queue.push_back(Pending {
            topic: self.topics.bridge_state(),
            payload: b"online".to_vec(),
            qos: QoS::AtLeastOnce,
            retain: true,
            seq: None,
        });
        let info = serde_json::to_vec(&self.info).unwrap_or_default();
        self.queue.push_back(Pending {
            topic: self.topics.bridge_info(),
            payload: info,
            qos: QoS::AtLeastOnce,
            retain: true,
            seq: None,
        });
        let states: Vec<AgentState> = self.states.values().cloned().collect();
        for state in &states {
            self.enqueue_state(state);
        }
        let resend: Vec<Pending> = self.acks.unacknowledged().cloned().collect();
        if !resend.is_empty() {
            info!(events = resend.len(), "resending unacknowledged events");
            self.metrics
                .mqtt_resent
                .fetch_add(resend.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        self.queue.extend(resend);
        self.queue.extend(responses);
        info!(
            agents = states.len(),
            "connected to broker; state republished"
        );
    }

    fn on_disconnect(&mut self, reason: &str) {
        if self.connected {
            warn!(error = reason, "lost broker connection; reconnecting");
        } else {
            debug!(error = reason, "broker connection attempt failed");
        }
        self.connected = false;
        Metrics::set(&self.metrics.mqtt_connected, 0);
        self.acks.disconnected();
        // States and events are rebuilt from `states` and the ack tracker on
        // connect; only responses need to survive in the queue.
        self.queue.retain(|p| !p.retain && p.seq.is_none());
        let dropped = self.acks.take_dropped();
        if dropped > 0 {
            warn!(
                dropped,
                "too many unacknowledged events: the oldest will not be resent (history has them)"
            );
        }
    }

    fn on_committed(&mut self, change: Committed) {
        if let Some(event) = &change.event {
            let pending = self.event_message(event);
            self.acks.add(event.seq, pending.clone());
            self.highest_seq = self.highest_seq.max(event.seq);
            self.report_acked();
            Metrics::set(&self.metrics.mqtt_outbox_depth, self.acks.len() as u64);
            self.states
                .insert(change.state.agent.clone(), change.state.clone());
            if self.connected {
                self.enqueue_state(&change.state);
                self.queue.push_back(pending);
            }
        } else {
            self.states
                .insert(change.state.agent.clone(), change.state.clone());
            if self.connected {
                self.enqueue_state(&change.state);
            }
        }
    }

    fn enqueue_state(&mut self, state: &AgentState) {
        // Serializing plain data to JSON cannot fail.
        let json = serde_json::to_vec(state).unwrap_or_default();
        self.queue.push_back(Pending {
            topic: self.topics.agent_state(&state.agent),
            payload: json,
            qos: QoS::AtLeastOnce,
            retain: true,
            seq: None,
        });
        self.queue.push_back(Pending {
            topic: self.topics.agent_status(&state.agent),
            payload: state.status.as_str().as_bytes().to_vec(),
            qos: QoS::AtLeastOnce,
            retain: true,
            seq: None,
        });
    }

    fn event_message(&self, event: &TransitionEvent) -> Pending {
        Pending {
            topic: self.topics.agent_event(&event.agent),
            payload: serde_json::to_vec(event).unwrap_or_default(),
            qos: QoS::AtLeastOnce,
            retain: false,
            seq: Some(event.seq),
        }
    }

    fn enqueue_response(&mut self, response: Outgoing) {
        self.queue.push_back(Pending {
            topic: response.topic,
            payload: response.payload,
            qos: response.qos,
            retain: response.retain,
            seq: None,
        });
    }

    /// Drains what is left, publishes `offline` and disconnects, waiting at
    /// most [`SHUTDOWN_FLUSH`] for the broker.
    async fn shut_down(mut self, client: AsyncClient, mut eventloop: EventLoop) {
        while let Ok(change) = self.channels.committed.try_recv() {
            self.on_committed(change);
        }
        while let Ok(response) = self.channels.responses.try_recv() {
            self.enqueue_response(response);
        }
        if !self.connected {
            info!("not connected at shutdown; the broker publishes the last will");
            return;
        }
        self.queue.push_back(Pending {
            topic: self.topics.bridge_state(),
            payload: b"offline".to_vec(),
            qos: QoS::AtLeastOnce,
            retain: true,
            seq: None,
        });
        let flush = async {
            loop {
                self.hand_over(&client);
                // rumqttc internals, on purpose: `state.inflight()` counts
                // publishes still waiting for their PUBACK, and rumqttc has
                // no public "all acknowledged" signal; the flush is done when
                // our queue is empty and nothing is in flight.
                if self.queue.is_empty() && eventloop.state.inflight() == 0 {
                    break;
                }
                match eventloop.poll().await {
                    Ok(event) => self.on_event(event, &client),
                    Err(_) => return,
                }
            }
            let _ = client.try_disconnect();
            // Drive the event loop until the DISCONNECT is written.
            while let Ok(event) = eventloop.poll().await {
                if matches!(event, Event::Outgoing(Sent::Disconnect)) {
                    break;
                }
            }
        };
        if tokio::time::timeout(SHUTDOWN_FLUSH, flush).await.is_err() {
            warn!("broker did not acknowledge shutdown messages in time");
        } else {
            info!("published offline and disconnected");
        }
    }
}

fn jittered(delay: Duration) -> Duration {
    let factor = rand::thread_rng().gen_range(0.5..1.0);
    delay.mul_f64(factor)
}
