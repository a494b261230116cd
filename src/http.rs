//! The HTTP server on `http.listen`: the reports (`/api/reports/summary`,
//! `/api/reports/timeline`), every agent's current state (`/api/agents`,
//! from the [`LatestStates`]), health (`/healthz`, `/readyz`) and Prometheus
//! `/metrics`.
//!
//! It parses query strings once at the boundary (a bad parameter is a 400
//! naming it), delegates to [`crate::report`] and renders; it holds no report
//! arithmetic and never writes to the history. It stops gracefully when the
//! shutdown token is cancelled.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::Utc;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{AgentConfig, ReportConfig};
use crate::latest::LatestStates;
use crate::metrics::Metrics;
use crate::model::AgentId;
use crate::report::format::{render_summary, render_timeline, OutputFormat};
use crate::report::period::{RangeBound, ReportRange};
use crate::report::{Granularity, ReportError, ReportSettings, SummaryRequest, TimelineRequest};
use crate::store::Store;

/// How long `/readyz` waits for the database before answering 503.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// The history, for reports and readiness.
    pub store: Store,
    /// Every agent's current state, for `/api/agents`.
    pub latest: LatestStates,
    /// The counters rendered on `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Report time zone and configured agents.
    pub report: ReportSettings,
}

impl HttpState {
    /// State from the service's parts and configuration.
    pub fn new(
        store: Store,
        latest: LatestStates,
        metrics: Arc<Metrics>,
        report: &ReportConfig,
        agents: &[AgentConfig],
    ) -> Self {
        Self {
            store,
            latest,
            metrics,
            report: ReportSettings::from_config(report, agents),
        }
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The listen address could not be bound.
    #[error("cannot listen on {address}: {source}; change http.listen (or leave it empty to disable the server)")]
    Bind {
        /// The configured address.
        address: SocketAddr,
        /// The IO error.
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("http server failed: {0}")]
    Serve(#[from] std::io::Error),
}

/// A bound, not yet running HTTP server.
#[derive(Debug)]
pub struct HttpServer {
    /// The bound socket.
    listener: TcpListener,
    /// The actual address (the real port when bound to port 0).
    local_addr: SocketAddr,
    /// The routes with their state.
    router: Router,
}

impl HttpServer {
    /// Binds `listen` (port 0 picks a free port; see [`HttpServer::local_addr`]).
    pub async fn bind(listen: SocketAddr, state: HttpState) -> Result<HttpServer, HttpError> {
        let bind_error = |source| HttpError::Bind {
            address: listen,
            source,
        };
        let listener = TcpListener::bind(listen).await.map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        Ok(HttpServer {
            listener,
            local_addr,
            router: router(state),
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, lets
    /// in-flight requests finish and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), HttpError> {
        tracing::info!(address = %self.local_addr, "http server listening");
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await?;
        tracing::info!("http server stopped");
        Ok(())
    }
}

/// The routes (public for tests that want to serve them differently).
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/api/reports/summary", get(summary))
        .route("/api/reports/timeline", get(timeline))
        .route("/api/agents", get(agents))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// A handler's failure, rendered as JSON `{"error": ..., "parameter": ...}`.
#[derive(Debug)]
struct ApiError(ReportError);

impl From<ReportError> for ApiError {
    fn from(error: ReportError) -> Self {
        ApiError(error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self.0 {
            ReportError::InvalidParameter { parameter, .. } => (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": self.0.to_string(), "parameter": parameter})),
            )
                .into_response(),
            other => {
                tracing::error!(error = %other, "report failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Json(json!({"error": other.to_string()})),
                )
                    .into_response()
            }
        }
    }
}

/// The parameters of a report request, parsed from the query string.
#[derive(Debug, Default)]
struct ReportParams {
    /// `from=`
    from: Option<RangeBound>,
    /// `to=`
    to: Option<RangeBound>,
    /// `agent=` (repeatable, or comma-separated)
    agents: Vec<AgentId>,
    /// `by=`
    by: Option<Granularity>,
    /// `format=`
    format: Option<OutputFormat>,
}

/// Parses a report query string; `allowed` lists the parameter names the
/// endpoint takes, anything else is refused by name.
fn parse_params(
    query: Option<&str>,
    allowed: &[&'static str],
) -> Result<ReportParams, ReportError> {
    let mut params = ReportParams::default();
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let Some(parameter) = allowed.iter().copied().find(|name| *name == key) else {
            let shown: String = key.chars().take(40).collect();
            return Err(ReportError::InvalidParameter {
                parameter: "query",
                message: format!("unknown parameter `{shown}`; use {}", allowed.join(", ")),
            });
        };
        let value = value.trim();
        let once = |present: bool| {
            if present {
                Err(ReportError::invalid(parameter, "given more than once"))
            } else {
                Ok(())
            }
        };
        match parameter {
            "from" => {
                once(params.from.is_some())?;
                params.from = Some(value.parse().map_err(|e| ReportError::invalid("from", e))?);
            }
            "to" => {
                once(params.to.is_some())?;
                params.to = Some(value.parse().map_err(|e| ReportError::invalid("to", e))?);
            }
            "agent" => {
                for id in value.split(',').filter(|id| !id.trim().is_empty()) {
                    let id =
                        AgentId::parse(id.trim()).map_err(|e| ReportError::invalid("agent", e))?;
                    params.agents.push(id);
                }
            }
            "by" => {
                once(params.by.is_some())?;
                params.by = Some(value.parse().map_err(|e| ReportError::invalid("by", e))?);
            }
            "format" => {
                once(params.format.is_some())?;
                params.format = Some(
                    value
                        .parse()
                        .map_err(|e| ReportError::invalid("format", e))?,
                );
            }
            _ => {}
        }
    }
    Ok(params)
}

/// `format=` wins; otherwise `Accept: text/csv` asks for CSV; JSON by default.
fn negotiate(format: Option<OutputFormat>, headers: &HeaderMap) -> OutputFormat {
    format.unwrap_or_else(|| {
        let accept = headers
            .get(ACCEPT)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        if accept
            .split(',')
            .any(|item| item.trim().to_ascii_lowercase().starts_with("text/csv"))
        {
            OutputFormat::Csv
        } else {
            OutputFormat::Json
        }
    })
}

fn range(
    params: &ReportParams,
    settings: &ReportSettings,
    now: chrono::DateTime<Utc>,
) -> Result<ReportRange, ReportError> {
    ReportRange::resolve(params.from, params.to, settings.tz, now)
        .map_err(|error| ReportError::invalid("from", error))
}

fn rendered(
    format: OutputFormat,
    body: Result<String, crate::report::format::FormatError>,
) -> Response {
    match body {
        Ok(body) => {
            let content_type = match format {
                OutputFormat::Csv => "text/csv; charset=utf-8",
                OutputFormat::Json => "application/json",
                OutputFormat::Table => "text/plain; charset=utf-8",
            };
            (
                [(CONTENT_TYPE, HeaderValue::from_static(content_type))],
                body,
            )
                .into_response()
        }
        Err(error) => {
            tracing::error!(%error, "cannot render report");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({"error": error.to_string()})),
            )
                .into_response()
        }
    }
}

/// `GET /api/reports/summary?from=&to=&agent=&by=&format=`
async fn summary(
    State(state): State<HttpState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let params = parse_params(query.as_deref(), &["from", "to", "agent", "by", "format"])?;
    let format = negotiate(params.format, &headers);
    let now = Utc::now();
    let request = SummaryRequest {
        range: range(&params, &state.report, now)?,
        by: params.by.unwrap_or_default(),
        agents: params.agents,
    };
    let report = crate::report::summary(&state.store, &request, &state.report, now).await?;
    Ok(match format {
        OutputFormat::Json => compact_json(&report),
        other => rendered(other, render_summary(&report, other)),
    })
}

/// `GET /api/reports/timeline?agent=&from=&to=&format=`
async fn timeline(
    State(state): State<HttpState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let params = parse_params(query.as_deref(), &["from", "to", "agent", "format"])?;
    let format = negotiate(params.format, &headers);
    let now = Utc::now();
    let request = TimelineRequest {
        range: range(&params, &state.report, now)?,
        agents: params.agents,
    };
    let report = crate::report::timeline(&state.store, &request, &state.report, now).await?;
    Ok(match format {
        OutputFormat::Json => compact_json(&report),
        other => rendered(other, render_timeline(&report, other)),
    })
}

fn compact_json<T: serde::Serialize>(value: &T) -> Response {
    rendered(
        OutputFormat::Json,
        serde_json::to_string(value).map_err(Into::into),
    )
}

/// `GET /api/agents`: every agent's current state (the retained MQTT state
/// payloads), ordered by id.
async fn agents(State(state): State<HttpState>) -> Response {
    Json(state.latest.snapshot()).into_response()
}

/// `GET /healthz`: the process is up.
async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: 200 when the history database answers, else 503; the body
/// says which check failed and whether MQTT is connected (informational:
/// polling and history work without the broker).
async fn readyz(State(state): State<HttpState>) -> Response {
    let database = tokio::time::timeout(READY_TIMEOUT, state.store.ping()).await;
    let database_ok = matches!(database, Ok(Ok(())));
    let mqtt_connected = state
        .metrics
        .mqtt_connected
        .load(std::sync::atomic::Ordering::Relaxed)
        == 1;
    let body = json!({
        "ready": database_ok,
        "database": match database {
            Ok(Ok(())) => "ok".to_owned(),
            Ok(Err(error)) => error.to_string(),
            Err(_) => "timed out".to_owned(),
        },
        "mqtt": if mqtt_connected { "connected" } else { "disconnected" },
    });
    let status = if database_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// `GET /metrics`: Prometheus text format.
async fn metrics(State(state): State<HttpState>) -> Response {
    (
        [(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        state.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use reqwest::StatusCode;
    use serde_json::Value;

    use super::*;
    use crate::model::Status;
    use crate::report::format::from_csv;
    use crate::report::sql_tests::insert;
    use crate::report::tests::{agent, at, intervals, settings, SPRING_FORWARD};
    use crate::report::{summarize, SummaryReport, SummaryRow, TimelineReport, TimelineRow};
    use crate::store::test_database::TestDatabase;

    /// How long a test waits for the server to stop.
    const WAIT: Duration = Duration::from_secs(10);

    /// A running server on port 0 over a fresh SQLite history.
    struct TestServer {
        base: String,
        client: reqwest::Client,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<Result<(), HttpError>>,
        database: TestDatabase,
    }

    impl TestServer {
        async fn start() -> Self {
            let database = TestDatabase::sqlite().await;
            insert(&database.store, &intervals(SPRING_FORWARD)).await;
            let latest = LatestStates::default();
            let mut state = crate::status::unknown_state(
                agent("alice"),
                "Alice".to_owned(),
                at("2026-11-22T09:41:07Z"),
            );
            state.status = Status::OnCall;
            state.on_a_call = true;
            latest.update(state);
            let metrics = Arc::new(Metrics::default());
            Metrics::inc(&metrics.polls_ok);
            let http_state = HttpState {
                store: database.store.clone(),
                latest,
                metrics,
                report: settings(),
            };
            let server = HttpServer::bind("127.0.0.1:0".parse().unwrap(), http_state)
                .await
                .unwrap();
            let base = format!("http://{}", server.local_addr());
            let shutdown = CancellationToken::new();
            let task = tokio::spawn(server.run(shutdown.clone()));
            Self {
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

        let response = server.get("/readyz").await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = json(response).await;
        assert_eq!(body["ready"], true);
        assert_eq!(body["database"], "ok");
        assert_eq!(body["mqtt"], "disconnected");

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
}
