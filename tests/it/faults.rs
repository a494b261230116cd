//! Upstream faults: every kind leads to `unknown` after `stale_after`
//! failed polls of that agent only, and the agent recovers when the fault
//! clears. The bridge keeps running throughout.

use std::time::Duration;

use pbx2mqtt::simulator::{Api, Fault, FaultKind};

use crate::helpers::{spawn_app, Options, SOON};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_kind_gives_unknown_for_that_agent_and_recovers() {
    let app = spawn_app(Options::default()).await;
    let mut sub = app.subscriber().await;
    app.set(1, true, "-", "idle");
    let event_topic = app.topic(1, "/event");
    sub.wait_for(SOON, "available", |m| {
        m.topic == event_topic && m.json()["to"] == "available"
    })
    .await;

    let kinds = [
        FaultKind::Http500,
        FaultKind::XmlRpcFault,
        FaultKind::Malformed,
        FaultKind::Empty,
        FaultKind::Truncated,
        FaultKind::HtmlErrorPage,
        FaultKind::PlainTextError("Service temporarily unavailable".into()),
        // Longer than belfabriek.timeout (1 s): a timeout.
        FaultKind::Latency(Duration::from_millis(1500)),
    ];
    for (round, kind) in kinds.into_iter().enumerate() {
        sub.forget();
        let failed_before = app.counter(|m| &m.polls_failed);
        app.simulator.inject(Fault {
            api: Api::Belfabriek,
            kind: kind.clone(),
            agent: Some(app.ext(1)),
            remaining: None,
        });
        let unknown = sub
            .wait_for(SOON, &format!("unknown under {kind:?}"), |m| {
                m.topic == event_topic && m.json()["to"] == "unknown"
            })
            .await
            .json();
        assert_eq!(unknown["from"], "available", "{kind:?}");
        assert!(
            app.counter(|m| &m.polls_failed) >= failed_before + 3,
            "{kind:?}: stale after 3 failures"
        );

        // Other agents are still polled while agent 1 fails.
        let (available, ext_status, expected) = if round % 2 == 0 {
            (true, "called", "on_call")
        } else {
            (true, "idle", "available")
        };
        app.set(2, available, "-", ext_status);
        sub.wait_for(SOON, "agent 2 moves", |m| {
            m.topic == app.topic(2, "/event") && m.json()["to"] == expected
        })
        .await;

        app.simulator.clear_faults();
        let back = sub
            .wait_for(SOON, "recovery", |m| {
                m.topic == event_topic && m.json()["from"] == "unknown"
            })
            .await
            .json();
        assert_eq!(back["to"], "available", "{kind:?}");
    }
    sub.clear_retained().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_failed_poll_is_not_a_transition() {
    let app = spawn_app(Options::default()).await;
    let mut sub = app.subscriber().await;
    app.set(1, true, "-", "idle");
    let event_topic = app.topic(1, "/event");
    sub.wait_for(SOON, "available", |m| {
        m.topic == event_topic && m.json()["to"] == "available"
    })
    .await;
    sub.forget();
    let failed_before = app.counter(|m| &m.polls_failed);
    app.simulator.inject(Fault {
        api: Api::Belfabriek,
        kind: FaultKind::Http500,
        agent: Some(app.ext(1)),
        remaining: Some(2),
    });
    let metrics = app.metrics.clone().unwrap();
    crate::helpers::wait_until(SOON, "two failed polls", move || {
        metrics
            .polls_failed
            .load(std::sync::atomic::Ordering::Relaxed)
            >= failed_before + 2
    })
    .await;
    app.wait_polls(3).await;
    assert!(
        !sub.seen.iter().any(|m| m.topic == event_topic),
        "two failures (below stale_after = 3) must not change the status: {:?}",
        sub.seen
            .iter()
            .filter(|m| m.topic == event_topic)
            .map(|m| m.text())
            .collect::<Vec<_>>()
    );
    sub.clear_retained().await;
}
