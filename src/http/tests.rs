//! The HTTP server against a real SQLite history, over real HTTP.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use axum::http::header::ACCEPT;

use super::*;
use crate::report::period::ReportRange;
use chrono::Utc;

use crate::model::Status;
use crate::report::format::from_csv;
use crate::report::sql_tests::insert;
use crate::report::tests::{agent, at, intervals, settings, SPRING_FORWARD};
use crate::report::{summarize, SummaryReport, SummaryRow, TimelineReport, TimelineRow};
use crate::report::{Granularity, SummaryRequest};
use crate::store::test_database::TestDatabase;

/// How long a test waits for the server to stop.
const WAIT: Duration = Duration::from_secs(10);

/// A running server on port 0 over a fresh SQLite history.
struct TestServer {
    base: String,
    latest: LatestStates,
    /// The server's report slots, to take them all in a test.
    slots: Arc<tokio::sync::Semaphore>,
    metrics: Arc<Metrics>,
    client: reqwest::Client,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), HttpError>>,
    database: TestDatabase,
}

impl TestServer {
    async fn start() -> Self {
        Self::start_configured(
            Streams::default(),
            crate::report::ReportLimits::default(),
            None,
        )
        .await
    }

    /// A server with its own stream limit.
    async fn start_with(streams: Streams) -> Self {
        Self::start_configured(streams, crate::report::ReportLimits::default(), None).await
    }

    /// A server whose reports are bounded by `limits`.
    async fn start_limited(limits: crate::report::ReportLimits) -> Self {
        Self::start_configured(Streams::default(), limits, None).await
    }

    async fn start_configured(
        streams: Streams,
        limits: crate::report::ReportLimits,
        request_timeout: Option<Duration>,
    ) -> Self {
        let database = TestDatabase::sqlite().await;
        insert(&database.store, &intervals(SPRING_FORWARD)).await;
        let mut state = crate::status::unknown_state(
            agent("alice"),
            "Alice".to_owned(),
            at("2026-11-22T09:41:07Z"),
        );
        state.status = Status::OnCall;
        state.on_a_call = true;
        let latest = LatestStates::new([state], 0);
        let metrics = Arc::new(Metrics::default());
        Metrics::inc(&metrics.polls_ok);
        let report = crate::report::ReportSettings {
            limits,
            ..settings()
        };
        let mut http_state = HttpState::with_settings(
            database.store.clone(),
            latest.clone(),
            metrics.clone(),
            report,
        );
        http_state.streams = streams;
        if let Some(timeout) = request_timeout {
            http_state.request_timeout = timeout;
        }
        let slots = http_state.report_slots.clone();
        let server = HttpServer::bind("127.0.0.1:0".parse().unwrap(), http_state)
            .await
            .unwrap();
        let base = format!("http://{}", server.local_addr());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(shutdown.clone()));
        Self {
            metrics,
            latest,
            slots,
            base,
            client: reqwest::Client::new(),
            shutdown,
            task,
            database,
        }
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the server stops when cancelled")
            .unwrap()
            .unwrap();
        self.database.finish().await;
    }
}

