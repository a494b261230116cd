//! The product targets (`product.md` §8) the table holds the figures
//! against.

use std::time::Duration;

/// Agent-polls per second sustained at saturation, the simulator sharing
/// the cores.
pub const TARGET_POLLS_PER_SECOND: f64 = 12_000.0;

/// The bridge's CPU per agent-poll at saturation, microseconds.
pub const TARGET_BRIDGE_MICROS_PER_POLL: f64 = 60.0;

/// The bridge's share of one core with 5,000 agents polled every second,
/// percent.
pub const TARGET_STEADY_CORE_PERCENT: f64 = 35.0;

/// The bridge's agent-polls/s over the plain Python peer's, same
/// simulator.
pub const TARGET_PEER_RATIO: f64 = 40.0;

/// Transition → subscriber p99, milliseconds.
pub const TARGET_LATENCY_P99_MS: f64 = 5.0;

/// Transitions per second the latency target is stated at.
pub const TARGET_TRANSITIONS_PER_SECOND: f64 = 1_000.0;

/// Resident memory of the bridge at 5,000 agents, megabytes.
pub const TARGET_RSS_MB: f64 = 30.0;

/// History intervals per second.
pub const TARGET_HISTORY_PER_SECOND: f64 = 20_000.0;

/// The agent count and interval the targets are stated for.
pub const TARGET_AGENTS: u32 = 5_000;

/// See [`TARGET_AGENTS`].
pub const TARGET_INTERVAL: Duration = Duration::from_secs(1);
