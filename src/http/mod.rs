//! The HTTP server on `http.listen`: the web pages (`/` the wallboard,
//! `/reports`, `/assets/<file>`; see [`pages`]), the reports
//! (`/api/reports/summary`, `/api/reports/timeline`), every agent's current
//! state (`/api/agents`, from the [`LatestStates`]), the wallboard's live
//! feed (`/api/stream`, `/api/queues`; see [`stream`]), health (`/healthz`,
//! `/readyz`) and Prometheus `/metrics`.
//!
//! It parses query strings once at the boundary (a bad parameter is a 400
//! naming it), delegates to [`crate::report`] and renders; it holds no report
//! arithmetic and never writes to the history. It stops gracefully when the
//! shutdown token is cancelled.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::{AgentConfig, ReportConfig};
use crate::latest::LatestStates;
use crate::metrics::Metrics;
use crate::report::ReportSettings;
use crate::store::Store;

mod pages;
mod reports;
pub mod stream;

pub use stream::Streams;

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
    /// Report time zone, configured agents and limits.
    pub report: ReportSettings,
    /// The open wallboard streams.
    pub streams: Streams,
    /// One permit per report that may run at once (`report.max_concurrent`).
    pub report_slots: Arc<Semaphore>,
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
        Self::with_settings(
            store,
            latest,
            metrics,
            ReportSettings::from_config(report, agents),
        )
    }

    /// State with report settings made elsewhere (tests); the report slots
    /// follow `report.limits.max_concurrent`.
    pub fn with_settings(
        store: Store,
        latest: LatestStates,
        metrics: Arc<Metrics>,
        report: ReportSettings,
    ) -> Self {
        let slots = report
            .limits
            .max_concurrent
            .clamp(1, Semaphore::MAX_PERMITS);
        Self {
            store,
            latest,
            metrics,
            report,
            streams: Streams::default(),
            report_slots: Arc::new(Semaphore::new(slots)),
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
    /// Ended when the server stops (they would hold it open).
    streams: Streams,
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
        let streams = state.streams.clone();
        Ok(HttpServer {
            listener,
            local_addr,
            router: router(state),
            streams,
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
        let streams = self.streams;
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(async move {
                shutdown.cancelled_owned().await;
                // Open streams never end by themselves.
                streams.stop();
            })
            .await?;
        tracing::info!("http server stopped");
        Ok(())
    }
}

/// The routes (public for tests that want to serve them differently).
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/", get(pages::index))
        .route("/reports", get(pages::reports))
        .route("/assets/{file}", get(pages::asset))
        .route("/api/stream", get(stream::stream))
        .route("/api/queues", get(stream::queues))
        .route("/api/reports/summary", get(reports::summary))
        .route("/api/reports/timeline", get(reports::timeline))
        .route("/api/agents", get(agents))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
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

/// `GET /readyz`: 200 when the history database answers, history batches
/// are recorded (not failing on a full disk, say) and both broker
/// connections are up, else 503; the body says which check failed (and
/// when history last committed).
async fn readyz(State(state): State<HttpState>) -> Response {
    use std::sync::atomic::Ordering::Relaxed;
    let database = tokio::time::timeout(READY_TIMEOUT, state.store.ping()).await;
    let database_ok = matches!(database, Ok(Ok(())));
    let metrics = &state.metrics;
    let connected = |gauge: &std::sync::atomic::AtomicU64| gauge.load(Relaxed) == 1;
    let publisher = connected(&metrics.mqtt_connected);
    let commands = connected(&metrics.mqtt_commands_connected);
    let cluster = metrics.cluster_view();
    let coordinated = cluster.as_ref().is_none_or(|view| view.coordinated);
    let history = metrics.history_failure();
    let ready = database_ok && history.is_none() && publisher && commands && coordinated;
    let last_commit_ms = metrics.history_last_commit_ms.load(Relaxed);
    let mut body = json!({
        "ready": ready,
        "database": match database {
            Ok(Ok(())) => "ok".to_owned(),
            Ok(Err(error)) => error.to_string(),
            Err(_) => "timed out".to_owned(),
        },
        "history": history.map_or_else(|| "ok".to_owned(), |why| format!("failing: {why}")),
        "mqtt": if publisher { "connected" } else { "disconnected" },
        "mqtt_commands": if commands { "connected" } else { "disconnected" },
        "history_queue": metrics.history_queue_depth.load(Relaxed),
        "last_commit": chrono::DateTime::from_timestamp_millis(i64::try_from(last_commit_ms).unwrap_or(0))
            .filter(|_| last_commit_ms > 0)
            .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
    });
    if let Some(view) = cluster {
        body["cluster"] = json!({
            "bridge": view.bridge,
            "coordinated": view.coordinated,
            "owned_agents": view.owned,
            "shares": view.shares.into_iter().map(|(bridge, count)| (bridge, json!(count))).collect::<serde_json::Map<String, serde_json::Value>>(),
        });
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// `GET /metrics`: Prometheus text format.
async fn metrics(State(state): State<HttpState>) -> Response {
    let mut by_status: std::collections::BTreeMap<&str, u64> = crate::model::Status::ALL
        .iter()
        .map(|status| (status.as_str(), 0))
        .collect();
    for agent in state.latest.snapshot() {
        *by_status.entry(agent.status.as_str()).or_insert(0) += 1;
    }
    let by_status: Vec<(&str, u64)> = by_status.into_iter().collect();
    (
        [(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        state.metrics.render(&by_status),
    )
        .into_response()
}

#[cfg(test)]
mod tests;
