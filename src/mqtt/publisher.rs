//! The publisher: the bridge's connection that publishes. It subscribes to
//! nothing, so nothing anybody publishes can slow it down or break it.
//!
//! What it publishes, in this order on every (re)connect (`product.md` §2):
//! `bridge/state` = `online`, `bridge/info`, the Home Assistant discovery
//! configs, every agent's state (retained: a broker restarted without
//! persistence gets everything again), every queue's members and every
//! agent's queues, then the transition events the broker has not
//! acknowledged. Afterwards it follows [`LatestStates`]: each changed agent's
//! latest state (a slow broker gets one message per agent, not one per
//! change) and every new event.
//!
//! Events are a cursor over history: the publisher holds at most
//! [`EVENT_WINDOW`] unacknowledged events, takes the next ones from the
//! recent ones in memory or, when it fell further behind (a long outage, a
//! restart), reads them from the store. An event leaves the window only on
//! its PUBACK; how far everything was acknowledged goes back to the history
//! writer, which stores it, so a restart resends exactly what was not
//! acknowledged. Memory does not grow with an outage, and nothing is
//! dropped.
//!
//! It never waits for anything but its own select: a store read runs in a
//! task of its own.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use tokio::sync::{oneshot, watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::client::{Client, Connection, Message, NetEvent};
use super::session::{self, Session};
use super::state::{AckTracker, Pending};
use super::topics::Topics;
use crate::homeassistant::Discovery;
use crate::latest::{RecentEvents, Subscription};
use crate::metrics::Metrics;
use crate::model::{AgentId, AgentQueues, AgentState, QueueMembers, TransitionEvent};
use crate::store::{Store, StoreError};

/// Unacknowledged events held in memory at most; the rest wait in history.
/// A few seconds of a busy call center, and more than the broker keeps in
/// flight, so the window never starves the connection.
pub const EVENT_WINDOW: usize = 4096;

/// Agents whose state is formatted at a time (2 messages each); the rest
/// stay in the subscription until these are handed over.
const STATES_AT_ONCE: usize = 256;

/// An event on the wire this long without its PUBACK, while the connection
/// still answers pings, means packets were lost on the way: the publisher
/// reconnects, and the reconnect resends it. A healthy broker acknowledges
/// in milliseconds; a loaded one within a few seconds.
const ACK_TIMEOUT: Duration = Duration::from_secs(20);

/// Discovery groups (the configs of one agent) formatted at a time; the
/// rest wait until these are handed over.
const DISCOVERY_GROUPS_AT_ONCE: usize = 64;

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

/// The publisher's inputs and where it reports.
pub struct PublisherParts {
    /// The topic tree.
    pub topics: Topics,
    /// The `bridge/info` payload.
    pub info: BridgeInfo,
    /// The discovery configs to publish, when Home Assistant discovery is on.
    pub discovery: Option<Discovery>,
    /// Changed states and queues, from [`crate::latest::LatestStates`].
    pub subscription: Subscription,
    /// Where events are read back from when they are no longer in memory.
    pub store: Store,
    /// This bridge's id: its events are the ones it delivers.
    pub bridge: String,
    /// Every event up to this seq was acknowledged (from history).
    pub acked_seq: u64,
    /// The acknowledged mark, for the history writer to store.
    pub acked: watch::Sender<u64>,
    /// Woken when Home Assistant comes online: republish its configs.
    pub rediscover: Arc<Notify>,
    /// Woken when another bridge set `bridge/state` `offline` (several
    /// bridges): say `online` again.
    pub reannounce: Arc<Notify>,
    /// The agents with a queue extension (agent id, extension): the
    /// `agent/<agent>/queues` topics.
    pub agent_extensions: Vec<(AgentId, String)>,
    /// Shared counters.
    pub metrics: Arc<Metrics>,
}

/// A read of events from the store in progress.
type EventRead = oneshot::Receiver<Result<Vec<TransitionEvent>, StoreError>>;

