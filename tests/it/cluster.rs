//! Several bridges (`product.md` §7.6), as real processes: three
//! `pbx2mqtt run` with one configuration, one PostgreSQL database, one
//! Mosquitto (shared subscriptions) and the simulator with a few hundred
//! agents moving on their own (a transition storm).
//!
//! Proven, in one run (the phases build on each other):
//! 1. the agents are shared: each is polled by exactly one bridge (the
//!    simulator's per-agent poll log tells the bridges apart by their
//!    `User-Agent`), and `/readyz` shows every bridge's share;
//! 2. a burst of queue commands through the shared subscription runs each
//!    command exactly once, and resending every request (to whichever bridge
//!    the broker picks) answers it again without running it again;
//! 3. `kill -9` of one bridge: its agents are polled by the others within
//!    `bridge.takeover_after`;
//! 4. a bridge paused with SIGSTOP past its lease and resumed writes nothing
//!    for the agents taken from it (fencing) and gets its share back;
//! 5. after a clean stop of the rest, history is whole: per agent one
//!    stream of contiguous intervals (no overlap, no duplicate transition,
//!    the gaps `unknown`), one dense `seq` across the bridges, every event a
//!    live bridge committed delivered, and the last state of every agent
//!    the simulator's.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use pbx2mqtt::simulator::{Simulator, SimulatorConfig, VirtualState};
use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::helpers::{
    broker_url, clear_retained, uses_embedded_broker, PgDatabase, TEST_KEY, TEST_PIN,
};
use crate::mqtt_client::TestClient;
use crate::process::BridgeProcess;

/// Agents in the simulator.
const AGENTS: u32 = 240;

/// `bridge.takeover_after`: leases of 2 s renewed every 500 ms.
const TAKEOVER_AFTER: Duration = Duration::from_secs(3);

/// How long anything in this test may take before it fails.
const PATIENCE: Duration = Duration::from_secs(40);

/// Starts bridge `id` of the cluster.
fn start(id: &str, config: &Path, dir: &Path, client_prefix: &str) -> BridgeProcess {
    let client_id = format!("{client_prefix}-{id}");
    BridgeProcess::start(id, config, dir, &[("PBX2MQTT_MQTT__CLIENT_ID", client_id)])
}

/// What the simulator's request log names a bridge by (its `User-Agent`).
fn user_agent_tag(bridge: &BridgeProcess) -> String {
    format!("({})", bridge.id)
}

