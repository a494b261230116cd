//! What the bridge knows now, after the last commit: every agent's latest
//! committed state, the recent transition events, and each allowed queue's
//! members. The history writer and the membership task write it; the MQTT
//! publisher, the HTTP API and the wallboard's stream read it.
//!
//! Readers that follow changes take a [`Subscription`]: it collects which
//! agents and queues changed since it last looked, so a slow reader (a
//! broker that is away, a browser on a phone) costs at most one entry per
//! agent and queue, however many changes it missed; it then reads the
//! current values. Transition events are kept in a bounded ring: a reader
//! that fell further behind reads them back from history
//! ([`crate::store::Store::events_after`]).
//!
//! It is written only after a commit, so it never shows a state history
//! lacks. Locks are held for a few map operations, never across an await.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tokio::sync::Notify;

use crate::model::{AgentId, AgentState, QueueMembers, TransitionEvent};

/// Transition events kept in memory for readers that are a little behind
/// (a broker reconnecting, a burst): a few seconds of a busy call center.
/// Older ones are read back from history.
pub const RECENT_EVENTS: usize = 8192;

/// Shared, cheaply cloned handle.
#[derive(Debug, Clone, Default)]
pub struct LatestStates {
    /// The shared data.
    inner: Arc<Mutex<Shared>>,
}

/// The data behind the lock.
#[derive(Debug, Default)]
struct Shared {
    /// Latest committed state per agent, ordered by id.
    states: BTreeMap<AgentId, AgentState>,
    /// Latest members per allowed queue, ordered by queue.
    queues: BTreeMap<String, QueueMembers>,
    /// The most recent committed events, by seq.
    events: VecDeque<TransitionEvent>,
    /// Every event with a seq at or above this is in `events` (or not
    /// committed yet).
    events_complete_from: u64,
    /// The highest seq committed.
    committed_seq: u64,
    /// Who follows changes.
    subscribers: Vec<Weak<Subscriber>>,
}

/// What a subscriber has not seen yet.
#[derive(Debug, Default)]
struct Unseen {
    /// Agents whose state changed.
    agents: BTreeSet<AgentId>,
    /// Queues whose members changed.
    queues: BTreeSet<String>,
}

/// One reader that follows changes.
#[derive(Debug, Default)]
struct Subscriber {
    /// What changed since it last looked.
    unseen: Mutex<Unseen>,
    /// Woken on every change.
    notify: Notify,
}

/// Events from a seq on, or why they are not here.
#[derive(Debug, Clone, PartialEq)]
pub enum RecentEvents {
    /// The events with a seq at or above the one asked for (possibly none).
    Here(Vec<TransitionEvent>),
    /// Some of them were dropped from memory: read them from history.
    InHistory,
}

/// A change follower's handle; dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    /// Its own record of what changed.
    subscriber: Arc<Subscriber>,
    /// Where the values are.
    latest: LatestStates,
}

/// What changed since a subscription last looked, with the current values.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Changes {
    /// The current state of every agent that changed.
    pub states: Vec<AgentState>,
    /// The current members of every queue that changed.
    pub queues: Vec<QueueMembers>,
}

impl Changes {
    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty() && self.queues.is_empty()
    }
}

