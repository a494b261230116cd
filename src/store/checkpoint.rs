//! SQLite's WAL checkpoints, off the history writer's path.
//!
//! Left to itself, SQLite checkpoints inside the commit that takes the WAL
//! past `wal_autocheckpoint` pages: that commit copies every page the WAL
//! holds into the database file and syncs it, many times the work of a
//! batch, and the transitions it carries reach subscribers that much later.
//! Measured at 5,000 agents polled every second: about 1% of history batches
//! took over 10 ms (the others 1–5 ms), which made the subscriber's p99.
//!
//! So the history writer's connection never checkpoints
//! (`wal_autocheckpoint = 0`, see `open.rs`), and [`keep_wal_short`]
//! checkpoints from the other writing connection, on its own SQLite thread,
//! every [`CHECKPOINT_EVERY`]. It uses the PASSIVE mode, which neither
//! waits for nor blocks a writer: commits go on appending to the WAL while
//! it copies, and SQLite starts the WAL over at the first commit after a
//! checkpoint that copied all of it. Should the checkpoints never catch up
//! (a report's long read holding an old snapshot, a burst) and the WAL pass
//! [`WAL_RESTART_FRAMES`], one checkpoint waits for the writer (RESTART) so
//! the file stops growing. PostgreSQL has nothing to do here.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{Backend, Store, StoreError};

/// How often the WAL is checkpointed: at 5,000 agents every second, a few
/// thousand frames, copied in a few milliseconds.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// WAL frames (pages) past which a checkpoint waits for the writer
/// (64 MiB of WAL with 4 KiB pages).
pub const WAL_RESTART_FRAMES: i64 = 16_000;

/// Checkpoints after the first of a round that only copy the frames
/// committed while the one before ran.
const CATCH_UP_PASSES: u32 = 4;

/// How a checkpoint treats writers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointMode {
    /// Copies what it can without waiting for anybody.
    Passive,
    /// Waits for the writer, copies everything, and makes the next commit
    /// start the WAL over.
    Restart,
}

/// What one checkpoint did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpointed {
    /// Frames in the WAL when it ran.
    pub wal_frames: i64,
    /// Frames of those now copied into the database file.
    pub copied_frames: i64,
    /// True when a RESTART could not get the locks it waits for.
    pub busy: bool,
}

impl Store {
    /// Checkpoints SQLite's WAL from the writing connection that is not the
    /// history writer's; `None` on PostgreSQL.
    pub async fn checkpoint_wal(
        &self,
        mode: CheckpointMode,
    ) -> Result<Option<Checkpointed>, StoreError> {
        let Backend::Sqlite(pool) = &self.writer else {
            return Ok(None);
        };
        let sql = match mode {
            CheckpointMode::Passive => "PRAGMA wal_checkpoint(PASSIVE)",
            CheckpointMode::Restart => "PRAGMA wal_checkpoint(RESTART)",
        };
        let (busy, wal_frames, copied_frames): (i64, i64, i64) = sqlx::query_as(sql)
            .fetch_one(pool)
            .await
            .map_err(StoreError::query("checkpointing the WAL"))?;
        Ok(Some(Checkpointed {
            wal_frames,
            copied_frames,
            busy: busy != 0,
        }))
    }
}

/// The mode of the checkpoint after one in `mode` that did `done`.
fn next_mode(mode: CheckpointMode, done: Checkpointed) -> CheckpointMode {
    if mode == CheckpointMode::Restart && !done.busy {
        CheckpointMode::Passive // The next commit starts the WAL over.
    } else if done.wal_frames > WAL_RESTART_FRAMES {
        CheckpointMode::Restart
    } else {
        CheckpointMode::Passive
    }
}

/// Checkpoints the WAL every `every` until `shutdown` (see the module doc);
/// returns at once on PostgreSQL. A failed checkpoint is logged and tried
/// again at the next tick: the WAL only grows meanwhile.
pub async fn keep_wal_short(store: Store, every: Duration, shutdown: CancellationToken) {
    if store.is_shared() {
        return;
    }
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut mode = CheckpointMode::Passive;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let started = Instant::now();
        match checkpoint_round(&store, mode).await {
            Ok(Some((done, passes))) => {
                let took_ms = started.elapsed().as_secs_f64() * 1000.0;
                debug!(
                    ?mode,
                    done.wal_frames, done.copied_frames, passes, took_ms, "WAL checkpointed"
                );
                if done.wal_frames > WAL_RESTART_FRAMES && mode == CheckpointMode::Passive {
                    warn!(
                        done.wal_frames,
                        "the WAL outgrows its checkpoints; the next one waits for the writer"
                    );
                }
                mode = next_mode(mode, done);
            }
            Ok(None) => return,
            Err(error) => warn!(%error, "checkpointing the WAL failed; trying again"),
        }
    }
}

