//! The report endpoints: `GET /api/reports/summary` and
//! `/api/reports/timeline`, the same reports as the CLI (JSON, or CSV by
//! `format=csv` or `Accept: text/csv`), a 400 naming the parameter when one
//! is wrong.

use axum::extract::{RawQuery, State};
use axum::http::header::{ACCEPT, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde_json::json;

use super::HttpState;
use crate::model::AgentId;
use crate::report::format::{render_summary, render_timeline, OutputFormat};
use crate::report::period::{RangeBound, ReportRange};
use crate::report::{
    Granularity, ReportError, ReportLimits, ReportSettings, SummaryRequest, TimelineRequest,
};

/// A handler's failure, rendered as JSON: `{"error": ..., "parameter": ...}`
/// for a wrong parameter (400), `{"error": ..., "limit": ..., "max": ...,
/// "value": ...}` for a request over a `[report]` limit (400), a 503 with
/// `Retry-After` when `report.max_concurrent` reports are already running, a
/// 504 when one did not finish within `report.timeout`.
#[derive(Debug)]
pub(super) enum ApiError {
    /// The report failed or was refused.
    Report(ReportError),
    /// Every report slot is taken.
    Busy {
        /// `report.max_concurrent`.
        max: usize,
    },
}

impl From<ReportError> for ApiError {
    fn from(error: ReportError) -> Self {
        ApiError::Report(error)
    }
}

/// Seconds a client is asked to wait when every report slot is taken.
const RETRY_AFTER_S: &str = "1";

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let error = match self {
            ApiError::Busy { max } => {
                tracing::warn!(max, "report refused: report.max_concurrent reached");
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_S))],
                    Json(json!({
                        "error": format!("{max} reports are running, the most report.max_concurrent allows; try again in a moment"),
                        "limit": "report.max_concurrent",
                        "max": max,
                    })),
                )
                    .into_response();
            }
            ApiError::Report(error) => error,
        };
        match &error {
            ReportError::InvalidParameter { parameter, .. } => (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": error.to_string(), "parameter": parameter})),
            )
                .into_response(),
            ReportError::LimitExceeded {
                limit, max, value, ..
            } => {
                tracing::info!(limit, max, value, "report refused: over a limit");
                (
                    StatusCode::BAD_REQUEST,
                    Json(json!({
                        "error": error.to_string(),
                        "limit": limit,
                        "max": max,
                        "value": value,
                    })),
                )
                    .into_response()
            }
            ReportError::TimedOut(after) => {
                tracing::warn!(after_s = after.as_secs_f64(), "report timed out");
                (
                    StatusCode::GATEWAY_TIMEOUT,
                    Json(json!({"error": error.to_string(), "limit": "report.timeout"})),
                )
                    .into_response()
            }
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

/// Runs one report under the HTTP bounds: a report slot
/// (`report.max_concurrent`, refused at once when none is free rather than
/// queued) held until it is done or dropped, and `report.timeout`. A report
/// that times out is dropped, which stops its remaining queries.
async fn bounded<T>(
    state: &HttpState,
    report: impl std::future::Future<Output = Result<T, ReportError>>,
) -> Result<T, ApiError> {
    let limits = &state.report.limits;
    let _slot = state
        .report_slots
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::Busy {
            max: limits.max_concurrent,
        })?;
    let report = tokio::time::timeout(limits.timeout, report);
    // A report computes for up to seconds between its queries without
    // yielding, and `run` has one runtime worker (`cli::RUN_WORKERS`), which
    // the history writer and the publisher need meanwhile: `block_in_place`
    // hands that worker's other tasks to another thread while this one
    // computes. (A current-thread runtime, as in some tests, cannot.)
    let computed = match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(report))
        }
        _ => report.await,
    };
    match computed {
        Ok(result) => result.map_err(ApiError::Report),
        Err(_) => Err(ApiError::Report(ReportError::TimedOut(limits.timeout))),
    }
}

/// The parameters of a report request, parsed from the query string.
#[derive(Debug, Default)]
pub(super) struct ReportParams {
    /// `from=`
    pub(super) from: Option<RangeBound>,
    /// `to=`
    pub(super) to: Option<RangeBound>,
    /// `agent=` (repeatable, or comma-separated)
    pub(super) agents: Vec<AgentId>,
    /// `by=`
    pub(super) by: Option<Granularity>,
    /// `format=`
    pub(super) format: Option<OutputFormat>,
}

/// Parses a report query string; `allowed` lists the parameter names the
/// endpoint takes, anything else is refused by name. More than `max_agents`
/// agent ids (`report.max_cells`: every agent is at least one cell or one
/// query) are refused as soon as the list passes it.
pub(super) fn parse_params(
    query: Option<&str>,
    allowed: &[&'static str],
    max_agents: usize,
) -> Result<ReportParams, ReportError> {
    let mut params = ReportParams::default();
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let Some(parameter) = allowed.iter().copied().find(|name| *name == key) else {
            return Err(ReportError::InvalidParameter {
                parameter: "query",
                message: format!(
                    "unknown parameter {}; use {}",
                    crate::text::quoted(&key),
                    allowed.join(", ")
                ),
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
                    ReportLimits::check_agent_count(
                        params.agents.len() + 1,
                        max_agents,
                        "report.max_cells",
                    )?;
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
pub(super) async fn summary(
    State(state): State<HttpState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let params = parse_params(
        query.as_deref(),
        &["from", "to", "agent", "by", "format"],
        state.report.limits.max_cells,
    )?;
    let format = negotiate(params.format, &headers);
    let now = Utc::now();
    let request = SummaryRequest {
        range: range(&params, &state.report, now)?,
        by: params.by.unwrap_or_default(),
        agents: params.agents,
    };
    // A request over a limit is refused before it takes a report slot.
    crate::report::check_summary(&request, &state.report)?;
    let report = bounded(
        &state,
        crate::report::summary(&state.store, &request, &state.report, now),
    )
    .await?;
    Ok(match format {
        OutputFormat::Json => compact_json(&report),
        other => rendered(other, render_summary(&report, other)),
    })
}

/// `GET /api/reports/timeline?agent=&from=&to=&format=`
pub(super) async fn timeline(
    State(state): State<HttpState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let params = parse_params(
        query.as_deref(),
        &["from", "to", "agent", "format"],
        state.report.limits.max_cells,
    )?;
    let format = negotiate(params.format, &headers);
    let now = Utc::now();
    let request = TimelineRequest {
        range: range(&params, &state.report, now)?,
        agents: params.agents,
    };
    let report = bounded(
        &state,
        crate::report::timeline(&state.store, &request, &state.report, now),
    )
    .await?;
    Ok(match format {
        OutputFormat::Json => compact_json(&report),
        other => rendered(other, render_timeline(&report, other)),
    })
}

pub(super) fn compact_json<T: serde::Serialize>(value: &T) -> Response {
    rendered(
        OutputFormat::Json,
        serde_json::to_string(value).map_err(Into::into),
    )
}
