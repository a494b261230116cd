//! The results: rows of metric, measured, target and verdict, printed as a
//! table and written as JSON.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;
use serde_json::{json, Value as Json};

use pbx2mqtt::simulator::RequestCounts;

use crate::processes::{metric_delta, Scrape};
use crate::samplers::Memory;
use crate::settings::{Settings, Stage, StageKind};
use crate::stats::{percentile, thousands};
use crate::subscriber::EventSample;
use crate::targets::{
    TARGET_AGENTS, TARGET_BRIDGE_MICROS_PER_POLL, TARGET_INTERVAL, TARGET_LATENCY_P99_MS,
    TARGET_POLLS_PER_SECOND, TARGET_RSS_MB, TARGET_STEADY_CORE_PERCENT,
    TARGET_TRANSITIONS_PER_SECOND,
};

/// One line of the results table.
#[derive(Debug, Clone)]
pub struct Row {
    /// The stage or part it belongs to (a heading in the table).
    pub group: String,
    /// What was measured.
    pub metric: String,
    /// The measured value, formatted.
    pub measured: String,
    /// The measured value as a number, for the JSON.
    pub value: Option<f64>,
    /// Its unit.
    pub unit: String,
    /// The target, formatted (empty for information only).
    pub target: String,
    /// Met or not; `None` for information only.
    pub pass: Option<bool>,
}

impl Row {
    pub fn check(
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

    /// Which way is better for this figure, from its unit: rates and ratios
    /// higher, times, sizes, shares and counts lower.
    pub fn better(&self) -> Option<Better> {
        self.value?;
        match self.unit.as_str() {
            "1/s" | "×" => Some(Better::Higher),
            "µs" | "ms" | "s" | "MB" | "%" | "count" => Some(Better::Lower),
            _ => None,
        }
    }

    pub fn info(metric: &str, measured: String, value: Option<f64>, unit: &str) -> Self {
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

/// Which way a figure improves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
}

impl Better {
    pub fn as_str(self) -> &'static str {
        match self {
            Better::Higher => "higher",
            Better::Lower => "lower",
        }
    }
}

/// A figure is a regression when it moved the wrong way by more than this
/// fraction of the previous run's value.
pub const REGRESSION_FRACTION: f64 = 0.20;

/// Everything measured.
#[derive(Debug, Default)]
pub struct Report {
    /// The table.
    pub rows: Vec<Row>,
    /// Lines printed under the table.
    pub notes: Vec<String>,
    /// The heading new rows go under.
    pub current_group: String,
    /// Bridge memory readings, per stage.
    pub rss_samples: Json,
    /// CPU use in the window, per stage.
    pub cpu: Json,
    /// The simulator's poll-gap statistics for the window, per stage.
    pub poll_gaps: Json,
    /// The Python peer's own figures (its JSON line) and how it ran.
    pub peer: Json,
}

impl Report {
    pub fn push(&mut self, mut row: Row) {
        row.group = self.current_group.clone();
        self.rows.push(row);
    }

    /// Rows pushed from now on go under `title`.
    pub fn group(&mut self, title: &str) {
        self.current_group = title.to_owned();
    }

