//! The status pipeline end to end: simulator → poller → tracker → history →
//! MQTT, checked on the broker and in the database.

use pbx2mqtt::model::Status;
use pbx2mqtt::simulator::{Api, Fault, FaultKind};

use crate::helpers::{prepare_app, spawn_app, Options, SOON};

/// (available, reason, extension status) → the status the README's statuses
/// table gives.
const STEPS: [(bool, &str, &str, &str); 9] = [
    (false, "pause", "idle", "paused"),
    (false, "handling", "idle", "busy"),
    (false, "training", "idle", "unavailable"),
    (true, "-", "idle", "available"),
    (true, "-", "calling", "ringing"),
    (true, "-", "called", "on_call"),
    (true, "-", "wrapup", "wrapup"),
    (false, "Paused", "idle", "paused"),
    (false, "-", "idle", "offline"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_status_arrives_as_retained_state_bare_status_and_event_and_matches_history() {
    // Subscribed before the bridge starts: its first poll can come before a
    // late subscriber's SUBACK, and an event is not retained.
    let mut app = prepare_app(Options::default()).await;
    let mut sub = app.subscriber().await;
    app.start_bridge().await;
    let event_topic = app.topic(1, "/event");
    let state_topic = app.topic(1, "");
    let status_topic = app.topic(1, "/status");

    // The simulator starts everyone offline: the first poll is unknown → offline.
    let first = sub
        .wait_for(SOON, "first event", |m| m.topic == event_topic)
        .await
        .json();
    assert_eq!(
        (first["from"].as_str(), first["to"].as_str()),
        (Some("unknown"), Some("offline"))
    );

    let mut events = vec![first];
    for (available, reason, extension_status, expected) in STEPS {
        sub.forget(); // a status can repeat: only look at what comes next
        app.set(1, available, reason, extension_status);
        let event = sub
            .wait_for(SOON, expected, |m| {
                m.topic == event_topic && m.json()["to"] == expected
            })
            .await
            .json();
        let state = sub
            .wait_for(SOON, "state", |m| {
                m.topic == state_topic && m.json()["status"] == expected
            })
            .await
            .json();
        assert_eq!(state["agent"], app.agent(1));
        assert_eq!(
            state["seq"], event["seq"],
            "state carries the transition's seq"
        );
        assert_eq!(
            state["on_a_call"],
            matches!(expected, "ringing" | "on_call" | "busy")
        );
        assert_eq!(state["since"], event["at"]);
        match expected {
            "unavailable" => assert_eq!(state["reason"], "training"),
            "paused" => assert!(
                state["reason"]
                    .as_str()
                    .unwrap()
                    .eq_ignore_ascii_case("pause")
                    || state["reason"] == "Paused"
            ),
            "ringing" => assert_eq!(state["extension_status"], "calling"),
            "available" => assert_eq!(state["reason"], serde_json::Value::Null),
            _ => {}
        }
        sub.wait_for(SOON, "bare status", |m| {
            m.topic == status_topic && m.text() == expected
        })
        .await;
        events.push(event);
    }

    // Unknown: the agent cannot be polled stale_after (3) times in a row.
    app.simulator.inject(Fault {
        api: Api::Belfabriek,
        kind: FaultKind::Http500,
        agent: Some(app.ext(1)),
        remaining: None,
    });
    let unknown = sub
        .wait_for(SOON, "unknown", |m| {
            m.topic == event_topic && m.json()["to"] == "unknown"
        })
        .await
        .json();
    assert_eq!(unknown["from"], "offline");
    events.push(unknown);

    // seq strictly increases, previous_duration_s is never negative.
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seq must increase: {seqs:?}"
    );
    for pair in events.windows(2) {
        assert_eq!(pair[1]["from"], pair[0]["to"], "events chain: {pair:?}");
        assert!(pair[1]["previous_duration_s"].as_f64().unwrap() >= 0.0);
    }

    // A late subscriber gets the retained state and bare status.
    let mut late = app.subscriber().await;
    let retained = late.wait_topic(&state_topic, SOON).await;
    assert!(retained.retain, "agent state must be retained");
    assert_eq!(retained.json()["status"], "unknown");
    let bare = late.wait_topic(&status_topic, SOON).await;
    assert!(bare.retain);
    assert_eq!(bare.text(), "unknown");
    let bridge = late
        .wait_topic(&format!("{}/bridge/state", app.base), SOON)
        .await;
    assert_eq!((bridge.text().as_str(), bridge.retain), ("online", true));
    let info = late
        .wait_topic(&format!("{}/bridge/info", app.base), SOON)
        .await
        .json();
    assert_eq!(info["agents"], 3);
    assert_eq!(info["base_topic"], app.base);

    // History: one interval per event, same status and seq, chained in time.
    app.stop_bridge().await;
    let intervals = app.history(1).await;
    assert_eq!(intervals.len(), events.len(), "{intervals:#?}");
    for (interval, event) in intervals.iter().zip(&events) {
        assert_eq!(interval.status.as_str(), event["to"].as_str().unwrap());
        assert_eq!(interval.seq, event["seq"].as_u64());
        assert_eq!(
            interval
                .started_at
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            event["at"].as_str().unwrap()
        );
    }
    for pair in intervals.windows(2) {
        assert_eq!(
            pair[0].ended_at,
            Some(pair[1].started_at),
            "intervals chain without gaps"
        );
    }
    assert_eq!(intervals.last().unwrap().status, Status::Unknown);
    assert!(
        intervals.last().unwrap().ended_at.is_some(),
        "a graceful stop closes the current interval at the stop time"
    );
    sub.clear_retained().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_of_destination_alone_updates_state_but_is_not_a_transition() {
    let app = spawn_app(Options::default()).await;
    let mut sub = app.subscriber().await;
    let state_topic = app.topic(1, "");
    app.set(1, true, "-", "idle");
    // The event is published after the state: wait for the last message.
    sub.wait_for(SOON, "available", |m| {
        m.topic == app.topic(1, "/event") && m.json()["to"] == "available"
    })
    .await;
    sub.forget();
    app.simulator
        .set_agent(
            &app.ext(1),
            pbx2mqtt::simulator::VirtualState {
                available: true,
                reason: "-".into(),
                destination: Some("31612345678".into()),
                extension_status: "idle".into(),
            },
        )
        .unwrap();
    let state = sub
        .wait_for(SOON, "new destination", |m| {
            m.topic == state_topic && m.json()["destination"] == "31612345678"
        })
        .await
        .json();
    assert_eq!(state["status"], "available");
    app.wait_polls(2).await;
    let events: Vec<String> = sub
        .seen
        .iter()
        .filter(|m| m.topic == app.topic(1, "/event"))
        .map(|m| m.text())
        .collect();
    assert!(
        events.is_empty(),
        "a destination change is not a transition: {events:?}"
    );
    sub.clear_retained().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_serves_current_state_health_metrics_and_reports() {
    let app = spawn_app(Options::default()).await;
    let mut sub = app.subscriber().await;
    app.set(1, true, "-", "called");
    sub.wait_for(SOON, "on_call", |m| {
        m.topic == app.topic(1, "/event") && m.json()["to"] == "on_call"
    })
    .await;
    let base = format!("http://{}", app.http.expect("http server bound"));
    let http = reqwest::Client::new();

    let agents: serde_json::Value = serde_json::from_str(
        &http
            .get(format!("{base}/api/agents"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    let alice = agents
        .as_array()
        .and_then(|list| list.iter().find(|a| a["agent"] == app.agent(1)))
        .unwrap_or_else(|| panic!("agent missing from /api/agents: {agents}"));
    assert_eq!(alice["status"], "on_call");

    let health = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert!(health.status().is_success());
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("pbx2mqtt_polls_total{result=\"ok\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("pbx2mqtt_transitions_total"), "{metrics}");

    let today = chrono::Utc::now().date_naive();
    let summary = http
        .get(format!(
            "{base}/api/reports/summary?from={today}&to={today}&agent={}&by=total",
            app.agent(1)
        ))
        .send()
        .await
        .unwrap();
    assert!(summary.status().is_success(), "{:?}", summary.text().await);
    let bad = http
        .get(format!("{base}/api/reports/summary?from=yesterday-ish"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), reqwest::StatusCode::BAD_REQUEST);
    sub.clear_retained().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_upstream_values_are_capped_in_state_and_history() {
    let app = spawn_app(Options {
        agents: 1,
        ..Options::default()
    })
    .await;
    let mut sub = app.subscriber().await;
    let state_topic = app.topic(1, "");
    // Close to the 1 MiB body limit, so the answer is still read.
    let huge_reason = "r".repeat(1_000_000);
    app.simulator
        .set_agent(
            &app.ext(1),
            pbx2mqtt::simulator::VirtualState {
                available: false,
                reason: huge_reason,
                destination: Some("3".repeat(20_000)),
                extension_status: "idle".into(),
            },
        )
        .unwrap();
    let state = sub
        .wait_for(SOON, "unavailable", |m| {
            m.topic == state_topic && m.json()["status"] == "unavailable"
        })
        .await;
    assert!(state.payload.len() < 2_000, "{} bytes", state.payload.len());
    let state = state.json();
    assert_eq!(state["reason"], "r".repeat(256));
    assert_eq!(state["destination"], "3".repeat(64));
    let history = app.history(1).await;
    let last = history.last().expect("an interval");
    assert_eq!(last.reason.as_deref().map(str::len), Some(256), "{last:?}");
    assert_eq!(last.destination.as_deref().map(str::len), Some(64));
}
