//! Event delivery across restarts: the mark up to which the broker has
//! acknowledged every event (`bridge_meta.acked_seq`), and the events after
//! it, rebuilt from the intervals (each transition opened one).
//!
//! The MQTT connection reports the mark; the history writer stores it. On
//! start, and whenever the connection has let events go to keep its memory
//! bounded, the events after the mark are read back from here, so a
//! `kill -9`, a long broker outage or a shutdown while the broker was away
//! never leaves a gap in `seq` that nothing fills. Consumers drop duplicates
//! by `seq`, as after any reconnect.

use crate::model::{Status, TransitionEvent};

use super::dialect::with_pool;
use super::intervals::{RAISE_META, READ_META};
use super::rows::{agent_from_db, from_millis, seq_from_db, seq_to_db, status_from_db};
use super::{Store, StoreError};

/// The transitions after `$1`, oldest first, at most `$2`, each with the
/// interval before it of the same agent (its `from`).
const EVENTS_AFTER: &str = "SELECT i.agent, i.status, i.started_at, i.seq, \
      (SELECT p.status FROM intervals p WHERE p.agent = i.agent AND p.started_at < i.started_at \
        ORDER BY p.started_at DESC, p.id DESC LIMIT 1), \
      (SELECT p.started_at FROM intervals p WHERE p.agent = i.agent AND p.started_at < i.started_at \
        ORDER BY p.started_at DESC, p.id DESC LIMIT 1) \
    FROM intervals i WHERE i.seq > $1 AND (i.bridge = $3 OR i.bridge IS NULL) \
    ORDER BY i.seq LIMIT $2";

/// One row of [`EVENTS_AFTER`].
type EventRow = (String, String, i64, i64, Option<String>, Option<i64>);

impl Store {
    /// `bridge`'s stored acknowledged mark (or, before it stored one, the
    /// mark of a bridge from before several bridges could share a
    /// database); `None` before the first one was stored.
    pub async fn acked_seq(&self, bridge: &str) -> Result<Option<u64>, StoreError> {
        let mut value: Option<i64> = None;
        for key in [format!("acked_seq:{bridge}"), "acked_seq".to_owned()] {
            value = with_pool!(&self.writer, |pool, _d| {
                sqlx::query_scalar(READ_META)
                    .bind(key)
                    .fetch_optional(pool)
                    .await
            })
            .map_err(StoreError::query("reading acked_seq"))?;
            if value.is_some() {
                break;
            }
        }
        Ok(value.map(seq_from_db))
    }

    /// Stores the acknowledged mark (never lowering it: a late report
    /// cannot undo a newer one).
    pub async fn store_acked_seq(&self, bridge: &str, seq: u64) -> Result<(), StoreError> {
        with_pool!(&self.writer, |pool, _d| {
            sqlx::query(RAISE_META)
                .bind(format!("acked_seq:{bridge}"))
                .bind(seq_to_db(seq))
                .execute(pool)
                .await
                .map(drop)
        })
        .map_err(StoreError::query("storing acked_seq"))
    }

    /// The events of `bridge`'s transitions after seq `after` (and of
    /// transitions recorded before bridges were told apart), oldest first,
    /// at most `limit` of them.
    pub async fn events_after(
        &self,
        bridge: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<TransitionEvent>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<EventRow> = with_pool!(&self.reader, |pool, _d| {
            sqlx::query_as(EVENTS_AFTER)
                .bind(seq_to_db(after))
                .bind(limit)
                .bind(bridge)
                .fetch_all(pool)
                .await
        })
        .map_err(StoreError::query(
            "reading transitions after the acknowledged mark",
        ))?;
        rows.into_iter().map(event_from_row).collect()
    }
}

fn event_from_row(
    (agent, status, started_at, seq, previous_status, previous_started_at): EventRow,
) -> Result<TransitionEvent, StoreError> {
    let from = match previous_status {
        Some(status) => status_from_db(&status)?,
        None => Status::Unknown,
    };
    let duration_ms = previous_started_at.map_or(0, |previous| (started_at - previous).max(0));
    Ok(TransitionEvent {
        agent: agent_from_db(&agent)?,
        from,
        to: status_from_db(&status)?,
        at: from_millis(started_at)?,
        previous_duration_s: duration_ms as f64 / 1000.0,
        seq: seq_from_db(seq),
    })
}
