//! The status core: derives one [`Status`] from a Belfabriek reading and
//! detects transitions (`product.md` §1).
//!
//! Pure: no IO, no clock (callers pass `now`), no channels. The tracker task
//! in `app` feeds it poll outcomes and forwards the [`Change`]s it returns.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::model::{AgentId, AgentReading, AgentState, Change, Previous, Status};

/// The status, reason and extension status derived from one reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Derived {
    /// The combined status.
    pub status: Status,
    /// The raw reason when not available; `None` when available or when the
    /// reason is empty or `-`.
    pub reason: Option<String>,
    /// The extension status when available.
    pub extension_status: Option<String>,
}

/// Derives the combined status. `reasons` maps a lowercased, trimmed
/// `availReason` to a status; unlisted reasons give `unavailable`.
pub fn derive(reading: &AgentReading, reasons: &BTreeMap<String, Status>) -> Derived {
    let reason = reading.reason.trim();
    if !reading.available {
        let key = reason.to_lowercase();
        let status = reasons.get(&key).copied().unwrap_or(Status::Unavailable);
        let reason = (!reason.is_empty() && reason != "-").then(|| reason.to_owned());
        return Derived {
            status,
            reason,
            extension_status: None,
        };
    }
    let extension_status = reading
        .extension_status
        .as_deref()
        .map(|s| s.trim().to_lowercase())
        .filter(|s| !s.is_empty());
    let status = match extension_status.as_deref() {
        Some("calling") => Status::Ringing,
        Some("called") => Status::OnCall,
        Some("wrapup") => Status::Wrapup,
        _ => Status::Available,
    };
    Derived {
        status,
        reason: None,
        extension_status,
    }
}

/// The outcome of one poll of one agent, as the tracker sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// The poll succeeded.
    Reading(AgentReading),
    /// The poll failed (the error itself is logged and counted by the poller).
    Failed,
}

/// One agent as the tracker holds it.
#[derive(Debug, Clone)]
struct Tracked {
    state: AgentState,
    failures: u32,
}

/// Holds every agent's current state and turns observations into changes.
#[derive(Debug)]
pub struct Tracker {
    /// Current state per agent. A B-tree built from the sorted agents is
    /// full to its last node, where a hash table of 5,000 states keeps 8,192
    /// slots (0.6 MB more); a lookup is a dozen short comparisons.
    agents: BTreeMap<AgentId, Tracked>,
    /// Reason table from `[status.reasons]`.
    reasons: BTreeMap<String, Status>,
    /// Consecutive failures after which an agent becomes `unknown`.
    stale_after: u32,
}

impl Tracker {
    /// A tracker starting from `initial` states (resumed from history, or
    /// `unknown` for agents never seen).
    pub fn new(
        initial: impl IntoIterator<Item = AgentState>,
        reasons: BTreeMap<String, Status>,
        stale_after: u32,
    ) -> Self {
        let agents = initial
            .into_iter()
            .map(|state| (state.agent.clone(), Tracked { state, failures: 0 }))
            .collect();
        Self {
            agents,
            reasons,
            stale_after: stale_after.max(1),
        }
    }

    /// Starts tracking an agent from `state` (an agent taken over from
    /// another bridge), or replaces its state.
    pub fn insert(&mut self, state: AgentState) {
        self.agents
            .insert(state.agent.clone(), Tracked { state, failures: 0 });
    }

    /// Stops tracking an agent (another bridge polls it now).
    pub fn remove(&mut self, agent: &AgentId) {
        self.agents.remove(agent);
    }

    /// How many polls of an agent failed in a row (0 for unknown agents).
    pub fn failures(&self, agent: &AgentId) -> u32 {
        self.agents.get(agent).map_or(0, |tracked| tracked.failures)
    }

    /// The current state of an agent.
    pub fn state(&self, agent: &AgentId) -> Option<&AgentState> {
        self.agents.get(agent).map(|tracked| &tracked.state)
    }

