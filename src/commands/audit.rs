//! The audit of queue commands: the row of a command, built in one place
//! for the dispatcher (MQTT requests) and the CLI (`pbx2mqtt queue ...`),
//! and the [`AuditWriter`] task that writes the dispatcher's rows in
//! batches and deletes old ones (`commands.audit_retention`).
//!
//! The row never holds the TRiNG key: the only field that can quote TRiNG is
//! the error message, and callers pass outcomes through
//! [`super::CommandError::without_key`] first.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use super::parse::ParsedRequest;
use super::{CommandData, CommandError};
use crate::metrics::Metrics;
use crate::mqtt::topics::RequestTopic;
use crate::store::{AuditEntry, AuditOutcome, Store};
use crate::text::shorten;

/// The longest topic segment kept in the audit table (a refused request's
/// unknown action or invalid queue is stored as received, cut to this).
const MAX_SEGMENT_CHARS: usize = 64;

/// One command as it was received and how it ended.
pub struct Audited<'a> {
    /// When the request was received.
    pub received_at: DateTime<Utc>,
    /// The request topic as shown in the audit (`cli/...` for the CLI).
    pub topic: &'a str,
    /// The parsed request topic.
    pub request_topic: &'a RequestTopic,
    /// The payload as received.
    pub payload: &'a [u8],
    /// The parse result.
    pub parsed: &'a ParsedRequest,
    /// The outcome (key already removed from upstream errors).
    pub outcome: &'a Result<CommandData, CommandError>,
    /// Time spent waiting for TRiNG; `None` when nothing was sent.
    pub upstream_latency: Option<Duration>,
}

/// The audit row of one command.
pub fn entry(audited: &Audited<'_>) -> AuditEntry {
    let command = audited.parsed.outcome.as_ref().ok();
    let (action, queue) = match command {
        Some(command) => (
            command.action().to_owned(),
            command.queue().map(str::to_owned),
        ),
        None => match audited.request_topic {
            RequestTopic::Queue { queue, action } => (
                shorten(action, MAX_SEGMENT_CHARS),
                Some(shorten(queue, MAX_SEGMENT_CHARS)),
            ),
            RequestTopic::AgentQueues { .. } => ("queues".to_owned(), None),
        },
    };
    let member = command.and_then(|command| command.member());
    let error = audited.outcome.as_ref().err();
    AuditEntry {
        received_at: audited.received_at,
        topic: audited.topic.to_owned(),
        request: String::from_utf8_lossy(audited.payload).into_owned(),
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
        upstream_latency_ms: audited
            .upstream_latency
            .map(|latency| i64::try_from(latency.as_millis()).unwrap_or(i64::MAX)),
        transaction: audited.parsed.transaction.as_ref().map(|t| t.json_text()),
    }
}

/// Audit rows waiting to be written. A flood of refused requests at 10,000
/// a second fills a second and a half of it; the writer takes up to
/// [`AUDIT_BATCH`] at a time, so it keeps up with far more.
pub const AUDIT_QUEUE: usize = 16_384;

/// Audit rows written in one transaction at most.
pub const AUDIT_BATCH: usize = 2048;

/// Rows the writer's buffers keep room for between bursts.
const AUDIT_KEEP: usize = 64;

/// How often old audit rows are deleted (`commands.audit_retention`).
const RETENTION_EVERY: Duration = Duration::from_secs(3600);

/// Attempts to write one batch before its rows are given up (and counted).
const WRITE_ATTEMPTS: u32 = 3;

/// Where the dispatcher leaves audit rows; never waits. When the queue is
/// full (the database is far behind) the row is counted as dropped and the
/// command is still answered: answering is never held up by the audit.
#[derive(Debug, Clone)]
pub struct AuditSink {
    /// The writer's queue.
    sender: mpsc::Sender<ToWriter>,
    /// Counts dropped rows.
    metrics: Arc<Metrics>,
}

