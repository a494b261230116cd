//! Pure: the rows the store writes and reads. A batch of the tracker's
//! changes becomes the stored rows to update, close and insert
//! ([`batch_rows`]); a restart becomes the rows that resume it
//! ([`resume_rows`]); stored rows are decoded back into values.
//!
//! No IO and no clock: `intervals.rs` executes these rows inside one
//! transaction, so both backends store exactly the same rows.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};

use crate::model::{AgentId, AgentState, Status};
use crate::status::unknown_state;

use super::error::StoreError;

/// Milliseconds since the Unix epoch, as stored.
pub(crate) fn to_millis(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

/// A stored time back as a `DateTime`; fails only for values no bridge wrote
/// (beyond chrono's range of ±262,000 years).
pub(crate) fn from_millis(millis: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_millis(millis).ok_or_else(|| StoreError::InvalidRow {
        detail: format!("time {millis} ms is out of range"),
    })
}

/// A `seq` as stored (`BIGINT`). Saturates: a bridge would need 292 years at a
/// billion transitions per second to get there.
pub(crate) fn seq_to_db(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// A stored `seq` back; negative values (never written) read as 0.
pub(crate) fn seq_from_db(seq: i64) -> u64 {
    u64::try_from(seq).unwrap_or(0)
}

/// What `available` was for an agent in `status`, for states resumed from
/// history: `None` while unknown, true for the statuses only an available
/// agent can be in.
pub(crate) fn available_for(status: Status) -> Option<bool> {
    match status {
        Status::Unknown => None,
        Status::Available | Status::Ringing | Status::OnCall | Status::Wrapup => Some(true),
        Status::Offline | Status::Paused | Status::Busy | Status::Unavailable => Some(false),
    }
}

/// One row to insert into `intervals`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewInterval<'a> {
    /// The agent's id.
    pub agent: &'a str,
    /// The status, by its wire name.
    pub status: &'static str,
    /// The raw reason.
    pub reason: Option<&'a str>,
    /// The extension status.
    pub extension_status: Option<&'a str>,
    /// The destination number.
    pub destination: Option<&'a str>,
    /// Start, ms.
    pub started_at: i64,
    /// End, ms; `None` for the agent's open interval.
    pub ended_at: Option<i64>,
    /// The opening transition's seq; `None` when synthesised.
    pub seq: Option<i64>,
    /// The bridge that recorded the transition; `None` when synthesised.
    pub bridge: Option<&'a str>,
}

/// Ends an agent's open interval stored before this batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Close<'a> {
    /// The agent whose open interval ends.
    pub agent: &'a str,
    /// When it ends, ms (the backend never lets it end before it started).
    pub ended_at: i64,
}

/// New details (no status change) for an agent's open interval stored
/// before this batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DetailUpdate<'a> {
    /// The agent whose open interval is updated.
    pub agent: &'a str,
    /// The new reason.
    pub reason: Option<&'a str>,
    /// The new extension status.
    pub extension_status: Option<&'a str>,
    /// The new destination.
    pub destination: Option<&'a str>,
}

/// The statements one batch needs, in execution order: detail updates, then
/// closes, then inserts, then `last_seq`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct BatchRows<'a> {
    /// Details of stored open intervals that changed without a transition.
    pub detail_updates: Vec<DetailUpdate<'a>>,
    /// Stored open intervals that end (one per agent at most).
    pub closes: Vec<Close<'a>>,
    /// New rows; intervals opened and ended within the batch are inserted
    /// closed, so at most one row per agent is open.
    pub inserts: Vec<NewInterval<'a>>,
    /// The highest transition seq in the batch.
    pub max_seq: Option<u64>,
}

