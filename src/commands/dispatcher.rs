//! The command dispatcher: takes request messages from the command
//! connection, validates them ([`super::parse`]), answers repeats from
//! memory ([`super::dedup`]), runs up to `commands.concurrency` commands at
//! once against TRiNG, answers each one, leaves its audit row and counts the
//! outcome.
//!
//! It owns its state (the dedup memory, the retained topics it cleared, the
//! commands waiting for a slot) in one task loop that never waits for TRiNG
//! or the database: it reads every request as it comes, parses, validates
//! and deduplicates it (pure and fast), and answers a refusal right there;
//! the audit row goes to the [`AuditSink`], which never waits. So a flood
//! of bad requests is answered as fast as it arrives. Only the TRiNG calls
//! are bounded: each runs in its own task, at most `commands.concurrency`
//! at a time, the others wait in a bounded backlog; a request that finds the
//! backlog full is answered `busy`. It does not talk to the broker: it
//! receives [`Incoming`] and sends [`Outgoing`] on channels.
//!
//! The answer goes to the request's MQTT 5 response topic with its
//! correlation data when it names one, else to the mirror `response/` topic.
//!
//! Retained requests are answered `retained_request`, not executed, and
//! cleared by publishing an empty retained message to the request topic. The
//! empty message that comes back (retained or not) is ignored once; any other
//! empty retained message is ignored too.
//!
//! After an add, remove or clean (or a failed one), the queue's membership
//! is read again ([`RefreshRequests`]), so the membership topics and the Home
//! Assistant switches follow at once (a refused switch snaps back).
//!
//! It stops when the command connection closes the request channel (on
//! shutdown, after handing over every request it received): it answers
//! every request in it (valid ones are executed, with the same bound),
//! finishes the commands in flight and waiting, and returns. The broker
//! already delivered those requests, so dropping them would leave their
//! requesters without an answer.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::Instrument;

use super::audit::{self, AuditSink, Audited};
use super::dedup::{DedupCache, DedupKey, Seen, DEFAULT_MAX_BYTES};
use super::execute::execute;
use super::membership::RefreshRequests;
use super::parse::{parse_request, CommandRules, ParsedRequest};
use super::{Command, CommandError, Response};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::mqtt::topics::{RequestTopic, Topics};
use crate::mqtt::{Incoming, Outgoing};
use crate::secret::Secret;
use crate::store::Claim;
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

/// Refusals logged at `warn` per second at most; the rest go to `debug`
/// (they are counted and audited either way), so a flood cannot flood the
/// log.
const REFUSALS_LOGGED_PER_SECOND: u32 = 10;

/// The longest MQTT 5 response topic honoured; a longer one (or one with a
/// wildcard) is not a topic anybody listens on, and the answer goes to the
/// mirror topic instead.
const MAX_RESPONSE_TOPIC_BYTES: usize = 512;

/// What every command task shares.
struct Context {
    /// The TRiNG client.
    client: TringClient,
    /// Where audit rows go.
    audit: AuditSink,
    /// The TRiNG key, the only secret TRiNG's answers can carry: redacted
    /// from upstream error messages ([`CommandError::without_key`]).
    tring_key: Secret,
    /// Queues to read again after a change.
    membership: RefreshRequests,
    /// Outcome counters.
    metrics: Arc<Metrics>,
    /// Transactions shared with other bridges, when there are several.
    shared: Option<SharedTransactions>,
}

/// Transactions claimed in the database shared by several bridges, so a
/// request that reaches a second bridge (a resend, a redelivery after a
/// bridge died) runs once (`store/transactions.rs`).
#[derive(Debug, Clone)]
pub struct SharedTransactions {
    /// The shared database.
    pub store: crate::store::Store,
    /// This bridge's id.
    pub bridge: String,
    /// How long a transaction is remembered (`commands.dedup_window`).
    pub window: Duration,
    /// A bridge silent this long no longer runs what it claimed (its lease
    /// time).
    pub alive: Duration,
}

impl SharedTransactions {
    fn millis(duration: Duration) -> i64 {
        i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
    }
}