/// The publisher task. Build with [`Publisher::new`], then `run` it.
pub struct Publisher {
    /// Inputs and outputs.
    parts: PublisherParts,
    /// Events waiting for their PUBACK, with their packet ids.
    acks: AckTracker,
    /// The next event seq to take from the source.
    next_seq: u64,
    /// Events to hand over on this connection, by seq.
    to_send: VecDeque<u64>,
    /// An event read from the store in progress, with the seq committed
    /// when it started (everything up to it was in the store then).
    loading: Option<(u64, EventRead)>,
    /// After a failed read, no new one before this.
    retry_load_at: Option<tokio::time::Instant>,
    /// Control messages (online, info, discovery), before anything else.
    control: VecDeque<Pending>,
    /// Formatted state and membership messages waiting for room.
    messages: VecDeque<Pending>,
    /// What each agent's queues topic last said (published on change).
    agent_queues: BTreeMap<AgentId, Vec<String>>,
    /// Every queue's members as last seen.
    queues: BTreeMap<String, QueueMembers>,
    /// True between CONNACK and the next connection error.
    connected: bool,
    /// The last PUBACK, or when events began waiting for one.
    ack_progress: tokio::time::Instant,
    /// The next discovery group to format, while discovery is being
    /// (re)published.
    discovery_next: Option<usize>,
}

/// Local work for the publisher.
pub enum Work {
    /// States or queues changed (or events were committed).
    Changed,
    /// Home Assistant came online.
    Rediscover,
    /// Another bridge went offline; this one is still up.
    Reannounce,
    /// Events read back from the store, and the seq committed when the
    /// read started.
    Loaded(u64, Result<Vec<TransitionEvent>, StoreError>),
}

impl Publisher {
    /// A publisher starting after `parts.acked_seq`.
    pub fn new(parts: PublisherParts) -> Self {
        let next_seq = parts.acked_seq + 1;
        Self {
            parts,
            acks: AckTracker::default(),
            next_seq,
            to_send: VecDeque::new(),
            loading: None,
            retry_load_at: None,
            control: VecDeque::new(),
            messages: VecDeque::new(),
            agent_queues: BTreeMap::new(),
            queues: BTreeMap::new(),
            connected: false,
            ack_progress: tokio::time::Instant::now(),
            discovery_next: None,
        }
    }

    /// Runs until `shutdown`, then publishes what is left and `offline`, and
    /// disconnects cleanly (within [`SHUTDOWN_FLUSH`]).
    pub async fn run(
        mut self,
        client: Client,
        mut connection: Connection,
        shutdown: CancellationToken,
    ) {
        let metrics = self.parts.metrics.clone();
        session::run(&mut self, &client, &mut connection, &shutdown, &metrics).await;
        self.shut_down(client, connection).await;
    }

    fn message(topic: String, payload: impl Into<Bytes>, seq: Option<u64>) -> Pending {
        Pending {
            topic,
            payload: payload.into(),
            retain: seq.is_none(),
            seq,
        }
    }

    fn state_messages(&mut self, state: &AgentState) {
        let topics = &self.parts.topics;
        // Serialising plain strings, numbers and times cannot fail.
        let json = serde_json::to_vec(state).unwrap_or_default();
        self.messages
            .push_back(Self::message(topics.agent_state(&state.agent), json, None));
        self.messages.push_back(Self::message(
            topics.agent_status(&state.agent),
            state.status.as_str(),
            None,
        ));
    }

