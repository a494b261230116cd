//! The command dispatcher: takes request messages from the MQTT connection
//! task, validates them ([`super::parse`]), answers repeats from memory
//! ([`super::dedup`]), runs up to `commands.concurrency` commands at once
//! against TRiNG, publishes each response, writes the audit row and counts
//! the outcome.
//!
//! It owns its state (the dedup memory, the retained topics it cleared, the
//! commands waiting for a slot) in one task loop that never waits for TRiNG:
//! it reads every request as it comes, parses, validates and deduplicates it
//! at once (pure and fast), and answers a refusal at once. Only the TRiNG
//! calls are bounded: each runs in its own task, at most
//! `commands.concurrency` at a time, the others wait in a bounded backlog;
//! a request that finds the backlog full is answered `busy`. Nothing here
//! runs inside the MQTT event loop. It does not talk to the broker: it
//! receives [`Incoming`] and sends [`Outgoing`] on channels.
//!
//! Retained requests are answered `retained_request`, not executed, and
//! cleared by publishing an empty retained message to the request topic. The
//! empty message that comes back (retained or not) is ignored once; any other
//! empty retained message is ignored too.
//!
//! On shutdown it closes the request channel (nothing more enters it), then
//! answers every request already in it (valid ones are executed, with the same
//! bound), finishes the commands in flight and waiting, and returns. The MQTT
//! connection already acknowledged those requests to the broker, so dropping
//! them would leave their requesters without an answer.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rumqttc::QoS;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::audit::{self, Audited};
use super::dedup::{DedupCache, DedupKey, Seen, DEFAULT_CAPACITY};
use super::execute::execute;
use super::parse::{parse_request, CommandRules, ParsedRequest};
use super::{Command, CommandError, Response};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::mqtt::topics::{RequestTopic, Topics};
use crate::mqtt::{Incoming, Outgoing};
use crate::secret::Secret;
use crate::store::Store;
use crate::tring::TringClient;

/// How long the empty message echoing our own clear of a retained request
/// is expected back; after that an empty message is a request again.
const CLEAR_ECHO_WINDOW: Duration = Duration::from_secs(60);

/// Valid requests that may wait for an execution slot, per slot
/// (`commands.concurrency`). A command holds its slot for one or two TRiNG
/// requests (`add` and `remove` list first), each bounded by `tring.timeout`,
/// so with four waiting per slot the last one starts within about four such
/// rounds. A requester kept waiting longer has most likely given up or will
/// retry; it is better told `busy` at once. This also bounds the memory
/// waiting requests hold.
pub const BACKLOG_PER_SLOT: usize = 4;

/// Refusals being audited and answered at once. Each is one audit insert
/// (no TRiNG call); beyond this the loop waits for one to finish, so a flood
/// of bad requests cannot pile up tasks behind a slow database.
const MAX_REFUSALS_IN_PROGRESS: usize = 64;

/// What every command task shares.
struct Context {
    /// The TRiNG client.
    client: TringClient,
    /// The audit table's database.
    store: Store,
    /// The TRiNG key, the only secret TRiNG's answers can carry: redacted
    /// from upstream error messages ([`CommandError::without_key`]).
    tring_key: Secret,
}

/// One request message as it was received: its topics, payload and parse
/// result, carried until it is answered and audited.
struct ReceivedRequest {
    /// When it was received.
    received_at: DateTime<Utc>,
    /// The request topic.
    topic: String,
    /// The parsed topic.
    request_topic: RequestTopic,
    /// The response topic.
    response_topic: String,
    /// The payload as received.
    payload: Vec<u8>,
    /// The parse result.
    parsed: ParsedRequest,
}

/// A valid request waiting for an execution slot.
struct Waiting {
    /// The request.
    request: ReceivedRequest,
    /// Its validated command.
    command: Command,
    /// Its dedup key, when it has a transaction.
    dedup_key: Option<DedupKey>,
    /// Its `command` span.
    span: tracing::Span,
}

/// What a command task hands back to the loop.
struct Finished {
    /// The response to publish.
    response: Outgoing,
    /// True for `ok`.
    ok: bool,
}

