//! `--soak DURATION`: the steady setup (5,000 agents at the normal poll
//! interval) for a long time, sampling what would show a leak: the bridge's
//! resident memory, its open files (`/proc/<pid>/fd`), the SQLite WAL file's
//! size and the MQTT outbox depth (`pbx2mqtt_mqtt_outbox_depth`), with the
//! poll rate and the bridge's CPU beside them. Printed as a small table with
//! first / last / max and a verdict per series, written to
//! `target/pipeline-soak.json`.
//!
//! The verdict: a series is "growing" when the mean of its last quarter is
//! more than 10% (and more than a small floor) above the mean of its second
//! quarter; the first quarter is the start-up (caches filling, the WAL
//! reaching its checkpoint size).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use serde_json::{json, Value as Json};

use crate::processes::{
    bridge_metrics, free_port, start_bridge, start_simulator, write_bridge_config, Broker,
    SimulatorControl,
};
use crate::samplers::{process_ticks, read_memory, Processes};
use crate::settings::{Settings, STARTUP_LIMIT};
use crate::stats::thousands;
use crate::table::{machine_json, progress, target_dir};

/// Longest wait for the bridge's graceful stop.
const STOP_LIMIT: Duration = Duration::from_secs(20);

/// Sampling period: DURATION/60, between these bounds.
const MIN_EVERY: Duration = Duration::from_secs(1);
const MAX_EVERY: Duration = Duration::from_secs(10);

/// A series grows when its last-quarter mean exceeds its second-quarter
/// mean by more than this fraction...
const GROWTH_FRACTION: f64 = 0.10;

/// Printed rows at most (every sample is in the JSON).
const PRINTED_ROWS: usize = 30;

/// One reading.
#[derive(Debug, Clone, Default)]
struct Sample {
    at_s: f64,
    rss_kb: Option<u64>,
    /// RssAnon and RssFile (+ RssShmem) of `/proc/<pid>/status`: heap
    /// versus mapped files (SQLite's mmap counts in the resident memory).
    rss_anon_kb: Option<u64>,
    rss_file_kb: Option<u64>,
    open_files: Option<u64>,
    wal_bytes: Option<u64>,
    outbox_depth: Option<f64>,
    polls_per_second: Option<f64>,
    bridge_core_percent: Option<f64>,
}

/// A series the verdict looks at: name, unit, floor (the least absolute
/// growth that counts), and how to read it from a sample.
struct Series {
    name: &'static str,
    unit: &'static str,
    floor: f64,
    read: fn(&Sample) -> Option<f64>,
}

const SERIES: [Series; 4] = [
    Series {
        name: "resident memory",
        unit: "MB",
        floor: 0.5,
        read: |s| s.rss_kb.map(|kb| kb as f64 / 1024.0),
    },
    Series {
        name: "open files",
        unit: "fds",
        floor: 2.0,
        read: |s| s.open_files.map(|n| n as f64),
    },
    Series {
        name: "SQLite WAL size",
        unit: "MB",
        floor: 0.25,
        read: |s| s.wal_bytes.map(|b| b as f64 / 1_048_576.0),
    },
    Series {
        name: "MQTT outbox depth",
        unit: "events",
        floor: 50.0,
        read: |s| s.outbox_depth,
    },
];

pub async fn soak(settings: &Settings, duration: Duration) -> anyhow::Result<()> {
    let data_dir = settings.data_dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new()
        .prefix("pbx2mqtt-soak-")
        .tempdir_in(&data_dir)
        .with_context(|| format!("cannot create a directory in {}", data_dir.display()))?;
    let broker = Broker::choose(dir.path())?;
    let tag = format!("{:08x}", rand::random::<u32>());
    let base = format!("pbx2mqtt-bench/{tag}/soak");
    let outcome = run(settings, duration, &broker, &base, &tag, dir.path()).await;
    if let Err(error) = crate::subscriber::clear_retained(&broker.url, &base, settings.agents).await
    {
        eprintln!("warning: could not clear the retained topics under {base}: {error:#}");
    }
    outcome
}

