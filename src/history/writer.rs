//! The history writer task: the single writer of the history store and the
//! source of truth for `seq`.
//!
//! It takes the tracker's [`Change`]s from the [`ChangeQueue`] a batch at a
//! time, gives every transition the next bridge-wide `seq`, commits the
//! batch in one transaction, and only then records it in [`LatestStates`]
//! (which the MQTT publisher, the HTTP API and the wallboard read). A batch
//! that fails to commit is kept and retried with backoff while new changes
//! wait, folded per agent, in the queue: a transition is never published
//! before it is stored.
//!
//! On shutdown it commits what is still waiting, then closes every open
//! interval at the stop time, within `bridge.shutdown_timeout` whatever the
//! database does; what it could not store by then it logs. It does no MQTT
//! and no polling.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::queue::ChangeQueue;
use crate::clock::Clock;
use crate::latest::LatestStates;
use crate::metrics::Metrics;
use crate::model::{AgentId, Change};
use crate::store::{assign_seqs, CommitOptions, CommitOutcome, Store};

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

/// A writer's part among several bridges on one database.
#[derive(Debug, Clone)]
pub struct ClusterMember {
    /// How long a lease lasts (ms): a stop closes the history only when no
    /// other bridge renewed its heartbeat within it.
    pub lease_ms: i64,
    /// Where agents lost to fencing are reported (the coordinator stops
    /// polling them at once; a report dropped because the channel is full
    /// is found by its next tick, which reads the leases).
    pub lost: tokio::sync::mpsc::Sender<Vec<AgentId>>,
}

/// The history writer task's state. Build it with [`HistoryWriter::new`] and
/// spawn [`HistoryWriter::run`].
#[derive(Debug)]
pub struct HistoryWriter {
    /// Where history is committed.
    store: Store,
    /// Changes from the poller.
    changes: ChangeQueue,
    /// The highest seq this writer committed (or resumed from).
    last_seq: u64,
    /// This bridge's id (stored with its transitions).
    bridge: String,
    /// Several bridges on one database: every batch checks the agent
    /// leases, and a stop leaves the others instead of closing history.
    cluster: Option<ClusterMember>,
    /// The seq of each agent's latest transition, for non-transition changes.
    agent_seqs: HashMap<AgentId, u64>,
    /// What is committed, for the publisher and the HTTP API.
    latest: LatestStates,
    /// Shared counters.
    metrics: Arc<Metrics>,
    /// The wall clock (monotonic) for heartbeats and the stop time.
    clock: Clock,
    /// How long shutdown may take.
    shutdown_timeout: Duration,
    /// Cancelled to stop.
    stop: CancellationToken,
    /// When shutdown must be over (set when the stop is first seen).
    stop_deadline: Option<Instant>,
    /// When the heartbeat was last stored.
    last_heartbeat: Option<Instant>,
    /// The MQTT publisher's acknowledged-up-to mark, stored at most once
    /// per [`HEARTBEAT_EVERY`] (see `store::delivery`).
    acked: Option<watch::Receiver<u64>>,
    /// When the mark was last stored.
    last_acked_store: Option<Instant>,
}

impl HistoryWriter {
    /// A writer continuing after `last_seq` (from [`Store::resume`]).
    pub fn new(
        store: Store,
        changes: ChangeQueue,
        last_seq: u64,
        latest: LatestStates,
        metrics: Arc<Metrics>,
        clock: Clock,
        shutdown_timeout: Duration,
    ) -> Self {
        Self {
            store,
            changes,
            last_seq,
            bridge: "pbx2mqtt".to_owned(),
            cluster: None,
            agent_seqs: HashMap::new(),
            latest,
            metrics,
            clock,
            shutdown_timeout,
            stop: CancellationToken::new(),
            stop_deadline: None,
            last_heartbeat: None,
            acked: None,
            last_acked_store: None,
        }
    }

    /// Commits as `bridge`, one of several on the database when `cluster`
    /// is given.
    pub fn as_bridge(mut self, bridge: &str, cluster: Option<ClusterMember>) -> Self {
        self.bridge = bridge.to_owned();
        self.cluster = cluster;
        self
    }

