//! Status history in the store: recording batches of changes, the
//! heartbeat and `last_seq` in `bridge_meta`, resuming after a restart, and
//! reading intervals back. Executes the rows planned in `rows.rs`; one body
//! per operation serves both backends.

use chrono::{DateTime, Utc};

use crate::model::{AgentId, AgentState, Change};

use super::dialect::{with_pool, BulkWrites, WritePool};
use super::rows::{
    batch_rows, interval_from_row, last_interval_from_row, resume_rows, seq_from_db, seq_to_db,
    to_millis, BatchRows, ClosedInterval, Handover, Interval, IntervalRow, LastRow, NewInterval,
};
use super::sqlite::{add_closed_daily_on, write_batch_on};
use super::sqlite_thread::{closed_rows, execute, in_write_transaction, step_error, SqliteThread};
use super::{Store, StoreError};

/// Gives the transitions of `changes` the seqs from `first` on, in order.
pub fn assign_seqs(changes: &mut [Change], first: u64) {
    let transitions = changes.iter_mut().filter(|c| c.previous.is_some());
    for (seq, change) in (first..).zip(transitions) {
        change.state.seq = seq;
    }
}

/// Raises a `bridge_meta` value (`$1` the key, `$2` the value); it never
/// goes down.
pub(crate) const RAISE_META: &str = "INSERT INTO bridge_meta (key, value) VALUES ($1, $2) \
     ON CONFLICT (key) DO UPDATE SET value = CASE WHEN excluded.value > bridge_meta.value \
     THEN excluded.value ELSE bridge_meta.value END";

/// Sets a `bridge_meta` value (`$1` the key, `$2` the value).
const SET_META: &str = "INSERT INTO bridge_meta (key, value) VALUES ($1, $2) \
     ON CONFLICT (key) DO UPDATE SET value = excluded.value";

/// Reads one `bridge_meta` value.
pub(crate) const READ_META: &str = "SELECT value FROM bridge_meta WHERE key = $1";

/// Every open interval (with the columns of a latest-interval row; the
/// agent's latest seq is not needed for them); on PostgreSQL locked against
/// a second bridge resuming at the same time.
const SELECT_OPEN_SQLITE: &str =
    "SELECT id, agent, status, reason, extension_status, destination, started_at, ended_at, seq \
     FROM intervals WHERE ended_at IS NULL ORDER BY agent";
const SELECT_OPEN_POSTGRES: &str =
    "SELECT id, agent, status, reason, extension_status, destination, started_at, ended_at, seq \
     FROM intervals WHERE ended_at IS NULL ORDER BY agent FOR UPDATE";

/// Ends every open interval at `$1` (never before its start).
const CLOSE_ALL_OPEN: &str = "UPDATE intervals SET ended_at = \
     CASE WHEN started_at > $1 THEN started_at ELSE $1 END WHERE ended_at IS NULL \
     RETURNING agent, status, started_at, ended_at, seq";

/// Intervals of everyone overlapping `[$2, $1)`, agents in byte order.
const SELECT_RANGE_SQLITE: &str =
    "SELECT agent, status, reason, extension_status, destination, started_at, ended_at, seq \
     FROM intervals WHERE started_at < $1 AND (ended_at IS NULL OR ended_at > $2) \
     ORDER BY agent, started_at, id";
const SELECT_RANGE_POSTGRES: &str =
    "SELECT agent, status, reason, extension_status, destination, started_at, ended_at, seq \
     FROM intervals WHERE started_at < $1 AND (ended_at IS NULL OR ended_at > $2) \
     ORDER BY agent COLLATE \"C\", started_at, id";

/// Intervals of agent `$3` overlapping `[$2, $1)`.
const SELECT_RANGE_OF_AGENT: &str =
    "SELECT agent, status, reason, extension_status, destination, started_at, ended_at, seq \
     FROM intervals WHERE agent = $3 AND started_at < $1 AND (ended_at IS NULL OR ended_at > $2) \
     ORDER BY started_at, id";

/// The state every configured agent resumes with after a restart.
#[derive(Debug, Clone, PartialEq)]
pub struct ResumedAgents {
    /// One state per configured agent, in configuration order.
    pub states: Vec<AgentState>,
    /// The highest transition seq ever committed (0 for a new database).
    pub last_seq: u64,
}

