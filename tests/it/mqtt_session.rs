//! The command session against real Mosquitto (`product.md` §7.1), in both
//! protocol versions: retained requests refused and cleared however they
//! arrive, MQTT 5 response topic and correlation data, oversized and
//! malformed retained messages on request topics while status publishing
//! goes on, and a request published while the bridge is cut off from the
//! broker executed once after it is back.

use std::sync::atomic::Ordering;

use pbx2mqtt::store::AuditRecord;

use crate::helpers::{
    prepare_app, retained_under, wait_ready, wait_until, Options, RealBroker, TestApp, SOON,
};
use crate::mosquitto::{free_port, required_binary, Gate, Mosquitto};
use crate::mqtt_client::{TestClient, V5Client};

const QUEUES: &str = "[commands]\nallowed_queues = [500, 501]\n";

fn request(app: &TestApp, queue: &str, action: &str) -> String {
    format!("{}/request/queue/{queue}/{action}", app.base)
}

fn response(app: &TestApp, queue: &str, action: &str) -> String {
    format!("{}/response/queue/{queue}/{action}", app.base)
}

/// Connection failures of both connections, all kinds.
fn mqtt_errors(app: &TestApp) -> u64 {
    let metrics = app.metrics.as_ref().expect("bridge started");
    [
        "credentials",
        "refused",
        "tls",
        "network",
        "timeout",
        "protocol",
    ]
    .iter()
    .map(|kind| metrics.mqtt_errors.get(kind))
    .sum()
}

fn audited(row: &AuditRecord, code: &str, transaction: &str) -> bool {
    row.entry.error_code.as_deref() == Some(code)
        && row
            .entry
            .transaction
            .as_deref()
            .is_some_and(|t| t.contains(transaction))
}

/// Waits for the answer carrying `transaction` on `topic`.
async fn answer(sub: &mut TestClient, topic: &str, transaction: &str) -> serde_json::Value {
    sub.wait_for(SOON, &format!("the answer to {transaction}"), |m| {
        m.topic == topic && !m.payload.is_empty() && m.json()["transaction"] == transaction
    })
    .await
    .json()
}

/// Waits for the empty retained message that clears `topic`.
async fn cleared(sub: &mut TestClient, topic: &str) {
    sub.wait_for(SOON, &format!("{topic} cleared"), |m| {
        m.topic == topic && m.payload.is_empty()
    })
    .await;
}

