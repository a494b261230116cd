//! The history writer task: the single writer of the history store and the
//! source of truth for `seq`.
//!
//! It takes the tracker's [`Change`]s, gives every transition the next
//! bridge-wide `seq`, commits them in batches (one transaction each), and
//! only then updates the [`LatestStates`] and hands each change to the MQTT
//! publisher as [`Committed`]. A batch that fails to commit is retried with
//! backoff until it succeeds: a transition is never dropped or published
//! before it is stored. It does no MQTT and no polling, and never blocks the
//! tracker beyond the bounded channel it reads.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::latest::LatestStates;
use crate::metrics::Metrics;
use crate::model::{AgentId, Change, Committed};

use crate::store::Store;

/// The most changes committed in one transaction. A commit costs one fsync
/// (synchronous=FULL) whatever its size, so bursts are written in large
/// batches; 4096 keeps one batch's SQL parameters and memory small (about a
/// megabyte) and a commit in the low milliseconds, so the first change of a
/// burst is not held back long.
pub const BATCH_MAX: usize = 4096;

/// How often the heartbeat is written when nothing else is committed (every
/// commit writes it too). Resume ends open intervals at the last heartbeat,
/// so this bounds how much of a crash's downtime is counted in the old
/// statuses instead of `unknown`.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// The first wait before retrying a failed commit; doubles on each failure.
const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(50);

/// The longest wait between retries of a failed commit.
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// After shutdown is requested, how long a failing commit is still retried
/// before the writer gives up and exits (the process is ending; what is not
/// stored by then cannot be stored).
const SHUTDOWN_RETRY_LIMIT: Duration = Duration::from_secs(10);

/// The history writer task's state. Build it with [`HistoryWriter::new`] and
/// spawn [`HistoryWriter::run`].
#[derive(Debug)]
pub struct HistoryWriter {
    /// Where history is committed.
    store: Store,
    /// Changes from the tracker.
    changes: mpsc::Receiver<Change>,
    /// Committed changes to the MQTT publisher.
    committed: mpsc::Sender<Committed>,
    /// The last seq given to a transition (from the resume, then ours).
    last_seq: u64,
    /// The seq of each agent's latest transition, for non-transition changes.
    agent_seqs: HashMap<AgentId, u64>,
    /// Latest committed state per agent, for the HTTP server.
    latest: LatestStates,
    /// Shared counters.
    metrics: Arc<Metrics>,
    /// When the heartbeat was last stored.
    last_heartbeat: Option<Instant>,
    /// True once the publisher's channel was found closed (logged once).
    publisher_gone: bool,
    /// The MQTT connection's acknowledged-up-to mark, stored at most once
    /// per [`HEARTBEAT_EVERY`] (see `store::delivery`).
    acked: Option<watch::Receiver<u64>>,
    /// When the mark was last stored.
    last_acked_store: Option<Instant>,
}