    fn queue_messages(&mut self, members: QueueMembers) {
        let topic = self.parts.topics.queue_members(&members.queue);
        let json = serde_json::to_vec(&members).unwrap_or_default();
        self.messages.push_back(Self::message(topic, json, None));
        let updated = members.updated;
        self.queues.insert(members.queue.clone(), members);
        for (agent, extension) in self.parts.agent_extensions.clone() {
            let queues: Vec<String> = self
                .queues
                .values()
                .filter(|queue| queue.members.contains(&extension))
                .map(|queue| queue.queue.clone())
                .collect();
            if self.agent_queues.get(&agent) == Some(&queues) {
                continue;
            }
            let payload = AgentQueues {
                agent: agent.clone(),
                extension,
                queues: queues.clone(),
                updated,
            };
            let json = serde_json::to_vec(&payload).unwrap_or_default();
            self.messages.push_back(Self::message(
                self.parts.topics.agent_queues(&agent),
                json,
                None,
            ));
            self.agent_queues.insert(agent, queues);
        }
    }

    fn event_message(&self, event: &TransitionEvent) -> Pending {
        Self::message(
            self.parts.topics.agent_event(&event.agent),
            serde_json::to_vec(event).unwrap_or_default(),
            Some(event.seq),
        )
    }

    /// Takes the next events into the window, from memory or (when they
    /// are no longer there) from the store, in a task of its own.
    fn fill_window(&mut self) {
        if self.loading.is_some() || self.acks.len() >= EVENT_WINDOW / 2 {
            return;
        }
        if self
            .retry_load_at
            .is_some_and(|at| tokio::time::Instant::now() < at)
        {
            return;
        }
        let room = EVENT_WINDOW - self.acks.len();
        match self
            .parts
            .subscription
            .latest()
            .events_from(self.next_seq, room)
        {
            RecentEvents::Here(events) => self.take_events(events),
            RecentEvents::InHistory => {
                let (done, loading) = oneshot::channel();
                let store = self.parts.store.clone();
                let bridge = self.parts.bridge.clone();
                let after = self.next_seq - 1;
                let committed = self.parts.subscription.latest().committed_seq();
                tokio::spawn(async move {
                    let _ = done.send(store.events_after(&bridge, after, room).await);
                });
                self.loading = Some((committed, loading));
            }
        }
    }

    fn take_events(&mut self, events: Vec<TransitionEvent>) {
        for event in events {
            if event.seq < self.next_seq {
                continue;
            }
            self.next_seq = event.seq + 1;
            let pending = self.event_message(&event);
            self.acks.add(event.seq, pending);
            if self.connected {
                self.to_send.push_back(event.seq);
            }
        }
        self.report_acked();
    }

    /// Tells the history writer how far the broker has acknowledged.
    fn report_acked(&mut self) {
        let mark = self.acks.acked_mark(self.next_seq - 1);
        self.parts.acked.send_if_modified(|acked| {
            let changed = *acked != mark;
            *acked = mark;
            changed
        });
        let committed = self.parts.subscription.latest().committed_seq();
        Metrics::set(
            &self.parts.metrics.mqtt_outbox_depth,
            committed.saturating_sub(mark),
        );
    }

    /// Hands one message to rumqttc; false when it has no room.
    fn publish(&mut self, client: &Client, pending: &Pending) -> bool {
        let message = Message {
            topic: pending.topic.clone(),
            payload: pending.payload.clone(),
            retain: pending.retain,
            correlation_data: None,
        };
        if client.try_publish(&message).is_err() {
            return false;
        }
        self.acks.handed_over(pending.seq);
        Metrics::inc(&self.parts.metrics.mqtt_published);
        true
    }

    /// Drains a queue of messages into rumqttc; false when it ran out of
    /// room.
    fn drain(&mut self, client: &Client, control: bool) -> bool {
        loop {
            let queue = if control {
                &mut self.control
            } else {
                &mut self.messages
            };
            let Some(pending) = queue.pop_front() else {
                return true;
            };
            if !self.publish(client, &pending) {
                let queue = if control {
                    &mut self.control
                } else {
                    &mut self.messages
                };
                queue.push_front(pending);
                return false;
            }
        }
    }