/// A `list` round trip: once it is answered, every request published
/// before it was delivered to the bridge (the broker keeps one sender's
/// order).
async fn round_trip(app: &TestApp, sub: &mut TestClient, transaction: &str) {
    sub.publish(
        &request(app, "500", "list"),
        format!(r#"{{"transaction":"{transaction}"}}"#),
        false,
    )
    .await;
    let list = answer(sub, &response(app, "500", "list"), transaction).await;
    assert_eq!(list["status"], "ok", "{list}");
}

async fn retained_requests_are_refused_and_cleared(protocol: &'static str) {
    let broker = RealBroker::get("retained_requests").await;
    let mut app = prepare_app(Options {
        broker_url: Some(broker.url.clone()),
        protocol: Some(protocol),
        extra_toml: QUEUES.into(),
        ..Options::default()
    })
    .await;
    let mut sub = app.subscriber().await;

    // 1. Retained before the bridge subscribes: delivered with the retain
    // flag in both versions.
    let before = request(&app, "500", "add");
    sub.publish(
        &before,
        r#"{"extension":"201","transaction":"before"}"#,
        true,
    )
    .await;
    sub.wait_for(SOON, "the retained request on the broker", |m| {
        m.topic == before && !m.payload.is_empty()
    })
    .await;
    app.start_bridge().await;
    let refused = answer(&mut sub, &response(&app, "500", "add"), "before").await;
    assert_eq!(
        (refused["status"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("retained_request")),
        "{refused}"
    );
    cleared(&mut sub, &before).await;
    app.wait_audit("the retained request refused", |row| {
        audited(row, "retained_request", "before")
    })
    .await;

    // 2. Published with retain while the bridge is subscribed.
    wait_ready(&mut sub, &app.base).await;
    let live = request(&app, "501", "add");
    sub.publish(&live, r#"{"extension":"202","transaction":"live"}"#, true)
        .await;
    let response_topic = response(&app, "501", "add");
    if protocol == "5" {
        // Retain-as-published: the bridge sees the flag and refuses it.
        let refused = answer(&mut sub, &response_topic, "live").await;
        assert_eq!(refused["code"], "retained_request", "{refused}");
    } else {
        // MQTT 3.1.1 brokers clear the flag on live delivery: the request
        // cannot be told from a plain one and runs once. The bridge then
        // subscribes again, the broker hands it the retained copy (flagged),
        // which is refused and cleared, so it never replays.
        sub.wait_for(SOON, "the live copy executed", |m| {
            m.topic == response_topic && m.json()["status"] == "ok"
        })
        .await;
        sub.wait_for(SOON, "the retained copy refused", |m| {
            m.topic == response_topic && m.json()["code"] == "retained_request"
        })
        .await;
    }
    cleared(&mut sub, &live).await;
    app.wait_audit("the live retained request refused", |row| {
        audited(row, "retained_request", "live")
    })
    .await;

    // Nothing is left retained under the request topics.
    let base = app.base.clone();
    let left = retained_under(
        &broker.url,
        &format!("{base}/request/#"),
        &format!("{base}/request/test/marker"),
    )
    .await;
    assert!(
        left.is_empty(),
        "retained requests left on the broker: {:?}",
        left.iter().map(|m| &m.topic).collect::<Vec<_>>()
    );
    assert!(app.simulator.queue_members("500").is_empty());
    let adds = app.simulator.counts().action("add");
    if protocol == "5" {
        assert!(app.simulator.queue_members("501").is_empty());
        assert_eq!(adds, 0, "a retained request must not reach TRiNG");
    } else {
        assert_eq!(app.simulator.queue_members("501"), ["202"]);
        assert_eq!(adds, 1);
    }

    // A restart (a new subscription) replays nothing.
    app.stop_bridge().await;
    sub.forget();
    app.start_bridge().await;
    wait_ready(&mut sub, &app.base).await;
    round_trip(&app, &mut sub, "after-restart").await;
    assert_eq!(app.simulator.counts().action("add"), adds);
    app.stop_bridge().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(any(pbx2mqtt_mqtt, pbx2mqtt_mosquitto)),
    ignore = "needs Mosquitto: set PBX2MQTT_TEST_MQTT_URL or install mosquitto (CI has both)"
)]
async fn retained_requests_are_refused_and_cleared_mqtt5() {
    retained_requests_are_refused_and_cleared("5").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(any(pbx2mqtt_mqtt, pbx2mqtt_mosquitto)),
    ignore = "needs Mosquitto: set PBX2MQTT_TEST_MQTT_URL or install mosquitto (CI has both)"
)]
async fn retained_requests_are_refused_and_cleared_mqtt311() {
    retained_requests_are_refused_and_cleared("3.1.1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(any(pbx2mqtt_mqtt, pbx2mqtt_mosquitto)),
    ignore = "needs Mosquitto: set PBX2MQTT_TEST_MQTT_URL or install mosquitto (CI has both)"
)]
async fn mqtt5_response_topic_and_correlation_data_are_honoured() {
    let broker = RealBroker::get("response_topic").await;
    let mut app = prepare_app(Options {
        broker_url: Some(broker.url.clone()),
        protocol: Some("5"),
        extra_toml: QUEUES.into(),
        ..Options::default()
    })
    .await;
    app.start_bridge().await;
    let mut sub = app.ready_subscriber().await;
    let replies = format!("{}/replies/tool-7", app.base);
    let mut v5 = V5Client::connect(&broker.url, &[format!("{}/#", app.base)]).await;

    // An answer, an error, and a request without a response topic.
    let correlation: &[u8] = b"corr-\x00\xff-1";
    v5.request(
        &request(&app, "500", "add"),
        format!(r#"{{"agent":"{}","transaction":"t1"}}"#, app.agent(1)),
        &replies,
        correlation,
    )
    .await;
    let ok = v5
        .wait_for(SOON, "the answer on the named topic", |m| {
            m.topic == replies
        })
        .await;
    assert_eq!(ok.correlation_data.as_deref(), Some(correlation));
    assert_eq!(
        (
            ok.json()["status"].as_str(),
            ok.json()["transaction"].as_str()
        ),
        (Some("ok"), Some("t1")),
        "{}",
        ok.text()
    );
    assert_eq!(app.simulator.queue_members("500"), ["201"]);

    v5.request(
        &request(&app, "999", "add"),
        r#"{"extension":"201","transaction":"t2"}"#,
        &replies,
        b"corr-2",
    )
    .await;
    let error = v5
        .wait_for(SOON, "the error on the named topic", |m| {
            m.topic == replies && m.json()["transaction"] == "t2"
        })
        .await;
    assert_eq!(error.correlation_data.as_deref(), Some(&b"corr-2"[..]));
    assert_eq!(error.json()["code"], "queue_not_allowed");

    // Without a response topic: the mirror topic, no correlation data.
    v5.publish(
        &request(&app, "500", "list"),
        r#"{"transaction":"t3"}"#,
        false,
    )
    .await;
    let mirror = v5
        .wait_for(SOON, "the answer on the mirror topic", |m| {
            m.topic == response(&app, "500", "list")
        })
        .await;
    assert_eq!(mirror.correlation_data, None);
    assert_eq!(mirror.json()["transaction"], "t3");

    // The named-topic answers did not also go to the mirror topics.
    sub.wait_for(SOON, "t3 on the mirror topic", |m| {
        m.topic == response(&app, "500", "list")
    })
    .await;
    assert!(
        !sub.seen
            .iter()
            .any(|m| m.topic == response(&app, "500", "add")
                || m.topic == response(&app, "999", "add")),
        "an answer with a response topic went to the mirror topic too"
    );
    app.stop_bridge().await;
}

/// Payload of the oversized requests: the size from the bug report.
const HUGE: usize = 17_000_000;

async fn oversized_and_malformed_requests_do_not_stop_status_publishing(protocol: &'static str) {
    let broker = RealBroker::get("oversized_requests").await;
    let mut app = prepare_app(Options {
        broker_url: Some(broker.url.clone()),
        protocol: Some(protocol),
        extra_toml: QUEUES.into(),
        ..Options::default()
    })
    .await;
    let mut sub = app.subscriber().await;
    let list = request(&app, "500", "list");
    let add = request(&app, "500", "add");
    let remove = request(&app, "501", "remove");

    // Waiting on the broker before the bridge subscribes: a 17 MB retained
    // request and a retained one that is not even UTF-8.
    sub.publish(&list, vec![b'x'; HUGE], true).await;
    sub.publish(&add, vec![0xff, 0xfe, b'{', 0x00], true).await;
    sub.wait_for(SOON, "the malformed request on the broker", |m| {
        m.topic == add && !m.payload.is_empty()
    })
    .await;
    app.start_bridge().await;
    wait_ready(&mut sub, &app.base).await;

    // And live, while subscribed: another 17 MB one (retained) and a
    // malformed one.
    sub.publish(&remove, vec![b'y'; HUGE], true).await;
    sub.publish(&request(&app, "501", "add"), "{\"extension\":", false)
        .await;
    let malformed = sub
        .wait_for(SOON, "the live malformed request refused", |m| {
            m.topic == response(&app, "501", "add")
        })
        .await
        .json();
    assert_eq!(malformed["code"], "invalid_json", "{malformed}");

    // Status publishing goes on.
    for (n, (available, reason, extension, status)) in [
        (true, "-", "idle", "available"),
        (true, "-", "calling", "ringing"),
        (false, "pause", "idle", "paused"),
    ]
    .into_iter()
    .enumerate()
    {
        app.set(1, available, reason, extension);
        sub.wait_for(SOON, &format!("event {n}: {status}"), |m| {
            m.topic == app.topic(1, "/event") && m.json()["to"] == status
        })
        .await;
    }
    // So does the command side.
    round_trip(&app, &mut sub, "still-serving").await;

    // The malformed retained request was refused and cleared.
    cleared(&mut sub, &add).await;
    if protocol == "3.1.1" {
        // 3.1.1 cannot announce a limit: the command connection reads the
        // 17 MB messages and refuses them (retained: cleared).
        for topic in [&list, &remove] {
            let answer = sub
                .wait_for(SOON, "the oversized request refused", |m| {
                    m.topic == topic.replace("/request/", "/response/")
                })
                .await
                .json();
            assert_eq!(answer["status"], "error", "{answer}");
            cleared(&mut sub, topic).await;
        }
    } else {
        // MQTT 5: the CONNECT announced mqtt.max_packet_size; the broker
        // never sends the 17 MB messages, so they stay on the broker
        // (cleared here: the cleanup client reads at most 16 MiB).
        for topic in [&list, &remove] {
            let answered = sub.seen.iter().any(|m| {
                m.topic == topic.replace("/request/", "/response/")
                    && m.json()["transaction"] != "still-serving"
            });
            assert!(!answered, "{topic} reached the bridge");
            sub.publish(topic, Vec::new(), true).await;
        }
    }
    assert_eq!(mqtt_errors(&app), 0, "a connection failed");
    assert_eq!(
        app.counter(|m| &m.mqtt_connects),
        1,
        "the publisher reconnected"
    );
    assert_eq!(app.counter(|m| &m.mqtt_commands_connected), 1);
    let (status, ready) = app.readyz().await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(app.simulator.counts().action("add"), 0);
    assert_eq!(app.simulator.counts().action("del"), 0);
    app.stop_bridge().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(any(pbx2mqtt_mqtt, pbx2mqtt_mosquitto)),
    ignore = "needs Mosquitto: set PBX2MQTT_TEST_MQTT_URL or install mosquitto (CI has both)"
)]
async fn oversized_and_malformed_requests_do_not_stop_status_publishing_mqtt5() {
    oversized_and_malformed_requests_do_not_stop_status_publishing("5").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(any(pbx2mqtt_mqtt, pbx2mqtt_mosquitto)),
    ignore = "needs Mosquitto: set PBX2MQTT_TEST_MQTT_URL or install mosquitto (CI has both)"
)]
async fn oversized_and_malformed_requests_do_not_stop_status_publishing_mqtt311() {
    oversized_and_malformed_requests_do_not_stop_status_publishing("3.1.1").await;
}