impl HistoryWriter {
    /// A writer continuing after `last_seq` (from [`Store::resume`]).
    pub fn new(
        store: Store,
        changes: mpsc::Receiver<Change>,
        committed: mpsc::Sender<Committed>,
        last_seq: u64,
        latest: LatestStates,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            store,
            changes,
            committed,
            last_seq,
            agent_seqs: HashMap::new(),
            latest,
            metrics,
            last_heartbeat: None,
            publisher_gone: false,
            acked: None,
            last_acked_store: None,
        }
    }

    /// Also stores the MQTT connection's acknowledged-up-to mark.
    pub fn with_acked(mut self, acked: watch::Receiver<u64>) -> Self {
        self.acked = Some(acked);
        self
    }

    /// Stores the acknowledged-up-to mark when it changed, at most once per
    /// [`HEARTBEAT_EVERY`] (or now, with `force`). A failure is logged and
    /// retried next time: the mark only decides what is resent after a
    /// restart, and resending too much is harmless.
    async fn store_acked(&mut self, force: bool) {
        let due = force
            || self
                .last_acked_store
                .is_none_or(|at| at.elapsed() >= HEARTBEAT_EVERY);
        let Some(acked) = self.acked.as_mut() else {
            return;
        };
        if !due || !acked.has_changed().unwrap_or(false) {
            return;
        }
        let mark = *acked.borrow_and_update();
        self.last_acked_store = Some(Instant::now());
        if let Err(error) = self.store.store_acked_seq(mark).await {
            tracing::warn!(%error, "cannot store the acknowledged event mark");
        }
    }

    /// Runs until `shutdown` is cancelled or the tracker's channel closes;
    /// then commits everything still queued, writes a final heartbeat and
    /// returns.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut heartbeat_tick = tokio::time::interval(HEARTBEAT_EVERY);
        heartbeat_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let first = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                change = self.changes.recv() => match change {
                    Some(change) => change,
                    None => break,
                },
                _ = heartbeat_tick.tick() => {
                    self.heartbeat_if_due().await;
                    self.store_acked(false).await;
                    continue;
                }
            };
            let batch = self.take_batch(first);
            if !self.commit(batch, &shutdown).await {
                return;
            }
            self.store_acked(false).await;
        }
        tracing::debug!("history writer stopping; committing queued changes");
        while let Ok(first) = self.changes.try_recv() {
            let batch = self.take_batch(first);
            if !self.commit(batch, &shutdown).await {
                return;
            }
        }
        self.store_acked(true).await;
        if let Err(error) = self.store.heartbeat(Utc::now()).await {
            Metrics::inc(&self.metrics.history_errors);
            tracing::error!(error = %error, "cannot store the final history heartbeat");
        }
        tracing::debug!(last_seq = self.last_seq, "history writer stopped");
    }

    /// `first` and up to `BATCH_MAX - 1` more changes already queued.
    fn take_batch(&mut self, first: Change) -> Vec<Change> {
        let mut batch = Vec::with_capacity(self.changes.len().min(BATCH_MAX - 1) + 1);
        batch.push(first);
        while batch.len() < BATCH_MAX {
            match self.changes.try_recv() {
                Ok(change) => batch.push(change),
                Err(_) => break,
            }
        }
        Metrics::set(&self.metrics.history_queue_depth, self.changes.len() as u64);
        batch
    }

    /// Gives each transition the next seq and every other change its agent's
    /// last seq.
    fn assign_seqs(&mut self, batch: &mut [Change]) {
        for change in batch {
            let agent = &change.state.agent;
            if change.previous.is_some() {
                self.last_seq += 1;
                change.state.seq = self.last_seq;
                self.agent_seqs.insert(agent.clone(), self.last_seq);
            } else if let Some(&seq) = self.agent_seqs.get(agent) {
                change.state.seq = seq;
            }
        }
    }

    /// Commits one batch, retrying until it is stored, then updates the
    /// latest states and hands it to the publisher. Returns false only when
    /// shutdown was requested and the database kept failing past
    /// `SHUTDOWN_RETRY_LIMIT`.
    async fn commit(&mut self, mut batch: Vec<Change>, shutdown: &CancellationToken) -> bool {
        self.assign_seqs(&mut batch);
        let transitions = batch
            .iter()
            .filter(|change| change.previous.is_some())
            .count();
        let batch_max_seq = (transitions > 0).then_some(self.last_seq);
        let mut backoff = RETRY_BACKOFF_MIN;
        let mut shutdown_deadline: Option<Instant> = None;
        let mut failed = false;
        loop {
            if failed && self.landed_despite_error(batch_max_seq).await {
                break;
            }
            match self.store.record_changes(&batch, Some(Utc::now())).await {
                Ok(()) => break,
                Err(error) => {
                    failed = true;
                    Metrics::inc(&self.metrics.history_errors);
                    tracing::error!(
                        error = %error,
                        changes = batch.len(),
                        retry_in_ms = backoff.as_millis() as u64,
                        "cannot record a history batch; it is kept and retried"
                    );
                }
            }
            if shutdown.is_cancelled() {
                let deadline =
                    *shutdown_deadline.get_or_insert_with(|| Instant::now() + SHUTDOWN_RETRY_LIMIT);
                if Instant::now() >= deadline {
                    tracing::error!(
                        changes = batch.len(),
                        "shutting down with the history database failing; these changes are not recorded"
                    );
                    return false;
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = shutdown.cancelled(), if shutdown_deadline.is_none() => {}
            }
            backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
        }
        self.last_heartbeat = Some(Instant::now());
        self.metrics
            .history_records
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.metrics
            .transitions
            .fetch_add(transitions as u64, Ordering::Relaxed);
        for change in &batch {
            self.latest.update(change.state.clone());
        }
        for change in batch {
            let event = change.event(change.state.seq);
            let committed = Committed {
                state: change.state,
                event,
            };
            if self.committed.send(committed).await.is_err() && !self.publisher_gone {
                self.publisher_gone = true;
                tracing::warn!(
                    "the mqtt publisher has stopped; committed changes are not published"
                );
            }
        }
        true
    }

    /// After a failed commit: true when the batch was stored anyway (the
    /// commit landed but its answer was lost, e.g. a PostgreSQL connection
    /// dropped after COMMIT), known from `last_seq` having reached the
    /// batch's highest seq. Retrying would store its rows twice.
    async fn landed_despite_error(&self, batch_max_seq: Option<u64>) -> bool {
        let Some(batch_max_seq) = batch_max_seq else {
            return false;
        };
        matches!(self.store.last_seq().await, Ok(stored) if stored >= batch_max_seq)
    }

    /// Stores the heartbeat when none was stored for `HEARTBEAT_EVERY`.
    async fn heartbeat_if_due(&mut self) {
        let due = self
            .last_heartbeat
            .is_none_or(|at| at.elapsed() >= HEARTBEAT_EVERY);
        if !due {
            return;
        }
        match self.store.heartbeat(Utc::now()).await {
            Ok(()) => self.last_heartbeat = Some(Instant::now()),
            Err(error) => {
                Metrics::inc(&self.metrics.history_errors);
                tracing::error!(error = %error, "cannot store the history heartbeat");
            }
        }
    }
}
