//! History write throughput with the bridge stopped: a commit probe of the
//! disk, then `bench_record` batches on SQLite (and PostgreSQL when
//! configured).

use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use pbx2mqtt::history::BATCH_MAX;
use pbx2mqtt::model::{AgentId, Status};
use pbx2mqtt::status::unknown_state;
use pbx2mqtt::store::{Store, StoreError};

use crate::settings::Settings;
use crate::stats::{percentile, thousands};
use crate::table::{progress, Report, Row};
use crate::targets::TARGET_HISTORY_PER_SECOND;

/// Times single-row commits with the store's own settings (WAL,
/// synchronous=FULL) on the disk the bridge's history uses: the floor under
/// every transition's latency, since an event is published only after its
/// commit.
pub async fn commit_probe(dir: &Path, report: &mut Report) -> anyhow::Result<()> {
    const COMMITS: usize = 40;
    let url = format!("sqlite://{}", dir.join("commit-probe.db").display());
    let store = Store::open(&url)
        .await
        .context("cannot open the commit probe store")?;
    let mut commits = Vec::with_capacity(COMMITS);
    for _ in 0..COMMITS {
        let elapsed = bench_record(&store, 1, 1)
            .await
            .context("bench_record failed in the commit probe")?;
        commits.push(elapsed.as_micros() as i64);
    }
    store.close().await;
    commits.sort_unstable();
    let ms = |fraction| percentile(&commits, fraction).map_or(0.0, |micros| micros as f64 / 1000.0);
    report.push(Row::info(
        "SQLite one-row commit on the data disk (fsync), p50 / p99",
        format!("{:.2} / {:.2} ms ({})", ms(0.5), ms(0.99), dir.display()),
        Some(ms(0.5)),
        "ms",
    ));
    Ok(())
}

pub async fn history(settings: &Settings, dir: &Path, report: &mut Report) -> anyhow::Result<()> {
    let agents = settings.agents.max(1) as usize;
    let count = settings.history_intervals;
    progress(format!(
        "history: {count} intervals for {agents} agents on SQLite"
    ));
    let url = format!("sqlite://{}", dir.join("history-bench.db").display());
    let store = Store::open(&url)
        .await
        .context("cannot open the SQLite bench store")?;
    let elapsed = bench_record(&store, agents, count)
        .await
        .context("bench_record failed on SQLite")?;
    store.close().await;
    history_row(report, "SQLite (WAL, synchronous=FULL)", count, elapsed);

    match std::env::var("PBX2MQTT_TEST_POSTGRES_URL") {
        Ok(server) if !server.is_empty() => {
            progress(format!(
                "history: {count} intervals for {agents} agents on PostgreSQL"
            ));
            let elapsed = history_postgres(&server, agents, count).await?;
            history_row(report, "PostgreSQL", count, elapsed);
        }
        _ => report
            .notes
            .push("PostgreSQL history skipped: PBX2MQTT_TEST_POSTGRES_URL is not set".into()),
    }
    Ok(())
}

pub fn history_row(report: &mut Report, backend: &str, count: usize, elapsed: Duration) {
    let per_second = count as f64 / elapsed.as_secs_f64().max(1e-9);
    report.push(Row::check(
        &format!("history writes, {backend}"),
        format!(
            "{} intervals/s ({count} in {:.2} s)",
            thousands(per_second),
            elapsed.as_secs_f64()
        ),
        Some(per_second),
        "1/s",
        &format!("≥ {}", thousands(TARGET_HISTORY_PER_SECOND)),
        per_second >= TARGET_HISTORY_PER_SECOND,
    ));
}

/// Runs the history bench in a fresh PostgreSQL database, dropped after.
pub async fn history_postgres(
    server: &str,
    agents: usize,
    count: usize,
) -> anyhow::Result<Duration> {
    let name = format!("pbx2mqtt_bench_{:016x}", rand::random::<u64>());
    let admin = sqlx::PgPool::connect(server)
        .await
        .context("cannot connect to PBX2MQTT_TEST_POSTGRES_URL")?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .context("cannot create the bench database")?;
    let mut url = url::Url::parse(server).context("PBX2MQTT_TEST_POSTGRES_URL is not a URL")?;
    url.set_path(&format!("/{name}"));
    let outcome = async {
        let store = Store::open(url.as_str())
            .await
            .context("cannot open the PostgreSQL bench store")?;
        let elapsed = bench_record(&store, agents, count).await;
        store.close().await;
        elapsed.context("bench_record failed on PostgreSQL")
    }
    .await;
    if let Err(error) = sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
        .execute(&admin)
        .await
    {
        eprintln!("warning: could not drop the bench database {name}: {error}");
    }
    admin.close().await;
    outcome
}

/// Records `count` synthetic transitions for `agents` agents in batches of
/// the history writer's size, as the writer would, and returns how long the
/// commits took. Seqs continue from the stored `last_seq`.
async fn bench_record(store: &Store, agents: usize, count: usize) -> Result<Duration, StoreError> {
    let cycle = [
        Status::Available,
        Status::Ringing,
        Status::OnCall,
        Status::Wrapup,
    ];
    let agents = agents.max(1);
    let ids: Vec<AgentId> = (0..agents)
        .map(|index| AgentId::parse(&format!("bench-{index}")).expect("a valid agent id"))
        .collect();
    let start_seq = store.last_seq().await?;
    let base = chrono::Utc::now();
    let mut states = Vec::with_capacity(count);
    for index in 0..count {
        let id = &ids[index % agents];
        let at = base + chrono::Duration::milliseconds(index as i64);
        let mut state = unknown_state(id.clone(), id.to_string(), at);
        state.status = cycle[(index / agents) % cycle.len()];
        state.on_a_call = state.status.on_a_call();
        state.available = Some(true);
        state.destination = Some("31201234567".into());
        state.seq = start_seq + index as u64 + 1;
        states.push(state);
    }
    let started = std::time::Instant::now();
    for batch in states.chunks(BATCH_MAX) {
        store.record(batch).await?;
    }
    Ok(started.elapsed())
}
