//! Opening a [`Store`]: the URL, the pools, the migrations.
//!
//! A store has two pools on the same database: one for the bridge's writes
//! (history batches on PostgreSQL, audit rows, leases) and one for reads
//! (reports, the HTTP API), so a long report never holds a connection the
//! history writer is waiting for; on a writable SQLite file, also the
//! history thread's own connection (`sqlite_thread.rs`). [`Store::open`] creates and migrates the database;
//! [`Store::open_existing`] (reports, `audit`) never creates, migrates or
//! writes anything.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection};

use super::sqlite_thread::{SqliteThread, ThreadSettings};
use super::url::{redact_text, redact_url};
use super::{Backend, Store, StoreError};

/// How long an SQLite connection waits for a lock before failing with
/// "database is locked". The writer's transactions take milliseconds; this
/// only matters for a checkpoint or an outside tool holding the file.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// SQLite page cache of the history thread's connection, in KiB (SQLite's
/// default is 2 MiB). A batch appends to the ends of the tables and indexes
/// and closes each agent's open interval: a working set of some hundred
/// pages at 5,000 agents. Measured at 5,000 agents polled every second, 1
/// MiB instead of 4 costs no CPU, latency or burst write rate (26,400
/// intervals/s either way) and 3.7 MB less resident memory. The cache fills
/// only as pages are used, so this bounds memory rather than reserving it.
const SQLITE_HISTORY_CACHE_KIB: u32 = 1024;

/// SQLite page cache of the other writing connections (audit rows, resume,
/// closing the history, readiness checks), in KiB: small writes, a small cache.
const SQLITE_WRITER_CACHE_KIB: u32 = 1024;

/// SQLite page cache per reading connection, in KiB. Reports read with
/// index seeks and the OS page cache holds the file; a small cache keeps
/// resident memory low.
const SQLITE_READER_CACHE_KIB: u32 = 1024;

/// WAL pages after which a commit on the other writing connection (audit,
/// imports) checkpoints (SQLite's default is 1000, 4 MiB). A 4096-interval
/// batch writes over a thousand pages, so the default checkpoints after
/// nearly every commit; 4000 (16 MiB of WAL on disk) checkpoints each page
/// once for several batches. The history writer's connection checkpoints
/// only as a safety net: `checkpoint.rs` does, off its path.
const SQLITE_WAL_AUTOCHECKPOINT_PAGES: u32 = 4000;

/// The size a WAL file is cut back to when a writer starts it over after a
/// burst (SQLite's default keeps the largest it ever was): 16 MiB, more than
/// a second of history at 5,000 agents polled every second.
const SQLITE_WAL_SIZE_LIMIT_BYTES: u64 = 16 * 1024 * 1024;

/// Writing connections besides the history writer's: audit batches, leases
/// and readiness checks, which then never queue behind a batch. On SQLite
/// the history writer has one connection of its own besides these, on the
/// history thread (SQLite
/// lets one transaction write at a time anyway); on PostgreSQL it shares
/// these.
const WRITER_CONNECTIONS: u32 = 2;

/// On SQLite: the writing connections besides the history writer's.
const SQLITE_WRITER_CONNECTIONS: u32 = 1;

/// Reading connections (reports, HTTP API): two queries of one report run
/// at once, and a second request can start beside them.
const READER_CONNECTIONS: u32 = 3;

/// How long to wait for a connection from a pool (or for PostgreSQL to
/// accept one) before an operation fails.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// Migrations for SQLite, embedded at build time (`migrations/sqlite`).
static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Migrations for PostgreSQL, embedded at build time (`migrations/postgres`).
static POSTGRES_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The backends a URL can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Sqlite,
    Postgres,
}

fn scheme(url: &str) -> Result<Scheme, StoreError> {
    let scheme = url
        .split(':')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    match scheme.as_str() {
        "sqlite" => Ok(Scheme::Sqlite),
        "postgres" | "postgresql" => Ok(Scheme::Postgres),
        _ => Err(StoreError::UnsupportedScheme {
            url: redact_url(url),
        }),
    }
}

