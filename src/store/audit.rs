//! The `command_audit` table (migrations `*_audit.sql`): one row per queue
//! command, refused ones included, written by the dispatcher and the CLI and
//! read by `pbx2mqtt audit`.
//!
//! It stores what it is given (the request cut to [`MAX_REQUEST_CHARS`]); it
//! never decides outcomes and never rewrites fields: the TRiNG key can only
//! be in upstream error text, which `commands::audit` removes before it
//! builds the row.

use std::borrow::Cow;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use super::dialect::{with_pool, WritePool};
use super::{Store, StoreError};

/// The longest request payload kept in a row (characters); longer payloads
/// are cut (they were refused as too large anyway).
pub const MAX_REQUEST_CHARS: usize = 4096;

/// `ok` or `error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditOutcome {
    /// Answered `ok`.
    Ok,
    /// Answered `error` (refused or failed upstream).
    Error,
}

impl AuditOutcome {
    /// The stored value.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditOutcome::Ok => "ok",
            AuditOutcome::Error => "error",
        }
    }
}

/// One audited command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When the request was received.
    pub received_at: DateTime<Utc>,
    /// The request topic (`cli/...` for the CLI).
    pub topic: String,
    /// The payload as received (lossy UTF-8; stored cut at [`MAX_REQUEST_CHARS`]).
    pub request: String,
    /// `add`, `remove`, `clean`, `list`, `queues`, or the unknown action.
    pub action: String,
    /// The queue, when the request named one.
    pub queue: Option<String>,
    /// The configured agent, when the request named one.
    pub agent: Option<String>,
    /// The extension, when known.
    pub extension: Option<String>,
    /// `ok` or `error`.
    pub outcome: AuditOutcome,
    /// The error code, for errors.
    pub error_code: Option<String>,
    /// The error message, for errors.
    pub error: Option<String>,
    /// Time spent waiting for TRiNG; `None` when nothing was sent.
    pub upstream_latency_ms: Option<i64>,
    /// The request's transaction as JSON text.
    pub transaction: Option<String>,
}

/// A stored audit row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// The row id (increasing).
    pub id: i64,
    /// The entry.
    #[serde(flatten)]
    pub entry: AuditEntry,
}

/// The request as stored: cut to [`MAX_REQUEST_CHARS`] characters.
fn stored_request(request: &str) -> Cow<'_, str> {
    match request.char_indices().nth(MAX_REQUEST_CHARS) {
        Some((cut, _)) => Cow::Owned(request[..cut].to_owned()),
        None => Cow::Borrowed(request),
    }
}

const SINCE: &str = "SELECT id, received_at, topic, request, action, queue, agent, extension, \
     outcome, error_code, error, upstream_latency_ms, \"transaction\" FROM command_audit \
     WHERE received_at >= $1 ORDER BY received_at DESC, id DESC LIMIT $2";

/// One stored row, as selected by [`SINCE`].
type AuditDbRow = (
    i64,
    i64,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
);

/// Inserting audit rows, many in one statement; implemented on each
/// backend's connection beside its [`BulkWrites`](super::dialect::BulkWrites)
/// (SQLite binds chunks of `VALUES`, PostgreSQL one array per column).
pub(crate) trait AuditWrites {
    /// Inserts audit rows.
    fn insert_audits(
        &mut self,
        rows: &[AuditRow<'_>],
    ) -> impl std::future::Future<Output = Result<(), sqlx::Error>> + Send;
}

/// An audit row as bound: times in ms, the request cut.
#[derive(Debug, Clone)]
pub(crate) struct AuditRow<'a> {
    /// When the request was received, ms.
    pub received_at: i64,
    /// The entry.
    pub entry: &'a AuditEntry,
    /// The request, cut.
    pub request: Cow<'a, str>,
}

impl Store {
    /// Inserts audit entries in one transaction (a flood of refused
    /// requests costs one commit per batch, not per request), each request
    /// cut to [`MAX_REQUEST_CHARS`].
    pub async fn record_audits(&self, entries: &[AuditEntry]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let rows: Vec<AuditRow<'_>> = entries
            .iter()
            .map(|entry| AuditRow {
                received_at: entry.received_at.timestamp_millis(),
                entry,
                request: stored_request(&entry.request),
            })
            .collect();
        let failed = || StoreError::query("recording commands in the audit table");
        with_pool!(&self.writer, |pool, _d| {
            let mut transaction = pool.begin_write().await.map_err(failed())?;
            transaction.insert_audits(&rows).await.map_err(failed())?;
            transaction.commit().await.map_err(failed())
        })
    }