async fn json<T: serde::de::DeserializeOwned>(response: reqwest::Response) -> T {
    let text = response.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn content_type(response: &reqwest::Response) -> String {
    response.headers()[CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn health_readiness_metrics_and_agents() {
    let server = TestServer::start().await;
    let response = server.get("/healthz").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "ok");

    // Not ready while the broker connections are down...
    let response = server.get("/readyz").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = json(response).await;
    assert_eq!(body["ready"], false);
    assert_eq!(body["database"], "ok");
    assert_eq!(body["mqtt"], "disconnected");
    // ... ready once both are up.
    Metrics::set(&server.metrics.mqtt_connected, 1);
    Metrics::set(&server.metrics.mqtt_commands_connected, 1);
    let response = server.get("/readyz").await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = json(response).await;
    assert_eq!(
        (body["ready"].clone(), body["mqtt"].clone()),
        (json!(true), json!("connected"))
    );

    let response = server.get("/metrics").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(content_type(&response).starts_with("text/plain; version=0.0.4"));
    let text = response.text().await.unwrap();
    assert!(
        text.contains("pbx2mqtt_polls_total{result=\"ok\"} 1\n"),
        "{text}"
    );

    let response = server.get("/api/agents").await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = json(response).await;
    assert_eq!(body.as_array().unwrap().len(), 1);
    assert_eq!(body[0]["agent"], "alice");
    assert_eq!(body[0]["status"], "on_call");
    // The same payload as the retained MQTT state.
    assert!(
        body[0]["since"]
            .as_str()
            .unwrap()
            .starts_with("2026-11-22T09:41:07"),
        "{body}"
    );

    let response = server.get("/nothing-here").await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    server.stop().await;
}

#[tokio::test]
async fn readiness_fails_when_the_database_is_gone() {
    let server = TestServer::start().await;
    server.database.store.clone().close().await;
    let response = server.get("/readyz").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = json(response).await;
    assert_eq!(body["ready"], false);
    server.stop().await;
}

#[tokio::test]
async fn summary_in_json_and_csv() {
    let server = TestServer::start().await;
    let path = "/api/reports/summary?from=2026-03-29&to=2026-03-29&agent=alice&agent=zoe";
    let response = server.get(path).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(content_type(&response), "application/json");
    let report: SummaryReport = json(response).await;
    assert_eq!(report.timezone, "Europe/Amsterdam");
    assert_eq!(report.from.to_rfc3339(), "2026-03-29T00:00:00+01:00");
    assert_eq!(report.to.to_rfc3339(), "2026-03-30T00:00:00+02:00");
    let request = SummaryRequest {
        range: ReportRange::resolve(
            Some("2026-03-29".parse().unwrap()),
            Some("2026-03-29".parse().unwrap()),
            chrono_tz::Europe::Amsterdam,
            Utc::now(),
        )
        .unwrap(),
        by: Granularity::Day,
        agents: vec![agent("alice"), agent("zoe")],
    };
    let reference = summarize(
        &intervals(SPRING_FORWARD),
        &request,
        &settings(),
        Utc::now(),
    )
    .unwrap();
    assert_eq!(report.rows, reference.rows);
    assert_eq!(report.rows[0].period_s, 82_800.0);
    assert_eq!(report.rows[0].recorded_s, 82_800.0);
    assert_eq!(report.rows[1].agent, "zoe");

    for (query, accept) in [("&format=csv", None), ("", Some("text/csv"))] {
        let mut request = server.client.get(format!("{}{path}{query}", server.base));
        if let Some(accept) = accept {
            request = request.header(ACCEPT, accept);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(content_type(&response), "text/csv; charset=utf-8");
        let rows: Vec<SummaryRow> = from_csv(&response.text().await.unwrap()).unwrap();
        assert_eq!(rows, reference.rows);
    }

    // `format=` wins over `Accept`; the default period is `day` and
    // agents may be comma-separated.
    let response = server
        .client
        .get(format!(
            "{}/api/reports/summary?from=2026-03-28&to=2026-03-29&agent=alice,zoe&format=json",
            server.base
        ))
        .header(ACCEPT, "text/csv")
        .send()
        .await
        .unwrap();
    let report: SummaryReport = json(response).await;
    assert_eq!(report.rows.len(), 4);
    server.stop().await;
}

#[tokio::test]
async fn timeline_in_json_and_csv() {
    let server = TestServer::start().await;
    let path = "/api/reports/timeline?agent=alice&from=2026-03-29T12:00:00%2B02:00&to=2026-03-29T12:40:00%2B02:00";
    let response = server.get(path).await;
    assert_eq!(response.status(), StatusCode::OK);
    let report: TimelineReport = json(response).await;
    let statuses: Vec<(Status, String)> = report
        .intervals
        .iter()
        .map(|row| (row.status, row.started_at.to_rfc3339()))
        .collect();
    assert_eq!(
        statuses,
        [
            (Status::Paused, "2026-03-29T12:00:00+02:00".to_owned()),
            (Status::Ringing, "2026-03-29T12:30:00+02:00".to_owned()),
            (Status::OnCall, "2026-03-29T12:30:10+02:00".to_owned()),
        ]
    );
    let response = server.get(&format!("{path}&format=csv")).await;
    assert_eq!(content_type(&response), "text/csv; charset=utf-8");
    let rows: Vec<TimelineRow> = from_csv(&response.text().await.unwrap()).unwrap();
    assert_eq!(rows, report.intervals);
    server.stop().await;
}

#[tokio::test]
async fn bad_parameters_are_400_naming_the_parameter() {
    let server = TestServer::start().await;
    for (path, parameter, fragment) in [
        ("/api/reports/summary?from=yesterday", "from", "yesterday"),
        ("/api/reports/summary?to=2026-02-30", "to", "2026-02-30"),
        (
            "/api/reports/summary?from=2026-03-02&to=2026-03-01",
            "from",
            "before",
        ),
        ("/api/reports/summary?by=year", "by", "year"),
        ("/api/reports/summary?format=xml", "format", "xml"),
        ("/api/reports/summary?agent=a/b", "agent", "a/b"),
        ("/api/reports/summary?agents=alice", "query", "agents"),
        (
            "/api/reports/summary?from=2026-03-01&from=2026-03-02",
            "from",
            "more than once",
        ),
        (
            "/api/reports/summary?from=2000-01-01&to=2026-01-01",
            "by",
            "periods",
        ),
        ("/api/reports/timeline?from=2026-03-29", "agent", "agent"),
        ("/api/reports/timeline?agent=alice&by=day", "query", "by"),
    ] {
        let response = server.get(path).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(content_type(&response), "application/json", "{path}");
        let body: Value = json(response).await;
        assert_eq!(body["parameter"], parameter, "{path}: {body}");
        let message = body["error"].as_str().unwrap();
        assert!(
            message.contains(&format!("`{parameter}`")) || parameter == "query",
            "{path}: {message}"
        );
        assert!(message.contains(fragment), "{path}: {message}");
    }
    server.stop().await;
}

#[tokio::test]
async fn binding_a_busy_port_names_the_address() {
    let database = TestDatabase::sqlite().await;
    let state = HttpState::with_settings(
        database.store.clone(),
        LatestStates::default(),
        Arc::new(Metrics::default()),
        settings(),
    );
    let first = HttpServer::bind("127.0.0.1:0".parse().unwrap(), state.clone())
        .await
        .unwrap();
    let error = HttpServer::bind(first.local_addr(), state)
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains(&first.local_addr().to_string()),
        "{error}"
    );
    assert!(error.to_string().contains("http.listen"), "{error}");
    database.finish().await;
}

// ------------------------------------------------------------ web pages

#[tokio::test]
async fn pages_and_assets_are_served_from_the_binary_with_types_and_etags() {
    let server = TestServer::start().await;
    for (path, type_prefix, needle) in [
        ("/", "text/html; charset=utf-8", "assets/wallboard.js"),
        ("/reports", "text/html; charset=utf-8", "assets/reports.js"),
        ("/assets/style.css", "text/css", ".tile"),
        ("/assets/wallboard.js", "text/javascript", "api/stream"),
        (
            "/assets/reports.js",
            "text/javascript",
            "api/reports/summary",
        ),
        (
            "/assets/status.js",
            "text/javascript",
            "export const STATUSES",
        ),
    ] {
        let response = server.get(path).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert!(content_type(&response).starts_with(type_prefix), "{path}");
        let headers = response.headers().clone();
        assert_eq!(headers["cache-control"], "no-cache", "{path}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        let is_html = type_prefix.starts_with("text/html");
        assert_eq!(
            headers.contains_key("content-security-policy"),
            is_html,
            "{path}: a policy on pages only"
        );
        let etag = headers["etag"].to_str().unwrap().to_owned();
        assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
        let body = response.text().await.unwrap();
        assert!(body.contains(needle), "{path} lacks {needle}");

        // A browser with this version gets 304 and no body.
        let again = server
            .client
            .get(format!("{}{path}", server.base))
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{path}");
        assert_eq!(again.headers()["etag"], etag.as_str());
        assert!(again.text().await.unwrap().is_empty());
        let stale = server
            .client
            .get(format!("{}{path}", server.base))
            .header("if-none-match", "\"0000000000000000\"")
            .send()
            .await
            .unwrap();
        assert_eq!(stale.status(), StatusCode::OK, "{path}");
    }
    for path in [
        "/assets/nothing.js",
        "/assets/%2e%2e%2fCargo.toml",
        "/assets/",
        "/reports/",
    ] {
        let response = server.get(path).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
    }
    server.stop().await;
}

/// Every file in `assets/web/` is built in, and every file a page or a
/// script refers to is one of them (a renamed script fails here, not on a
/// wall screen).
#[test]
fn every_page_and_script_reference_is_served() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/web");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut served: Vec<&str> = pages::ASSETS
        .iter()
        .chain([&pages::INDEX, &pages::REPORTS])
        .map(|asset| asset.name)
        .collect();
    served.sort_unstable();
    assert_eq!(on_disk, served, "assets/web/ and the built-in files differ");
    for asset in pages::ASSETS.iter().chain([&pages::INDEX, &pages::REPORTS]) {
        let text = std::str::from_utf8(asset.body).unwrap();
        assert_eq!(
            text.as_bytes(),
            std::fs::read(dir.join(asset.name)).unwrap(),
            "{}",
            asset.name
        );
        // `assets/x` in a page, `from './x'` in a script.
        let references = text
            .split("assets/")
            .skip(1)
            .chain(text.split("from './").skip(1))
            .map(|rest| {
                rest.split(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '_'))
                    .next()
                    .unwrap_or_default()
            })
            .filter(|name| name.ends_with(".js") || name.ends_with(".css"));
        for name in references {
            assert!(
                pages::ASSETS.iter().any(|served| served.name == name),
                "{} refers to {name}, which /assets/ does not serve",
                asset.name
            );
        }
    }
}

/// One server-sent event as read off the wire.
#[derive(Debug, Default, Clone, PartialEq)]
struct SseEvent {
    event: String,
    id: Option<String>,
    retry: Option<String>,
    data: String,
}

/// Reads `/api/stream` frame by frame.
struct SseReader {
    response: reqwest::Response,
    buffer: String,
    /// Comment lines seen (keep-alives).
    comments: usize,
}

impl SseReader {
    async fn open(server: &TestServer, last_event_id: Option<&str>) -> reqwest::Response {
        let mut request = server.client.get(format!("{}/api/stream", server.base));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        request.send().await.unwrap()
    }

    fn new(response: reqwest::Response) -> Self {
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(content_type(&response), "text/event-stream");
        assert_eq!(response.headers()["cache-control"], "no-cache");
        assert_eq!(response.headers()["x-accel-buffering"], "no");
        Self {
            response,
            buffer: String::new(),
            comments: 0,
        }
    }

    /// The next event (skipping comments); `None` when the stream ended.
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent::default();
                let mut any = false;
                for line in frame.lines().filter(|line| !line.is_empty()) {
                    if line.starts_with(':') {
                        self.comments += 1;
                        continue;
                    }
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value).to_owned();
                    any = true;
                    match field {
                        "event" => event.event = value,
                        "id" => event.id = Some(value),
                        "retry" => event.retry = Some(value),
                        "data" if event.data.is_empty() => event.data = value,
                        "data" => {
                            event.data.push('\n');
                            event.data.push_str(&value);
                        }
                        other => panic!("unexpected field {other:?} in {frame:?}"),
                    }
                }
                if any {
                    return Some(event);
                }
            }
            let chunk = tokio::time::timeout(WAIT, self.response.chunk())
                .await
                .expect("an event within the wait")
                .unwrap()?;
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    async fn expect(&mut self, name: &str) -> (SseEvent, Value) {
        let event = self.next().await.expect("the stream goes on");
        assert_eq!(event.event, name, "{event:?}");
        assert!(!event.data.contains('\n'), "one data line: {event:?}");
        let data = serde_json::from_str(&event.data).unwrap();
        (event, data)
    }
}