    /// Applies one observation; returns the change, if anything changed.
    /// Observations for agents the tracker does not know are ignored.
    pub fn observe(
        &mut self,
        agent: &AgentId,
        observation: Observation,
        now: DateTime<Utc>,
    ) -> Option<Change> {
        let stale_after = self.stale_after;
        let tracked = self.agents.get_mut(agent)?;
        let (status, available, reason, extension_status, destination) = match observation {
            Observation::Failed => {
                tracked.failures = tracked.failures.saturating_add(1);
                if tracked.failures < stale_after || tracked.state.status == Status::Unknown {
                    return None;
                }
                (Status::Unknown, None, None, None, None)
            }
            Observation::Reading(reading) => {
                tracked.failures = 0;
                let derived = derive(&reading, &self.reasons);
                (
                    derived.status,
                    Some(reading.available),
                    derived.reason,
                    derived.extension_status,
                    reading.destination.filter(|d| !d.trim().is_empty()),
                )
            }
        };
        let current = &tracked.state;
        let previous = (status != current.status).then_some(Previous {
            status: current.status,
            since: current.since,
        });
        let unchanged = previous.is_none()
            && available == current.available
            && reason == current.reason
            && extension_status == current.extension_status
            && destination == current.destination;
        if unchanged {
            return None;
        }
        let state = AgentState {
            agent: current.agent.clone(),
            name: current.name.clone(),
            status,
            on_a_call: status.on_a_call(),
            available,
            reason,
            extension_status,
            destination,
            since: if previous.is_some() {
                now
            } else {
                current.since
            },
            updated: now,
            seq: current.seq,
        };
        tracked.state = state.clone();
        Some(Change { state, previous })
    }
}

