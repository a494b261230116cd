//! What to run and how hard: the knobs from the environment and the arguments,
//! the stages they make, and the fixed shape of the simulated setup.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value as Json};

use crate::stats::thousands;
use crate::targets::{TARGET_AGENTS, TARGET_INTERVAL};

/// First Belfabriek extension id of the simulated agents.
pub const FIRST_EXTENSION: u32 = 1001;

/// First TRiNG extension of the simulated agents.
pub const FIRST_TRING_EXTENSION: u32 = 201;

/// The simulator's account PIN (the bridge and the Python peer get it).
pub const PIN: &str = "bench-pin-7731";

/// The queue the command phase adds to and removes from.
pub const COMMAND_QUEUE: &str = "500";

/// Longest wait for a process or the broker to come up.
pub const STARTUP_LIMIT: Duration = Duration::from_secs(60);

/// What to run and how hard.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Simulated agents (all configured in the bridge).
    pub agents: u32,
    /// The bridge's `poll.interval` in the steady stage (and the soak).
    pub interval: Duration,
    /// The bridge's `poll.interval` in the saturation stage: a schedule well
    /// above what the machine can carry.
    pub saturation_interval: Duration,
    /// The bridge's `poll.concurrency`.
    pub concurrency: usize,
    /// The simulator's mean dwell per state. 4.5 s: 5,000 agents polled
    /// every second then show about 1,000 transitions a second, the load the
    /// latency target is stated at (with 5 s, 893 a second: a state shorter
    /// than the poll interval is never seen).
    pub mean_dwell: Duration,
    /// Time after the bridge is online before a window starts.
    pub warmup: Duration,
    /// The steady stage's measurement window (zero skips the stage).
    pub window: Duration,
    /// The saturation stage's measurement window (zero skips the stage).
    pub saturation_window: Duration,
    /// The Python peer's timed window (zero skips the peer).
    pub peer_window: Duration,
    /// Length of the command phase (zero skips it).
    pub command_time: Duration,
    /// Commands in flight at once.
    pub commands_in_flight: usize,
    /// Intervals written by the history phase.
    pub history_intervals: usize,
    /// Where the SQLite files go (`PIPELINE_DATA_DIR`; the system's temp
    /// directory when unset).
    pub data_dir: Option<PathBuf>,
    /// Run the processes (saturation, peer, steady, commands).
    pub run_pipeline: bool,
    /// Run the history phase.
    pub run_history: bool,
    /// `--soak DURATION`: only the soak, this long.
    pub soak: Option<Duration>,
}

