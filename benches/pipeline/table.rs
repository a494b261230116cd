//! The results: rows of metric, measured, target and verdict, printed as a
//! table and written as JSON.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;
use serde_json::{json, Value as Json};

use pbx2mqtt::simulator::RequestCounts;

use crate::processes::{metric_delta, Scrape};
use crate::samplers::Memory;
use crate::settings::{Settings, Stage};
use crate::stats::{percentile, thousands};
use crate::subscriber::EventSample;
use crate::targets::{
    TARGET_AGENTS, TARGET_INTERVAL, TARGET_LATENCY_P99_MS, TARGET_POLLS_PER_SECOND, TARGET_RSS_MB,
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

    pub fn write_json(&self, settings: &Settings) -> anyhow::Result<PathBuf> {
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
pub fn cost_rows(report: &mut Report, per_process: &[(String, f64)], seconds: f64, polls: u64) {
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

pub fn latency_rows(report: &mut Report, samples: &[EventSample], seconds: f64, malformed: u64) {
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

pub fn memory_rows(
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

pub fn progress(message: impl AsRef<str>) {
    eprintln!("[pipeline] {}", message.as_ref());
}
