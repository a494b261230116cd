//! The wallboard's live feed: `GET /api/stream` (server-sent events) and
//! `GET /api/queues`.
//!
//! A stream starts with one `snapshot` event (every agent's latest state,
//! every allowed queue's members, the server's clock), then sends a `state`
//! event for every agent whose state changed and a `queues` event for every
//! queue whose members changed. Each event's `id:` is a `seq`: the highest
//! committed one for the snapshot, the state's own for a `state`. A browser
//! that reconnects (with `Last-Event-ID`) gets a fresh snapshot: cheap, and
//! the only way to also catch changes that are not transitions (a reason,
//! a destination), which have no `seq` of their own.
//!
//! Changes come from a [`crate::latest::Subscription`], not from a queue of
//! messages: the history writer only marks which agents changed, so a slow
//! browser never slows the bridge, and a browser that reads slowly gets each
//! changed agent once, with its latest state, however many changes it
//! missed. Memory per stream is bounded by the number of agents and queues.
//! At most [`MAX_STREAMS`] streams are open at once (more are answered 503
//! with `Retry-After`); a comment (`: ping`) is sent after [`KEEP_ALIVE`]
//! without events, so proxies keep the connection and dead ones are noticed. On
//! shutdown every stream sends `bridge` `{"state":"offline"}` and ends.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{SecondsFormat, Utc};
use futures_util::stream;
use serde::Serialize;
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::HttpState;
use crate::latest::Subscription;
use crate::model::{AgentId, AgentState, QueueMembers};

/// Wallboard streams open at once: more than an office has wall screens
/// and supervisors. Each one costs the history writer one set insert per
/// changed agent, so the number is bounded.
pub const MAX_STREAMS: usize = 128;

/// A keep-alive comment after this long without an event.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// How long a browser waits before reconnecting a dropped stream
/// (the `retry:` field of the snapshot).
pub const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// What a stream answered 503 asks the browser to wait, in seconds.
const RETRY_AFTER_S: &str = "10";

/// Agents taken from the subscription at once while streaming.
const STATES_AT_ONCE: usize = 256;

/// Agents read under the lock at once while building a snapshot, so the
/// history writer never waits for a whole board to be copied.
const SNAPSHOT_CHUNK: usize = 512;

/// The open streams: a limit, and a way to end them all on shutdown.
#[derive(Debug, Clone)]
pub struct Streams {
    /// One permit per stream that may open.
    permits: Arc<Semaphore>,
    /// The limit the permits started at.
    limit: usize,
    /// Cancelled when the server shuts down: every stream ends.
    stop: CancellationToken,
    /// A comment after this long without an event.
    keep_alive: Duration,
}

impl Default for Streams {
    fn default() -> Self {
        Self::new(MAX_STREAMS)
    }
}

impl Streams {
    /// At most `limit` streams at once.
    pub fn new(limit: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            stop: CancellationToken::new(),
            keep_alive: KEEP_ALIVE,
        }
    }

    /// Keep-alive comments after `every` without an event (tests).
    pub fn with_keep_alive(mut self, every: Duration) -> Self {
        self.keep_alive = every;
        self
    }

    /// How many streams are open.
    pub fn open(&self) -> usize {
        self.limit - self.permits.available_permits()
    }

    /// Ends every stream (after a final `bridge` offline event) and refuses
    /// new ones.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

/// The first event of a stream.
#[derive(Debug, Serialize)]
struct Snapshot<'a> {
    /// The server's clock (RFC 3339, UTC, milliseconds): the page counts
    /// time in status with it, whatever the device's clock says.
    server_time: String,
    /// `online` (the page shows a banner on `offline`).
    bridge: &'static str,
    /// Every agent's latest state, ordered by id.
    agents: &'a [AgentState],
    /// Every allowed queue's members, ordered by queue.
    queues: &'a [QueueMembers],
}

/// `GET /api/queues`: `{"queues": [...]}`, every allowed queue's latest
/// members (as on `<base>/queue/<queue>/members`).
pub(super) async fn queues(State(state): State<HttpState>) -> Response {
    Json(json!({ "queues": state.latest.queues() })).into_response()
}

