//! The command dispatcher: takes request messages from the MQTT connection
//! task, validates them ([`super::parse`]), answers repeats from memory
//! ([`super::dedup`]), runs up to `commands.concurrency` commands at once
//! against TRiNG, publishes each response, writes the audit row and counts
//! the outcome.
//!
//! It owns its state (the dedup memory, the retained topics it cleared) in
//! one task loop; each command runs in its own task so a slow TRiNG call
//! never blocks the others, and nothing here runs inside the MQTT event loop.
//! It does not talk to the broker: it receives [`Incoming`] and sends
//! [`Outgoing`] on channels.
//!
//! Retained requests are answered `retained_request`, not executed, and
//! cleared by publishing an empty retained message to the request topic. The
//! empty message that comes back (retained or not) is ignored once; any other
//! empty retained message is ignored too.
//!
//! On shutdown it stops taking requests, finishes the commands in flight
//! (publishing their responses), then returns.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rumqttc::QoS;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::audit::{self, AuditEntry, AuditOutcome};
use super::dedup::{DedupCache, DedupKey, Seen, DEFAULT_CAPACITY};
use super::parse::{parse_request, CommandRules, ParsedRequest};
use super::{execute, CommandError, Response};
use crate::config::Config;
use crate::history::Store;
use crate::metrics::Metrics;
use crate::mqtt::topics::{RequestTopic, Topics};
use crate::mqtt::{Incoming, Outgoing};
use crate::secret::Secret;
use crate::tring::TringClient;

/// How long the empty message echoing our own clear of a retained request
/// is expected back; after that an empty message is a request again.
const CLEAR_ECHO_WINDOW: Duration = Duration::from_secs(60);

/// The longest topic segment kept in the audit table.
const MAX_SEGMENT_CHARS: usize = 64;

/// What every command task shares.
struct Context {
    /// The TRiNG client.
    client: TringClient,
    /// The audit table's database.
    store: Store,
    /// Every configured secret, redacted from audit rows and responses.
    secrets: Vec<Secret>,
}

/// One request, parsed, handed to a command task.
struct Job {
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
    /// Recently seen transactions.
    dedup: DedupCache,
    /// Request topics whose retained message we cleared, and when.
    cleared: HashMap<String, Instant>,
    /// The dedup key of each running task.
    running: HashMap<tokio::task::Id, Option<DedupKey>>,
}

impl Dispatcher {
    /// A dispatcher for `config`'s rules, calling `client` and auditing to
    /// `store`.
    pub fn new(config: &Config, client: TringClient, store: Store, metrics: Arc<Metrics>) -> Self {
        Self {
            topics: Topics::new(config.mqtt.base_topic.clone()),
            rules: CommandRules::from_config(config),
            context: Arc::new(Context {
                client,
                store,
                secrets: config.secrets(),
            }),
            metrics,
            concurrency: config.commands.concurrency.max(1),
            dedup: DedupCache::new(config.commands.dedup_window, DEFAULT_CAPACITY),
            cleared: HashMap::new(),
            running: HashMap::new(),
        }
    }

