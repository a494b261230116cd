//! Several bridges on one database (`product.md` §7.6): which bridges are
//! alive and which bridge polls which agent, kept in the database they
//! share (`bridges`, `agent_leases`; migration `..._bridges`). No consensus
//! of our own: the database's row locks and its clock decide.
//!
//! Each bridge calls [`Store::cluster_tick`] every few seconds. In one
//! transaction it renews its heartbeat, reads who is alive, works out which
//! agents it should own (rendezvous hashing over the live bridges: when one
//! joins or leaves, only the agents that move change owner), renews the
//! leases it holds, takes free or expired ones, and releases those another
//! bridge should now have. A lease is the fencing token: the history writer
//! checks it in every batch (`owned_agents`), so a bridge that lost an
//! agent (it hung past the lease) cannot write for it any more.
//!
//! Times are the database's clock (ms), so hosts with different clocks
//! agree.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};

use crate::model::AgentId;

use super::dialect::{with_pool, WritePool};
use super::rows::Handover;
use super::{Store, StoreError};

/// The database's clock, ms since the epoch.
pub(super) const NOW: [&str; 2] = [
    "SELECT CAST(unixepoch('subsec') * 1000 AS INTEGER)",
    "SELECT (extract(epoch from clock_timestamp()) * 1000)::bigint",
];

/// Registers or renews a bridge's heartbeat (`$1` bridge, `$2` now).
const HEARTBEAT: &str =
    "INSERT INTO bridges (bridge, heartbeat_at, started_at) VALUES ($1, $2, $2) \
     ON CONFLICT (bridge) DO UPDATE SET heartbeat_at = excluded.heartbeat_at";

/// Every bridge with its heartbeat.
const BRIDGES: &str = "SELECT bridge, heartbeat_at FROM bridges ORDER BY bridge";

/// Forgets bridges silent for a day (their leases long gone).
const FORGET_BRIDGES: &str = "DELETE FROM bridges WHERE heartbeat_at < $1";

/// Every lease.
const LEASES: &str = "SELECT agent, bridge, epoch, expires_at FROM agent_leases";

/// Takes or renews one lease (`$1` agent, `$2` bridge, `$3` expires_at).
const TAKE_LEASE: &str =
    "INSERT INTO agent_leases (agent, bridge, epoch, expires_at) VALUES ($1, $2, 1, $3) \
     ON CONFLICT (agent) DO UPDATE SET epoch = CASE WHEN agent_leases.bridge = excluded.bridge \
       THEN agent_leases.epoch ELSE agent_leases.epoch + 1 END, \
       bridge = excluded.bridge, expires_at = excluded.expires_at";

/// Renews every unexpired lease bridge `$1` holds until `$2` (`$3` now):
/// one statement a tick, however many agents the bridge owns.
const RENEW_LEASES: &str = "UPDATE agent_leases SET expires_at = $2 \
     WHERE bridge = $1 AND expires_at > $3";

/// Releases one lease cleanly (`$1` agent, `$2` bridge, `$3` now): the
/// owner becomes empty and `expires_at` says when it was released.
const RELEASE_LEASE: &str = "UPDATE agent_leases SET bridge = '', expires_at = $3 \
     WHERE agent = $1 AND bridge = $2";

/// One lease as stored.
type LeaseRow = (String, String, i64, i64);

/// What one [`Store::cluster_tick`] decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterTick {
    /// The database's clock at the tick, ms.
    pub now_ms: i64,
    /// The live bridges (this one included), by id.
    pub live: Vec<String>,
    /// The agents this bridge holds now (to poll).
    pub owned: Vec<AgentId>,
    /// Agents taken this tick, and how (see [`Handover`]).
    pub gained: Vec<(AgentId, Handover)>,
    /// Agents another bridge should have now: still held (renewed) this
    /// tick so nobody takes them mid-write; stop polling them, and pass them
    /// as `releasing` to the next tick, which releases them.
    pub to_release: Vec<AgentId>,
    /// Leases held per live bridge.
    pub shares: Vec<(String, usize)>,
}