fn alice(status: Status, seq: u64) -> crate::model::AgentState {
    let mut state = crate::status::unknown_state(
        agent("alice"),
        "Alice".to_owned(),
        at("2026-11-22T09:45:00Z"),
    );
    state.status = status;
    state.seq = seq;
    state
}

#[tokio::test]
async fn the_stream_sends_a_snapshot_then_each_change_with_its_seq() {
    let server = TestServer::start().await;
    let mut stream = SseReader::new(SseReader::open(&server, None).await);
    let (event, snapshot) = stream.expect("snapshot").await;
    assert_eq!(event.id.as_deref(), Some("0"));
    assert_eq!(event.retry.as_deref(), Some("1000"));
    assert_eq!(snapshot["bridge"], "online");
    assert_eq!(snapshot["agents"].as_array().unwrap().len(), 1);
    assert_eq!(snapshot["agents"][0]["agent"], "alice");
    assert_eq!(snapshot["agents"][0]["status"], "on_call");
    assert_eq!(snapshot["queues"], json!([]));
    let server_time = snapshot["server_time"].as_str().unwrap();
    let server_time = chrono::DateTime::parse_from_rfc3339(server_time).unwrap();
    assert!(
        (Utc::now() - server_time.with_timezone(&Utc))
            .num_seconds()
            .abs()
            < 60
    );

    // A transition: a `state` event whose id is its seq, the MQTT payload.
    let event = crate::model::TransitionEvent {
        agent: agent("alice"),
        from: Status::OnCall,
        to: Status::Wrapup,
        at: at("2026-11-22T09:45:00Z"),
        previous_duration_s: 233.0,
        seq: 7,
    };
    server
        .latest
        .commit(vec![alice(Status::Wrapup, 7)], vec![event]);
    let (event, state) = stream.expect("state").await;
    assert_eq!(event.id.as_deref(), Some("7"));
    assert_eq!(
        state,
        serde_json::to_value(alice(Status::Wrapup, 7)).unwrap()
    );

    // Queue members: a `queues` event.
    let members = crate::model::QueueMembers {
        queue: "500".into(),
        members: vec!["201".into()],
        agents: vec![agent("alice")],
        updated: at("2026-11-22T09:45:01Z"),
    };
    server.latest.set_queue(members.clone());
    let (_, queue) = stream.expect("queues").await;
    assert_eq!(queue, serde_json::to_value(&members).unwrap());
    let queues: Value = json(server.get("/api/queues").await).await;
    assert_eq!(queues, json!({ "queues": [members] }));

    // Many changes while the reader is not reading: each agent once, at
    // its latest state.
    for seq in 8..40 {
        let status = if seq % 2 == 0 {
            Status::Available
        } else {
            Status::Ringing
        };
        server.latest.commit(vec![alice(status, seq)], Vec::new());
    }
    let (event, state) = stream.expect("state").await;
    assert_eq!(event.id.as_deref(), Some("39"));
    assert_eq!(state["status"], "ringing");

    // A reconnect with Last-Event-ID gets the current state again.
    let mut again = SseReader::new(SseReader::open(&server, Some("7")).await);
    let (event, snapshot) = again.expect("snapshot").await;
    assert_eq!(event.id.as_deref(), Some("7"), "the committed seq");
    assert_eq!(snapshot["agents"][0]["status"], "ringing");
    assert_eq!(snapshot["agents"][0]["seq"], 39);
    assert_eq!(snapshot["queues"][0]["queue"], "500");
    drop(stream);
    drop(again);
    server.stop().await;
}