/// A fresh `unknown` state for an agent never seen before.
pub fn unknown_state(agent: AgentId, name: String, now: DateTime<Utc>) -> AgentState {
    AgentState {
        agent,
        name,
        status: Status::Unknown,
        on_a_call: false,
        available: None,
        reason: None,
        extension_status: None,
        destination: None,
        since: now,
        updated: now,
        seq: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::default_reasons;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn reading(available: bool, reason: &str, ext: Option<&str>) -> AgentReading {
        AgentReading {
            available,
            reason: reason.to_owned(),
            destination: Some("31201234567".into()),
            extension_status: ext.map(str::to_owned),
        }
    }

    fn check(
        available: bool,
        reason: &str,
        ext: Option<&str>,
        expected: Status,
        expected_reason: Option<&str>,
    ) {
        let derived = derive(&reading(available, reason, ext), &default_reasons());
        assert_eq!(
            derived.status, expected,
            "available={available} reason={reason:?} ext={ext:?}"
        );
        assert_eq!(
            derived.reason.as_deref(),
            expected_reason,
            "reason for {reason:?}"
        );
    }

    #[test]
    fn derivation_follows_the_product_table() {
        check(false, "-", None, Status::Offline, None);
        check(false, "", None, Status::Offline, None);
        check(false, " - ", None, Status::Offline, None);
        check(false, "pause", None, Status::Paused, Some("pause"));
        check(false, "Paused", None, Status::Paused, Some("Paused"));
        check(false, "PAUSE", None, Status::Paused, Some("PAUSE"));
        check(false, "handling", None, Status::Busy, Some("handling"));
        check(
            false,
            "training",
            None,
            Status::Unavailable,
            Some("training"),
        );
        check(true, "-", Some("idle"), Status::Available, None);
        check(true, "-", None, Status::Available, None);
        check(true, "", Some("something-new"), Status::Available, None);
        check(true, "", Some("calling"), Status::Ringing, None);
        check(true, "", Some("Called"), Status::OnCall, None);
        check(true, "", Some(" wrapup "), Status::Wrapup, None);
    }

    #[test]
    fn reason_table_is_configurable() {
        let mut reasons = default_reasons();
        reasons.insert("lunch".into(), Status::Paused);
        reasons.insert("handling".into(), Status::Unavailable);
        let derived = derive(&reading(false, "Lunch", None), &reasons);
        assert_eq!(derived.status, Status::Paused);
        let derived = derive(&reading(false, "handling", None), &reasons);
        assert_eq!(derived.status, Status::Unavailable);
    }

    fn at(seconds: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + seconds, 0).unwrap()
    }

    fn tracker(stale_after: u32) -> (Tracker, AgentId) {
        let id = AgentId::parse("alice").unwrap();
        let state = unknown_state(id.clone(), "Alice".into(), at(0));
        (Tracker::new([state], default_reasons(), stale_after), id)
    }

    #[test]
    fn a_change_of_status_is_a_transition_with_the_previous_status() {
        let (mut tracker, id) = tracker(3);
        let change = tracker
            .observe(
                &id,
                Observation::Reading(reading(true, "", Some("calling"))),
                at(5),
            )
            .unwrap();
        assert_eq!(change.state.status, Status::Ringing);
        assert!(change.state.on_a_call);
        assert_eq!(change.state.since, at(5));
        assert_eq!(
            change.previous,
            Some(Previous {
                status: Status::Unknown,
                since: at(0)
            })
        );
        let change = tracker
            .observe(
                &id,
                Observation::Reading(reading(true, "", Some("called"))),
                at(13),
            )
            .unwrap();
        let event = change.event(7).unwrap();
        assert_eq!(
            (event.from, event.to, event.seq),
            (Status::Ringing, Status::OnCall, 7)
        );
        assert_eq!(event.previous_duration_s, 8.0);
    }

    #[test]
    fn a_change_of_destination_alone_updates_state_without_a_transition() {
        let (mut tracker, id) = tracker(3);
        tracker.observe(
            &id,
            Observation::Reading(reading(true, "", Some("idle"))),
            at(1),
        );
        let mut moved = reading(true, "", Some("idle"));
        moved.destination = Some("31612345678".into());
        let change = tracker
            .observe(&id, Observation::Reading(moved), at(9))
            .unwrap();
        assert_eq!(change.previous, None);
        assert_eq!(change.event(1), None);
        assert_eq!(change.state.since, at(1));
        assert_eq!(change.state.updated, at(9));
    }

    #[test]
    fn unknown_after_stale_after_consecutive_failures_then_recovers() {
        let (mut tracker, id) = tracker(3);
        tracker.observe(&id, Observation::Reading(reading(true, "", None)), at(1));
        assert_eq!(tracker.observe(&id, Observation::Failed, at(2)), None);
        assert_eq!(tracker.observe(&id, Observation::Failed, at(3)), None);
        let change = tracker.observe(&id, Observation::Failed, at(4)).unwrap();
        assert_eq!(change.state.status, Status::Unknown);
        assert_eq!(change.state.available, None);
        assert_eq!(
            tracker.observe(&id, Observation::Failed, at(5)),
            None,
            "unknown only once"
        );
        let change = tracker
            .observe(&id, Observation::Reading(reading(true, "", None)), at(6))
            .unwrap();
        assert_eq!(change.previous.unwrap().status, Status::Unknown);
        // A success resets the count.
        assert_eq!(tracker.observe(&id, Observation::Failed, at(7)), None);
        assert_eq!(tracker.observe(&id, Observation::Failed, at(8)), None);
        assert_eq!(
            tracker.observe(&id, Observation::Reading(reading(true, "", None)), at(9)),
            None
        );
    }

    #[test]
    fn unknown_agents_are_ignored() {
        let (mut tracker, _) = tracker(1);
        let stranger = AgentId::parse("bob").unwrap();
        assert_eq!(tracker.observe(&stranger, Observation::Failed, at(1)), None);
    }

    fn arb_reading() -> impl Strategy<Value = AgentReading> {
        (
            any::<bool>(),
            prop_oneof![
                Just("-".to_string()),
                Just("pause".to_string()),
                Just("handling".to_string()),
                ".{0,8}"
            ],
            proptest::option::of("[0-9]{0,11}"),
            proptest::option::of(prop_oneof![
                Just("idle".to_string()),
                Just("calling".to_string()),
                Just("called".to_string()),
                Just("wrapup".to_string()),
                ".{0,6}"
            ]),
        )
            .prop_map(
                |(available, reason, destination, extension_status)| AgentReading {
                    available,
                    reason,
                    destination,
                    extension_status,
                },
            )
    }

    proptest! {
        #[test]
        fn the_same_reading_twice_gives_no_second_change(reading in arb_reading()) {
            let (mut tracker, id) = tracker(3);
            tracker.observe(&id, Observation::Reading(reading.clone()), at(1));
            prop_assert_eq!(tracker.observe(&id, Observation::Reading(reading), at(2)), None);
        }

        #[test]
        fn on_a_call_always_matches_status(reading in arb_reading()) {
            let (mut tracker, id) = tracker(3);
            if let Some(change) = tracker.observe(&id, Observation::Reading(reading), at(1)) {
                prop_assert_eq!(change.state.on_a_call, change.state.status.on_a_call());
                prop_assert_eq!(change.is_some_transition(), change.previous.is_some());
            }
        }
    }

    impl Change {
        fn is_some_transition(&self) -> bool {
            self.previous.is_some_and(|p| p.status != self.state.status)
        }
    }
}
