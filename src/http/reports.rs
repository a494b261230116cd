//! The report endpoints: `GET /api/reports/summary` and
//! `/api/reports/timeline`, the same reports as the CLI (JSON, or CSV by
//! `format=csv` or `Accept: text/csv`), a 400 naming the parameter when one
//! is wrong.

use axum::extract::{RawQuery, State};
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde_json::json;

use super::HttpState;
use crate::model::AgentId;
use crate::report::format::{render_summary, render_timeline, OutputFormat};
use crate::report::period::{RangeBound, ReportRange};
use crate::report::{Granularity, ReportError, ReportSettings, SummaryRequest, TimelineRequest};

/// A handler's failure, rendered as JSON `{"error": ..., "parameter": ...}`.
#[derive(Debug)]
pub(super) struct ApiError(ReportError);

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
pub(super) async fn summary(
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
pub(super) async fn timeline(
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

pub(super) fn compact_json<T: serde::Serialize>(value: &T) -> Response {
    rendered(
        OutputFormat::Json,
        serde_json::to_string(value).map_err(Into::into),
    )
}
