//! The poll log: for every virtual agent, which clients polled it
//! (`ivr.getAgentAvail`), how often and when, so a test running several
//! bridges can prove that every agent is polled by exactly one bridge at a
//! time (`GET /control/poll-log?window=2s`, reset with `DELETE
//! /control/poll-log`).
//!
//! Clients are told apart by their `User-Agent` header (the bridge sends
//! `pbx2mqtt/<version> (<bridge id>)`; no header counts as the empty user
//! agent). Each distinct one is interned once as a small number; a
//! connection remembers its own ([`KnownClient`]), so the table is only
//! consulted when a connection's user agent changes.
//!
//! Recording is on the hot path, so each agent has a small fixed record
//! behind its own mutex (only polls of the same agent ever meet there): per
//! client (up to [`CLIENT_SLOTS`]) the count and first and last poll, the
//! last poll, the number of hand-overs (a poll by another client than the
//! poll before it), and the closest hand-over. Nothing grows with time.
//!
//! The closest hand-over answers the overlap question for any window: two
//! polls of one agent by different clients less than `window` apart exist
//! exactly when two *successive* polls by different clients are (between
//! the two, the client changes at least once, at a gap no longer than
//! theirs). Times come from a monotonic clock and are shown as wall-clock
//! UTC. This module does no IO.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Distinct clients counted separately per agent; polls by more clients than
/// this land in [`AgentPolls::other_clients_polls`].
pub const CLIENT_SLOTS: usize = 4;

/// Distinct user agents remembered; further ones share one entry, so a
/// client inventing a new user agent per request cannot grow the table.
const MAX_USER_AGENTS: usize = 1_024;

/// The name shown for the user agents beyond [`MAX_USER_AGENTS`].
const OTHER_USER_AGENTS: &str = "(other user agents)";

/// The poll log as `GET /control/poll-log` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollLog {
    /// When the log was last reset (or the simulator started).
    pub since: DateTime<Utc>,
    /// The window overlaps were looked for in, in microseconds; `None`: any
    /// two polls since `since`, however far apart.
    pub window_micros: Option<u64>,
    /// Every agent polled since `since`, by Belfabriek extension id.
    pub agents: BTreeMap<String, AgentPolls>,
    /// The agents not polled since `since`, in extension order.
    pub unpolled: Vec<String>,
    /// The agents polled by two different clients less than the window
    /// apart, in extension order.
    pub overlaps: Vec<PollOverlap>,
}

impl PollLog {
    /// The user agents that polled `agent` (empty when none did).
    pub fn user_agents_of(&self, agent: &str) -> Vec<&str> {
        self.agents.get(agent).map_or_else(Vec::new, |polls| {
            polls
                .clients
                .iter()
                .map(|client| client.user_agent.as_str())
                .collect()
        })
    }
}

/// One agent's polls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentPolls {
    /// Polls in all.
    pub polls: u64,
    /// Polls by another client than the poll before.
    pub handovers: u64,
    /// Per client, in the order they first polled.
    pub clients: Vec<ClientPolls>,
    /// Polls by clients beyond the first [`CLIENT_SLOTS`].
    #[serde(default, skip_serializing_if = "is_zero")]
    pub other_clients_polls: u64,
}

fn is_zero(number: &u64) -> bool {
    *number == 0
}

/// One client's polls of one agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientPolls {
    /// Its `User-Agent` header.
    pub user_agent: String,
    /// How many polls.
    pub polls: u64,
    /// The first one.
    pub first: DateTime<Utc>,
    /// The last one.
    pub last: DateTime<Utc>,
}

/// Two successive polls of one agent by different clients, closer than the
/// window: the closest such pair since the reset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollOverlap {
    /// The agent's Belfabriek extension id.
    pub agent: String,
    /// Time between the two polls, in microseconds.
    pub gap_micros: u64,
    /// All hand-overs of this agent since the reset (of any gap).
    pub handovers: u64,
    /// The two polls, earlier first.
    pub polls: [PollAt; 2],
}

/// One poll: by whom and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollAt {
    /// The client's `User-Agent` header.
    pub user_agent: String,
    /// When the request arrived.
    pub at: DateTime<Utc>,
}

/// A client as the log knows it: an index into the user agent table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientId(u32);

