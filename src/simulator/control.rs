//! The simulator's JSON control API under `/control/` (the routes are listed
//! in the [module documentation](super)): for tools, tests and the CLI, not
//! part of either vendor API. Off the hot path: it may allocate freely.
//!
//! Errors are JSON `{"error": "..."}`: 404 for an unknown agent, 400 for a
//! body that is not JSON or a bad query, 422 for JSON of the wrong shape;
//! 405 (empty) for a method a route does not have; the HTML 404 page for an
//! unknown path.

use std::borrow::Cow;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::faults::Fault;
use super::http::{method_not_allowed, not_found, Reply, Request};
use super::tring::QueueMember;
use super::{lock, Shared, VirtualState};

const CONTENT_TYPE_JSON: &str = "application/json";

/// Answers a request under `/control/`.
pub(super) fn respond(shared: &Shared, request: &Request<'_>, reply: &mut Reply) {
    let Some(route) = request.path.strip_prefix("/control/") else {
        return not_found(reply);
    };
    let (resource, parameter) = match route.split_once('/') {
        Some((resource, parameter)) if !parameter.is_empty() && !parameter.contains('/') => {
            match percent_decoded(parameter) {
                Some(parameter) => (resource, Some(parameter)),
                None => return error(reply, 400, "the path is not valid UTF-8"),
            }
        }
        Some(_) => return not_found(reply),
        None => (route, None),
    };
    let method = request.method;
    match (resource, parameter) {
        ("agents", None) => match method {
            "GET" => {
                let snapshots: Vec<_> = (0..shared.infos.len())
                    .map(|index| shared.snapshot(index))
                    .collect();
                json(reply, &snapshots)
            }
            _ => method_not_allowed(reply),
        },
        ("agents", Some(ext)) => match method {
            "GET" => match shared.index_of(&ext) {
                Some(index) => json(reply, &shared.snapshot(index)),
                None => error(reply, 404, &format!("unknown agent {ext}")),
            },
            "POST" => {
                let Some(state) = body::<VirtualState>(request, reply) else {
                    return;
                };
                match shared.set_agent(&ext, state) {
                    Ok(state) => json(reply, &state),
                    Err(failure) => error(reply, 404, &failure.to_string()),
                }
            }
            "DELETE" => match shared.resume_agent(&ext) {
                Ok(state) => json(reply, &state),
                Err(failure) => error(reply, 404, &failure.to_string()),
            },
            _ => method_not_allowed(reply),
        },
        ("faults", None) => match method {
            "GET" => json(reply, &shared.faults.list()),
            "POST" => {
                let Some(fault) = body::<Fault>(request, reply) else {
                    return;
                };
                tracing::info!(api = ?fault.api, kind = ?fault.kind, agent = ?fault.agent, remaining = ?fault.remaining, "simulator fault armed");
                shared.faults.inject(fault);
                json(reply, &shared.faults.list())
            }
            "DELETE" => {
                shared.faults.clear();
                json(reply, &shared.faults.list())
            }
            _ => method_not_allowed(reply),
        },
        ("stats", None) => match method {
            "GET" => json(reply, &shared.stats()),
            _ => method_not_allowed(reply),
        },
        // Answers with the (empty) statistics.
        ("poll-gaps", None) => match method {
            "DELETE" => {
                shared.poll_gaps.reset();
                json(reply, &shared.poll_gaps_snapshot())
            }
            _ => method_not_allowed(reply),
        },
        ("poll-log", None) => match method {
            "GET" => match window(request.query) {
                Ok(window) => json(reply, &shared.poll_log_snapshot(window)),
                Err(message) => error(reply, 400, &message),
            },
            "DELETE" => {
                shared.poll_log.reset();
                json(reply, &shared.poll_log_snapshot(None))
            }
            _ => method_not_allowed(reply),
        },
        ("queues", Some(queue)) => match method {
            "GET" => {
                let members = lock(&shared.queues).members(&queue).to_vec();
                json(
                    reply,
                    &serde_json::json!({ "queue": queue, "members": members }),
                )
            }
            "PUT" => {
                let Some(members) = body::<Vec<QueueMemberInput>>(request, reply) else {
                    return;
                };
                let members: Vec<_> = members
                    .into_iter()
                    .map(QueueMemberInput::into_member)
                    .collect();
                lock(&shared.queues).set_members(&queue, members.clone());
                json(
                    reply,
                    &serde_json::json!({ "queue": queue, "members": members }),
                )
            }
            _ => method_not_allowed(reply),
        },
        ("clock", None) => match method {
            "POST" => {
                let Some(body) = body::<ClockAdvance>(request, reply) else {
                    return;
                };
                shared.clock.advance(body.advance);
                json(
                    reply,
                    &serde_json::json!({ "now_micros": shared.clock.now_micros() }),
                )
            }
            _ => method_not_allowed(reply),
        },
        _ => not_found(reply),
    }
}

