//! Queue membership as state (`product.md` §7.3): every allowed queue's
//! members, read from TRiNG every `commands.membership_interval` and right
//! after every add, remove or clean the bridge ran, into
//! [`LatestStates`] (the publisher turns them into the retained
//! `<base>/queue/<queue>/members` and `<base>/agent/<agent>/queues` topics;
//! the wallboard and the Home Assistant queue switches read those).
//! Changes made elsewhere (the CLI, TRiNG's own portal) are seen at the next
//! refresh.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::latest::LatestStates;
use crate::model::{AgentId, QueueMembers};
use crate::tring::TringClient;

/// Queues whose refresh was asked for (by the dispatcher after a change),
/// and a wake-up for the membership task. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct RefreshRequests {
    /// The queues and the wake-up.
    inner: Arc<(Mutex<BTreeSet<String>>, Notify)>,
}

impl RefreshRequests {
    /// Asks for `queue` to be read again soon.
    pub fn refresh(&self, queue: &str) {
        let (queues, notify) = &*self.inner;
        queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(queue.to_owned());
        notify.notify_one();
    }

    fn take(&self) -> BTreeSet<String> {
        let (queues, _) = &*self.inner;
        std::mem::take(&mut *queues.lock().unwrap_or_else(|e| e.into_inner()))
    }

    async fn requested(&self) {
        self.inner.1.notified().await;
    }
}

/// The membership task.
pub struct MembershipTask {
    /// TRiNG.
    client: TringClient,
    /// The allowed queues.
    queues: Vec<String>,
    /// The configured agents with a queue extension.
    agents: Vec<(AgentId, String)>,
    /// Where the members go.
    latest: LatestStates,
    /// How often every queue is read.
    interval: Duration,
    /// Refreshes asked for.
    requests: RefreshRequests,
    /// The wall clock.
    clock: Clock,
}

impl MembershipTask {
    /// A task reading `queues` every `interval`.
    pub fn new(
        client: TringClient,
        queues: Vec<String>,
        agents: Vec<(AgentId, String)>,
        latest: LatestStates,
        interval: Duration,
        requests: RefreshRequests,
        clock: Clock,
    ) -> Self {
        Self {
            client,
            queues,
            agents,
            latest,
            interval,
            requests,
            clock,
        }
    }

    /// Reads every queue at once, then on every tick and request, until
    /// `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        if self.queues.is_empty() {
            return;
        }
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failures = 0u32;
        loop {
            let queues: Vec<String> = tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => self.queues.clone(),
                () = self.requests.requested() => self.requests.take().into_iter().collect(),
            };
            for queue in queues {
                let read = tokio::select! {
                    () = shutdown.cancelled() => return,
                    read = self.client.list(&queue) => read,
                };
                match read {
                    Ok(members) => {
                        failures = 0;
                        self.latest.set_queue(self.members(&queue, members));
                    }
                    Err(error) => {
                        failures += 1;
                        if failures.is_power_of_two() {
                            tracing::warn!(%queue, %error, failures, "cannot read a queue's members from TRiNG; the last known ones stay published");
                        }
                    }
                }
            }
        }
    }

    /// The published members of a queue from TRiNG's list.
    fn members(&self, queue: &str, mut members: Vec<String>) -> QueueMembers {
        members.sort();
        members.dedup();
        let agents = self
            .agents
            .iter()
            .filter(|(_, extension)| members.binary_search(extension).is_ok())
            .map(|(agent, _)| agent.clone())
            .collect();
        QueueMembers {
            queue: queue.to_owned(),
            members,
            agents,
            updated: self.clock.now(),
        }
    }
}
