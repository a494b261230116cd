//! The `command_audit` table (migrations `*_audit.sql`): one row per queue
//! command, refused ones included, written by the dispatcher and the CLI and
//! read by `pbx2mqtt audit`.
//!
//! This module owns the audit SQL for both backends (matching on
//! [`Store`]'s variants) and the row type. It stores what it is given (the
//! request cut to [`MAX_REQUEST_CHARS`]); it never decides outcomes and never
//! rewrites fields: the TRiNG key can only be in upstream error text, which
//! the caller passes through [`super::CommandError::without_key`] first.

use std::borrow::Cow;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::history::{Store, StoreError};

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

const INSERT_SQLITE: &str =
    "INSERT INTO command_audit (received_at, topic, request, action, queue, \
     agent, extension, outcome, error_code, error, upstream_latency_ms, \"transaction\") \
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

const INSERT_POSTGRES: &str =
    "INSERT INTO command_audit (received_at, topic, request, action, queue, \
     agent, extension, outcome, error_code, error, upstream_latency_ms, \"transaction\") \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";

const SELECT_COLUMNS: &str =
    "SELECT id, received_at, topic, request, action, queue, agent, extension, \
     outcome, error_code, error, upstream_latency_ms, \"transaction\" FROM command_audit";

/// Inserts one entry, the request cut to [`MAX_REQUEST_CHARS`].
pub async fn record(store: &Store, entry: &AuditEntry) -> Result<(), StoreError> {
    let received_at = entry.received_at.timestamp_millis();
    let request = stored_request(&entry.request);
    match store {
        Store::Sqlite(pool) => {
            sqlx::query(INSERT_SQLITE)
                .bind(received_at)
                .bind(&entry.topic)
                .bind(request.as_ref())
                .bind(&entry.action)
                .bind(&entry.queue)
                .bind(&entry.agent)
                .bind(&entry.extension)
                .bind(entry.outcome.as_str())
                .bind(&entry.error_code)
                .bind(&entry.error)
                .bind(entry.upstream_latency_ms)
                .bind(&entry.transaction)
                .execute(pool)
                .await
                .map_err(StoreError::query("recording a command in the audit table"))?;
        }
        Store::Postgres(pool) => {
            sqlx::query(INSERT_POSTGRES)
                .bind(received_at)
                .bind(&entry.topic)
                .bind(request.as_ref())
                .bind(&entry.action)
                .bind(&entry.queue)
                .bind(&entry.agent)
                .bind(&entry.extension)
                .bind(entry.outcome.as_str())
                .bind(&entry.error_code)
                .bind(&entry.error)
                .bind(entry.upstream_latency_ms)
                .bind(&entry.transaction)
                .execute(pool)
                .await
                .map_err(StoreError::query("recording a command in the audit table"))?;
        }
    }
    Ok(())
}

/// The rows received at or after `since`, newest first, at most `limit`.
pub async fn since(
    store: &Store,
    since: DateTime<Utc>,
    limit: u32,
) -> Result<Vec<AuditRecord>, StoreError> {
    let since = since.timestamp_millis();
    let limit = i64::from(limit);
    const ACTION: &str = "reading the audit table";
    match store {
        Store::Sqlite(pool) => {
            let sql = format!(
                "{SELECT_COLUMNS} WHERE received_at >= ? ORDER BY received_at DESC, id DESC LIMIT ?"
            );
            let rows = sqlx::query(&sql)
                .bind(since)
                .bind(limit)
                .fetch_all(pool)
                .await
                .map_err(StoreError::query(ACTION))?;
            rows.iter().map(sqlite_record).collect()
        }
        Store::Postgres(pool) => {
            let sql = format!(
                "{SELECT_COLUMNS} WHERE received_at >= $1 ORDER BY received_at DESC, id DESC LIMIT $2"
            );
            let rows = sqlx::query(&sql)
                .bind(since)
                .bind(limit)
                .fetch_all(pool)
                .await
                .map_err(StoreError::query(ACTION))?;
            rows.iter().map(postgres_record).collect()
        }
    }
}

/// The columns of one row, backend-independent.
struct Columns {
    id: i64,
    received_at: i64,
    topic: String,
    request: String,
    action: String,
    queue: Option<String>,
    agent: Option<String>,
    extension: Option<String>,
    outcome: String,
    error_code: Option<String>,
    error: Option<String>,
    upstream_latency_ms: Option<i64>,
    transaction: Option<String>,
}

