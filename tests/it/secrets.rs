//! Secrets never leak: the Belfabriek PIN (in request bodies) and the TRiNG
//! key (in URLs) must not appear in any log line (every crate, TRACE level),
//! MQTT payload, or byte of the history database, even when upstream echoes
//! them back in errors.

use pbx2mqtt::simulator::{Api, Fault, FaultKind};

use crate::helpers::{captured_logs, spawn_app, Options, SOON, TEST_KEY, TEST_PIN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pin_and_key_never_reach_logs_payloads_or_the_database() {
    let logs = captured_logs();
    let mut app = spawn_app(Options::default()).await;
    let mut sub = app.ready_subscriber().await;
    app.set(1, true, "-", "called");
    sub.wait_for(SOON, "on_call", |m| {
        m.topic == app.topic(1, "/event") && m.json()["to"] == "on_call"
    })
    .await;

    // Upstream echoes the secrets back in its errors.
    app.simulator.inject(Fault {
        api: Api::Belfabriek,
        kind: FaultKind::PlainTextError(format!("invalid account {TEST_PIN}")),
        agent: Some(app.ext(1)),
        remaining: None,
    });
    sub.wait_for(SOON, "unknown", |m| {
        m.topic == app.topic(1, "/event") && m.json()["to"] == "unknown"
    })
    .await;
    app.simulator.clear_faults();

    // Queue commands: a success, a rejected one, and an upstream error that
    // quotes the key and the URL.
    let request = |action: &str| format!("{}/request/queue/500/{action}", app.base);
    let response = |action: &str| format!("{}/response/queue/500/{action}", app.base);
    sub.publish(
        &request("add"),
        format!(r#"{{"agent":"{}","transaction":"a1"}}"#, app.agent(1)),
        false,
    )
    .await;
    sub.wait_topic(&response("add"), SOON).await;
    sub.publish(
        &request("add"),
        r#"{"extension":"201&key=x","transaction":"a2"}"#,
        false,
    )
    .await;
    app.simulator.inject(Fault {
        api: Api::Tring,
        kind: FaultKind::PlainTextError(format!(
            "ERROR: bad request key={TEST_KEY} on /pbx/proxyapi.php?key={TEST_KEY}"
        )),
        agent: None,
        remaining: None,
    });
    sub.publish(&request("list"), r#"{"transaction":"l1"}"#, false)
        .await;
    let error = sub.wait_topic(&response("list"), SOON).await.json();
    assert_eq!(error["status"], "error", "{error}");
    app.simulator.clear_faults();
    app.wait_polls(2).await;
    app.stop_bridge().await;

    let logged = logs.contents();
    assert!(
        logged.contains("poll failed") || logged.contains("poll"),
        "the capture works: {} bytes",
        logged.len()
    );
    for secret in [TEST_PIN, TEST_KEY] {
        let leaks: Vec<&str> = logged
            .lines()
            .filter(|line| line.contains(secret))
            .collect();
        assert!(leaks.is_empty(), "secret in logs:\n{}", leaks.join("\n"));
        for message in &sub.seen {
            assert!(
                !message.text().contains(secret),
                "secret in MQTT payload on {}: {}",
                message.topic,
                message.text()
            );
        }
        for file in std::fs::read_dir(app.dir.path()).unwrap() {
            let path = file.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                continue; // the configuration file is where secrets are meant to be
            }
            // SQLite removes its -wal/-shm files as the last connection
            // closes; a file that is gone holds no secret.
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "secret in {}",
                path.display()
            );
        }
    }
    sub.clear_retained().await;
}

/// rumqttc, reqwest and sqlx log through the `log` crate, not `tracing`: their
/// records must reach the same subscriber, or the leak check above (and an
/// operator's logs) would miss them.
#[test]
fn records_of_the_log_crate_reach_the_subscriber() {
    let logs = captured_logs();
    log::warn!(target: "rumqttc::state", "a record through the log crate");
    let logged = logs.contents();
    assert!(
        logged.contains("a record through the log crate"),
        "the log bridge is missing: {logged}"
    );
}
