//! A flood of refused requests against a real Mosquitto (issue #9, defect
//! 6): 20,000 requests for a queue that is not allowed, published at QoS 1,
//! are each answered (counted by transaction), and the bridge keeps
//! publishing status meanwhile. The refusal rate is printed, not asserted.
//!
//! The flood is paced at [`FLOOD_RATE`] (or `PBX2MQTT_TEST_FLOOD_RATE`;
//! `0` = as fast as one client can): this suite runs a debug build on a
//! machine shared with other tests, where a rate assertion would measure
//! the machine. How fast the release build refuses (as fast as one client
//! publishes, so a default broker queue never overflows) is measured by
//! the benchmark, `cargo bench --bench pipeline`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::mpsc;

use crate::helpers::{spawn_app, uses_embedded_broker, Options, SOON};
use crate::mqtt_client::TestClient;

/// Requests in the flood.
const FLOOD: usize = 20_000;

/// Requests per second the flood is paced at (see the module doc).
const FLOOD_RATE: u64 = 2_000;

fn flood_rate() -> u64 {
    std::env::var("PBX2MQTT_TEST_FLOOD_RATE")
        .ok()
        .and_then(|rate| rate.parse().ok())
        .unwrap_or(FLOOD_RATE)
}

/// How long the answers may take at most before the test gives up (a
/// liveness bound, far above any plausible run; the rate is printed).
const ALL_ANSWERED_WITHIN: Duration = Duration::from_secs(120);

/// The client, what it receives (topic, payload), and a signal per
/// (re)connect.
type RawClient = (
    AsyncClient,
    mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    mpsc::UnboundedReceiver<()>,
);

/// A raw MQTT 5 client for the flood, on its own OS thread with its own
/// runtime (so the bridge's load in this process does not slow it, and it
/// does not slow the bridge's runtime): every publish received is sent to
/// `received` (topic, payload). It announces a receive maximum of 65,535,
/// so the broker may have that many answers in flight to it: the test
/// client must not be where messages are dropped.
fn raw_client(url: &str, name: &str, inflight: u16) -> RawClient {
    let url = pbx2mqtt::config::BrokerUrl::parse(url).expect("broker url");
    let mut options = MqttOptions::new(
        format!("{name}-{}", rand::random::<u32>()),
        url.host().to_owned(),
        url.port(),
    );
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_outgoing_inflight_upper_limit(inflight)
        .set_receive_maximum(Some(u16::MAX))
        .set_max_packet_size(Some(1 << 20));
    let (client, mut eventloop) = AsyncClient::new(options, 4096);
    let (tx, received) = mpsc::unbounded_channel();
    let (acks_tx, acks) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the flood client");
        runtime.block_on(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        let topic = String::from_utf8_lossy(&publish.topic).into_owned();
                        let _ = tx.send((topic, publish.payload.to_vec()));
                    }
                    Ok(Event::Incoming(Packet::SubAck(_) | Packet::ConnAck(_))) => {
                        let _ = acks_tx.send(());
                    }
                    Ok(_) => {}
                    Err(error) => {
                        if tx.is_closed() {
                            return;
                        }
                        eprintln!("flood client: {error}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
    });
    (client, received, acks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(pbx2mqtt_mqtt),
    ignore = "needs a real Mosquitto: set PBX2MQTT_TEST_MQTT_URL (the embedded broker's queues are not what is tested)"
)]
async fn a_flood_of_refused_requests_is_answered_in_full_and_status_goes_on_mqtt5() {
    flood("5").await;
}

/// Over MQTT 3.1.1 the broker keeps at most 20 messages in flight to the
/// bridge and queues 1,000 more (Mosquitto's defaults), then drops: the
/// bridge must take requests as fast as they come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(pbx2mqtt_mqtt),
    ignore = "needs a real Mosquitto: set PBX2MQTT_TEST_MQTT_URL (the embedded broker's queues are not what is tested)"
)]
async fn a_flood_of_refused_requests_is_answered_in_full_and_status_goes_on_mqtt311() {
    flood("3.1.1").await;
}