/// The queue-command dispatcher. Build it with [`Dispatcher::new`], then
/// `tokio::spawn(dispatcher.run(requests, responses, shutdown))`.
pub struct Dispatcher {
    /// The topic tree (request parsing, response topics).
    topics: Topics,
    /// Validation rules from `[commands]` and `[[agents]]`.
    rules: CommandRules,
    /// Shared with every command task.
    context: Arc<Context>,
    /// Outcome counters.
    metrics: Arc<Metrics>,
    /// At most this many command tasks at once (`commands.concurrency`).
    concurrency: usize,
    /// At most this many valid requests wait for a slot
    /// ([`BACKLOG_PER_SLOT`] × `concurrency`); beyond, `busy`.
    max_backlog: usize,
    /// Recently seen transactions.
    dedup: DedupCache,
    /// Request topics whose retained message we cleared, and when.
    cleared: HashMap<String, Instant>,
    /// The running command tasks (TRiNG calls), at most `concurrency`.
    commands: JoinSet<Finished>,
    /// The dedup key of each running command task.
    running: HashMap<tokio::task::Id, Option<DedupKey>>,
    /// Valid requests waiting for a slot, oldest first. Not empty only while
    /// every slot is taken.
    backlog: VecDeque<Waiting>,
    /// Refusals being audited and answered, at most
    /// [`MAX_REFUSALS_IN_PROGRESS`].
    refusals: JoinSet<()>,
}

impl Dispatcher {
    /// A dispatcher for `config`'s rules, calling `client` and auditing to
    /// `store`.
    pub fn new(config: &Config, client: TringClient, store: Store, metrics: Arc<Metrics>) -> Self {
        let concurrency = config.commands.concurrency.max(1);
        Self {
            topics: Topics::new(config.mqtt.base_topic.clone()),
            rules: CommandRules::from_config(config),
            context: Arc::new(Context {
                client,
                store,
                tring_key: config.tring_key(),
            }),
            metrics,
            concurrency,
            max_backlog: BACKLOG_PER_SLOT * concurrency,
            dedup: DedupCache::new(config.commands.dedup_window, DEFAULT_CAPACITY),
            cleared: HashMap::new(),
            commands: JoinSet::new(),
            running: HashMap::new(),
            backlog: VecDeque::new(),
            refusals: JoinSet::new(),
        }
    }