impl Settings {
    pub fn from_env_and_args() -> anyhow::Result<Self> {
        // Cargo passes `--bench`; other flags are ignored, except `--soak`.
        let mut parts = BTreeSet::new();
        let mut soak = None;
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            if let Some(value) = arg.strip_prefix("--soak=") {
                soak = Some(parse_duration("--soak", value)?);
            } else if arg == "--soak" {
                let value = args
                    .next()
                    .context("--soak needs a duration, e.g. `--soak 1h` or `--soak 5m`")?;
                soak = Some(parse_duration("--soak", &value)?);
            } else if !arg.starts_with('-') {
                parts.insert(arg);
            }
        }
        for part in &parts {
            if part != "pipeline" && part != "history" {
                bail!("unknown part {part:?}: use `pipeline`, `history` or nothing for both (or `--soak DURATION`)");
            }
        }
        if soak.is_some_and(|soak| soak.is_zero()) {
            bail!("--soak needs a duration above zero");
        }
        let all = parts.is_empty() && soak.is_none();
        Ok(Self {
            agents: env_number("PIPELINE_AGENTS", TARGET_AGENTS)?,
            interval: env_duration("PIPELINE_INTERVAL", TARGET_INTERVAL)?,
            saturation_interval: env_duration(
                "PIPELINE_SATURATION_INTERVAL",
                Duration::from_millis(200),
            )?,
            concurrency: env_number("PIPELINE_CONCURRENCY", 128)?,
            mean_dwell: env_duration("PIPELINE_DWELL", Duration::from_millis(4500))?,
            warmup: env_duration("PIPELINE_WARMUP", Duration::from_secs(5))?,
            window: env_duration("PIPELINE_SECONDS", Duration::from_secs(20))?,
            saturation_window: env_duration(
                "PIPELINE_SATURATION_SECONDS",
                Duration::from_secs(20),
            )?,
            peer_window: env_duration("PIPELINE_PEER_SECONDS", Duration::from_secs(20))?,
            command_time: env_duration("PIPELINE_COMMAND_SECONDS", Duration::from_secs(5))?,
            commands_in_flight: env_number("PIPELINE_COMMANDS_IN_FLIGHT", 8)?,
            history_intervals: env_number("PIPELINE_HISTORY_INTERVALS", 100_000)?,
            data_dir: std::env::var_os("PIPELINE_DATA_DIR")
                .filter(|dir| !dir.is_empty())
                .map(PathBuf::from),
            run_pipeline: all || parts.contains("pipeline"),
            run_history: all || parts.contains("history"),
            soak,
        })
    }

    /// The bridge stages to run, in order: saturation (the Python peer runs
    /// after it), then steady (5,000 agents at the normal interval: CPU
    /// share, poll gaps, latency, memory, and the commands).
    pub fn stages(&self) -> Vec<Stage> {
        let mut stages = Vec::new();
        if !self.saturation_window.is_zero() {
            stages.push(Stage {
                key: "saturation",
                title: format!(
                    "saturation: {} agents polled every {} (schedule {}/s, above what the cores carry), mean dwell {}",
                    self.agents,
                    humantime::format_duration(self.saturation_interval),
                    thousands(f64::from(self.agents) / self.saturation_interval.as_secs_f64()),
                    humantime::format_duration(self.mean_dwell)
                ),
                interval: self.saturation_interval,
                mean_dwell: self.mean_dwell,
                window: self.saturation_window,
                kind: StageKind::Saturation,
                commands: false,
            });
        }
        if !self.window.is_zero() {
            stages.push(Stage {
                key: "steady",
                title: format!(
                    "steady: {} agents polled every {}, mean dwell {}",
                    self.agents,
                    humantime::format_duration(self.interval),
                    humantime::format_duration(self.mean_dwell)
                ),
                interval: self.interval,
                mean_dwell: self.mean_dwell,
                window: self.window,
                kind: StageKind::Steady,
                commands: !self.command_time.is_zero(),
            });
        }
        stages
    }

    /// The soak stage: the steady setup for `duration`.
    pub fn soak_stage(&self, duration: Duration) -> Stage {
        Stage {
            key: "soak",
            title: format!(
                "soak: {} agents polled every {}, mean dwell {}, for {}",
                self.agents,
                humantime::format_duration(self.interval),
                humantime::format_duration(self.mean_dwell),
                humantime::format_duration(duration)
            ),
            interval: self.interval,
            mean_dwell: self.mean_dwell,
            window: duration,
            kind: StageKind::Steady,
            commands: false,
        }
    }

    /// True when the run is at the scale the targets are stated for.
    pub fn at_target_scale(&self) -> bool {
        self.agents >= TARGET_AGENTS && self.interval <= TARGET_INTERVAL
    }

    pub fn to_json(&self) -> Json {
        json!({
            "agents": self.agents,
            "poll_interval_ms": self.interval.as_millis() as u64,
            "saturation_poll_interval_ms": self.saturation_interval.as_millis() as u64,
            "poll_concurrency": self.concurrency,
            "mean_dwell_ms": self.mean_dwell.as_millis() as u64,
            "warmup_s": self.warmup.as_secs_f64(),
            "window_s": self.window.as_secs_f64(),
            "saturation_window_s": self.saturation_window.as_secs_f64(),
            "peer_window_s": self.peer_window.as_secs_f64(),
            "command_s": self.command_time.as_secs_f64(),
            "commands_in_flight": self.commands_in_flight,
            "history_intervals": self.history_intervals,
            "soak_s": self.soak.map(|soak| soak.as_secs_f64()),
            "data_dir": self.data_dir.as_ref().map_or_else(
                || std::env::temp_dir().display().to_string(),
                |dir| dir.display().to_string()
            ),
        })
    }
}

/// What a stage measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageKind {
    /// A schedule above capacity: polls/s and CPU per poll at saturation.
    Saturation,
    /// The normal interval: CPU share, poll gaps, latency, memory.
    Steady,
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
    /// The simulator's mean dwell per state. 4.5 s: 5,000 agents polled
    /// every second then show about 1,000 transitions a second, the load the
    /// latency target is stated at (with 5 s, 893 a second: a state shorter
    /// than the poll interval is never seen).
    pub mean_dwell: Duration,
    /// The measurement window.
    pub window: Duration,
    /// What it measures.
    pub kind: StageKind,
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
        Ok(raw) if !raw.trim().is_empty() => parse_duration(name, &raw),
        _ => Ok(default),
    }
}

/// `500ms`, `2s`, `1h`, or a plain number of seconds.
pub fn parse_duration(name: &str, raw: &str) -> anyhow::Result<Duration> {
    let raw = raw.trim();
    if let Ok(seconds) = raw.parse::<f64>() {
        if seconds >= 0.0 && seconds.is_finite() {
            return Ok(Duration::from_secs_f64(seconds));
        }
    }
    humantime::parse_duration(raw)
        .with_context(|| format!("{name}={raw:?} is not a duration (e.g. 500ms, 20s, 20, 1h)"))
}