/// One client's polls of one agent, as recorded.
#[derive(Debug, Clone, Copy)]
struct ClientRecord {
    /// Who.
    client: ClientId,
    /// How many polls.
    polls: u64,
    /// First poll, microseconds since the origin.
    first: u64,
    /// Last poll, microseconds since the origin.
    last: u64,
}

/// Two successive polls by different clients.
#[derive(Debug, Clone, Copy)]
struct Handover {
    /// The earlier poll's client.
    from: ClientId,
    /// When it was, microseconds since the origin.
    from_at: u64,
    /// The later poll's client.
    to: ClientId,
    /// When it was.
    to_at: u64,
}

impl Handover {
    fn gap(&self) -> u64 {
        self.to_at.saturating_sub(self.from_at)
    }
}

/// Everything recorded about one agent since the reset.
#[derive(Debug, Clone, Default)]
struct AgentRecord {
    /// Per client, in the order they first polled; `None`: a free slot.
    clients: [Option<ClientRecord>; CLIENT_SLOTS],
    /// Polls by clients that found no free slot.
    other_clients_polls: u64,
    /// The last poll: by whom and when.
    last: Option<(ClientId, u64)>,
    /// Polls by another client than the poll before.
    handovers: u64,
    /// The hand-over with the smallest gap (the first of equals).
    closest: Option<Handover>,
}

impl AgentRecord {
    fn record(&mut self, client: ClientId, now: u64) {
        if let Some((previous, previous_at)) = self.last {
            if previous != client {
                self.handovers += 1;
                let handover = Handover {
                    from: previous,
                    from_at: previous_at,
                    to: client,
                    to_at: now,
                };
                if self
                    .closest
                    .is_none_or(|closest| handover.gap() < closest.gap())
                {
                    self.closest = Some(handover);
                }
            }
        }
        self.last = Some((client, now));
        for slot in &mut self.clients {
            match slot {
                Some(record) if record.client == client => {
                    record.polls += 1;
                    record.last = now;
                    return;
                }
                Some(_) => {}
                None => {
                    *slot = Some(ClientRecord {
                        client,
                        polls: 1,
                        first: now,
                        last: now,
                    });
                    return;
                }
            }
        }
        self.other_clients_polls += 1;
    }

    fn polls(&self) -> u64 {
        self.clients
            .iter()
            .flatten()
            .map(|record| record.polls)
            .sum::<u64>()
            + self.other_clients_polls
    }
}

/// The interned user agents.
#[derive(Debug, Default)]
struct UserAgents {
    /// Names by client id.
    names: Vec<String>,
    /// Raw header value → client id.
    ids: HashMap<Vec<u8>, ClientId>,
}

/// Records polls per agent (by index, in extension order).
#[derive(Debug)]
pub struct PollLogRecorder {
    /// Time zero of every stored time.
    origin: Instant,
    /// The wall-clock time at `origin`.
    wall_origin: DateTime<Utc>,
    /// Microseconds since `origin` of the last reset.
    since: AtomicU64,
    /// One record per agent.
    agents: Vec<Mutex<AgentRecord>>,
    /// The interned user agents.
    user_agents: Mutex<UserAgents>,
}

