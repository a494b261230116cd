//! Status history (`product.md` §4): the [`Store`] (SQLite or PostgreSQL,
//! one row per status interval, `seq` and heartbeat bookkeeping, resume
//! after a restart) and the [`HistoryWriter`] task, the only writer, which
//! assigns `seq` and commits the tracker's changes in batches before they
//! are published.
//!
//! Layout: `store.rs` (the handle, opening, errors), `plan.rs` (pure: what a
//! batch or a resume writes), `sqlite.rs` and `postgres.rs` (the SQL of each
//! backend), `writer.rs` (the task). Reports add their own queries by
//! matching on [`Store`]'s variants; this module does no report arithmetic,
//! no MQTT and no polling.

pub mod outbox;
mod plan;
mod postgres;
mod sqlite;
mod store;
mod writer;

#[cfg(test)]
pub(crate) mod test_database;
#[cfg(test)]
mod tests;

pub use store::{bench_record, redact_url, Interval, Resume, Store, StoreError};
pub use writer::{HistoryWriter, BATCH_MAX, HEARTBEAT_EVERY};
