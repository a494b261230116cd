//! Rendering reports as an aligned table (for people), CSV (header row, one
//! row per record, the JSON field names as columns) or JSON (the documented
//! documents [`SummaryReport`] and [`TimelineReport`]).
//!
//! Pure: takes finished reports, returns text.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};

use super::{SummaryReport, SummaryRow, TimelineReport, TimelineRow};

/// An output format (`--format`, `format=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    /// Aligned columns with durations as `H:MM:SS` (CLI default).
    #[default]
    Table,
    /// Comma-separated values with a header row; seconds as numbers.
    Csv,
    /// The JSON document (HTTP default).
    Json,
}

impl OutputFormat {
    /// The name used in `--format` and `format=`.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputFormat::Table => "table",
            OutputFormat::Csv => "csv",
            OutputFormat::Json => "json",
        }
    }
}

impl fmt::Display for OutputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OutputFormat {
    type Err = String;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        match raw {
            "table" => Ok(OutputFormat::Table),
            "csv" => Ok(OutputFormat::Csv),
            "json" => Ok(OutputFormat::Json),
            other => Err(format!(
                "unknown format {}: use table, csv or json",
                crate::text::quoted(other)
            )),
        }
    }
}

/// Why rendering failed (only CSV/JSON serialization can, and only on a bug).
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// CSV writing failed.
    #[error("cannot write csv: {0}")]
    Csv(#[from] csv::Error),
    /// JSON writing failed.
    #[error("cannot write json: {0}")]
    Json(#[from] serde_json::Error),
}

/// Renders a summary.
pub fn render_summary(report: &SummaryReport, format: OutputFormat) -> Result<String, FormatError> {
    match format {
        OutputFormat::Table => Ok(summary_table(report)),
        OutputFormat::Csv => to_csv(&report.rows),
        OutputFormat::Json => Ok(serde_json::to_string_pretty(report)? + "\n"),
    }
}

/// Renders a timeline.
pub fn render_timeline(
    report: &TimelineReport,
    format: OutputFormat,
) -> Result<String, FormatError> {
    match format {
        OutputFormat::Table => Ok(timeline_table(report)),
        OutputFormat::Csv => to_csv(&report.intervals),
        OutputFormat::Json => Ok(serde_json::to_string_pretty(report)? + "\n"),
    }
}

/// CSV with a header row (written even when there are no records).
pub fn to_csv<T: Serialize + CsvHeader>(records: &[T]) -> Result<String, FormatError> {
    let mut writer = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(Vec::new());
    writer.write_record(T::HEADER)?;
    for record in records {
        writer.serialize(record)?;
    }
    let bytes = writer
        .into_inner()
        .map_err(|e| csv::Error::from(e.into_error()))?;
    // The writer only ever received UTF-8 strings.
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Parses CSV written by [`to_csv`] back into records.
pub fn from_csv<T: for<'de> Deserialize<'de>>(text: &str) -> Result<Vec<T>, FormatError> {
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let records = reader.deserialize().collect::<Result<Vec<T>, _>>()?;
    Ok(records)
}

/// The CSV header of a record type: its serde field names, in order.
pub trait CsvHeader {
    /// The column names.
    const HEADER: &'static [&'static str];
}

impl CsvHeader for SummaryRow {
    const HEADER: &'static [&'static str] = &[
        "agent",
        "name",
        "period",
        "period_start",
        "period_end",
        "period_s",
        "recorded_s",
        "logged_in_s",
        "offline_s",
        "paused_s",
        "busy_s",
        "unavailable_s",
        "available_s",
        "ringing_s",
        "on_call_s",
        "wrapup_s",
        "unknown_s",
        "calls",
        "average_call_s",
        "longest_call_s",
        "occupancy",
    ];
}

impl CsvHeader for TimelineRow {
    const HEADER: &'static [&'static str] = &[
        "agent",
        "status",
        "started_at",
        "ended_at",
        "duration_s",
        "reason",
        "extension_status",
        "destination",
    ];
}

/// `H:MM:SS` (hours can exceed 24), rounded to the second.
pub fn clock(seconds: f64) -> String {
    let total = seconds.round().max(0.0) as u64;
    format!("{}:{:02}:{:02}", total / 3600, total / 60 % 60, total % 60)
}

fn local_time(instant: &DateTime<FixedOffset>) -> String {
    instant.format("%Y-%m-%d %H:%M:%S%:z").to_string()
}

fn summary_table(report: &SummaryReport) -> String {
    let header = [
        "agent",
        "period",
        "logged in",
        "available",
        "ringing",
        "on call",
        "wrapup",
        "busy",
        "paused",
        "unavail.",
        "offline",
        "unknown",
        "calls",
        "avg call",
        "longest",
        "occupancy",
    ];
    let rows: Vec<Vec<String>> = report
        .rows
        .iter()
        .map(|row| {
            vec![
                row.agent.clone(),
                row.period.clone(),
                clock(row.logged_in_s),
                clock(row.available_s),
                clock(row.ringing_s),
                clock(row.on_call_s),
                clock(row.wrapup_s),
                clock(row.busy_s),
                clock(row.paused_s),
                clock(row.unavailable_s),
                clock(row.offline_s),
                clock(row.unknown_s),
                row.calls.to_string(),
                row.average_call_s.map_or_else(|| "-".to_owned(), clock),
                row.longest_call_s.map_or_else(|| "-".to_owned(), clock),
                row.occupancy
                    .map_or_else(|| "-".to_owned(), |o| format!("{:.1}%", o * 100.0)),
            ]
        })
        .collect();
    let title = format!(
        "Summary by {} from {} to {} ({})\n",
        report.by,
        local_time(&report.from),
        local_time(&report.to),
        report.timezone
    );
    title + &align(&header, &rows, &(2..header.len()).collect::<Vec<_>>())
}

fn timeline_table(report: &TimelineReport) -> String {
    let header = [
        "agent",
        "status",
        "started",
        "ended",
        "duration",
        "reason",
        "ext. status",
        "destination",
    ];
    let rows: Vec<Vec<String>> = report
        .intervals
        .iter()
        .map(|row| {
            vec![
                row.agent.clone(),
                row.status.to_string(),
                local_time(&row.started_at),
                row.ended_at
                    .as_ref()
                    .map_or_else(|| "(current)".to_owned(), local_time),
                clock(row.duration_s),
                row.reason.clone().unwrap_or_default(),
                row.extension_status.clone().unwrap_or_default(),
                row.destination.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let title = format!(
        "Timeline from {} to {} ({})\n",
        local_time(&report.from),
        local_time(&report.to),
        report.timezone
    );
    title + &align(&header, &rows, &[4])
}

/// Aligns columns, padding with spaces; the columns listed in
/// `right_aligned` (durations, counts) are padded on the left.
fn align(header: &[&str], rows: &[Vec<String>], right_aligned: &[usize]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (column, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if column > 0 {
                out.push_str("  ");
            }
            let pad = width.saturating_sub(cell.chars().count());
            if right_aligned.contains(&column) {
                out.extend(std::iter::repeat_n(' ', pad));
                out.push_str(cell);
            } else {
                out.push_str(cell);
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
        out
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}