/// Locks a mutex whose data stays valid even if a holder panicked (plain
/// counters), so poisoning is ignored.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl PollLogRecorder {
    /// A log for `agents` agents, none polled yet, with times measured from
    /// `origin`.
    pub fn new(agents: usize, origin: Instant) -> Self {
        let wall_origin = Utc::now()
            - chrono::TimeDelta::from_std(origin.elapsed()).unwrap_or(chrono::TimeDelta::zero());
        Self {
            origin,
            wall_origin,
            since: AtomicU64::new(0),
            agents: (0..agents)
                .map(|_| Mutex::new(AgentRecord::default()))
                .collect(),
            user_agents: Mutex::new(UserAgents::default()),
        }
    }

    /// Microseconds since the origin.
    pub fn now_micros(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// The client with this `User-Agent` header value.
    pub fn client(&self, user_agent: &[u8]) -> ClientId {
        let mut table = lock(&self.user_agents);
        if let Some(&id) = table.ids.get(user_agent) {
            return id;
        }
        if table.names.len() >= MAX_USER_AGENTS {
            return ClientId(MAX_USER_AGENTS as u32);
        }
        let id = ClientId(table.names.len() as u32);
        table
            .names
            .push(String::from_utf8_lossy(user_agent).into_owned());
        table.ids.insert(user_agent.to_vec(), id);
        id
    }

    /// Records a poll of agent `index` by `client` at `now` (microseconds
    /// since the origin). Unknown indexes are ignored.
    pub fn record(&self, index: usize, client: ClientId, now: u64) {
        if let Some(agent) = self.agents.get(index) {
            lock(agent).record(client, now);
        }
    }

    /// Forgets every poll so far. Not atomic as a whole: a poll during the
    /// reset may be kept or not.
    pub fn reset(&self) {
        self.since.store(self.now_micros(), Ordering::Relaxed);
        for agent in &self.agents {
            *lock(agent) = AgentRecord::default();
        }
    }

    fn wall(&self, micros: u64) -> DateTime<Utc> {
        self.wall_origin
            + chrono::TimeDelta::microseconds(i64::try_from(micros).unwrap_or(i64::MAX))
    }

    /// The log now, with the overlaps closer than `window` (`None`: any);
    /// `name_of(index)` gives an agent's extension id.
    pub fn snapshot(&self, window: Option<Duration>, name_of: impl Fn(usize) -> String) -> PollLog {
        let window_micros =
            window.map(|window| u64::try_from(window.as_micros()).unwrap_or(u64::MAX));
        let records: Vec<AgentRecord> = self
            .agents
            .iter()
            .map(|agent| lock(agent).clone())
            .collect();
        let names = lock(&self.user_agents).names.clone();
        let user_agent = |client: ClientId| {
            names
                .get(client.0 as usize)
                .cloned()
                .unwrap_or_else(|| OTHER_USER_AGENTS.to_owned())
        };
        let mut log = PollLog {
            since: self.wall(self.since.load(Ordering::Relaxed)),
            window_micros,
            agents: BTreeMap::new(),
            unpolled: Vec::new(),
            overlaps: Vec::new(),
        };
        for (index, record) in records.iter().enumerate() {
            let polls = record.polls();
            if polls == 0 {
                log.unpolled.push(name_of(index));
                continue;
            }
            if let Some(closest) = record.closest {
                if window_micros.is_none_or(|window| closest.gap() < window) {
                    log.overlaps.push(PollOverlap {
                        agent: name_of(index),
                        gap_micros: closest.gap(),
                        handovers: record.handovers,
                        polls: [
                            PollAt {
                                user_agent: user_agent(closest.from),
                                at: self.wall(closest.from_at),
                            },
                            PollAt {
                                user_agent: user_agent(closest.to),
                                at: self.wall(closest.to_at),
                            },
                        ],
                    });
                }
            }
            let clients = record
                .clients
                .iter()
                .flatten()
                .map(|client| ClientPolls {
                    user_agent: user_agent(client.client),
                    polls: client.polls,
                    first: self.wall(client.first),
                    last: self.wall(client.last),
                })
                .collect();
            log.agents.insert(
                name_of(index),
                AgentPolls {
                    polls,
                    handovers: record.handovers,
                    clients,
                    other_clients_polls: record.other_clients_polls,
                },
            );
        }
        log
    }
}

/// The client of one connection, remembered so the user agent table is only
/// consulted when the connection's `User-Agent` changes.
#[derive(Debug, Default)]
pub struct KnownClient {
    /// The header value last seen on this connection, and its client.
    last: Option<(Vec<u8>, ClientId)>,
}

