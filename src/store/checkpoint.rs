//! SQLite's WAL checkpoints, off the history writer's path.
//!
//! Left to itself, SQLite checkpoints inside the commit that takes the WAL
//! past `wal_autocheckpoint` pages: that commit copies every page the WAL
//! holds into the database file and syncs it, many times the work of a
//! batch, and the transitions it carries reach subscribers that much later.
//! Measured at 5,000 agents polled every second: about 1% of history batches
//! took over 10 ms (the others 1–5 ms), which made the subscriber's p99.
//!
//! So [`keep_wal_short`] checkpoints from the other writing connection, on
//! its own SQLite thread, every [`CHECKPOINT_EVERY`], in the PASSIVE mode,
//! which neither waits for nor blocks a writer: commits go on appending to
//! the WAL while it copies. SQLite starts the WAL over at the first commit
//! after a checkpoint that copied all of it, so a round of checkpoints ends
//! with quick passes that copy only what was committed meanwhile (see
//! [`checkpoint_round`]), and a round that still did not catch up is tried
//! again after [`RETRY_AFTER`].
//!
//! The history writer's own connection (the history thread's,
//! `sqlite_thread.rs`) checkpoints only past
//! [`HISTORY_AUTOCHECKPOINT_PAGES`] (see `open.rs`), far above what a second
//! of history writes at 5,000 agents: the safety net for when the rounds
//! cannot catch up (commits back to back at saturation), as SQLite itself
//! would. Nothing here ever blocks the writer: a mode that waits for it
//! (RESTART) would hold it in SQLite's busy handler, which sleeps up to
//! 100 ms at a time (an earlier version escalated to it; a 30-s window then
//! measured a p99 of 633 ms). PostgreSQL has nothing to do here.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{Backend, Store, StoreError};

/// How often the WAL is checkpointed: at 5,000 agents every second, a few
/// thousand frames, copied in 10–20 ms on the other writing connection.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// WAL pages after which the history writer's connection checkpoints by
/// itself (64 MiB of WAL with 4 KiB pages); the rounds keep it far below.
pub const HISTORY_AUTOCHECKPOINT_PAGES: u32 = 16_000;

/// Checkpoints after the first of a round that only copy the frames
/// committed while the one before ran.
const CATCH_UP_PASSES: u32 = 4;

/// The pause after a round that did not catch up (commits kept landing
/// between its passes): the next round tries again soon, not a second later.
const RETRY_AFTER: Duration = Duration::from_millis(50);

/// What one checkpoint did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpointed {
    /// Frames in the WAL when it ran.
    pub wal_frames: i64,
    /// Frames of those now copied into the database file.
    pub copied_frames: i64,
}

impl Checkpointed {
    /// True when every frame of the WAL is in the database file: the next
    /// commit starts the WAL over.
    pub fn complete(&self) -> bool {
        self.copied_frames == self.wal_frames
    }
}

impl Store {
    /// One PASSIVE checkpoint of SQLite's WAL from the writing connection
    /// that is not the history writer's; `None` on PostgreSQL.
    pub async fn checkpoint_wal(&self) -> Result<Option<Checkpointed>, StoreError> {
        let Backend::Sqlite(pool) = &self.writer else {
            return Ok(None);
        };
        let (_busy, wal_frames, copied_frames): (i64, i64, i64) =
            sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
                .fetch_one(pool)
                .await
                .map_err(StoreError::query("checkpointing the WAL"))?;
        Ok(Some(Checkpointed {
            wal_frames,
            copied_frames,
        }))
    }
}

