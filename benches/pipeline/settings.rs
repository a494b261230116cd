//! What to run and how hard: the knobs from the environment and the arguments,
//! the stages they make, and the fixed shape of the simulated setup.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value as Json};

use crate::targets::{TARGET_AGENTS, TARGET_INTERVAL};

/// First Belfabriek extension id of the simulated agents.
pub const FIRST_EXTENSION: u32 = 1001;

/// First TRiNG extension of the simulated agents.
pub const FIRST_TRING_EXTENSION: u32 = 201;

/// The queue the command phase adds to and removes from.
pub const COMMAND_QUEUE: &str = "500";

/// Longest wait for a process or the broker to come up.
pub const STARTUP_LIMIT: Duration = Duration::from_secs(60);

/// What to run and how hard.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Simulated agents (all configured in the bridge).
    pub agents: u32,
    /// The bridge's `poll.interval` in the full-load stage.
    pub interval: Duration,
    /// The bridge's `poll.concurrency`.
    pub concurrency: usize,
    /// The simulator's mean dwell per state in the full-load stage.
    pub mean_dwell: Duration,
    /// Time after the bridge is online before a window starts.
    pub warmup: Duration,
    /// The full-load stage's measurement window (zero skips the stage).
    pub window: Duration,
    /// `poll.interval` in the latency stage.
    pub latency_interval: Duration,
    /// The mean dwell in the latency stage.
    pub latency_dwell: Duration,
    /// The latency stage's measurement window (zero skips the stage).
    pub latency_window: Duration,
    /// Length of the command phase (zero skips it).
    pub command_time: Duration,
    /// Commands in flight at once.
    pub commands_in_flight: usize,
    /// Intervals written by the history phase.
    pub history_intervals: usize,
    /// Where the SQLite files go (`PIPELINE_DATA_DIR`; the system's temp
    /// directory when unset).
    pub data_dir: Option<PathBuf>,
    /// Run the processes (polling, latency, memory, commands).
    pub run_pipeline: bool,
    /// Run the history phase.
    pub run_history: bool,
}

impl Settings {
    pub fn from_env_and_args() -> anyhow::Result<Self> {
        // Cargo passes `--bench`; other flags are ignored too.
        let parts: BTreeSet<String> = std::env::args()
            .skip(1)
            .filter(|arg| !arg.starts_with('-'))
            .collect();
        for part in &parts {
            if part != "pipeline" && part != "history" {
                bail!("unknown part {part:?}: use `pipeline`, `history` or nothing for both");
            }
        }
        let all = parts.is_empty();
        Ok(Self {
            agents: env_number("PIPELINE_AGENTS", 5_000)?,
            interval: env_duration("PIPELINE_INTERVAL", Duration::from_millis(500))?,
            concurrency: env_number("PIPELINE_CONCURRENCY", 128)?,
            mean_dwell: env_duration("PIPELINE_DWELL", Duration::from_secs(5))?,
            warmup: env_duration("PIPELINE_WARMUP", Duration::from_secs(5))?,
            window: env_duration("PIPELINE_SECONDS", Duration::from_secs(20))?,
            latency_interval: env_duration("PIPELINE_LATENCY_INTERVAL", Duration::from_secs(2))?,
            latency_dwell: env_duration("PIPELINE_LATENCY_DWELL", Duration::from_secs(3))?,
            latency_window: env_duration("PIPELINE_LATENCY_SECONDS", Duration::from_secs(15))?,
            command_time: env_duration("PIPELINE_COMMAND_SECONDS", Duration::from_secs(5))?,
            commands_in_flight: env_number("PIPELINE_COMMANDS_IN_FLIGHT", 8)?,
            history_intervals: env_number("PIPELINE_HISTORY_INTERVALS", 100_000)?,
            data_dir: std::env::var_os("PIPELINE_DATA_DIR")
                .filter(|dir| !dir.is_empty())
                .map(PathBuf::from),
            run_pipeline: all || parts.contains("pipeline"),
            run_history: all || parts.contains("history"),
        })
    }

