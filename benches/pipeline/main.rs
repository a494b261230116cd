//! The pipeline benchmark: `cargo bench --bench pipeline`.
//!
//! It runs the real release binary as separate processes, so the figures
//! are what a deployment would see: the PBX simulator (`pbx2mqtt simulate`)
//! with thousands of auto-moving agents, the bridge (`pbx2mqtt run`) with a
//! generated configuration and a fresh SQLite history, and a broker (a
//! private Mosquitto when `mosquitto` is on the PATH, else
//! `PBX2MQTT_TEST_MQTT_URL`, else an embedded rumqttd in this process). This
//! process plays the outside world: an MQTT subscriber timing every
//! transition event, a command client, and samplers of memory and CPU. Then,
//! with the bridge stopped, it measures history write throughput on SQLite
//! (and PostgreSQL when `PBX2MQTT_TEST_POSTGRES_URL` is set).
//!
//! Stages, one after the other (each has the machine): saturation (a poll
//! schedule above what the cores carry: polls/s and CPU per poll), the plain
//! Python peer (`benches/python_peer/peer.py`) against a fresh simulator with
//! the same agents and seed and the same broker (its polls/s, CPU per poll,
//! and the bridge/peer ratio), and steady (5,000 agents at the normal
//! interval: the bridge's share of a core, poll gaps, transition latency,
//! memory, then commands). CPU per agent-poll comes from
//! `/proc/<pid>/stat` (utime + stime over the window) for every stage.
//!
//! It prints one table (metric, measured, target, pass/fail) against
//! `product.md` §8 and writes the same as JSON to `target/pipeline-bench.json`;
//! the previous JSON is kept as `target/pipeline-bench.previous.json` and
//! every figure that moved the wrong way by more than 20% since it is printed
//! as a `WARNING` line. Every phase is bounded in time; children are killed
//! when this process ends, fails, panics or is interrupted (a guard with
//! `Drop`). All traffic stays on 127.0.0.1. It measures; it does not assert.
//!
//! `--soak DURATION` (`cargo bench --bench pipeline -- --soak 1h`) runs only
//! the soak: the steady setup for DURATION, sampling the bridge's memory,
//! open files, WAL size and outbox depth (see `soak`), written to
//! `target/pipeline-soak.json`.
//!
//! Knobs (environment): `PIPELINE_AGENTS` (5000), `PIPELINE_INTERVAL` (1s,
//! steady and soak), `PIPELINE_SATURATION_INTERVAL` (200ms),
//! `PIPELINE_CONCURRENCY` (128), `PIPELINE_DWELL` (4.5s), `PIPELINE_WARMUP`
//! (5s), `PIPELINE_SATURATION_SECONDS` (20), `PIPELINE_PEER_SECONDS` (20; 0
//! skips the peer), `PIPELINE_SECONDS` (20, the steady window; 0 skips it),
//! `PIPELINE_COMMAND_SECONDS` (5; 0 skips commands),
//! `PIPELINE_COMMANDS_IN_FLIGHT` (8), `PIPELINE_HISTORY_INTERVALS` (100000),
//! `PIPELINE_DATA_DIR` (where the SQLite files go; the temp directory),
//! `PIPELINE_BROKER` (`mosquitto`: a private Mosquitto with
//! `set_tcp_nodelay true`; `embedded`; `env`: `PBX2MQTT_TEST_MQTT_URL`;
//! unset: Mosquitto when on the PATH, else as `env`, else embedded),
//! `PBX2MQTT_BENCH_PYTHON` (the peer's Python; else a venv under
//! the target directory).
//! Arguments `pipeline` or `history` run only that part.
//!
//! This file runs the stages; the rooms beside it, from the bottom up:
//! `targets` (the product targets), `stats` (percentiles, formatting),
//! `settings` (knobs, stages, the simulated setup), `processes` (broker,
//! simulator, bridge, their control and metrics), `samplers` (memory and
//! CPU), `subscriber` (MQTT: event timing, cleanup), `table` (rows, the
//! printed table, the JSON and the comparison with the previous run),
//! `commands` (the command phase), `history` (write throughput), `peer` (the
//! Python peer) and `soak`.

mod commands;
mod history;
mod peer;
mod processes;
mod samplers;
mod settings;
mod soak;
mod stats;
mod subscriber;
mod table;
mod targets;

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::Utc;

use crate::commands::run_commands;
use crate::history::{commit_probe, history};
use crate::peer::{run_peer, BridgeFigures};
use crate::processes::{
    bridge_metrics, free_port, start_bridge, start_simulator, write_bridge_config, Broker,
    SimulatorControl,
};
use crate::samplers::{MemorySampler, Processes};
use crate::settings::{Settings, Stage, StageKind, STARTUP_LIMIT};
use crate::subscriber::{clear_retained, EventSubscriber};
use crate::table::{cost_rows, latency_rows, memory_rows, polling_rows, progress, Report, Row};

