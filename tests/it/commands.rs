//! Queue commands over a real broker: request → simulator → response with
//! the transaction; bad and retained requests never reach upstream.

use pbx2mqtt::simulator::RequestCounts;

use crate::helpers::{prepare_app, Options, SOON};

/// TRiNG requests that change a queue (lists are also made by the bridge's
/// membership refresh, so they are not counted).
fn writes(counts: &RequestCounts) -> u64 {
    counts.action("add") + counts.action("del") + counts.action("clean")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_commands_round_trip_over_mqtt() {
    let mut app = prepare_app(Options {
        extra_toml: "[commands]\nallowed_queues = [500, 501]\n".into(),
        ..Options::default()
    })
    .await;
    let base = app.base.clone();
    let request = |queue: &str, action: &str| format!("{base}/request/queue/{queue}/{action}");
    let response = |queue: &str, action: &str| format!("{base}/response/queue/{queue}/{action}");

    // A retained request waiting on the broker (it would replay after every
    // broker restart) is refused and cleared when the bridge subscribes, and
    // never executed. (MQTT 3.1.1 brokers clear the retain flag on live
    // delivery, so this is the case the bridge can and must catch.)
    let mut sub = app.subscriber().await;
    sub.publish(
        &request("501", "add"),
        r#"{"extension":"203","transaction":"ret"}"#,
        true,
    )
    .await;
    app.start_bridge().await;
    let answer = sub.wait_topic(&response("501", "add"), SOON).await.json();
    assert_eq!(
        (answer["code"].as_str(), answer["transaction"].as_str()),
        (Some("retained_request"), Some("ret")),
        "{answer}"
    );
    sub.wait_for(SOON, "retained request cleared", |m| {
        m.topic == request("501", "add") && m.payload.is_empty()
    })
    .await;
    assert!(app.simulator.queue_members("501").is_empty());
    assert_eq!(
        writes(&app.simulator.counts()),
        0,
        "a retained request must not reach TRiNG"
    );

    // add by agent id, with a numeric transaction echoed as a number
    sub.publish(
        &request("500", "add"),
        format!(r#"{{"agent":"{}","transaction":42}}"#, app.agent(1)),
        false,
    )
    .await;
    let answer = sub.wait_topic(&response("500", "add"), SOON).await.json();
    assert_eq!(answer["status"], "ok", "{answer}");
    assert_eq!(answer["transaction"], 42);
    assert_eq!(app.simulator.queue_members("500"), ["201"]);

    // bare-number payload on add means {"extension": ...}
    sub.forget();
    sub.publish(&request("500", "add"), "202", false).await;
    let answer = sub.wait_topic(&response("500", "add"), SOON).await.json();
    assert_eq!(answer["status"], "ok", "{answer}");
    assert_eq!(app.simulator.queue_members("500"), ["201", "202"]);

    // list answers without the -TENANT suffix
    sub.publish(&request("500", "list"), r#"{"transaction":"l"}"#, false)
        .await;
    let answer = sub.wait_topic(&response("500", "list"), SOON).await.json();
    assert_eq!(
        answer["data"]["members"],
        serde_json::json!(["201", "202"]),
        "{answer}"
    );

    // the agent's queues
    sub.publish(
        &format!("{}/request/agent/{}/queues", app.base, app.agent(1)),
        "{}",
        false,
    )
    .await;
    let answer = sub
        .wait_topic(
            &format!("{}/response/agent/{}/queues", app.base, app.agent(1)),
            SOON,
        )
        .await
        .json();
    assert_eq!(
        answer["data"]["queues"],
        serde_json::json!(["500"]),
        "{answer}"
    );

    // remove
    sub.publish(
        &request("500", "remove"),
        r#"{"extension":"202","transaction":"r"}"#,
        false,
    )
    .await;
    let answer = sub
        .wait_topic(&response("500", "remove"), SOON)
        .await
        .json();
    assert_eq!(
        (answer["status"].as_str(), answer["transaction"].as_str()),
        (Some("ok"), Some("r"))
    );
    assert_eq!(app.simulator.queue_members("500"), ["201"]);

    // Bad input gets an error and never reaches upstream.
    let tring_before = writes(&app.simulator.counts());
    for (queue, action, payload, code) in [
        (
            "500",
            "add",
            r#"{"extension":"201&action=clean"}"#,
            "invalid_extension",
        ),
        ("500", "add", "{not json", "invalid_json"),
        ("999", "add", r#"{"extension":"201"}"#, "queue_not_allowed"),
        ("500", "clean", "{}", "clean_not_allowed"),
        ("500", "explode", "{}", "unknown_action"),
        ("500", "add", r#"{"agent":"nobody"}"#, "unknown_agent"),
    ] {
        sub.forget();
        sub.publish(&request(queue, action), payload, false).await;
        let answer = sub.wait_topic(&response(queue, action), SOON).await.json();
        assert_eq!(
            (answer["status"].as_str(), answer["code"].as_str()),
            (Some("error"), Some(code)),
            "{payload}: {answer}"
        );
        assert!(!answer["error"].as_str().unwrap_or_default().is_empty());
    }
    assert_eq!(
        writes(&app.simulator.counts()),
        tring_before,
        "rejected commands must not reach TRiNG"
    );
}