    /// The stages to run, in order: full load, then latency (with the
    /// commands, so they run on a machine that is not saturated).
    pub fn stages(&self) -> Vec<Stage> {
        let mut stages = Vec::new();
        if !self.window.is_zero() {
            stages.push(Stage {
                key: "load",
                title: format!(
                    "full load: {} agents polled every {}, mean dwell {}",
                    self.agents,
                    humantime::format_duration(self.interval),
                    humantime::format_duration(self.mean_dwell)
                ),
                interval: self.interval,
                mean_dwell: self.mean_dwell,
                window: self.window,
                throughput: true,
                commands: false,
            });
        }
        if !self.latency_window.is_zero() {
            stages.push(Stage {
                key: "latency",
                title: format!(
                    "latency: {} agents polled every {}, mean dwell {} (lighter poll load)",
                    self.agents,
                    humantime::format_duration(self.latency_interval),
                    humantime::format_duration(self.latency_dwell)
                ),
                interval: self.latency_interval,
                mean_dwell: self.latency_dwell,
                window: self.latency_window,
                throughput: false,
                commands: false,
            });
        }
        if let Some(last) = stages.last_mut() {
            last.commands = !self.command_time.is_zero();
        }
        stages
    }

    /// True when the run is at the scale the targets are stated for.
    pub fn at_target_scale(&self) -> bool {
        self.agents >= TARGET_AGENTS && self.interval <= TARGET_INTERVAL
    }

    pub fn to_json(&self) -> Json {
        json!({
            "agents": self.agents,
            "poll_interval_ms": self.interval.as_millis() as u64,
            "poll_concurrency": self.concurrency,
            "mean_dwell_ms": self.mean_dwell.as_millis() as u64,
            "warmup_s": self.warmup.as_secs_f64(),
            "window_s": self.window.as_secs_f64(),
            "latency_poll_interval_ms": self.latency_interval.as_millis() as u64,
            "latency_mean_dwell_ms": self.latency_dwell.as_millis() as u64,
            "latency_window_s": self.latency_window.as_secs_f64(),
            "command_s": self.command_time.as_secs_f64(),
            "commands_in_flight": self.commands_in_flight,
            "history_intervals": self.history_intervals,
            "data_dir": self.data_dir.as_ref().map_or_else(
                || std::env::temp_dir().display().to_string(),
                |dir| dir.display().to_string()
            ),
        })
    }
}

/// One run of simulator and bridge with its own settings, topics and
/// database.
#[derive(Debug, Clone)]
pub struct Stage {
    /// Short name: topic suffix and directory.
    pub key: &'static str,
    /// Heading in the table.
    pub title: String,
    /// The bridge's `poll.interval`.
    pub interval: Duration,
    /// The simulator's mean dwell per state.
    pub mean_dwell: Duration,
    /// The measurement window.
    pub window: Duration,
    /// Check the polling targets, the CPU cost and the memory here.
    pub throughput: bool,
    /// Run the command phase after the window.
    pub commands: bool,
}

/// A number from the environment, or `default` when unset.
pub fn env_number<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(name) {
        Ok(raw) if !raw.trim().is_empty() => raw
            .trim()
            .replace('_', "")
            .parse()
            .map_err(|_| anyhow::anyhow!("{name}={raw:?} is not a number")),
        _ => Ok(default),
    }
}

/// A duration from the environment (`500ms`, `2s`, or a plain number of
/// seconds), or `default` when unset.
pub fn env_duration(name: &str, default: Duration) -> anyhow::Result<Duration> {
    match std::env::var(name) {
        Ok(raw) if !raw.trim().is_empty() => {
            let raw = raw.trim();
            if let Ok(seconds) = raw.parse::<f64>() {
                if seconds >= 0.0 && seconds.is_finite() {
                    return Ok(Duration::from_secs_f64(seconds));
                }
            }
            humantime::parse_duration(raw)
                .with_context(|| format!("{name}={raw:?} is not a duration (e.g. 500ms, 20s, 20)"))
        }
        _ => Ok(default),
    }
}
