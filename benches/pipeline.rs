//! The pipeline benchmark: `cargo bench --bench pipeline`.
//!
//! It runs the real release binary as separate processes, so the figures
//! are what a deployment would see: the PBX simulator (`pbx2mqtt simulate`)
//! with thousands of auto-moving agents, the bridge (`pbx2mqtt run`) with a
//! generated configuration and a fresh SQLite history, and a broker
//! (`PBX2MQTT_TEST_MQTT_URL`, else an embedded rumqttd in this process). This
//! process plays the outside world: an MQTT subscriber timing every
//! transition event, a command client, and samplers of memory and CPU. Then,
//! with the bridge stopped, it measures history write throughput on SQLite
//! (and PostgreSQL when `PBX2MQTT_TEST_POSTGRES_URL` is set).
//!
//! It prints one table (metric, measured, target, pass/fail) against
//! `product.md` §8 and writes the same as JSON to `target/pipeline-bench.json`.
//! Every phase is bounded in time; children are killed when this process
//! ends, fails, panics or is interrupted (a guard with `Drop`). All traffic
//! stays on 127.0.0.1. It measures; it does not assert.
//!
//! Knobs (environment): `PIPELINE_AGENTS` (5000), `PIPELINE_INTERVAL`
//! (500ms), `PIPELINE_CONCURRENCY` (128), `PIPELINE_DWELL` (5s),
//! `PIPELINE_WARMUP` (5s), `PIPELINE_SECONDS` (20, the steady window),
//! `PIPELINE_COMMAND_SECONDS` (5; 0 skips commands),
//! `PIPELINE_COMMANDS_IN_FLIGHT` (8), `PIPELINE_HISTORY_INTERVALS` (200000),
//! `PIPELINE_DATA_DIR` (where the SQLite files go; the temp directory),
//! `PIPELINE_BROKER` (`mosquitto`: a private Mosquitto with
//! `set_tcp_nodelay true`; `embedded`; unset: `PBX2MQTT_TEST_MQTT_URL`, else
//! embedded).
//! Arguments `pipeline` or `history` run only that part.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde::Deserialize;
use serde_json::{json, Value as Json};
use tokio::sync::{oneshot, watch};

use pbx2mqtt::broker::EmbeddedBroker;
use pbx2mqtt::config::BrokerUrl;
use pbx2mqtt::history::{bench_record, Store};
use pbx2mqtt::simulator::RequestCounts;

/// The release binary under test.
const BINARY: &str = env!("CARGO_BIN_EXE_pbx2mqtt");

/// The simulator's account PIN (the bridge gets it in its config).
const PIN: &str = "bench-pin-7731";
/// The simulator's TRiNG key.
const KEY: &str = "bench-key-4410";
/// The simulator's TRiNG tenant.
const TENANT: &str = "BENCH";
/// First Belfabriek extension id of the simulated agents.
const FIRST_EXTENSION: u32 = 1001;
/// First TRiNG extension of the simulated agents.
const FIRST_TRING_EXTENSION: u32 = 201;
/// The queue the command phase adds to and removes from.
const COMMAND_QUEUE: &str = "500";

/// The product targets (`product.md` §8).
const TARGET_POLLS_PER_SECOND: f64 = 10_000.0;
/// Transition → subscriber p99, milliseconds.
const TARGET_LATENCY_P99_MS: f64 = 5.0;
/// Transitions per second the latency target is stated at.
const TARGET_TRANSITIONS_PER_SECOND: f64 = 1_000.0;
/// Peak resident memory of the bridge, megabytes.
const TARGET_RSS_MB: f64 = 40.0;
/// History intervals per second.
const TARGET_HISTORY_PER_SECOND: f64 = 20_000.0;
/// The agent count and interval the targets are stated for.
const TARGET_AGENTS: u32 = 5_000;
/// See [`TARGET_AGENTS`].
const TARGET_INTERVAL: Duration = Duration::from_millis(500);

/// After the warm-up, the window starts once the events of the last second
/// have a median latency below this (the start-up burst has drained)...
const SETTLED_MEDIAN_MS: f64 = 50.0;
/// ...or at the latest this many warm-ups after the bridge came online.
const SETTLE_LIMIT_FACTOR: u32 = 3;

/// Longest wait for a process or the broker to come up.
const STARTUP_LIMIT: Duration = Duration::from_secs(60);
/// Longest wait for the bridge's graceful stop.
const STOP_LIMIT: Duration = Duration::from_secs(20);
/// Longest wait for one command's response.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// Commands started this soon after the phase began are not measured
/// (connections and the dispatcher warming up).
const COMMAND_WARMUP: Duration = Duration::from_millis(500);

