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
/// interval before it of the same agent (its `from`); `$filter` narrows
/// them to one bridge's.
macro_rules! events_after {
    ($filter:literal) => {
        concat!(
            "SELECT i.agent, i.status, i.started_at, i.seq, \
              (SELECT p.status FROM intervals p WHERE p.agent = i.agent AND p.started_at < i.started_at \
                ORDER BY p.started_at DESC, p.id DESC LIMIT 1), \
              (SELECT p.started_at FROM intervals p WHERE p.agent = i.agent AND p.started_at < i.started_at \
                ORDER BY p.started_at DESC, p.id DESC LIMIT 1) \
            FROM intervals i WHERE i.seq > $1",
            $filter,
            " ORDER BY i.seq LIMIT $2"
        )
    };
}

/// [`events_after!`] of bridge `$3` (and of transitions recorded before
/// bridges were told apart): several bridges share the database.
const EVENTS_AFTER: &str = events_after!(" AND (i.bridge = $3 OR i.bridge IS NULL)");

/// [`events_after!`] of every bridge: one bridge at a time on this database
/// (SQLite), whatever it was called when it committed them.
const EVENTS_AFTER_ANY_BRIDGE: &str = events_after!("");

/// One row of [`EVENTS_AFTER`].
type EventRow = (String, String, i64, i64, Option<String>, Option<i64>);

impl Store {
    /// `bridge`'s stored acknowledged mark (or, before it stored one, the
    /// mark of a bridge from before several bridges could share a
    /// database); `None` before the first one was stored.
    pub async fn acked_seq(&self, bridge: &str) -> Result<Option<u64>, StoreError> {
        let mut value: Option<i64> = None;
        // Then the keys of earlier versions: a per-bridge mark on SQLite,
        // the mark from before bridges were told apart.
        for key in [
            self.acked_key(bridge),
            format!("acked_seq:{bridge}"),
            "acked_seq".to_owned(),
        ] {
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
        const ACTION: &str = "storing acked_seq";
        if let Some(thread) = &self.thread {
            let key = self.acked_key(bridge);
            return Self::meta_on_thread(thread, RAISE_META, key, seq_to_db(seq), ACTION).await;
        }
        with_pool!(&self.writer, |pool, _d| {
            sqlx::query(RAISE_META)
                .bind(self.acked_key(bridge))
                .bind(seq_to_db(seq))
                .execute(pool)
                .await
                .map(drop)
        })
        .map_err(StoreError::query(ACTION))
    }

    /// The events of the transitions after seq `after`, oldest first, at
    /// most `limit` of them: with several bridges, `bridge`'s (and those
    /// recorded before bridges were told apart); with one, every one.
    pub async fn events_after(
        &self,
        bridge: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<TransitionEvent>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let shared = self.is_shared();
        let rows: Vec<EventRow> = with_pool!(&self.reader, |pool, _d| {
            let query = if shared {
                sqlx::query_as(EVENTS_AFTER)
                    .bind(seq_to_db(after))
                    .bind(limit)
                    .bind(bridge)
            } else {
                sqlx::query_as(EVENTS_AFTER_ANY_BRIDGE)
                    .bind(seq_to_db(after))
                    .bind(limit)
            };
            query.fetch_all(pool).await
        })
        .map_err(StoreError::query(
            "reading transitions after the acknowledged mark",
        ))?;
        rows.into_iter().map(event_from_row).collect()
    }
}

impl Store {
    /// Where `bridge`'s acknowledged mark is kept. Several bridges (shared
    /// PostgreSQL) each have their own; one bridge at a time (SQLite) keeps
    /// one mark, so a bridge renamed (a new host name) resends what its
    /// predecessor left unacknowledged.
    fn acked_key(&self, bridge: &str) -> String {
        if self.is_shared() {
            format!("acked_seq:{bridge}")
        } else {
            "acked_seq".to_owned()
        }
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
