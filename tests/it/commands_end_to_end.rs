//! End-to-end tests of the command dispatcher through the public API: real
//! HTTP to the PBX simulator, a real SQLite file, the request and response
//! channels driven directly (the over-MQTT round trip is in `commands.rs`).

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use pbx2mqtt::commands::audit::{AuditSink, AuditWriter};
use pbx2mqtt::commands::dispatcher::BACKLOG_PER_SLOT;
use pbx2mqtt::commands::membership::RefreshRequests;
use pbx2mqtt::commands::Dispatcher;
use pbx2mqtt::config::Config;
use pbx2mqtt::metrics::Metrics;
use pbx2mqtt::mqtt::{Incoming, Outgoing};
use pbx2mqtt::secret::Secret;
use pbx2mqtt::simulator::{Api, Fault, FaultKind, Simulator, SimulatorConfig};
use pbx2mqtt::store::{AuditOutcome, AuditRecord, Store};
use pbx2mqtt::tring::TringClient;

use crate::helpers::LogBuffer;

/// A key with characters that need URL encoding, easy to search for.
const KEY: &str = "K3y-s3cr3t&x=1/+";

/// How long a test waits for anything before failing.
const WAIT: Duration = Duration::from_secs(15);

/// One dispatcher wired to a fresh simulator and SQLite file.
struct Harness {
    simulator: Simulator,
    store: Store,
    metrics: Arc<Metrics>,
    /// Requests to the dispatcher; `None` once closed (shutdown).
    requests: Option<mpsc::Sender<Incoming>>,
    responses: mpsc::Receiver<Outgoing>,
    /// The audit writer's sink (to wait until rows are stored).
    audit: AuditSink,
    /// The simulator's shutdown (separate: the dispatcher's shutdown must
    /// not take TRiNG away from the commands it still runs).
    simulator_stop: CancellationToken,
    /// The dispatcher and its channel ends, until [`Harness::spawn`].
    idle: Option<(Dispatcher, mpsc::Receiver<Incoming>, mpsc::Sender<Outgoing>)>,
    /// The running dispatcher.
    dispatcher: Option<JoinHandle<()>>,
    /// Every message the dispatcher published, in order.
    published: Vec<Outgoing>,
    _dir: tempfile::TempDir,
}

/// What a harness is built from.
struct Setup<'a> {
    /// TOML lines for `[commands]`.
    commands_toml: &'a str,
    /// `tring.timeout`.
    tring_timeout: &'a str,
    /// The TRiNG key (the simulator's and the bridge's).
    key: &'a str,
    /// The Belfabriek PIN, when configured.
    pin: Option<&'a str>,
}

impl Harness {
    /// Starts with the agents `alice` (201) and `bob` (no extension), and
    /// `commands_toml` in `[commands]`, the key [`KEY`].
    async fn start(commands_toml: &str, tring_timeout: &str) -> Self {
        let mut harness = Self::prepare(Setup {
            commands_toml,
            tring_timeout,
            key: KEY,
            pin: None,
        })
        .await;
        harness.spawn();
        harness
    }

