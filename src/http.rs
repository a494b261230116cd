//! The HTTP server on `http.listen`: the reports (`/api/reports/summary`,
//! `/api/reports/timeline`), every agent's current state (`/api/agents`,
//! from the [`Board`]), health (`/healthz`, `/readyz`) and Prometheus
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

use crate::board::Board;
use crate::config::{AgentConfig, ReportConfig};
use crate::history::Store;
use crate::metrics::Metrics;
use crate::model::AgentId;
use crate::report::format::{render_summary, render_timeline, OutputFormat};
use crate::report::period::{RangeBound, ReportRange};
use crate::report::{Granularity, ReportError, ReportSettings, SummaryRequest, TimelineRequest};

/// How long `/readyz` waits for the database before answering 503.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// The history, for reports and readiness.
    pub store: Store,
    /// Every agent's current state, for `/api/agents`.
    pub board: Board,
    /// The counters rendered on `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Report time zone and configured agents.
    pub report: ReportSettings,
}

impl HttpState {
    /// State from the service's parts and configuration.
    pub fn new(
        store: Store,
        board: Board,
        metrics: Arc<Metrics>,
        report: &ReportConfig,
        agents: &[AgentConfig],
    ) -> Self {
        Self {
            store,
            board,
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

fn range(params: &ReportParams, settings: &ReportSettings) -> Result<ReportRange, ReportError> {
    ReportRange::resolve(params.from, params.to, settings.tz, Utc::now())
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
    let request = SummaryRequest {
        range: range(&params, &state.report)?,
        by: params.by.unwrap_or_default(),
        agents: params.agents,
    };
    let report = crate::report::summary(&state.store, &request, &state.report, Utc::now()).await?;
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
    let request = TimelineRequest {
        range: range(&params, &state.report)?,
        agents: params.agents,
    };
    let report = crate::report::timeline(&state.store, &request, &state.report, Utc::now()).await?;
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
    Json(state.board.snapshot()).into_response()
}

/// `GET /healthz`: the process is up.
async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: 200 when the history database answers, else 503; the body
/// says which check failed and whether MQTT is connected (informational:
/// polling and history work without the broker).
async fn readyz(State(state): State<HttpState>) -> Response {
    let database = tokio::time::timeout(READY_TIMEOUT, ping(&state.store)).await;
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

async fn ping(store: &Store) -> Result<(), sqlx::Error> {
    match store {
        Store::Sqlite(pool) => sqlx::query("SELECT 1").execute(pool).await.map(drop),
        Store::Postgres(pool) => sqlx::query("SELECT 1").execute(pool).await.map(drop),
    }
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
