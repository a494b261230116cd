//! The history [`Store`]: one handle over SQLite or PostgreSQL, opened from
//! `database.url`, migrated at open, with the operations the history writer,
//! the resume at startup and the reports need.
//!
//! This file owns opening, URL handling, errors and dispatch to the backend
//! files (`sqlite.rs`, `postgres.rs`); it holds no SQL of its own and never
//! puts a database password in an error or a log line.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection};

use crate::model::{AgentId, AgentState, Change, Status};
use crate::status::unknown_state;

use super::plan::{from_millis, plan_batch, seq_from_db, BatchPlan, OpenInterval};
use super::{postgres, sqlite};

/// How long an SQLite connection waits for a lock before failing with
/// "database is locked". The writer's transactions take milliseconds; this
/// only matters for a checkpoint or an outside tool holding the file.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// SQLite page cache per connection, in KiB (SQLite's default is 2 MiB). A
/// burst batch touches thousands of index pages; with the default cache
/// SQLite spills them to the WAL mid-transaction and reads them back. The
/// cache fills only as pages are used, so this bounds memory rather than
/// reserving it.
const SQLITE_CACHE_KIB: u32 = 4096;

/// WAL pages after which a commit checkpoints (SQLite's default is 1000,
/// 4 MiB). A 4096-interval batch writes over a thousand pages, so the default
/// checkpoints after nearly every commit; 4000 (16 MiB of WAL on disk)
/// checkpoints each page once for several batches.
const SQLITE_WAL_AUTOCHECKPOINT_PAGES: u32 = 4000;

/// SQLite connections: one writer at a time (the history writer) plus
/// readers (reports, HTTP) that WAL lets run beside it.
const SQLITE_MAX_CONNECTIONS: u32 = 4;

/// PostgreSQL connections: the writer plus concurrent report queries.
const POSTGRES_MAX_CONNECTIONS: u32 = 5;

/// How long to wait for a connection from the pool (or for PostgreSQL to
/// accept one) before an operation fails.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// Migrations for SQLite, embedded at build time (`migrations/sqlite`).
static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Migrations for PostgreSQL, embedded at build time (`migrations/postgres`).
static POSTGRES_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The history database. Cheap to clone (the pools are shared handles).
///
/// Other modules may add queries by matching on the variants; every time
/// column is `BIGINT` milliseconds since the Unix epoch, UTC (see
/// `migrations/`).
#[derive(Debug, Clone)]
pub enum Store {
    /// An SQLite file in WAL mode with `synchronous=FULL`.
    Sqlite(sqlx::SqlitePool),
    /// A PostgreSQL database.
    Postgres(sqlx::PgPool),
}

