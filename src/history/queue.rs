//! The hand-over between the poller and the history writer: the
//! [`PendingChanges`] behind a mutex, and a wake-up for the writer.
//!
//! The poller pushes and never waits (the lock is held for a map insert);
//! the writer wakes once for any number of changes and takes a whole batch
//! at a time, so a burst costs one wake-up, not one per change.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::pending::{PendingChanges, Pushed};
use crate::model::Change;

/// Cheaply cloned handle to the waiting changes.
#[derive(Debug, Clone, Default)]
pub struct ChangeQueue {
    /// The changes and the writer's wake-up.
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The waiting changes.
    pending: Mutex<PendingChanges>,
    /// Wakes the writer.
    notify: Notify,
}

impl ChangeQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, PendingChanges> {
        // A poisoned lock means a holder panicked between map operations;
        // the queue is still valid.
        self.inner
            .pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a change and wakes the writer.
    pub fn push(&self, change: Change) -> Pushed {
        let pushed = self.push_held(change);
        self.release();
        pushed
    }

    /// Adds a change without waking the writer: the caller gathers the
    /// changes of a burst and [`release`](Self::release)s them together, so
    /// they go into one commit.
    pub fn push_held(&self, change: Change) -> Pushed {
        self.lock().push(change)
    }

    /// Wakes the writer for the changes pushed so far.
    pub fn release(&self) {
        self.inner.notify.notify_one();
    }

    /// Takes up to `max` changes, oldest first.
    pub fn take(&self, max: usize) -> Vec<Change> {
        self.lock().take(max)
    }

    /// Waits until a change was pushed since the last wake-up.
    pub async fn pushed(&self) {
        self.inner.notify.notified().await;
    }

    /// How many changes wait.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when none wait.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Transitions merged away since the start.
    pub fn merged(&self) -> u64 {
        self.lock().merged()
    }
}