macro_rules! read_columns {
    ($row:expr) => {{
        let row = $row;
        (|| -> Result<Columns, sqlx::Error> {
            Ok(Columns {
                id: row.try_get("id")?,
                received_at: row.try_get("received_at")?,
                topic: row.try_get("topic")?,
                request: row.try_get("request")?,
                action: row.try_get("action")?,
                queue: row.try_get("queue")?,
                agent: row.try_get("agent")?,
                extension: row.try_get("extension")?,
                outcome: row.try_get("outcome")?,
                error_code: row.try_get("error_code")?,
                error: row.try_get("error")?,
                upstream_latency_ms: row.try_get("upstream_latency_ms")?,
                transaction: row.try_get("transaction")?,
            })
        })()
        .map_err(StoreError::query("reading the audit table"))
    }};
}

fn sqlite_record(row: &sqlx::sqlite::SqliteRow) -> Result<AuditRecord, StoreError> {
    into_record(read_columns!(row)?)
}

fn postgres_record(row: &sqlx::postgres::PgRow) -> Result<AuditRecord, StoreError> {
    into_record(read_columns!(row)?)
}

fn into_record(columns: Columns) -> Result<AuditRecord, StoreError> {
    let invalid = |detail: String| StoreError::InvalidRow { detail };
    let received_at = Utc
        .timestamp_millis_opt(columns.received_at)
        .single()
        .ok_or_else(|| {
            invalid(format!(
                "command_audit row {} has received_at {} out of range",
                columns.id, columns.received_at
            ))
        })?;
    let outcome = match columns.outcome.as_str() {
        "ok" => AuditOutcome::Ok,
        "error" => AuditOutcome::Error,
        other => {
            return Err(invalid(format!(
                "command_audit row {} has outcome {other:?}",
                columns.id
            )))
        }
    };
    Ok(AuditRecord {
        id: columns.id,
        entry: AuditEntry {
            received_at,
            topic: columns.topic,
            request: columns.request,
            action: columns.action,
            queue: columns.queue,
            agent: columns.agent,
            extension: columns.extension,
            outcome,
            error_code: columns.error_code,
            error: columns.error,
            upstream_latency_ms: columns.upstream_latency_ms,
            transaction: columns.transaction,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
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

    async fn check_round_trip(store: &Store) {
        let base = Utc.timestamp_millis_opt(1_800_000_000_123).unwrap();
        for (i, outcome) in [AuditOutcome::Ok, AuditOutcome::Error, AuditOutcome::Ok]
            .into_iter()
            .enumerate()
        {
            let at = base + Duration::seconds(i as i64);
            record(store, &entry(at, &format!("\"t{i}\""), outcome))
                .await
                .unwrap();
        }
        let rows = since(store, base + Duration::seconds(1), 10).await.unwrap();
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
        assert_eq!(since(store, base, 1).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn sqlite_round_trip_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("audit.db").display());
        let store = Store::open(&url).await.unwrap();
        check_round_trip(&store).await;
    }

    #[tokio::test]
    async fn postgres_round_trip_newest_first() {
        let Ok(url) = std::env::var("PBX2MQTT_TEST_POSTGRES_URL") else {
            eprintln!("PBX2MQTT_TEST_POSTGRES_URL not set; skipping");
            return;
        };
        let store = Store::open(&url).await.unwrap();
        if let Store::Postgres(pool) = &store {
            sqlx::query("DELETE FROM command_audit WHERE received_at >= 1800000000000 AND received_at < 1800000100000")
                .execute(pool)
                .await
                .unwrap();
        }
        check_round_trip(&store).await;
    }

    #[tokio::test]
    async fn long_requests_are_cut_and_nothing_else_is_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("audit.db").display());
        let store = Store::open(&url).await.unwrap();
        let at = Utc.timestamp_millis_opt(1_800_000_000_000).unwrap();
        let mut long = entry(at, "\"1234\"", AuditOutcome::Ok);
        long.request = format!("é{}", "x".repeat(10_000));
        long.topic = "pbx2mqtt/request/queue/1234/add".into();
        long.queue = Some("1234".into());
        long.extension = Some("201234".into());
        record(&store, &long).await.unwrap();
        let stored = since(&store, at, 1).await.unwrap().remove(0).entry;
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
}