/// How the history writer commits a batch.
#[derive(Debug, Clone, Copy)]
pub struct CommitOptions<'a> {
    /// The committing bridge: stored with its transitions, and the key of
    /// its batch marker.
    pub bridge: &'a str,
    /// Check the bridge's agent leases in the transaction (several bridges
    /// on one database): a batch with an agent the bridge no longer owns is
    /// not stored.
    pub fenced: bool,
    /// Identifies the batch across retries: after an error whose outcome is
    /// unknown (a connection lost at COMMIT), [`Store::batch_landed`] tells
    /// whether it was stored.
    pub batch_id: i64,
    /// Also store this heartbeat.
    pub heartbeat_at: Option<DateTime<Utc>>,
}

/// What [`Store::commit_changes`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Stored; the transitions got the seqs from `first_seq` on, in order.
    Stored {
        /// The first transition's seq (0 when there was none).
        first_seq: u64,
    },
    /// Not stored: the bridge no longer owns these agents (fencing); the
    /// caller drops their changes and commits the rest.
    Fenced {
        /// The agents lost.
        lost: Vec<AgentId>,
    },
}

/// The `bridge_meta` values a batch sets: its marker (see
/// [`Store::batch_landed`]), and the heartbeat when due.
fn batch_meta(
    bridge: &str,
    batch_id: i64,
    heartbeat_at: Option<DateTime<Utc>>,
    first_seq: u64,
) -> Vec<(String, i64)> {
    let mut meta = vec![
        (format!("batch:{bridge}"), batch_id),
        (format!("batch_seq:{bridge}"), seq_to_db(first_seq)),
    ];
    if let Some(at) = heartbeat_at {
        meta.push(("heartbeat_at".to_owned(), to_millis(at)));
    }
    meta
}

/// The first of `transitions` seqs when [`TAKE_SEQS`] answered `last`.
fn first_of(last: i64, transitions: usize) -> u64 {
    seq_from_db(last) + 1 - transitions as u64
}

/// Adds `$1` to `last_seq` and returns the new value: the seqs of a batch,
/// taken inside its transaction, so they are dense across every bridge
/// writing to the database (the row lock orders them).
const TAKE_SEQS: &str = "INSERT INTO bridge_meta (key, value) VALUES ('last_seq', $1) \
     ON CONFLICT (key) DO UPDATE SET value = bridge_meta.value + excluded.value RETURNING value";

impl Store {
    /// Records transitions (each state a new status interval with its `seq`
    /// already assigned, in order) in one transaction: each ends the agent's
    /// open interval at `state.since` and opens a new one there; `last_seq`
    /// becomes the batch's highest seq if that is higher. For tests and
    /// benchmarks; the bridge commits with [`Store::commit_changes`].
    pub async fn record(&self, transitions: &[AgentState]) -> Result<(), StoreError> {
        let rows = batch_rows(transitions.iter().map(|state| (state, true)), None);
        with_pool!(&self.writer, |pool, _d| {
            let mut transaction = pool
                .begin_write()
                .await
                .map_err(StoreError::query("starting a history transaction"))?;
            self.write_rows(&mut *transaction, &[], &rows).await?;
            if let Some(max_seq) = rows.max_seq {
                sqlx::query(RAISE_META)
                    .bind("last_seq")
                    .bind(seq_to_db(max_seq))
                    .execute(&mut *transaction)
                    .await
                    .map_err(StoreError::query("storing last_seq"))?;
            }
            transaction
                .commit()
                .await
                .map_err(StoreError::query("committing a history batch"))
        })
    }

