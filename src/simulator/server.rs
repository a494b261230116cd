//! The simulator's HTTP side: routes, the two API handlers with fault
//! injection applied, the control API, and the error pages.
//!
//! Handlers only translate between HTTP and the pure modules
//! ([`super::belfabriek`], [`super::tring`], [`super::faults`]); they hold a
//! lock only for the instant it takes to read or change one agent or the
//! queues, never across an `.await`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::xmlrpc;

use super::belfabriek;
use super::faults::{Api, Fault, FaultKind};
use super::tring::{self, TringAction, TringRequest};
use super::{lock, Shared, VirtualState, BELFABRIEK_PATH, TRING_PATH};

/// Serves until `shutdown` is cancelled.
pub(super) async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt as _;
    // Small request/response pairs on kept-alive connections: no Nagle delay.
    let listener = listener.tap_io(|stream| {
        // Failing to set the option only costs latency, never correctness.
        let _ = stream.set_nodelay(true);
    });
    axum::serve(listener, router(shared))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(BELFABRIEK_PATH, post(belfabriek_endpoint))
        .route(TRING_PATH, get(tring_endpoint))
        .route("/control/agents", get(list_agents))
        .route(
            "/control/agents/{ext}",
            get(get_agent).post(set_agent).delete(resume_agent),
        )
        .route(
            "/control/faults",
            get(list_faults).post(inject_fault).delete(clear_faults),
        )
        .route("/control/stats", get(stats))
        .route("/control/poll-gaps", axum::routing::delete(reset_poll_gaps))
        .route("/control/queues/{queue}", get(get_queue).put(put_queue))
        .route("/control/clock", post(advance_clock))
        .fallback(not_found)
        .with_state(shared)
}

const CONTENT_TYPE_XML: &str = "text/xml";
/// PHP's default content type: the TRiNG proxy sets no other.
const CONTENT_TYPE_PHP: &str = "text/html; charset=UTF-8";
const CONTENT_TYPE_HTML: &str = "text/html";
const CONTENT_TYPE_TEXT: &str = "text/plain";

/// A response whose body does not parse as XML-RPC (a closing tag that does
/// not match).
const MALFORMED_XML: &[u8] = b"<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>\r\n<methodResponse>\r\n  <params>\r\n    <param>\r\n      <value>\r\n        <struct>\r\n          <member>\r\n            <name>available</name>\r\n            <value><i4>1</value></i4>\r\n          </member>\r\n        </struct>\r\n  </paramz>\r\n</methodResponse>\r\n";

/// IIS's answer when the script host fails.
const IIS_500_PAGE: &str = "<!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0 Strict//EN\" \"http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd\">\r\n<html xmlns=\"http://www.w3.org/1999/xhtml\">\r\n<head>\r\n<title>500 - Internal server error.</title>\r\n</head>\r\n<body>\r\n<div id=\"header\"><h1>Server Error</h1></div>\r\n<div id=\"content\">\r\n <fieldset><h2>500 - Internal server error.</h2>\r\n <h3>There is a problem with the resource you are looking for, and it cannot be displayed.</h3>\r\n </fieldset></div>\r\n</body>\r\n</html>\r\n";

/// Apache's answer when PHP fails.
const APACHE_500_PAGE: &str = "<!DOCTYPE HTML PUBLIC \"-//IETF//DTD HTML 2.0//EN\">\n<html><head>\n<title>500 Internal Server Error</title>\n</head><body>\n<h1>Internal Server Error</h1>\n<p>The server encountered an internal error or\nmisconfiguration and was unable to complete\nyour request.</p>\n</body></html>\n";

/// A maintenance page served with HTTP 200, as a load balancer or captive
/// proxy would.
const MAINTENANCE_PAGE: &str = "<html>\n<head><title>Onderhoud / Maintenance</title></head>\n<body>\n<h1>We zijn zo terug</h1>\n<p>Deze dienst is tijdelijk niet beschikbaar wegens onderhoud. This service is temporarily unavailable.</p>\n</body>\n</html>\n";

/// PHP printing a warning before the script's own output.
const PHP_WARNING: &str = "<br />\n<b>Warning</b>:  mysqli::query(): MySQL server has gone away in <b>/var/www/pbx/proxyapi.php</b> on line <b>214</b><br />\n";