    async fn shut_down(mut self, client: Client, mut connection: Connection) {
        if !self.connected {
            info!("not connected at shutdown; the broker publishes the last will");
            return;
        }
        let flush = async {
            // What is committed by now goes out, then `offline`.
            self.take_changes();
            self.fill_window();
            loop {
                self.hand_over(&client);
                if self.control.is_empty() && self.messages.is_empty() && self.to_send.is_empty() {
                    break;
                }
                match connection.poll().await {
                    Ok(event) => self.on_event(event, &client),
                    Err(_) => return,
                }
            }
            let offline = Self::message(self.parts.topics.bridge_state(), "offline", None);
            self.control.push_back(offline);
            loop {
                self.hand_over(&client);
                if self.control.is_empty() && connection.inflight() == 0 {
                    break;
                }
                match connection.poll().await {
                    Ok(event) => self.on_event(event, &client),
                    Err(_) => return,
                }
            }
            let _ = client.try_disconnect();
            // Drive the event loop until the DISCONNECT is written.
            while let Ok(event) = connection.poll().await {
                if event == NetEvent::Disconnected {
                    break;
                }
            }
        };
        if tokio::time::timeout(SHUTDOWN_FLUSH, flush).await.is_err() {
            warn!("the broker did not acknowledge the shutdown messages in time");
        } else {
            info!("published offline and disconnected");
        }
    }

    /// Formats what changed (states, queues) into messages, a bounded
    /// number of agents at a time.
    fn take_changes(&mut self) {
        if !self.messages.is_empty() {
            return;
        }
        // A burst (the start, a broker outage) grows the queue to thousands
        // of messages; the quiet hours after it need a few. Room for one
        // take (two messages per state, plus queues) is kept, so a burst
        // does not reallocate after every take.
        self.messages.shrink_to(4 * STATES_AT_ONCE);
        let changes = self.parts.subscription.take(STATES_AT_ONCE);
        for state in &changes.states {
            self.state_messages(state);
        }
        for members in changes.queues {
            self.queue_messages(members);
        }
    }
}

impl Session for Publisher {
    type Work = Work;

