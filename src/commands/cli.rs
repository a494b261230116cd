//! The operator commands: `pbx2mqtt queue add|remove|clean|list`,
//! `pbx2mqtt agent queues` and `pbx2mqtt audit`.
//!
//! Queue and agent commands are turned into the same (topic, payload) an MQTT
//! request would carry and go through the same parser ([`parse_request`]),
//! so the CLI cannot do anything MQTT may not (allowed queues, `clean`
//! switch, plain numbers). They call TRiNG directly, print the response in
//! the MQTT response shape, and write an audit row with the topic
//! `cli/...`. This module owns argument definitions and printing only.

use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, SecondsFormat, Utc};

use super::audit::{self, Audited};
use super::execute::execute;
use super::parse::{parse_request, CommandRules};
use super::{CommandData, CommandError, Response};
use crate::config::Config;
use crate::mqtt::topics::RequestTopic;
#[cfg(test)]
use crate::store::AuditOutcome;
use crate::store::{AuditEntry, AuditRecord, Store};
use crate::tring::TringClient;

/// Who to add or remove: a configured agent or a raw extension.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
#[group(required = true, multiple = false)]
pub struct MemberArgs {
    /// A configured agent id (its `queue_extension` is used).
    #[arg(long)]
    pub agent: Option<String>,
    /// A TRiNG extension number, or a custom destination with `--custom`.
    #[arg(long)]
    pub extension: Option<String>,
}

/// `pbx2mqtt queue ...`: manage TRiNG call queues.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum QueueCommand {
    /// Add an agent or extension to a queue (nothing is sent when it is
    /// already a member).
    Add {
        /// The queue number.
        queue: String,
        /// The member.
        #[command(flatten)]
        member: MemberArgs,
        /// The extension is a custom destination (e.g. a mobile number
        /// created beforehand in the PBX): `type=CU`.
        #[arg(long)]
        custom: bool,
    },
    /// Remove an agent or extension from a queue.
    Remove {
        /// The queue number.
        queue: String,
        /// The member.
        #[command(flatten)]
        member: MemberArgs,
    },
    /// Remove every member of a queue (needs `commands.allow_clean`).
    Clean {
        /// The queue number.
        queue: String,
    },
    /// List the members of a queue.
    List {
        /// The queue number.
        queue: String,
    },
}

/// `pbx2mqtt agent ...`: agent information from TRiNG.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum AgentCommand {
    /// List the queues an agent (configured id) or extension is a member of.
    Queues {
        /// A configured agent id or an extension number.
        agent: String,
    },
}

/// Output format of `pbx2mqtt audit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuditFormat {
    /// Aligned columns for people.
    Table,
    /// A JSON array of rows.
    Json,
}

/// The start of the `--since` range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// An absolute time.
    At(DateTime<Utc>),
    /// This long before now.
    Ago(Duration),
}

impl Since {
    /// Parses RFC 3339 (`2026-11-22T09:00:00Z`) or a duration (`1h`, `7d`).
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        if let Ok(at) = DateTime::parse_from_rfc3339(raw) {
            return Ok(Since::At(at.with_timezone(&Utc)));
        }
        humantime::parse_duration(raw).map(Since::Ago).map_err(|_| {
            format!("{raw:?} is neither an RFC 3339 time (2026-11-22T09:00:00Z) nor a duration (1h, 30m, 7d)")
        })
    }

    /// The absolute start, relative to `now`.
    pub fn resolve(self, now: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Since::At(at) => at,
            Since::Ago(ago) => chrono::Duration::from_std(ago)
                .ok()
                .and_then(|ago| now.checked_sub_signed(ago))
                .unwrap_or(DateTime::<Utc>::MIN_UTC),
        }
    }
}

/// `pbx2mqtt audit`: the command audit log, newest first.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct AuditArgs {
    /// Show commands received since this time: RFC 3339
    /// (`2026-11-22T09:00:00Z`) or a duration ago (`1h`, `30m`, `7d`).
    #[arg(long, default_value = "24h", value_parser = Since::parse)]
    pub since: Since,
    /// Show at most this many rows.
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// Output format.
    #[arg(long, value_enum, default_value_t = AuditFormat::Table)]
    pub format: AuditFormat,
}