async fn run(
    settings: &Settings,
    duration: Duration,
    broker: &Broker,
    base: &str,
    tag: &str,
    dir: &Path,
) -> anyhow::Result<()> {
    let stage = settings.soak_stage(duration);
    let every = (duration / 60).clamp(MIN_EVERY, MAX_EVERY);
    progress(&stage.title);
    progress(format!("broker: {}", broker.describe()));
    let (mut simulator, simulator_addr) = start_simulator(settings, &stage, dir)?;
    let http_port = free_port()?;
    let config = write_bridge_config(
        settings,
        &stage,
        broker,
        base,
        tag,
        simulator_addr,
        http_port,
        dir,
    )?;
    let mut bridge = start_bridge(&config, dir)?;
    let pid = bridge.pid();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .context("cannot build the HTTP client")?;
    let metrics_url = format!("http://127.0.0.1:{http_port}/metrics");
    let sim = SimulatorControl {
        http: http.clone(),
        base: format!("http://{simulator_addr}/control"),
    };

    // Up when /metrics counts successful polls.
    let started = Instant::now();
    loop {
        bridge.check_running()?;
        let ok = bridge_metrics(&http, &metrics_url)
            .await
            .and_then(|m| m.get("pbx2mqtt_polls_total{result=\"ok\"}").copied())
            .unwrap_or(0.0);
        if ok > 0.0 {
            break;
        }
        if started.elapsed() > STARTUP_LIMIT {
            anyhow::bail!(
                "the bridge counted no successful poll within {STARTUP_LIMIT:?}\n--- bridge log (tail) ---\n{}",
                bridge.log_tail(30)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    progress(format!(
        "bridge polling after {:.1} s; warming up for {}, then sampling every {} for {}",
        started.elapsed().as_secs_f64(),
        humantime::format_duration(settings.warmup),
        humantime::format_duration(every),
        humantime::format_duration(duration)
    ));
    tokio::time::sleep(settings.warmup).await;

    let wal = dir.join("history.db-wal");
    let ticks_per_second = Processes::from_list(vec![("bridge".to_owned(), pid)]).ticks_per_second;
    let clock = Instant::now();
    let mut samples = Vec::new();
    let mut previous: Option<(Instant, u64, Option<u64>)> = None;
    let mut next = clock;
    while clock.elapsed() <= duration {
        bridge.check_running()?;
        simulator.check_running()?;
        let now = Instant::now();
        let polls = sim.stats().await?.method("ivr.getAgentAvail");
        let ticks = process_ticks(pid);
        let (polls_per_second, bridge_core_percent) = match previous {
            Some((then, polls_then, ticks_then)) => {
                let seconds = now.duration_since(then).as_secs_f64();
                (
                    Some(polls.saturating_sub(polls_then) as f64 / seconds),
                    ticks.zip(ticks_then).map(|(now, then)| {
                        now.saturating_sub(then) as f64 / ticks_per_second / seconds * 100.0
                    }),
                )
            }
            None => (None, None),
        };
        previous = Some((now, polls, ticks));
        let sample = Sample {
            at_s: clock.elapsed().as_secs_f64(),
            rss_kb: read_memory(pid, clock).map(|m| m.rss_kb),
            rss_anon_kb: status_kb(pid, "RssAnon:"),
            rss_file_kb: status_kb(pid, "RssFile:")
                .map(|file| file + status_kb(pid, "RssShmem:").unwrap_or(0)),
            open_files: std::fs::read_dir(format!("/proc/{pid}/fd"))
                .ok()
                .map(|entries| entries.count() as u64),
            wal_bytes: std::fs::metadata(&wal).ok().map(|m| m.len()),
            outbox_depth: bridge_metrics(&http, &metrics_url)
                .await
                .and_then(|m| m.get("pbx2mqtt_mqtt_outbox_depth").copied()),
            polls_per_second,
            bridge_core_percent,
        };
        progress(format!("soak {}", line(&sample)));
        samples.push(sample);
        next += every;
        let wait = next.saturating_duration_since(Instant::now());
        if clock.elapsed() + wait > duration {
            break;
        }
        tokio::time::sleep(wait).await;
    }
    progress("stopping the bridge (SIGTERM) and the simulator");
    let stop = bridge.terminate(STOP_LIMIT)?;
    simulator.terminate(STOP_LIMIT)?;

    let verdicts = print_and_judge(&stage.title, every, &samples);
    let path = write_json(settings, duration, every, &samples, &verdicts, stop)?;
    eprintln!("soak results written to {}", path.display());
    Ok(())
}

/// One `kB` field of `/proc/<pid>/status`.
fn status_kb(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|line| line.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// One sample as a progress line.
fn line(sample: &Sample) -> String {
    let show = |value: Option<f64>, decimals: usize| {
        value.map_or("?".to_owned(), |v| format!("{v:.decimals$}"))
    };
    format!(
        "t={:>6.0}s rss={} MB (anon {}, file {}) fds={} wal={} MB outbox={} polls/s={} bridge={}% of a core",
        sample.at_s,
        show(sample.rss_kb.map(|kb| kb as f64 / 1024.0), 1),
        show(sample.rss_anon_kb.map(|kb| kb as f64 / 1024.0), 1),
        show(sample.rss_file_kb.map(|kb| kb as f64 / 1024.0), 1),
        show(sample.open_files.map(|n| n as f64), 0),
        show(sample.wal_bytes.map(|b| b as f64 / 1_048_576.0), 2),
        show(sample.outbox_depth, 0),
        show(sample.polls_per_second, 0),
        show(sample.bridge_core_percent, 1),
    )
}

/// A series' figures and verdict.
struct Verdict {
    name: &'static str,
    unit: &'static str,
    first: Option<f64>,
    last: Option<f64>,
    max: Option<f64>,
    second_quarter_mean: Option<f64>,
    last_quarter_mean: Option<f64>,
    growing: bool,
}

fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

fn judge(series: &Series, samples: &[Sample]) -> Verdict {
    let values: Vec<f64> = samples.iter().filter_map(series.read).collect();
    let quarter = values.len() / 4;
    let (second, last) = if quarter > 0 {
        (
            mean(&values[quarter..2 * quarter]),
            mean(&values[values.len() - quarter..]),
        )
    } else {
        (values.first().copied(), values.last().copied())
    };
    let growing = match (second, last) {
        (Some(second), Some(last)) => {
            last > second * (1.0 + GROWTH_FRACTION) && last - second > series.floor
        }
        _ => false,
    };
    Verdict {
        name: series.name,
        unit: series.unit,
        first: values.first().copied(),
        last: values.last().copied(),
        max: values.iter().copied().reduce(f64::max),
        second_quarter_mean: second,
        last_quarter_mean: last,
        growing,
    }
}

fn print_and_judge(title: &str, every: Duration, samples: &[Sample]) -> Vec<Verdict> {
    println!();
    println!(
        "pbx2mqtt soak: {title}; a sample every {} ({} samples); load average {}",
        humantime::format_duration(every),
        samples.len(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("| t (s) | RSS (MB) | of which anon / file (MB) | open files | WAL (MB) | outbox depth | agent-polls/s | bridge % of a core |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let step = samples.len().div_ceil(PRINTED_ROWS).max(1);
    for (index, sample) in samples.iter().enumerate() {
        if index % step != 0 && index + 1 != samples.len() {
            continue;
        }
        let show = |value: Option<f64>, decimals: usize| {
            value.map_or("?".to_owned(), |v| format!("{v:.decimals$}"))
        };
        println!(
            "| {:.0} | {} | {} / {} | {} | {} | {} | {} | {} |",
            sample.at_s,
            show(sample.rss_kb.map(|kb| kb as f64 / 1024.0), 1),
            show(sample.rss_anon_kb.map(|kb| kb as f64 / 1024.0), 1),
            show(sample.rss_file_kb.map(|kb| kb as f64 / 1024.0), 1),
            show(sample.open_files.map(|n| n as f64), 0),
            show(sample.wal_bytes.map(|b| b as f64 / 1_048_576.0), 2),
            show(sample.outbox_depth, 0),
            sample.polls_per_second.map_or("-".to_owned(), thousands),
            show(sample.bridge_core_percent, 1),
        );
    }
    println!();
    println!("| series | first | last | max | mean, 2nd quarter | mean, last quarter | verdict |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | --- |");
    let verdicts: Vec<Verdict> = SERIES.iter().map(|series| judge(series, samples)).collect();
    for verdict in &verdicts {
        let show = |value: Option<f64>| value.map_or("?".to_owned(), |v| format!("{v:.2}"));
        println!(
            "| {} ({}) | {} | {} | {} | {} | {} | {} |",
            verdict.name,
            verdict.unit,
            show(verdict.first),
            show(verdict.last),
            show(verdict.max),
            show(verdict.second_quarter_mean),
            show(verdict.last_quarter_mean),
            if verdict.growing { "GROWING" } else { "flat" }
        );
    }
    let polls: Vec<f64> = samples.iter().filter_map(|s| s.polls_per_second).collect();
    let cpu: Vec<f64> = samples
        .iter()
        .filter_map(|s| s.bridge_core_percent)
        .collect();
    println!();
    println!(
        "verdict: {} (a series grows when its last-quarter mean is more than {:.0}% and its floor above its second-quarter mean); \
         agent-polls/s mean {}, bridge mean {}% of one core",
        if verdicts.iter().any(|v| v.growing) {
            "growing"
        } else {
            "flat"
        },
        GROWTH_FRACTION * 100.0,
        mean(&polls).map_or("?".to_owned(), thousands),
        mean(&cpu).map_or("?".to_owned(), |v| format!("{v:.1}")),
    );
    verdicts
}

fn write_json(
    settings: &Settings,
    duration: Duration,
    every: Duration,
    samples: &[Sample],
    verdicts: &[Verdict],
    stop: Duration,
) -> anyhow::Result<PathBuf> {
    let target = target_dir();
    std::fs::create_dir_all(&target)?;
    let path = target.join("pipeline-soak.json");
    let document = json!({
        "benchmark": "pbx2mqtt pipeline soak",
        "finished_at": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "command": format!("cargo bench --bench pipeline -- --soak {}", humantime::format_duration(duration)),
        "machine": machine_json(),
        "settings": settings.to_json(),
        "duration_s": duration.as_secs_f64(),
        "every_s": every.as_secs_f64(),
        "verdict": if verdicts.iter().any(|v| v.growing) { "growing" } else { "flat" },
        "series": verdicts.iter().map(|v| json!({
            "name": v.name,
            "unit": v.unit,
            "first": v.first,
            "last": v.last,
            "max": v.max,
            "second_quarter_mean": v.second_quarter_mean,
            "last_quarter_mean": v.last_quarter_mean,
            "verdict": if v.growing { "growing" } else { "flat" },
        })).collect::<Vec<Json>>(),
        "bridge_graceful_stop_s": stop.as_secs_f64(),
        "samples": samples.iter().map(|s| json!({
            "at_s": (s.at_s * 10.0).round() / 10.0,
            "rss_kb": s.rss_kb,
            "rss_anon_kb": s.rss_anon_kb,
            "rss_file_kb": s.rss_file_kb,
            "open_files": s.open_files,
            "wal_bytes": s.wal_bytes,
            "outbox_depth": s.outbox_depth,
            "agent_polls_per_s": s.polls_per_second,
            "bridge_percent_of_one_core": s.bridge_core_percent,
        })).collect::<Vec<Json>>(),
    });
    std::fs::write(&path, serde_json::to_string_pretty(&document)?)?;
    Ok(path)
}
