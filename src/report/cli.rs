//! The `pbx2mqtt report` subcommand: parses the flags into report requests,
//! opens the history read-only in spirit (it never writes), prints the report
//! to stdout.

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};

use super::format::{render_summary, render_timeline, OutputFormat};
use super::period::{Granularity, RangeBound, ReportRange};
use super::{ReportError, ReportSettings, SummaryRequest, TimelineRequest};
use crate::config::Config;
use crate::model::AgentId;
use crate::store::Store;

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
        let output = self.output(config, Utc::now()).await?;
        print!("{output}");
        Ok(())
    }

    /// The report text `run` prints, with open intervals counted up to `now`.
    pub async fn output(self, config: &Config, now: DateTime<Utc>) -> anyhow::Result<String> {
        let settings = ReportSettings::from_config(&config.report, &config.agents);
        // Reports never create, migrate or write a database.
        let store = Store::open_existing(&config.database.url)
            .await
            .context("cannot open the history database (database.url)")?;
        // The same bounds as over HTTP (cells, rows, time); a request over
        // one exits with code 2 (see `cli::main`).
        let timeout = settings.limits.timeout;
        let output = match tokio::time::timeout(timeout, self.render(&store, &settings, now)).await
        {
            Ok(output) => output,
            Err(_) => Err(ReportError::TimedOut(timeout).into()),
        };
        store.close().await;
        output
    }

    async fn render(
        self,
        store: &Store,
        settings: &ReportSettings,
        now: DateTime<Utc>,
    ) -> anyhow::Result<String> {
        Ok(match self {
            ReportCommand::Summary(args) => {
                let request = SummaryRequest {
                    range: resolve_range(args.from, args.to, settings, now)?,
                    by: args.by,
                    agents: args.agents,
                };
                let report = super::summary(store, &request, settings, now).await?;
                render_summary(&report, args.format)?
            }
            ReportCommand::Timeline(args) => {
                let request = TimelineRequest {
                    range: resolve_range(args.from, args.to, settings, now)?,
                    agents: args.agents,
                };
                let report = super::timeline(store, &request, settings, now).await?;
                render_timeline(&report, args.format)?
            }
        })
    }
}

/// Resolves `--from`/`--to`, naming the flag in the error.
pub fn resolve_range(
    from: Option<RangeBound>,
    to: Option<RangeBound>,
    settings: &ReportSettings,
    now: DateTime<Utc>,
) -> Result<ReportRange, ReportError> {
    ReportRange::resolve(from, to, settings.tz, now)
        .map_err(|error| ReportError::invalid("from", error))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::report::format::from_csv;
    use crate::report::sql_tests::insert;
    use crate::report::tests::{at, intervals, SPRING_FORWARD};
    use crate::report::SummaryRow;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        report: ReportCommand,
    }

    fn parse(line: &str) -> Result<ReportCommand, clap::Error> {
        Cli::try_parse_from(line.split_whitespace()).map(|cli| cli.report)
    }

    #[test]
    fn flags_parse_with_defaults_and_errors_name_the_flag() {
        let ReportCommand::Summary(args) = parse("report summary").unwrap() else {
            panic!("expected summary");
        };
        assert_eq!(
            (args.from, args.to, args.by, args.format),
            (None, None, Granularity::Day, OutputFormat::Table)
        );
        assert!(args.agents.is_empty());
        let ReportCommand::Summary(args) = parse(
            "report summary --from 2026-03-01 --to 2026-03-29T12:00:00+02:00 --agent alice --agent bob --by week --format csv",
        )
        .unwrap() else {
            panic!("expected summary");
        };
        assert_eq!(
            args.from,
            Some(RangeBound::Date("2026-03-01".parse().unwrap()))
        );
        assert!(matches!(args.to, Some(RangeBound::Instant(_))));
        assert_eq!(args.agents.len(), 2);
        assert_eq!(
            (args.by, args.format),
            (Granularity::Week, OutputFormat::Csv)
        );
        for (line, flag) in [
            ("report summary --from yesterday", "--from"),
            ("report summary --by year", "--by"),
            ("report summary --agent a/b", "--agent"),
            ("report summary --format xml", "--format"),
            ("report timeline --from 2026-03-01", "--agent"),
        ] {
            let error = parse(line).unwrap_err().to_string();
            assert!(error.contains(flag), "{line}: {error}");
        }
    }

    #[tokio::test]
    async fn the_command_prints_the_report_from_the_configured_database() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("history.db").display());
        let store = Store::open(&url).await.unwrap();
        insert(&store, &intervals(SPRING_FORWARD)).await;
        store.close().await;
        let config = Config::from_toml_str(&format!(
            "[database]\nurl = {url:?}\n[[agents]]\nid = \"alice\"\nname = \"Alice A.\"\nextension_id = 1"
        ))
        .unwrap();
        let now = at("2026-11-22T10:00:00Z");
        let command =
            parse("report summary --from 2026-03-29 --to 2026-03-29 --format csv").unwrap();
        let rows: Vec<SummaryRow> = from_csv(&command.output(&config, now).await.unwrap()).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].name.as_str(), rows[0].period_s, rows[0].calls),
            ("Alice A.", 82_800.0, 1)
        );
        let command =
            parse("report timeline --agent alice --from 2026-03-29 --to 2026-03-29").unwrap();
        let table = command.output(&config, now).await.unwrap();
        assert!(
            table.starts_with(
                "Timeline from 2026-03-29 00:00:00+01:00 to 2026-03-30 00:00:00+02:00"
            ),
            "{table}"
        );
        assert_eq!(table.lines().count(), 2 + 7, "{table}");
        let command = parse("report summary --from 2026-03-30 --to 2026-03-29").unwrap();
        let error = command.output(&config, now).await.unwrap_err().to_string();
        assert!(error.contains("`from`"), "{error}");
    }
}