impl QueueCommand {
    /// The request an MQTT client would send for this command.
    pub fn request(&self) -> (RequestTopic, Vec<u8>) {
        let queue_topic = |queue: &String, action: &str| RequestTopic::Queue {
            queue: queue.clone(),
            action: action.to_owned(),
        };
        match self {
            QueueCommand::Add {
                queue,
                member,
                custom,
            } => (queue_topic(queue, "add"), member_payload(member, *custom)),
            QueueCommand::Remove { queue, member } => {
                (queue_topic(queue, "remove"), member_payload(member, false))
            }
            QueueCommand::Clean { queue } => (queue_topic(queue, "clean"), b"{}".to_vec()),
            QueueCommand::List { queue } => (queue_topic(queue, "list"), b"{}".to_vec()),
        }
    }

    /// Validates, calls TRiNG, prints the response JSON and audits it.
    /// Fails (non-zero exit) when the response is an error.
    pub async fn run(self, config: &Config) -> anyhow::Result<()> {
        let (topic, payload) = self.request();
        run_request(config, topic, payload).await
    }
}

impl AgentCommand {
    /// The request an MQTT client would send for this command.
    pub fn request(&self) -> (RequestTopic, Vec<u8>) {
        match self {
            AgentCommand::Queues { agent } => (
                RequestTopic::AgentQueues {
                    agent: agent.clone(),
                },
                Vec::new(),
            ),
        }
    }

    /// Validates, calls TRiNG, prints the response JSON and audits it.
    pub async fn run(self, config: &Config) -> anyhow::Result<()> {
        let (topic, payload) = self.request();
        run_request(config, topic, payload).await
    }
}

impl AuditArgs {
    /// Prints the audit rows since `--since`, newest first.
    pub async fn run(self, config: &Config) -> anyhow::Result<()> {
        let store = Store::open_existing(&config.database.url)
            .await
            .context("cannot open the database for the audit log")?;
        let since = self.since.resolve(Utc::now());
        let rows = store
            .audit_since(since, self.limit)
            .await
            .context("cannot read the audit log")?;
        match self.format {
            AuditFormat::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
            AuditFormat::Table => print!("{}", render_table(&rows)),
        }
        Ok(())
    }
}

/// `{"agent":..}` or `{"extension":..}`, plus `"type":"custom"`.
fn member_payload(member: &MemberArgs, custom: bool) -> Vec<u8> {
    let mut object = serde_json::Map::new();
    if let Some(agent) = &member.agent {
        object.insert("agent".into(), agent.clone().into());
    }
    if let Some(extension) = &member.extension {
        object.insert("extension".into(), extension.clone().into());
    }
    if custom {
        object.insert("type".into(), "custom".into());
    }
    serde_json::Value::Object(object).to_string().into_bytes()
}

/// The CLI's pseudo topic for the audit table: `cli/queue/500/add`.
fn cli_topic(topic: &RequestTopic) -> String {
    match topic {
        RequestTopic::Queue { queue, action } => format!("cli/queue/{queue}/{action}"),
        RequestTopic::AgentQueues { agent } => format!("cli/agent/{agent}/queues"),
    }
}

/// Parse, execute, print, audit.
async fn run_request(config: &Config, topic: RequestTopic, payload: Vec<u8>) -> anyhow::Result<()> {
    let received_at = Utc::now();
    let parsed = parse_request(&topic, &payload, false, &CommandRules::from_config(config));
    let (outcome, upstream_latency): (Result<CommandData, CommandError>, Option<Duration>) =
        match &parsed.outcome {
            Ok(command) => {
                let client = TringClient::new(&config.tring, config.tring_key())
                    .context("cannot create the TRiNG client")?;
                let execution = execute(&client, command).await;
                (execution.outcome, Some(execution.upstream_latency))
            }
            Err(error) => (Err(error.clone()), None),
        };
    let outcome = outcome.map_err(|error| error.without_key(&config.tring_key()));
    let response = Response::new(&outcome, parsed.transaction.clone());
    println!("{}", serde_json::to_string_pretty(&response)?);

    let error = outcome.as_ref().err();
    let entry = audit::entry(&Audited {
        received_at,
        topic: &cli_topic(&topic),
        request_topic: &topic,
        payload: &payload,
        parsed: &parsed,
        outcome: &outcome,
        upstream_latency,
    });
    // The audit row is best effort here: the operator has the answer already.
    match Store::open(&config.database.url).await {
        Ok(store) => {
            if let Err(error) = store.record_audit(&entry).await {
                tracing::warn!(%error, "cannot write the command audit row");
            }
        }
        Err(error) => tracing::warn!(%error, "cannot open the database to audit this command"),
    }
    match error {
        Some(error) => Err(anyhow::anyhow!("{} ({})", error.message, error.code)),
        None => Ok(()),
    }
}