    /// Commits a batch of the tracker's changes in one transaction, as the
    /// history writer does: gives each transition the next seq (written into
    /// `changes`), ends the agent's open interval at `state.since` and opens
    /// a new one there; other changes (reason, destination or extension
    /// status only) update the agent's open interval in place, so there is
    /// exactly one row per status interval. See [`CommitOptions`].
    pub async fn commit_changes(
        &self,
        changes: &mut [Change],
        options: &CommitOptions<'_>,
    ) -> Result<CommitOutcome, StoreError> {
        let transitions = changes.iter().filter(|c| c.previous.is_some()).count();
        if let (Some(thread), false) = (&self.thread, options.fenced) {
            return self
                .commit_on_thread(thread, changes, options, transitions)
                .await;
        }
        with_pool!(&self.writer, |pool, _d| {
            let mut transaction = pool
                .begin_write()
                .await
                .map_err(StoreError::query("starting a history transaction"))?;
            if options.fenced {
                let mut agents: Vec<&str> =
                    changes.iter().map(|c| c.state.agent.as_str()).collect();
                agents.sort_unstable();
                agents.dedup();
                let owned = transaction
                    .owned_agents(&agents, options.bridge)
                    .await
                    .map_err(StoreError::query("checking the agent leases"))?;
                let lost: Vec<AgentId> = agents
                    .iter()
                    .filter(|agent| !owned.iter().any(|owned| owned == *agent))
                    .filter_map(|agent| AgentId::parse(agent).ok())
                    .collect();
                if !lost.is_empty() {
                    return Ok(CommitOutcome::Fenced { lost });
                }
            }
            let mut first_seq = 0;
            if transitions > 0 {
                let last: i64 = sqlx::query_scalar(TAKE_SEQS)
                    .bind(transitions as i64)
                    .fetch_one(&mut *transaction)
                    .await
                    .map_err(StoreError::query("taking seqs"))?;
                first_seq = first_of(last, transitions);
                assign_seqs(changes, first_seq);
            }
            let meta = batch_meta(
                options.bridge,
                options.batch_id,
                options.heartbeat_at,
                first_seq,
            );
            let rows = batch_rows(
                changes
                    .iter()
                    .map(|change| (&change.state, change.previous.is_some())),
                Some(options.bridge),
            );
            self.write_rows(&mut *transaction, &meta, &rows).await?;
            transaction
                .commit()
                .await
                .map_err(StoreError::query("committing a history batch"))?;
            Ok(CommitOutcome::Stored { first_seq })
        })
    }

    /// [`Store::commit_changes`] on the SQLite history thread: the same
    /// statements and rows, the whole batch in one hand-over. The thread
    /// works on a copy of the changes; their seqs are written back here.
    async fn commit_on_thread(
        &self,
        thread: &SqliteThread,
        changes: &mut [Change],
        options: &CommitOptions<'_>,
        transitions: usize,
    ) -> Result<CommitOutcome, StoreError> {
        let mut batch = changes.to_vec();
        let (bridge, batch_id, heartbeat_at) = (
            options.bridge.to_owned(),
            options.batch_id,
            options.heartbeat_at,
        );
        let daily = self.daily;
        let first_seq = thread
            .run(move |connection| {
                in_write_transaction(connection, |transaction| {
                    let mut first_seq = 0;
                    if transitions > 0 {
                        let last: i64 = transaction
                            .prepare_cached(TAKE_SEQS)
                            .and_then(|mut take| {
                                take.query_row([transitions as i64], |row| row.get(0))
                            })
                            .map_err(|error| ("taking seqs", error))?;
                        first_seq = first_of(last, transitions);
                        assign_seqs(&mut batch, first_seq);
                    }
                    let meta = batch_meta(&bridge, batch_id, heartbeat_at, first_seq);
                    let rows = batch_rows(
                        batch
                            .iter()
                            .map(|change| (&change.state, change.previous.is_some())),
                        Some(&bridge),
                    );
                    let mut closed = write_batch_on(transaction, &meta, &rows)?;
                    if daily.is_some() {
                        closed.extend(ClosedInterval::from_inserts(&rows.inserts));
                    }
                    add_closed_daily_on(transaction, daily, &closed)?;
                    Ok(first_seq)
                })
            })
            .await?
            .map_err(step_error)?;
        assign_seqs(changes, first_seq);
        Ok(CommitOutcome::Stored { first_seq })
    }