    /// Also stores the MQTT publisher's acknowledged-up-to mark.
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
        if let Err(error) = self.store.store_acked_seq(&self.bridge, mark).await {
            tracing::warn!(%error, "cannot store the acknowledged event mark");
        }
    }

    /// Runs until `shutdown` is cancelled; then commits what waits and
    /// closes the history (see the module doc) and returns.
    pub async fn run(mut self, shutdown: CancellationToken) {
        self.stop = shutdown.clone();
        let mut heartbeat_tick = tokio::time::interval(HEARTBEAT_EVERY);
        heartbeat_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = self.changes.pushed() => {
                    self.commit_waiting().await;
                    self.store_acked(false).await;
                }
                _ = heartbeat_tick.tick() => {
                    self.heartbeat_if_due().await;
                    self.store_acked(false).await;
                }
            }
        }
        let deadline = self.deadline().unwrap_or_else(Instant::now);
        tracing::debug!("history writer stopping; committing waiting changes");
        let stored = self.commit_waiting().await;
        let left = self.changes.len();
        if !stored || left > 0 {
            tracing::error!(
                changes = left.max(1),
                timeout_ms = self.shutdown_timeout.as_millis() as u64,
                "stopping with the history database failing: changes not recorded"
            );
        }
        self.store_acked(true).await;
        self.close_history(deadline).await;
        tracing::debug!(last_seq = self.last_seq, "history writer stopped");
    }

    /// When shutdown must be over; `None` while running.
    fn deadline(&mut self) -> Option<Instant> {
        if !self.stop.is_cancelled() {
            return None;
        }
        let timeout = self.shutdown_timeout;
        Some(
            *self
                .stop_deadline
                .get_or_insert_with(|| Instant::now() + timeout),
        )
    }

    /// Commits batches until nothing waits; once stopping, gives up at the
    /// shutdown deadline. False when it gave up.
    async fn commit_waiting(&mut self) -> bool {
        loop {
            let batch = self.changes.take(BATCH_MAX);
            Metrics::set(&self.metrics.history_queue_depth, self.changes.len() as u64);
            if batch.is_empty() {
                return true;
            }
            if !self.commit(batch).await {
                return false;
            }
        }
    }

    /// Commits one batch, retrying until it is stored, then records it in
    /// [`LatestStates`]. False only when stopping and the shutdown deadline
    /// passed first.
    async fn commit(&mut self, mut batch: Vec<Change>) -> bool {
        // Identifies the batch across retries (see `Store::batch_landed`).
        let batch_id: i64 = rand::random();
        let mut backoff = RETRY_BACKOFF_MIN;
        let mut failed = false;
        let first_seq = loop {
            if failed {
                // The last attempt may have been stored although its answer
                // was lost (a PostgreSQL connection dropped at COMMIT):
                // retrying would store its rows twice.
                if let Ok(Some(first_seq)) = self.store.batch_landed(&self.bridge, batch_id).await {
                    assign_seqs(&mut batch, first_seq);
                    self.metrics.set_history_failure(None);
                    break first_seq;
                }
            }
            let options = CommitOptions {
                bridge: &self.bridge,
                fenced: self.cluster.is_some(),
                batch_id,
                heartbeat_at: Some(self.clock.now()),
            };
            let started = Instant::now();
            match self.store.commit_changes(&mut batch, &options).await {
                Ok(CommitOutcome::Stored { first_seq }) => {
                    self.metrics
                        .history_batch_duration
                        .observe(started.elapsed());
                    // Whatever failed before (this batch, or one whose agents
                    // were then taken over and dropped) is over.
                    self.metrics.set_history_failure(None);
                    if failed {
                        tracing::info!(changes = batch.len(), "history recorded again");
                    }
                    break first_seq;
                }
                Ok(CommitOutcome::Fenced { lost }) => {
                    // Another bridge owns these agents now: their changes are
                    // its to record. The rest goes on at once. The database
                    // answered: an earlier failure is over.
                    self.metrics.set_history_failure(None);
                    tracing::warn!(
                        agents = lost.len(),
                        "agents taken over by another bridge; their waiting changes are dropped"
                    );
                    batch.retain(|change| !lost.contains(&change.state.agent));
                    if let Some(cluster) = &self.cluster {
                        // Never waits: see `ClusterMember::lost`.
                        let _ = cluster.lost.try_send(lost);
                    }
                    if batch.is_empty() {
                        return true;
                    }
                    continue;
                }
                Err(error) => {
                    failed = true;
                    Metrics::inc(&self.metrics.history_errors);
                    self.metrics.set_history_failure(Some(error.to_string()));
                    tracing::error!(
                        error = %error,
                        changes = batch.len(),
                        retry_in_ms = backoff.as_millis() as u64,
                        "cannot record a history batch; it is kept and retried"
                    );
                }
            }
            let wake = Instant::now() + backoff;
            if self.deadline().is_some_and(|deadline| wake >= deadline) {
                return false;
            }
            let stop = self.stop.clone();
            tokio::select! {
                () = tokio::time::sleep_until(wake) => {}
                // A stop shortens the wait to the shutdown deadline.
                () = stop.cancelled(), if self.stop_deadline.is_none() => {}
            }
            backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
        };
        let transitions = batch
            .iter()
            .filter(|change| change.previous.is_some())
            .count();
        if transitions > 0 {
            self.last_seq = self.last_seq.max(first_seq + transitions as u64 - 1);
        }
        for change in &mut batch {
            let agent = &change.state.agent;
            if change.previous.is_some() {
                self.agent_seqs.insert(agent.clone(), change.state.seq);
            } else if let Some(&seq) = self.agent_seqs.get(agent) {
                change.state.seq = seq;
            }
        }
        self.last_heartbeat = Some(Instant::now());
        self.metrics
            .history_records
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.metrics
            .transitions
            .fetch_add(transitions as u64, Ordering::Relaxed);
        Metrics::set(
            &self.metrics.history_last_commit_ms,
            u64::try_from(self.clock.now().timestamp_millis()).unwrap_or(0),
        );
        let events = batch
            .iter()
            .filter_map(|change| change.event(change.state.seq))
            .collect();
        let states = batch.into_iter().map(|change| change.state).collect();
        self.latest.commit(states, events);
        true
    }

    /// Stores the heartbeat when none was stored for `HEARTBEAT_EVERY`.
    async fn heartbeat_if_due(&mut self) {
        let due = self
            .last_heartbeat
            .is_none_or(|at| at.elapsed() >= HEARTBEAT_EVERY);
        if !due {
            return;
        }
        match self.store.heartbeat(self.clock.now()).await {
            Ok(()) => {
                self.last_heartbeat = Some(Instant::now());
                Metrics::set(
                    &self.metrics.history_last_commit_ms,
                    u64::try_from(self.clock.now().timestamp_millis()).unwrap_or(0),
                );
            }
            Err(error) => {
                Metrics::inc(&self.metrics.history_errors);
                tracing::error!(error = %error, "cannot store the history heartbeat");
            }
        }
    }

    /// Ends every open interval at the stop time (the next start records
    /// the time the bridge was down as `unknown`), retrying until
    /// `deadline`.
    async fn close_history(&mut self, deadline: Instant) {
        let mut backoff = RETRY_BACKOFF_MIN;
        loop {
            let stop = self.clock.now();
            let Some(remaining) = deadline.checked_duration_since(Instant::now()) else {
                tracing::error!("stopping without closing the history: the database did not answer in time (the next start closes it at the last heartbeat)");
                return;
            };
            let closing = async {
                match &self.cluster {
                    None => self.store.close_history(stop).await,
                    // The others take its agents over and go on; the last
                    // bridge closes what it held.
                    Some(cluster) => {
                        self.store
                            .leave_cluster(&self.bridge, cluster.lease_ms, stop)
                            .await
                    }
                }
            };
            match tokio::time::timeout(remaining, closing).await {
                Ok(Ok(closed)) => {
                    tracing::info!(intervals = closed, "history closed at the stop time");
                    return;
                }
                Ok(Err(error)) => {
                    tracing::warn!(%error, "cannot close the history; retrying until the shutdown timeout");
                }
                Err(_) => {
                    // On SQLite's history thread a close handed over still
                    // runs to its end.
                    tracing::error!("stopping before the history was closed: the database did not answer in time (a close already handed over may still land; otherwise the next start closes it at the last heartbeat)");
                    return;
                }
            }
            tokio::time::sleep(backoff.min(deadline.saturating_duration_since(Instant::now())))
                .await;
            backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
        }
    }
}