/// The bridge that should own `agent` among `live` (rendezvous hashing:
/// the highest hash of agent and bridge wins, so a bridge joining or leaving
/// moves only its own share). FNV-1a, stable across builds.
pub fn owner_of<'a>(agent: &str, live: &'a [String]) -> Option<&'a str> {
    live.iter()
        .max_by_key(|bridge| {
            let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
            for byte in agent.bytes().chain([0xff]).chain(bridge.bytes()) {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
            // FNV's low bits mix poorly; one more round of multiply-shift.
            (hash ^ (hash >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9)
        })
        .map(String::as_str)
}

impl Store {
    /// One coordination step of bridge `me` for `agents` (every configured
    /// agent), with leases of `ttl_ms`; `releasing` are the agents the last
    /// tick said to release. See the module doc.
    pub async fn cluster_tick(
        &self,
        me: &str,
        agents: &[AgentId],
        ttl_ms: i64,
        releasing: &[AgentId],
    ) -> Result<ClusterTick, StoreError> {
        let failed = || StoreError::query("coordinating with the other bridges");
        with_pool!(&self.writer, |pool, dialect| {
            let mut transaction = pool.begin_write().await.map_err(failed())?;
            let now: i64 = sqlx::query_scalar(dialect.pick(NOW[0], NOW[1]))
                .fetch_one(&mut *transaction)
                .await
                .map_err(failed())?;
            sqlx::query(HEARTBEAT)
                .bind(me)
                .bind(now)
                .execute(&mut *transaction)
                .await
                .map_err(failed())?;
            sqlx::query(FORGET_BRIDGES)
                .bind(now - 86_400_000)
                .execute(&mut *transaction)
                .await
                .map_err(failed())?;
            let bridges: Vec<(String, i64)> = sqlx::query_as(BRIDGES)
                .fetch_all(&mut *transaction)
                .await
                .map_err(failed())?;
            let heartbeats: HashMap<String, i64> = bridges.iter().cloned().collect();
            let live: Vec<String> = bridges
                .into_iter()
                .filter(|(_, heartbeat)| *heartbeat > now - ttl_ms)
                .map(|(bridge, _)| bridge)
                .collect();
            for agent in releasing {
                sqlx::query(RELEASE_LEASE)
                    .bind(agent.as_str())
                    .bind(me)
                    .bind(now)
                    .execute(&mut *transaction)
                    .await
                    .map_err(failed())?;
            }
            let leases: Vec<LeaseRow> = sqlx::query_as(LEASES)
                .fetch_all(&mut *transaction)
                .await
                .map_err(failed())?;
            let leases: HashMap<&str, &LeaseRow> = leases
                .iter()
                .map(|lease| (lease.0.as_str(), lease))
                .collect();
            sqlx::query(RENEW_LEASES)
                .bind(me)
                .bind(now + ttl_ms)
                .bind(now)
                .execute(&mut *transaction)
                .await
                .map_err(failed())?;
            // Leases of agents no longer configured are let go.
            let configured: BTreeSet<&str> = agents.iter().map(AgentId::as_str).collect();
            for (agent, ..) in leases.values().filter(|(agent, bridge, _, expires)| {
                bridge == me && *expires > now && !configured.contains(agent.as_str())
            }) {
                sqlx::query(RELEASE_LEASE)
                    .bind(agent.as_str())
                    .bind(me)
                    .bind(now)
                    .execute(&mut *transaction)
                    .await
                    .map_err(failed())?;
            }
            let releasing: BTreeSet<&str> = releasing.iter().map(AgentId::as_str).collect();
            let mut tick = ClusterTick {
                now_ms: now,
                live: live.clone(),
                ..ClusterTick::default()
            };
            for agent in agents {
                let name = agent.as_str();
                let desired = owner_of(name, &live) == Some(me);
                let lease = leases.get(name);
                let held =
                    lease.is_some_and(|(_, bridge, _, expires)| bridge == me && *expires > now);
                let take = if desired && !releasing.contains(name) {
                    match lease {
                        None => Some(Handover::Restart),
                        Some((_, bridge, _, expires)) if bridge == me => {
                            // Ours; if it expired meanwhile (we hung), what
                            // happened since we last renewed it is unknown.
                            (!held).then_some(Handover::Expired {
                                owner_alive: *expires - ttl_ms,
                            })
                        }
                        Some((_, bridge, _, released_at)) if bridge.is_empty() => {
                            // Released cleanly: the interval goes on, unless
                            // nobody took it for a while (every bridge was
                            // gone): then the time since is unknown.
                            Some(if now - released_at <= ttl_ms {
                                Handover::Released
                            } else {
                                Handover::Expired {
                                    owner_alive: *released_at,
                                }
                            })
                        }
                        Some((_, bridge, _, expires)) if *expires <= now => {
                            Some(Handover::Expired {
                                owner_alive: heartbeats
                                    .get(bridge)
                                    .copied()
                                    .unwrap_or(*expires - ttl_ms),
                            })
                        }
                        Some(_) => None, // Another bridge holds it; it releases.
                    }
                } else {
                    None
                };
                let gained = take.is_some();
                if let Some(handover) = take {
                    sqlx::query(TAKE_LEASE)
                        .bind(name)
                        .bind(me)
                        .bind(now + ttl_ms)
                        .execute(&mut *transaction)
                        .await
                        .map_err(failed())?;
                    tick.gained.push((agent.clone(), handover));
                }
                if held || gained {
                    if desired && !releasing.contains(name) {
                        tick.owned.push(agent.clone());
                    } else {
                        tick.to_release.push(agent.clone());
                    }
                }
            }
            let shares: Vec<(String, i64)> = sqlx::query_as(
                "SELECT bridge, COUNT(*) FROM agent_leases WHERE expires_at > $1 AND bridge <> '' \
                 GROUP BY bridge ORDER BY bridge",
            )
            .bind(now)
            .fetch_all(&mut *transaction)
            .await
            .map_err(failed())?;
            tick.shares = shares
                .into_iter()
                .map(|(bridge, count)| (bridge, usize::try_from(count).unwrap_or(0)))
                .collect();
            transaction.commit().await.map_err(failed())?;
            Ok(tick)
        })
    }

    /// A bridge leaving at a clean stop: releases every lease it holds
    /// (another bridge takes them at its next tick and goes on), forgets the
    /// bridge, and when no other bridge is alive, ends the open intervals of
    /// the agents it held at `stop` (the history is closed, as for a single
    /// bridge). Returns how many intervals it closed.
    pub async fn leave_cluster(
        &self,
        me: &str,
        ttl_ms: i64,
        stop: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let failed = || StoreError::query("leaving the other bridges");
        let agents: Vec<String> = with_pool!(&self.writer, |pool, dialect| {
            let mut transaction = pool.begin_write().await.map_err(failed())?;
            let now: i64 = sqlx::query_scalar(dialect.pick(NOW[0], NOW[1]))
                .fetch_one(&mut *transaction)
                .await
                .map_err(failed())?;
            let held: Vec<String> = sqlx::query_scalar(
                "UPDATE agent_leases SET bridge = '', expires_at = $2 WHERE bridge = $1 RETURNING agent",
            )
            .bind(me)
            .bind(now)
            .fetch_all(&mut *transaction)
            .await
            .map_err(failed())?;
            sqlx::query("DELETE FROM bridges WHERE bridge = $1")
                .bind(me)
                .execute(&mut *transaction)
                .await
                .map_err(failed())?;
            let others: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM bridges WHERE heartbeat_at > $1")
                    .bind(now - ttl_ms)
                    .fetch_one(&mut *transaction)
                    .await
                    .map_err(failed())?;
            transaction.commit().await.map_err(failed())?;
            Ok::<_, StoreError>(if others == 0 { held } else { Vec::new() })
        })?;
        if agents.is_empty() {
            return Ok(0);
        }
        self.close_history_of(&agents, stop).await
    }

    /// The live bridges with the leases each holds now (for `/readyz`).
    pub async fn cluster_shares(&self, ttl_ms: i64) -> Result<Vec<(String, usize)>, StoreError> {
        let failed = || StoreError::query("reading the bridges");
        with_pool!(&self.reader, |pool, dialect| {
            let now: i64 = sqlx::query_scalar(dialect.pick(NOW[0], NOW[1]))
                .fetch_one(pool)
                .await
                .map_err(failed())?;
            let rows: Vec<(String, i64)> = sqlx::query_as(
                "SELECT b.bridge, (SELECT COUNT(*) FROM agent_leases l WHERE l.bridge = b.bridge \
                   AND l.expires_at > $1) FROM bridges b WHERE b.heartbeat_at > $2 ORDER BY b.bridge",
            )
            .bind(now)
            .bind(now - ttl_ms)
            .fetch_all(pool)
            .await
            .map_err(failed())?;
            Ok(rows
                .into_iter()
                .map(|(bridge, count)| (bridge, usize::try_from(count).unwrap_or(0)))
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_moves_only_the_share_of_a_bridge_that_joins() {
        let agents: Vec<String> = (0..1_000).map(|i| format!("agent{i}")).collect();
        let two = vec!["a".to_owned(), "b".to_owned()];
        let three = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        let mut moved = 0;
        let mut counts = HashMap::new();
        for agent in &agents {
            let before = owner_of(agent, &two).unwrap();
            let after = owner_of(agent, &three).unwrap();
            *counts.entry(after).or_insert(0) += 1;
            if before != after {
                assert_eq!(after, "c", "an agent only ever moves to the newcomer");
                moved += 1;
            }
        }
        assert!((250..420).contains(&moved), "about a third moves: {moved}");
        for bridge in ["a", "b", "c"] {
            assert!((250..420).contains(&counts[bridge]), "{counts:?}");
        }
        assert_eq!(owner_of("x", &[]), None);
    }
}