    /// Sets (`SET_META`) or raises (`RAISE_META`) one `bridge_meta` value on
    /// the SQLite history thread.
    pub(super) async fn meta_on_thread(
        thread: &SqliteThread,
        sql: &'static str,
        key: String,
        value: i64,
        action: &'static str,
    ) -> Result<(), StoreError> {
        thread
            .run(move |connection| {
                connection
                    .prepare_cached(sql)
                    .and_then(|mut statement| statement.execute(rusqlite::params![key, value]))
                    .map(drop)
            })
            .await?
            .map_err(|source| StoreError::Sqlite { action, source })
    }

    /// After an error whose outcome is unknown: the first seq of batch
    /// `batch_id` of `bridge` when it was stored after all (`Some(0)` when
    /// it had no transitions), `None` when it was not.
    pub async fn batch_landed(
        &self,
        bridge: &str,
        batch_id: i64,
    ) -> Result<Option<u64>, StoreError> {
        let read = |key: String| async move {
            with_pool!(&self.writer, |pool, _d| {
                sqlx::query_scalar::<_, i64>(READ_META)
                    .bind(key)
                    .fetch_optional(pool)
                    .await
            })
            .map_err(StoreError::query("reading the batch marker"))
        };
        if read(format!("batch:{bridge}")).await? != Some(batch_id) {
            return Ok(None);
        }
        Ok(Some(
            read(format!("batch_seq:{bridge}"))
                .await?
                .map_or(0, seq_from_db),
        ))
    }

    /// Writes a batch in the open transaction: the `bridge_meta` values
    /// `meta`, detail updates, closes, inserts, and the per-day totals of
    /// what they closed. On SQLite two round trips to the connection's
    /// thread (the per-day totals need the intervals the first closed).
    async fn write_rows<C: BulkWrites + Send>(
        &self,
        connection: &mut C,
        meta: &[(String, i64)],
        rows: &BatchRows<'_>,
    ) -> Result<(), StoreError> {
        let mut closed = connection
            .write_batch(meta, rows)
            .await
            .map_err(StoreError::query("writing a history batch"))?;
        closed.extend(ClosedInterval::from_inserts(&rows.inserts));
        self.add_daily(connection, &closed).await
    }

    /// Stores the time the bridge was last known to be running; resume ends
    /// open intervals there after a crash.
    pub async fn heartbeat(&self, at: DateTime<Utc>) -> Result<(), StoreError> {
        const ACTION: &str = "storing the heartbeat";
        if let Some(thread) = &self.thread {
            let key = "heartbeat_at".to_owned();
            return Self::meta_on_thread(thread, SET_META, key, to_millis(at), ACTION).await;
        }
        with_pool!(&self.writer, |pool, _d| {
            sqlx::query(SET_META)
                .bind("heartbeat_at")
                .bind(to_millis(at))
                .execute(pool)
                .await
                .map(drop)
        })
        .map_err(StoreError::query(ACTION))
    }

    /// The highest transition seq committed (0 for a new database).
    pub async fn last_seq(&self) -> Result<u64, StoreError> {
        let value: Option<i64> = with_pool!(&self.writer, |pool, _d| {
            sqlx::query_scalar(READ_META)
                .bind("last_seq")
                .fetch_optional(pool)
                .await
        })
        .map_err(StoreError::query("reading last_seq"))?;
        Ok(value.map_or(0, seq_from_db))
    }

    /// Resumes after a restart, in one transaction. Every open interval is
    /// ended at the last heartbeat (or at its start, if later). For an agent
    /// still configured, the time the bridge was down is recorded as an
    /// `unknown` interval and the same status reopens from `now`, so the
    /// first poll after a restart causes no false transition; an agent that
    /// was already `unknown` simply stays in its open `unknown` interval.
    /// Agents no longer configured are only closed. Configured agents never
    /// stored get a fresh `unknown` state (not stored). Synthesised
    /// intervals have no seq; each returned state carries the seq of the
    /// agent's last recorded transition.
    pub async fn resume(
        &self,
        agents: &[(AgentId, String)],
        now: DateTime<Utc>,
    ) -> Result<ResumedAgents, StoreError> {
        self.resume_with(agents, now, None).await
    }