impl KnownClient {
    /// The client with this `User-Agent` header value.
    pub fn id(&mut self, user_agent: &[u8], log: &PollLogRecorder) -> ClientId {
        match &self.last {
            Some((known, id)) if known.as_slice() == user_agent => *id,
            _ => {
                let id = log.client(user_agent);
                self.last = Some((user_agent.to_vec(), id));
                id
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(index: usize) -> String {
        (1001 + index).to_string()
    }

    /// Feeds `(agent index, user agent, at micros)` polls to a log of 3
    /// agents and returns its snapshot for `window`.
    fn log_of(polls: &[(usize, &str, u64)], window: Option<Duration>) -> PollLog {
        let log = PollLogRecorder::new(3, Instant::now());
        let mut connection = KnownClient::default();
        for &(index, user_agent, at) in polls {
            let client = connection.id(user_agent.as_bytes(), &log);
            log.record(index, client, at);
        }
        log.snapshot(window, name)
    }

    #[test]
    fn polls_are_counted_per_agent_and_client() {
        let log = log_of(
            &[
                (0, "a", 1_000),
                (0, "a", 2_000),
                (1, "b", 2_500),
                (0, "a", 3_000),
                (7, "a", 3_000),
            ],
            None,
        );
        assert_eq!(log.unpolled, ["1003"]);
        assert!(log.overlaps.is_empty(), "{log:?}");
        let first = &log.agents["1001"];
        assert_eq!((first.polls, first.handovers), (3, 0));
        assert_eq!(log.user_agents_of("1001"), ["a"]);
        let client = &first.clients[0];
        assert_eq!(client.polls, 3);
        assert_eq!((client.last - client.first).num_microseconds(), Some(2_000));
        assert_eq!(log.user_agents_of("1002"), ["b"]);
        assert!(log.user_agents_of("1003").is_empty());
    }

    #[test]
    fn overlaps_are_the_closest_handover_within_the_window() {
        // Agent 1001: a clean hand-over from a to b after 900 ms. Agent 1002:
        // a and b interleave, 40 ms apart at the closest.
        let polls = [
            (0, "a", 0),
            (0, "a", 1_000_000),
            (0, "b", 1_900_000),
            (0, "b", 2_900_000),
            (1, "a", 0),
            (1, "b", 100_000),
            (1, "a", 1_000_000),
            (1, "b", 1_040_000),
        ];
        let log = log_of(&polls, Some(Duration::from_millis(500)));
        assert_eq!(log.window_micros, Some(500_000));
        assert_eq!(log.overlaps.len(), 1, "{log:?}");
        let overlap = &log.overlaps[0];
        assert_eq!(
            (
                overlap.agent.as_str(),
                overlap.gap_micros,
                overlap.handovers
            ),
            ("1002", 40_000, 3)
        );
        assert_eq!(overlap.polls[0].user_agent, "a");
        assert_eq!(overlap.polls[1].user_agent, "b");
        assert_eq!(
            (overlap.polls[1].at - overlap.polls[0].at).num_microseconds(),
            Some(40_000)
        );
        assert_eq!(log.agents["1001"].handovers, 1);

        // A wider window also catches the clean hand-over; without a window,
        // every agent polled by two clients is listed.
        let wide = log_of(&polls, Some(Duration::from_secs(1)));
        let agents: Vec<_> = wide.overlaps.iter().map(|o| o.agent.as_str()).collect();
        assert_eq!(agents, ["1001", "1002"]);
        assert_eq!(log_of(&polls, None).overlaps.len(), 2);
        // The gap must be shorter than the window.
        assert!(log_of(&polls, Some(Duration::from_millis(40)))
            .overlaps
            .is_empty());
    }

    #[test]
    fn many_clients_and_resets() {
        let log = PollLogRecorder::new(1, Instant::now());
        for (at, user_agent) in ["a", "b", "c", "d", "e", "e", "a"].iter().enumerate() {
            log.record(0, log.client(user_agent.as_bytes()), at as u64);
        }
        let snapshot = log.snapshot(None, name);
        let polls = &snapshot.agents["1001"];
        assert_eq!(
            (polls.polls, polls.other_clients_polls, polls.handovers),
            (7, 2, 5)
        );
        assert_eq!(snapshot.user_agents_of("1001"), ["a", "b", "c", "d"]);
        assert_eq!(polls.clients[0].polls, 2);

        log.reset();
        let snapshot = log.snapshot(None, name);
        assert!(snapshot.agents.is_empty() && snapshot.overlaps.is_empty());
        assert_eq!(snapshot.unpolled, ["1001"]);
        // The poll before the reset is forgotten: no hand-over across it.
        log.record(0, log.client(b"b"), 10);
        assert_eq!(log.snapshot(None, name).agents["1001"].handovers, 0);
    }

    #[test]
    fn the_user_agent_table_is_bounded() {
        let log = PollLogRecorder::new(1, Instant::now());
        for number in 0..MAX_USER_AGENTS + 5 {
            log.client(number.to_string().as_bytes());
        }
        let overflow = log.client(b"one more");
        assert_eq!(overflow, ClientId(MAX_USER_AGENTS as u32));
        log.record(0, overflow, 1);
        assert_eq!(
            log.snapshot(None, name).user_agents_of("1001"),
            [OTHER_USER_AGENTS]
        );
        // A known one is still itself.
        assert_eq!(log.client(b"0"), ClientId(0));
    }
}