#[tokio::test]
async fn streams_are_limited_and_end_when_the_server_stops() {
    let server = TestServer::start_with(Streams::new(1)).await;
    let mut first = SseReader::new(SseReader::open(&server, None).await);
    first.expect("snapshot").await;
    let refused = SseReader::open(&server, None).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["retry-after"], "10");
    let body: Value = json(refused).await;
    assert!(
        body["error"].as_str().unwrap().contains("too many"),
        "{body}"
    );

    // A closed browser frees its place (noticed at the next write).
    drop(first);
    let mut seq = 100;
    let mut second = loop {
        seq += 1;
        server
            .latest
            .commit(vec![alice(Status::Available, seq)], Vec::new());
        tokio::time::sleep(Duration::from_millis(20)).await;
        let response = SseReader::open(&server, None).await;
        if response.status() == StatusCode::OK {
            break SseReader::new(response);
        }
        assert!(seq < 400, "the closed stream's place was never freed");
    };
    second.expect("snapshot").await;

    // Shutdown: `bridge` offline, then the stream ends and the server stops.
    server.shutdown.cancel();
    let (_, bridge) = second.expect("bridge").await;
    assert_eq!(bridge, json!({ "state": "offline" }));
    assert!(second.next().await.is_none(), "the stream ends");
    assert_eq!(second.comments, 0);
    server.stop().await;
}