/// Plans a batch. Each item is an agent's new state and whether it is a
/// transition (a new status interval). A transition ends the agent's current
/// interval at `state.since` and opens a new one there; any other change
/// (reason, destination or extension status only) updates the current
/// interval's details in place, so there is exactly one row per status
/// interval.
pub(crate) fn batch_rows<'a>(
    items: impl IntoIterator<Item = (&'a AgentState, bool)>,
    bridge: Option<&'a str>,
) -> BatchRows<'a> {
    let mut plan = BatchRows::default();
    // Index in `plan.inserts` of each agent's interval opened in this batch.
    let mut open_in_batch: HashMap<&'a str, usize> = HashMap::new();
    // Index in `plan.detail_updates` of each agent's stored interval update.
    let mut updated_in_store: HashMap<&'a str, usize> = HashMap::new();
    for (state, is_transition) in items {
        let agent = state.agent.as_str();
        let reason = state.reason.as_deref();
        let extension_status = state.extension_status.as_deref();
        let destination = state.destination.as_deref();
        if is_transition {
            let since = to_millis(state.since);
            match open_in_batch.get(agent) {
                Some(&index) => {
                    let row = &mut plan.inserts[index];
                    row.ended_at = Some(since.max(row.started_at));
                }
                None => plan.closes.push(Close {
                    agent,
                    ended_at: since,
                }),
            }
            open_in_batch.insert(agent, plan.inserts.len());
            plan.inserts.push(NewInterval {
                agent,
                status: state.status.as_str(),
                reason,
                extension_status,
                destination,
                started_at: since,
                ended_at: None,
                seq: Some(seq_to_db(state.seq)),
                bridge,
            });
            plan.max_seq = Some(plan.max_seq.map_or(state.seq, |max| max.max(state.seq)));
        } else if let Some(&index) = open_in_batch.get(agent) {
            let row = &mut plan.inserts[index];
            row.reason = reason;
            row.extension_status = extension_status;
            row.destination = destination;
        } else {
            let update = DetailUpdate {
                agent,
                reason,
                extension_status,
                destination,
            };
            match updated_in_store.entry(agent) {
                Entry::Occupied(entry) => plan.detail_updates[*entry.get()] = update,
                Entry::Vacant(entry) => {
                    entry.insert(plan.detail_updates.len());
                    plan.detail_updates.push(update);
                }
            }
        }
    }
    plan
}

/// An agent's latest interval found at startup (open after a crash, closed
/// after a clean stop), with the agent's latest seq resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LastInterval {
    /// Row id.
    pub id: i64,
    /// The agent's id.
    pub agent: AgentId,
    /// The status.
    pub status: Status,
    /// The raw reason.
    pub reason: Option<String>,
    /// The extension status.
    pub extension_status: Option<String>,
    /// The destination number.
    pub destination: Option<String>,
    /// Start, ms.
    pub started_at: i64,
    /// End, ms; `None` while open.
    pub ended_at: Option<i64>,
    /// The seq of the agent's most recent interval with a seq (0 if none).
    pub last_seq: u64,
}

/// Ends a stored open interval by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CloseById {
    /// Row id.
    pub id: i64,
    /// End, ms.
    pub ended_at: i64,
}

/// What resuming after a restart writes and returns.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ResumeRows<'a> {
    /// Open intervals to end (at the last heartbeat).
    pub closes: Vec<CloseById>,
    /// The `unknown` gaps and the resumed open intervals.
    pub inserts: Vec<NewInterval<'a>>,
    /// Every configured agent's state, in configuration order.
    pub states: Vec<AgentState>,
}

/// How an agent comes to this bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handover {
    /// The bridge (re)starts: an open interval ends at the last heartbeat.
    Restart,
    /// Its previous owner handed it over cleanly (released its lease) and
    /// its open interval is still true: it goes on unchanged.
    Released,
    /// Its previous owner stopped renewing its lease (it died or hung): an
    /// open interval ends at that bridge's last heartbeat (ms).
    Expired {
        /// The previous owner's last heartbeat, ms.
        owner_alive: i64,
    },
}