/// The audit rows as aligned text columns, with a header.
pub fn render_table(rows: &[AuditRecord]) -> String {
    let header = [
        "RECEIVED",
        "OUTCOME",
        "CODE",
        "ACTION",
        "QUEUE",
        "MEMBER",
        "LATENCY_MS",
        "TRANSACTION",
        "TOPIC",
    ];
    let dash = || "-".to_owned();
    let lines: Vec<[String; 9]> = rows
        .iter()
        .map(|AuditRecord { entry, .. }: &AuditRecord| {
            let entry: &AuditEntry = entry;
            [
                entry
                    .received_at
                    .to_rfc3339_opts(SecondsFormat::Millis, true),
                entry.outcome.as_str().to_owned(),
                entry.error_code.clone().unwrap_or_else(dash),
                entry.action.clone(),
                entry.queue.clone().unwrap_or_else(dash),
                entry
                    .agent
                    .clone()
                    .or_else(|| entry.extension.clone())
                    .unwrap_or_else(dash),
                entry
                    .upstream_latency_ms
                    .map_or_else(dash, |ms| ms.to_string()),
                entry.transaction.clone().unwrap_or_else(dash),
                entry.topic.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for line in &lines {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut push_line = |cells: &[&str]| {
        let mut line = String::new();
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    };
    push_line(&header);
    for line in &lines {
        let cells: Vec<&str> = line.iter().map(String::as_str).collect();
        push_line(&cells);
    }
    if rows.is_empty() {
        out.push_str("(no commands in this period)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use clap::Parser;

    #[derive(Debug, clap::Parser)]
    struct TestCli {
        #[command(subcommand)]
        command: TestCommand,
    }

    #[derive(Debug, clap::Subcommand)]
    enum TestCommand {
        #[command(subcommand)]
        Queue(QueueCommand),
        #[command(subcommand)]
        Agent(AgentCommand),
        Audit(AuditArgs),
    }

    fn parse(args: &str) -> Result<TestCommand, String> {
        TestCli::try_parse_from(std::iter::once("pbx2mqtt").chain(args.split_whitespace()))
            .map(|cli| cli.command)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn queue_commands_become_mqtt_requests() {
        let check = |args: &str, topic: RequestTopic, payload: &str| {
            let (actual_topic, actual_payload) = match parse(args).unwrap() {
                TestCommand::Queue(command) => command.request(),
                TestCommand::Agent(command) => command.request(),
                TestCommand::Audit(_) => panic!("{args}"),
            };
            assert_eq!(actual_topic, topic, "{args}");
            assert_eq!(
                String::from_utf8(actual_payload).unwrap(),
                payload,
                "{args}"
            );
        };
        let queue = |q: &str, a: &str| RequestTopic::Queue {
            queue: q.into(),
            action: a.into(),
        };
        check(
            "queue add 500 --agent alice",
            queue("500", "add"),
            r#"{"agent":"alice"}"#,
        );
        check(
            "queue add 500 --extension 0612345678 --custom",
            queue("500", "add"),
            r#"{"extension":"0612345678","type":"custom"}"#,
        );
        check(
            "queue remove 500 --extension 201",
            queue("500", "remove"),
            r#"{"extension":"201"}"#,
        );
        check("queue clean 500", queue("500", "clean"), "{}");
        check("queue list 500", queue("500", "list"), "{}");
        check(
            "agent queues alice",
            RequestTopic::AgentQueues {
                agent: "alice".into(),
            },
            "",
        );
        // Injection attempts are passed through to the parser, which refuses them.
        check(
            "queue list 500&action=clean",
            queue("500&action=clean", "list"),
            "{}",
        );
    }

    #[test]
    fn member_is_required_and_exclusive() {
        assert!(parse("queue add 500").is_err());
        assert!(parse("queue add 500 --agent a --extension 1").is_err());
    }

    #[test]
    fn cli_requests_get_the_same_validation() {
        let config = Config::from_toml_str(
            "[commands]\nallowed_queues = [500]\n[[agents]]\nid = \"alice\"\nextension_id = 1\nqueue_extension = 201",
        )
        .unwrap();
        let rules = CommandRules::from_config(&config);
        let check = |args: &str, code: Option<super::super::ErrorCode>| {
            let (topic, payload) = match parse(args).unwrap() {
                TestCommand::Queue(command) => command.request(),
                TestCommand::Agent(command) => command.request(),
                TestCommand::Audit(_) => panic!("{args}"),
            };
            let parsed = parse_request(&topic, &payload, false, &rules);
            assert_eq!(parsed.outcome.err().map(|e| e.code), code, "{args}");
        };
        use super::super::ErrorCode::*;
        check("queue add 500 --agent alice", None);
        check("queue add 501 --agent alice", Some(QueueNotAllowed));
        check("queue add 500 --agent mallory", Some(UnknownAgent));
        check(
            "queue add 500 --extension 201&action=clean",
            Some(InvalidExtension),
        );
        check("queue clean 500", Some(CleanNotAllowed));
        check("queue list ../", Some(InvalidQueue));
        check("agent queues 201", None);
        check("agent queues mallory", Some(UnknownAgent));
    }

    #[test]
    fn since_accepts_times_and_durations() {
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap();
        let check = |raw: &str, expected: Option<DateTime<Utc>>| {
            assert_eq!(
                Since::parse(raw).ok().map(|s| s.resolve(now)),
                expected,
                "{raw}"
            );
        };
        check(
            "1h",
            Some(Utc.with_ymd_and_hms(2026, 11, 22, 11, 0, 0).unwrap()),
        );
        check(
            "2d",
            Some(Utc.with_ymd_and_hms(2026, 11, 20, 12, 0, 0).unwrap()),
        );
        check(
            "2026-11-22T09:00:00+01:00",
            Some(Utc.with_ymd_and_hms(2026, 11, 22, 8, 0, 0).unwrap()),
        );
        check("yesterday", None);
        check("100000000y", Some(DateTime::<Utc>::MIN_UTC));
        let args = match parse("audit --since 30m --limit 5 --format json").unwrap() {
            TestCommand::Audit(args) => args,
            other => panic!("{other:?}"),
        };
        assert_eq!(args.limit, 5);
        assert_eq!(args.format, AuditFormat::Json);
        assert_eq!(args.since, Since::Ago(Duration::from_secs(1800)));
        assert!(parse("audit --since soon")
            .unwrap_err()
            .contains("RFC 3339"));
    }

    #[test]
    fn table_lists_rows_aligned() {
        let entry = AuditEntry {
            received_at: Utc.with_ymd_and_hms(2026, 11, 22, 9, 41, 7).unwrap(),
            topic: "pbx2mqtt/request/queue/500/add".into(),
            request: "201".into(),
            action: "add".into(),
            queue: Some("500".into()),
            agent: None,
            extension: Some("201".into()),
            outcome: AuditOutcome::Error,
            error_code: Some("upstream_timeout".into()),
            error: Some("slow".into()),
            upstream_latency_ms: Some(1000),
            transaction: Some("\"t1\"".into()),
        };
        let table = render_table(&[AuditRecord { id: 1, entry }]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2, "{table}");
        assert!(lines[0].starts_with("RECEIVED "), "{table}");
        assert!(
            lines[1].starts_with("2026-11-22T09:41:07.000Z  error    upstream_timeout  add "),
            "{table}"
        );
        assert_eq!(
            lines[0].find("TOPIC"),
            lines[1].find("pbx2mqtt/"),
            "{table}"
        );
        assert!(render_table(&[]).contains("no commands"));
    }
}