    fn name(&self) -> &'static str {
        "publisher"
    }

    async fn next_work(&mut self) -> Work {
        let loading = async {
            match self.loading.as_mut() {
                Some((committed, loading)) => (
                    *committed,
                    loading.await.unwrap_or_else(|_| {
                        Err(StoreError::invalid_row("the event reader stopped"))
                    }),
                ),
                None => std::future::pending().await,
            }
        };
        let retry = async {
            match self.retry_load_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = self.parts.subscription.changed() => Work::Changed,
            () = self.parts.rediscover.notified() => Work::Rediscover,
            () = self.parts.reannounce.notified() => Work::Reannounce,
            (committed, loaded) = loading => Work::Loaded(committed, loaded),
            () = retry => Work::Changed,
        }
    }

    fn on_work(&mut self, work: Work, _client: &Client) {
        match work {
            Work::Changed => {
                if self
                    .retry_load_at
                    .is_some_and(|at| tokio::time::Instant::now() >= at)
                {
                    self.retry_load_at = None;
                }
            }
            Work::Rediscover => {
                if self.connected {
                    info!("Home Assistant came online: republishing discovery and states");
                    self.queue_control();
                    self.parts.subscription.mark_all_unseen();
                }
            }
            Work::Reannounce => {
                if self.connected {
                    let online = Self::message(self.parts.topics.bridge_state(), "online", None);
                    self.control.push_back(online);
                }
            }
            Work::Loaded(committed, loaded) => {
                self.loading = None;
                match loaded {
                    Ok(events) if events.is_empty() => {
                        // Nothing after the cursor was stored when the read
                        // started: continue after what was committed then
                        // (anything later comes through memory).
                        self.next_seq = self.next_seq.max(committed + 1);
                        self.report_acked();
                    }
                    Ok(events) => self.take_events(events),
                    Err(error) => {
                        warn!(%error, "cannot read unacknowledged events from history; retrying in a second");
                        self.retry_load_at =
                            Some(tokio::time::Instant::now() + Duration::from_secs(1));
                    }
                }
            }
        }
    }

    fn hand_over(&mut self, client: &Client) {
        if !self.connected {
            return;
        }
        if !self.drain(client, true) {
            return;
        }
        while self.queue_discovery() {
            if !self.drain(client, true) {
                return;
            }
        }
        loop {
            self.take_changes();
            if self.messages.is_empty() {
                break;
            }
            if !self.drain(client, false) {
                return;
            }
        }
        self.fill_window();
        while let Some(&seq) = self.to_send.front() {
            let Some(pending) = self.acks.get(seq).cloned() else {
                self.to_send.pop_front();
                continue;
            };
            if !self.publish(client, &pending) {
                return;
            }
            self.to_send.pop_front();
        }
    }

    fn on_connected(&mut self, _session_present: bool, _client: &Client) {
        self.connected = true;
        self.ack_progress = tokio::time::Instant::now();
        Metrics::inc(&self.parts.metrics.mqtt_connects);
        Metrics::set(&self.parts.metrics.mqtt_connected, 1);
        self.queue_control();
        self.parts.subscription.mark_all_unseen();
        self.messages.clear();
        self.agent_queues.clear();
        self.to_send = self
            .acks
            .unacknowledged()
            .filter_map(|pending| pending.seq)
            .collect();
        if !self.to_send.is_empty() {
            info!(
                events = self.to_send.len(),
                "resending unacknowledged events"
            );
            self.parts.metrics.mqtt_resent.fetch_add(
                self.to_send.len() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        info!(
            agents = self.parts.agent_extensions.len().max(self.queues.len()),
            "connected to the broker; republishing"
        );
    }

    fn on_event(&mut self, event: NetEvent, _client: &Client) {
        match event {
            NetEvent::Sent(pkid) => self.acks.sent(pkid),
            NetEvent::Parked(pkid) => self.acks.parked(pkid),
            NetEvent::Acknowledged(pkid) => {
                self.acks.acknowledged(pkid);
                self.ack_progress = tokio::time::Instant::now();
                self.report_acked();
            }
            _ => {}
        }
    }

    fn stuck(&mut self, now: tokio::time::Instant) -> Option<String> {
        if !self.acks.awaiting_ack() {
            self.ack_progress = now;
            return None;
        }
        let waiting = now.duration_since(self.ack_progress);
        (waiting >= ACK_TIMEOUT).then(|| {
            self.ack_progress = now;
            format!(
                "no PUBACK for {} s while events wait for one",
                waiting.as_secs()
            )
        })
    }

    fn on_disconnected(&mut self) {
        self.connected = false;
        Metrics::set(&self.parts.metrics.mqtt_connected, 0);
        self.acks.disconnected();
        self.control.clear();
        self.discovery_next = None;
        self.messages.clear();
        self.to_send.clear();
    }
}

impl Publisher {
    /// Queues `online`, `bridge/info` and the discovery configs.
    fn queue_control(&mut self) {
        let topics = &self.parts.topics;
        self.control
            .push_back(Self::message(topics.bridge_state(), "online", None));
        let info = serde_json::to_vec(&self.parts.info).unwrap_or_default();
        self.control
            .push_back(Self::message(topics.bridge_info(), info, None));
        if self.parts.discovery.is_some() {
            self.discovery_next = Some(0);
        }
    }

    /// Formats the next few discovery groups into the control queue; false
    /// when none were left.
    fn queue_discovery(&mut self) -> bool {
        let (Some(discovery), Some(next)) = (&self.parts.discovery, self.discovery_next) else {
            return false;
        };
        let end = (next + DISCOVERY_GROUPS_AT_ONCE).min(discovery.groups());
        for group in next..end {
            for config in discovery.group(group) {
                let payload = config.payload.to_string();
                self.control
                    .push_back(Self::message(config.topic, payload, None));
            }
        }
        self.discovery_next = (end < discovery.groups()).then_some(end);
        end > next
    }
}
