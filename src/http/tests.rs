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
    metrics: Arc<Metrics>,
    client: reqwest::Client,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), HttpError>>,
    database: TestDatabase,
}

impl TestServer {
    async fn start() -> Self {
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
        let http_state = HttpState {
            store: database.store.clone(),
            latest,
            metrics: metrics.clone(),
            report: settings(),
        };
        let server = HttpServer::bind("127.0.0.1:0".parse().unwrap(), http_state)
            .await
            .unwrap();
        let base = format!("http://{}", server.local_addr());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(shutdown.clone()));
        Self {
            metrics,
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
    let state = HttpState {
        store: database.store.clone(),
        latest: LatestStates::default(),
        metrics: Arc::new(Metrics::default()),
        report: settings(),
    };
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