    /// Deletes the audit rows received before `before`; how many.
    pub async fn delete_audit_before(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        with_pool!(&self.writer, |pool, _d| {
            sqlx::query("DELETE FROM command_audit WHERE received_at < $1")
                .bind(before.timestamp_millis())
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })
        .map_err(StoreError::query("deleting old audit rows"))
    }

    /// Inserts one audit entry (see [`Store::record_audits`]).
    pub async fn record_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        self.record_audits(std::slice::from_ref(entry)).await
    }

    /// The audit rows received at or after `since`, newest first, at most
    /// `limit`.
    pub async fn audit_since(
        &self,
        since: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let rows: Vec<AuditDbRow> = with_pool!(&self.reader, |pool, _d| {
            sqlx::query_as(SINCE)
                .bind(since.timestamp_millis())
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await
        })
        .map_err(StoreError::query("reading the audit table"))?;
        rows.into_iter().map(record_from_row).collect()
    }
}

fn record_from_row(
    (
        id,
        received_at,
        topic,
        request,
        action,
        queue,
        agent,
        extension,
        outcome,
        error_code,
        error,
        upstream_latency_ms,
        transaction,
    ): AuditDbRow,
) -> Result<AuditRecord, StoreError> {
    let received_at = Utc
        .timestamp_millis_opt(received_at)
        .single()
        .ok_or_else(|| {
            StoreError::invalid_row(format!(
                "command_audit row {id} has received_at {received_at} out of range"
            ))
        })?;
    let outcome = match outcome.as_str() {
        "ok" => AuditOutcome::Ok,
        "error" => AuditOutcome::Error,
        other => {
            return Err(StoreError::invalid_row(format!(
                "command_audit row {id} has outcome {other:?}"
            )))
        }
    };
    Ok(AuditRecord {
        id,
        entry: AuditEntry {
            received_at,
            topic,
            request,
            action,
            queue,
            agent,
            extension,
            outcome,
            error_code,
            error,
            upstream_latency_ms,
            transaction,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_database::{backend_tests, TestDatabase};
    use chrono::Duration;

    fn entry(at: DateTime<Utc>, transaction: &str, outcome: AuditOutcome) -> AuditEntry {
        AuditEntry {
            received_at: at,
            topic: "pbx2mqtt/request/queue/500/add".into(),
            request: r#"{"extension":"201"}"#.into(),
            action: "add".into(),
            queue: Some("500".into()),
            agent: None,
            extension: Some("201".into()),
            outcome,
            error_code: (outcome == AuditOutcome::Error).then(|| "upstream_error".into()),
            error: (outcome == AuditOutcome::Error).then(|| "boom".into()),
            upstream_latency_ms: Some(12),
            transaction: Some(transaction.into()),
        }
    }

    async fn round_trip_newest_first(database: &TestDatabase) {
        let store = &database.store;
        let base = Utc.timestamp_millis_opt(1_800_000_000_123).unwrap();
        for (i, outcome) in [AuditOutcome::Ok, AuditOutcome::Error, AuditOutcome::Ok]
            .into_iter()
            .enumerate()
        {
            let at = base + Duration::seconds(i as i64);
            store
                .record_audit(&entry(at, &format!("\"t{i}\""), outcome))
                .await
                .unwrap();
        }
        let rows = store
            .audit_since(base + Duration::seconds(1), 10)
            .await
            .unwrap();
        let transactions: Vec<_> = rows
            .iter()
            .map(|r| r.entry.transaction.clone().unwrap())
            .collect();
        assert_eq!(transactions, ["\"t2\"", "\"t1\""]);
        assert_eq!(
            rows[1].entry,
            entry(base + Duration::seconds(1), "\"t1\"", AuditOutcome::Error)
        );
        assert!(rows[0].id > rows[1].id);
        assert_eq!(store.audit_since(base, 1).await.unwrap().len(), 1);
    }

    async fn long_requests_are_cut_and_nothing_else_is_rewritten(database: &TestDatabase) {
        let store = &database.store;
        let at = Utc.timestamp_millis_opt(1_800_000_000_000).unwrap();
        let mut long = entry(at, "\"1234\"", AuditOutcome::Ok);
        long.request = format!("é{}", "x".repeat(10_000));
        long.topic = "pbx2mqtt/request/queue/1234/add".into();
        long.queue = Some("1234".into());
        long.extension = Some("201234".into());
        store.record_audit(&long).await.unwrap();
        let stored = store.audit_since(at, 1).await.unwrap().remove(0).entry;
        assert_eq!(stored.request.chars().count(), MAX_REQUEST_CHARS);
        assert!(long.request.starts_with(&stored.request));
        assert_eq!(
            AuditEntry {
                request: long.request.clone(),
                ..stored
            },
            long
        );
    }

    backend_tests!(
        round_trip_newest_first,
        long_requests_are_cut_and_nothing_else_is_rewritten
    );
}