impl AuditSink {
    /// Leaves a row for the writer.
    pub fn record(&self, entry: AuditEntry) {
        if self
            .sender
            .try_send(ToWriter::Entry(Box::new(entry)))
            .is_err()
        {
            Metrics::inc(&self.metrics.audit_dropped);
            let dropped = self.metrics.audit_dropped.load(Ordering::Relaxed);
            if dropped.is_power_of_two() {
                tracing::warn!(
                    dropped,
                    "the audit queue is full: audit rows are dropped (commands are still answered)"
                );
            }
        }
    }
}

impl AuditSink {
    /// Waits until every row left before this call is written (or given
    /// up): for tests, and for a CLI that must report what it stored.
    pub async fn flush(&self) {
        let (done, written) = tokio::sync::oneshot::channel();
        if self.sender.send(ToWriter::Flush(done)).await.is_ok() {
            let _ = written.await;
        }
    }
}

/// What the writer's queue carries.
#[derive(Debug)]
enum ToWriter {
    /// A row to write.
    Entry(Box<AuditEntry>),
    /// Answer once everything before it is written.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The audit writer task: writes the rows it is given in batches and
/// deletes rows older than the retention. It stops when every
/// [`AuditSink`] is gone, after writing what it holds.
pub struct AuditWriter {
    /// Rows to write.
    receiver: mpsc::Receiver<ToWriter>,
    /// Where.
    store: Store,
    /// Rows older than this are deleted; `None` keeps them.
    retention: Option<Duration>,
    /// Counts dropped rows.
    metrics: Arc<Metrics>,
}

impl AuditWriter {
    /// A writer and the sink that feeds it.
    pub fn new(
        store: Store,
        retention: Option<Duration>,
        metrics: Arc<Metrics>,
    ) -> (AuditWriter, AuditSink) {
        let (sender, receiver) = mpsc::channel(AUDIT_QUEUE);
        let sink = AuditSink {
            sender,
            metrics: metrics.clone(),
        };
        let writer = AuditWriter {
            receiver,
            store,
            retention,
            metrics,
        };
        (writer, sink)
    }

    /// Writes until every sink is dropped.
    pub async fn run(mut self) {
        // Grown by a burst of commands, given back after it: most of the
        // day sees a command now and then.
        let mut taken = Vec::new();
        let mut batch = Vec::new();
        let mut flushes = Vec::new();
        let mut retention_tick = tokio::time::interval(RETENTION_EVERY);
        retention_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                count = self.receiver.recv_many(&mut taken, AUDIT_BATCH) => {
                    if count == 0 {
                        break;
                    }
                    for message in taken.drain(..) {
                        match message {
                            ToWriter::Entry(entry) => batch.push(*entry),
                            ToWriter::Flush(done) => flushes.push(done),
                        }
                    }
                    self.write(&batch).await;
                    batch.clear();
                    batch.shrink_to(AUDIT_KEEP);
                    taken.shrink_to(AUDIT_KEEP);
                    for done in flushes.drain(..) {
                        let _ = done.send(());
                    }
                }
                _ = retention_tick.tick() => self.delete_old().await,
            }
        }
    }

    async fn write(&self, batch: &[AuditEntry]) {
        if batch.is_empty() {
            return;
        }
        let mut backoff = Duration::from_millis(100);
        for attempt in 1..=WRITE_ATTEMPTS {
            match self.store.record_audits(batch).await {
                Ok(()) => return,
                Err(error) if attempt == WRITE_ATTEMPTS => {
                    self.metrics
                        .audit_dropped
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    tracing::error!(%error, rows = batch.len(), "cannot write command audit rows; they are dropped");
                }
                Err(error) => {
                    tracing::warn!(%error, rows = batch.len(), "cannot write command audit rows; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 4;
                }
            }
        }
    }

    async fn delete_old(&self) {
        let Some(retention) = self.retention else {
            return;
        };
        let Ok(retention) = chrono::Duration::from_std(retention) else {
            return;
        };
        let before = Utc::now() - retention;
        match self.store.delete_audit_before(before).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "old command audit rows deleted"),
            Err(error) => tracing::warn!(%error, "cannot delete old command audit rows"),
        }
    }
}