    /// Builds everything but does not run the dispatcher yet.
    async fn prepare(setup: Setup<'_>) -> Self {
        let Setup {
            commands_toml,
            tring_timeout,
            key,
            pin,
        } = setup;
        let simulator_stop = CancellationToken::new();
        let simulator = Simulator::start(
            SimulatorConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                agents: 4,
                tring_key: key.into(),
                tenant: "SIM".into(),
                auto: false,
                ..SimulatorConfig::default()
            },
            simulator_stop.clone(),
        )
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let database = format!("sqlite://{}", dir.path().join("bridge.db").display());
        let belfabriek = match pin {
            Some(pin) => format!("[belfabriek]\naccount_pin = {pin:?}"),
            None => String::new(),
        };
        let config = Config::from_toml_str(&format!(
            r#"
            {belfabriek}
            [tring]
            url = "{url}"
            key = {key:?}
            tenant = "SIM"
            timeout = "{tring_timeout}"
            [database]
            url = {database:?}
            [commands]
            {commands_toml}
            [[agents]]
            id = "alice"
            extension_id = 1001
            queue_extension = 201
            [[agents]]
            id = "bob"
            extension_id = 1002
            "#,
            url = simulator.tring_url(),
        ))
        .unwrap();
        let store = Store::open(&config.database.url).await.unwrap();
        let client = TringClient::new(&config.tring, config.tring_key()).unwrap();
        let metrics = Arc::new(Metrics::default());
        let (requests, request_rx) = mpsc::channel(16);
        let (response_tx, responses) = mpsc::channel(64);
        let (audit_writer, audit) = AuditWriter::new(store.clone(), None, metrics.clone());
        tokio::spawn(audit_writer.run());
        let dispatcher = Dispatcher::new(
            &config,
            client,
            audit.clone(),
            RefreshRequests::default(),
            metrics.clone(),
        );
        Self {
            simulator,
            store,
            metrics,
            requests: Some(requests),
            responses,
            audit,
            simulator_stop,
            idle: Some((dispatcher, request_rx, response_tx)),
            dispatcher: None,
            published: Vec::new(),
            _dir: dir,
        }
    }

    /// Runs the dispatcher.
    fn spawn(&mut self) {
        let (dispatcher, request_rx, response_tx) =
            self.idle.take().expect("the dispatcher runs already");
        self.dispatcher = Some(tokio::spawn(dispatcher.run(request_rx, response_tx)));
    }

    /// Sends a request on `pbx2mqtt/request/<suffix>`.
    async fn send(&self, suffix: &str, payload: &str, retain: bool) {
        self.requests
            .as_ref()
            .expect("requests are still taken")
            .send(Incoming {
                topic: format!("pbx2mqtt/request/{suffix}"),
                payload: payload.as_bytes().to_vec(),
                retain,
                response_topic: None,
                correlation_data: None,
            })
            .await
            .unwrap();
    }

    /// The next published message.
    async fn next(&mut self) -> Outgoing {
        let message = tokio::time::timeout(WAIT, self.responses.recv())
            .await
            .expect("no message from the dispatcher in time")
            .expect("the dispatcher closed its channel");
        self.published.push(message.clone());
        message
    }

    /// The next published message's JSON payload, whatever its topic.
    async fn next_json(&mut self) -> Value {
        let message = self.next().await;
        serde_json::from_slice(&message.payload).unwrap()
    }

    /// The commands counted so far: (ok, failed).
    fn counted(&self) -> (u64, u64) {
        let load = |counter: &std::sync::atomic::AtomicU64| {
            counter.load(std::sync::atomic::Ordering::Relaxed)
        };
        (
            load(&self.metrics.commands_ok),
            load(&self.metrics.commands_failed),
        )
    }

    /// The next message, which must be a response on `response/<suffix>`
    /// (QoS 1, not retained); its JSON.
    async fn response(&mut self, suffix: &str) -> Value {
        let message = self.next().await;
        assert_eq!(message.topic, format!("pbx2mqtt/response/{suffix}"));
        assert!(!message.retain);
        serde_json::from_slice(&message.payload).unwrap()
    }

    /// Sends a request and returns its response.
    async fn request(&mut self, suffix: &str, payload: &str) -> Value {
        self.send(suffix, payload, false).await;
        self.response(suffix).await
    }

    /// Every audit row, newest first (after the writer stored what it
    /// was given).
    async fn audit(&self) -> Vec<AuditRecord> {
        self.audit.flush().await;
        self.store
            .audit_since(DateTime::<Utc>::UNIX_EPOCH, 10_000)
            .await
            .unwrap()
    }

    /// Closes the request channel, as the command connection does at
    /// shutdown: the dispatcher answers what it has and stops.
    fn close_requests(&mut self) {
        self.requests = None;
    }

    /// Stops the dispatcher (waiting for it) and the simulator.
    async fn stop(mut self) -> Vec<Outgoing> {
        self.close_requests();
        let dispatcher = self.dispatcher.take().expect("the dispatcher runs");
        tokio::time::timeout(WAIT, dispatcher)
            .await
            .expect("the dispatcher did not stop")
            .unwrap();
        self.simulator_stop.cancel();
        self.published
    }
}

fn ok(data: Value, transaction: Value) -> Value {
    let mut response = json!({"status": "ok", "data": data});
    if !transaction.is_null() {
        response["transaction"] = transaction;
    }
    response
}