fn body_response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response {
    (status, [(header::CONTENT_TYPE, content_type)], body.into()).into_response()
}

/// Sleeps for the decision's latency and counts the fault.
async fn count_and_delay(shared: &Shared, decision: &super::faults::Decision) {
    if decision.is_clean() {
        return;
    }
    shared
        .counters
        .faults_applied
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if !decision.latency.is_zero() {
        tokio::time::sleep(decision.latency).await;
    }
}

/// Cuts a body in half (at least one byte short of whole).
fn truncated(mut body: Vec<u8>) -> Vec<u8> {
    body.truncate(body.len() / 2);
    body
}

async fn belfabriek_endpoint(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let call = xmlrpc::decode_call(&body);
    let (method, extension) = match &call {
        Ok((method, params)) => (method.as_str(), belfabriek::extension_of(params)),
        Err(_) => ("other", None),
    };
    shared.counters.count_method(method);
    if method == belfabriek::GET_AGENT_AVAIL {
        if let Some(extension) = &extension {
            shared.record_poll(extension);
        }
    }
    let decision = shared
        .faults
        .take(Api::Belfabriek, |agent| extension.as_deref() == Some(agent));
    count_and_delay(&shared, &decision).await;

    let answer = || {
        let response = match &call {
            Ok((method, params)) => {
                belfabriek::answer(method, params, &shared.account_pin, |ext| {
                    shared.agent_state(ext)
                })
            }
            Err(error) => {
                belfabriek::fault(belfabriek::FAULT_PARSE, format!("parse error: {error}"))
            }
        };
        belfabriek::render(&response)
    };
    let xml = |body: Vec<u8>| body_response(StatusCode::OK, CONTENT_TYPE_XML, body);
    match decision.damage {
        None | Some(FaultKind::Latency(_)) => xml(answer()),
        Some(FaultKind::Http500) => body_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            CONTENT_TYPE_HTML,
            IIS_500_PAGE,
        ),
        Some(FaultKind::XmlRpcFault) => xml(belfabriek::render(&belfabriek::fault(
            belfabriek::FAULT_INTERNAL,
            "internal error: database unavailable",
        ))),
        Some(FaultKind::Malformed) => xml(MALFORMED_XML.to_vec()),
        Some(FaultKind::Empty) => xml(Vec::new()),
        Some(FaultKind::Truncated) => xml(truncated(answer())),
        Some(FaultKind::HtmlErrorPage) => {
            body_response(StatusCode::OK, CONTENT_TYPE_HTML, MAINTENANCE_PAGE)
        }
        Some(FaultKind::PlainTextError(text)) => {
            body_response(StatusCode::OK, CONTENT_TYPE_TEXT, text)
        }
    }
}

async fn tring_endpoint(State(shared): State<Arc<Shared>>, RawQuery(query): RawQuery) -> Response {
    let request = TringRequest::parse(query.as_deref().unwrap_or_default());
    shared.counters.count_action(TringAction::of(&request));
    let extension = request.get("extension");
    let decision = shared.faults.take(Api::Tring, |agent| {
        shared.tring_request_matches_agent(extension, agent)
    });
    count_and_delay(&shared, &decision).await;

    let execute = || {
        let mut queues = lock(&shared.queues);
        tring::handle(&request, &shared.tring_account, &mut queues)
            .body
            .into_bytes()
    };
    let php = |body: Vec<u8>| body_response(StatusCode::OK, CONTENT_TYPE_PHP, body);
    match decision.damage {
        None | Some(FaultKind::Latency(_)) => php(execute()),
        Some(FaultKind::Http500) => body_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            CONTENT_TYPE_HTML,
            APACHE_500_PAGE,
        ),
        Some(FaultKind::XmlRpcFault) => php(b"ERROR: internal error".to_vec()),
        Some(FaultKind::Malformed) => {
            let mut body = PHP_WARNING.as_bytes().to_vec();
            body.extend(execute());
            php(body)
        }
        Some(FaultKind::Empty) => {
            execute();
            php(Vec::new())
        }
        Some(FaultKind::Truncated) => php(truncated(execute())),
        Some(FaultKind::HtmlErrorPage) => php(MAINTENANCE_PAGE.as_bytes().to_vec()),
        Some(FaultKind::PlainTextError(text)) => php(text.into_bytes()),
    }
}