impl Store {
    /// Opens (creating an SQLite file and its directory if missing) and
    /// migrates the database at a sqlx URL: `sqlite://data/pbx2mqtt.db`
    /// (relative to the working directory), `sqlite:///var/lib/x.db`
    /// (absolute) or `postgres://user@host/db`.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        match scheme(url)? {
            Scheme::Sqlite => open_sqlite(url).await,
            Scheme::Postgres => open_postgres(url).await,
        }
    }

    /// Makes sure this process is the only bridge on an SQLite database: an
    /// exclusive lock on `<file>.lock`, held while the returned guard lives
    /// (the operating system drops it when the process dies, so a crash
    /// never leaves it behind). `None` on PostgreSQL (several bridges share
    /// it through leases) and for in-memory databases.
    pub fn lock_single_bridge(url: &str) -> Result<Option<std::fs::File>, StoreError> {
        if scheme(url)? != Scheme::Sqlite {
            return Ok(None);
        }
        let options = sqlite_options(url)?;
        let path = options.get_filename().to_path_buf();
        if is_in_memory(&path) {
            return Ok(None);
        }
        create_parent_directory(&path)?;
        let mut lock = path.clone().into_os_string();
        lock.push(".lock");
        let lock = std::path::PathBuf::from(lock);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock)
            .map_err(|source| StoreError::LockFile {
                lock: lock.clone(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked { path, lock }),
            Err(std::fs::TryLockError::Error(source)) => Err(StoreError::LockFile { lock, source }),
        }
    }

    /// Opens a database that must already hold pbx2mqtt history, for
    /// reading only: never creates a file, never migrates, never writes. A
    /// missing file or an empty database is a [`StoreError::Missing`] naming
    /// the URL.
    pub async fn open_existing(url: &str) -> Result<Store, StoreError> {
        let store = match scheme(url)? {
            Scheme::Sqlite => open_sqlite_existing(url).await?,
            Scheme::Postgres => {
                let options = pg_options(url)?;
                let pool = PgPoolOptions::new()
                    .max_connections(READER_CONNECTIONS)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect_with(options)
                    .await
                    .map_err(|error| connect_error(url, &error))?;
                let backend = Backend::Postgres(pool);
                Store {
                    writer: backend.clone(),
                    reader: backend,
                    thread: None,
                    daily: None,
                }
            }
        };
        if store
            .scalar_unchecked("SELECT COUNT(*) FROM _sqlx_migrations")
            .await
            .is_err()
        {
            store.clone().close().await;
            return Err(StoreError::Missing {
                url: redact_url(url),
                detail: "it holds no pbx2mqtt history (it was never migrated); point --database (or database.url) at the bridge's database".into(),
            });
        }
        Ok(store)
    }
}

/// True for an SQLite "file" that is memory (`:memory:`, `file:` URIs).
fn is_in_memory(file: &std::path::Path) -> bool {
    let name = file.to_string_lossy();
    name.is_empty()
        || name.starts_with(':')
        || name.starts_with("file:")
        || name.contains(":memory:")
}

/// The options every SQLite connection shares.
fn sqlite_options(url: &str) -> Result<SqliteConnectOptions, StoreError> {
    Ok(SqliteConnectOptions::from_str(url)
        .map_err(|error| StoreError::InvalidUrl {
            url: redact_url(url),
            detail: redact_text(&error.to_string(), url),
        })?
        .busy_timeout(SQLITE_BUSY_TIMEOUT)
        .foreign_keys(true))
}