/// Checkpoints the WAL every `every` until `shutdown` (see the module doc);
/// returns at once on PostgreSQL. A failed checkpoint is logged and tried
/// again at the next tick: the WAL only grows meanwhile.
pub async fn keep_wal_short(store: Store, every: Duration, shutdown: CancellationToken) {
    if store.is_shared() {
        return;
    }
    loop {
        let started = Instant::now();
        let caught_up = match checkpoint_round(&store).await {
            Ok(Some(round)) => {
                debug!(
                    round.last.wal_frames,
                    round.last.copied_frames,
                    round.passes,
                    round.caught_up,
                    took_ms = started.elapsed().as_secs_f64() * 1000.0,
                    "WAL checkpointed"
                );
                round.caught_up
            }
            Ok(None) => return,
            Err(error) => {
                warn!(%error, "checkpointing the WAL failed; trying again");
                true // Not sooner than usual: the disk may be full.
            }
        };
        let pause = if caught_up {
            every
        } else {
            every.min(RETRY_AFTER)
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// What a round of checkpoints did.
#[derive(Debug, Clone, Copy)]
struct Round {
    /// The last checkpoint's result.
    last: Checkpointed,
    /// Checkpoints in the round.
    passes: u32,
    /// True when the last pass found no new frame and copied them all: the
    /// next commit starts the WAL over.
    caught_up: bool,
}

/// One round of checkpoints: the first copies what the WAL holds; while
/// commits landed meanwhile, up to [`CATCH_UP_PASSES`] more copy just those
/// (a batch's frames, a millisecond), so that the round most likely ends
/// with the whole WAL copied between two commits. `None` on PostgreSQL.
async fn checkpoint_round(store: &Store) -> Result<Option<Round>, StoreError> {
    let Some(mut last) = store.checkpoint_wal().await? else {
        return Ok(None);
    };
    let mut passes = 1;
    let mut caught_up = false;
    while passes <= CATCH_UP_PASSES && !caught_up {
        let Some(next) = store.checkpoint_wal().await? else {
            break;
        };
        passes += 1;
        caught_up = next.wal_frames == last.wal_frames && next.complete();
        last = next;
    }
    Ok(Some(Round {
        last,
        passes,
        caught_up,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_database::{Backend, TestDatabase};

    /// `count` transactions of about two pages each, on the history
    /// writer's connection (the history thread's), back to back.
    async fn write_on_history(store: &Store, count: usize) {
        let thread = store
            .thread
            .as_ref()
            .expect("an SQLite store's history thread");
        thread
            .run(move |connection| {
                connection.execute_batch("CREATE TABLE IF NOT EXISTS filler (bytes BLOB)")?;
                for _ in 0..count {
                    connection.execute("INSERT INTO filler VALUES (randomblob(6000))", [])?;
                }
                Ok::<_, rusqlite::Error>(())
            })
            .await
            .unwrap()
            .unwrap();
    }

    /// The history writer's own checkpoint is far above SQLite's default
    /// of 1,000 pages (the connection settings are checked in
    /// `store::tests::sqlite_uses_wal_and_full_sync`); a PASSIVE checkpoint
    /// from the other connection copies the WAL, and the next commit starts
    /// it over.
    #[tokio::test]
    async fn a_passive_checkpoint_from_the_other_connection_restarts_the_wal() {
        let database = TestDatabase::sqlite().await;
        let store = &database.store;
        write_on_history(store, 600).await;
        let done = store.checkpoint_wal().await.unwrap().unwrap();
        assert!(
            done.wal_frames > 1_000,
            "nothing checkpointed them: {done:?}"
        );
        assert!(done.complete(), "{done:?}");

        write_on_history(store, 1).await;
        let after = store.checkpoint_wal().await.unwrap().unwrap();
        assert!(after.wal_frames < 10, "{after:?}");
        database.finish().await;
    }

    #[tokio::test]
    async fn the_checkpointer_keeps_the_wal_short_while_history_is_written() {
        let database = TestDatabase::sqlite().await;
        let store = &database.store;
        let stop = CancellationToken::new();
        let checkpointer = tokio::spawn(keep_wal_short(
            store.clone(),
            Duration::from_millis(20),
            stop.clone(),
        ));
        // Batches a few milliseconds apart, as the history writer commits.
        for _ in 0..300 {
            write_on_history(store, 5).await;
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        stop.cancel();
        checkpointer.await.unwrap();
        let left = store.checkpoint_wal().await.unwrap().unwrap();
        // 1,500 transactions wrote over 3,000 frames; the WAL was started
        // over along the way.
        assert!(left.wal_frames < 1_500, "{left:?}");
        database.finish().await;
    }

    /// On PostgreSQL there is no WAL of ours: `None`, and the checkpointer
    /// returns at once; on SQLite, a checkpoint.
    async fn only_sqlite_has_a_wal_to_checkpoint(database: &TestDatabase) {
        let done = database.store.checkpoint_wal().await.unwrap();
        match database.backend {
            Backend::Sqlite => assert!(done.is_some()),
            Backend::Postgres => {
                assert_eq!(done, None);
                keep_wal_short(
                    database.store.clone(),
                    Duration::from_millis(1),
                    CancellationToken::new(),
                )
                .await;
            }
        }
    }

    crate::store::test_database::backend_tests!(only_sqlite_has_a_wal_to_checkpoint);
}