/// Why a history operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `database.url` is neither `sqlite:` nor `postgres:`.
    #[error("database url {url:?} has an unsupported scheme: use sqlite://PATH or postgres://USER@HOST/DATABASE in database.url")]
    UnsupportedScheme {
        /// The URL, password removed.
        url: String,
    },
    /// `database.url` could not be parsed.
    #[error("database url {url:?} is invalid: {detail}; fix database.url")]
    InvalidUrl {
        /// The URL, password removed.
        url: String,
        /// What is wrong, password removed.
        detail: String,
    },
    /// The directory for a new SQLite file could not be created.
    #[error("cannot create directory {path} for the sqlite database: {source}; create it or change database.url")]
    CreateDirectory {
        /// The directory.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The database could not be opened or reached.
    #[error("cannot open database {url:?}: {detail}; check database.url and that the database is reachable")]
    Connect {
        /// The URL, password removed.
        url: String,
        /// The driver's error, password removed.
        detail: String,
    },
    /// The schema migrations could not be applied.
    #[error("cannot apply the history migrations to {url:?}: {source}; check the database is writable and was not migrated by a newer pbx2mqtt")]
    Migrate {
        /// The URL, password removed.
        url: String,
        /// The migration error.
        source: sqlx::migrate::MigrateError,
    },
    /// A query failed.
    #[error("history database failed while {action}: {source}")]
    Query {
        /// What the store was doing, e.g. `recording a batch`.
        action: &'static str,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// A stored row holds a value no bridge writes (hand-edited data).
    #[error("stored history is invalid: {detail}")]
    InvalidRow {
        /// Which value and why.
        detail: String,
    },
}

impl StoreError {
    /// A query error with what the store was doing.
    pub(crate) fn query(action: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
        move |source| StoreError::Query { action, source }
    }
}

/// The state every configured agent resumes with after a restart.
#[derive(Debug, Clone, PartialEq)]
pub struct Resume {
    /// One state per configured agent, in configuration order.
    pub states: Vec<AgentState>,
    /// The highest transition seq ever committed (0 for a new database).
    pub last_seq: u64,
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

impl Store {
    /// Opens (creating an SQLite file and its directory if missing) and
    /// migrates the database at a sqlx URL: `sqlite://data/pbx2mqtt.db`
    /// (relative to the working directory), `sqlite:///var/lib/x.db`
    /// (absolute) or `postgres://user@host/db`.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let scheme = url
            .split(':')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        match scheme.as_str() {
            "sqlite" => Self::open_sqlite(url).await,
            "postgres" | "postgresql" => Self::open_postgres(url).await,
            _ => Err(StoreError::UnsupportedScheme {
                url: redact_url(url),
            }),
        }
    }

    /// Opens an SQLite file in WAL mode with `synchronous=FULL`.
    async fn open_sqlite(url: &str) -> Result<Store, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|error| StoreError::InvalidUrl {
                url: redact_url(url),
                detail: redact_text(&error.to_string(), url),
            })?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(SQLITE_BUSY_TIMEOUT)
            .foreign_keys(true)
            .pragma("cache_size", format!("-{SQLITE_CACHE_KIB}"))
            .pragma(
                "wal_autocheckpoint",
                SQLITE_WAL_AUTOCHECKPOINT_PAGES.to_string(),
            );
        create_parent_directory(options.get_filename())?;
        let pool = SqlitePoolOptions::new()
            .max_connections(SQLITE_MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|error| connect_error(url, &error))?;
        SQLITE_MIGRATOR
            .run(&pool)
            .await
            .map_err(|source| StoreError::Migrate {
                url: redact_url(url),
                source,
            })?;
        Ok(Store::Sqlite(pool))
    }

    /// Connects to PostgreSQL. One connection is made first, so a wrong
    /// host or password fails at once (a pool would retry until its acquire
    /// timeout), and the migrations run on it.
    async fn open_postgres(url: &str) -> Result<Store, StoreError> {
        let options = PgConnectOptions::from_str(url).map_err(|error| StoreError::InvalidUrl {
            url: redact_url(url),
            detail: redact_text(&error.to_string(), url),
        })?;
        let mut first = options
            .connect()
            .await
            .map_err(|error| connect_error(url, &error))?;
        POSTGRES_MIGRATOR
            .run(&mut first)
            .await
            .map_err(|source| StoreError::Migrate {
                url: redact_url(url),
                source,
            })?;
        let pool = PgPoolOptions::new()
            .max_connections(POSTGRES_MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options);
        // Closing only tells the server goodbye; the pool opens its own.
        let _ = first.close().await;
        Ok(Store::Postgres(pool))
    }

    /// The backend's name, for logs: `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
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
    ) -> Result<Resume, StoreError> {
        match self {
            Store::Sqlite(pool) => sqlite::resume(pool, agents, now).await,
            Store::Postgres(pool) => postgres::resume(pool, agents, now).await,
        }
    }

    /// Records transitions (each state a new status interval with its `seq`
    /// already assigned, in order) in one transaction: each ends the agent's
    /// open interval at `state.since` and opens a new one there; `last_seq`
    /// becomes the batch's highest seq if that is higher.
    pub async fn record(&self, transitions: &[AgentState]) -> Result<(), StoreError> {
        let plan = plan_batch(transitions.iter().map(|state| (state, true)));
        self.execute(&plan, None).await
    }

    /// Records a batch of the tracker's changes, seqs assigned, in one
    /// transaction, as the history writer does: transitions as in
    /// [`Store::record`]; other changes (reason, destination or extension
    /// status only) update the agent's open interval in place, so there is
    /// exactly one row per status interval. With `heartbeat_at`, the
    /// heartbeat is written in the same transaction.
    pub async fn record_changes(
        &self,
        changes: &[Change],
        heartbeat_at: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        let plan = plan_batch(
            changes
                .iter()
                .map(|change| (&change.state, change.previous.is_some())),
        );
        self.execute(&plan, heartbeat_at).await
    }

    /// Runs a planned batch on the backend.
    async fn execute(
        &self,
        plan: &BatchPlan<'_>,
        heartbeat_at: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(pool) => sqlite::record(pool, plan, heartbeat_at).await,
            Store::Postgres(pool) => postgres::record(pool, plan, heartbeat_at).await,
        }
    }

    /// Stores the time the bridge was last known to be running; resume ends
    /// open intervals there after a crash.
    pub async fn heartbeat(&self, at: DateTime<Utc>) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(pool) => sqlite::heartbeat(pool, at).await,
            Store::Postgres(pool) => postgres::heartbeat(pool, at).await,
        }
    }

    /// The highest transition seq committed (0 for a new database).
    pub async fn last_seq(&self) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(pool) => sqlite::last_seq(pool).await,
            Store::Postgres(pool) => postgres::last_seq(pool).await,
        }
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
        match self {
            Store::Sqlite(pool) => sqlite::intervals(pool, agent, from, to).await,
            Store::Postgres(pool) => postgres::intervals(pool, agent, from, to).await,
        }
    }

    /// Closes the pools, waiting for in-flight queries. SQLite checkpoints
    /// its WAL when the last connection closes.
    pub async fn close(self) {
        match self {
            Store::Sqlite(pool) => pool.close().await,
            Store::Postgres(pool) => pool.close().await,
        }
    }
}