    /// Serves requests until `shutdown` is cancelled or `requests` closes,
    /// then finishes the commands in flight and returns.
    pub async fn run(
        mut self,
        mut requests: mpsc::Receiver<Incoming>,
        responses: mpsc::Sender<Outgoing>,
        shutdown: CancellationToken,
    ) {
        let mut tasks: JoinSet<Finished> = JoinSet::new();
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(joined) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    self.finish(joined, &responses).await;
                }
                incoming = requests.recv(), if tasks.len() < self.concurrency => match incoming {
                    Some(incoming) => self.accept(incoming, &mut tasks, &responses).await,
                    None => break,
                },
            }
        }
        tracing::debug!(in_flight = tasks.len(), "command dispatcher stopping");
        while let Some(joined) = tasks.join_next_with_id().await {
            self.finish(joined, &responses).await;
        }
        tracing::debug!("command dispatcher stopped");
    }

    /// Handles one incoming message: ignore, answer from memory, or start a
    /// command task.
    async fn accept(
        &mut self,
        incoming: Incoming,
        tasks: &mut JoinSet<Finished>,
        responses: &mpsc::Sender<Outgoing>,
    ) {
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
        let job = Job {
            received_at: Utc::now(),
            topic: incoming.topic,
            request_topic,
            response_topic,
            payload: incoming.payload,
            parsed,
        };
        let handle = tasks.spawn(run_job(self.context.clone(), job).instrument(span));
        self.running.insert(handle.id(), dedup_key);
    }

    /// Publishes a finished command's response (and again for duplicates
    /// that waited for it) and counts it.
    async fn finish(
        &mut self,
        joined: Result<(tokio::task::Id, Finished), tokio::task::JoinError>,
        responses: &mpsc::Sender<Outgoing>,
    ) {
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

/// Runs one command (or answers its refusal), writes its audit row and
/// returns its response.
async fn run_job(context: Arc<Context>, job: Job) -> Finished {
    let (outcome, latency) = match &job.parsed.outcome {
        Ok(command) => {
            let execution = execute(&context.client, command).await;
            (execution.outcome, Some(execution.upstream_latency))
        }
        Err(error) => (Err(error.clone()), None),
    };
    let outcome = outcome.map_err(|error| CommandError {
        message: redact(&context.secrets, &error.message),
        ..error
    });
    let latency_ms = latency.map(|latency| i64::try_from(latency.as_millis()).unwrap_or(i64::MAX));
    match &outcome {
        Ok(_) => tracing::info!(latency_ms, "command ok"),
        Err(error) => {
            tracing::warn!(code = %error.code, error = %error.message, latency_ms, "command failed")
        }
    }
    let transaction = job.parsed.transaction.clone();
    let payload = Response::new(&outcome, transaction.clone()).to_json();
    let entry = audit_entry(&job, &outcome, latency_ms).redacted(&context.secrets);
    if let Err(error) = audit::record(&context.store, &entry).await {
        tracing::error!(%error, "cannot write the command audit row");
    }
    Finished {
        response: response(job.response_topic, payload),
        ok: outcome.is_ok(),
    }
}

/// The audit row of one command.
fn audit_entry(
    job: &Job,
    outcome: &Result<super::CommandData, CommandError>,
    upstream_latency_ms: Option<i64>,
) -> AuditEntry {
    let command = job.parsed.outcome.as_ref().ok();
    let (action, queue) = match command {
        Some(command) => (
            command.action().to_owned(),
            command.queue().map(str::to_owned),
        ),
        None => match &job.request_topic {
            RequestTopic::Queue { queue, action } => (shorten(action), Some(shorten(queue))),
            RequestTopic::AgentQueues { .. } => ("queues".to_owned(), None),
        },
    };
    let member = command.and_then(|command| command.member());
    let error = outcome.as_ref().err();
    AuditEntry {
        received_at: job.received_at,
        topic: job.topic.clone(),
        request: String::from_utf8_lossy(&job.payload).into_owned(),
        action,
        queue,
        agent: member
            .and_then(|m| m.agent.as_ref())
            .map(|a| a.as_str().to_owned()),
        extension: member.map(|m| m.extension.clone()),
        outcome: if error.is_none() {
            AuditOutcome::Ok
        } else {
            AuditOutcome::Error
        },
        error_code: error.map(|e| e.code.as_str().to_owned()),
        error: error.map(|e| e.message.clone()),
        upstream_latency_ms,
        transaction: job.parsed.transaction.as_ref().map(|t| t.json_text()),
    }
}

fn shorten(segment: &str) -> String {
    segment.chars().take(MAX_SEGMENT_CHARS).collect()
}

fn redact(secrets: &[Secret], text: &str) -> String {
    secrets
        .iter()
        .fold(text.to_owned(), |text, secret| secret.redact_in(&text))
}
