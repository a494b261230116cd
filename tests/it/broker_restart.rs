//! A broker restart without persistence mid-stream: displays must not be
//! left empty (state is republished, retained) and no transition may be
//! lost (unacknowledged events are resent after reconnect).
//!
//! Uses a private Mosquitto process (skipped where the binary is missing;
//! CI installs it) behind a gate the test opens, so the test subscriber is
//! back before the bridge reconnects.

use std::sync::atomic::Ordering;

use crate::helpers::{prepare_app, wait_until, Options, SOON};
use crate::mosquitto::{free_port, required_binary, Gate, Mosquitto};
use crate::mqtt_client::TestClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(pbx2mqtt_mosquitto),
    ignore = "needs the mosquitto binary (apt install mosquitto; CI installs it)"
)]
async fn broker_restart_republishes_state_and_resends_unacknowledged_events() {
    let binary = required_binary();
    let broker_port = free_port();
    let broker = Mosquitto::start(binary, broker_port).await;
    let (gate, gate_port) = Gate::start(broker_port).await;
    let direct = format!("mqtt://127.0.0.1:{broker_port}");
    let mut app = prepare_app(Options {
        broker_url: Some(format!("mqtt://127.0.0.1:{gate_port}")),
        ..Options::default()
    })
    .await;
    let filter = [format!("{}/#", app.base)];
    let mut sub = TestClient::connect(&direct, &filter).await;
    app.start_bridge().await;

    app.set(1, true, "-", "idle");
    let first = sub
        .wait_for(SOON, "available", |m| {
            m.topic == app.topic(1, "/event") && m.json()["to"] == "available"
        })
        .await
        .json();

    for n in [2, 3] {
        sub.wait_for(SOON, "first event of every agent", |m| {
            m.topic == app.topic(n, "/event")
        })
        .await;
    }

    // The broker dies, and forgets everything (no persistence).
    gate.close();
    broker.kill();
    let metrics = app.metrics.clone().unwrap();
    wait_until(SOON, "bridge notices the outage", {
        let metrics = metrics.clone();
        move || metrics.mqtt_connected.load(Ordering::Relaxed) == 0
    })
    .await;

    // Transitions while the broker is away: polling and history go on.
    let transitions_before = app.counter(|m| &m.transitions);
    app.set(1, true, "-", "calling");
    wait_until(SOON, "ringing seen", {
        let m = metrics.clone();
        move || m.transitions.load(Ordering::Relaxed) > transitions_before
    })
    .await;
    app.set(1, true, "-", "called");
    wait_until(SOON, "on_call seen", {
        let m = metrics.clone();
        move || m.transitions.load(Ordering::Relaxed) > transitions_before + 1
    })
    .await;
    app.set(2, false, "pause", "idle");
    wait_until(SOON, "paused seen", {
        let m = metrics.clone();
        move || m.transitions.load(Ordering::Relaxed) > transitions_before + 2
    })
    .await;

    // The broker is back, empty. Our subscriber first, then the bridge.
    let _broker = Mosquitto::start(binary, broker_port).await;
    sub.forget();
    let mut sub = TestClient::connect(&direct, &filter).await;
    gate.open();

    let online = sub
        .wait_topic(&format!("{}/bridge/state", app.base), SOON)
        .await;
    assert_eq!(online.text(), "online");
    let ringing = sub
        .wait_for(SOON, "resent ringing", |m| {
            m.topic == app.topic(1, "/event") && m.json()["to"] == "ringing"
        })
        .await
        .json();
    let on_call = sub
        .wait_for(SOON, "resent on_call", |m| {
            m.topic == app.topic(1, "/event") && m.json()["to"] == "on_call"
        })
        .await
        .json();
    sub.wait_for(SOON, "resent paused", |m| {
        m.topic == app.topic(2, "/event") && m.json()["to"] == "paused"
    })
    .await;
    let seqs = [
        first["seq"].as_u64().unwrap(),
        ringing["seq"].as_u64().unwrap(),
        on_call["seq"].as_u64().unwrap(),
    ];
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    // Displays that connect now see the current state, retained.
    let mut display = TestClient::connect(&direct, &filter).await;
    let state = display.wait_topic(&app.topic(1, ""), SOON).await;
    assert!(state.retain);
    assert_eq!(state.json()["status"], "on_call");
    let bare = display.wait_topic(&app.topic(2, "/status"), SOON).await;
    assert_eq!((bare.text().as_str(), bare.retain), ("paused", true));
    let bridge = display
        .wait_topic(&format!("{}/bridge/state", app.base), SOON)
        .await;
    assert_eq!((bridge.text().as_str(), bridge.retain), ("online", true));
    assert!(app.counter(|m| &m.mqtt_connects) >= 2);
    app.stop_bridge().await;
}
