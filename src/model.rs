//! Domain values shared by every module: agent identifiers, the combined
//! [`Status`], one poll's raw [`AgentReading`], the derived [`AgentState`] and
//! the [`Change`] the tracker hands to the history writer.
//!
//! Everything here is plain data: no IO, no clocks, no configuration lookups.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A configured agent's id: the `<agent>` segment of its MQTT topics.
///
/// Parsed once at the boundary (config, topic, CLI): 1 to 64 ASCII letters,
/// digits, `_` or `-`, so it can never break a topic (`/`, `+`, `#`) or a URL.
///
/// Shared, not copied: every map and state that names an agent holds the
/// same allocation (a clone is a reference count), so 5,000 agents cost one
/// string each however many places know them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentId(Arc<str>);

/// Why a string is not a valid [`AgentId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid agent id {0:?}: use 1 to 64 ASCII letters, digits, '_' or '-'")]
pub struct InvalidAgentId(pub String);

impl AgentId {
    /// Parses and validates an agent id.
    pub fn parse(raw: &str) -> Result<Self, InvalidAgentId> {
        let valid = !raw.is_empty()
            && raw.len() <= 64
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if valid {
            Ok(Self(Arc::from(raw)))
        } else {
            Err(InvalidAgentId(crate::text::shorten(raw, 80)))
        }
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Maps keyed by [`AgentId`] can be looked up by `&str` (ids compare and
/// hash as their text).
impl Borrow<str> for AgentId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl Serialize for AgentId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl FromStr for AgentId {
    type Err = InvalidAgentId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl<'de> Deserialize<'de> for AgentId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// The one combined status of an agent (`product.md` §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Not logged in (`available=0`, reason `-` or empty).
    Offline,
    /// On a break (`available=0`, reason `pause`/`paused`).
    Paused,
    /// Handling a call (`available=0`, reason `handling`).
    Busy,
    /// Not available for any other reason; the raw reason is published.
    Unavailable,
    /// Logged in and idle.
    Available,
    /// A call is connecting (extension status `calling`).
    Ringing,
    /// A call is established (extension status `called`).
    OnCall,
    /// After-call work (extension status `wrapup`).
    Wrapup,
    /// The agent could not be polled for `poll.stale_after` attempts, or the
    /// bridge was not running.
    Unknown,
}

impl Status {
    /// Every status, in a stable order (used for report columns and discovery).
    pub const ALL: [Status; 9] = [
        Status::Offline,
        Status::Paused,
        Status::Busy,
        Status::Unavailable,
        Status::Available,
        Status::Ringing,
        Status::OnCall,
        Status::Wrapup,
        Status::Unknown,
    ];

    /// The wire name, as published on `.../status` and stored in history.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Offline => "offline",
            Status::Paused => "paused",
            Status::Busy => "busy",
            Status::Unavailable => "unavailable",
            Status::Available => "available",
            Status::Ringing => "ringing",
            Status::OnCall => "on_call",
            Status::Wrapup => "wrapup",
            Status::Unknown => "unknown",
        }
    }

    /// True when a busy light should be on: `ringing`, `on_call` and `busy`.
    pub fn on_a_call(self) -> bool {
        matches!(self, Status::Ringing | Status::OnCall | Status::Busy)
    }

    /// True for every status in which the agent is logged in (all but
    /// `offline` and `unknown`).
    pub fn logged_in(self) -> bool {
        !matches!(self, Status::Offline | Status::Unknown)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a string is not a [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown status {0:?}")]
pub struct UnknownStatus(pub String);

impl FromStr for Status {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

/// What one successful poll of the Belfabriek API says about an agent,
/// before any interpretation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentReading {
    /// `available` from `ivr.getAgentAvail`.
    pub available: bool,
    /// `availReason`, trimmed; empty when absent.
    pub reason: String,
    /// `extension` (or `endpoint`): the number the agent is reached at.
    pub destination: Option<String>,
    /// `status`/`Available` from `general.getExtensionStatus`, lowercased;
    /// `None` when the second call was not made (agent not available).
    pub extension_status: Option<String>,
}

/// The derived, publishable state of one agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentState {
    /// The agent's configured id.
    pub agent: AgentId,
    /// The agent's display name from the configuration.
    pub name: String,
    /// The combined status.
    pub status: Status,
    /// True for `ringing`, `on_call` and `busy`.
    pub on_a_call: bool,
    /// `available` as last polled; `None` while `unknown`.
    pub available: Option<bool>,
    /// The raw reason when not available (`null` when available or empty).
    pub reason: Option<String>,
    /// The extension status when available.
    pub extension_status: Option<String>,
    /// The number the agent is reached at.
    pub destination: Option<String>,
    /// When the current status began.
    #[serde(with = "rfc3339_millis")]
    pub since: DateTime<Utc>,
    /// When any field of this state last changed.
    #[serde(with = "rfc3339_millis")]
    pub updated: DateTime<Utc>,
    /// The `seq` of the transition that began the current status (0 before
    /// the first transition ever recorded).
    pub seq: u64,
}

/// A status transition, as published on `.../event`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransitionEvent {
    /// The agent's id.
    pub agent: AgentId,
    /// The status before.
    pub from: Status,
    /// The status after.
    pub to: Status,
    /// When the new status began.
    #[serde(with = "rfc3339_millis")]
    pub at: DateTime<Utc>,
    /// How long the previous status lasted, in seconds.
    pub previous_duration_s: f64,
    /// The bridge-wide transition sequence number.
    pub seq: u64,
}

/// One change of an agent's state found by the tracker, on its way to the
/// history writer (which assigns `seq`) and then to the publisher.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The new state; `state.seq` is filled in by the history writer.
    pub state: AgentState,
    /// The status before and when it began, when this change is a transition
    /// (a change of `status`); `None` when only the reason, destination or
    /// extension status changed.
    pub previous: Option<Previous>,
}

/// The status an agent left in a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Previous {
    /// The status before.
    pub status: Status,
    /// When it began.
    pub since: DateTime<Utc>,
}

