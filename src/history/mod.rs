//! The history writer (`product.md` §4): the task that is the only writer
//! of status history. It takes the poller's changes from the
//! [`ChangeQueue`] (`pending.rs`: pure, folded per agent, bounded), gives
//! every transition the next `seq`, commits them in batches through the
//! [`crate::store::Store`], and only then records them in
//! [`crate::latest::LatestStates`] for the publisher and the HTTP API.
//!
//! This module owns batching, retries and `seq`; every statement is in
//! `store`. It does no MQTT and no polling.

pub mod pending;
mod queue;
mod writer;

#[cfg(test)]
mod tests;

pub use queue::ChangeQueue;
pub use writer::{ClusterMember, HistoryWriter, BATCH_MAX, HEARTBEAT_EVERY};