/// One request message as it was received: its topics, payload and parse
/// result, carried until it is answered and audited.
struct ReceivedRequest {
    /// When it was received (wall clock, for the audit).
    received_at: DateTime<Utc>,
    /// When it was received (for the command duration).
    received: Instant,
    /// The request topic.
    topic: String,
    /// The parsed topic.
    request_topic: RequestTopic,
    /// Where the answer goes.
    response_topic: String,
    /// MQTT 5 correlation data, echoed with the answer.
    correlation_data: Option<Bytes>,
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
    /// The response to publish; `None` when another bridge runs the same
    /// transaction and answers it.
    response: Option<Outgoing>,
    /// True for `ok`.
    ok: bool,
}

/// Allows a few log lines per second.
#[derive(Debug)]
struct LogBudget {
    /// The second being counted.
    second: Instant,
    /// Lines logged in it.
    used: u32,
}

impl LogBudget {
    fn allow(&mut self, now: Instant) -> bool {
        if now.duration_since(self.second) >= Duration::from_secs(1) {
            self.second = now;
            self.used = 0;
        }
        self.used += 1;
        self.used <= REFUSALS_LOGGED_PER_SECOND
    }
}

/// The queue-command dispatcher. Build it with [`Dispatcher::new`], then
/// `tokio::spawn(dispatcher.run(requests, responses))`.
pub struct Dispatcher {
    /// The topic tree (request parsing, response topics).
    topics: Topics,
    /// Validation rules from `[commands]` and `[[agents]]`.
    rules: CommandRules,
    /// Shared with every command task.
    context: Arc<Context>,
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
    /// How many refusals may still be logged this second.
    log_budget: LogBudget,
}

impl Dispatcher {
    /// A dispatcher for `config`'s rules, calling `client`, auditing into
    /// `audit` and asking `membership` to read queues after changes.
    pub fn new(
        config: &Config,
        client: TringClient,
        audit: AuditSink,
        membership: RefreshRequests,
        metrics: Arc<Metrics>,
    ) -> Self {
        let concurrency = config.commands.concurrency.max(1);
        Self {
            topics: Topics::new(config.mqtt.base_topic.clone()),
            rules: CommandRules::from_config(config),
            context: Arc::new(Context {
                client,
                audit,
                tring_key: config.tring_key(),
                membership,
                metrics,
                shared: None,
            }),
            concurrency,
            max_backlog: BACKLOG_PER_SLOT * concurrency,
            dedup: DedupCache::new(config.commands.dedup_window, DEFAULT_MAX_BYTES),
            cleared: HashMap::new(),
            commands: JoinSet::new(),
            running: HashMap::new(),
            backlog: VecDeque::new(),
            log_budget: LogBudget {
                second: Instant::now(),
                used: 0,
            },
        }
    }

    /// Shares transactions with the other bridges on the database.
    pub fn shared_with(mut self, shared: SharedTransactions) -> Self {
        if let Some(context) = Arc::get_mut(&mut self.context) {
            context.shared = Some(shared);
        }
        self
    }

    /// Serves requests until `requests` closes, then finishes every
    /// accepted command and returns.
    pub async fn run(
        mut self,
        mut requests: mpsc::Receiver<Incoming>,
        responses: mpsc::Sender<Outgoing>,
    ) {
        loop {
            tokio::select! {
                biased;
                Some(joined) = self.commands.join_next_with_id() => {
                    self.finish(joined, &responses).await;
                }
                incoming = requests.recv() => match incoming {
                    Some(incoming) => self.accept(incoming, &responses).await,
                    None => break,
                },
            }
        }
        tracing::debug!(
            in_flight = self.commands.len(),
            waiting = self.backlog.len(),
            "command dispatcher stopping: finishing the commands received"
        );
        while let Some(joined) = self.commands.join_next_with_id().await {
            self.finish(joined, &responses).await;
        }
        tracing::debug!("command dispatcher stopped");
    }