    /// Takes agents over from other bridges (see [`Handover`]): each
    /// agent's open interval goes on (a clean hand-over) or ends at its
    /// previous owner's last heartbeat with the gap recorded as `unknown`,
    /// as after a restart. Returns their states.
    pub async fn take_over(
        &self,
        agents: &[(AgentId, String)],
        now: DateTime<Utc>,
        handovers: &std::collections::HashMap<AgentId, Handover>,
    ) -> Result<Vec<AgentState>, StoreError> {
        Ok(self.resume_with(agents, now, Some(handovers)).await?.states)
    }

    /// [`Store::resume`] (`handovers` is `None`: every agent restarts, open
    /// intervals of agents no longer configured end, the heartbeat is
    /// written) or [`Store::take_over`].
    async fn resume_with(
        &self,
        agents: &[(AgentId, String)],
        now: DateTime<Utc>,
        handovers: Option<&std::collections::HashMap<AgentId, Handover>>,
    ) -> Result<ResumedAgents, StoreError> {
        with_pool!(&self.writer, |pool, dialect| {
            let mut transaction = pool
                .begin_write()
                .await
                .map_err(StoreError::query("starting the resume transaction"))?;
            let open_rows: Vec<LastRow> =
                sqlx::query_as(dialect.pick(SELECT_OPEN_SQLITE, SELECT_OPEN_POSTGRES))
                    .fetch_all(&mut *transaction)
                    .await
                    .map_err(StoreError::query("reading open intervals"))?;
            let configured: Vec<&str> = agents.iter().map(|(agent, _)| agent.as_str()).collect();
            let latest_rows = transaction
                .latest_intervals(&configured)
                .await
                .map_err(StoreError::query("reading each agent's latest interval"))?;
            let mut meta = Vec::with_capacity(2);
            for key in ["heartbeat_at", "last_seq"] {
                let value: Option<i64> = sqlx::query_scalar(READ_META)
                    .bind(key)
                    .fetch_optional(&mut *transaction)
                    .await
                    .map_err(StoreError::query("reading bridge_meta"))?;
                meta.push(value);
            }
            let (heartbeat, last_seq) = (meta[0], meta[1].map_or(0, seq_from_db));
            let configured: std::collections::HashSet<&str> = configured.into_iter().collect();
            let mut latest = Vec::with_capacity(latest_rows.len());
            for row in latest_rows {
                latest.push(last_interval_from_row(row)?);
            }
            if handovers.is_none() {
                for row in open_rows {
                    if !configured.contains(row.1.as_str()) {
                        latest.push(last_interval_from_row(row)?);
                    }
                }
            }
            let handover = |agent: &AgentId| {
                handovers
                    .and_then(|handovers| handovers.get(agent).copied())
                    .unwrap_or(Handover::Restart)
            };
            let rows = resume_rows(&latest, agents, heartbeat, now, &handover)?;
            let mut closed = transaction
                .close_by_id(&rows.closes)
                .await
                .map_err(StoreError::query("closing open intervals"))?;
            transaction
                .insert_intervals(&rows.inserts)
                .await
                .map_err(StoreError::query("inserting intervals"))?;
            closed.extend(ClosedInterval::from_inserts(&rows.inserts));
            self.add_daily(&mut *transaction, &closed).await?;
            if handovers.is_none() {
                sqlx::query(SET_META)
                    .bind("heartbeat_at")
                    .bind(to_millis(now))
                    .execute(&mut *transaction)
                    .await
                    .map_err(StoreError::query("storing the heartbeat"))?;
            }
            transaction
                .commit()
                .await
                .map_err(StoreError::query("committing the resume"))?;
            Ok(ResumedAgents {
                states: rows.states,
                last_seq,
            })
        })
    }

    /// Ends every open interval at `at` (a clean stop) and stores `at` as
    /// the heartbeat, in one transaction; how many it ended. The next start
    /// records the time until then as `unknown`, as after a crash.
    pub async fn close_history(&self, at: DateTime<Utc>) -> Result<u64, StoreError> {
        self.close_open_intervals(None, at).await
    }

    /// [`Store::close_history`] for some agents only (the last bridge of
    /// several leaving closes what it held).
    pub(crate) async fn close_history_of(
        &self,
        agents: &[String],
        at: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        self.close_open_intervals(Some(agents), at).await
    }

