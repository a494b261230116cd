//! The tracker task: feeds poll results to the pure [`Tracker`] and forwards
//! the changes it finds to the history writer.
//!
//! It must never make the poller wait on the database: when the history
//! queue is full, changes spill into a local queue (in order) and are sent
//! as room appears. Nothing is dropped; the spill depth is exported.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::metrics::Metrics;
use crate::model::Change;
use crate::poller::PollResult;
use crate::status::Tracker;

/// The tracker and its channels.
pub struct TrackerTask {
    /// The pure status core.
    tracker: Tracker,
    /// Poll results from the poller.
    polls: mpsc::Receiver<PollResult>,
    /// Changes to the history writer.
    history: mpsc::Sender<Change>,
    /// Changes the history queue had no room for yet, oldest first.
    spill: VecDeque<Change>,
    /// Shared counters.
    metrics: Arc<Metrics>,
}

impl TrackerTask {
    /// A task around `tracker`.
    pub fn new(
        tracker: Tracker,
        polls: mpsc::Receiver<PollResult>,
        history: mpsc::Sender<Change>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            tracker,
            polls,
            history,
            spill: VecDeque::new(),
            metrics,
        }
    }

    /// Runs until the poller's channel closes, then hands every remaining
    /// change to the history writer and returns.
    pub async fn run(mut self) {
        loop {
            // A clone (one atomic increment) so the reserve future does not
            // borrow `self` while a poll result is applied.
            let history = self.history.clone();
            tokio::select! {
                biased;
                permit = history.reserve(), if !self.spill.is_empty() => {
                    let Ok(permit) = permit else { return };
                    if let Some(change) = self.spill.pop_front() {
                        permit.send(change);
                    }
                }
                result = self.polls.recv() => match result {
                    Some(result) => self.apply(result),
                    None => break,
                },
            }
            self.report_depth();
        }
        while let Some(change) = self.spill.pop_front() {
            if self.history.send(change).await.is_err() {
                return;
            }
        }
    }

    fn apply(&mut self, result: PollResult) {
        let Some(change) = self
            .tracker
            .observe(&result.agent, result.observation, result.at)
        else {
            return;
        };
        // Transitions are counted by the history writer, once committed.
        if change.previous.is_some() {
            tracing::debug!(
                agent = %change.state.agent,
                to = %change.state.status,
                "transition"
            );
        }
        if !self.spill.is_empty() {
            self.spill.push_back(change);
            return;
        }
        if let Err(mpsc::error::TrySendError::Full(change)) = self.history.try_send(change) {
            self.spill.push_back(change);
        }
    }

    fn report_depth(&self) {
        Metrics::set(&self.metrics.history_spill_depth, self.spill.len() as u64);
    }
}