    pub fn print(&self, settings: &Settings) {
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
            "pbx2mqtt pipeline benchmark ({} agents, poll concurrency {}, windows: saturation {}, Python peer {}, steady {}; {} cores shared by every process; load average {})",
            settings.agents,
            settings.concurrency,
            humantime::format_duration(settings.saturation_window),
            humantime::format_duration(settings.peer_window),
            humantime::format_duration(settings.window),
            std::thread::available_parallelism().map_or(1, |n| n.get()),
            std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
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

    /// Writes `pipeline-bench.json` in the target directory; a previous one
    /// is kept as `pipeline-bench.previous.json` and compared with: the
    /// lines returned name every figure that regressed by more than 20%.
    pub fn write_json(&self, settings: &Settings) -> anyhow::Result<(PathBuf, Vec<String>)> {
        let target = target_dir();
        std::fs::create_dir_all(&target)?;
        let path = target.join("pipeline-bench.json");
        let mut comparison = Vec::new();
        if path.exists() {
            let previous_path = target.join("pipeline-bench.previous.json");
            std::fs::copy(&path, &previous_path)?;
            match std::fs::read(&previous_path)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<Json>(&bytes).ok())
            {
                Some(previous) => comparison = self.compare(&previous, settings),
                None => comparison.push(format!(
                    "the previous results ({}) did not parse: nothing compared",
                    previous_path.display()
                )),
            }
        } else {
            comparison.push(
                "no previous results: nothing compared (this run is the baseline for the next)"
                    .into(),
            );
        }
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
                    "better": row.better().map(Better::as_str),
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
            "python_peer": self.peer,
            "bridge_memory_samples": self.rss_samples,
            "machine": machine_json(),
        });
        std::fs::write(&path, serde_json::to_string_pretty(&document)?)?;
        Ok((path, comparison))
    }

    /// `WARNING` lines for the figures that moved the wrong way by more than
    /// [`REGRESSION_FRACTION`] since `previous`, matched by heading and
    /// metric; then one line saying what was compared.
    pub fn compare(&self, previous: &Json, settings: &Settings) -> Vec<String> {
        let mut old = std::collections::HashMap::new();
        for row in previous["results"].as_array().into_iter().flatten() {
            if let (Some(group), Some(metric), Some(value)) = (
                row["group"].as_str(),
                row["metric"].as_str(),
                row["value"].as_f64(),
            ) {
                old.insert((group.to_owned(), metric.to_owned()), value);
            }
        }
        let mut lines = Vec::new();
        let mut compared = 0;
        for row in &self.rows {
            let (Some(value), Some(better)) = (row.value, row.better()) else {
                continue;
            };
            let Some(&before) = old.get(&(row.group.clone(), row.metric.clone())) else {
                continue;
            };
            compared += 1;
            let worse = match better {
                Better::Higher => before - value,
                Better::Lower => value - before,
            };
            let regressed = if before.abs() > f64::EPSILON {
                worse / before.abs() > REGRESSION_FRACTION
            } else {
                // From zero, only counts (failures, gaps) are meaningful.
                row.unit == "count" && worse > 0.0
            };
            if regressed {
                let change = if before.abs() > f64::EPSILON {
                    format!("{:+.0}%", (value - before) / before.abs() * 100.0)
                } else {
                    "from zero".to_owned()
                };
                lines.push(format!(
                    "WARNING: regression > {:.0}% ({} is better): [{}] {}: {} → {} {} ({change})",
                    REGRESSION_FRACTION * 100.0,
                    better.as_str(),
                    row.group,
                    row.metric,
                    short(before),
                    short(value),
                    row.unit,
                ));
            }
        }
        let same_settings = previous["settings"] == settings.to_json();
        lines.push(format!(
            "compared {compared} figures with the previous run ({}){}: {} regressed by more than {:.0}%",
            previous["finished_at"].as_str().unwrap_or("?"),
            if same_settings { "" } else { ", whose settings differ" },
            lines.len(),
            REGRESSION_FRACTION * 100.0,
        ));
        lines
    }
}

/// A number for a message: no needless decimals.
fn short(value: f64) -> String {
    if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else if value.abs() >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

/// `CARGO_TARGET_DIR`, else the package's `target`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// The machine: cores, load average, CPU model.
pub fn machine_json() -> Json {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|line| line.starts_with("model name"))
        .and_then(|line| line.split_once(':'))
        .map(|(_, model)| model.trim().to_owned());
    json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "load_average": load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        "cpu_model": model,
    })
}

