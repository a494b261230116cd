//! Queue commands by transaction, shared by every bridge on one database
//! (`command_transactions`, migration `..._bridges`): a request that reaches
//! a second bridge (a resend, a QoS 1 redelivery after a bridge died) is
//! answered from here instead of running twice. Each bridge also keeps its
//! own in-memory window (`commands/dedup.rs`); this table is what they share.
//!
//! A claim is one row per request topic and transaction: `response` is NULL
//! while the command runs and the response payload once it succeeded. A
//! failed command's claim is dropped (a retry runs again), and so is the
//! claim of a bridge that stopped heartbeating before it answered.

use super::cluster::NOW;
use super::dialect::{with_pool, WritePool};
use super::{Store, StoreError};

/// What [`Store::claim_transaction`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Nobody ran it within the window: this bridge runs it now.
    Run,
    /// Another live bridge is running it and will answer.
    RunningOn(String),
    /// Already answered: send this response again, run nothing.
    Answered(Vec<u8>),
}

/// The claim, with whether its bridge is alive (`$3` now, `$4` a heartbeat
/// after which a bridge counts as alive).
const READ_CLAIM: &str = "SELECT c.bridge, c.response, c.received_at, \
     EXISTS (SELECT 1 FROM bridges b WHERE b.bridge = c.bridge AND b.heartbeat_at > $4) \
     FROM command_transactions c WHERE c.topic = $1 AND c.\"transaction\" = $2";

/// Takes (or takes over) a claim.
const WRITE_CLAIM: &str =
    "INSERT INTO command_transactions (topic, \"transaction\", bridge, response, received_at) \
     VALUES ($1, $2, $3, NULL, $4) ON CONFLICT (topic, \"transaction\") DO UPDATE SET \
     bridge = excluded.bridge, response = NULL, received_at = excluded.received_at";

/// One claim as stored: bridge, response, received_at, bridge alive.
type ClaimRow = (String, Option<String>, i64, bool);

impl Store {
    /// Claims the request `transaction` on `topic` for bridge `me`, unless
    /// a claim younger than `window_ms` exists whose bridge is alive (its
    /// heartbeat younger than `alive_ms`) or that was answered.
    pub async fn claim_transaction(
        &self,
        topic: &str,
        transaction: &str,
        me: &str,
        window_ms: i64,
        alive_ms: i64,
    ) -> Result<Claim, StoreError> {
        let failed = || StoreError::query("claiming a command transaction");
        with_pool!(&self.writer, |pool, dialect| {
            let mut transaction_db = pool.begin_write().await.map_err(failed())?;
            let now: i64 = sqlx::query_scalar(dialect.pick(NOW[0], NOW[1]))
                .fetch_one(&mut *transaction_db)
                .await
                .map_err(failed())?;
            // Serialises two bridges claiming the same key: the second
            // waits for the first's row, then sees it.
            sqlx::query(
                "INSERT INTO command_transactions (topic, \"transaction\", bridge, response, received_at) \
                 VALUES ($1, $2, '', NULL, 0) ON CONFLICT (topic, \"transaction\") DO NOTHING",
            )
            .bind(topic)
            .bind(transaction)
            .execute(&mut *transaction_db)
            .await
            .map_err(failed())?;
            let row: Option<ClaimRow> = sqlx::query_as(READ_CLAIM)
                .bind(topic)
                .bind(transaction)
                .bind(now)
                .bind(now - alive_ms)
                .fetch_optional(&mut *transaction_db)
                .await
                .map_err(failed())?;
            let claim = match row {
                Some((_, Some(response), received_at, _)) if received_at > now - window_ms => {
                    Claim::Answered(response.into_bytes())
                }
                Some((bridge, None, received_at, alive))
                    if received_at > now - window_ms && alive && bridge != me =>
                {
                    Claim::RunningOn(bridge)
                }
                _ => Claim::Run,
            };
            if claim == Claim::Run {
                sqlx::query(WRITE_CLAIM)
                    .bind(topic)
                    .bind(transaction)
                    .bind(me)
                    .bind(now)
                    .execute(&mut *transaction_db)
                    .await
                    .map_err(failed())?;
            }
            transaction_db.commit().await.map_err(failed())?;
            Ok(claim)
        })
    }

    /// Ends a claim: stores the response of a command that succeeded, or
    /// drops the claim of one that failed (`None`), so a retry runs again.
    pub async fn finish_transaction(
        &self,
        topic: &str,
        transaction: &str,
        response: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let failed = || StoreError::query("storing a command transaction's response");
        with_pool!(&self.writer, |pool, _d| {
            match response {
                Some(response) => sqlx::query(
                    "UPDATE command_transactions SET response = $3 \
                     WHERE topic = $1 AND \"transaction\" = $2",
                )
                .bind(topic)
                .bind(transaction)
                .bind(String::from_utf8_lossy(response).into_owned())
                .execute(pool)
                .await
                .map_err(failed())?,
                None => sqlx::query(
                    "DELETE FROM command_transactions WHERE topic = $1 AND \"transaction\" = $2",
                )
                .bind(topic)
                .bind(transaction)
                .execute(pool)
                .await
                .map_err(failed())?,
            };
            Ok(())
        })
    }

    /// Forgets claims older than `window_ms`; how many.
    pub async fn prune_transactions(&self, window_ms: i64) -> Result<u64, StoreError> {
        let failed = || StoreError::query("pruning command transactions");
        with_pool!(&self.writer, |pool, dialect| {
            let now: i64 = sqlx::query_scalar(dialect.pick(NOW[0], NOW[1]))
                .fetch_one(pool)
                .await
                .map_err(failed())?;
            sqlx::query("DELETE FROM command_transactions WHERE received_at < $1")
                .bind(now - window_ms)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
                .map_err(failed())
        })
    }
}