async fn a_request_sent_while_cut_off_runs_once_after(protocol: &'static str) {
    let binary = required_binary();
    let broker_port = free_port();
    let _broker = Mosquitto::start(binary, broker_port).await;
    let (gate, gate_port) = Gate::start(broker_port).await;
    let direct = format!("mqtt://127.0.0.1:{broker_port}");
    let mut app = prepare_app(Options {
        broker_url: Some(format!("mqtt://127.0.0.1:{gate_port}")),
        protocol: Some(protocol),
        extra_toml: QUEUES.into(),
        ..Options::default()
    })
    .await;
    let mut sub = TestClient::connect(&direct, &[format!("{}/#", app.base)]).await;
    app.start_bridge().await;
    wait_ready(&mut sub, &app.base).await;
    // The command session exists on the broker once a request is answered.
    round_trip(&app, &mut sub, "before").await;

    gate.close();
    let metrics = app.metrics.clone().expect("bridge started");
    wait_until(SOON, "both connections down", move || {
        metrics.mqtt_connected.load(Ordering::Relaxed) == 0
            && metrics.mqtt_commands_connected.load(Ordering::Relaxed) == 0
    })
    .await;
    sub.publish(
        &request(&app, "500", "add"),
        format!(
            r#"{{"agent":"{}","transaction":"while-away"}}"#,
            app.agent(2)
        ),
        false,
    )
    .await;
    // Delivered to the broker (our own subscription sees it) while the
    // bridge is away.
    sub.wait_for(SOON, "the request on the broker", |m| {
        m.topic == request(&app, "500", "add")
    })
    .await;
    assert_eq!(app.simulator.counts().action("add"), 0);

    gate.open();
    let ok = answer(&mut sub, &response(&app, "500", "add"), "while-away").await;
    assert_eq!(ok["status"], "ok", "{ok}");
    round_trip(&app, &mut sub, "after").await;
    assert_eq!(app.simulator.queue_members("500"), ["202"]);
    assert_eq!(
        app.simulator.counts().action("add"),
        1,
        "the request must run exactly once"
    );
    let answers = sub
        .seen
        .iter()
        .filter(|m| {
            m.topic == response(&app, "500", "add") && m.json()["transaction"] == "while-away"
        })
        .count();
    assert_eq!(answers, 1, "one answer");
    app.stop_bridge().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(pbx2mqtt_mosquitto),
    ignore = "needs the mosquitto binary (apt install mosquitto; CI installs it)"
)]
async fn a_request_sent_while_cut_off_runs_once_after_reconnect_mqtt5() {
    a_request_sent_while_cut_off_runs_once_after("5").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(pbx2mqtt_mosquitto),
    ignore = "needs the mosquitto binary (apt install mosquitto; CI installs it)"
)]
async fn a_request_sent_while_cut_off_runs_once_after_reconnect_mqtt311() {
    a_request_sent_while_cut_off_runs_once_after("3.1.1").await;
}