/// Decodes a stored interval row (shared by both backends).
#[allow(clippy::too_many_arguments)]
pub(crate) fn interval_from_row(
    agent: String,
    status: String,
    reason: Option<String>,
    extension_status: Option<String>,
    destination: Option<String>,
    started_at: i64,
    ended_at: Option<i64>,
    seq: Option<i64>,
) -> Result<Interval, StoreError> {
    Ok(Interval {
        agent: AgentId::parse(&agent).map_err(|error| StoreError::InvalidRow {
            detail: error.to_string(),
        })?,
        status: status
            .parse()
            .map_err(
                |error: crate::model::UnknownStatus| StoreError::InvalidRow {
                    detail: error.to_string(),
                },
            )?,
        reason,
        extension_status,
        destination,
        started_at: from_millis(started_at)?,
        ended_at: ended_at.map(from_millis).transpose()?,
        seq: seq.map(seq_from_db),
    })
}

/// Decodes an open interval row (shared by both backends).
pub(crate) fn open_interval_from_row(
    id: i64,
    agent: &str,
    status: &str,
    (reason, extension_status, destination): (Option<String>, Option<String>, Option<String>),
    started_at: i64,
    latest_seq: Option<i64>,
) -> Result<OpenInterval, StoreError> {
    let agent = AgentId::parse(agent).map_err(|error| StoreError::InvalidRow {
        detail: format!("open interval {id}: {error}"),
    })?;
    let status: Status = status.parse().map_err(|error| StoreError::InvalidRow {
        detail: format!("open interval {id}: {error}"),
    })?;
    // Validates the stored time once, here, rather than in every use.
    from_millis(started_at)?;
    Ok(OpenInterval {
        id,
        agent,
        status,
        reason,
        extension_status,
        destination,
        started_at,
        last_seq: latest_seq.map_or(0, seq_from_db),
    })
}

/// Creates the directory an SQLite file goes in, if it has one and it is
/// missing. In-memory and `file:` URIs are left to SQLite.
fn create_parent_directory(file: &Path) -> Result<(), StoreError> {
    let name = file.to_string_lossy();
    if name.is_empty() || name.starts_with(':') || name.starts_with("file:") {
        return Ok(());
    }
    match file.parent() {
        Some(parent) if !parent.as_os_str().is_empty() && !parent.exists() => {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::CreateDirectory {
                path: parent.to_owned(),
                source,
            })
        }
        _ => Ok(()),
    }
}

/// A connection error with the password removed from its text.
fn connect_error(url: &str, error: &sqlx::Error) -> StoreError {
    StoreError::Connect {
        url: redact_url(url),
        detail: redact_text(&error.to_string(), url),
    }
}