impl Change {
    /// The event to publish for this change once `seq` is known; `None` when
    /// the status did not change.
    pub fn event(&self, seq: u64) -> Option<TransitionEvent> {
        let previous = self.previous?;
        let duration = (self.state.since - previous.since)
            .num_milliseconds()
            .max(0);
        Some(TransitionEvent {
            agent: self.state.agent.clone(),
            from: previous.status,
            to: self.state.status,
            at: self.state.since,
            previous_duration_s: duration as f64 / 1000.0,
            seq,
        })
    }
}

/// A change after the history writer committed it: what the publisher sends.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    /// The state to publish, retained, with its `seq`.
    pub state: AgentState,
    /// The transition event, when the status changed.
    pub event: Option<TransitionEvent>,
}

/// The members of one call queue, as published on
/// `<base>/queue/<queue>/members` (retained) and shown on the wallboard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueMembers {
    /// The queue number.
    pub queue: String,
    /// Every member's TRiNG extension (agents and custom destinations),
    /// without the tenant suffix, sorted.
    pub members: Vec<String>,
    /// The configured agents among the members, by id.
    pub agents: Vec<AgentId>,
    /// When the members last changed (as far as the bridge has seen).
    #[serde(with = "rfc3339_millis")]
    pub updated: DateTime<Utc>,
}

/// The allowed queues one agent is in, as published on
/// `<base>/agent/<agent>/queues` (retained): the state of its queue switches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentQueues {
    /// The agent's id.
    pub agent: AgentId,
    /// Its TRiNG extension.
    pub extension: String,
    /// The allowed queues it is a member of, sorted.
    pub queues: Vec<String>,
    /// When its membership last changed.
    #[serde(with = "rfc3339_millis")]
    pub updated: DateTime<Utc>,
}

/// Serde adapter writing timestamps as RFC 3339 UTC with milliseconds,
/// e.g. `2026-11-22T09:41:07.250Z`: the form every payload uses.
pub mod rfc3339_millis {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `2026-11-22T09:41:07.250Z`.
    pub fn serialize<S: Serializer>(
        value: &DateTime<Utc>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&value.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    /// Reads any RFC 3339 timestamp.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<DateTime<Utc>, D::Error> {
        let raw = String::deserialize(deserializer)?;
        DateTime::parse_from_rfc3339(&raw)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_agent_id_is_quoted_short() {
        for raw in ["x".repeat(10_000), "\u{7f}".repeat(10_000)] {
            let message = AgentId::parse(&raw).unwrap_err().to_string();
            assert!(message.chars().count() < 200, "{message}");
        }
    }

    #[test]
    fn agent_ids_reject_topic_and_url_metacharacters() {
        for bad in ["", "a/b", "a+b", "a#", "a b", "é", "a&b=c", &"x".repeat(65)] {
            assert!(AgentId::parse(bad).is_err(), "{bad:?} must be rejected");
        }
        for good in ["alice", "agent-7", "A_1", &"x".repeat(64)] {
            assert_eq!(AgentId::parse(good).unwrap().as_str(), good);
        }
    }

    #[test]
    fn status_names_round_trip() {
        for status in Status::ALL {
            assert_eq!(status.as_str().parse::<Status>().unwrap(), status);
            assert_eq!(
                serde_json::to_string(&status).unwrap(),
                format!("\"{}\"", status.as_str())
            );
        }
        assert!("on-call".parse::<Status>().is_err());
    }

    #[test]
    fn on_a_call_is_ringing_on_call_and_busy() {
        let on: Vec<_> = Status::ALL.into_iter().filter(|s| s.on_a_call()).collect();
        assert_eq!(on, [Status::Busy, Status::Ringing, Status::OnCall]);
    }
}
