//! The preflight checks behind `pbx2mqtt check`: validates the configuration
//! (already done by loading it), then reaches the database, the Belfabriek
//! API, the TRiNG API and the broker, and prints one line per check. Reads
//! only: it polls one agent and lists one agent's queues, and changes nothing.

use std::time::Duration;

use anyhow::anyhow;

use crate::belfabriek::BelfabriekClient;
use crate::config::Config;
use crate::store::{redact_url, Store};
use crate::tring::TringClient;

/// How long the broker check waits for CONNACK.
const BROKER_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs every check; fails when any failed.
pub async fn run(config: &Config) -> anyhow::Result<()> {
    println!("ok    configuration ({} agents)", config.agents.len());
    let results = [
        ("database", check_database(config).await),
        ("belfabriek", check_belfabriek(config).await),
        ("tring", check_tring(config).await),
        ("mqtt", check_broker(config).await),
    ];
    let mut failed = 0;
    for (name, result) in results {
        match result {
            Ok(detail) => println!("ok    {name}: {detail}"),
            Err(error) => {
                failed += 1;
                println!("FAIL  {name}: {error:#}");
            }
        }
    }
    if failed > 0 {
        return Err(anyhow!("{failed} check(s) failed"));
    }
    Ok(())
}

async fn check_database(config: &Config) -> anyhow::Result<String> {
    let store = Store::open(&config.database.url).await?;
    let last_seq = store.last_seq().await?;
    let backend = store.backend();
    store.close().await;
    Ok(format!(
        "{backend} at {} (last seq {last_seq})",
        redact_url(&config.database.url)
    ))
}

async fn check_belfabriek(config: &Config) -> anyhow::Result<String> {
    let Some(agent) = config.agents.first() else {
        return Ok("no agents configured; skipped".into());
    };
    if config.account_pin().is_empty() {
        return Err(anyhow!("belfabriek.account_pin is not set"));
    }
    let client = BelfabriekClient::new(&config.belfabriek, config.account_pin(), 1)?;
    let reading = client.poll(agent).await?;
    Ok(format!(
        "polled {} (available={})",
        agent.id, reading.available
    ))
}

async fn check_tring(config: &Config) -> anyhow::Result<String> {
    let Some((agent, extension)) = config
        .agents
        .iter()
        .find_map(|agent| agent.queue_extension.as_ref().map(|ext| (agent, ext)))
    else {
        return Ok("no agent has a queue_extension; skipped".into());
    };
    if config.tring_key().is_empty() {
        return Err(anyhow!("tring.key is not set"));
    }
    let client = TringClient::new(&config.tring, config.tring_key())?;
    let queues = client.agent_queues(extension).await?;
    Ok(format!("{} is in {} queue(s)", agent.id, queues.len()))
}

async fn check_broker(config: &Config) -> anyhow::Result<String> {
    // A separate client id, so the check does not take over a running
    // bridge's session, and no last will, so it never marks it offline.
    crate::mqtt::probe::probe(&config.mqtt, BROKER_TIMEOUT).await?;
    Ok(format!("connected to {}", config.mqtt.url))
}