#[tokio::test]
async fn a_quiet_stream_sends_keep_alive_comments() {
    let streams = Streams::default().with_keep_alive(Duration::from_millis(100));
    let server = TestServer::start_with(streams).await;
    let mut stream = SseReader::new(SseReader::open(&server, None).await);
    stream.expect("snapshot").await;
    tokio::time::sleep(Duration::from_millis(450)).await;
    server
        .latest
        .commit(vec![alice(Status::Paused, 3)], Vec::new());
    let (_, state) = stream.expect("state").await;
    assert_eq!(state["status"], "paused");
    assert!(stream.comments >= 2, "{} keep-alives", stream.comments);
    drop(stream);
    server.stop().await;
}

/// The JSON body of a 400 for a request over a limit, checked to name it.
async fn over_limit(response: reqwest::Response, limit: &str) -> Value {
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(content_type(&response), "application/json");
    let body: Value = json(response).await;
    assert_eq!(body["limit"], limit, "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains(&format!("{limit} {}", body["max"])),
        "the message names the limit and its value: {message}"
    );
    body
}

#[tokio::test]
async fn a_summary_over_max_cells_is_400_naming_the_limit_before_any_query() {
    let limits = crate::report::ReportLimits {
        max_cells: 10,
        ..Default::default()
    };
    let server = TestServer::start_limited(limits).await;
    // 3 agents × 3 days = 9 cells: answered.
    let path = "/api/reports/summary?from=2026-03-27&to=2026-03-29&agent=alice,bob,zoe";
    let response = server.get(path).await;
    assert_eq!(response.status(), StatusCode::OK);
    let report: SummaryReport = json(response).await;
    assert_eq!(report.rows.len(), 9);
    // 3 agents × 4 days = 12 cells: refused, naming the limit and the value.
    let path = "/api/reports/summary?from=2026-03-26&to=2026-03-29&agent=alice,bob,zoe";
    let body = over_limit(server.get(path).await, "report.max_cells").await;
    assert_eq!(
        (body["max"].clone(), body["value"].clone()),
        (json!(10), json!(12))
    );
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains("12 cells (3 agents × 4 periods)"),
        "{message}"
    );
    // Duplicates count once.
    let path = "/api/reports/summary?from=2026-03-27&to=2026-03-29&agent=alice,alice,bob,zoe";
    assert_eq!(server.get(path).await.status(), StatusCode::OK);
    // Refused before any query: even with the database closed it is a 400.
    server.database.store.clone().close().await;
    let path = "/api/reports/summary?from=2026-03-26&to=2026-03-29&agent=alice,bob,zoe";
    over_limit(server.get(path).await, "report.max_cells").await;
    server.stop().await;
}