/// The broker restarts (with persistence, as a production broker runs)
/// while the bridge is away: the command session, its subscriptions and the
/// request queued for it survive, and the request runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(pbx2mqtt_mosquitto),
    ignore = "needs the mosquitto binary (apt install mosquitto; CI installs it)"
)]
async fn a_request_sent_across_a_broker_restart_runs_once() {
    let binary = required_binary();
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    // Mosquitto started as root drops to its own user: let it write.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let broker_port = free_port();
    let config = format!(
        "listener {broker_port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\n",
        dir.path().display()
    );
    let broker = Mosquitto::start_with_config(binary, dir.path(), &config, &[broker_port]).await;
    let (gate, gate_port) = Gate::start(broker_port).await;
    let direct = format!("mqtt://127.0.0.1:{broker_port}");
    let mut app = prepare_app(Options {
        broker_url: Some(format!("mqtt://127.0.0.1:{gate_port}")),
        extra_toml: QUEUES.into(),
        ..Options::default()
    })
    .await;
    let filters = [format!("{}/#", app.base)];
    let mut sub = TestClient::connect(&direct, &filters).await;
    app.start_bridge().await;
    wait_ready(&mut sub, &app.base).await;
    round_trip(&app, &mut sub, "before").await;

    // The bridge is cut off, the broker restarts (saving and reloading its
    // sessions), a request arrives, then the bridge is let back in.
    gate.close();
    let metrics = app.metrics.clone().expect("bridge started");
    wait_until(SOON, "the command connection down", move || {
        metrics.mqtt_commands_connected.load(Ordering::Relaxed) == 0
    })
    .await;
    broker.stop();
    let _broker = Mosquitto::start_with_config(binary, dir.path(), &config, &[broker_port]).await;
    let mut sub = TestClient::connect(&direct, &filters).await;
    sub.publish(
        &request(&app, "500", "add"),
        format!(r#"{{"agent":"{}","transaction":"across"}}"#, app.agent(3)),
        false,
    )
    .await;
    sub.wait_for(SOON, "the request on the broker", |m| {
        m.topic == request(&app, "500", "add")
    })
    .await;
    gate.open();
    let ok = answer(&mut sub, &response(&app, "500", "add"), "across").await;
    assert_eq!(ok["status"], "ok", "{ok}");
    round_trip(&app, &mut sub, "after").await;
    assert_eq!(app.simulator.queue_members("500"), ["203"]);
    assert_eq!(app.simulator.counts().action("add"), 1);
    app.stop_bridge().await;
}