    async fn close_open_intervals(
        &self,
        agents: Option<&[String]>,
        at: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        if let (None, Some(thread)) = (agents, &self.thread) {
            return self.close_history_on_thread(thread, at).await;
        }
        let failed = || StoreError::query("closing the history");
        with_pool!(&self.writer, |pool, _d| {
            let mut transaction = pool.begin_write().await.map_err(failed())?;
            let closed: Vec<ClosedInterval> = match agents {
                None => sqlx::query_as(CLOSE_ALL_OPEN)
                    .bind(to_millis(at))
                    .fetch_all(&mut *transaction)
                    .await
                    .map_err(failed())?,
                Some(agents) => transaction
                    .close_open_of(agents, to_millis(at))
                    .await
                    .map_err(failed())?,
            };
            self.add_daily(&mut *transaction, &closed).await?;
            sqlx::query(SET_META)
                .bind("heartbeat_at")
                .bind(to_millis(at))
                .execute(&mut *transaction)
                .await
                .map_err(failed())?;
            transaction.commit().await.map_err(failed())?;
            Ok(closed.len() as u64)
        })
    }

    /// [`Store::close_history`] on the SQLite history thread: the same
    /// statements in one hand-over, and the closed rows (one per agent)
    /// never leave the thread.
    async fn close_history_on_thread(
        &self,
        thread: &SqliteThread,
        at: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        const ACTION: &str = "closing the history";
        let (at, daily) = (to_millis(at), self.daily);
        thread
            .run(move |connection| {
                in_write_transaction(connection, |transaction| {
                    let closed = closed_rows(transaction, ACTION, CLOSE_ALL_OPEN, [at])?;
                    add_closed_daily_on(transaction, daily, &closed)?;
                    execute(
                        transaction,
                        ACTION,
                        SET_META,
                        rusqlite::params!["heartbeat_at", at],
                    )?;
                    Ok(closed.len() as u64)
                })
            })
            .await?
            .map_err(step_error)
    }

    /// Inserts intervals exactly as given (seq included), in one
    /// transaction, without touching `bridge_meta`: for tests and
    /// benchmarks that set up a history. The bridge never calls it.
    #[doc(hidden)]
    pub async fn import_intervals(&self, intervals: &[Interval]) -> Result<(), StoreError> {
        let rows: Vec<NewInterval<'_>> = intervals
            .iter()
            .map(|interval| NewInterval {
                agent: interval.agent.as_str(),
                status: interval.status.as_str(),
                reason: interval.reason.as_deref(),
                extension_status: interval.extension_status.as_deref(),
                destination: interval.destination.as_deref(),
                started_at: to_millis(interval.started_at),
                ended_at: interval.ended_at.map(to_millis),
                seq: interval.seq.map(seq_to_db),
                bridge: None,
            })
            .collect();
        let closed = ClosedInterval::from_inserts(&rows);
        let failed = StoreError::query("importing intervals");
        with_pool!(&self.writer, |pool, _d| {
            let mut transaction = pool.begin_long_write().await.map_err(failed)?;
            transaction
                .insert_intervals(&rows)
                .await
                .map_err(StoreError::query("importing intervals"))?;
            self.add_daily(&mut *transaction, &closed).await?;
            transaction
                .commit()
                .await
                .map_err(StoreError::query("importing intervals"))
        })
    }

    /// The intervals overlapping `[from, to)`, of one agent or of all,
    /// ordered by agent and start. Open intervals are included with
    /// `ended_at = None`.
    pub async fn intervals(
        &self,
        agent: Option<&AgentId>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<Interval>, StoreError> {
        let rows: Vec<IntervalRow> = with_pool!(&self.reader, |pool, dialect| {
            let query = match agent {
                Some(agent) => sqlx::query_as(SELECT_RANGE_OF_AGENT)
                    .bind(to_millis(to))
                    .bind(to_millis(from))
                    .bind(agent.as_str()),
                None => sqlx::query_as(dialect.pick(SELECT_RANGE_SQLITE, SELECT_RANGE_POSTGRES))
                    .bind(to_millis(to))
                    .bind(to_millis(from)),
            };
            query.fetch_all(pool).await
        })
        .map_err(StoreError::query("reading intervals"))?;
        rows.into_iter().map(interval_from_row).collect()
    }
}
