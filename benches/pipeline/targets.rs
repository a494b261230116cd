//! The product targets (`product.md` §8) the table holds the figures
//! against.

use std::time::Duration;

/// Agent-polls per second.
pub const TARGET_POLLS_PER_SECOND: f64 = 10_000.0;

/// Transition → subscriber p99, milliseconds.
pub const TARGET_LATENCY_P99_MS: f64 = 5.0;

/// Transitions per second the latency target is stated at.
pub const TARGET_TRANSITIONS_PER_SECOND: f64 = 1_000.0;

/// Peak resident memory of the bridge, megabytes.
pub const TARGET_RSS_MB: f64 = 40.0;

/// History intervals per second.
pub const TARGET_HISTORY_PER_SECOND: f64 = 20_000.0;

/// The agent count and interval the targets are stated for.
pub const TARGET_AGENTS: u32 = 5_000;

/// See [`TARGET_AGENTS`].
pub const TARGET_INTERVAL: Duration = Duration::from_millis(500);
