//! Restarts: graceful and `kill -9`. The bridge resumes from history: no
//! false transitions, `seq` keeps increasing, the downtime is `unknown`.

use std::process::{Command, Stdio};

use chrono::{Duration as Span, Utc};
use pbx2mqtt::model::Status;

use crate::helpers::{prepare_app, Options, TestApp, SOON};
use crate::mqtt_client::TestClient;

/// After a restart: every agent polled a few times, then a marker change on
/// agent 2; by the time its event arrives, agent 1 (unchanged) must not have
/// produced an event.
async fn assert_no_false_transition(app: &TestApp, sub: &mut TestClient, last_seq_before: u64) {
    sub.forget();
    app.wait_polls(3).await;
    app.set(2, true, "-", "called");
    let marker = sub
        .wait_for(SOON, "marker event", |m| {
            m.topic == app.topic(2, "/event") && m.json()["to"] == "on_call"
        })
        .await
        .json();
    assert!(
        marker["seq"].as_u64().unwrap() > last_seq_before,
        "seq continues after restart: {marker}"
    );
    let false_events: Vec<_> = sub
        .seen
        .iter()
        .filter(|m| m.topic == app.topic(1, "/event"))
        .collect();
    assert!(
        false_events.is_empty(),
        "no event for an unchanged agent after restart: {false_events:?}"
    );
}