/// Plans the resume (see [`super::Store::resume`]). `latest` holds each
/// configured agent's latest interval and every other agent's open one;
/// `heartbeat` is the last stored heartbeat in ms, `now` the restart time.
///
/// After a crash an agent's interval is still open: it ends at the last
/// heartbeat. After a clean stop it ended at the stop time. Either way the
/// time the bridge was down is `unknown`, and the agent's last status opens
/// again at `now`, so the first poll causes no false transition. Times never
/// go backwards: a `now` before the stored history is taken as its end.
pub(crate) fn resume_rows<'a>(
    latest: &'a [LastInterval],
    configured: &[(AgentId, String)],
    heartbeat: Option<i64>,
    now: DateTime<Utc>,
    handover: &dyn Fn(&AgentId) -> Handover,
) -> Result<ResumeRows<'a>, StoreError> {
    let now_ms = to_millis(now);
    let last_alive = heartbeat
        .or_else(|| {
            latest
                .iter()
                .filter(|interval| interval.ended_at.is_none())
                .map(|interval| interval.started_at)
                .max()
        })
        .unwrap_or(now_ms);
    let by_agent: HashMap<&AgentId, &LastInterval> = latest
        .iter()
        .map(|interval| (&interval.agent, interval))
        .collect();
    let mut plan = ResumeRows {
        closes: Vec::new(),
        inserts: Vec::new(),
        states: Vec::new(),
    };
    let mut configured_ids: HashSet<&AgentId> = HashSet::new();
    for (agent, name) in configured {
        if !configured_ids.insert(agent) {
            continue; // A duplicate entry; configuration validation reports it.
        }
        let Some(interval) = by_agent.get(agent) else {
            plan.states.push(unknown_state(
                agent.clone(),
                name.clone(),
                from_millis(now_ms)?,
            ));
            continue;
        };
        let handover = handover(agent);
        if handover == Handover::Released && interval.ended_at.is_none() {
            // Handed over cleanly: the open interval is still the truth.
            let mut state = unknown_state(
                agent.clone(),
                name.clone(),
                from_millis(interval.started_at)?,
            );
            state.status = interval.status;
            state.on_a_call = interval.status.on_a_call();
            state.available = available_for(interval.status);
            state.reason = interval.reason.clone();
            state.extension_status = interval.extension_status.clone();
            state.destination = interval.destination.clone();
            state.updated = from_millis(now_ms.max(interval.started_at))?;
            state.seq = interval.last_seq;
            plan.states.push(state);
            continue;
        }
        let agent_alive = match handover {
            Handover::Expired { owner_alive } => owner_alive,
            Handover::Restart | Handover::Released => last_alive,
        };
        let closed_at = match interval.ended_at {
            Some(ended_at) => ended_at,
            None => agent_alive.max(interval.started_at),
        };
        let resumed_at = now_ms.max(closed_at);
        let details = |status: Status, started_at: i64, ended_at: Option<i64>| NewInterval {
            agent: interval.agent.as_str(),
            status: status.as_str(),
            reason: interval.reason.as_deref(),
            extension_status: interval.extension_status.as_deref(),
            destination: interval.destination.as_deref(),
            started_at,
            ended_at,
            seq: None,
            bridge: None,
        };
        let unknown = |started_at: i64, ended_at: Option<i64>| NewInterval {
            reason: None,
            extension_status: None,
            destination: None,
            ..details(Status::Unknown, started_at, ended_at)
        };
        // Closed before the last stop (the agent was taken out of the
        // configuration then): what it did since is not known.
        let closed_before_stop = matches!(
            (interval.ended_at, heartbeat),
            (Some(ended_at), Some(heartbeat)) if ended_at < heartbeat
        );
        if interval.status == Status::Unknown || closed_before_stop {
            // Unknown before, unknown while down: one unknown interval goes
            // on (the open one, or a new one from the stop).
            let since = match interval.ended_at {
                None => interval.started_at,
                Some(ended_at) => {
                    plan.inserts.push(unknown(ended_at, None));
                    ended_at
                }
            };
            let mut state = unknown_state(agent.clone(), name.clone(), from_millis(since)?);
            state.updated = from_millis(resumed_at)?;
            state.seq = interval.last_seq;
            plan.states.push(state);
            continue;
        }
        if interval.ended_at.is_none() {
            plan.closes.push(CloseById {
                id: interval.id,
                ended_at: closed_at,
            });
        }
        if closed_at < resumed_at {
            plan.inserts.push(unknown(closed_at, Some(resumed_at)));
        }
        plan.inserts
            .push(details(interval.status, resumed_at, None));
        let at = from_millis(resumed_at)?;
        plan.states.push(AgentState {
            agent: agent.clone(),
            name: name.clone(),
            status: interval.status,
            on_a_call: interval.status.on_a_call(),
            available: available_for(interval.status),
            reason: interval.reason.clone(),
            extension_status: interval.extension_status.clone(),
            destination: interval.destination.clone(),
            since: at,
            updated: at,
            seq: interval.last_seq,
        });
    }
    for interval in latest {
        if !configured_ids.contains(&interval.agent) && interval.ended_at.is_none() {
            plan.closes.push(CloseById {
                id: interval.id,
                ended_at: last_alive.max(interval.started_at),
            });
        }
    }
    Ok(plan)
}