    /// Serves requests until `requests` closes. When `shutdown` is
    /// cancelled it closes `requests` itself, answers what is still in it,
    /// finishes every accepted command and returns.
    pub async fn run(
        mut self,
        mut requests: mpsc::Receiver<Incoming>,
        responses: mpsc::Sender<Outgoing>,
        shutdown: CancellationToken,
    ) {
        let mut stopping = false;
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled(), if !stopping => {
                    // Nothing more can be sent; what is buffered is still read.
                    requests.close();
                    stopping = true;
                    tracing::debug!(
                        buffered = requests.len(),
                        in_flight = self.commands.len(),
                        waiting = self.backlog.len(),
                        "command dispatcher stopping: answering the requests already received"
                    );
                }
                Some(joined) = self.commands.join_next_with_id() => {
                    self.finish(joined, &responses).await;
                }
                Some(joined) = self.refusals.join_next() => refusal_done(joined),
                incoming = requests.recv() => match incoming {
                    Some(incoming) => self.accept(incoming, &responses).await,
                    None => break,
                },
            }
        }
        while let Some(joined) = self.commands.join_next_with_id().await {
            self.finish(joined, &responses).await;
        }
        while let Some(joined) = self.refusals.join_next().await {
            refusal_done(joined);
        }
        tracing::debug!("command dispatcher stopped");
    }

    /// Handles one incoming message: ignore it, answer it from memory,
    /// refuse it, or run it (now or when a slot frees up).
    async fn accept(&mut self, incoming: Incoming, responses: &mpsc::Sender<Outgoing>) {
        let now = Instant::now();
        self.cleared
            .retain(|_, at| now.saturating_duration_since(*at) < CLEAR_ECHO_WINDOW);
        if incoming.payload.is_empty() {
            let our_echo = self.cleared.remove(&incoming.topic).is_some();
            if incoming.retain || our_echo {
                tracing::debug!(topic = %incoming.topic, "ignoring an empty message (a cleared retained request)");
                return;
            }
        }
        let Some(request_topic) = self.topics.parse_request(&incoming.topic) else {
            tracing::warn!(topic = %incoming.topic, "ignoring a message on a topic that is not a request topic");
            return;
        };
        let response_topic = self.topics.response_for(&request_topic);
        let parsed = parse_request(
            &request_topic,
            &incoming.payload,
            incoming.retain,
            &self.rules,
        );
        if incoming.retain {
            self.cleared.insert(incoming.topic.clone(), now);
            send(
                responses,
                Outgoing {
                    topic: incoming.topic.clone(),
                    payload: Vec::new(),
                    retain: true,
                    qos: QoS::AtLeastOnce,
                },
            )
            .await;
        }
        let dedup_key = match (&parsed.outcome, &parsed.transaction) {
            (Ok(_), Some(transaction)) => Some(DedupKey {
                topic: incoming.topic.clone(),
                transaction: transaction.json_text(),
            }),
            _ => None,
        };
        if let Some(key) = &dedup_key {
            match self.dedup.check(key, now) {
                Seen::New => {}
                Seen::InFlight => {
                    tracing::info!(topic = %incoming.topic, transaction = %key.transaction,
                        "duplicate request while the first is running; it will get the same response");
                    return;
                }
                Seen::Answered(payload) => {
                    tracing::info!(topic = %incoming.topic, transaction = %key.transaction,
                        "duplicate request answered from memory, not executed again");
                    send(responses, response(response_topic, payload)).await;
                    return;
                }
            }
        }
        let span = tracing::info_span!(
            "command",
            topic = %incoming.topic,
            transaction = parsed.transaction.as_ref().map(|t| t.json_text()).unwrap_or_default(),
        );
        let command = parsed.outcome.clone();
        let request = ReceivedRequest {
            received_at: Utc::now(),
            topic: incoming.topic,
            request_topic,
            response_topic,
            payload: incoming.payload,
            parsed,
        };
        let waiting = match command {
            Err(error) => return self.refuse(request, error, span, responses).await,
            Ok(command) => Waiting {
                request,
                command,
                dedup_key,
                span,
            },
        };
        if self.commands.len() < self.concurrency {
            self.start(waiting);
        } else if self.backlog.len() < self.max_backlog {
            self.backlog.push_back(waiting);
        } else {
            if let Some(key) = &waiting.dedup_key {
                // Nothing ran: a retry with this transaction must run.
                self.dedup.forget(key);
            }
            tracing::warn!(parent: &waiting.span, waiting = self.backlog.len(),
                "too many commands in progress; answering busy");
            self.refuse(
                waiting.request,
                CommandError::busy(),
                waiting.span,
                responses,
            )
            .await;
        }
    }

    /// Starts a command task for a valid request.
    fn start(&mut self, waiting: Waiting) {
        let Waiting {
            request,
            command,
            dedup_key,
            span,
        } = waiting;
        let handle = self
            .commands
            .spawn(run_command(self.context.clone(), request, command).instrument(span));
        self.running.insert(handle.id(), dedup_key);
    }

    /// Answers a request that is not executed (invalid, or `busy`): the
    /// audit row and the response, in a task of their own so the loop does
    /// not wait for the database.
    async fn refuse(
        &mut self,
        request: ReceivedRequest,
        error: CommandError,
        span: tracing::Span,
        responses: &mpsc::Sender<Outgoing>,
    ) {
        Metrics::inc(&self.metrics.commands_failed);
        while self.refusals.len() >= MAX_REFUSALS_IN_PROGRESS {
            if let Some(joined) = self.refusals.join_next().await {
                refusal_done(joined);
            }
        }
        let context = self.context.clone();
        let responses = responses.clone();
        self.refusals.spawn(
            async move {
                let answer = conclude(&context, &request, Err(error), None).await;
                send(&responses, answer).await;
            }
            .instrument(span),
        );
    }

    /// Publishes a finished command's response (and again for duplicates
    /// that waited for it), counts it, and starts the next waiting command.
    async fn finish(
        &mut self,
        joined: Result<(tokio::task::Id, Finished), tokio::task::JoinError>,
        responses: &mpsc::Sender<Outgoing>,
    ) {
        if let Some(waiting) = self.backlog.pop_front() {
            self.start(waiting);
        }
        match joined {
            Ok((id, finished)) => {
                Metrics::inc(if finished.ok {
                    &self.metrics.commands_ok
                } else {
                    &self.metrics.commands_failed
                });
                let waiting = match self.running.remove(&id).flatten() {
                    Some(key) => {
                        let waiting = self.dedup.complete(&key, finished.response.payload.clone());
                        if !finished.ok {
                            // Only successes are remembered: a retry after an
                            // error runs again (every operation is repeatable).
                            self.dedup.forget(&key);
                        }
                        waiting
                    }
                    None => 0,
                };
                for _ in 0..waiting {
                    send(responses, finished.response.clone()).await;
                }
                send(responses, finished.response).await;
            }
            Err(error) => {
                // A command task panicked: forget its transaction so a retry
                // runs again; the requester gets no answer for this one.
                Metrics::inc(&self.metrics.commands_failed);
                if let Some(key) = self.running.remove(&error.id()).flatten() {
                    self.dedup.abandon(&key);
                }
                tracing::error!(%error, "a command task failed");
            }
        }
    }
}