/// One round of checkpoints: the first copies what the WAL holds, and while
/// commits landed meanwhile, up to [`CATCH_UP_PASSES`] more copy just
/// those (a batch's frames, a millisecond), so that the round most likely
/// ends with the whole WAL copied and the next commit starts it over. The
/// last checkpoint's result and the number of passes; `None` on PostgreSQL.
async fn checkpoint_round(
    store: &Store,
    mode: CheckpointMode,
) -> Result<Option<(Checkpointed, u32)>, StoreError> {
    let Some(mut done) = store.checkpoint_wal(mode).await? else {
        return Ok(None);
    };
    let mut passes = 1;
    while passes <= CATCH_UP_PASSES && !done.busy {
        let Some(next) = store.checkpoint_wal(CheckpointMode::Passive).await? else {
            break;
        };
        passes += 1;
        let caught_up = next.wal_frames == done.wal_frames && next.copied_frames == next.wal_frames;
        done = Checkpointed {
            busy: next.busy,
            ..next
        };
        if caught_up {
            break;
        }
    }
    Ok(Some((done, passes)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_database::{Backend, TestDatabase};

    /// `count` transactions of about two pages each, on the history
    /// writer's connection, back to back.
    async fn write_on_history(store: &Store, count: usize) {
        let super::Backend::Sqlite(history) = &store.history else {
            panic!("an SQLite store")
        };
        sqlx::query("CREATE TABLE IF NOT EXISTS filler (bytes BLOB)")
            .execute(history)
            .await
            .unwrap();
        for _ in 0..count {
            sqlx::query("INSERT INTO filler VALUES (randomblob(6000))")
                .execute(history)
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn the_history_writer_never_checkpoints_and_a_passive_checkpoint_restarts_the_wal() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}/h.db", dir.path().display()))
            .await
            .unwrap();
        let (super::Backend::Sqlite(history), super::Backend::Sqlite(writer)) =
            (&store.history, &store.writer)
        else {
            panic!("an SQLite store")
        };
        let autocheckpoint = |pool| async move {
            sqlx::query_scalar::<_, i64>("PRAGMA wal_autocheckpoint")
                .fetch_one(pool)
                .await
                .unwrap()
        };
        assert_eq!(autocheckpoint(history).await, 0);
        assert_eq!(autocheckpoint(writer).await, 4000);

        // Past SQLite's default of 1,000 pages: nothing checkpointed them.
        write_on_history(&store, 600).await;
        let done = store
            .checkpoint_wal(CheckpointMode::Passive)
            .await
            .unwrap()
            .unwrap();
        assert!(done.wal_frames > 1_000, "{done:?}");
        assert_eq!((done.copied_frames, done.busy), (done.wal_frames, false));

        // The next commit starts the WAL over from its beginning.
        write_on_history(&store, 1).await;
        let after = store
            .checkpoint_wal(CheckpointMode::Passive)
            .await
            .unwrap()
            .unwrap();
        assert!(after.wal_frames < 10, "{after:?}");
        store.close().await;
    }

    #[tokio::test]
    async fn the_checkpointer_keeps_the_wal_short_while_history_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}/h.db", dir.path().display()))
            .await
            .unwrap();
        let stop = CancellationToken::new();
        let checkpointer = tokio::spawn(keep_wal_short(
            store.clone(),
            Duration::from_millis(20),
            stop.clone(),
        ));
        // Batches a few milliseconds apart, as the history writer commits.
        for _ in 0..300 {
            write_on_history(&store, 5).await;
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        stop.cancel();
        checkpointer.await.unwrap();
        let left = store
            .checkpoint_wal(CheckpointMode::Passive)
            .await
            .unwrap()
            .unwrap();
        // 1,500 transactions wrote over 3,000 frames; the WAL was started
        // over along the way.
        assert!(left.wal_frames < 1_500, "{left:?}");
        store.close().await;
    }

    #[test]
    fn a_wal_past_the_limit_gets_one_checkpoint_that_waits_for_the_writer() {
        let done = |wal_frames, busy| Checkpointed {
            wal_frames,
            copied_frames: 0,
            busy,
        };
        use CheckpointMode::{Passive, Restart};
        assert_eq!(next_mode(Passive, done(3_000, false)), Passive);
        assert_eq!(
            next_mode(Passive, done(WAL_RESTART_FRAMES + 1, false)),
            Restart
        );
        assert_eq!(
            next_mode(Restart, done(WAL_RESTART_FRAMES + 1, false)),
            Passive
        );
        assert_eq!(
            next_mode(Restart, done(WAL_RESTART_FRAMES + 1, true)),
            Restart
        );
        assert_eq!(next_mode(Restart, done(100, true)), Passive);
    }

    /// On PostgreSQL there is no WAL of ours: `None`, and the checkpointer
    /// returns at once; on SQLite, a checkpoint.
    async fn only_sqlite_has_a_wal_to_checkpoint(database: &TestDatabase) {
        let done = database
            .store
            .checkpoint_wal(CheckpointMode::Passive)
            .await
            .unwrap();
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
