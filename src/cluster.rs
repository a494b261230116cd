//! Several bridges on one PostgreSQL database (`product.md` §7.6): the
//! coordinator decides, with the database's leases (`store/cluster.rs`),
//! which agents this bridge polls, and hands agents over when bridges join,
//! leave or die.
//!
//! Every `bridge.takeover_after / 6` it runs one coordination step
//! ([`Store::cluster_tick`]) with leases of `takeover_after × 2/3`, so a
//! dead bridge's agents are taken within `takeover_after`:
//! - agents gained are resumed from history ([`Store::take_over`]: a clean
//!   hand-over goes on, the silence of a dead owner is `unknown`), shown in
//!   [`LatestStates`] (so the publisher publishes their retained state) and
//!   then polled;
//! - agents another bridge should have are no longer polled at once, kept
//!   one more step (so what the writer holds for them commits under the
//!   lease) and released by the next step;
//! - agents lost behind our back (the history writer was fenced, or a step
//!   shows another bridge holds them) are no longer polled or shown.
//!
//! When coordination fails (the database is away) for as long as a lease,
//! this bridge stops polling everything: its leases expire then and another
//! bridge may take its agents. The history writer's fencing check is the
//! safety net underneath: it never writes for an agent whose lease it does
//! not hold.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::clock::Clock;
use crate::latest::LatestStates;
use crate::metrics::{ClusterView, Metrics};
use crate::model::AgentId;
use crate::poller::PollerControl;
use crate::store::{ClusterTick, Handover, Store};

/// The timings derived from `bridge.takeover_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// How long a lease lasts unless renewed.
    pub lease: Duration,
    /// How often leases are renewed.
    pub tick: Duration,
}

impl Timings {
    /// A lease of ⅔ of `takeover_after`, renewed every ⅙: a bridge that dies
    /// just after renewing is taken over after the lease plus at most one
    /// tick of the survivors, ⅚ of `takeover_after`.
    pub fn from_takeover(takeover_after: Duration) -> Self {
        Self {
            lease: takeover_after * 2 / 3,
            tick: takeover_after / 6,
        }
    }

    /// The lease in ms.
    pub fn lease_ms(&self) -> i64 {
        i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX)
    }
}

/// Decides which agents this bridge polls. Build with
/// [`Coordinator::new`], then `tokio::spawn(coordinator.run(shutdown))`.
pub struct Coordinator {
    /// The shared database.
    store: Store,
    /// This bridge's id.
    me: String,
    /// Every configured agent with its display name.
    agents: Vec<(AgentId, String)>,
    /// Lease and tick.
    timings: Timings,
    /// Orders to the poller.
    poller: mpsc::Sender<PollerControl>,
    /// What is shown and published.
    latest: LatestStates,
    /// Agents the history writer was fenced off.
    fenced: mpsc::Receiver<Vec<AgentId>>,
    /// The wall clock, for take-over times.
    clock: Clock,
    /// Where the view goes (`/metrics`, `/readyz`).
    metrics: Arc<Metrics>,
    /// Agents this bridge polls.
    owned: BTreeSet<AgentId>,
    /// Agents leased but not yet resumed (a take-over failed), and how they
    /// came.
    pending: HashMap<AgentId, Handover>,
    /// Agents to release at the next step.
    releasing: Vec<AgentId>,
}