/// The password of a database URL (userinfo or `password=` parameter), if any.
fn url_password(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    let from_userinfo = parsed.password().map(|password| {
        url::form_urlencoded::parse(password.as_bytes())
            .map(|(key, _)| key.into_owned())
            .collect::<String>()
    });
    from_userinfo.or_else(|| {
        parsed
            .query_pairs()
            .find(|(key, _)| key == "password")
            .map(|(_, value)| value.into_owned())
    })
}

/// Removes the password of `url` from some text (an error message).
fn redact_text(text: &str, url: &str) -> String {
    match url_password(url) {
        Some(password) if !password.is_empty() => {
            crate::secret::Secret::new(password).redact_in(text)
        }
        _ => text.to_owned(),
    }
}

/// A database URL safe to print: the userinfo password and any `password`
/// query parameter replaced by `[redacted]`. Unparseable URLs are cut to
/// their scheme.
pub fn redact_url(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        let scheme = url.split(':').next().unwrap_or_default();
        return if scheme.len() < url.len() && scheme.chars().all(|c| c.is_ascii_alphanumeric()) {
            format!("{scheme}:[unparseable]")
        } else {
            "[unparseable]".to_owned()
        };
    };
    if parsed.password().is_some() {
        // Only fails for URLs that cannot have a userinfo, which have no password.
        let _ = parsed.set_password(Some("[redacted]"));
    }
    if parsed.query_pairs().any(|(key, _)| key == "password") {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(key, value)| {
                let value = if key == "password" {
                    "[redacted]".into()
                } else {
                    value.into_owned()
                };
                (key.into_owned(), value)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

/// Records `count` synthetic transitions for `agents` agents in batches of
/// [`super::BATCH_MAX`], as the history writer would, and returns how long
/// the commits took. For benchmarks; seqs continue from the stored
/// `last_seq`.
pub async fn bench_record(
    store: &Store,
    agents: usize,
    count: usize,
) -> Result<Duration, StoreError> {
    let cycle = [
        Status::Available,
        Status::Ringing,
        Status::OnCall,
        Status::Wrapup,
    ];
    let agents = agents.max(1);
    let ids: Vec<AgentId> = (0..agents)
        .map(|index| AgentId::parse(&format!("bench-{index}")))
        .collect::<Result<_, _>>()
        .map_err(|error| StoreError::InvalidRow {
            detail: error.to_string(),
        })?;
    let start_seq = store.last_seq().await?;
    let base = Utc::now();
    let mut states = Vec::with_capacity(count);
    for index in 0..count {
        let id = &ids[index % agents];
        let at = base + chrono::Duration::milliseconds(index as i64);
        let mut state = unknown_state(id.clone(), id.to_string(), at);
        state.status = cycle[(index / agents) % cycle.len()];
        state.on_a_call = state.status.on_a_call();
        state.available = Some(true);
        state.destination = Some("31201234567".into());
        state.seq = start_seq + index as u64 + 1;
        states.push(state);
    }
    let started = Instant::now();
    for batch in states.chunks(super::BATCH_MAX) {
        store.record(batch).await?;
    }
    Ok(started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(url: &str, expected: &str) {
        assert_eq!(redact_url(url), expected, "{url}");
    }

    #[test]
    fn urls_never_show_a_password() {
        check(
            "postgres://bridge:s3cret@db:5432/history",
            "postgres://bridge:%5Bredacted%5D@db:5432/history",
        );
        check(
            "postgres://bridge@db/history",
            "postgres://bridge@db/history",
        );
        check(
            "postgres://db/history?user=x&password=s3cret",
            "postgres://db/history?user=x&password=%5Bredacted%5D",
        );
        check("sqlite://data/pbx2mqtt.db", "sqlite://data/pbx2mqtt.db");
        check("postgres://bridge:s3cret@[::1", "postgres:[unparseable]");
        check("nonsense with s3cret", "[unparseable]");
    }

    #[test]
    fn error_text_loses_the_password() {
        let url = "postgres://bridge:p%40ss@db/history";
        assert_eq!(url_password(url).as_deref(), Some("p@ss"));
        let text = redact_text("failed for p@ss and p%40ss", url);
        assert!(!text.contains("p@ss") && !text.contains("p%40ss"), "{text}");
    }
}