fn main() -> ExitCode {
    let settings = match Settings::from_env_and_args() {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("pipeline bench: {error:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("pipeline bench: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        tokio::select! {
            outcome = run(&settings) => outcome,
            // Dropping `run` drops the process guards, which kill the children.
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    match outcome {
        Ok(report) => {
            report.print(&settings);
            match report.write_json(&settings) {
                Ok(path) => eprintln!("results written to {}", path.display()),
                Err(error) => eprintln!("pipeline bench: cannot write the JSON results: {error:#}"),
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("pipeline bench failed: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// What to run and how hard.
#[derive(Debug, Clone)]
struct Settings {
    /// Simulated agents (all configured in the bridge).
    agents: u32,
    /// The bridge's `poll.interval` in the full-load stage.
    interval: Duration,
    /// The bridge's `poll.concurrency`.
    concurrency: usize,
    /// The simulator's mean dwell per state in the full-load stage.
    mean_dwell: Duration,
    /// Time after the bridge is online before a window starts.
    warmup: Duration,
    /// The full-load stage's measurement window (zero skips the stage).
    window: Duration,
    /// `poll.interval` in the latency stage.
    latency_interval: Duration,
    /// The mean dwell in the latency stage.
    latency_dwell: Duration,
    /// The latency stage's measurement window (zero skips the stage).
    latency_window: Duration,
    /// Length of the command phase (zero skips it).
    command_time: Duration,
    /// Commands in flight at once.
    commands_in_flight: usize,
    /// Intervals written by the history phase.
    history_intervals: usize,
    /// Where the SQLite files go (`PIPELINE_DATA_DIR`; the system's temp
    /// directory when unset).
    data_dir: Option<PathBuf>,
    /// Run the processes (polling, latency, memory, commands).
    run_pipeline: bool,
    /// Run the history phase.
    run_history: bool,
}

impl Settings {
    fn from_env_and_args() -> anyhow::Result<Self> {
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
    fn stages(&self) -> Vec<Stage> {
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
    fn at_target_scale(&self) -> bool {
        self.agents >= TARGET_AGENTS && self.interval <= TARGET_INTERVAL
    }

    fn to_json(&self) -> Json {
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
struct Stage {
    /// Short name: topic suffix and directory.
    key: &'static str,
    /// Heading in the table.
    title: String,
    /// The bridge's `poll.interval`.
    interval: Duration,
    /// The simulator's mean dwell per state.
    mean_dwell: Duration,
    /// The measurement window.
    window: Duration,
    /// Check the polling targets, the CPU cost and the memory here.
    throughput: bool,
    /// Run the command phase after the window.
    commands: bool,
}

/// A number from the environment, or `default` when unset.
fn env_number<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
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
fn env_duration(name: &str, default: Duration) -> anyhow::Result<Duration> {
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

// ---------------------------------------------------------------------------
// The whole run
// ---------------------------------------------------------------------------

async fn run(settings: &Settings) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let data_dir = settings.data_dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new()
        .prefix("pbx2mqtt-pipeline-bench-")
        .tempdir_in(&data_dir)
        .with_context(|| format!("cannot create a directory in {}", data_dir.display()))?;
    report.group("environment");
    commit_probe(dir.path(), &mut report).await?;
    if settings.run_pipeline {
        let broker = Broker::choose(dir.path())?;
        report.notes.push(format!("broker: {}", broker.describe()));
        let tag = format!("{:08x}", rand::random::<u32>());
        report.notes.push(
            "latency = receipt time − the event's `at` (poll completion, same clock); `at` has millisecond \
             resolution (truncated), so figures include up to +1 ms"
                .into(),
        );
        for stage in settings.stages() {
            let base = format!("pbx2mqtt-bench/{tag}/{}", stage.key);
            let stage_dir = dir.path().join(stage.key);
            std::fs::create_dir_all(&stage_dir)?;
            report.group(&stage.title);
            let outcome = run_stage(
                settings,
                &stage,
                &broker,
                &base,
                &tag,
                &stage_dir,
                &mut report,
            )
            .await;
            // Retained state piles up on a persistent broker: clear ours,
            // even after a failure.
            if let Err(error) = clear_retained(&broker.url, &base, settings.agents).await {
                eprintln!("warning: could not clear the retained topics under {base}: {error:#}");
            }
            outcome.with_context(|| format!("stage {:?} failed", stage.key))?;
        }
    }
    if settings.run_history {
        report.group("history writes (bench_record, bridge stopped)");
        history(settings, dir.path(), &mut report).await?;
    }
    Ok(report)
}

/// The broker every client uses.
struct Broker {
    /// `mqtt://host:port`.
    url: String,
    /// What it is, for the notes.
    description: String,
    /// The broker's process, when it is a separate one we can name.
    pid: Option<u32>,
    /// The embedded broker (lives until the process exits).
    _embedded: Option<EmbeddedBroker>,
    /// Our own Mosquitto (killed when dropped).
    _private: Option<ChildProcess>,
}

impl Broker {
    /// `PIPELINE_BROKER=mosquitto`: a private Mosquitto with
    /// `set_tcp_nodelay true`; `embedded`: rumqttd in this process; unset:
    /// `PBX2MQTT_TEST_MQTT_URL`, else embedded.
    fn choose(dir: &Path) -> anyhow::Result<Self> {
        let choice = std::env::var("PIPELINE_BROKER").unwrap_or_default();
        match choice.as_str() {
            "mosquitto" => return Self::private_mosquitto(dir),
            "embedded" => return Self::embedded(),
            "" | "env" => {}
            other => {
                bail!("PIPELINE_BROKER={other:?}: use `mosquitto`, `embedded` or leave it unset")
            }
        }
        match std::env::var("PBX2MQTT_TEST_MQTT_URL") {
            Ok(url) if !url.is_empty() => Ok(Self {
                description: format!(
                    "external broker at {url} (PBX2MQTT_TEST_MQTT_URL), configured by its owner"
                ),
                pid: find_process("mosquitto"),
                url,
                _embedded: None,
                _private: None,
            }),
            _ => Self::embedded(),
        }
    }

    fn embedded() -> anyhow::Result<Self> {
        let broker = EmbeddedBroker::start(SocketAddr::from(([127, 0, 0, 1], 0)))
            .context("cannot start the embedded broker")?;
        Ok(Self {
            url: broker.url(),
            description: format!("embedded rumqttd in the bench process at {}", broker.url()),
            pid: None,
            _embedded: Some(broker),
            _private: None,
        })
    }

    /// Starts `mosquitto` (from PATH) on a free port with TCP_NODELAY.
    fn private_mosquitto(dir: &Path) -> anyhow::Result<Self> {
        let port = free_port()?;
        let config = dir.join("mosquitto.conf");
        std::fs::write(
            &config,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n"
            ),
        )?;
        let mut command = Command::new("mosquitto");
        command.arg("-c").arg(&config).stdout(Stdio::null());
        let mut broker = ChildProcess::spawn("mosquitto", command, dir.join("mosquitto.log"))?;
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            broker.check_running()?;
            if started.elapsed() > STARTUP_LIMIT {
                bail!("mosquitto did not listen on port {port} within {STARTUP_LIMIT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let url = format!("mqtt://127.0.0.1:{port}");
        Ok(Self {
            description: format!(
                "private Mosquitto at {url} with set_tcp_nodelay true (PIPELINE_BROKER=mosquitto)"
            ),
            pid: Some(broker.pid()),
            url,
            _embedded: None,
            _private: Some(broker),
        })
    }

    fn describe(&self) -> String {
        self.description.clone()
    }
}

/// One stage: simulator and bridge started, warmed up, measured (polling,
/// latency, and per the stage memory, CPU and commands), stopped.
async fn run_stage(
    settings: &Settings,
    stage: &Stage,
    broker: &Broker,
    base: &str,
    tag: &str,
    dir: &Path,
    report: &mut Report,
) -> anyhow::Result<()> {
    progress(format!(
        "starting the simulator ({} agents, mean dwell {})",
        settings.agents,
        humantime::format_duration(stage.mean_dwell)
    ));
    let (mut simulator, simulator_addr) = start_simulator(settings, stage, dir)?;
    let http_port = free_port()?;
    let config_path = write_bridge_config(
        settings,
        stage,
        broker,
        base,
        tag,
        simulator_addr,
        http_port,
        dir,
    )?;

    let events = EventSubscriber::connect(&broker.url, base).await?;
    progress(format!(
        "starting the bridge (poll every {}, concurrency {})",
        humantime::format_duration(stage.interval),
        settings.concurrency
    ));
    let started = Instant::now();
    let mut bridge = start_bridge(&config_path, dir)?;
    let memory = MemorySampler::start(bridge.pid());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .context("cannot build the HTTP client")?;
    let sim = SimulatorControl {
        http: http.clone(),
        base: format!("http://{simulator_addr}/control"),
    };
    let metrics_url = format!("http://127.0.0.1:{http_port}/metrics");

    if let Err(error) = events.wait_online(STARTUP_LIMIT).await {
        bail!(
            "{error:#}\n--- bridge log (tail) ---\n{}",
            bridge.log_tail(30)
        );
    }
    let ready_after = started.elapsed();
    progress(format!(
        "bridge online after {:.1} s; warming up for {}",
        ready_after.as_secs_f64(),
        humantime::format_duration(settings.warmup)
    ));
    let online = Instant::now();
    tokio::time::sleep(settings.warmup).await;
    // The start is a burst (every agent's first status, every retained
    // state): wait, within bounds, until events flow at a settled latency.
    let settle_deadline = online + settings.warmup * SETTLE_LIMIT_FACTOR;
    let mut settled = false;
    while Instant::now() < settle_deadline {
        bridge.check_running()?;
        if events
            .recent_median_latency_ms(Duration::from_secs(1))
            .is_some_and(|median| median < SETTLED_MEDIAN_MS)
        {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    report.notes.push(format!(
        "{}: bridge online {:.1} s after start; window started {:.1} s later{}",
        stage.key,
        ready_after.as_secs_f64(),
        online.elapsed().as_secs_f64(),
        if settled {
            String::new()
        } else {
            format!(" (event latency had not settled below {SETTLED_MEDIAN_MS} ms median)")
        },
    ));
    bridge.check_running()?;
    simulator.check_running()?;

    // Steady window.
    progress(format!(
        "measuring for {}",
        humantime::format_duration(stage.window)
    ));
    let processes = Processes::find(&bridge, &simulator, broker.pid);
    sim.reset_poll_gaps().await?;
    let stats_before = sim.stats().await?;
    let metrics_before = bridge_metrics(&http, &metrics_url).await;
    let cpu_before = processes.cpu_sample();
    let rss_window_start = memory.current();
    let window_start = Utc::now();
    let window_clock = Instant::now();
    tokio::time::sleep(stage.window).await;
    let stats_after = sim.stats().await?;
    let window_seconds = window_clock.elapsed().as_secs_f64();
    let window_end = Utc::now();
    let metrics_after = bridge_metrics(&http, &metrics_url).await;
    let cpu_after = processes.cpu_sample();
    let rss_window_end = memory.current();
    bridge.check_running()?;
    simulator.check_running()?;

    polling_rows(
        stage,
        settings.agents,
        report,
        &stats_before,
        &stats_after,
        window_seconds,
        metrics_before.as_ref().zip(metrics_after.as_ref()),
    );
    let samples = events.samples_between(window_start, window_end);
    latency_rows(report, &samples, window_seconds, events.malformed());
    report.cpu[stage.key] = processes.cpu_json(&cpu_before, &cpu_after, window_seconds);
    report.notes.push(format!(
        "{}: {}",
        stage.key,
        processes.cpu_summary(&cpu_before, &cpu_after, window_seconds)
    ));
    if stage.throughput {
        let polls = stats_after
            .method("ivr.getAgentAvail")
            .saturating_sub(stats_before.method("ivr.getAgentAvail"));
        cost_rows(
            report,
            &processes
                .cpu_percentages(&cpu_before, &cpu_after, window_seconds)
                .0,
            window_seconds,
            polls,
        );
    }

    // Commands, with polling still running (the production condition).
    if stage.commands {
        progress(format!(
            "commands for {} ({} in flight)",
            humantime::format_duration(settings.command_time),
            settings.commands_in_flight
        ));
        let commands = run_commands(&broker.url, base, settings).await?;
        commands.rows(report, settings);
        bridge.check_running()?;
    }

    let rss_before_stop = memory.current();
    let peak = memory.peak();
    progress("stopping the bridge (SIGTERM) and the simulator");
    let stop_time = bridge.terminate(STOP_LIMIT)?;
    memory.stop();
    simulator.terminate(STOP_LIMIT)?;
    if stage.throughput {
        memory_rows(
            report,
            rss_window_start,
            rss_window_end,
            rss_before_stop,
            peak,
            stage.window,
        );
    }
    report.rss_samples[stage.key] = memory.samples_json();
    report.push(Row::info(
        "bridge graceful stop",
        format!("{:.2} s", stop_time.as_secs_f64()),
        Some(stop_time.as_secs_f64()),
        "s",
    ));
    drop(events);
    Ok(())
}

fn progress(message: impl AsRef<str>) {
    eprintln!("[pipeline] {}", message.as_ref());
}

/// A free TCP port on 127.0.0.1 (bound and released: a tiny race, fine for
/// a bench).
fn free_port() -> anyhow::Result<u16> {
    let listener =
        TcpListener::bind("127.0.0.1:0").context("cannot find a free port on 127.0.0.1")?;
    Ok(listener.local_addr()?.port())
}

// ---------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------

/// A child process that is killed when this value is dropped (normal end,
/// error, panic or interrupt).
struct ChildProcess {
    /// For messages.
    name: &'static str,
    /// The process.
    child: Child,
    /// Its stderr (logs).
    log: PathBuf,
}

impl ChildProcess {
    fn spawn(name: &'static str, mut command: Command, log: PathBuf) -> anyhow::Result<Self> {
        let log_file =
            File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        // Our environment must not reconfigure the children: their settings
        // come from the arguments and the generated file only.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PBX2MQTT_") || key == "RUST_LOG" {
                command.env_remove(key);
            }
        }
        let child = command
            .stdin(Stdio::null())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("cannot start {BINARY} for the {name}"))?;
        Ok(Self { name, child, log })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails when the process has exited.
    fn check_running(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!(
                "the {} exited early ({status})\n--- {} log (tail) ---\n{}",
                self.name,
                self.name,
                self.log_tail(30)
            ),
            Err(error) => bail!("cannot check the {}: {error}", self.name),
        }
    }

    /// Sends SIGTERM and waits up to `within` for a clean exit (then kills
    /// it); how long the exit took.
    fn terminate(&mut self, within: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        if self.child.try_wait()?.is_some() {
            return Ok(Duration::ZERO);
        }
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        if !matches!(sent, Ok(status) if status.success()) {
            self.child.kill()?;
        }
        while started.elapsed() < within {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!(
                        "the {} exited with {status} on SIGTERM\n--- {} log (tail) ---\n{}",
                        self.name,
                        self.name,
                        self.log_tail(30)
                    );
                }
                return Ok(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.child.kill()?;
        let _ = self.child.wait();
        bail!(
            "the {} did not stop within {within:?} of SIGTERM",
            self.name
        )
    }

    /// The last `lines` lines of its log.
    fn log_tail(&self, lines: usize) -> String {
        let mut text = String::new();
        if let Ok(mut file) = File::open(&self.log) {
            let length = file.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = file.seek(SeekFrom::Start(length.saturating_sub(64 * 1024)));
            let _ = file.read_to_string(&mut text);
        }
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `pbx2mqtt simulate` on a port of its choosing; returns it with the
/// address it printed.
fn start_simulator(
    settings: &Settings,
    stage: &Stage,
    dir: &Path,
) -> anyhow::Result<(ChildProcess, SocketAddr)> {
    let mut command = Command::new(BINARY);
    command
        .args(["simulate", "--listen", "127.0.0.1:0"])
        .args(["--agents", &settings.agents.to_string()])
        .args(["--first-extension", &FIRST_EXTENSION.to_string()])
        .args([
            "--first-tring-extension",
            &FIRST_TRING_EXTENSION.to_string(),
        ])
        .args([
            "--mean-dwell",
            &humantime::format_duration(stage.mean_dwell).to_string(),
        ])
        .args(["--account-pin", PIN, "--tring-key", KEY, "--tenant", TENANT])
        .args(["--seed", "20261122"])
        .stdout(Stdio::piped());
    let mut simulator = ChildProcess::spawn("simulator", command, dir.join("simulator.log"))?;
    let stdout = simulator
        .child
        .stdout
        .take()
        .context("the simulator's stdout is not piped")?;
    let (address_sender, address_receiver) = std::sync::mpsc::channel();
    // Reads the printed URLs, then keeps draining stdout until it closes.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(url) = line.strip_prefix("Belfabriek API:") {
                let authority = url
                    .trim()
                    .trim_start_matches("http://")
                    .split('/')
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let _ = address_sender.send(authority);
            }
        }
    });
    let authority = match address_receiver.recv_timeout(STARTUP_LIMIT) {
        Ok(authority) => authority,
        Err(_) => bail!(
            "the simulator did not print its address within {STARTUP_LIMIT:?}\n--- simulator log (tail) ---\n{}",
            simulator.log_tail(30)
        ),
    };
    let addr = authority
        .parse()
        .with_context(|| format!("the simulator printed an unexpected address {authority:?}"))?;
    Ok((simulator, addr))
}

/// Writes the bridge's configuration for this run; returns its path.
#[allow(clippy::too_many_arguments)]
fn write_bridge_config(
    settings: &Settings,
    stage: &Stage,
    broker: &Broker,
    base: &str,
    tag: &str,
    simulator: SocketAddr,
    http_port: u16,
    dir: &Path,
) -> anyhow::Result<PathBuf> {
    use std::fmt::Write as _;
    let database = dir.join("history.db");
    let mut toml = format!(
        "[mqtt]\nurl = {broker:?}\nclient_id = \"pbx2mqtt-bench-{tag}\"\nbase_topic = {base:?}\n\n\
         [belfabriek]\nurl = \"http://{simulator}/xml/agent/xml.asp\"\naccount_pin = {PIN:?}\ntimeout = \"2s\"\n\n\
         [tring]\nurl = \"http://{simulator}/pbx/proxyapi.php\"\nkey = {KEY:?}\ntenant = {TENANT:?}\ntimeout = \"2s\"\n\n\
         [poll]\ninterval = \"{interval}\"\nconcurrency = {concurrency}\nstale_after = 3\nmax_backoff = \"5s\"\n\n\
         [database]\nurl = \"sqlite://{database}\"\n\n\
         [http]\nlisten = \"127.0.0.1:{http_port}\"\n\n\
         [commands]\nallowed_queues = [\"{COMMAND_QUEUE}\"]\n\n",
        broker = broker.url,
        interval = humantime::format_duration(stage.interval),
        concurrency = settings.concurrency,
        database = database.display(),
    );
    for offset in 0..settings.agents {
        let extension = FIRST_EXTENSION + offset;
        let tring = FIRST_TRING_EXTENSION + offset;
        // Writing to a String cannot fail.
        let _ = write!(
            toml,
            "[[agents]]\nid = \"agent{extension}\"\nextension_id = \"{extension}\"\nqueue_extension = \"{tring}\"\n"
        );
    }
    let path = dir.join("pbx2mqtt.toml");
    std::fs::write(&path, toml).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// Starts `pbx2mqtt run` with the generated configuration.
fn start_bridge(config: &Path, dir: &Path) -> anyhow::Result<ChildProcess> {
    let mut command = Command::new(BINARY);
    command
        .arg("--config")
        .arg(config)
        .arg("run")
        .current_dir(dir)
        .stdout(Stdio::null());
    ChildProcess::spawn("bridge", command, dir.join("bridge.log"))
}

// ---------------------------------------------------------------------------
// Simulator control and bridge metrics
// ---------------------------------------------------------------------------

/// The simulator's control API.
struct SimulatorControl {
    /// Shared HTTP client.
    http: reqwest::Client,
    /// `http://ADDR/control`.
    base: String,
}

impl SimulatorControl {
    async fn stats(&self) -> anyhow::Result<RequestCounts> {
        let body = self
            .http
            .get(format!("{}/stats", self.base))
            .send()
            .await
            .context("cannot reach the simulator's /control/stats")?
            .bytes()
            .await?;
        serde_json::from_slice(&body)
            .context("the simulator's /control/stats is not the expected JSON")
    }

    async fn reset_poll_gaps(&self) -> anyhow::Result<()> {
        let response = self
            .http
            .delete(format!("{}/poll-gaps", self.base))
            .send()
            .await
            .context("cannot reset the simulator's poll gaps")?;
        if !response.status().is_success() {
            bail!("DELETE /control/poll-gaps answered {}", response.status());
        }
        Ok(())
    }
}

/// One scrape of `/metrics`: series name (with labels) → value.
type Scrape = HashMap<String, f64>;

/// The bridge's `/metrics` as name → value, or `None` while its HTTP server
/// is not serving them.
async fn bridge_metrics(http: &reqwest::Client, url: &str) -> Option<Scrape> {
    let response = http.get(url).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let text = response.text().await.ok()?;
    let values: HashMap<String, f64> = text
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect();
    (!values.is_empty()).then_some(values)
}

/// The difference of one counter between two scrapes.
fn metric_delta(pair: Option<(&Scrape, &Scrape)>, name: &str) -> Option<f64> {
    let (before, after) = pair?;
    Some(after.get(name)? - before.get(name)?)
}

// ---------------------------------------------------------------------------
// Transition events
// ---------------------------------------------------------------------------

/// One event as the subscriber received it.
#[derive(Debug, Clone)]
struct EventSample {
    /// When it arrived (wall clock, microseconds since the epoch).
    received_micros: i64,
    /// Its `at` field (microseconds since the epoch; the payload has
    /// milliseconds).
    at_micros: i64,
    /// Its `seq`.
    seq: u64,
    /// True for a transition to `unknown` (a poll failed `stale_after` times).
    to_unknown: bool,
}

/// The fields of an event the bench reads.
#[derive(Deserialize)]
struct EventPayload {
    /// RFC 3339 with milliseconds.
    at: String,
    /// The bridge-wide sequence number.
    seq: u64,
    /// The new status.
    to: String,
}

/// An MQTT client subscribed to `<base>/agent/+/event` and `bridge/state`,
/// recording the receipt time of every event at once in its event loop.
struct EventSubscriber {
    /// Every event received.
    samples: Arc<Mutex<Vec<EventSample>>>,
    /// The latest `bridge/state` payload.
    bridge_state: watch::Receiver<String>,
    /// Event payloads that did not parse.
    malformed: Arc<AtomicU64>,
    /// The event loop task.
    task: tokio::task::JoinHandle<()>,
}

impl EventSubscriber {
    async fn connect(broker: &str, base: &str) -> anyhow::Result<Self> {
        let (client, mut eventloop) = mqtt_client(broker, "events")?;
        let filters = [
            format!("{base}/agent/+/event"),
            format!("{base}/bridge/state"),
        ];
        let state_topic = format!("{base}/bridge/state");
        let samples = Arc::new(Mutex::new(Vec::with_capacity(64 * 1024)));
        let malformed = Arc::new(AtomicU64::new(0));
        let (state_sender, bridge_state) = watch::channel(String::new());
        let (subscribed_sender, subscribed) = oneshot::channel();
        let task = {
            let samples = samples.clone();
            let malformed = malformed.clone();
            tokio::spawn(async move {
                let mut subscribed_sender = Some(subscribed_sender);
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::Publish(publish))) => {
                            let received_micros = Utc::now().timestamp_micros();
                            if publish.topic == state_topic {
                                let _ = state_sender
                                    .send(String::from_utf8_lossy(&publish.payload).into_owned());
                                continue;
                            }
                            match parse_event(&publish.payload, received_micros) {
                                Some(sample) => lock(&samples).push(sample),
                                None => {
                                    malformed.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            for filter in &filters {
                                let _ = client.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                            }
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            if let Some(sender) = subscribed_sender.take() {
                                let _ = sender.send(());
                            }
                        }
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            })
        };
        tokio::time::timeout(STARTUP_LIMIT, subscribed)
            .await
            .context("the event subscriber got no SUBACK: is the broker up?")?
            .context("the event subscriber stopped")?;
        Ok(Self {
            samples,
            bridge_state,
            malformed,
            task,
        })
    }

    async fn wait_online(&self, within: Duration) -> anyhow::Result<()> {
        let mut state = self.bridge_state.clone();
        tokio::time::timeout(within, state.wait_for(|state| state == "online"))
            .await
            .context("the bridge did not publish `online`")?
            .context("the event subscriber stopped")?;
        Ok(())
    }

    /// Events received in `[from, to)`.
    fn samples_between(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<EventSample> {
        let (from, to) = (from.timestamp_micros(), to.timestamp_micros());
        lock(&self.samples)
            .iter()
            .filter(|sample| sample.received_micros >= from && sample.received_micros < to)
            .cloned()
            .collect()
    }

    /// Median receipt − `at` of the events received in the last `span`.
    fn recent_median_latency_ms(&self, span: Duration) -> Option<f64> {
        let since = Utc::now().timestamp_micros() - span.as_micros() as i64;
        let mut latencies: Vec<i64> = lock(&self.samples)
            .iter()
            .rev()
            .take_while(|sample| sample.received_micros >= since)
            .map(|sample| sample.received_micros - sample.at_micros)
            .collect();
        latencies.sort_unstable();
        percentile(&latencies, 0.5).map(|micros| micros as f64 / 1000.0)
    }

    fn malformed(&self) -> u64 {
        self.malformed.load(Ordering::Relaxed)
    }
}

impl Drop for EventSubscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn parse_event(payload: &[u8], received_micros: i64) -> Option<EventSample> {
    let event: EventPayload = serde_json::from_slice(payload).ok()?;
    let at = DateTime::parse_from_rfc3339(&event.at).ok()?;
    Some(EventSample {
        received_micros,
        at_micros: at.timestamp_micros(),
        seq: event.seq,
        to_unknown: event.to == "unknown",
    })
}

/// A rumqttc client with a unique id; the caller drives the event loop.
fn mqtt_client(broker: &str, role: &str) -> anyhow::Result<(AsyncClient, rumqttc::EventLoop)> {
    let url = BrokerUrl::parse(broker)?;
    let (host, port) = (url.host(), url.port());
    let id = format!("pbx2mqtt-bench-{role}-{:08x}", rand::random::<u32>());
    let mut options = MqttOptions::new(id, host, port);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_max_packet_size(1 << 20, 1 << 20)
        .set_inflight(500);
    let (client, mut eventloop) = AsyncClient::new(options, 4096);
    // A well-configured consumer: no Nagle delay on its acknowledgements.
    let mut network = eventloop.network_options();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);
    Ok((client, eventloop))
}

/// Locks a mutex, ignoring poisoning (the data are plain samples).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------
// Memory and CPU
// ---------------------------------------------------------------------------

/// One reading of a process's memory, kB.
#[derive(Debug, Clone, Copy, Default)]
struct Memory {
    /// Seconds since sampling started.
    at_s: f64,
    /// VmRSS.
    rss_kb: u64,
    /// VmHWM (peak RSS so far).
    hwm_kb: u64,
}

/// Reads a process's VmRSS and VmHWM every second.
struct MemorySampler {
    /// The process.
    pid: u32,
    /// Every reading.
    samples: Arc<Mutex<Vec<Memory>>>,
    /// When sampling started.
    started: Instant,
    /// The sampling task.
    task: tokio::task::JoinHandle<()>,
}

impl MemorySampler {
    fn start(pid: u32) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let task = {
            let samples = samples.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    if let Some(memory) = read_memory(pid, started) {
                        lock(&samples).push(memory);
                    }
                }
            })
        };
        Self {
            pid,
            samples,
            started,
            task,
        }
    }

    /// A reading now (also kept with the samples).
    fn current(&self) -> Option<Memory> {
        let memory = read_memory(self.pid, self.started)?;
        lock(&self.samples).push(memory);
        Some(memory)
    }

    /// The highest VmHWM seen.
    fn peak(&self) -> Option<u64> {
        lock(&self.samples).iter().map(|m| m.hwm_kb).max()
    }

    fn stop(&self) {
        self.task.abort();
    }

    fn samples_json(&self) -> Json {
        let mut samples = lock(&self.samples).clone();
        samples.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
        Json::Array(
            samples
                .iter()
                .map(|m| json!({"at_s": (m.at_s * 10.0).round() / 10.0, "rss_kb": m.rss_kb, "hwm_kb": m.hwm_kb}))
                .collect(),
        )
    }
}

impl Drop for MemorySampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn read_memory(pid: u32, started: Instant) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find(|line| line.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some(Memory {
        at_s: started.elapsed().as_secs_f64(),
        rss_kb: field("VmRSS:")?,
        hwm_kb: field("VmHWM:")?,
    })
}

/// The processes whose CPU time is reported.
struct Processes {
    /// Name and pid.
    list: Vec<(String, u32)>,
    /// Clock ticks per second (`getconf CLK_TCK`).
    ticks_per_second: f64,
}

/// CPU times at one instant: per process (ticks) and the whole machine.
struct CpuSample {
    /// Ticks per process, same order as [`Processes::list`].
    processes: Vec<Option<u64>>,
    /// Machine-wide (busy, total) ticks from `/proc/stat`.
    machine: Option<(u64, u64)>,
}

impl Processes {
    fn find(bridge: &ChildProcess, simulator: &ChildProcess, broker: Option<u32>) -> Self {
        let mut list = vec![
            ("bridge".to_owned(), bridge.pid()),
            ("simulator".to_owned(), simulator.pid()),
            ("bench (subscriber)".to_owned(), std::process::id()),
        ];
        if let Some(pid) = broker {
            list.push(("broker".to_owned(), pid));
        }
        let ticks_per_second = Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
            .unwrap_or(100.0);
        Self {
            list,
            ticks_per_second,
        }
    }

    fn cpu_sample(&self) -> CpuSample {
        CpuSample {
            processes: self
                .list
                .iter()
                .map(|(_, pid)| process_ticks(*pid))
                .collect(),
            machine: machine_ticks(),
        }
    }

    /// Percent of one core per process, and of all cores for the machine.
    fn cpu_percentages(
        &self,
        before: &CpuSample,
        after: &CpuSample,
        seconds: f64,
    ) -> (Vec<(String, f64)>, Option<f64>) {
        let per_process = self
            .list
            .iter()
            .zip(before.processes.iter().zip(&after.processes))
            .filter_map(|((name, _), (before, after))| {
                let ticks = after.as_ref()?.checked_sub(*before.as_ref()?)?;
                Some((
                    name.clone(),
                    ticks as f64 / self.ticks_per_second / seconds * 100.0,
                ))
            })
            .collect();
        let machine = match (before.machine, after.machine) {
            (Some((busy0, total0)), Some((busy1, total1))) if total1 > total0 => {
                Some((busy1 - busy0) as f64 / (total1 - total0) as f64 * 100.0)
            }
            _ => None,
        };
        (per_process, machine)
    }

    fn cpu_json(&self, before: &CpuSample, after: &CpuSample, seconds: f64) -> Json {
        let (per_process, machine) = self.cpu_percentages(before, after, seconds);
        json!({
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "machine_busy_percent_of_all_cores": machine.map(round1),
            "percent_of_one_core": per_process
                .into_iter()
                .map(|(name, percent)| (name, json!(round1(percent))))
                .collect::<serde_json::Map<_, _>>(),
        })
    }

    fn cpu_summary(&self, before: &CpuSample, after: &CpuSample, seconds: f64) -> String {
        let (per_process, machine) = self.cpu_percentages(before, after, seconds);
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let parts: Vec<String> = per_process
            .iter()
            .map(|(name, percent)| format!("{name} {percent:.0}%"))
            .collect();
        let ours: f64 = per_process.iter().map(|(_, percent)| percent).sum::<f64>() / cores as f64;
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        format!(
            "CPU in the window ({cores} cores shared by all processes; % of one core): {}; machine busy {}, \
             of which other processes {}; load average {}",
            parts.join(", "),
            machine.map_or("?".to_owned(), |m| format!("{m:.0}% of all cores")),
            machine.map_or("?".to_owned(), |m| format!("{:.0}%", (m - ours).max(0.0))),
            load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        )
    }
}

fn round1(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

/// utime + stime of a process, in clock ticks.
fn process_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at
    // field 3 (state); utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Machine-wide (busy, total) ticks.
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|value| value.parse().ok())
        .collect();
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3)? + values.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// The pid of the only process named `name`, if exactly one runs.
fn find_process(name: &str) -> Option<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) {
            if comm.trim() == name {
                found.push(pid);
            }
        }
    }
    (found.len() == 1).then(|| found[0])
}

// ---------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------

/// What the command phase measured.
struct CommandResults {
    /// Commands answered within the phase (after its warm-up).
    answered: u64,
    /// Of those, answered `{"status":"error"}`.
    errors: u64,
    /// Commands that got no response within [`COMMAND_TIMEOUT`].
    timeouts: u64,
    /// Request → response latencies, microseconds, sorted.
    latencies: Vec<i64>,
    /// Seconds measured (after the warm-up).
    seconds: f64,
    /// One error response, for the report.
    sample_error: Option<String>,
}

impl CommandResults {
    fn rows(&self, report: &mut Report, settings: &Settings) {
        let per_second = self.answered as f64 / self.seconds.max(1e-9);
        report.push(Row::info(
            &format!(
                "commands/s ({} in flight, add/remove queue {COMMAND_QUEUE})",
                settings.commands_in_flight
            ),
            format!(
                "{per_second:.0}/s ({} in {:.1} s)",
                self.answered, self.seconds
            ),
            Some(per_second),
            "1/s",
        ));
        for (label, fraction) in [("p50", 0.50), ("p99", 0.99)] {
            let value = percentile(&self.latencies, fraction).map(|micros| micros as f64 / 1000.0);
            report.push(Row::info(
                &format!("command request → response {label}"),
                value.map_or("-".to_owned(), |ms| format!("{ms:.2} ms")),
                value,
                "ms",
            ));
        }
        let failed = self.errors + self.timeouts;
        let mut measured = format!(
            "{} error responses, {} timeouts",
            self.errors, self.timeouts
        );
        if let Some(error) = &self.sample_error {
            measured.push_str(&format!(" (e.g. {error})"));
        }
        report.push(Row::check(
            "command failures",
            measured,
            Some(failed as f64),
            "count",
            "0",
            failed == 0,
        ));
    }
}

/// A command's outcome as the response listener saw it.
struct CommandResponse {
    /// When the response arrived.
    received: Instant,
    /// True for `"status":"ok"`.
    ok: bool,
    /// The payload, for errors.
    payload: String,
}

/// Publishes add/remove commands with unique transactions, `in_flight` at a
/// time, and times each response.
async fn run_commands(
    broker: &str,
    base: &str,
    settings: &Settings,
) -> anyhow::Result<CommandResults> {
    let (client, mut eventloop) = mqtt_client(broker, "commands")?;
    let pending: Arc<Mutex<HashMap<u64, oneshot::Sender<CommandResponse>>>> =
        Arc::new(Mutex::new(HashMap::new()));
    let filter = format!("{base}/response/queue/{COMMAND_QUEUE}/+");
    let (subscribed_sender, subscribed) = oneshot::channel();
    let listener = {
        let pending = pending.clone();
        let client = client.clone();
        tokio::spawn(async move {
            let mut subscribed_sender = Some(subscribed_sender);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        let received = Instant::now();
                        let Ok(response) = serde_json::from_slice::<Json>(&publish.payload) else {
                            continue;
                        };
                        let Some(transaction) = response.get("transaction").and_then(Json::as_u64)
                        else {
                            continue;
                        };
                        if let Some(waiter) = lock(&pending).remove(&transaction) {
                            let _ = waiter.send(CommandResponse {
                                received,
                                ok: response.get("status").and_then(Json::as_str) == Some("ok"),
                                payload: response.to_string(),
                            });
                        }
                    }
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = client.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(sender) = subscribed_sender.take() {
                            let _ = sender.send(());
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        })
    };
    tokio::time::timeout(STARTUP_LIMIT, subscribed)
        .await
        .context("the command client got no SUBACK")?
        .context("the command client stopped")?;

    let started = Instant::now();
    let measure_from = started + COMMAND_WARMUP;
    let deadline = started + settings.command_time;
    let transactions = Arc::new(AtomicU64::new(1));
    let mut workers = Vec::new();
    for worker in 0..settings.commands_in_flight {
        let client = client.clone();
        let pending = pending.clone();
        let transactions = transactions.clone();
        let base = base.to_owned();
        let extension = FIRST_TRING_EXTENSION as usize + worker % settings.agents.max(1) as usize;
        workers.push(tokio::spawn(async move {
            // (started, latency micros or None for a timeout, ok, payload)
            let mut outcomes = Vec::new();
            let mut add = true;
            while Instant::now() < deadline {
                let transaction = transactions.fetch_add(1, Ordering::Relaxed);
                let action = if add { "add" } else { "remove" };
                add = !add;
                let (sender, receiver) = oneshot::channel();
                lock(&pending).insert(transaction, sender);
                let payload =
                    format!(r#"{{"extension":"{extension}","transaction":{transaction}}}"#);
                let sent = Instant::now();
                let topic = format!("{base}/request/queue/{COMMAND_QUEUE}/{action}");
                if client
                    .publish(topic, QoS::AtLeastOnce, false, payload)
                    .await
                    .is_err()
                {
                    break;
                }
                match tokio::time::timeout(COMMAND_TIMEOUT, receiver).await {
                    Ok(Ok(response)) => {
                        let latency = response.received.duration_since(sent).as_micros() as i64;
                        outcomes.push((sent, Some(latency), response.ok, response.payload));
                    }
                    _ => {
                        lock(&pending).remove(&transaction);
                        outcomes.push((sent, None, false, String::new()));
                    }
                }
            }
            outcomes
        }));
    }
    let mut results = CommandResults {
        answered: 0,
        errors: 0,
        timeouts: 0,
        latencies: Vec::new(),
        seconds: 0.0,
        sample_error: None,
    };
    let mut last_answer = measure_from;
    for worker in workers {
        for (sent, latency, ok, payload) in worker.await.context("a command worker panicked")? {
            if sent < measure_from {
                continue;
            }
            match latency {
                Some(latency) => {
                    results.answered += 1;
                    results.latencies.push(latency);
                    last_answer = last_answer.max(sent + Duration::from_micros(latency as u64));
                    if !ok {
                        results.errors += 1;
                        results.sample_error.get_or_insert(payload);
                    }
                }
                None => results.timeouts += 1,
            }
        }
    }
    results.latencies.sort_unstable();
    results.seconds = last_answer.duration_since(measure_from).as_secs_f64();
    listener.abort();
    let _ = client.try_disconnect();
    Ok(results)
}

// ---------------------------------------------------------------------------
// History
// ---------------------------------------------------------------------------

/// Times single-row commits with the store's own settings (WAL,
/// synchronous=FULL) on the disk the bridge's history uses: the floor under
/// every transition's latency, since an event is published only after its
/// commit.
async fn commit_probe(dir: &Path, report: &mut Report) -> anyhow::Result<()> {
    const COMMITS: usize = 40;
    let url = format!("sqlite://{}", dir.join("commit-probe.db").display());
    let store = Store::open(&url)
        .await
        .context("cannot open the commit probe store")?;
    let mut commits = Vec::with_capacity(COMMITS);
    for _ in 0..COMMITS {
        let elapsed = bench_record(&store, 1, 1)
            .await
            .context("bench_record failed in the commit probe")?;
        commits.push(elapsed.as_micros() as i64);
    }
    store.close().await;
    commits.sort_unstable();
    let ms = |fraction| percentile(&commits, fraction).map_or(0.0, |micros| micros as f64 / 1000.0);
    report.push(Row::info(
        "SQLite one-row commit on the data disk (fsync), p50 / p99",
        format!("{:.2} / {:.2} ms ({})", ms(0.5), ms(0.99), dir.display()),
        Some(ms(0.5)),
        "ms",
    ));
    Ok(())
}

async fn history(settings: &Settings, dir: &Path, report: &mut Report) -> anyhow::Result<()> {
    let agents = settings.agents.max(1) as usize;
    let count = settings.history_intervals;
    progress(format!(
        "history: {count} intervals for {agents} agents on SQLite"
    ));
    let url = format!("sqlite://{}", dir.join("history-bench.db").display());
    let store = Store::open(&url)
        .await
        .context("cannot open the SQLite bench store")?;
    let elapsed = bench_record(&store, agents, count)
        .await
        .context("bench_record failed on SQLite")?;
    store.close().await;
    history_row(report, "SQLite (WAL, synchronous=FULL)", count, elapsed);

    match std::env::var("PBX2MQTT_TEST_POSTGRES_URL") {
        Ok(server) if !server.is_empty() => {
            progress(format!(
                "history: {count} intervals for {agents} agents on PostgreSQL"
            ));
            let elapsed = history_postgres(&server, agents, count).await?;
            history_row(report, "PostgreSQL", count, elapsed);
        }
        _ => report
            .notes
            .push("PostgreSQL history skipped: PBX2MQTT_TEST_POSTGRES_URL is not set".into()),
    }
    Ok(())
}

fn history_row(report: &mut Report, backend: &str, count: usize, elapsed: Duration) {
    let per_second = count as f64 / elapsed.as_secs_f64().max(1e-9);
    report.push(Row::check(
        &format!("history writes, {backend}"),
        format!(
            "{} intervals/s ({count} in {:.2} s)",
            thousands(per_second),
            elapsed.as_secs_f64()
        ),
        Some(per_second),
        "1/s",
        &format!("≥ {}", thousands(TARGET_HISTORY_PER_SECOND)),
        per_second >= TARGET_HISTORY_PER_SECOND,
    ));
}

/// Runs the history bench in a fresh PostgreSQL database, dropped after.
async fn history_postgres(server: &str, agents: usize, count: usize) -> anyhow::Result<Duration> {
    let name = format!("pbx2mqtt_bench_{:016x}", rand::random::<u64>());
    let admin = sqlx::PgPool::connect(server)
        .await
        .context("cannot connect to PBX2MQTT_TEST_POSTGRES_URL")?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .context("cannot create the bench database")?;
    let mut url = url::Url::parse(server).context("PBX2MQTT_TEST_POSTGRES_URL is not a URL")?;
    url.set_path(&format!("/{name}"));
    let outcome = async {
        let store = Store::open(url.as_str())
            .await
            .context("cannot open the PostgreSQL bench store")?;
        let elapsed = bench_record(&store, agents, count).await;
        store.close().await;
        elapsed.context("bench_record failed on PostgreSQL")
    }
    .await;
    if let Err(error) = sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
        .execute(&admin)
        .await
    {
        eprintln!("warning: could not drop the bench database {name}: {error}");
    }
    admin.close().await;
    outcome
}

// ---------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------

/// One line of the results table.
#[derive(Debug, Clone)]
struct Row {
    /// The stage or part it belongs to (a heading in the table).
    group: String,
    /// What was measured.
    metric: String,
    /// The measured value, formatted.
    measured: String,
    /// The measured value as a number, for the JSON.
    value: Option<f64>,
    /// Its unit.
    unit: String,
    /// The target, formatted (empty for information only).
    target: String,
    /// Met or not; `None` for information only.
    pass: Option<bool>,
}

impl Row {
    fn check(
        metric: &str,
        measured: String,
        value: Option<f64>,
        unit: &str,
        target: &str,
        pass: bool,
    ) -> Self {
        Self {
            group: String::new(),
            metric: metric.to_owned(),
            measured,
            value,
            unit: unit.to_owned(),
            target: target.to_owned(),
            pass: Some(pass),
        }
    }

    fn info(metric: &str, measured: String, value: Option<f64>, unit: &str) -> Self {
        Self {
            group: String::new(),
            metric: metric.to_owned(),
            measured,
            value,
            unit: unit.to_owned(),
            target: String::new(),
            pass: None,
        }
    }
}

/// Everything measured.
#[derive(Debug, Default)]
struct Report {
    /// The table.
    rows: Vec<Row>,
    /// Lines printed under the table.
    notes: Vec<String>,
    /// The heading new rows go under.
    current_group: String,
    /// Bridge memory readings, per stage.
    rss_samples: Json,
    /// CPU use in the window, per stage.
    cpu: Json,
    /// The simulator's poll-gap statistics for the window, per stage.
    poll_gaps: Json,
}

impl Report {
    fn push(&mut self, mut row: Row) {
        row.group = self.current_group.clone();
        self.rows.push(row);
    }

    /// Rows pushed from now on go under `title`.
    fn group(&mut self, title: &str) {
        self.current_group = title.to_owned();
    }

    fn print(&self, settings: &Settings) {
        let headers = ["metric", "measured", "target", "result"];
        let cells: Vec<[String; 4]> = self
            .rows
            .iter()
            .map(|row| {
                [
                    row.metric.clone(),
                    row.measured.clone(),
                    row.target.clone(),
                    match row.pass {
                        Some(true) => "pass".to_owned(),
                        Some(false) => "FAIL".to_owned(),
                        None => "info".to_owned(),
                    },
                ]
            })
            .collect();
        let mut widths = headers.map(|h| h.chars().count());
        for row in &self.rows {
            widths[0] = widths[0].max(row.group.chars().count() + 4);
        }
        for row in &cells {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let line = |cells: [&str; 4]| {
            let padded: Vec<String> = cells
                .iter()
                .zip(widths)
                .map(|(cell, width)| {
                    format!(
                        "{cell}{}",
                        " ".repeat(width.saturating_sub(cell.chars().count()))
                    )
                })
                .collect();
            println!("| {} |", padded.join(" | "));
        };
        println!();
        println!(
            "pbx2mqtt pipeline benchmark ({} agents, poll concurrency {}, windows {} / {}; {} cores shared by every process)",
            settings.agents,
            settings.concurrency,
            humantime::format_duration(settings.window),
            humantime::format_duration(settings.latency_window),
            std::thread::available_parallelism().map_or(1, |n| n.get()),
        );
        line(headers);
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        println!("|-{}-|", rule.join("-|-"));
        let mut group = "";
        for (row, cells) in self.rows.iter().zip(&cells) {
            if row.group != group {
                group = &row.group;
                line([&format!("**{group}**"), "", "", ""]);
            }
            line([&cells[0], &cells[1], &cells[2], &cells[3]]);
        }
        println!();
        for note in &self.notes {
            println!("- {note}");
        }
        if settings.run_pipeline && !settings.at_target_scale() {
            println!(
                "- scaled-down run: the targets are stated for {TARGET_AGENTS} agents polled every {}",
                humantime::format_duration(TARGET_INTERVAL)
            );
        }
    }

    fn write_json(&self, settings: &Settings) -> anyhow::Result<PathBuf> {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
        std::fs::create_dir_all(&target)?;
        let path = target.join("pipeline-bench.json");
        let rows: Vec<Json> = self
            .rows
            .iter()
            .map(|row| {
                json!({
                    "group": row.group,
                    "metric": row.metric,
                    "measured": row.measured,
                    "value": row.value,
                    "unit": row.unit,
                    "target": if row.target.is_empty() { Json::Null } else { json!(row.target) },
                    "pass": row.pass,
                })
            })
            .collect();
        let document = json!({
            "benchmark": "pbx2mqtt pipeline",
            "finished_at": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "command": "cargo bench --bench pipeline",
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "settings": settings.to_json(),
            "results": rows,
            "notes": self.notes,
            "cpu_in_window": self.cpu,
            "poll_gaps_in_window": self.poll_gaps,
            "bridge_memory_samples": self.rss_samples,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&document)?)?;
        Ok(path)
    }
}

/// `12,345`.
fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[i64], fraction: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

fn polling_rows(
    stage: &Stage,
    agents: u32,
    report: &mut Report,
    before: &RequestCounts,
    after: &RequestCounts,
    seconds: f64,
    metrics: Option<(&Scrape, &Scrape)>,
) {
    let avail = "ivr.getAgentAvail";
    let status = "general.getExtensionStatus";
    let polls = after.method(avail).saturating_sub(before.method(avail));
    let second_calls = after.method(status).saturating_sub(before.method(status));
    let per_second = polls as f64 / seconds;
    let schedule = f64::from(agents) / stage.interval.as_secs_f64();
    let metric = "agent-polls/s (simulator getAgentAvail count)";
    let measured = format!(
        "{} /s ({} polls in {seconds:.1} s; schedule {}/s; +{} getExtensionStatus/s)",
        thousands(per_second),
        thousands(polls as f64),
        thousands(schedule),
        thousands(second_calls as f64 / seconds),
    );
    if stage.throughput {
        // A bridge that keeps its schedule exactly measures the schedule ±
        // the polls in flight at the window's edges: allow 1 %.
        report.push(Row::check(
            metric,
            measured,
            Some(per_second),
            "1/s",
            &format!(
                "≥ {} (1% edge tolerance)",
                thousands(TARGET_POLLS_PER_SECOND)
            ),
            per_second >= TARGET_POLLS_PER_SECOND * 0.99,
        ));
    } else {
        report.push(Row::info(metric, measured, Some(per_second), "1/s"));
    }
    if let Some(ok) = metric_delta(metrics, "pbx2mqtt_polls_total{result=\"ok\"}") {
        report.push(Row::info(
            "agent-polls/s (bridge /metrics, ok)",
            format!("{} /s", thousands(ok / seconds)),
            Some(ok / seconds),
            "1/s",
        ));
    }
    if let Some(errors) = metric_delta(metrics, "pbx2mqtt_polls_total{result=\"error\"}") {
        report.push(Row::check(
            "failed polls (bridge /metrics)",
            format!("{errors:.0}"),
            Some(errors),
            "count",
            "0",
            errors == 0.0,
        ));
    }
    let gaps = &after.poll_gaps;
    let interval_ms = stage.interval.as_secs_f64() * 1000.0;
    let max_gap_ms = gaps.max_micros.max(gaps.longest_waiting_micros) as f64 / 1000.0;
    let worst_agent = if gaps.longest_waiting_micros > gaps.max_micros {
        gaps.longest_waiting_agent.clone()
    } else {
        gaps.max_agent.clone()
    };
    report.push(Row::check(
        "max per-agent poll gap",
        format!(
            "{max_gap_ms:.0} ms (agent {}; p50 {:.0} ms, p99 {:.0} ms, p99.9 {:.0} ms over {} gaps)",
            worst_agent.unwrap_or_else(|| "-".into()),
            gaps.p50_micros as f64 / 1000.0,
            gaps.p99_micros as f64 / 1000.0,
            gaps.p999_micros as f64 / 1000.0,
            thousands(gaps.count as f64),
        ),
        Some(max_gap_ms),
        "ms",
        &format!("≤ {:.0} ms (2 × interval)", 2.0 * interval_ms),
        gaps.count > 0 && max_gap_ms <= 2.0 * interval_ms,
    ));
    report.poll_gaps[stage.key] = serde_json::to_value(gaps).unwrap_or(Json::Null);
    if metrics.is_none() {
        report.notes.push(
            "the bridge's /metrics did not answer (HTTP server not serving it): polls counted by the simulator; \
             failed polls show as transitions to `unknown`"
                .into(),
        );
    }
}

/// CPU time per agent-poll of each process, and the poll rate the machine's
/// cores could carry at that cost: a figure other load on the machine hardly
/// changes, unlike the rate measured.
fn cost_rows(report: &mut Report, per_process: &[(String, f64)], seconds: f64, polls: u64) {
    if polls == 0 {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let micros_per_poll = |percent: f64| percent / 100.0 * seconds * 1e6 / polls as f64;
    let mut total = 0.0;
    let mut parts = Vec::new();
    for (name, percent) in per_process {
        let micros = micros_per_poll(*percent);
        total += micros;
        parts.push(format!("{name} {micros:.0}"));
    }
    report.push(Row::info(
        "CPU per agent-poll, µs (whole pipeline incl. transitions)",
        format!("{total:.0} µs: {}", parts.join(", ")),
        Some(total),
        "µs",
    ));
    let ceiling = cores as f64 * 1e6 / total;
    report.push(Row::info(
        &format!("projected agent-polls/s if all {cores} cores were ours"),
        format!("{} /s", thousands(ceiling)),
        Some(ceiling),
        "1/s",
    ));
}

fn latency_rows(report: &mut Report, samples: &[EventSample], seconds: f64, malformed: u64) {
    let per_second = samples.len() as f64 / seconds;
    report.push(Row::check(
        "transition events/s received (load for the latency target)",
        format!("{per_second:.0} /s ({} events)", samples.len()),
        Some(per_second),
        "1/s",
        &format!("≈ {:.0} (≥ 90%)", TARGET_TRANSITIONS_PER_SECOND),
        per_second >= TARGET_TRANSITIONS_PER_SECOND * 0.9,
    ));
    let mut latencies: Vec<i64> = samples
        .iter()
        .map(|sample| sample.received_micros - sample.at_micros)
        .collect();
    latencies.sort_unstable();
    let negative = latencies.iter().filter(|&&micros| micros < 0).count();
    let ms = |fraction: f64| percentile(&latencies, fraction).map(|micros| micros as f64 / 1000.0);
    for (label, fraction) in [("p50", 0.50), ("p90", 0.90)] {
        let value = ms(fraction);
        report.push(Row::info(
            &format!("transition → subscriber {label}"),
            value.map_or("-".into(), |v| format!("{v:.2} ms")),
            value,
            "ms",
        ));
    }
    let p99 = ms(0.99);
    report.push(Row::check(
        "transition → subscriber p99",
        p99.map_or("-".into(), |v| format!("{v:.2} ms")),
        p99,
        "ms",
        &format!("< {TARGET_LATENCY_P99_MS:.0} ms"),
        p99.is_some_and(|v| v < TARGET_LATENCY_P99_MS),
    ));
    let max = ms(1.0);
    report.push(Row::info(
        "transition → subscriber max",
        max.map_or("-".into(), |v| format!("{v:.2} ms")),
        max,
        "ms",
    ));
    if negative > 0 {
        report.notes.push(format!(
            "{negative} events arrived before their `at` (clock step?): counted as measured"
        ));
    }

    let mut seqs: Vec<u64> = samples.iter().map(|sample| sample.seq).collect();
    seqs.sort_unstable();
    let total = seqs.len();
    seqs.dedup();
    let duplicates = total - seqs.len();
    let missing = match (seqs.first(), seqs.last()) {
        (Some(first), Some(last)) => (last - first + 1) as usize - seqs.len(),
        _ => 0,
    };
    report.push(Row::check(
        "seq gaps / duplicates in the window",
        format!(
            "{missing} missing, {duplicates} duplicates (seq {}..{})",
            seqs.first().copied().unwrap_or(0),
            seqs.last().copied().unwrap_or(0)
        ),
        Some((missing + duplicates) as f64),
        "count",
        "0 / 0",
        missing == 0 && duplicates == 0,
    ));
    let unknown = samples.iter().filter(|sample| sample.to_unknown).count();
    report.push(Row::check(
        "transitions to `unknown` (stale polls)",
        format!("{unknown}"),
        Some(unknown as f64),
        "count",
        "0",
        unknown == 0,
    ));
    if malformed > 0 {
        report.notes.push(format!(
            "{malformed} event payloads did not parse as events"
        ));
    }
}

fn memory_rows(
    report: &mut Report,
    window_start: Option<Memory>,
    window_end: Option<Memory>,
    before_stop: Option<Memory>,
    peak_kb: Option<u64>,
    window: Duration,
) {
    let mb = |kb: u64| kb as f64 / 1024.0;
    let show = |memory: Option<Memory>| {
        memory.map_or("?".to_owned(), |m| format!("{:.1} MB", mb(m.rss_kb)))
    };
    report.push(Row::info(
        "bridge RSS: window start → window end → before stop",
        format!(
            "{} → {} → {} (window {})",
            show(window_start),
            show(window_end),
            show(before_stop),
            humantime::format_duration(window)
        ),
        window_end.map(|m| mb(m.rss_kb)),
        "MB",
    ));
    let peak = peak_kb.map(mb);
    report.push(Row::check(
        "bridge peak RSS (VmHWM)",
        peak.map_or("?".into(), |v| format!("{v:.1} MB")),
        peak,
        "MB",
        &format!("< {TARGET_RSS_MB:.0} MB"),
        peak.is_some_and(|v| v < TARGET_RSS_MB),
    ));
}

// ---------------------------------------------------------------------------
// Cleanup
// ---------------------------------------------------------------------------

/// Publishes an empty retained message on every retained topic the bridge
/// used, so a persistent broker does not keep them.
async fn clear_retained(broker: &str, base: &str, agents: u32) -> anyhow::Result<()> {
    let (client, mut eventloop) = mqtt_client(broker, "cleanup")?;
    let mut topics = vec![
        format!("{base}/bridge/state"),
        format!("{base}/bridge/info"),
    ];
    for offset in 0..agents {
        let agent = format!("agent{}", FIRST_EXTENSION + offset);
        topics.push(format!("{base}/agent/{agent}"));
        topics.push(format!("{base}/agent/{agent}/status"));
    }
    let expected = topics.len();
    let publisher = {
        let client = client.clone();
        tokio::spawn(async move {
            for topic in topics {
                if client
                    .publish(topic, QoS::AtLeastOnce, true, Vec::<u8>::new())
                    .await
                    .is_err()
                {
                    break;
                }
            }
        })
    };
    let acknowledged = tokio::time::timeout(Duration::from_secs(60), async {
        let mut acknowledged = 0;
        while acknowledged < expected {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acknowledged += 1,
                Ok(_) => {}
                Err(error) => return Err(anyhow::anyhow!("broker connection failed: {error}")),
            }
        }
        Ok(acknowledged)
    })
    .await;
    publisher.abort();
    let _ = client.try_disconnect();
    match acknowledged {
        Ok(result) => result.map(|_| ()),
        Err(_) => bail!("not every clearing publish was acknowledged within 60 s"),
    }
}