#[tokio::test]
async fn each_action_end_to_end() {
    let mut h = Harness::start("allow_clean = true", "10s").await;
    h.simulator.set_queue_members("500", ["202"]);

    let response = h
        .request(
            "queue/500/add",
            r#"{"agent":"alice","transaction":"t-add"}"#,
        )
        .await;
    assert_eq!(
        response,
        ok(
            json!({"queue":"500","agent":"alice","extension":"201","custom":false,"already_member":false}),
            json!("t-add")
        )
    );
    assert_eq!(h.simulator.queue_members("500"), ["202", "201"]);

    // Already a member: answered ok without a second add upstream.
    let response = h.request("queue/500/add", "201").await;
    assert_eq!(response["data"]["already_member"], json!(true));
    assert_eq!(h.simulator.counts().action("add"), 1);

    let response = h
        .request(
            "queue/500/add",
            r#"{"extension":"0612345678","type":"custom","transaction":17}"#,
        )
        .await;
    assert_eq!(
        response,
        ok(
            json!({"queue":"500","extension":"0612345678","custom":true,"already_member":false}),
            json!(17)
        )
    );
    assert!(h.simulator.queue_entries("500")[2].custom);

    let response = h
        .request("queue/500/list", r#"{"transaction":"t-list"}"#)
        .await;
    assert_eq!(
        response,
        ok(
            json!({"queue":"500","members":["202","201","0612345678"]}),
            json!("t-list")
        )
    );

    let response = h
        .request("agent/alice/queues", r#"{"transaction":"t-q"}"#)
        .await;
    assert_eq!(
        response,
        ok(
            json!({"agent":"alice","extension":"201","queues":["500"]}),
            json!("t-q")
        )
    );
    let response = h.request("agent/202/queues", "").await;
    assert_eq!(
        response,
        ok(
            json!({"agent":null,"extension":"202","queues":["500"]}),
            Value::Null
        )
    );

    let response = h
        .request(
            "queue/500/remove",
            r#"{"agent":"alice","transaction":"t-rm"}"#,
        )
        .await;
    assert_eq!(
        response,
        ok(
            json!({"queue":"500","agent":"alice","extension":"201","was_member":true}),
            json!("t-rm")
        )
    );
    assert_eq!(h.simulator.queue_members("500"), ["202", "0612345678"]);
    // Not a member any more: ok, and no del upstream.
    let response = h.request("queue/500/remove", "201").await;
    assert_eq!(response["data"]["was_member"], json!(false));
    assert_eq!(h.simulator.counts().action("del"), 1);

    let response = h
        .request("queue/500/clean", r#"{"transaction":"t-clean"}"#)
        .await;
    assert_eq!(response, ok(json!({"queue":"500"}), json!("t-clean")));
    assert!(h.simulator.queue_members("500").is_empty());
    let response = h.request("queue/500/list", "{}").await;
    assert_eq!(response["data"]["members"], json!([]));

    let rows = h.audit().await;
    assert_eq!(rows.len(), 10);
    assert!(rows.iter().all(|row| row.entry.outcome == AuditOutcome::Ok));
    assert!(rows
        .iter()
        .all(|row| row.entry.upstream_latency_ms.is_some()));
    let newest = &rows[1].entry; // rows[0] is the last list
    assert_eq!(newest.action, "clean");
    assert_eq!(newest.topic, "pbx2mqtt/request/queue/500/clean");
    assert_eq!(newest.queue.as_deref(), Some("500"));
    assert_eq!(newest.transaction.as_deref(), Some("\"t-clean\""));
    assert_eq!(newest.request, r#"{"transaction":"t-clean"}"#);
    let first = &rows[9].entry;
    assert_eq!(
        (
            first.action.as_str(),
            first.agent.as_deref(),
            first.extension.as_deref()
        ),
        ("add", Some("alice"), Some("201"))
    );
    assert_eq!(h.counted().0, 10);
    h.stop().await;
}

#[tokio::test]
async fn rejections_never_reach_upstream() {
    let mut h = Harness::start(
        "allowed_queues = [500]\nallow_clean = false\nmax_payload_bytes = 256",
        "10s",
    )
    .await;
    let long_queue = "5".repeat(10_000);
    let long_extension = format!(r#"{{"extension":"{}"}}"#, "2".repeat(200));
    let oversized = format!(r#"{{"extension":"201","padding":"{}"}}"#, "x".repeat(300));
    let cases: Vec<(String, &str, &str)> = vec![
        ("queue/500/add".into(), r#"{"agent":"#, "invalid_json"),
        (
            "queue/500/delete".into(),
            r#"{"extension":"201"}"#,
            "unknown_action",
        ),
        (
            "queue/500/add".into(),
            r#"{"agent":"mallory"}"#,
            "unknown_agent",
        ),
        ("agent/mallory/queues".into(), "", "unknown_agent"),
        (
            "queue/500/add".into(),
            r#"{"agent":"bob"}"#,
            "agent_has_no_extension",
        ),
        (
            "queue/500/add".into(),
            r#"{"extension":"201&action=clean"}"#,
            "invalid_extension",
        ),
        (
            "queue/500/add".into(),
            "201&action=clean",
            "invalid_extension",
        ),
        (
            "queue/500/add".into(),
            r#"{"extension":"../"}"#,
            "invalid_extension",
        ),
        (
            "queue/500/add".into(),
            r#"{"extension":"٢٠١"}"#,
            "invalid_extension",
        ),
        (
            "queue/500/add".into(),
            r#"{"extension":""}"#,
            "invalid_extension",
        ),
        ("queue/500/add".into(), &long_extension, "invalid_extension"),
        ("queue/500&action=clean/list".into(), "", "invalid_queue"),
        ("queue/../list".into(), "", "invalid_queue"),
        ("queue/٥٠٠/list".into(), "", "invalid_queue"),
        (format!("queue/{long_queue}/list"), "", "invalid_queue"),
        ("queue/600/list".into(), "", "queue_not_allowed"),
        ("queue/500/clean".into(), "{}", "clean_not_allowed"),
        ("queue/500/add".into(), &oversized, "payload_too_large"),
        (
            "queue/500/add".into(),
            r#"{"agent":"alice","extension":"201"}"#,
            "invalid_request",
        ),
        (
            "queue/500/add".into(),
            r#"{"extension":"201","priority":1}"#,
            "invalid_request",
        ),
        (
            "queue/500/add".into(),
            r#"{"extension":["201"]}"#,
            "invalid_request",
        ),
    ];
    for (i, (suffix, payload, code)) in cases.iter().enumerate() {
        let payload =
            if payload.starts_with('{') && payload.ends_with('}') && *code != "payload_too_large" {
                // Add a transaction to every well-formed object, to see it echoed.
                format!(r#"{{"transaction":{i},{}"#, &payload[1..]).replace(",}", "}")
            } else {
                payload.to_string()
            };
        let response = h.request(suffix, &payload).await;
        assert_eq!(
            response["status"], "error",
            "{suffix} {payload}: {response}"
        );
        assert_eq!(response["code"], *code, "{suffix} {payload}: {response}");
        assert!(response["error"].as_str().is_some_and(|e| !e.is_empty()));
        if payload.starts_with(r#"{"transaction""#) {
            assert_eq!(response["transaction"], json!(i), "{suffix} {payload}");
        }
    }
    let counts = h.simulator.counts();
    assert_eq!(
        counts.tring, 0,
        "a refused request reached TRiNG: {counts:?}"
    );
    let rows = h.audit().await;
    assert_eq!(rows.len(), cases.len());
    for (row, (_, _, code)) in rows.iter().rev().zip(&cases) {
        assert_eq!(row.entry.outcome, AuditOutcome::Error);
        assert_eq!(row.entry.error_code.as_deref(), Some(*code));
        assert_eq!(row.entry.upstream_latency_ms, None);
    }
    assert_eq!(h.counted().1, cases.len() as u64);
    h.stop().await;
}

#[tokio::test]
async fn upstream_errors_become_error_responses_and_serving_continues() {
    let mut h = Harness::start("", "1s").await;
    h.simulator.set_queue_members("500", ["202"]);

    h.simulator.inject(
        Fault::always(
            Api::Tring,
            FaultKind::PlainTextError("ERROR: queue is locked".into()),
        )
        .times(1),
    );
    let response = h.request("queue/500/list", r#"{"transaction":"a"}"#).await;
    assert_eq!(response["code"], "upstream_rejected", "{response}");
    assert!(
        response["error"]
            .as_str()
            .unwrap()
            .contains("ERROR: queue is locked"),
        "{response}"
    );
    assert_eq!(response["transaction"], "a");

    h.simulator
        .inject(Fault::always(Api::Tring, FaultKind::Http500).times(1));
    let response = h.request("queue/500/add", "201").await;
    assert_eq!(response["code"], "upstream_error", "{response}");
    assert!(
        response["error"].as_str().unwrap().contains("500"),
        "{response}"
    );

    h.simulator
        .inject(Fault::always(Api::Tring, FaultKind::Latency(Duration::from_secs(5))).times(1));
    let response = h.request("agent/alice/queues", "").await;
    assert_eq!(response["code"], "upstream_timeout", "{response}");

    // A plain-text error on the add itself (after a successful list).
    h.simulator.inject(
        Fault::always(
            Api::Tring,
            FaultKind::PlainTextError("ERROR: no such agent".into()),
        )
        .for_agent("201")
        .times(1),
    );
    let response = h.request("queue/500/add", "201").await;
    assert_eq!(response["code"], "upstream_rejected", "{response}");

    // Still serving.
    let response = h.request("queue/500/add", "201").await;
    assert_eq!(response["status"], "ok", "{response}");
    assert_eq!(h.simulator.queue_members("500"), ["202", "201"]);

    let codes: Vec<_> = h
        .audit()
        .await
        .into_iter()
        .map(|r| r.entry.error_code)
        .collect();
    assert_eq!(
        codes,
        [
            None,
            Some("upstream_rejected".to_owned()),
            Some("upstream_timeout".to_owned()),
            Some("upstream_error".to_owned()),
            Some("upstream_rejected".to_owned()),
        ]
    );
    h.stop().await;
}

#[tokio::test]
async fn a_slow_command_does_not_block_the_others() {
    let mut h = Harness::start("concurrency = 4", "10s").await;
    // Only requests naming extension 201 are slow: the add, not the lists.
    h.simulator.inject(
        Fault::always(Api::Tring, FaultKind::Latency(Duration::from_secs(2)))
            .for_agent("201")
            .times(1),
    );
    h.send(
        "queue/500/add",
        r#"{"extension":"201","transaction":"slow"}"#,
        false,
    )
    .await;
    h.send("queue/501/list", r#"{"transaction":"fast"}"#, false)
        .await;
    let first = h.response("queue/501/list").await;
    assert_eq!(first["transaction"], "fast");
    let second = h.response("queue/500/add").await;
    assert_eq!(second["transaction"], "slow");
    assert_eq!(second["status"], "ok", "{second}");
    h.stop().await;
}

#[tokio::test]
async fn retained_requests_are_not_executed_and_are_cleared() {
    let mut h = Harness::start("allow_clean = true", "10s").await;
    h.simulator.set_queue_members("500", ["201"]);
    h.send("queue/500/clean", r#"{"transaction":"r1"}"#, true)
        .await;
    let clear = h.next().await;
    assert_eq!(
        clear,
        Outgoing {
            topic: "pbx2mqtt/request/queue/500/clean".into(),
            payload: Vec::new(),
            retain: true,
            correlation_data: None,
        }
    );
    let response = h.response("queue/500/clean").await;
    assert_eq!(response["code"], "retained_request", "{response}");
    assert_eq!(response["transaction"], "r1");
    // The broker hands our clear back (3.1.1: as a live, non-retained empty
    // message); it is ignored, as is any empty retained message.
    h.send("queue/500/clean", "", false).await;
    h.send("queue/500/list", "", true).await;
    let response = h
        .request("queue/500/list", r#"{"transaction":"after"}"#)
        .await;
    assert_eq!(response["transaction"], "after");
    assert_eq!(response["data"]["members"], json!(["201"]));
    assert_eq!(h.simulator.queue_members("500"), ["201"]);
    assert_eq!(h.simulator.counts().action("clean"), 0);
    let rows = h.audit().await;
    assert_eq!(rows.len(), 2);
    assert_eq!(
        rows[1].entry.error_code.as_deref(),
        Some("retained_request")
    );
    // A later empty non-retained message (not our echo) is a request again:
    // for clean it is refused, never executed.
    let response = h.request("queue/500/clean", "").await;
    assert_eq!(response["code"], "invalid_request");
    assert_eq!(h.simulator.counts().action("clean"), 0);
    h.stop().await;
}

#[tokio::test]
async fn a_duplicate_transaction_is_executed_once() {
    let mut h = Harness::start("", "10s").await;
    let payload = r#"{"extension":"201","transaction":"dup-1"}"#;
    // Two deliveries back to back (the second arrives while the first runs)
    // and a third after the answer.
    h.send("queue/500/add", payload, false).await;
    h.send("queue/500/add", payload, false).await;
    let first = h.response("queue/500/add").await;
    let second = h.response("queue/500/add").await;
    let third = h.request("queue/500/add", payload).await;
    assert_eq!(first["data"]["already_member"], json!(false), "{first}");
    assert_eq!(first, second);
    assert_eq!(first, third);
    let counts = h.simulator.counts();
    assert_eq!(
        (counts.action("list"), counts.action("add")),
        (1, 1),
        "{counts:?}"
    );
    // The same transaction on another topic is another request.
    let other = h
        .request(
            "queue/500/remove",
            r#"{"extension":"201","transaction":"dup-1"}"#,
        )
        .await;
    assert_eq!(other["data"]["was_member"], json!(true), "{other}");
    // No transaction: no deduplication (the second add finds the member).
    h.request("queue/500/add", "202").await;
    let again = h.request("queue/500/add", "202").await;
    assert_eq!(again["data"]["already_member"], json!(true));
    assert_eq!(h.audit().await.len(), 4);
    // A failure is not remembered: the retry with the same transaction runs.
    h.simulator
        .inject(Fault::always(Api::Tring, FaultKind::Http500).times(1));
    let failed = h
        .request("queue/500/list", r#"{"transaction":"retry"}"#)
        .await;
    assert_eq!(failed["code"], "upstream_error", "{failed}");
    let retried = h
        .request("queue/500/list", r#"{"transaction":"retry"}"#)
        .await;
    assert_eq!(retried["status"], "ok", "{retried}");
    h.stop().await;
}

#[tokio::test]
async fn shutdown_finishes_commands_in_flight() {
    let mut h = Harness::start("", "10s").await;
    h.simulator
        .inject(Fault::always(Api::Tring, FaultKind::Latency(Duration::from_millis(500))).times(1));
    h.send("queue/500/list", r#"{"transaction":"in-flight"}"#, false)
        .await;
    // Wait until the request has reached the simulator, then shut down.
    tokio::time::timeout(WAIT, async {
        while h.simulator.counts().tring == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    h.close_requests();
    let response = h.response("queue/500/list").await;
    assert_eq!(response["transaction"], "in-flight");
    assert_eq!(response["status"], "ok");
    let requests_before = h.simulator.counts().tring;
    let published = h.stop().await;
    assert_eq!(published.len(), 1);
    assert_eq!(requests_before, 1);
}

#[tokio::test]
async fn invalid_requests_are_answered_at_once_and_a_full_backlog_is_busy() {
    let mut h = Harness::start("concurrency = 1\nallowed_queues = [500]", "10s").await;
    assert_eq!(BACKLOG_PER_SLOT, 4, "the counts below");
    // The first TRiNG request is slow and holds the only slot; four more
    // valid requests fill the backlog (4 × concurrency).
    h.simulator
        .inject(Fault::always(Api::Tring, FaultKind::Latency(Duration::from_secs(3))).times(1));
    for i in 0..5 {
        let payload = format!(r#"{{"transaction":"v{i}"}}"#);
        h.send("queue/500/list", &payload, false).await;
    }
    h.send("queue/500/list", r#"{"transaction":"over"}"#, false)
        .await;
    h.send("queue/600/list", r#"{"transaction":"bad"}"#, false)
        .await;
    // Both are answered before any of the waiting valid ones.
    let mut refused = Vec::new();
    for _ in 0..2 {
        let json = h.next_json().await;
        refused.push((json["transaction"].clone(), json["code"].clone()));
    }
    refused.sort_by_key(|(transaction, _)| transaction.to_string());
    assert_eq!(
        refused,
        [
            (json!("bad"), json!("queue_not_allowed")),
            (json!("over"), json!("busy")),
        ]
    );
    // Then the valid ones, in order.
    for i in 0..5 {
        let response = h.response("queue/500/list").await;
        assert_eq!(response["status"], "ok", "{response}");
        assert_eq!(response["transaction"], format!("v{i}"));
    }
    assert_eq!(h.simulator.counts().tring, 5, "busy must not reach TRiNG");
    // `busy` is not remembered: a retry with the same transaction runs.
    let retry = h
        .request("queue/500/list", r#"{"transaction":"over"}"#)
        .await;
    assert_eq!(retry["status"], "ok", "{retry}");

    let rows = h.audit().await;
    assert_eq!(rows.len(), 8);
    let busy: Vec<_> = rows
        .iter()
        .filter(|row| row.entry.error_code.as_deref() == Some("busy"))
        .collect();
    assert_eq!(busy.len(), 1);
    assert_eq!(busy[0].entry.upstream_latency_ms, None);
    assert_eq!(busy[0].entry.transaction.as_deref(), Some("\"over\""));
    assert_eq!(h.counted().1, 2);
    h.stop().await;
}

#[tokio::test]
async fn shutdown_answers_every_request_already_received() {
    let mut h = Harness::prepare(Setup {
        commands_toml: "concurrency = 2",
        tring_timeout: "10s",
        key: KEY,
        pin: None,
    })
    .await;
    h.simulator.set_queue_members("500", ["202"]);
    // Requests the MQTT connection handed over (and acknowledged to the
    // broker) just before the shutdown began.
    for i in 0..6 {
        h.send(
            "queue/500/list",
            &format!(r#"{{"transaction":{i}}}"#),
            false,
        )
        .await;
    }
    h.send(
        "queue/500/add",
        r#"{"extension":"201","transaction":"add"}"#,
        false,
    )
    .await;
    h.send(
        "queue/500/add",
        r#"{"extension":"../","transaction":"bad"}"#,
        false,
    )
    .await;
    h.close_requests();
    h.spawn();
    let mut answers = Vec::new();
    for _ in 0..8 {
        let json = h.next_json().await;
        answers.push((json["transaction"].to_string(), json["status"].to_string()));
    }
    answers.sort();
    let mut expected: Vec<(String, String)> = (0..6)
        .map(|i| (i.to_string(), "\"ok\"".to_owned()))
        .chain([
            ("\"add\"".to_owned(), "\"ok\"".to_owned()),
            ("\"bad\"".to_owned(), "\"error\"".to_owned()),
        ])
        .collect();
    expected.sort();
    assert_eq!(answers, expected);
    assert_eq!(h.simulator.queue_members("500"), ["202", "201"]);
    assert_eq!(h.audit().await.len(), 8);
    let published = h.stop().await;
    assert_eq!(published.len(), 8);
}

#[tokio::test]
async fn short_numeric_secrets_do_not_corrupt_numbers_topics_or_requests() {
    // The PIN never goes to TRiNG; the key does, and may come back in its
    // text, but only there.
    let mut h = Harness::prepare(Setup {
        commands_toml: "",
        tring_timeout: "10s",
        key: "567890",
        pin: Some("1234"),
    })
    .await;
    h.spawn();
    let add_pin_like = r#"{"extension":"201234","transaction":"t1234"}"#;
    let response = h.request("queue/1234/add", add_pin_like).await;
    assert_eq!(
        response,
        ok(
            json!({"queue":"1234","extension":"201234","custom":false,"already_member":false}),
            json!("t1234")
        )
    );
    let add_key_like = r#"{"extension":"20567890","transaction":567890}"#;
    let response = h.request("queue/567890/add", add_key_like).await;
    assert_eq!(response["data"]["extension"], "20567890", "{response}");
    assert_eq!(response["data"]["queue"], "567890", "{response}");
    let response = h.request("queue/567890/list", "").await;
    assert_eq!(
        response["data"]["members"],
        json!(["20567890"]),
        "{response}"
    );

    // TRiNG quoting the key: that text loses it.
    h.simulator.inject(
        Fault::always(
            Api::Tring,
            FaultKind::PlainTextError("ERROR: key 567890 not valid".into()),
        )
        .times(1),
    );
    let response = h.request("queue/1234/list", "").await;
    assert_eq!(response["code"], "upstream_rejected", "{response}");
    let error = response["error"].as_str().unwrap();
    assert!(
        !error.contains("567890") && error.contains("[redacted]"),
        "{error}"
    );

    let rows = h.audit().await;
    let entries: Vec<_> = rows.iter().rev().map(|row| &row.entry).collect();
    assert_eq!(entries.len(), 4);
    assert_eq!(entries[0].topic, "pbx2mqtt/request/queue/1234/add");
    assert_eq!(entries[0].queue.as_deref(), Some("1234"));
    assert_eq!(entries[0].extension.as_deref(), Some("201234"));
    assert_eq!(entries[0].request, add_pin_like);
    assert_eq!(entries[0].transaction.as_deref(), Some("\"t1234\""));
    assert_eq!(entries[1].topic, "pbx2mqtt/request/queue/567890/add");
    assert_eq!(entries[1].queue.as_deref(), Some("567890"));
    assert_eq!(entries[1].extension.as_deref(), Some("20567890"));
    assert_eq!(entries[1].request, add_key_like);
    assert_eq!(entries[1].transaction.as_deref(), Some("567890"));
    let audited_error = entries[3].error.as_deref().unwrap();
    assert!(!audited_error.contains("567890"), "{audited_error}");
    h.stop().await;
}

#[tokio::test]
async fn the_key_never_appears_in_logs_responses_or_the_audit_table() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    // current_thread runtime: every task runs on this thread.
    let _guard = tracing::subscriber::set_default(subscriber);

    let mut h = Harness::start("allow_clean = true", "1s").await;
    let encoded: String = url::form_urlencoded::byte_serialize(KEY.as_bytes()).collect();
    // Upstream echoing the key back in an error, in both forms.
    h.simulator.inject(
        Fault::always(
            Api::Tring,
            FaultKind::PlainTextError(format!("ERROR: bad request key={KEY} url=?key={encoded}")),
        )
        .times(1),
    );
    let mut responses = vec![h.request("queue/500/list", "").await];
    h.simulator
        .inject(Fault::always(Api::Tring, FaultKind::Http500).times(1));
    responses.push(h.request("queue/500/add", r#"{"agent":"alice"}"#).await);
    h.simulator
        .inject(Fault::always(Api::Tring, FaultKind::Latency(Duration::from_secs(3))).times(1));
    responses.push(h.request("queue/500/clean", "{}").await);
    h.simulator
        .inject(Fault::always(Api::Tring, FaultKind::Malformed).times(1));
    responses.push(h.request("queue/500/list", "").await);
    for suffix in ["queue/500/add", "queue/500/remove"] {
        responses.push(h.request(suffix, "201").await);
    }
    responses.push(h.request("queue/500/add", "201&key=x").await);
    assert!(responses.iter().any(|r| r["code"] == "upstream_rejected"));
    assert!(responses.iter().any(|r| r["status"] == "ok"));

    let rows = h.audit().await;
    assert_eq!(rows.len(), responses.len());
    let published = h.stop().await;

    // An unreachable TRiNG: the connect error must not carry the URL.
    let mut config = Config::from_toml_str("[tring]\ntenant = \"SIM\"").unwrap();
    config.tring.url = "http://127.0.0.1:9/pbx/proxyapi.php".into();
    config.tring.timeout = Duration::from_secs(2);
    let client = TringClient::new(&config.tring, Secret::new(KEY)).unwrap();
    let error = client.list("500").await.unwrap_err().to_string();
    tracing::warn!(%error, "connect error for the secret test");

    let logs = logs.contents();
    assert!(
        logs.contains("tring request"),
        "the capture missed the client's logs"
    );
    assert!(logs.contains("key=REDACTED"), "{logs}");
    assert!(logs.contains("PHP warning"), "{logs}");
    let audit_text = serde_json::to_string(&rows).unwrap();
    let response_text: String = published
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    for (place, text) in [
        ("logs", logs.as_str()),
        ("responses", response_text.as_str()),
        ("audit table", audit_text.as_str()),
        ("connect error", error.as_str()),
    ] {
        for needle in [KEY, encoded.as_str(), "s3cr3t"] {
            assert!(
                !text.contains(needle),
                "the key ({needle}) is in the {place}:\n{text}"
            );
        }
    }
    let _ = std::io::stderr().flush();
}