async fn not_found() -> Response {
    body_response(
        StatusCode::NOT_FOUND,
        CONTENT_TYPE_HTML,
        "<html><head><title>404 Not Found</title></head><body><h1>Not Found</h1></body></html>\n",
    )
}

/// A JSON error for the control API.
fn control_error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

async fn list_agents(State(shared): State<Arc<Shared>>) -> Response {
    let snapshots: Vec<_> = (0..shared.infos.len())
        .map(|index| shared.snapshot(index))
        .collect();
    Json(snapshots).into_response()
}

async fn get_agent(State(shared): State<Arc<Shared>>, Path(ext): Path<String>) -> Response {
    match shared.by_extension.get(&ext) {
        Some(&index) => Json(shared.snapshot(index)).into_response(),
        None => control_error(StatusCode::NOT_FOUND, format!("unknown agent {ext}")),
    }
}

async fn set_agent(
    State(shared): State<Arc<Shared>>,
    Path(ext): Path<String>,
    Json(state): Json<VirtualState>,
) -> Response {
    match shared.set_agent(&ext, state) {
        Ok(state) => Json(state).into_response(),
        Err(error) => control_error(StatusCode::NOT_FOUND, error.to_string()),
    }
}

async fn resume_agent(State(shared): State<Arc<Shared>>, Path(ext): Path<String>) -> Response {
    match shared.resume_agent(&ext) {
        Ok(state) => Json(state).into_response(),
        Err(error) => control_error(StatusCode::NOT_FOUND, error.to_string()),
    }
}

async fn list_faults(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.faults.list()).into_response()
}

async fn inject_fault(State(shared): State<Arc<Shared>>, Json(fault): Json<Fault>) -> Response {
    tracing::info!(api = ?fault.api, kind = ?fault.kind, agent = ?fault.agent, remaining = ?fault.remaining, "simulator fault armed");
    shared.faults.inject(fault);
    Json(shared.faults.list()).into_response()
}

async fn clear_faults(State(shared): State<Arc<Shared>>) -> Response {
    shared.faults.clear();
    Json(shared.faults.list()).into_response()
}

async fn stats(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.stats()).into_response()
}

/// Forgets the poll gaps so far; answers with the (empty) statistics.
async fn reset_poll_gaps(State(shared): State<Arc<Shared>>) -> Response {
    shared.poll_gaps.reset();
    Json(shared.poll_gaps_snapshot()).into_response()
}

async fn get_queue(State(shared): State<Arc<Shared>>, Path(queue): Path<String>) -> Response {
    let members = lock(&shared.queues).members(&queue).to_vec();
    Json(serde_json::json!({ "queue": queue, "members": members })).into_response()
}

async fn put_queue(
    State(shared): State<Arc<Shared>>,
    Path(queue): Path<String>,
    Json(members): Json<Vec<QueueMemberInput>>,
) -> Response {
    let members: Vec<_> = members
        .into_iter()
        .map(QueueMemberInput::into_member)
        .collect();
    lock(&shared.queues).set_members(&queue, members.clone());
    Json(serde_json::json!({ "queue": queue, "members": members })).into_response()
}

/// A queue member in `PUT /control/queues/{queue}`: `"201"` or
/// `{"extension":"612345678","custom":true}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum QueueMemberInput {
    /// An agent extension.
    Extension(String),
    /// A full member.
    Member(tring::QueueMember),
}

impl QueueMemberInput {
    fn into_member(self) -> tring::QueueMember {
        match self {
            QueueMemberInput::Extension(extension) => tring::QueueMember {
                extension,
                custom: false,
            },
            QueueMemberInput::Member(member) => member,
        }
    }
}

/// The body of `POST /control/clock`: `{"advance":"1m"}`.
#[derive(Debug, Deserialize)]
struct ClockAdvance {
    /// How far to move simulated time.
    #[serde(with = "crate::config::duration_str")]
    advance: Duration,
}

async fn advance_clock(
    State(shared): State<Arc<Shared>>,
    Json(body): Json<ClockAdvance>,
) -> Response {
    shared.clock.advance(body.advance);
    Json(serde_json::json!({ "now_micros": shared.clock.now_micros() })).into_response()
}
