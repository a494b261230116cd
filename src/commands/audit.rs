//! The audit row of a queue command, built in one place for the dispatcher
//! (MQTT requests) and the CLI (`pbx2mqtt queue ...`). Pure: the store
//! writes the row (`store::AuditEntry`).
//!
//! The row never holds the TRiNG key: the only field that can quote TRiNG is
//! the error message, and callers pass outcomes through
//! [`super::CommandError::without_key`] first.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::parse::ParsedRequest;
use super::{CommandData, CommandError};
use crate::mqtt::topics::RequestTopic;
use crate::store::{AuditEntry, AuditOutcome};
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