    /// Where the answer to `incoming` goes: its MQTT 5 response topic when
    /// that is a plain topic, else the mirror topic.
    fn response_topic(&self, incoming: &Incoming, request_topic: &RequestTopic) -> String {
        match &incoming.response_topic {
            Some(topic)
                if !topic.is_empty()
                    && topic.len() <= MAX_RESPONSE_TOPIC_BYTES
                    && !topic.contains(['+', '#', '\0']) =>
            {
                topic.clone()
            }
            Some(topic) => {
                tracing::debug!(response_topic = %topic, "ignoring an unusable response topic; answering on the mirror topic");
                self.topics.response_for(request_topic)
            }
            None => self.topics.response_for(request_topic),
        }
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
            Metrics::inc(&self.context.metrics.requests_ignored);
            tracing::debug!(topic = %incoming.topic, "ignoring a message on a topic that is not a request topic");
            return;
        };
        let response_topic = self.response_topic(&incoming, &request_topic);
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
                    correlation_data: None,
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
                    let answer = response(response_topic, payload, incoming.correlation_data);
                    send(responses, answer).await;
                    return;
                }
            }
        }
        let command = parsed.outcome.clone();
        let request = ReceivedRequest {
            received_at: Utc::now(),
            received: now,
            topic: incoming.topic,
            request_topic,
            response_topic,
            correlation_data: incoming.correlation_data,
            payload: incoming.payload,
            parsed,
        };
        let command = match command {
            Err(error) => return self.refuse(request, error, responses).await,
            Ok(command) => command,
        };
        let span = tracing::info_span!(
            "command",
            topic = %request.topic,
            transaction = request.parsed.transaction.as_ref().map(|t| t.json_text()).unwrap_or_default(),
        );
        let waiting = Waiting {
            request,
            command,
            dedup_key,
            span,
        };
        if self.commands.len() < self.concurrency {
            self.start(waiting);
        } else if self.backlog.len() < self.max_backlog {
            self.backlog.push_back(waiting);
        } else {
            if let Some(key) = &waiting.dedup_key {
                // Nothing ran: a retry with this transaction must run.
                self.dedup.abandon(key);
            }
            self.refuse(waiting.request, CommandError::busy(), responses)
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
        let handle = self.commands.spawn(
            run_command(self.context.clone(), request, command, dedup_key.clone()).instrument(span),
        );
        self.running.insert(handle.id(), dedup_key);
    }

    /// Answers a request that is not executed (invalid, or `busy`), right
    /// away: the response and the audit row, neither of which waits.
    async fn refuse(
        &mut self,
        request: ReceivedRequest,
        error: CommandError,
        responses: &mpsc::Sender<Outgoing>,
    ) {
        Metrics::inc(&self.context.metrics.commands_failed);
        if self.log_budget.allow(Instant::now()) {
            tracing::warn!(topic = %request.topic, code = %error.code, error = %error.message, "request refused");
        } else {
            tracing::debug!(topic = %request.topic, code = %error.code, error = %error.message, "request refused");
        }
        let answer = conclude(&self.context, &request, Err(error), None, false);
        send(responses, answer).await;
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
                    &self.context.metrics.commands_ok
                } else {
                    &self.context.metrics.commands_failed
                });
                let key = self.running.remove(&id).flatten();
                let Some(response) = finished.response else {
                    // Another bridge runs it and answers.
                    if let Some(key) = key {
                        self.dedup.abandon(&key);
                    }
                    return;
                };
                let waiting = match key {
                    Some(key) if finished.ok => self.dedup.complete(&key, response.payload.clone()),
                    // Only successes are remembered: a retry after an error
                    // runs again (every operation is repeatable).
                    Some(key) => self.dedup.abandon(&key),
                    None => 0,
                };
                for _ in 0..waiting {
                    send(responses, response.clone()).await;
                }
                send(responses, response).await;
            }
            Err(error) => {
                // A command task panicked: abandon its transaction so a retry
                // runs again; the requester gets no answer for this one.
                Metrics::inc(&self.context.metrics.commands_failed);
                if let Some(key) = self.running.remove(&error.id()).flatten() {
                    self.dedup.abandon(&key);
                }
                tracing::error!(%error, "a command task failed");
            }
        }
    }
}

/// Hands a message to the command connection.
async fn send(responses: &mpsc::Sender<Outgoing>, message: Outgoing) {
    if responses.send(message).await.is_err() {
        tracing::warn!("cannot publish a command response: the command connection has stopped");
    }
}