/// `GET /api/stream`: see the module doc.
pub(super) async fn stream(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    let streams = &state.streams;
    if streams.stop.is_cancelled() {
        return refused("the server is shutting down");
    }
    let Ok(permit) = streams.permits.clone().try_acquire_owned() else {
        tracing::warn!(
            limit = streams.limit,
            "wallboard stream refused: too many open"
        );
        return refused(&format!(
            "too many live streams open ({}); retry later",
            streams.limit
        ));
    };
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    tracing::debug!(
        last_event_id = last_event_id.as_deref(),
        open = streams.open(),
        "wallboard stream opened"
    );
    let subscription = state.latest.subscribe();
    let mut live = Live {
        subscription,
        stop: streams.stop.clone(),
        _permit: permit,
        queued: VecDeque::new(),
        ended: false,
    };
    let snapshot = live.snapshot();
    live.queued.push_back(snapshot);
    let events = stream::unfold(live, Live::next);
    (
        [(
            HeaderName::from_static("x-accel-buffering"),
            HeaderValue::from_static("no"),
        )],
        Sse::new(events).keep_alive(KeepAlive::new().interval(streams.keep_alive).text("ping")),
    )
        .into_response()
}

/// A 503 a browser's EventSource gives up on (the wallboard then retries
/// with its own back-off).
fn refused(why: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_S))],
        Json(json!({ "error": why })),
    )
        .into_response()
}

/// One open stream.
struct Live {
    /// Which agents and queues changed since the last events.
    subscription: Subscription,
    /// Cancelled on shutdown.
    stop: CancellationToken,
    /// Held while the stream is open.
    _permit: OwnedSemaphorePermit,
    /// Events formatted but not yet sent (at most one batch).
    queued: VecDeque<Event>,
    /// The final event is queued: end after it.
    ended: bool,
}

impl Live {
    /// The next event, waiting for a change (or shutdown) when none waits.
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Live)> {
        loop {
            if let Some(event) = self.queued.pop_front() {
                return Some((Ok(event), self));
            }
            if self.ended {
                return None;
            }
            tokio::select! {
                biased;
                () = self.stop.cancelled() => {
                    self.ended = true;
                    self.queued.push_back(bridge_event("offline"));
                }
                () = self.subscription.changed() => self.queue_changes(),
            }
        }
    }

    /// Every agent and queue as they are now. The subscription starts with
    /// everything unseen: taking it all makes the snapshot, and whatever
    /// changes from then on comes as events.
    fn snapshot(&mut self) -> Event {
        let seq = self.subscription.latest().committed_seq();
        let mut agents: BTreeMap<AgentId, AgentState> = BTreeMap::new();
        let mut queues = Vec::new();
        // An agent that changes while the chunks are read is marked unseen
        // again; the loop ends once nothing is, or after one extra round
        // per chunk (what changed after that comes as events).
        let rounds = self.subscription.unseen_agents() / SNAPSHOT_CHUNK + 2;
        for _ in 0..rounds {
            let changes = self.subscription.take(SNAPSHOT_CHUNK);
            for state in changes.states {
                agents.insert(state.agent.clone(), state);
            }
            queues.extend(changes.queues);
            if self.subscription.unseen_agents() == 0 {
                break;
            }
        }
        queues.sort_by(|a, b| a.queue.cmp(&b.queue));
        queues.dedup_by(|later, earlier| {
            if later.queue == earlier.queue {
                std::mem::swap(later, earlier);
                true
            } else {
                false
            }
        });
        let agents: Vec<AgentState> = agents.into_values().collect();
        let snapshot = Snapshot {
            server_time: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
            bridge: "online",
            agents: &agents,
            queues: &queues,
        };
        Event::default()
            .event("snapshot")
            .id(seq.to_string())
            .retry(RECONNECT_AFTER)
            .data(to_json(&snapshot))
    }

    /// Formats what changed since the last batch (a bounded number of
    /// agents; the rest stays marked and wakes the stream again).
    fn queue_changes(&mut self) {
        let changes = self.subscription.take(STATES_AT_ONCE);
        for state in &changes.states {
            self.queued.push_back(state_event(state));
        }
        for members in &changes.queues {
            self.queued
                .push_back(Event::default().event("queues").data(to_json(members)));
        }
    }
}

/// `event: state`, `id:` the state's `seq`, the state as on
/// `<base>/agent/<agent>/state`.
pub(super) fn state_event(state: &AgentState) -> Event {
    Event::default()
        .event("state")
        .id(state.seq.to_string())
        .data(to_json(state))
}

/// `event: bridge` with `{"state": ...}`.
fn bridge_event(state: &'static str) -> Event {
    Event::default()
        .event("bridge")
        .data(to_json(&json!({ "state": state })))
}

/// Compact JSON (one line, as SSE `data:` wants it). Serialising plain
/// strings, numbers and times cannot fail.
fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}