#[tokio::test]
async fn a_summary_of_every_agent_counts_the_agents_with_history() {
    // One configured agent (carol) and one with history (alice): 2 agents.
    let limits = crate::report::ReportLimits {
        max_cells: 5,
        ..Default::default()
    };
    let server = TestServer::start_limited(limits).await;
    let response = server
        .get("/api/reports/summary?from=2026-03-28&to=2026-03-29")
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let report: SummaryReport = json(response).await;
    assert_eq!(report.rows.len(), 4);
    let body = over_limit(
        server
            .get("/api/reports/summary?from=2026-03-27&to=2026-03-29")
            .await,
        "report.max_cells",
    )
    .await;
    assert_eq!(body["value"], 6, "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains("(configured or with history)"),
        "{message}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_long_agent_list_is_refused_as_soon_as_it_passes_the_limit() {
    let limits = crate::report::ReportLimits {
        max_cells: 100,
        ..Default::default()
    };
    let server = TestServer::start_limited(limits).await;
    let ids: Vec<String> = (0..5_000).map(|n| format!("agent{n}")).collect();
    for endpoint in ["summary", "timeline"] {
        let path = format!("/api/reports/{endpoint}?agent={}", ids.join(","));
        let body = over_limit(server.get(&path).await, "report.max_cells").await;
        assert_eq!(body["value"], 101, "{endpoint}: {body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("more than 100 agent ids"),
            "{body}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn a_timeline_over_max_timeline_rows_is_400_naming_the_limit() {
    let path = "/api/reports/timeline?agent=alice&from=2026-03-29&to=2026-03-29";
    // Alice has 7 intervals that day: 7 rows are allowed at a limit of 7...
    let limits = crate::report::ReportLimits {
        max_timeline_rows: 7,
        ..Default::default()
    };
    let server = TestServer::start_limited(limits).await;
    let response = server.get(path).await;
    assert_eq!(response.status(), StatusCode::OK);
    let report: TimelineReport = json(response).await;
    assert_eq!(report.intervals.len(), 7);
    server.stop().await;
    // ... and refused at 6, counting across agents.
    for (max, path) in [
        (6, path.to_owned()),
        (4, path.replace("agent=alice", "agent=alice,zoe")),
    ] {
        let limits = crate::report::ReportLimits {
            max_timeline_rows: max,
            ..Default::default()
        };
        let server = TestServer::start_limited(limits).await;
        let body = over_limit(server.get(&path).await, "report.max_timeline_rows").await;
        assert_eq!(body["value"], max + 1, "{body}");
        server.stop().await;
    }
}

#[tokio::test]
async fn reports_beyond_max_concurrent_are_refused_at_once_with_retry_after() {
    let limits = crate::report::ReportLimits {
        max_concurrent: 2,
        ..Default::default()
    };
    let server = TestServer::start_limited(limits).await;
    let path = "/api/reports/summary?from=2026-03-29&to=2026-03-29&agent=alice";
    // Two reports running (their slots taken here): a third is refused.
    let held = server.slots.clone().acquire_many_owned(2).await.unwrap();
    for path in [path, "/api/reports/timeline?agent=alice"] {
        let response = server.get(path).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()["retry-after"], "1");
        let body: Value = json(response).await;
        assert_eq!(body["limit"], "report.max_concurrent", "{body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("2 reports are running"),
            "{body}"
        );
    }
    // A request over a limit is still a 400, not a 503.
    let response = server
        .get("/api/reports/summary?from=2000-01-01&to=2026-01-01")
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    // Other endpoints are not reports.
    assert_eq!(server.get("/api/agents").await.status(), StatusCode::OK);
    drop(held);
    assert_eq!(server.get(path).await.status(), StatusCode::OK);
    assert_eq!(server.slots.available_permits(), 2, "slots are given back");
    server.stop().await;
}

/// Makes every read of the history slow (counting to a million first,
/// some 200 ms and more per query), as a database slowed from outside.
async fn slow_history(server: &TestServer) {
    for sql in [
        "ALTER TABLE intervals RENAME TO intervals_real",
        "CREATE VIEW intervals AS SELECT r.* FROM \
         (WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 1000000) \
          SELECT MAX(n) AS slow FROM c) s CROSS JOIN intervals_real r WHERE s.slow > 0",
    ] {
        server.database.store.execute_unchecked(sql).await.unwrap();
    }
}

#[tokio::test]
async fn a_request_over_http_request_timeout_is_503_but_the_stream_stays_open() {
    let limits = crate::report::ReportLimits {
        timeout: Duration::from_secs(30),
        ..Default::default()
    };
    let server =
        TestServer::start_configured(Streams::default(), limits, Some(Duration::from_millis(50)))
            .await;
    slow_history(&server).await;
    let response = server
        .get("/api/reports/summary?from=2026-03-29&to=2026-03-29&agent=alice")
        .await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = json(response).await;
    assert_eq!(body["limit"], "http.request_timeout", "{body}");
    assert_eq!(server.get("/healthz").await.status(), StatusCode::OK);
    // The stream outlives the timeout.
    let mut stream = server
        .client
        .get(format!("{}/api/stream", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let first = stream.chunk().await.unwrap().expect("the snapshot");
    assert!(String::from_utf8_lossy(&first).contains("snapshot"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    match tokio::time::timeout(Duration::from_millis(100), stream.chunk()).await {
        Err(_) | Ok(Ok(Some(_))) => {} // open: quiet, or more of it
        Ok(ended) => panic!("the stream ended at the request timeout: {ended:?}"),
    }
    drop(stream);
    server.stop().await;
}

#[tokio::test]
async fn a_report_over_report_timeout_is_504_and_gives_its_slot_back() {
    let limits = crate::report::ReportLimits {
        timeout: Duration::from_millis(20),
        max_concurrent: 1,
        ..Default::default()
    };
    let server = TestServer::start_limited(limits).await;
    slow_history(&server).await;
    for path in [
        "/api/reports/summary?from=2026-03-29&to=2026-03-29&agent=alice",
        "/api/reports/timeline?agent=alice&from=2026-03-29&to=2026-03-29",
    ] {
        let response = server.get(path).await;
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT, "{path}");
        let body: Value = json(response).await;
        assert_eq!(body["limit"], "report.timeout", "{body}");
        assert!(
            body["error"].as_str().unwrap().contains("report.timeout"),
            "{body}"
        );
    }
    assert_eq!(
        server.slots.available_permits(),
        1,
        "the slot is given back"
    );
    server.stop().await;
}

#[tokio::test]
async fn reports_read_on_their_own_connections_never_the_writers() {
    let server = TestServer::start().await;
    // Every writer connection taken, one of them inside a write transaction
    // (as a history batch would be): reports still answer, because they
    // read on the reader pool.
    let writer = server
        .database
        .store
        .sqlite_pool()
        .expect("an SQLite store");
    let mut first = writer.acquire().await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *first)
        .await
        .unwrap();
    assert_eq!(writer.num_idle(), 0, "the writer pool is exhausted");
    for path in [
        "/api/reports/summary?from=2026-03-29&to=2026-03-29",
        "/api/reports/summary?from=2026-03-29&to=2026-03-29&agent=alice",
        "/api/reports/timeline?agent=alice&from=2026-03-29&to=2026-03-29",
    ] {
        // A liveness bound below the pool's 10 s acquire timeout: were the
        // report waiting for a writer connection, it would fail here.
        let response = tokio::time::timeout(Duration::from_secs(5), server.get(path))
            .await
            .unwrap_or_else(|_| panic!("{path} waited for a writer connection"));
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
    sqlx::query("ROLLBACK").execute(&mut *first).await.unwrap();
    drop(first);
    server.stop().await;
}

mod query_properties {
    use proptest::prelude::*;

    use super::super::reports::parse_params;
    use crate::report::{Granularity, OutputFormat, RangeBound, ReportError};

    const SUMMARY: &[&str] = &["from", "to", "agent", "by", "format"];

    /// One `key=value` pair of a query, hostile or not.
    #[test]
    fn an_unknown_parameter_of_control_characters_is_quoted_short() {
        let query = format!("{}=1", "%01".repeat(1_000));
        match parse_params(Some(&query), SUMMARY, 5) {
            Err(ReportError::InvalidParameter { parameter, message }) => {
                assert_eq!(parameter, "query");
                assert!(
                    message.starts_with(r#"unknown parameter "\u{1}"#),
                    "{message}"
                );
                assert!(message.contains("… (1000 characters)"), "{message}");
                assert!(message.chars().count() < 200, "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    fn pair() -> impl Strategy<Value = String> {
        let key = "(from|to|agent|by|format|agents|[a-z%]{0,6}|\\PC{0,8})";
        let value = "(2026-03-29|2026-02-30|2026-03-29T12:00:00%2B02:00|day|week|month|total|csv|json|table|alice|a,b,,c|%00|%FF|%|\\PC{0,20})";
        (key, value, any::<bool>()).prop_map(|(key, value, equals)| {
            if equals {
                format!("{key}={value}")
            } else {
                key
            }
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any query string: parsed, or a typed 400 error that names a
        /// parameter the endpoint knows (or `query`) or a `[report]` limit.
        #[test]
        fn any_query_parses_or_names_what_is_wrong(
            pairs in proptest::collection::vec(pair(), 0..8),
            separator in "(&|;|&&)",
            raw in "\\PC{0,200}",
            max_agents in 1usize..5,
        ) {
            for query in [pairs.join(&separator), raw] {
                match parse_params(Some(&query), SUMMARY, max_agents) {
                    Ok(params) => prop_assert!(params.agents.len() <= max_agents),
                    Err(ReportError::InvalidParameter { parameter, message }) => {
                        prop_assert!(
                            parameter == "query" || SUMMARY.contains(&parameter),
                            "{parameter}"
                        );
                        prop_assert!(!message.is_empty());
                        prop_assert!(message.chars().count() <= 300, "{message}");
                    }
                    Err(ReportError::LimitExceeded { limit, max, value, .. }) => {
                        prop_assert_eq!(limit, "report.max_cells");
                        prop_assert_eq!((max, value), (max_agents, max_agents + 1));
                    }
                    Err(other) => prop_assert!(false, "unexpected error {other:?}"),
                }
            }
        }

        /// Valid parameters, encoded into a query, parse back to the same
        /// values.
        #[test]
        fn valid_parameters_round_trip(
            from in proptest::option::of((2000i32..2100, 1u32..13, 1u32..29)),
            to in proptest::option::of((-720i32..720, 0i64..4_000_000_000)),
            agents in proptest::collection::vec("[A-Za-z0-9_-]{1,12}", 0..6),
            by in proptest::option::of(proptest::sample::select(vec![
                Granularity::Day, Granularity::Week, Granularity::Month, Granularity::Total,
            ])),
            format in proptest::option::of(proptest::sample::select(vec![
                OutputFormat::Csv, OutputFormat::Json, OutputFormat::Table,
            ])),
            comma in any::<bool>(),
        ) {
            let from = from.map(|(y, m, d)| {
                RangeBound::Date(chrono::NaiveDate::from_ymd_opt(y, m, d).expect("a real date"))
            });
            let to = to.map(|(offset_min, seconds)| {
                let zone = chrono::FixedOffset::east_opt(offset_min * 60).expect("an offset");
                RangeBound::Instant(
                    chrono::DateTime::from_timestamp(seconds, 0)
                        .expect("an instant")
                        .with_timezone(&zone),
                )
            });
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            if let Some(RangeBound::Date(date)) = from {
                query.append_pair("from", &date.to_string());
            }
            if let Some(RangeBound::Instant(instant)) = to {
                query.append_pair("to", &instant.to_rfc3339());
            }
            if comma && !agents.is_empty() {
                query.append_pair("agent", &agents.join(","));
            } else {
                for agent in &agents {
                    query.append_pair("agent", agent);
                }
            }
            if let Some(by) = by {
                query.append_pair("by", by.as_str());
            }
            if let Some(format) = format {
                let name = match format {
                    OutputFormat::Csv => "csv",
                    OutputFormat::Json => "json",
                    OutputFormat::Table => "table",
                };
                query.append_pair("format", name);
            }
            let query = query.finish();
            let params = parse_params(Some(&query), SUMMARY, 100)
                .unwrap_or_else(|error| panic!("{query}: {error}"));
            prop_assert_eq!(params.from, from);
            prop_assert_eq!(params.to, to);
            let parsed: Vec<&str> = params.agents.iter().map(|agent| agent.as_str()).collect();
            prop_assert_eq!(parsed, agents.iter().map(String::as_str).collect::<Vec<_>>());
            prop_assert_eq!(params.by, by);
            prop_assert_eq!(params.format, format);
        }
    }
}
