//! [`StoreError`]: why a store operation failed. Never holds a database
//! password: every URL and driver message in it went through
//! [`super::url::redact_url`] or [`super::url::redact_text`] first.

use std::path::PathBuf;

/// Why a store operation failed.
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
    /// A database that must already exist (reports never create one) does not.
    #[error("no history database at {url:?}: {detail}")]
    Missing {
        /// The URL, password removed.
        url: String,
        /// What was looked for and what to do.
        detail: String,
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
    /// Another bridge already runs on this SQLite file.
    #[error("another pbx2mqtt bridge is already running on the sqlite database {path} (it holds {lock}); SQLite keeps one bridge per file: stop the other bridge, point database.url at another file, or use PostgreSQL to run several bridges together")]
    Locked {
        /// The database file.
        path: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
    /// The lock file next to an SQLite database could not be opened.
    #[error(
        "cannot open the lock file {lock}: {source}; check the database directory is writable"
    )]
    LockFile {
        /// The lock file.
        lock: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// A query failed.
    #[error("history database failed while {action}: {source}")]
    Query {
        /// What the store was doing, e.g. `recording a batch`.
        action: &'static str,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// A statement on the SQLite history thread failed (`sqlite_thread.rs`).
    #[error("history database failed while {action}: {source}")]
    Sqlite {
        /// What the store was doing, e.g. `writing a history batch`.
        action: &'static str,
        /// SQLite's error.
        source: rusqlite::Error,
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

    /// A stored value no bridge writes.
    pub(crate) fn invalid_row(detail: impl std::fmt::Display) -> StoreError {
        StoreError::InvalidRow {
            detail: detail.to_string(),
        }
    }
}