/// One stored status interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interval {
    /// The agent.
    pub agent: AgentId,
    /// The status during the interval.
    pub status: Status,
    /// The raw reason when not available.
    pub reason: Option<String>,
    /// The extension status when available.
    pub extension_status: Option<String>,
    /// The number the agent was reached at.
    pub destination: Option<String>,
    /// When the interval began.
    pub started_at: DateTime<Utc>,
    /// When it ended; `None` while it is the agent's current status.
    pub ended_at: Option<DateTime<Utc>>,
    /// The seq of the transition that began it; `None` when the bridge
    /// synthesised it on restart (the `unknown` gap and the resumed interval).
    pub seq: Option<u64>,
}

/// A stored interval row: agent, status, reason, extension status,
/// destination, started_at, ended_at, seq.
pub(crate) type IntervalRow = (
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
    Option<i64>,
    Option<i64>,
);

/// A latest-interval row: id, agent, status, reason, extension status,
/// destination, started_at, ended_at, and the agent's latest seq.
pub(crate) type LastRow = (
    i64,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
    Option<i64>,
    Option<i64>,
);

/// A stored agent id back as an [`AgentId`].
pub(crate) fn agent_from_db(agent: &str) -> Result<AgentId, StoreError> {
    AgentId::parse(agent).map_err(StoreError::invalid_row)
}

/// A stored status back as a [`Status`].
pub(crate) fn status_from_db(status: &str) -> Result<Status, StoreError> {
    status.parse().map_err(StoreError::invalid_row)
}

/// Decodes a stored interval row.
pub(crate) fn interval_from_row(
    (agent, status, reason, extension_status, destination, started_at, ended_at, seq): IntervalRow,
) -> Result<Interval, StoreError> {
    Ok(Interval {
        agent: agent_from_db(&agent)?,
        status: status_from_db(&status)?,
        reason,
        extension_status,
        destination,
        started_at: from_millis(started_at)?,
        ended_at: ended_at.map(from_millis).transpose()?,
        seq: seq.map(seq_from_db),
    })
}

/// Decodes a latest-interval row.
pub(crate) fn last_interval_from_row(
    (id, agent, status, reason, extension_status, destination, started_at, ended_at, last_seq): LastRow,
) -> Result<LastInterval, StoreError> {
    let context = |error: StoreError| StoreError::invalid_row(format!("interval {id}: {error}"));
    let agent = agent_from_db(&agent).map_err(context)?;
    let status = status_from_db(&status).map_err(context)?;
    // Validates the stored times once, here, rather than in every use.
    from_millis(started_at)?;
    ended_at.map(from_millis).transpose()?;
    Ok(LastInterval {
        id,
        agent,
        status,
        reason,
        extension_status,
        destination,
        started_at,
        ended_at,
        last_seq: last_seq.map_or(0, seq_from_db),
    })
}

/// An interval that a write closed (or inserted already closed): what the
/// per-day totals need of it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Deserialize)]
pub(crate) struct ClosedInterval {
    /// The agent's id.
    pub agent: String,
    /// The status, by its wire name.
    pub status: String,
    /// Start, ms.
    pub started_at: i64,
    /// End, ms.
    pub ended_at: i64,
    /// The opening transition's seq; `None` when synthesised.
    pub seq: Option<i64>,
}

impl ClosedInterval {
    /// The closed rows among a batch's inserts.
    pub(crate) fn from_inserts(inserts: &[NewInterval<'_>]) -> Vec<ClosedInterval> {
        inserts
            .iter()
            .filter_map(|row| {
                Some(ClosedInterval {
                    agent: row.agent.to_owned(),
                    status: row.status.to_owned(),
                    started_at: row.started_at,
                    ended_at: row.ended_at?,
                    seq: row.seq,
                })
            })
            .collect()
    }
}

/// Time to add to one agent's total in one status on one day.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct DailyStatus {
    /// The day's first instant, ms.
    pub day_start: i64,
    /// The agent's id.
    pub agent: String,
    /// The status, by its wire name.
    pub status: String,
    /// Milliseconds to add.
    pub ms: i64,
}

/// Calls to add to one agent's totals on one day.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct DailyCalls {
    /// The day's first instant, ms.
    pub day_start: i64,
    /// The agent's id.
    pub agent: String,
    /// Calls to add.
    pub calls: i64,
    /// Their summed durations, ms.
    pub call_ms: i64,
    /// The longest of them, ms.
    pub longest_ms: i64,
}