/// A response message, not retained.
fn response(topic: String, payload: Vec<u8>, correlation_data: Option<Bytes>) -> Outgoing {
    Outgoing {
        topic,
        payload,
        retain: false,
        correlation_data,
    }
}

/// Runs one valid command against TRiNG, leaves its audit row and returns
/// its response.
async fn run_command(
    context: Arc<Context>,
    request: ReceivedRequest,
    command: Command,
    key: Option<DedupKey>,
) -> Finished {
    let shared = context.shared.as_ref().zip(key.as_ref());
    if let Some((shared, key)) = shared {
        let claim = shared
            .store
            .claim_transaction(
                &key.topic,
                &key.transaction,
                &shared.bridge,
                SharedTransactions::millis(shared.window),
                SharedTransactions::millis(shared.alive),
            )
            .await;
        match claim {
            Ok(Claim::Run) => {}
            Ok(Claim::RunningOn(bridge)) => {
                tracing::info!(%bridge, "duplicate request: another bridge runs it and answers");
                return Finished {
                    response: None,
                    ok: true,
                };
            }
            Ok(Claim::Answered(payload)) => {
                tracing::info!(
                    "duplicate request answered from the shared history, not executed again"
                );
                let answer = response(request.response_topic, payload, request.correlation_data);
                return Finished {
                    response: Some(answer),
                    ok: true,
                };
            }
            Err(error) => {
                // Every operation is safe to repeat: running it beats not
                // answering.
                tracing::warn!(%error, "cannot check the transaction with the other bridges; running it");
            }
        }
    }
    let finished = execute_command(&context, &request, &command).await;
    if let (Some((shared, key)), Some(answer)) = (shared, &finished.response) {
        let stored = finished.ok.then_some(answer.payload.as_slice());
        if let Err(error) = shared
            .store
            .finish_transaction(&key.topic, &key.transaction, stored)
            .await
        {
            tracing::warn!(%error, "cannot share the transaction's answer with the other bridges");
        }
    }
    finished
}

/// Runs one valid command against TRiNG (see [`run_command`]).
async fn execute_command(
    context: &Context,
    request: &ReceivedRequest,
    command: &Command,
) -> Finished {
    let execution = execute(&context.client, command).await;
    let ok = execution.outcome.is_ok();
    if let Command::Add { queue, .. } | Command::Remove { queue, .. } | Command::Clean { queue } =
        &command
    {
        // After a change, and after a failed one (a refused switch snaps
        // back to what the queue really holds).
        context.membership.refresh(queue);
    }
    let response = conclude(
        context,
        request,
        execution.outcome,
        Some(execution.upstream_latency),
        true,
    );
    Finished {
        response: Some(response),
        ok,
    }
}

/// The end of every request that was not ignored or answered from memory:
/// the key redacted from an upstream error, the outcome counted (and logged
/// for executed commands; the caller logs refusals), the audit row left, the
/// response built.
fn conclude(
    context: &Context,
    request: &ReceivedRequest,
    outcome: Result<super::CommandData, CommandError>,
    latency: Option<Duration>,
    log: bool,
) -> Outgoing {
    let outcome = outcome.map_err(|error| error.without_key(&context.tring_key));
    let metrics = &context.metrics;
    metrics.command_outcomes.inc(match &outcome {
        Ok(_) => "ok",
        Err(error) => error.code.as_str(),
    });
    metrics.command_duration.observe(request.received.elapsed());
    if log {
        let latency_ms = latency.map(|latency| latency.as_millis() as u64);
        match &outcome {
            Ok(_) => tracing::info!(latency_ms, "command ok"),
            Err(error) => {
                tracing::warn!(code = %error.code, error = %error.message, latency_ms, "command failed")
            }
        }
    }
    let payload = Response::new(&outcome, request.parsed.transaction.clone()).to_json();
    context.audit.record(audit::entry(&Audited {
        received_at: request.received_at,
        topic: &request.topic,
        request_topic: &request.request_topic,
        payload: &request.payload,
        parsed: &request.parsed,
        outcome: &outcome,
        upstream_latency: latency,
    }));
    response(
        request.response_topic.clone(),
        payload,
        request.correlation_data.clone(),
    )
}