impl Coordinator {
    /// A coordinator for bridge `me` over `agents`.
    #[allow(clippy::too_many_arguments)] // The parts it connects.
    pub fn new(
        store: Store,
        me: String,
        agents: Vec<(AgentId, String)>,
        timings: Timings,
        poller: mpsc::Sender<PollerControl>,
        latest: LatestStates,
        fenced: mpsc::Receiver<Vec<AgentId>>,
        clock: Clock,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            store,
            me,
            agents,
            timings,
            poller,
            latest,
            fenced,
            clock,
            metrics,
            owned: BTreeSet::new(),
            pending: HashMap::new(),
            releasing: Vec::new(),
        }
    }

    /// Coordinates until `shutdown`; then stops polling (the caller leaves
    /// the cluster once the history writer has committed what waits).
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(self.timings.tick);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // When the leases held run out, as far as this bridge can tell (a
        // step's start is before the database's clock read in it).
        let mut leases_until: Option<Instant> = None;
        let ids: Vec<AgentId> = self.agents.iter().map(|(id, _)| id.clone()).collect();
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(lost) = self.fenced.recv() => self.lose(lost, "taken by another bridge").await,
                _ = ticks.tick() => {
                    let started = Instant::now();
                    if leases_until.is_some_and(|until| started >= until) {
                        // This bridge was stopped or starved past its
                        // leases (SIGSTOP, a stalled host): another bridge
                        // may have its agents by now. Stop first, then ask.
                        leases_until = None;
                        self.lose_everything("leases expired while this bridge was not running").await;
                    }
                    let step = self
                        .store
                        .cluster_tick(&self.me, &ids, self.timings.lease_ms(), &self.releasing)
                        .await;
                    match step {
                        Ok(tick) => {
                            leases_until = Some(started + self.timings.lease);
                            self.apply(tick).await;
                        }
                        Err(error) => {
                            warn!(%error, "cannot coordinate with the other bridges; retrying");
                            if leases_until.is_some_and(|until| Instant::now() >= until) {
                                leases_until = None;
                                self.lose_everything("leases expired while the database was unreachable").await;
                                self.publish_view(Vec::new(), false);
                            }
                        }
                    }
                }
            }
        }
        let all: Vec<AgentId> = self.owned.iter().cloned().collect();
        let _ = self.poller.send(PollerControl::Lost(all)).await;
    }

    /// Applies one coordination step.
    async fn apply(&mut self, tick: ClusterTick) {
        // Released by this step: what the writer held for them committed
        // under the lease meanwhile; another bridge shows them now.
        let released = std::mem::replace(&mut self.releasing, tick.to_release.clone());
        self.latest.remove(&released);
        let held: BTreeSet<&AgentId> = tick.owned.iter().chain(&tick.to_release).collect();
        let gone: Vec<AgentId> = self
            .owned
            .iter()
            .filter(|agent| !held.contains(agent))
            .cloned()
            .collect();
        self.pending.retain(|agent, _| held.contains(agent));
        if !gone.is_empty() {
            self.lose(gone, "held by another bridge").await;
        }
        // To hand over: no longer polled now, still shown until released.
        let moving = self.stop_polling(tick.to_release.clone()).await;
        if !moving.is_empty() {
            info!(
                agents = moving.len(),
                live = tick.live.len(),
                "handing agents over to another bridge"
            );
        }
        for (agent, handover) in &tick.gained {
            self.pending.insert(agent.clone(), *handover);
        }
        // Leased but never resumed (a take-over failed earlier): retried.
        for agent in &tick.owned {
            if !self.owned.contains(agent) && !self.pending.contains_key(agent) {
                self.pending.insert(
                    agent.clone(),
                    Handover::Expired {
                        owner_alive: tick.now_ms - self.timings.lease_ms(),
                    },
                );
            }
        }
        if !self.pending.is_empty() {
            self.take_over().await;
        }
        self.publish_view(tick.shares, true);
    }

    /// Resumes the pending agents from history and starts polling them.
    async fn take_over(&mut self) {
        let names: HashMap<&AgentId, &String> =
            self.agents.iter().map(|(id, name)| (id, name)).collect();
        let agents: Vec<(AgentId, String)> = self
            .pending
            .keys()
            .filter_map(|agent| {
                names
                    .get(agent)
                    .map(|name| (agent.clone(), (*name).clone()))
            })
            .collect();
        match self
            .store
            .take_over(&agents, self.clock.now(), &self.pending)
            .await
        {
            Ok(states) => {
                let expired = self
                    .pending
                    .values()
                    .filter(|handover| matches!(handover, Handover::Expired { .. }))
                    .count();
                info!(
                    agents = states.len(),
                    from_silent_bridges = expired,
                    "agents taken over"
                );
                self.pending.clear();
                for state in &states {
                    self.owned.insert(state.agent.clone());
                    // Nothing is stamped before the history already stored
                    // (another host's clock may be ahead of this one).
                    self.clock.raise_to(state.since.max(state.updated));
                }
                self.latest.commit(states.clone(), Vec::new());
                let _ = self.poller.send(PollerControl::Gained(states)).await;
            }
            Err(error) => {
                warn!(%error, agents = agents.len(), "cannot take agents over; retrying at the next step");
            }
        }
    }

    /// Stops polling and showing every agent (the leases ran out).
    async fn lose_everything(&mut self, why: &'static str) {
        let all: Vec<AgentId> = self.owned.iter().cloned().collect();
        let releasing = std::mem::take(&mut self.releasing);
        self.latest.remove(&releasing);
        self.pending.clear();
        self.lose(all, why).await;
    }

    /// Stops polling and showing `agents` (another bridge holds them).
    async fn lose(&mut self, agents: Vec<AgentId>, why: &'static str) {
        let agents = self.stop_polling(agents).await;
        if !agents.is_empty() {
            info!(agents = agents.len(), why, "agents no longer polled here");
            self.latest.remove(&agents);
        }
    }

    /// Stops polling those of `agents` this bridge polls; which they were.
    async fn stop_polling(&mut self, agents: Vec<AgentId>) -> Vec<AgentId> {
        let agents: Vec<AgentId> = agents
            .into_iter()
            .filter(|agent| self.owned.remove(agent))
            .collect();
        if !agents.is_empty() {
            let _ = self.poller.send(PollerControl::Lost(agents.clone())).await;
        }
        agents
    }

    /// Publishes the view for `/metrics` and `/readyz`.
    fn publish_view(&self, shares: Vec<(String, usize)>, coordinated: bool) {
        self.metrics.set_cluster_view(ClusterView {
            bridge: self.me.clone(),
            shares,
            owned: self.owned.len(),
            coordinated,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_bridge_is_taken_over_within_the_bound() {
        let timings = Timings::from_takeover(Duration::from_secs(12));
        assert_eq!(timings.lease, Duration::from_secs(8));
        assert_eq!(timings.tick, Duration::from_secs(2));
        assert!(timings.lease + timings.tick <= Duration::from_secs(12));
        assert_eq!(timings.lease_ms(), 8_000);
    }
}