/// Opens an SQLite file in WAL mode with `synchronous=FULL`: a writer pool
/// that may create the file, and a read-only reader pool.
async fn open_sqlite(url: &str) -> Result<Store, StoreError> {
    let options = sqlite_options(url)?;
    create_parent_directory(options.get_filename())?;
    let writing = |connections, cache_kib: u32, autocheckpoint_pages: u32| {
        SqlitePoolOptions::new()
            .max_connections(connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // A file connection does not go stale like a socket: no ping (a
            // round trip to the connection's thread) before every batch. A
            // connection a failed commit left inside a transaction is
            // closed by `begin_on_clean_connection`.
            .test_before_acquire(false)
            .connect_with(
                options
                    .clone()
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full)
                    .pragma("cache_size", format!("-{cache_kib}"))
                    .pragma("wal_autocheckpoint", autocheckpoint_pages.to_string())
                    .pragma(
                        "journal_size_limit",
                        SQLITE_WAL_SIZE_LIMIT_BYTES.to_string(),
                    ),
            )
    };
    let writer = writing(
        SQLITE_WRITER_CONNECTIONS,
        SQLITE_WRITER_CACHE_KIB,
        SQLITE_WAL_AUTOCHECKPOINT_PAGES,
    )
    .await
    .map_err(|error| connect_error(url, &error))?;
    SQLITE_MIGRATOR
        .run(&writer)
        .await
        .map_err(|source| StoreError::Migrate {
            url: redact_url(url),
            source,
        })?;
    let file = options.get_filename().to_path_buf();
    let reader = sqlite_reader(options, url).await?;
    // A second connection to an in-memory database would open another one.
    let thread = match is_in_memory(&file) {
        true => None,
        false => Some(Arc::new(SqliteThread::open(
            &file,
            url,
            ThreadSettings {
                busy_timeout: SQLITE_BUSY_TIMEOUT,
                cache_kib: SQLITE_HISTORY_CACHE_KIB,
                autocheckpoint_pages: super::checkpoint::HISTORY_AUTOCHECKPOINT_PAGES,
                wal_size_limit_bytes: SQLITE_WAL_SIZE_LIMIT_BYTES,
            },
        )?)),
    };
    // The history thread writes the batches and closes the history at a
    // stop; the rest (start-up, the rare paths) goes through the writing
    // pool.
    let writer = Backend::Sqlite(writer);
    Ok(Store {
        writer,
        reader: Backend::Sqlite(reader),
        thread,
        daily: None,
    })
}

/// A read-only pool on an SQLite file that exists.
async fn sqlite_reader(
    options: SqliteConnectOptions,
    url: &str,
) -> Result<sqlx::SqlitePool, StoreError> {
    SqlitePoolOptions::new()
        .max_connections(READER_CONNECTIONS)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(
            options
                .read_only(true)
                .create_if_missing(false)
                .pragma("cache_size", format!("-{SQLITE_READER_CACHE_KIB}")),
        )
        .await
        .map_err(|error| connect_error(url, &error))
}

/// Opens an existing SQLite file for reading only.
async fn open_sqlite_existing(url: &str) -> Result<Store, StoreError> {
    let options = sqlite_options(url)?;
    let file = options.get_filename();
    if !is_in_memory(file) && !file.is_file() {
        return Err(StoreError::Missing {
            url: redact_url(url),
            detail: format!(
                "the file {} does not exist (relative paths are from the working directory {}); point --database (or database.url) at the bridge's database",
                file.display(),
                std::env::current_dir()
                    .map(|dir| dir.display().to_string())
                    .unwrap_or_else(|_| "?".into())
            ),
        });
    }
    let reader = Backend::Sqlite(sqlite_reader(options, url).await?);
    Ok(Store {
        writer: reader.clone(),
        reader,
        thread: None,
        daily: None,
    })
}

fn pg_options(url: &str) -> Result<PgConnectOptions, StoreError> {
    PgConnectOptions::from_str(url).map_err(|error| StoreError::InvalidUrl {
        url: redact_url(url),
        detail: redact_text(&error.to_string(), url),
    })
}

/// Connects to PostgreSQL. One connection is made first, so a wrong host or
/// password fails at once (a pool would retry until its acquire timeout),
/// and the migrations run on it.
async fn open_postgres(url: &str) -> Result<Store, StoreError> {
    let options = pg_options(url)?;
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
    let pool = |connections| {
        PgPoolOptions::new()
            .max_connections(connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options.clone())
    };
    let writer = Backend::Postgres(pool(WRITER_CONNECTIONS));
    let store = Store {
        writer,
        reader: Backend::Postgres(pool(READER_CONNECTIONS)),
        thread: None,
        daily: None,
    };
    // Closing only tells the server goodbye; the pools open their own.
    let _ = first.close().await;
    Ok(store)
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