/// After the warm-up, the window starts once the events of the last second
/// have a median latency below this (the start-up burst has drained)...
const SETTLED_MEDIAN_MS: f64 = 50.0;

/// ...or at the latest this many warm-ups after the bridge came online.
const SETTLE_LIMIT_FACTOR: u32 = 3;

/// Longest wait for the bridge's graceful stop.
const STOP_LIMIT: Duration = Duration::from_secs(20);

fn main() -> ExitCode {
    // The history-write stage opens stores in this process: with the
    // bridge's SQLite settings, as `pbx2mqtt run` has them.
    if !pbx2mqtt::store::configure_sqlite() {
        eprintln!("pipeline bench: SQLite had started before its settings were made");
    }
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
    if let Some(duration) = settings.soak {
        let outcome = runtime.block_on(async {
            tokio::select! {
                outcome = soak::soak(&settings, duration) => outcome,
                _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
            }
        });
        return match outcome {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("pipeline soak failed: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
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
                Ok((path, comparison)) => {
                    println!();
                    for line in comparison {
                        println!("{line}");
                    }
                    eprintln!("results written to {}", path.display());
                }
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
            let figures = run_stage(
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
            let figures = figures.with_context(|| format!("stage {:?} failed", stage.key))?;
            // The Python peer after the saturation stage, alone on the machine.
            if stage.kind == StageKind::Saturation && !settings.peer_window.is_zero() {
                let base = format!("pbx2mqtt-bench/{tag}/peer");
                let peer_dir = dir.path().join("peer");
                std::fs::create_dir_all(&peer_dir)?;
                run_peer(
                    settings,
                    &broker,
                    &base,
                    &peer_dir,
                    Some(figures),
                    &mut report,
                )
                .await;
                if let Err(error) = clear_retained(&broker.url, &base, settings.agents).await {
                    eprintln!(
                        "warning: could not clear the retained topics under {base}: {error:#}"
                    );
                }
            }
        }
        if !settings.peer_window.is_zero()
            && !settings
                .stages()
                .iter()
                .any(|stage| stage.kind == StageKind::Saturation)
        {
            let base = format!("pbx2mqtt-bench/{tag}/peer");
            let peer_dir = dir.path().join("peer");
            std::fs::create_dir_all(&peer_dir)?;
            run_peer(settings, &broker, &base, &peer_dir, None, &mut report).await;
            if let Err(error) = clear_retained(&broker.url, &base, settings.agents).await {
                eprintln!("warning: could not clear the retained topics under {base}: {error:#}");
            }
        }
    }
    if settings.run_history {
        report.group("history writes (bench_record, bridge stopped)");
        history(settings, dir.path(), &mut report).await?;
    }
    Ok(report)
}

/// One stage: simulator and bridge started, warmed up, measured (polling,
/// CPU per poll, latency, memory, and per the stage commands), stopped.
/// Returns the bridge's polls/s and CPU per poll (for the peer's ratio).
async fn run_stage(
    settings: &Settings,
    stage: &Stage,
    broker: &Broker,
    base: &str,
    tag: &str,
    dir: &Path,
    report: &mut Report,
) -> anyhow::Result<BridgeFigures> {
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
    // At saturation the latency never settles (the CPU queue): no wait.
    let settle_deadline = if stage.kind == StageKind::Steady {
        online + settings.warmup * SETTLE_LIMIT_FACTOR
    } else {
        Instant::now()
    };
    let mut settled = stage.kind != StageKind::Steady;
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
    let steady = stage.kind == StageKind::Steady;
    latency_rows(report, &samples, window_seconds, events.malformed(), steady);
    report.cpu[stage.key] = processes.cpu_json(&cpu_before, &cpu_after, window_seconds);
    report.notes.push(format!(
        "{}: {}",
        stage.key,
        processes.cpu_summary(&cpu_before, &cpu_after, window_seconds)
    ));
    let polls = stats_after
        .method("ivr.getAgentAvail")
        .saturating_sub(stats_before.method("ivr.getAgentAvail"));
    let (per_process, _) = processes.cpu_percentages(&cpu_before, &cpu_after, window_seconds);
    cost_rows(
        report,
        Some(stage.kind),
        &per_process,
        window_seconds,
        polls,
    );
    let figures = BridgeFigures {
        polls_per_second: polls as f64 / window_seconds,
        micros_per_poll: per_process
            .iter()
            .find(|(name, _)| name == "bridge")
            .filter(|_| polls > 0)
            .map(|(_, percent)| percent / 100.0 * window_seconds * 1e6 / polls as f64),
    };

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
    memory_rows(
        report,
        rss_window_start,
        rss_window_end,
        rss_before_stop,
        peak,
        stage.window,
        steady,
    );
    report.rss_samples[stage.key] = memory.samples_json();
    report.push(Row::info(
        "bridge graceful stop",
        format!("{:.2} s", stop_time.as_secs_f64()),
        Some(stop_time.as_secs_f64()),
        "s",
    ));
    drop(events);
    Ok(figures)
}