pub fn polling_rows(
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
    match stage.kind {
        StageKind::Saturation => report.push(Row::check(
            metric,
            measured,
            Some(per_second),
            "1/s",
            &format!("≥ {}", thousands(TARGET_POLLS_PER_SECOND)),
            per_second >= TARGET_POLLS_PER_SECOND,
        )),
        // A bridge that keeps its schedule exactly measures the schedule ±
        // the polls in flight at the window's edges: allow 1 %.
        StageKind::Steady => report.push(Row::check(
            metric,
            measured,
            Some(per_second),
            "1/s",
            &format!(
                "≥ {} (the schedule; 1% edge tolerance)",
                thousands(schedule)
            ),
            per_second >= schedule * 0.99,
        )),
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
    let gap_target = format!("≤ {:.0} ms (2 × interval)", 2.0 * interval_ms);
    let gap_row = |measured: String| match stage.kind {
        StageKind::Steady => Row::check(
            "max per-agent poll gap",
            measured,
            Some(max_gap_ms),
            "ms",
            &gap_target,
            gaps.count > 0 && max_gap_ms <= 2.0 * interval_ms,
        ),
        // Above capacity every gap is longer than the interval: information.
        StageKind::Saturation => {
            Row::info("max per-agent poll gap", measured, Some(max_gap_ms), "ms")
        }
    };
    report.push(gap_row(format!(
        "{max_gap_ms:.0} ms (agent {}; p50 {:.0} ms, p99 {:.0} ms, p99.9 {:.0} ms over {} gaps)",
        worst_agent.unwrap_or_else(|| "-".into()),
        gaps.p50_micros as f64 / 1000.0,
        gaps.p99_micros as f64 / 1000.0,
        gaps.p999_micros as f64 / 1000.0,
        thousands(gaps.count as f64),
    )));
    report.poll_gaps[stage.key] = serde_json::to_value(gaps).unwrap_or(Json::Null);
    if metrics.is_none() {
        report.notes.push(
            "the bridge's /metrics did not answer (HTTP server not serving it): polls counted by the simulator; \
             failed polls show as transitions to `unknown`"
                .into(),
        );
    }
}

/// CPU time per agent-poll of each process (from `/proc/<pid>/stat`,
/// utime + stime over the window), and what it means for the stage: at
/// saturation the bridge's cost against its target and the poll rate the
/// machine's cores could carry at that cost (a figure other load on the
/// machine hardly changes, unlike the rate measured); at the normal interval
/// the bridge's share of one core. `kind` is `None` for the Python peer.
pub fn cost_rows(
    report: &mut Report,
    kind: Option<StageKind>,
    per_process: &[(String, f64)],
    seconds: f64,
    polls: u64,
) {
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
        let metric = format!("CPU per agent-poll: {name} (/proc utime+stime)");
        let measured = format!("{micros:.1} µs ({percent:.0}% of one core)");
        if name == "bridge" && kind == Some(StageKind::Saturation) {
            report.push(Row::check(
                &metric,
                measured,
                Some(micros),
                "µs",
                &format!("≤ {TARGET_BRIDGE_MICROS_PER_POLL:.0} µs"),
                micros <= TARGET_BRIDGE_MICROS_PER_POLL,
            ));
        } else if name.starts_with("bench") {
            // The bench's own subscriber: in the sum only.
        } else {
            report.push(Row::info(&metric, measured, Some(micros), "µs"));
        }
    }
    report.push(Row::info(
        "CPU per agent-poll: all measured processes",
        format!("{total:.0} µs: {}", parts.join(", ")),
        Some(total),
        "µs",
    ));
    match kind {
        Some(StageKind::Saturation) | None => {
            let ceiling = cores as f64 * 1e6 / total;
            report.push(Row::info(
                &format!("projected agent-polls/s if all {cores} cores were these processes'"),
                format!("{} /s", thousands(ceiling)),
                Some(ceiling),
                "1/s",
            ));
        }
        Some(StageKind::Steady) => {
            if let Some((_, percent)) = per_process.iter().find(|(name, _)| name == "bridge") {
                report.push(Row::check(
                    "bridge CPU, % of one core",
                    format!("{percent:.1}%"),
                    Some(*percent),
                    "%",
                    &format!("< {TARGET_STEADY_CORE_PERCENT:.0}% (5,000 agents every 1 s)"),
                    *percent < TARGET_STEADY_CORE_PERCENT,
                ));
            }
        }
    }
}

/// Event rate, latency percentiles, seq and `unknown` checks; the rate and
/// the p99 are held against the targets when `checked` (the steady stage),
/// information otherwise (at saturation the CPU queue dominates).
pub fn latency_rows(
    report: &mut Report,
    samples: &[EventSample],
    seconds: f64,
    malformed: u64,
    checked: bool,
) {
    let per_second = samples.len() as f64 / seconds;
    let rate_metric = "transition events/s received (load for the latency target)";
    let rate_measured = format!("{per_second:.0} /s ({} events)", samples.len());
    report.push(if checked {
        Row::check(
            rate_metric,
            rate_measured,
            Some(per_second),
            "1/s",
            &format!("≈ {:.0} (≥ 90%)", TARGET_TRANSITIONS_PER_SECOND),
            per_second >= TARGET_TRANSITIONS_PER_SECOND * 0.9,
        )
    } else {
        Row::info(rate_metric, rate_measured, Some(per_second), "1/s")
    });
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
    let p99_measured = p99.map_or("-".into(), |v| format!("{v:.2} ms"));
    report.push(if checked {
        Row::check(
            "transition → subscriber p99",
            p99_measured,
            p99,
            "ms",
            &format!("< {TARGET_LATENCY_P99_MS:.0} ms"),
            p99.is_some_and(|v| v < TARGET_LATENCY_P99_MS),
        )
    } else {
        Row::info("transition → subscriber p99", p99_measured, p99, "ms")
    });
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

pub fn memory_rows(
    report: &mut Report,
    window_start: Option<Memory>,
    window_end: Option<Memory>,
    before_stop: Option<Memory>,
    peak_kb: Option<u64>,
    window: Duration,
    checked: bool,
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
    let measured = peak.map_or("?".into(), |v| format!("{v:.1} MB"));
    report.push(if checked {
        Row::check(
            "bridge peak RSS (VmHWM)",
            measured,
            peak,
            "MB",
            &format!("< {TARGET_RSS_MB:.0} MB"),
            peak.is_some_and(|v| v < TARGET_RSS_MB),
        )
    } else {
        Row::info("bridge peak RSS (VmHWM)", measured, peak, "MB")
    });
}

pub fn progress(message: impl AsRef<str>) {
    eprintln!("[pipeline] {}", message.as_ref());
}
