//! Changes waiting for the history writer, bounded by the number of agents.
//!
//! Pure: no IO, no clock, no locks (the app shares it behind a mutex). The
//! poller pushes every change it finds and never waits; the writer takes
//! them in arrival order, as many as a batch holds. While the database is
//! slow or down, changes pile up here, so they are folded per agent:
//! - a change of details (reason, destination, extension status) without a
//!   status change is merged into the agent's latest waiting change;
//! - transitions queue up, at most [`MAX_PER_AGENT`] per agent; past that an
//!   agent's newest waiting transition absorbs the next one (the status in
//!   between is lost to history, the time is counted in the one before it),
//!   and [`PendingChanges::merged`] counts it, so a stall that long is loud.
//!
//! Memory is therefore at most [`MAX_PER_AGENT`] changes per agent, however
//! long the stall.

use std::collections::{BTreeMap, HashMap};

use crate::model::{AgentId, Change};

/// The most changes one agent may have waiting. At a poll a second and a
/// status change every few seconds, a database stall of about a minute fits
/// before anything is folded.
pub const MAX_PER_AGENT: usize = 16;

/// What [`PendingChanges::push`] did with a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// It waits as a change of its own.
    Queued,
    /// Its details were merged into the agent's latest waiting change.
    Coalesced,
    /// The agent had [`MAX_PER_AGENT`] changes waiting: this transition
    /// replaced the newest of them (one status is lost to history).
    Merged,
}

/// One agent's waiting changes.
#[derive(Debug, Clone, Copy)]
struct AgentQueue {
    /// Arrival number of the agent's newest waiting change.
    newest: u64,
    /// How many changes of the agent wait.
    count: usize,
}

/// The waiting changes, in arrival order.
#[derive(Debug, Default)]
pub struct PendingChanges {
    /// Changes by arrival number.
    changes: BTreeMap<u64, Change>,
    /// Per agent with waiting changes: where its newest is, and how many.
    agents: HashMap<AgentId, AgentQueue>,
    /// The next arrival number.
    next: u64,
    /// Transitions merged away since the start (see [`Pushed::Merged`]).
    merged: u64,
}

impl PendingChanges {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many changes wait.
    pub fn len(&self) -> usize {
        self.changes.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Transitions merged away since the start.
    pub fn merged(&self) -> u64 {
        self.merged
    }

    /// Adds a change (see the module doc for how it is folded).
    pub fn push(&mut self, change: Change) -> Pushed {
        let agent = change.state.agent.clone();
        if let Some(queue) = self.agents.get(&agent).copied() {
            let newest = self
                .changes
                .get_mut(&queue.newest)
                .expect("an agent's newest waiting change is in the queue");
            if change.previous.is_none() {
                // Same status: the newest waiting change carries the new
                // details (and stays a transition if it was one).
                newest.state = change.state;
                return Pushed::Coalesced;
            }
            if queue.count >= MAX_PER_AGENT {
                // The newest waiting change now ends in this status; its
                // own `previous` (where it came from) stays.
                newest.state = change.state;
                self.merged += 1;
                return Pushed::Merged;
            }
        }
        let number = self.next;
        self.next += 1;
        self.changes.insert(number, change);
        let queue = self.agents.entry(agent).or_insert(AgentQueue {
            newest: number,
            count: 0,
        });
        queue.newest = number;
        queue.count += 1;
        Pushed::Queued
    }

    /// Takes up to `max` changes, oldest first.
    pub fn take(&mut self, max: usize) -> Vec<Change> {
        let mut taken = Vec::with_capacity(max.min(self.changes.len()));
        while taken.len() < max {
            let Some((number, change)) = self.changes.pop_first() else {
                break;
            };
            if let Some(queue) = self.agents.get_mut(&change.state.agent) {
                queue.count -= 1;
                if queue.newest == number {
                    self.agents.remove(&change.state.agent);
                }
            }
            taken.push(change);
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Previous, Status};
    use crate::status::unknown_state;
    use chrono::{DateTime, TimeZone, Utc};

    fn at(seconds: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + seconds, 0).unwrap()
    }

    fn change(agent: &str, from: Option<(Status, i64)>, to: Status, since: i64) -> Change {
        let mut state = unknown_state(AgentId::parse(agent).unwrap(), agent.into(), at(since));
        state.status = to;
        Change {
            state,
            previous: from.map(|(status, since)| Previous {
                status,
                since: at(since),
            }),
        }
    }

    fn statuses(changes: &[Change]) -> Vec<(String, Status, bool)> {
        changes
            .iter()
            .map(|c| {
                (
                    c.state.agent.to_string(),
                    c.state.status,
                    c.previous.is_some(),
                )
            })
            .collect()
    }

    #[test]
    fn changes_come_out_in_arrival_order_across_agents() {
        let mut pending = PendingChanges::new();
        pending.push(change(
            "a",
            Some((Status::Unknown, 0)),
            Status::Available,
            1,
        ));
        pending.push(change("b", Some((Status::Unknown, 0)), Status::Paused, 2));
        pending.push(change("a", Some((Status::Available, 1)), Status::OnCall, 3));
        assert_eq!(pending.len(), 3);
        let first = pending.take(2);
        assert_eq!(
            statuses(&first),
            [
                ("a".into(), Status::Available, true),
                ("b".into(), Status::Paused, true)
            ]
        );
        // A detail change after a take goes to the remaining newest change.
        let mut detail = change("a", None, Status::OnCall, 3);
        detail.state.destination = Some("0612".into());
        assert_eq!(pending.push(detail), Pushed::Coalesced);
        let rest = pending.take(10);
        assert_eq!(statuses(&rest), [("a".into(), Status::OnCall, true)]);
        assert_eq!(rest[0].state.destination.as_deref(), Some("0612"));
        assert!(pending.is_empty());
        // With nothing waiting, a detail change waits on its own.
        assert_eq!(
            pending.push(change("a", None, Status::OnCall, 3)),
            Pushed::Queued
        );
    }

    #[test]
    fn a_long_stall_holds_at_most_the_cap_per_agent() {
        let mut pending = PendingChanges::new();
        let cycle = [
            Status::Available,
            Status::Ringing,
            Status::OnCall,
            Status::Wrapup,
        ];
        let mut previous = (Status::Unknown, 0);
        for step in 0..1_000 {
            let to = cycle[step % cycle.len()];
            let since = step as i64 + 1;
            pending.push(change("a", Some(previous), to, since));
            let mut detail = change("a", None, to, since);
            detail.state.reason = Some(format!("r{step}"));
            pending.push(detail);
            previous = (to, since);
        }
        assert_eq!(pending.len(), MAX_PER_AGENT);
        assert_eq!(pending.merged(), 1_000 - MAX_PER_AGENT as u64);
        let taken = pending.take(usize::MAX);
        // The first transitions are kept as they were; the last one ends in
        // the newest status with the newest details.
        assert_eq!(taken[0].state.status, Status::Available);
        let last = taken.last().unwrap();
        assert_eq!(last.state.status, cycle[999 % 4]);
        assert_eq!(last.state.reason.as_deref(), Some("r999"));
        assert_eq!(last.state.since, at(1_000));
    }
}
