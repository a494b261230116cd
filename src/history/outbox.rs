//! Events the broker has not acknowledged, across bridge restarts.
//!
//! The MQTT connection knows the highest `seq` up to which the broker has
//! acknowledged every event; the history writer stores that mark
//! (`bridge_meta.acked_seq`) with its heartbeat. On start, the events after
//! the mark are rebuilt from the intervals (each transition opened one) and
//! sent again, so a `kill -9` or a shutdown while the broker was away does
//! not leave a gap in `seq` that nothing fills. Consumers drop duplicates by
//! `seq`, as after any reconnect.

use crate::model::{AgentId, Status, TransitionEvent};

use super::plan::from_millis;
use super::store::{Store, StoreError};

/// Raises the mark; it never goes down (a lagging report cannot undo it).
const STORE_ACKED_SQLITE: &str = "INSERT INTO bridge_meta (key, value) VALUES ('acked_seq', ?1) \
    ON CONFLICT (key) DO UPDATE SET value = MAX(value, excluded.value)";
const STORE_ACKED_POSTGRES: &str = "INSERT INTO bridge_meta (key, value) VALUES ('acked_seq', $1) \
    ON CONFLICT (key) DO UPDATE SET value = GREATEST(bridge_meta.value, excluded.value)";

const READ_ACKED: &str = "SELECT value FROM bridge_meta WHERE key = 'acked_seq'";

/// The transitions after the mark, newest first (the caller reverses), each
/// with the interval before it of the same agent (its `from`).
const UNACKNOWLEDGED_SQLITE: &str = "SELECT i.agent, i.status, i.started_at, i.seq, \
      (SELECT p.status FROM intervals p WHERE p.agent = i.agent AND p.started_at < i.started_at \
        ORDER BY p.started_at DESC LIMIT 1), \
      (SELECT p.started_at FROM intervals p WHERE p.agent = i.agent AND p.started_at < i.started_at \
        ORDER BY p.started_at DESC LIMIT 1) \
    FROM intervals i WHERE i.seq > ?1 ORDER BY i.seq DESC LIMIT ?2";
const UNACKNOWLEDGED_POSTGRES: &str = "SELECT i.agent, i.status, i.started_at, i.seq, \
      (SELECT p.status FROM intervals p WHERE p.agent = i.agent AND p.started_at < i.started_at \
        ORDER BY p.started_at DESC LIMIT 1), \
      (SELECT p.started_at FROM intervals p WHERE p.agent = i.agent AND p.started_at < i.started_at \
        ORDER BY p.started_at DESC LIMIT 1) \
    FROM intervals i WHERE i.seq > $1 ORDER BY i.seq DESC LIMIT $2";

/// One row of the query above.
type Row = (String, String, i64, i64, Option<String>, Option<i64>);

/// The stored mark; `None` before the first one was stored.
pub async fn acked_seq(store: &Store) -> Result<Option<u64>, StoreError> {
    let value: Option<i64> = match store {
        Store::Sqlite(pool) => sqlx::query_scalar(READ_ACKED).fetch_optional(pool).await,
        Store::Postgres(pool) => sqlx::query_scalar(READ_ACKED).fetch_optional(pool).await,
    }
    .map_err(StoreError::query("reading acked_seq"))?;
    Ok(value.map(|v| v.max(0) as u64))
}

/// Stores the mark (never lowering it).
pub async fn store_acked_seq(store: &Store, seq: u64) -> Result<(), StoreError> {
    let seq = i64::try_from(seq).unwrap_or(i64::MAX);
    let stored = match store {
        Store::Sqlite(pool) => sqlx::query(STORE_ACKED_SQLITE)
            .bind(seq)
            .execute(pool)
            .await
            .map(drop),
        Store::Postgres(pool) => sqlx::query(STORE_ACKED_POSTGRES)
            .bind(seq)
            .execute(pool)
            .await
            .map(drop),
    };
    stored.map_err(StoreError::query("storing acked_seq"))
}

/// The events of the transitions after `after`, oldest first; at most the
/// newest `limit`.
pub async fn unacknowledged(
    store: &Store,
    after: u64,
    limit: usize,
) -> Result<Vec<TransitionEvent>, StoreError> {
    let after = i64::try_from(after).unwrap_or(i64::MAX);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows: Vec<Row> = match store {
        Store::Sqlite(pool) => {
            sqlx::query_as(UNACKNOWLEDGED_SQLITE)
                .bind(after)
                .bind(limit)
                .fetch_all(pool)
                .await
        }
        Store::Postgres(pool) => {
            sqlx::query_as(UNACKNOWLEDGED_POSTGRES)
                .bind(after)
                .bind(limit)
                .fetch_all(pool)
                .await
        }
    }
    .map_err(StoreError::query("reading unacknowledged transitions"))?;
    let mut events = rows
        .into_iter()
        .map(event_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    events.reverse();
    Ok(events)
}

fn event_from_row(
    (agent, status, started_at, seq, previous_status, previous_started_at): Row,
) -> Result<TransitionEvent, StoreError> {
    let invalid = |detail: String| StoreError::InvalidRow { detail };
    let agent = AgentId::parse(&agent).map_err(|e| invalid(e.to_string()))?;
    let to: Status = status
        .parse()
        .map_err(|e: crate::model::UnknownStatus| invalid(e.to_string()))?;
    let from = match previous_status {
        Some(status) => status
            .parse()
            .map_err(|e: crate::model::UnknownStatus| invalid(e.to_string()))?,
        None => Status::Unknown,
    };
    let duration_ms = previous_started_at.map_or(0, |previous| (started_at - previous).max(0));
    Ok(TransitionEvent {
        agent,
        from,
        to,
        at: from_millis(started_at)?,
        previous_duration_s: duration_ms as f64 / 1000.0,
        seq: seq.max(0) as u64,
    })
}