/// Waits until every bridge in `bridges` reports, on its `/readyz`, the
/// shares of exactly `expected` bridges covering every agent.
async fn wait_for_shares(bridges: &[&BridgeProcess], expected: &[&str]) -> Duration {
    let started = Instant::now();
    let mut last = Value::Null;
    loop {
        let mut settled = true;
        for bridge in bridges {
            let Some(ready) = bridge.readyz().await else {
                settled = false;
                continue;
            };
            let shares = &ready["cluster"]["shares"];
            let names: Vec<&str> = shares
                .as_object()
                .map(|shares| shares.keys().map(String::as_str).collect())
                .unwrap_or_default();
            let total: u64 = shares
                .as_object()
                .map(|shares| shares.values().filter_map(Value::as_u64).sum())
                .unwrap_or(0);
            if names != expected
                || total != u64::from(AGENTS)
                || ready["ready"] != true
                || shares[&bridge.id].as_u64() != ready["cluster"]["owned_agents"].as_u64()
            {
                settled = false;
                last = ready;
            }
        }
        if settled {
            return started.elapsed();
        }
        if started.elapsed() > PATIENCE {
            let logs: Vec<String> = bridges
                .iter()
                .map(|bridge| {
                    let logs = bridge.logs();
                    let tail = logs.len().saturating_sub(4000);
                    format!("--- {} ---\n{}", bridge.id, &logs[tail..])
                })
                .collect();
            panic!(
                "shares never settled on {expected:?}; last /readyz: {last}\n{}",
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(pbx2mqtt_postgres, pbx2mqtt_mqtt)),
    ignore = "set PBX2MQTT_TEST_POSTGRES_URL and PBX2MQTT_TEST_MQTT_URL to run (several bridges share a PostgreSQL database and a Mosquitto's shared subscriptions)"
)]
async fn three_bridges_share_agents_take_over_a_dead_one_and_fence_a_paused_one() {
    assert!(
        !uses_embedded_broker(),
        "several bridges need a broker with shared subscriptions: set PBX2MQTT_TEST_MQTT_URL to a Mosquitto"
    );
    let database = PgDatabase::create("pbx2mqtt_cluster").await;
    let simulator_stop = CancellationToken::new();
    let simulator = Simulator::start(
        SimulatorConfig {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            agents: AGENTS,
            account_pin: TEST_PIN.into(),
            tring_key: TEST_KEY.into(),
            tenant: "TEST".into(),
            auto: true,
            mean_dwell: Duration::from_secs(3),
            seed: Some(11),
            ..SimulatorConfig::default()
        },
        simulator_stop.clone(),
    )
    .await
    .expect("simulator");
    let dir = tempfile::tempdir().unwrap();
    let unique: u32 = rand::random();
    let base = format!("pbx2mqtt-test/{unique:08x}");
    let mut toml = format!(
        "[bridge]\ntakeover_after = \"{takeover}s\"\nshutdown_timeout = \"5s\"\n\
         [mqtt]\nurl = {broker:?}\nbase_topic = {base:?}\nsession_expiry = \"10s\"\n\
         [belfabriek]\nurl = {bel:?}\naccount_pin = {TEST_PIN:?}\ntimeout = \"1s\"\n\
         [tring]\nurl = {tring:?}\nkey = {TEST_KEY:?}\ntenant = \"TEST\"\ntimeout = \"2s\"\n\
         [poll]\ninterval = \"500ms\"\nstale_after = 3\nmax_backoff = \"1s\"\n\
         [commands]\nallowed_queues = [500]\nconcurrency = 8\n\
         [database]\nurl = {db:?}\n",
        takeover = TAKEOVER_AFTER.as_secs(),
        broker = broker_url(),
        bel = simulator.belfabriek_url(),
        tring = simulator.tring_url(),
        db = database.url,
    );
    toml.push_str(&simulator.agents_toml("agent"));
    let config = dir.path().join("pbx2mqtt.toml");
    std::fs::write(&config, toml).unwrap();
    let client_prefix = format!("cluster-{unique:08x}");
    let mut events = TestClient::connect(&broker_url(), &[format!("{base}/agent/+/event")]).await;
    let mut answers = TestClient::connect(&broker_url(), &[format!("{base}/response/#")]).await;
    let mut presence = TestClient::connect(&broker_url(), &[format!("{base}/bridge/#")]).await;

    // 1. Three bridges share the agents, each polled by one bridge.
    let b1 = start("b1", &config, dir.path(), &client_prefix);
    wait_for_shares(&[&b1], &["b1"]).await;
    let b2 = start("b2", &config, dir.path(), &client_prefix);
    let b3 = start("b3", &config, dir.path(), &client_prefix);
    wait_for_shares(&[&b1, &b2, &b3], &["b1", "b2", "b3"]).await;
    // Each bridge says it is online on its own topic, and the overall one.
    for id in ["b1", "b2", "b3"] {
        let topic = format!("{base}/bridge/{id}/state");
        presence
            .wait_for(PATIENCE, &format!("{id} online"), |m| {
                m.topic == topic && m.text() == "online"
            })
            .await;
    }
    let overall = format!("{base}/bridge/state");
    presence
        .wait_for(PATIENCE, "bridge/state online", |m| {
            m.topic == overall && m.text() == "online"
        })
        .await;
    // Metrics show every bridge's share and this bridge's own.
    let metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", b1.http))
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("metrics text");
    for line in [
        "pbx2mqtt_cluster_agents{bridge=\"b1\"}",
        "pbx2mqtt_cluster_agents{bridge=\"b3\"}",
        "pbx2mqtt_cluster_owned_agents ",
        "pbx2mqtt_cluster_coordinated 1",
    ] {
        assert!(
            metrics.contains(line),
            "{line} missing in /metrics:\n{metrics}"
        );
    }
    simulator.reset_poll_log();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = simulator.poll_log(Some(Duration::from_millis(250)));
    assert!(
        log.unpolled.is_empty(),
        "every agent is polled: {:?}",
        log.unpolled
    );
    assert!(
        log.overlaps.is_empty(),
        "no agent polled by two bridges: {:?}",
        log.overlaps
    );
    let mut owner: HashMap<String, String> = HashMap::new();
    let mut per_bridge: BTreeMap<String, usize> = BTreeMap::new();
    for (agent, polls) in &log.agents {
        assert_eq!(
            polls.clients.len(),
            1,
            "{agent} polled by one bridge: {polls:?}"
        );
        let user_agent = polls.clients[0].user_agent.clone();
        *per_bridge.entry(user_agent.clone()).or_default() += 1;
        owner.insert(agent.clone(), user_agent);
    }
    assert_eq!(
        per_bridge.len(),
        3,
        "all three bridges poll: {per_bridge:?}"
    );
    for (bridge, count) in &per_bridge {
        assert!(*count >= 40, "{bridge} polls a fair share: {per_bridge:?}");
    }

    // 2. A burst of commands, each run exactly once, then every request
    // resent: answered again from the shared transactions, not run again.
    let agents = simulator.agents();
    let burst: Vec<(String, String)> = agents
        .iter()
        .take(90)
        .enumerate()
        .map(|(i, agent)| (format!("burst-{i}"), agent.tring_extension.clone()))
        .collect();
    let request_topic = format!("{base}/request/queue/500/add");
    let response_topic = format!("{base}/response/queue/500/add");
    let adds_before = simulator.counts().action("add");
    for round in 0..2 {
        for (transaction, extension) in &burst {
            let payload = format!(r#"{{"extension":"{extension}","transaction":"{transaction}"}}"#);
            answers.publish(&request_topic, payload, false).await;
        }
        let mut answered: BTreeMap<String, Value> = BTreeMap::new();
        let deadline = Instant::now() + PATIENCE;
        while answered.len() < burst.len() {
            assert!(
                Instant::now() < deadline,
                "round {round}: {} of {} answered",
                answered.len(),
                burst.len()
            );
            answers.forget_into_seen();
            for message in answers.seen.drain(..) {
                assert_eq!(message.topic, response_topic);
                let answer = message.json();
                assert_eq!(answer["status"], "ok", "{answer}");
                let transaction = answer["transaction"].as_str().unwrap().to_owned();
                assert!(
                    answered.insert(transaction, answer).is_none() || round == 1,
                    "one answer per request"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(
        simulator.counts().action("add") - adds_before,
        burst.len() as u64,
        "each add reached TRiNG once"
    );
    let members: BTreeSet<String> = simulator.queue_members("500").into_iter().collect();
    for (_, extension) in &burst {
        assert!(members.contains(extension), "{extension} in queue 500");
    }
    let pool = PgPool::connect(&database.url).await.unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let audited: Vec<(Option<String>, i64)> = sqlx::query_as(
            "SELECT \"transaction\", COUNT(*) FROM command_audit WHERE topic = $1 \
             GROUP BY \"transaction\"",
        )
        .bind(&request_topic)
        .fetch_all(&pool)
        .await
        .unwrap();
        if audited.len() == burst.len() {
            for (transaction, count) in &audited {
                assert_eq!(*count, 1, "{transaction:?} executed and audited once");
            }
            break;
        }
        assert!(Instant::now() < deadline, "audit rows: {audited:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 3. kill -9: the dead bridge's agents are polled by the others within
    // the bound.
    let b3_tag = user_agent_tag(&b3);
    let b3_agents: Vec<String> = owner
        .iter()
        .filter(|(_, user_agent)| user_agent.contains(&b3_tag))
        .map(|(agent, _)| agent.clone())
        .collect();
    simulator.reset_poll_log();
    // More than one poll interval (500 ms): every agent of b3's is in the
    // log as polled by b3 before it dies.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    presence.forget_into_seen();
    presence.seen.clear();
    b3.signal("-KILL");
    let took = wait_for_shares(&[&b1, &b2], &["b1", "b2"]).await;
    eprintln!("kill -9: the others hold every lease after {took:?}");
    // The broker publishes b3's last wills: `offline` on its own state and
    // on the overall one, which the living bridges answer with `online`.
    let b3_state = format!("{base}/bridge/b3/state");
    presence
        .wait_for(PATIENCE, "b3's last will", |m| {
            m.topic == b3_state && m.text() == "offline"
        })
        .await;
    presence
        .wait_for(PATIENCE, "bridge/state online again", |m| {
            m.topic == overall && m.text() == "online"
        })
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log = simulator.poll_log(Some(Duration::from_millis(250)));
    assert!(
        log.overlaps.is_empty(),
        "no agent polled by two live bridges: {:?}",
        log.overlaps
    );
    let mut worst = Duration::ZERO;
    for agent in &b3_agents {
        let polls = &log.agents[agent];
        let dead = polls
            .clients
            .iter()
            .find(|c| c.user_agent.contains(&b3_tag));
        let heir = polls
            .clients
            .iter()
            .find(|c| !c.user_agent.contains(&b3_tag));
        let (Some(dead), Some(heir)) = (dead, heir) else {
            panic!("{agent}: polled by the dead bridge, then another: {polls:?}");
        };
        let gap = (heir.first - dead.last).to_std().unwrap();
        worst = worst.max(gap);
    }
    eprintln!("kill -9: longest poll gap of a taken-over agent {worst:?}");
    assert!(
        worst <= TAKEOVER_AFTER + Duration::from_millis(500),
        "taken over within takeover_after (plus one poll interval): {worst:?}"
    );

    // 4. SIGSTOP past the lease, then SIGCONT: fenced, then back.
    let stopped_at_id: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM intervals")
        .fetch_one(&pool)
        .await
        .unwrap();
    b2.signal("-STOP");
    wait_for_shares(&[&b1], &["b1"]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    b2.signal("-CONT");
    wait_for_shares(&[&b1, &b2], &["b1", "b2"]).await;
    let b2_logs = b2.logs();
    assert!(
        b2_logs.contains("agents no longer polled here"),
        "the resumed bridge noticed it lost its agents: {b2_logs}"
    );
    let written_after_pause: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM intervals WHERE id > $1 AND bridge = 'b2'")
            .bind(stopped_at_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    eprintln!(
        "b2 wrote {written_after_pause} transitions after its pause (for agents it got back)"
    );

    // 5. The storm ends; every agent settles; clean stops; history whole.
    let settled = VirtualState {
        available: true,
        reason: "-".into(),
        destination: None,
        extension_status: "idle".into(),
    };
    for agent in &agents {
        simulator.set_agent(&agent.ext_id, settled.clone()).unwrap();
    }
    let deadline = Instant::now() + PATIENCE;
    loop {
        let open: Vec<(String, String)> = sqlx::query_as(
            "SELECT agent, status FROM intervals WHERE ended_at IS NULL ORDER BY agent",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        if open.len() == AGENTS as usize && open.iter().all(|(_, status)| status == "available") {
            break;
        }
        assert!(Instant::now() < deadline, "agents never settled: {open:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let b2_logs = b2.stop(PATIENCE).await;
    wait_for_shares(&[&b1], &["b1"]).await;
    let b1_logs = b1.stop(PATIENCE).await;
    for logs in [&b1_logs, &b2_logs] {
        assert!(
            !logs.contains(TEST_PIN) && !logs.contains(TEST_KEY),
            "no secret in logs"
        );
        assert!(!logs.contains("panicked"), "{logs}");
    }
    check_history(&pool).await;
    let open: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM intervals WHERE ended_at IS NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(open, 0, "the last bridge to leave closed the history");

    // Every transition a live bridge committed was published.
    let committed: Vec<i64> = sqlx::query_scalar(
        "SELECT seq FROM intervals WHERE seq IS NOT NULL AND bridge IN ('b1', 'b2') ORDER BY seq",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let deadline = Instant::now() + PATIENCE;
    let mut seen: BTreeSet<i64> = BTreeSet::new();
    loop {
        events.forget_into_seen();
        seen.extend(
            events
                .seen
                .drain(..)
                .filter_map(|message| message.json()["seq"].as_i64()),
        );
        let missing: Vec<i64> = committed
            .iter()
            .filter(|seq| !seen.contains(seq))
            .copied()
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "events never delivered: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    pool.close().await;
    let _ = clear_retained(&broker_url(), &base).await;
    database.drop_database().await;
    simulator_stop.cancel();
}

/// An interval as stored: agent, status, started_at, ended_at, seq, bridge.
type IntervalRow = (
    String,
    String,
    i64,
    Option<i64>,
    Option<i64>,
    Option<String>,
);

/// History is whole: per agent one stream of contiguous intervals, never a
/// transition to the status it already had, one dense `seq`.
async fn check_history(pool: &PgPool) {
    let rows: Vec<IntervalRow> = sqlx::query_as(
        "SELECT agent, status, started_at, ended_at, seq, bridge FROM intervals \
         ORDER BY agent, started_at, id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut by_agent: BTreeMap<&str, Vec<_>> = BTreeMap::new();
    for row in &rows {
        by_agent.entry(row.0.as_str()).or_default().push(row);
    }
    assert_eq!(by_agent.len(), AGENTS as usize);
    for (agent, intervals) in &by_agent {
        for pair in intervals.windows(2) {
            let (before, after) = (pair[0], pair[1]);
            assert_eq!(
                before.3,
                Some(after.2),
                "{agent}: contiguous, no overlap: {before:?} then {after:?}"
            );
            assert!(
                before.1 != after.1 || before.1 == "unknown",
                "{agent}: no duplicated transition: {before:?} then {after:?}"
            );
        }
        for interval in intervals {
            if let Some(ended) = interval.3 {
                assert!(ended >= interval.2, "{agent}: never negative: {interval:?}");
            }
        }
    }
    let seqs: Vec<i64> = rows
        .iter()
        .filter_map(|row| row.4)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let with_seq = rows.iter().filter(|row| row.4.is_some()).count();
    assert_eq!(seqs.len(), with_seq, "no seq used twice");
    assert!(!seqs.is_empty());
    assert_eq!(
        seqs.last().copied().unwrap() - seqs[0] + 1,
        seqs.len() as i64,
        "seq dense across the bridges"
    );
}