/// The `window` of `?window=2s` (`None` when not given).
fn window(query: Option<&str>) -> Result<Option<Duration>, String> {
    let Some(query) = query else {
        return Ok(None);
    };
    match url::form_urlencoded::parse(query.as_bytes()).find(|(name, _)| name == "window") {
        None => Ok(None),
        Some((_, text)) => humantime::parse_duration(text.trim())
            .map(Some)
            .map_err(|failure| {
                format!("window {text:?} is not a duration such as \"2s\" or \"500ms\": {failure}")
            }),
    }
}

/// Writes `value` as the JSON answer.
fn json(reply: &mut Reply, value: &impl Serialize) {
    reply.start(CONTENT_TYPE_JSON);
    if let Err(failure) = serde_json::to_writer(&mut reply.body, value) {
        // The control types always serialize; this only guards the answer.
        error(reply, 500, &failure.to_string());
    }
}

/// Writes a JSON error.
fn error(reply: &mut Reply, status: u16, message: &str) {
    reply.start(CONTENT_TYPE_JSON);
    reply.status = status;
    // A JSON value with one string cannot fail to serialize.
    let _ = serde_json::to_writer(&mut reply.body, &serde_json::json!({ "error": message }));
}

/// The request body as `T`; on failure the error answer is written and
/// `None` returned.
fn body<T: DeserializeOwned>(request: &Request<'_>, reply: &mut Reply) -> Option<T> {
    match serde_json::from_slice(request.body) {
        Ok(value) => Some(value),
        Err(failure) => {
            let status = match failure.classify() {
                serde_json::error::Category::Data => 422,
                _ => 400,
            };
            error(reply, status, &format!("invalid JSON body: {failure}"));
            None
        }
    }
}

/// A path segment with its `%XX` escapes decoded; `None` when the result is
/// not UTF-8.
fn percent_decoded(segment: &str) -> Option<Cow<'_, str>> {
    if !segment.contains('%') {
        return Some(Cow::Borrowed(segment));
    }
    let bytes = segment.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escaped = (bytes[index] == b'%')
            .then(|| bytes.get(index + 1..index + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                decoded.push(byte);
                index += 3;
            }
            None => {
                decoded.push(bytes[index]);
                index += 1;
            }
        }
    }
    String::from_utf8(decoded).ok().map(Cow::Owned)
}

/// A queue member in `PUT /control/queues/{queue}`: `"201"` or
/// `{"extension":"612345678","custom":true}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum QueueMemberInput {
    /// An agent extension.
    Extension(String),
    /// A full member.
    Member(QueueMember),
}

impl QueueMemberInput {
    fn into_member(self) -> QueueMember {
        match self {
            QueueMemberInput::Extension(extension) => QueueMember {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_and_windows() {
        assert_eq!(percent_decoded("1001").as_deref(), Some("1001"));
        assert_eq!(percent_decoded("a%20b%2F%zz%").as_deref(), Some("a b/%zz%"));
        assert_eq!(percent_decoded("%FF"), None);
        assert_eq!(window(None), Ok(None));
        assert_eq!(window(Some("x=1")), Ok(None));
        assert_eq!(window(Some("window=2s")), Ok(Some(Duration::from_secs(2))));
        assert_eq!(
            window(Some("window=1500ms")),
            Ok(Some(Duration::from_millis(1500)))
        );
        assert!(window(Some("window=soon")).unwrap_err().contains("soon"));
    }
}