/// Locks a mutex; a poisoned lock only means a holder panicked between map
/// operations, and the maps are still valid.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl LatestStates {
    /// Starts from the states resumed from history and the last seq there.
    pub fn new(states: impl IntoIterator<Item = AgentState>, committed_seq: u64) -> Self {
        let latest = Self::default();
        {
            let mut shared = latest.lock();
            shared.states = states
                .into_iter()
                .map(|state| (state.agent.clone(), state))
                .collect();
            shared.committed_seq = committed_seq;
            shared.events_complete_from = committed_seq + 1;
        }
        latest
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        lock(&self.inner)
    }

    /// Records what a commit stored: the agents' new states and the
    /// transition events (in seq order), and tells every subscriber.
    pub fn commit(&self, states: Vec<AgentState>, events: Vec<TransitionEvent>) {
        let mut shared = self.lock();
        for event in events {
            // Room is made before the push: the ring never holds one more
            // than it keeps, which would double its allocation.
            if shared.events.len() >= RECENT_EVENTS {
                if let Some(dropped) = shared.events.pop_front() {
                    shared.events_complete_from = dropped.seq + 1;
                }
            }
            shared.committed_seq = shared.committed_seq.max(event.seq);
            shared.events.push_back(event);
        }
        let agents: Vec<AgentId> = states.iter().map(|state| state.agent.clone()).collect();
        for state in states {
            shared.states.insert(state.agent.clone(), state);
        }
        shared.tell(|unseen| unseen.agents.extend(agents.iter().cloned()));
    }

    /// Forgets agents (another bridge owns them now): they are no longer
    /// shown or republished by this bridge.
    pub fn remove(&self, agents: &[AgentId]) {
        let mut shared = self.lock();
        for agent in agents {
            shared.states.remove(agent);
        }
    }

    /// Records a queue's current members and tells every subscriber.
    pub fn set_queue(&self, members: QueueMembers) {
        let mut shared = self.lock();
        let queue = members.queue.clone();
        if let Some(known) = shared.queues.get(&queue) {
            if known.members == members.members && known.agents == members.agents {
                // Unchanged: `updated` keeps saying when they last changed.
                return;
            }
        }
        shared.queues.insert(queue.clone(), members);
        shared.tell(|unseen| {
            unseen.queues.insert(queue.clone());
        });
    }

    /// Every agent's latest state, ordered by id.
    pub fn snapshot(&self) -> Vec<AgentState> {
        self.lock().states.values().cloned().collect()
    }

    /// Every queue's latest members, ordered by queue.
    pub fn queues(&self) -> Vec<QueueMembers> {
        self.lock().queues.values().cloned().collect()
    }

    /// One agent's latest state.
    pub fn get(&self, agent: &AgentId) -> Option<AgentState> {
        self.lock().states.get(agent).cloned()
    }

    /// The highest seq committed.
    pub fn committed_seq(&self) -> u64 {
        self.lock().committed_seq
    }

    /// The committed events with a seq at or above `from`, at most `max`.
    pub fn events_from(&self, from: u64, max: usize) -> RecentEvents {
        let shared = self.lock();
        if from < shared.events_complete_from && from <= shared.committed_seq {
            return RecentEvents::InHistory;
        }
        let start = shared.events.partition_point(|event| event.seq < from);
        RecentEvents::Here(
            shared
                .events
                .iter()
                .skip(start)
                .take(max)
                .cloned()
                .collect(),
        )
    }

    /// Follows changes from now on. The subscription starts with every agent
    /// and queue unseen, so its first [`Subscription::take`] is a snapshot.
    pub fn subscribe(&self) -> Subscription {
        let mut shared = self.lock();
        let subscriber = Arc::new(Subscriber::default());
        {
            let mut unseen = lock(&subscriber.unseen);
            unseen.agents.extend(shared.states.keys().cloned());
            unseen.queues.extend(shared.queues.keys().cloned());
        }
        shared.subscribers.push(Arc::downgrade(&subscriber));
        Subscription {
            subscriber,
            latest: self.clone(),
        }
    }
}

impl Shared {
    /// Records a change for every live subscriber and wakes it; forgets the
    /// dropped ones.
    fn tell(&mut self, change: impl Fn(&mut Unseen)) {
        self.subscribers.retain(|weak| match weak.upgrade() {
            Some(subscriber) => {
                change(&mut lock(&subscriber.unseen));
                subscriber.notify.notify_one();
                true
            }
            None => false,
        });
    }
}

impl Subscription {
    /// Waits until something changed that was not taken yet (at once if
    /// something already waits).
    pub async fn changed(&self) {
        self.subscriber.notify.notified().await;
    }

    /// Marks every agent and queue unseen again (after a reconnect: a broker
    /// without persistence must get everything again).
    pub fn mark_all_unseen(&self) {
        let shared = self.latest.lock();
        let mut unseen = lock(&self.subscriber.unseen);
        unseen.agents.extend(shared.states.keys().cloned());
        unseen.queues.extend(shared.queues.keys().cloned());
        self.subscriber.notify.notify_one();
    }

