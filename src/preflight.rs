//! `pbx2mqtt check`: the same configuration loading and validation as `run`
//! (`Config::check` for `Purpose::Service`), then the database, the
//! Belfabriek API, the TRiNG API and the broker are each tried, and every
//! problem is printed, one line each. Reads only: it never creates or
//! migrates the database, polls one agent, lists one agent's queues, and
//! changes nothing.
//!
//! Exit codes (through `cli`): 2 when the configuration has problems, 1
//! when a probe failed, 0 when everything is fine.

use std::path::Path;
use std::time::Duration;

use anyhow::anyhow;

use crate::belfabriek::BelfabriekClient;
use crate::config::{Config, ConfigError, Problem, Purpose};
use crate::store::{redact_url, Store, StoreError};
use crate::text::count;
use crate::tring::TringClient;

/// How long the broker check waits for CONNACK.
const BROKER_TIMEOUT: Duration = Duration::from_secs(5);

/// Checks the configuration named by `file` (or found as `run` finds it),
/// then every upstream; prints one line per finding.
pub async fn run(file: Option<&Path>) -> anyhow::Result<()> {
    let checked = Config::check(file, Purpose::Service)?;
    let config = &checked.config;
    match checked.file.path() {
        Some(path) => println!("ok    configuration file {}", path.display()),
        None => {
            if let Some(note) = checked.file.not_found_note() {
                println!("warn  {note}");
            }
        }
    }
    for problem in &checked.problems {
        println!("FAIL  configuration: {problem}");
    }
    for warning in &checked.warnings {
        if !warning.starts_with("no configuration file found") {
            println!("warn  {warning}");
        }
    }
    if checked.problems.is_empty() {
        println!(
            "ok    configuration ({})",
            count(config.agents.len(), "agent")
        );
    }
    // A probe whose settings have problems is not tried with the defaults
    // that replaced them.
    let broken = |section: &str| broken_section(&checked.problems, section);
    let results = [
        (
            "database",
            skip_or(broken("database"), check_database(config)).await,
        ),
        (
            "belfabriek",
            skip_or(broken("belfabriek"), check_belfabriek(config)).await,
        ),
        ("tring", skip_or(broken("tring"), check_tring(config)).await),
        ("mqtt", skip_or(broken("mqtt"), check_broker(config)).await),
    ];
    let mut failed = 0;
    for (name, result) in results {
        match result {
            Probe::Ok(detail) => println!("ok    {name}: {detail}"),
            Probe::Skipped(why) => println!("skip  {name}: {why}"),
            Probe::Failed(error) => {
                failed += 1;
                println!("FAIL  {name}: {error:#}");
            }
        }
    }
    if !checked.problems.is_empty() {
        return Err(ConfigError::Reported {
            count: checked.problems.len(),
        }
        .into());
    }
    if failed > 0 {
        return Err(anyhow!("{} failed", count(failed, "check")));
    }
    Ok(())
}

/// What one probe found.
enum Probe {
    /// It worked: what was seen.
    Ok(String),
    /// Not tried: why.
    Skipped(String),
    /// It failed.
    Failed(anyhow::Error),
}

fn broken_section(problems: &[Problem], section: &str) -> Option<String> {
    let keys: Vec<String> = problems
        .iter()
        .map(Problem::key)
        .filter(|key| key.split('.').next() == Some(section))
        .collect();
    (!keys.is_empty()).then(|| format!("not tried: {} must be fixed first", keys.join(", ")))
}

async fn skip_or(
    broken: Option<String>,
    probe: impl std::future::Future<Output = anyhow::Result<Probe>>,
) -> Probe {
    if let Some(why) = broken {
        return Probe::Skipped(why);
    }
    probe.await.unwrap_or_else(Probe::Failed)
}

/// Opens the database read-only; a database that does not exist yet is
/// fine (`run` creates it), and is not created here.
async fn check_database(config: &Config) -> anyhow::Result<Probe> {
    let url = redact_url(&config.database.url);
    match Store::open_existing(&config.database.url).await {
        Ok(store) => {
            let last_seq = store.last_seq().await;
            let backend = store.backend();
            store.close().await;
            Ok(Probe::Ok(format!(
                "{backend} at {url} (last seq {})",
                last_seq?
            )))
        }
        Err(StoreError::Missing { .. }) => Ok(Probe::Ok(format!(
            "{url} holds no history yet; `pbx2mqtt run` (or `pbx2mqtt migrate`) creates it"
        ))),
        Err(error) => Err(error.into()),
    }
}

async fn check_belfabriek(config: &Config) -> anyhow::Result<Probe> {
    let Some(agent) = config.agents.first() else {
        return Ok(Probe::Skipped("no agents configured".into()));
    };
    let client = BelfabriekClient::new(&config.belfabriek, config.account_pin(), 1)?;
    let reading = client.poll(agent).await?;
    Ok(Probe::Ok(format!(
        "polled {} (available={})",
        agent.id, reading.available
    )))
}

async fn check_tring(config: &Config) -> anyhow::Result<Probe> {
    let Some((agent, extension)) = config
        .agents
        .iter()
        .find_map(|agent| agent.queue_extension.as_ref().map(|ext| (agent, ext)))
    else {
        return Ok(Probe::Skipped("no agent has a queue_extension".into()));
    };
    let client = TringClient::new(&config.tring, config.tring_key())?;
    let queues = client.agent_queues(extension).await?;
    Ok(Probe::Ok(format!(
        "{} is in {}",
        agent.id,
        count(queues.len(), "queue")
    )))
}

async fn check_broker(config: &Config) -> anyhow::Result<Probe> {
    // A separate client id, so the check does not take over a running
    // bridge's session, and no last will, so it never marks it offline.
    crate::mqtt::probe::probe(&config.mqtt, BROKER_TIMEOUT).await?;
    Ok(Probe::Ok(format!("connected to {}", config.mqtt.url)))
}
