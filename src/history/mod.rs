//! The history writer (`product.md` §4): the task that is the only writer
//! of status history. It gives every transition the next `seq`, commits the
//! tracker's changes in batches through the [`crate::store::Store`], and
//! only then hands them to the board and the MQTT publisher.
//!
//! This module owns batching, retries and `seq`; every statement is in
//! `store`. It does no MQTT and no polling.

pub mod pending;
mod writer;

#[cfg(test)]
mod tests;

pub use writer::{HistoryWriter, BATCH_MAX, HEARTBEAT_EVERY};