    /// Takes what changed since the last take, at most `max` agents (the
    /// rest stays unseen), with their current values.
    pub fn take(&self, max: usize) -> Changes {
        let shared = self.latest.lock();
        let mut unseen = lock(&self.subscriber.unseen);
        let mut changes = Changes::default();
        while changes.states.len() < max {
            let Some(agent) = unseen.agents.pop_first() else {
                break;
            };
            if let Some(state) = shared.states.get(&agent) {
                changes.states.push(state.clone());
            }
        }
        for queue in std::mem::take(&mut unseen.queues) {
            if let Some(members) = shared.queues.get(&queue) {
                changes.queues.push(members.clone());
            }
        }
        if !unseen.agents.is_empty() {
            // More to take: stay woken.
            self.subscriber.notify.notify_one();
        }
        changes
    }

    /// How many agents wait to be taken.
    pub fn unseen_agents(&self) -> usize {
        lock(&self.subscriber.unseen).agents.len()
    }

    /// The shared values this subscription follows.
    pub fn latest(&self) -> &LatestStates {
        &self.latest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Status;
    use crate::status::unknown_state;
    use chrono::{TimeZone, Utc};

    fn state(agent: &str, status: Status) -> AgentState {
        let mut state = unknown_state(
            AgentId::parse(agent).unwrap(),
            agent.into(),
            Utc.timestamp_opt(1_800_000_000, 0).unwrap(),
        );
        state.status = status;
        state
    }

    fn event(agent: &str, seq: u64) -> TransitionEvent {
        TransitionEvent {
            agent: AgentId::parse(agent).unwrap(),
            from: Status::Unknown,
            to: Status::Available,
            at: Utc.timestamp_opt(1_800_000_000, 0).unwrap(),
            previous_duration_s: 0.0,
            seq,
        }
    }

    #[tokio::test]
    async fn a_slow_subscriber_gets_each_agent_once_with_its_latest_state() {
        let latest = LatestStates::new([state("a", Status::Unknown)], 0);
        let subscription = latest.subscribe();
        // The first take is a snapshot.
        assert_eq!(subscription.take(10).states.len(), 1);
        for status in [Status::Available, Status::Ringing, Status::OnCall] {
            latest.commit(vec![state("a", status), state("b", status)], Vec::new());
        }
        subscription.changed().await;
        let changes = subscription.take(1);
        assert_eq!(changes.states.len(), 1, "at most the asked number");
        assert_eq!(changes.states[0].status, Status::OnCall);
        assert_eq!(subscription.unseen_agents(), 1);
        subscription.changed().await; // still woken: more to take
        assert_eq!(subscription.take(10).states[0].agent.as_str(), "b");
        assert!(subscription.take(10).is_empty());
        subscription.mark_all_unseen();
        assert_eq!(subscription.take(10).states.len(), 2);
        drop(subscription);
        latest.commit(vec![state("a", Status::Wrapup)], Vec::new());
        assert!(
            latest.lock().subscribers.is_empty(),
            "dropped ones are forgotten"
        );
    }

    #[test]
    fn recent_events_come_from_memory_until_they_were_dropped() {
        let latest = LatestStates::new([], 10);
        assert_eq!(latest.events_from(11, 10), RecentEvents::Here(Vec::new()));
        let events: Vec<_> = (11..=10 + RECENT_EVENTS as u64 + 5)
            .map(|seq| event("a", seq))
            .collect();
        latest.commit(Vec::new(), events);
        assert_eq!(latest.events_from(11, 10), RecentEvents::InHistory);
        let RecentEvents::Here(here) = latest.events_from(100, 3) else {
            panic!("in memory")
        };
        assert_eq!(
            here.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [100, 101, 102]
        );
        assert_eq!(latest.committed_seq(), 10 + RECENT_EVENTS as u64 + 5);
        assert_eq!(
            latest.events_from(latest.committed_seq() + 1, 10),
            RecentEvents::Here(Vec::new())
        );
    }

    #[test]
    fn queues_notify_only_when_their_members_change() {
        let latest = LatestStates::default();
        let subscription = latest.subscribe();
        let members = QueueMembers {
            queue: "500".into(),
            members: vec!["201".into()],
            agents: Vec::new(),
            updated: Utc.timestamp_opt(1_800_000_000, 0).unwrap(),
        };
        latest.set_queue(members.clone());
        assert_eq!(subscription.take(10).queues, std::slice::from_ref(&members));
        latest.set_queue(members);
        assert!(subscription.take(10).is_empty());
    }
}