async fn flood(protocol: &'static str) {
    assert!(
        !uses_embedded_broker(),
        "the flood test needs a real Mosquitto (set PBX2MQTT_TEST_MQTT_URL)"
    );
    let app = spawn_app(Options {
        agents: 1,
        extra_toml: "[commands]\nallowed_queues = [500]\n".into(),
        protocol: Some(protocol),
        ..Options::default()
    })
    .await;
    drop(app.ready_subscriber().await);
    // Only the status topic: this client must not be flooded by the answers.
    let status_topic = app.topic(1, "/status");
    let mut status =
        TestClient::connect(&app.broker_url, std::slice::from_ref(&status_topic)).await;
    let request_topic = format!("{}/request/queue/999/add", app.base);
    let response_topic = format!("{}/response/queue/999/add", app.base);

    // The listener for the answers, subscribed before the flood.
    let (listener, mut answers, mut listener_acks) = raw_client(&app.broker_url, "answers", 100);
    tokio::time::timeout(SOON, listener_acks.recv())
        .await
        .expect("listener connected");
    listener
        .subscribe(response_topic.clone(), QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    tokio::time::timeout(SOON, listener_acks.recv())
        .await
        .expect("SUBACK");

    let (publisher, _ignored, mut publisher_acks) = raw_client(&app.broker_url, "flood", 1000);
    tokio::time::timeout(SOON, publisher_acks.recv())
        .await
        .expect("publisher connected");

    let started = Instant::now();
    // The publishing loop on its own thread too, paced (0: unpaced).
    let rate = flood_rate();
    let flood = {
        let publisher = publisher.clone();
        let topic = request_topic.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("a runtime for the flood");
            runtime.block_on(async {
                for n in 0..FLOOD {
                    if rate > 0 && n % 100 == 0 {
                        let due = started + Duration::from_micros(n as u64 * 1_000_000 / rate);
                        tokio::time::sleep(due.saturating_duration_since(Instant::now())).await;
                    }
                    let payload = format!(r#"{{"extension":"201","transaction":"f{n}"}}"#);
                    publisher
                        .publish(topic.clone(), QoS::AtLeastOnce, false, payload)
                        .await
                        .expect("publish");
                }
            });
            started.elapsed()
        })
    };

    // Meanwhile the agent changes: its status must still be published.
    let mut changes = 0;
    let mut answered: HashSet<String> = HashSet::with_capacity(FLOOD);
    let mut wrong = 0usize;
    let deadline = tokio::time::Instant::now() + ALL_ANSWERED_WITHIN;
    let mut next_change = tokio::time::Instant::now();
    let mut last_answer = started.elapsed();
    while answered.len() < FLOOD {
        tokio::select! {
            answer = answers.recv() => {
                let (topic, payload) = answer.expect("listener running");
                assert_eq!(topic, response_topic);
                let json: serde_json::Value =
                    serde_json::from_slice(&payload).expect("a JSON answer");
                if json["code"] != "queue_not_allowed" {
                    wrong += 1;
                }
                if let Some(transaction) = json["transaction"].as_str() {
                    answered.insert(transaction.to_owned());
                }
                last_answer = started.elapsed();
            }
            () = tokio::time::sleep_until(next_change), if changes < 4 => {
                let (available, expected) = if changes % 2 == 0 {
                    (true, "available")
                } else {
                    (false, "offline")
                };
                status.forget();
                app.set(1, available, "-", "idle");
                status
                    .wait_for(SOON, expected, |m| m.topic == status_topic && m.text() == expected)
                    .await;
                eprintln!(
                    "status {expected} published during the flood ({} answers so far)",
                    answered.len()
                );
                changes += 1;
                next_change = tokio::time::Instant::now() + Duration::from_millis(200);
            }
            () = tokio::time::sleep_until(deadline) => {
                panic!(
                    "only {} of {FLOOD} refused requests were answered within {ALL_ANSWERED_WITHIN:?} \
                     (the bridge refused {} and ignored {})",
                    answered.len(),
                    app.counter(|m| &m.commands_failed),
                    app.counter(|m| &m.requests_ignored),
                );
            }
        }
    }
    let published_in = flood.join().expect("flood thread");
    let rate = FLOOD as f64 / last_answer.as_secs_f64();
    eprintln!(
        "MQTT {protocol}: {FLOOD} requests published in {published_in:?} ({:.0}/s); \
         all answered after {last_answer:?}: {rate:.0} refusals/s",
        FLOOD as f64 / published_in.as_secs_f64()
    );
    assert_eq!(wrong, 0, "every answer is the refusal");
    assert_eq!(answered.len(), FLOOD);
    // Status still goes out after the flood.
    let final_expected = if changes % 2 == 0 {
        "available"
    } else {
        "offline"
    };
    status.forget();
    app.set(1, changes % 2 == 0, "-", "idle");
    status
        .wait_for(SOON, final_expected, |m| {
            m.topic == status_topic && m.text() == final_expected
        })
        .await;
    let _ = listener.disconnect().await;
    let _ = publisher.disconnect().await;
}