async fn assert_history_resumed(app: &TestApp) {
    let intervals = app.history(1).await;
    let statuses: Vec<Status> = intervals.iter().map(|i| i.status).collect();
    // unknown (never polled) → available, then the gap while down, then available again.
    assert_eq!(
        statuses,
        [Status::Available, Status::Unknown, Status::Available],
        "{intervals:#?}"
    );
    assert_eq!(
        intervals.iter().filter(|i| i.ended_at.is_none()).count(),
        0,
        "the last graceful stop closed the history"
    );
    for pair in intervals.windows(2) {
        assert_eq!(
            pair[0].ended_at,
            Some(pair[1].started_at),
            "no holes: {intervals:#?}"
        );
    }
    assert_eq!(
        intervals[1].seq, None,
        "the gap is synthesised, not a published transition"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_restart_resumes_without_false_transitions() {
    let mut app = prepare_app(Options::default()).await;
    let mut sub = app.subscriber().await;
    // Agents 1 and 2 start available (unknown → available) so that the only
    // rows of agent 1 are the ones this test expects.
    app.set(1, true, "-", "idle");
    app.set(2, true, "-", "idle");
    app.start_bridge().await;
    let event = sub
        .wait_for(SOON, "available", |m| {
            m.topic == app.topic(1, "/event") && m.json()["to"] == "available"
        })
        .await
        .json();
    app.wait_polls(2).await;
    app.stop_bridge().await;
    let last = sub
        .wait_for(SOON, "offline", |m| {
            m.topic == format!("{}/bridge/state", app.base) && m.text() == "offline"
        })
        .await;
    assert_eq!(last.text(), "offline", "clean shutdown publishes offline");

    app.start_bridge().await;
    sub.wait_for(SOON, "online", |m| {
        m.topic == format!("{}/bridge/state", app.base) && m.text() == "online"
    })
    .await;
    let state = sub
        .wait_for(SOON, "republished state", |m| {
            m.topic == app.topic(1, "") && m.json()["status"] == "available"
        })
        .await
        .json();
    assert_eq!(
        state["seq"], event["seq"],
        "the resumed state keeps the last transition's seq"
    );
    assert_no_false_transition(&app, &mut sub, event["seq"].as_u64().unwrap()).await;
    app.stop_bridge().await;
    assert_history_resumed(&app).await;
    sub.clear_retained().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_nothing_committed_and_resumes() {
    let mut app = prepare_app(Options::default()).await;
    let mut sub = app.subscriber().await;
    app.set(1, true, "-", "idle");
    app.set(2, true, "-", "idle");
    let config = app.dir.path().join("pbx2mqtt.toml");
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_pbx2mqtt"))
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the pbx2mqtt binary")
    };
    let mut child = run();
    let event = sub
        .wait_for(SOON, "available", |m| {
            m.topic == app.topic(1, "/event") && m.json()["to"] == "available"
        })
        .await
        .json();
    // Events are published only after their commit, so it is in the file.
    let store = app.store().await;
    let committed = event["seq"].as_u64().unwrap();
    let deadline = tokio::time::Instant::now() + SOON;
    while store.last_seq().await.unwrap() < committed {
        assert!(
            tokio::time::Instant::now() < deadline,
            "seq {committed} never committed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    child.kill().expect("kill -9");
    child.wait().unwrap();
    // The broker publishes the last will.
    sub.wait_for(SOON, "last will", |m| {
        m.topic == format!("{}/bridge/state", app.base) && m.text() == "offline"
    })
    .await;

    app.start_bridge().await;
    assert_no_false_transition(&app, &mut sub, committed).await;
    app.stop_bridge().await;
    assert_history_resumed(&app).await;
    let store = app.store().await;
    let all = store
        .intervals(
            None,
            Utc::now() - Span::hours(1),
            Utc::now() + Span::hours(1),
        )
        .await
        .unwrap();
    let mut seqs: Vec<u64> = all.iter().filter_map(|i| i.seq).collect();
    let count = seqs.len();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), count, "no seq is used twice");
    sub.clear_retained().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(pbx2mqtt_mqtt),
    ignore = "needs a real broker (set PBX2MQTT_TEST_MQTT_URL; CI does): through the embedded broker the resent events do not arrive, with Mosquitto they do (not yet explained)"
)]
async fn events_unacknowledged_at_kill_9_are_resent_by_the_next_bridge() {
    let broker = crate::helpers::broker_url();
    let broker_port = pbx2mqtt::config::BrokerUrl::parse(&broker).unwrap().port();
    let (gate, gate_port) = crate::mosquitto::Gate::start(broker_port).await;
    let mut app = prepare_app(Options {
        broker_url: Some(format!("mqtt://127.0.0.1:{gate_port}")),
        ..Options::default()
    })
    .await;
    let mut sub = TestClient::connect(&broker, &[format!("{}/#", app.base)]).await;
    app.set(1, true, "-", "idle");
    let config = app.dir.path().join("pbx2mqtt.toml");
    let mut child = Command::new(env!("CARGO_BIN_EXE_pbx2mqtt"))
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the pbx2mqtt binary");
    sub.wait_for(SOON, "available", |m| {
        m.topic == app.topic(1, "/event") && m.json()["to"] == "available"
    })
    .await;

    // The broker becomes unreachable; a transition is committed but its
    // event cannot be delivered; then the bridge is killed.
    gate.close();
    let store = app.store().await;
    let before = store.last_seq().await.unwrap();
    app.set(1, true, "-", "calling");
    let deadline = tokio::time::Instant::now() + SOON;
    while store.last_seq().await.unwrap() <= before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "ringing never committed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    child.kill().expect("kill -9");
    child.wait().unwrap();

    gate.open();
    app.start_bridge().await;
    let resent = sub
        .wait_for(SOON, "the undelivered event", |m| {
            m.topic == app.topic(1, "/event") && m.json()["to"] == "ringing"
        })
        .await
        .json();
    assert_eq!(resent["from"], "available");
    let intervals = app.history(1).await;
    let ringing = intervals
        .iter()
        .find(|i| i.status == Status::Ringing)
        .expect("ringing in history");
    assert_eq!(
        resent["seq"].as_u64(),
        ringing.seq,
        "the same seq as in history: {resent}"
    );
    assert!(ringing.seq.unwrap() > before);
    app.stop_bridge().await;
    sub.clear_retained().await;
}