/// What closed intervals add to the per-day totals, one row per key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct DailyRows {
    /// Time per day, agent and status.
    pub status: Vec<DailyStatus>,
    /// Calls per day and agent.
    pub calls: Vec<DailyCalls>,
}

impl DailyRows {
    /// True when there is nothing to add.
    pub(crate) fn is_empty(&self) -> bool {
        self.status.is_empty() && self.calls.is_empty()
    }
}

/// The per-day totals of `closed` intervals in `tz`: each interval's time
/// split at local midnights (a zero-length interval adds 0 to its day, so
/// the agent is listed there), and each `on_call` interval with a seq a call
/// of the day it starts, with its full duration. The same rules as the
/// report's reference (`report::summary::accumulate`).
pub(crate) fn daily_rows(closed: &[ClosedInterval], tz: chrono_tz::Tz) -> DailyRows {
    let mut status: HashMap<(i64, &str, &str), i64> = HashMap::new();
    let mut calls: HashMap<(i64, &str), (i64, i64, i64)> = HashMap::new();
    for interval in closed {
        let end = interval.ended_at.max(interval.started_at);
        let pieces = crate::localtime::split_by_local_day(interval.started_at, end, tz);
        for &(day_start, ms) in &pieces {
            *status
                .entry((day_start, &interval.agent, &interval.status))
                .or_insert(0) += ms;
        }
        if interval.status == Status::OnCall.as_str() && interval.seq.is_some() {
            if let Some(&(day_start, _)) = pieces.first() {
                let duration = end - interval.started_at;
                let entry = calls
                    .entry((day_start, &interval.agent))
                    .or_insert((0, 0, 0));
                entry.0 += 1;
                entry.1 += duration;
                entry.2 = entry.2.max(duration);
            }
        }
    }
    DailyRows {
        status: status
            .into_iter()
            .map(|((day_start, agent, status), ms)| DailyStatus {
                day_start,
                agent: agent.to_owned(),
                status: status.to_owned(),
                ms,
            })
            .collect(),
        calls: calls
            .into_iter()
            .map(
                |((day_start, agent), (calls, call_ms, longest_ms))| DailyCalls {
                    day_start,
                    agent: agent.to_owned(),
                    calls,
                    call_ms,
                    longest_ms,
                },
            )
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(ms: i64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(ms).unwrap()
    }

    fn state(agent: &str, status: Status, since: i64, seq: u64) -> AgentState {
        let mut state = unknown_state(AgentId::parse(agent).unwrap(), agent.to_owned(), at(since));
        state.status = status;
        state.seq = seq;
        state
    }

    #[test]
    fn transitions_close_stored_interval_once_and_chain_within_the_batch() {
        let a1 = state("a", Status::Available, 1_000, 1);
        let b1 = state("b", Status::Paused, 1_500, 2);
        let a2 = state("a", Status::OnCall, 2_000, 3);
        let a3 = state("a", Status::Wrapup, 3_000, 4);
        let plan = batch_rows([(&a1, true), (&b1, true), (&a2, true), (&a3, true)], None);
        assert_eq!(
            plan.closes,
            [
                Close {
                    agent: "a",
                    ended_at: 1_000
                },
                Close {
                    agent: "b",
                    ended_at: 1_500
                }
            ]
        );
        let rows: Vec<_> = plan
            .inserts
            .iter()
            .map(|row| (row.agent, row.status, row.started_at, row.ended_at, row.seq))
            .collect();
        assert_eq!(
            rows,
            [
                ("a", "available", 1_000, Some(2_000), Some(1)),
                ("b", "paused", 1_500, None, Some(2)),
                ("a", "on_call", 2_000, Some(3_000), Some(3)),
                ("a", "wrapup", 3_000, None, Some(4)),
            ]
        );
        assert_eq!(plan.max_seq, Some(4));
        assert!(plan.detail_updates.is_empty());
    }

    #[test]
    fn detail_changes_update_in_place_and_never_add_rows() {
        let mut stored_update = state("a", Status::Unavailable, 0, 7);
        stored_update.reason = Some("training".into());
        let mut later_update = stored_update.clone();
        later_update.reason = Some("meeting".into());
        let b1 = state("b", Status::Available, 2_000, 8);
        let mut b_detail = b1.clone();
        b_detail.extension_status = Some("idle".into());
        let plan = batch_rows(
            [
                (&stored_update, false),
                (&later_update, false),
                (&b1, true),
                (&b_detail, false),
            ],
            None,
        );
        assert_eq!(
            plan.detail_updates,
            [DetailUpdate {
                agent: "a",
                reason: Some("meeting"),
                extension_status: None,
                destination: None
            }]
        );
        assert_eq!(plan.inserts.len(), 1);
        assert_eq!(plan.inserts[0].extension_status, Some("idle"));
        assert_eq!(plan.max_seq, Some(8));
    }

    #[test]
    fn a_clock_stepping_back_never_ends_an_interval_before_it_began() {
        let a1 = state("a", Status::Available, 5_000, 1);
        let a2 = state("a", Status::OnCall, 4_000, 2);
        let plan = batch_rows([(&a1, true), (&a2, true)], None);
        assert_eq!(plan.inserts[0].ended_at, Some(5_000));
    }

    fn open(id: i64, agent: &str, status: Status, started_at: i64, last_seq: u64) -> LastInterval {
        LastInterval {
            id,
            agent: AgentId::parse(agent).unwrap(),
            status,
            reason: Some("why".into()),
            extension_status: None,
            destination: Some("31".into()),
            started_at,
            ended_at: None,
            last_seq,
        }
    }

    fn closed(
        id: i64,
        agent: &str,
        status: Status,
        span: (i64, i64),
        last_seq: u64,
    ) -> LastInterval {
        LastInterval {
            ended_at: Some(span.1),
            ..open(id, agent, status, span.0, last_seq)
        }
    }

    /// What a test compares of inserted rows.
    fn inserted<'a>(rows: &'a [NewInterval<'a>]) -> Vec<(&'a str, &'a str, i64, Option<i64>)> {
        rows.iter()
            .map(|row| (row.agent, row.status, row.started_at, row.ended_at))
            .collect()
    }

    #[test]
    fn after_a_clean_stop_the_down_time_is_unknown_as_after_a_crash() {
        // Closed at the stop (5_000), restarted at 9_000.
        let stored = [
            closed(1, "a", Status::OnCall, (1_000, 5_000), 7),
            closed(2, "b", Status::Unknown, (2_000, 5_000), 8),
        ];
        let plan = resume_rows(
            &stored,
            &configured(&["a", "b"]),
            Some(5_000),
            at(9_000),
            &|_| Handover::Restart,
        )
        .unwrap();
        assert!(plan.closes.is_empty(), "nothing is open");
        assert_eq!(
            inserted(&plan.inserts),
            [
                ("a", "unknown", 5_000, Some(9_000)),
                ("a", "on_call", 9_000, None),
                ("b", "unknown", 5_000, None),
            ]
        );
        let (a, b) = (&plan.states[0], &plan.states[1]);
        assert_eq!((a.status, a.since, a.seq), (Status::OnCall, at(9_000), 7));
        assert_eq!((b.status, b.since, b.seq), (Status::Unknown, at(5_000), 8));
    }

    #[test]
    fn a_take_over_continues_a_released_agent_and_records_a_dead_owners_gap() {
        let stored = [
            open(1, "released", Status::OnCall, 1_000, 3),
            open(2, "expired", Status::Paused, 1_000, 4),
        ];
        let how = |agent: &AgentId| match agent.as_str() {
            "released" => Handover::Released,
            _ => Handover::Expired { owner_alive: 4_000 },
        };
        let plan = resume_rows(
            &stored,
            &configured(&["released", "expired"]),
            Some(2_000),
            at(9_000),
            &how,
        )
        .unwrap();
        assert_eq!(
            plan.closes,
            [CloseById {
                id: 2,
                ended_at: 4_000
            }]
        );
        assert_eq!(
            inserted(&plan.inserts),
            [
                ("expired", "unknown", 4_000, Some(9_000)),
                ("expired", "paused", 9_000, None)
            ]
        );
        let released = &plan.states[0];
        assert_eq!(
            (released.status, released.since, released.seq),
            (Status::OnCall, at(1_000), 3)
        );
    }

    #[test]
    fn a_clock_behind_the_stored_history_never_dates_an_interval_back() {
        // The last interval ended at 5_000 but the clock now says 3_000.
        let stored = [closed(1, "a", Status::Paused, (1_000, 5_000), 2)];
        let plan = resume_rows(
            &stored,
            &configured(&["a"]),
            Some(5_000),
            at(3_000),
            &|_| Handover::Restart,
        )
        .unwrap();
        assert_eq!(inserted(&plan.inserts), [("a", "paused", 5_000, None)]);
        assert_eq!(plan.states[0].since, at(5_000));
        // An open interval that started after the clock's `now`.
        let stored = [open(1, "a", Status::Paused, 8_000, 2)];
        let plan = resume_rows(
            &stored,
            &configured(&["a"]),
            Some(6_000),
            at(3_000),
            &|_| Handover::Restart,
        )
        .unwrap();
        assert_eq!(
            plan.closes,
            [CloseById {
                id: 1,
                ended_at: 8_000
            }]
        );
        assert_eq!(inserted(&plan.inserts), [("a", "paused", 8_000, None)]);
    }

    fn configured(agents: &[&str]) -> Vec<(AgentId, String)> {
        agents
            .iter()
            .map(|agent| (AgentId::parse(agent).unwrap(), format!("Agent {agent}")))
            .collect()
    }

    #[test]
    fn resume_closes_at_heartbeat_records_the_gap_and_reopens() {
        let stored = [
            open(1, "a", Status::Paused, 1_000, 5),
            open(2, "gone", Status::Available, 1_500, 6),
        ];
        let plan = resume_rows(
            &stored,
            &configured(&["a", "new"]),
            Some(3_000),
            at(10_000),
            &|_| Handover::Restart,
        )
        .unwrap();
        assert_eq!(
            plan.closes,
            [
                CloseById {
                    id: 1,
                    ended_at: 3_000
                },
                CloseById {
                    id: 2,
                    ended_at: 3_000
                }
            ]
        );
        let rows: Vec<_> = plan
            .inserts
            .iter()
            .map(|row| {
                (
                    row.agent,
                    row.status,
                    row.reason,
                    row.started_at,
                    row.ended_at,
                    row.seq,
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                ("a", "unknown", None, 3_000, Some(10_000), None),
                ("a", "paused", Some("why"), 10_000, None, None),
            ]
        );
        assert_eq!(plan.states.len(), 2);
        let a = &plan.states[0];
        assert_eq!(
            (a.status, a.available, a.seq, a.since, a.updated),
            (Status::Paused, Some(false), 5, at(10_000), at(10_000))
        );
        assert_eq!(a.name, "Agent a");
        let new = &plan.states[1];
        assert_eq!(
            (new.status, new.seq, new.since),
            (Status::Unknown, 0, at(10_000))
        );
    }

    #[test]
    fn resume_without_heartbeat_uses_latest_open_start() {
        let stored = [
            open(1, "a", Status::OnCall, 1_000, 1),
            open(2, "b", Status::Available, 4_000, 2),
        ];
        let plan = resume_rows(&stored, &configured(&["a", "b"]), None, at(9_000), &|_| {
            Handover::Restart
        })
        .unwrap();
        assert_eq!(
            plan.closes,
            [
                CloseById {
                    id: 1,
                    ended_at: 4_000
                },
                CloseById {
                    id: 2,
                    ended_at: 4_000
                }
            ]
        );
        assert!(plan.states[0].on_a_call);
        assert_eq!(
            plan.inserts
                .iter()
                .filter(|row| row.status == "unknown")
                .count(),
            2
        );
    }

    #[test]
    fn resume_with_no_downtime_adds_no_gap_and_unknown_just_continues() {
        let stored = [
            open(1, "a", Status::Available, 1_000, 3),
            open(2, "b", Status::Unknown, 500, 4),
        ];
        let plan = resume_rows(
            &stored,
            &configured(&["a", "b"]),
            Some(2_000),
            at(2_000),
            &|_| Handover::Restart,
        )
        .unwrap();
        assert_eq!(
            plan.closes,
            [CloseById {
                id: 1,
                ended_at: 2_000
            }]
        );
        assert_eq!(plan.inserts.len(), 1);
        assert_eq!(plan.inserts[0].started_at, 2_000);
        let b = &plan.states[1];
        assert_eq!(
            (b.status, b.since, b.seq, b.available),
            (Status::Unknown, at(500), 4, None)
        );
    }
}
