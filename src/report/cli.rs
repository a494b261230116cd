//! The `pbx2mqtt report` subcommand: parses the flags into report requests,
//! opens the history read-only in spirit (it never writes), prints the report
//! to stdout.

use chrono::Utc;
use clap::{Args, Subcommand};

use super::format::{render_summary, render_timeline, OutputFormat};
use super::period::{Granularity, RangeBound, ReportRange};
use super::{ReportError, ReportSettings, SummaryRequest, TimelineRequest};
use crate::config::Config;
use crate::history::Store;
use crate::model::AgentId;

/// `pbx2mqtt report ...`
#[derive(Debug, Clone, Subcommand)]
pub enum ReportCommand {
    /// Per agent and period: time in each status, logged-in time, calls,
    /// average and longest call, occupancy.
    Summary(SummaryArgs),
    /// The status intervals of one or more agents.
    Timeline(TimelineArgs),
}

/// Flags of `report summary`.
#[derive(Debug, Clone, Args)]
pub struct SummaryArgs {
    /// First day (YYYY-MM-DD, local) or instant (RFC 3339); default today.
    #[arg(long, value_parser = parse_bound)]
    pub from: Option<RangeBound>,
    /// Last day, inclusive (YYYY-MM-DD, local), or end instant, exclusive
    /// (RFC 3339); default today.
    #[arg(long, value_parser = parse_bound)]
    pub to: Option<RangeBound>,
    /// Only this agent (repeat for several); default every configured agent
    /// and every agent with history in the range.
    #[arg(long = "agent", value_name = "ID")]
    pub agents: Vec<AgentId>,
    /// Period length.
    #[arg(long, value_enum, default_value_t = Granularity::Day)]
    pub by: Granularity,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,
}

/// Flags of `report timeline`.
#[derive(Debug, Clone, Args)]
pub struct TimelineArgs {
    /// The agent (repeat for several).
    #[arg(long = "agent", value_name = "ID", required = true)]
    pub agents: Vec<AgentId>,
    /// First day (YYYY-MM-DD, local) or instant (RFC 3339); default today.
    #[arg(long, value_parser = parse_bound)]
    pub from: Option<RangeBound>,
    /// Last day, inclusive, or end instant, exclusive; default today.
    #[arg(long, value_parser = parse_bound)]
    pub to: Option<RangeBound>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,
}

fn parse_bound(raw: &str) -> Result<RangeBound, String> {
    raw.parse()
        .map_err(|e: super::period::RangeError| e.to_string())
}

impl ReportCommand {
    /// Runs the report against `database.url` and prints it to stdout.
    pub async fn run(self, config: &Config) -> anyhow::Result<()> {
        use anyhow::Context as _;
        let settings = ReportSettings::from_config(&config.report, &config.agents);
        let store = Store::open(&config.database.url)
            .await
            .context("cannot open the history database")?;
        let now = Utc::now();
        let output = match self {
            ReportCommand::Summary(args) => {
                let request = SummaryRequest {
                    range: resolve_range(args.from, args.to, &settings, now)?,
                    by: args.by,
                    agents: args.agents,
                };
                let report = super::summary(&store, &request, &settings, now).await?;
                render_summary(&report, args.format)?
            }
            ReportCommand::Timeline(args) => {
                let request = TimelineRequest {
                    range: resolve_range(args.from, args.to, &settings, now)?,
                    agents: args.agents,
                };
                let report = super::timeline(&store, &request, &settings, now).await?;
                render_timeline(&report, args.format)?
            }
        };
        store.close().await;
        print!("{output}");
        Ok(())
    }
}

/// Resolves `--from`/`--to`, naming the flag in the error.
pub fn resolve_range(
    from: Option<RangeBound>,
    to: Option<RangeBound>,
    settings: &ReportSettings,
    now: chrono::DateTime<Utc>,
) -> Result<ReportRange, ReportError> {
    ReportRange::resolve(from, to, settings.tz, now)
        .map_err(|error| ReportError::invalid("from", error))
}