/// Logs a refusal task that panicked (its requester gets no answer).
fn refusal_done(joined: Result<(), tokio::task::JoinError>) {
    if let Err(error) = joined {
        tracing::error!(%error, "a refusal task failed");
    }
}

/// Hands a message to the MQTT connection task.
async fn send(responses: &mpsc::Sender<Outgoing>, message: Outgoing) {
    if responses.send(message).await.is_err() {
        tracing::warn!("cannot publish a command response: the MQTT connection task has stopped");
    }
}

/// A response message: QoS 1, not retained.
fn response(topic: String, payload: Vec<u8>) -> Outgoing {
    Outgoing {
        topic,
        payload,
        retain: false,
        qos: QoS::AtLeastOnce,
    }
}

/// Runs one valid command against TRiNG, writes its audit row and returns
/// its response.
async fn run_command(
    context: Arc<Context>,
    request: ReceivedRequest,
    command: Command,
) -> Finished {
    let execution = execute(&context.client, &command).await;
    let ok = execution.outcome.is_ok();
    let response = conclude(
        &context,
        &request,
        execution.outcome,
        Some(execution.upstream_latency),
    )
    .await;
    Finished { response, ok }
}

/// The end of every request that was not ignored or answered from memory:
/// the key redacted from an upstream error, the outcome logged, the audit row
/// written, the response built.
async fn conclude(
    context: &Context,
    request: &ReceivedRequest,
    outcome: Result<super::CommandData, CommandError>,
    latency: Option<Duration>,
) -> Outgoing {
    let outcome = outcome.map_err(|error| error.without_key(&context.tring_key));
    let latency_ms = latency.map(|latency| i64::try_from(latency.as_millis()).unwrap_or(i64::MAX));
    match &outcome {
        Ok(_) => tracing::info!(latency_ms, "command ok"),
        Err(error) => {
            tracing::warn!(code = %error.code, error = %error.message, latency_ms, "command failed")
        }
    }
    let payload = Response::new(&outcome, request.parsed.transaction.clone()).to_json();
    let entry = audit::entry(&Audited {
        received_at: request.received_at,
        topic: &request.topic,
        request_topic: &request.request_topic,
        payload: &request.payload,
        parsed: &request.parsed,
        outcome: &outcome,
        upstream_latency: latency,
    });
    if let Err(error) = context.store.record_audit(&entry).await {
        tracing::error!(%error, "cannot write the command audit row");
    }
    response(request.response_topic.clone(), payload)
}
