//! The Belfabriek Agent Availability API client: one [`BelfabriekClient::poll`]
//! asks `ivr.getAgentAvail` and, only when the agent is available,
//! `general.getExtensionStatus`, and returns the raw [`AgentReading`].
//!
//! It owns the HTTP side (pooled keep-alive connections, the request timeout,
//! one retry when a kept-alive connection was closed under a request) and the
//! tolerant reading of the answers ([`interpret_agent_avail`],
//! [`interpret_extension_status`]: pure, tested without HTTP). It must not
//! derive statuses (that is `crate::status`), schedule polls (that is
//! `crate::poller`) or let the account PIN out: every upstream text that goes
//! into an error is passed through [`Secret::redact_in`] first, and request
//! bodies are never logged.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, Instrument};

use crate::config::{AgentConfig, BelfabriekConfig};
use crate::model::AgentReading;
use crate::secret::Secret;
use crate::text::{error_chain, shorten};
use crate::xmlrpc::{self, Response, Value};

/// The method that says whether an agent is enabled.
pub const METHOD_AGENT_AVAIL: &str = "ivr.getAgentAvail";

/// The method that says what an available agent's line is doing.
pub const METHOD_EXTENSION_STATUS: &str = "general.getExtensionStatus";

/// Longest upstream text quoted in an error.
pub const SNIPPET_CHARS: usize = 200;

/// Larger response bodies are refused (a real answer is well under 1 KiB).
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// Why a poll (or building the client) failed. Every message names the
/// method, is lowercase and never contains the account PIN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BelfabriekError {
    /// No complete answer within `belfabriek.timeout`.
    #[error("belfabriek {method} timed out after {after:?}; the service is slow or unreachable: check belfabriek.url or raise belfabriek.timeout")]
    Timeout {
        /// The XML-RPC method.
        method: &'static str,
        /// The configured timeout.
        after: Duration,
    },
    /// The connection could not be made, or was refused or reset.
    #[error("belfabriek {method} could not reach the service: {detail}; check belfabriek.url and the network")]
    Connect {
        /// The XML-RPC method.
        method: &'static str,
        /// What the transport said (redacted, short).
        detail: String,
    },
    /// A non-success HTTP status (an HTML error page, a 5xx).
    #[error("belfabriek {method} answered http {status}: {snippet}")]
    Http {
        /// The XML-RPC method.
        method: &'static str,
        /// The HTTP status code.
        status: u16,
        /// The start of the body, whitespace collapsed, redacted.
        snippet: String,
    },
    /// An XML-RPC `<fault>`.
    #[error("belfabriek {method} returned fault {code}: {message}; check belfabriek.account_pin and the agent's ids")]
    Fault {
        /// The XML-RPC method.
        method: &'static str,
        /// `faultCode`.
        code: i64,
        /// `faultString` (redacted, short).
        message: String,
    },
    /// A body that is not the expected XML-RPC answer: bad XML, an empty
    /// body, a missing member.
    #[error("belfabriek {method} returned a malformed response: {detail}")]
    Malformed {
        /// The XML-RPC method.
        method: &'static str,
        /// What is wrong (redacted, short).
        detail: String,
    },
    /// The client could not be built from the configuration.
    #[error("cannot set up the belfabriek client: {detail}")]
    Setup {
        /// What is wrong.
        detail: String,
    },
}

impl BelfabriekError {
    /// A short stable name of the error kind, for metrics and log fields:
    /// `timeout`, `connect`, `http`, `fault`, `malformed` or `setup`.
    pub fn kind(&self) -> &'static str {
        match self {
            BelfabriekError::Timeout { .. } => "timeout",
            BelfabriekError::Connect { .. } => "connect",
            BelfabriekError::Http { .. } => "http",
            BelfabriekError::Fault { .. } => "fault",
            BelfabriekError::Malformed { .. } => "malformed",
            BelfabriekError::Setup { .. } => "setup",
        }
    }
}

/// What `ivr.getAgentAvail` says about an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentAvail {
    /// `available`.
    pub available: bool,
    /// `availReason`, trimmed (empty when absent).
    pub reason: String,
    /// `extension` (or `endpoint`), trimmed; `None` when absent or empty.
    pub destination: Option<String>,
}

/// Member names and the timeout, shared by clones of the client.
#[derive(Debug)]
struct Settings {
    /// The endpoint.
    url: reqwest::Url,
    /// The member names (the rest of the config is unused).
    config: BelfabriekConfig,
    /// The account PIN.
    pin: Secret,
}

/// A pooled HTTP client for the Belfabriek API. Cheap to clone; clones share
/// the connection pool.
#[derive(Debug, Clone)]
pub struct BelfabriekClient {
    /// The reqwest client (keep-alive pool, timeout, `TCP_NODELAY`).
    http: reqwest::Client,
    /// Endpoint, member names, PIN.
    settings: Arc<Settings>,
}

impl BelfabriekClient {
    /// Builds a client for `config.url` that keeps at most
    /// `max_idle_per_host` idle connections (size it like the poll
    /// concurrency) and gives every request `config.timeout`.
    pub fn new(
        config: &BelfabriekConfig,
        pin: Secret,
        max_idle_per_host: usize,
    ) -> Result<Self, BelfabriekError> {
        let url = reqwest::Url::parse(&config.url).map_err(|error| BelfabriekError::Setup {
            detail: format!("belfabriek.url {:?} is not a url: {error}", config.url),
        })?;
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .pool_max_idle_per_host(max_idle_per_host)
            .tcp_nodelay(true)
            .user_agent(concat!("pbx2mqtt/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|error| BelfabriekError::Setup {
                detail: error_chain(&error),
            })?;
        let mut config = config.clone();
        // The client holds the PIN once, in `pin`; drop the config's copy.
        config.account_pin = None;
        Ok(Self {
            http,
            settings: Arc::new(Settings { url, config, pin }),
        })
    }

    /// Polls one agent: `ivr.getAgentAvail`, then `general.getExtensionStatus`
    /// only when the agent is available.
    pub async fn poll(&self, agent: &AgentConfig) -> Result<AgentReading, BelfabriekError> {
        let span = tracing::debug_span!("belfabriek_poll", agent = %agent.id);
        async move {
            let settings = &*self.settings;
            let body = agent_avail_call(&settings.config, &settings.pin, agent);
            let answer = self.call(METHOD_AGENT_AVAIL, body).await?;
            let avail = interpret_agent_avail(&answer, &settings.pin)?;
            let extension_status = if avail.available {
                let body = extension_status_call(&settings.config, &settings.pin, agent);
                let answer = self.call(METHOD_EXTENSION_STATUS, body).await?;
                Some(interpret_extension_status(&answer, &settings.pin)?)
            } else {
                None
            };
            Ok(AgentReading {
                available: avail.available,
                reason: avail.reason,
                destination: avail.destination,
                extension_status,
            })
        }
        .instrument(span)
        .await
    }

    /// Posts one call and returns the body of a success answer.
    async fn call(&self, method: &'static str, body: Vec<u8>) -> Result<Vec<u8>, BelfabriekError> {
        let started = Instant::now();
        let result = self.exchange(method, body).await;
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        match &result {
            Ok(_) => debug!(method, latency_ms, "belfabriek call answered"),
            Err(error) => debug!(
                method,
                latency_ms,
                error.kind = error.kind(),
                "belfabriek call failed"
            ),
        }
        result
    }

    async fn exchange(
        &self,
        method: &'static str,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, BelfabriekError> {
        let settings = &*self.settings;
        let mut response = match self.send(body.clone()).await {
            Err(error) if closed_under_request(&error) => {
                debug!(
                    method,
                    "kept-alive connection closed under the request; retrying once"
                );
                self.send(body).await
            }
            other => other,
        }
        .map_err(|error| self.transport_error(method, &error))?;

        let status = response.status();
        let answer = read_body(&mut response)
            .await
            .map_err(|error| match error {
                ReadError::Transport(error) => self.transport_error(method, &error),
                ReadError::TooLarge if !status.is_success() => BelfabriekError::Http {
                    method,
                    status: status.as_u16(),
                    snippet: "(body larger than 1 MiB)".to_owned(),
                },
                ReadError::TooLarge => BelfabriekError::Malformed {
                    method,
                    detail: "body larger than 1 MiB".to_owned(),
                },
            })?;
        if !status.is_success() {
            return Err(BelfabriekError::Http {
                method,
                status: status.as_u16(),
                snippet: snippet(&answer, &settings.pin),
            });
        }
        Ok(answer)
    }

    async fn send(&self, body: Vec<u8>) -> Result<reqwest::Response, reqwest::Error> {
        self.http
            .post(self.settings.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "text/xml")
            .body(body)
            .send()
            .await
    }

    fn transport_error(&self, method: &'static str, error: &reqwest::Error) -> BelfabriekError {
        if error.is_timeout() {
            BelfabriekError::Timeout {
                method,
                after: self.settings.config.timeout,
            }
        } else {
            BelfabriekError::Connect {
                method,
                detail: shorten(
                    &self.settings.pin.redact_in(&error_chain(error)),
                    SNIPPET_CHARS,
                ),
            }
        }
    }
}

impl crate::poller::AgentSource for BelfabriekClient {
    type Error = BelfabriekError;

    fn poll(
        &self,
        agent: &AgentConfig,
    ) -> impl Future<Output = Result<AgentReading, Self::Error>> + Send {
        BelfabriekClient::poll(self, agent)
    }
}

/// The `ivr.getAgentAvail` request body: `{account_param: pin,
/// extension_param: agent.extension_id}`, every value a `<string>`.
pub fn agent_avail_call(config: &BelfabriekConfig, pin: &Secret, agent: &AgentConfig) -> Vec<u8> {
    let members = vec![
        (config.account_param.clone(), Value::from(pin.expose())),
        (
            config.extension_param.clone(),
            Value::from(agent.extension_id.as_str()),
        ),
    ];
    xmlrpc::encode_call(METHOD_AGENT_AVAIL, &[Value::Struct(members)])
}

/// The `general.getExtensionStatus` request body: supervisor, manager and
/// account ids (the account id defaults to the PIN, as in the documented
/// example; the others to empty) and the extension id, every value a
/// `<string>`.
pub fn extension_status_call(
    config: &BelfabriekConfig,
    pin: &Secret,
    agent: &AgentConfig,
) -> Vec<u8> {
    let names = &config.status_params;
    let members = vec![
        (
            names.sup_id.clone(),
            Value::from(agent.sup_id.as_deref().unwrap_or("")),
        ),
        (
            names.man_id.clone(),
            Value::from(agent.man_id.as_deref().unwrap_or("")),
        ),
        (
            names.cust_id.clone(),
            Value::from(agent.cust_id.as_deref().unwrap_or(pin.expose())),
        ),
        (
            names.ext_id.clone(),
            Value::from(agent.extension_id.as_str()),
        ),
    ];
    xmlrpc::encode_call(METHOD_EXTENSION_STATUS, &[Value::Struct(members)])
}

/// Reads an `ivr.getAgentAvail` answer leniently: `available` as int, i4,
/// boolean or string; `availReason` (any scalar, trimmed); the destination
/// from `extension` or `endpoint`. Member names match in any case.
pub fn interpret_agent_avail(body: &[u8], pin: &Secret) -> Result<AgentAvail, BelfabriekError> {
    let method = METHOD_AGENT_AVAIL;
    let answer = answer_struct(method, body, pin)?;
    let available = answer
        .member_ci("available")
        .ok_or_else(|| malformed(method, "the answer has no member \"available\"".to_owned()))?;
    let available = available.as_bool_lenient().ok_or_else(|| {
        let shown = available
            .as_text_lenient()
            .map(|text| format!("{:?}", shorten(&pin.redact_in(&text), 40)))
            .unwrap_or_else(|| format!("a {}", available.kind()));
        malformed(
            method,
            format!("member \"available\" is {shown}, expected 0 or 1"),
        )
    })?;
    let reason = answer
        .member_ci("availReason")
        .and_then(Value::as_text_lenient)
        .map(|text| text.trim().to_owned())
        .unwrap_or_default();
    let destination = answer
        .member_ci("extension")
        .or_else(|| answer.member_ci("endpoint"))
        .and_then(Value::as_text_lenient)
        .map(|text| text.trim().to_owned())
        .filter(|text| !text.is_empty());
    Ok(AgentAvail {
        available,
        reason,
        destination,
    })
}

/// Reads a `general.getExtensionStatus` answer: the status from member
/// `status` or `Available` (any case), lowercased and trimmed.
pub fn interpret_extension_status(body: &[u8], pin: &Secret) -> Result<String, BelfabriekError> {
    let method = METHOD_EXTENSION_STATUS;
    let answer = answer_struct(method, body, pin)?;
    let status = answer
        .member_ci("status")
        .or_else(|| answer.member_ci("Available"))
        .ok_or_else(|| {
            malformed(
                method,
                "the answer has no member \"status\" or \"Available\"".to_owned(),
            )
        })?;
    let text = status.as_text_lenient().ok_or_else(|| {
        malformed(
            method,
            format!("the status is a {}, expected a string", status.kind()),
        )
    })?;
    Ok(text.trim().to_lowercase())
}

/// Decodes a body and returns its first param, which must be a struct.
/// Faults and decoding errors become [`BelfabriekError`]s with every quoted
/// text redacted.
fn answer_struct(
    method: &'static str,
    body: &[u8],
    pin: &Secret,
) -> Result<Value, BelfabriekError> {
    let params = match xmlrpc::decode_response(body) {
        Ok(Response::Params(params)) => params,
        Ok(Response::Fault { code, message }) => {
            return Err(BelfabriekError::Fault {
                method,
                code,
                message: shorten(&pin.redact_in(&message), SNIPPET_CHARS),
            })
        }
        Err(error) => return Err(malformed(method, decode_error_detail(body, error, pin))),
    };
    match params.into_iter().next() {
        Some(value @ Value::Struct(_)) => Ok(value),
        Some(other) => Err(malformed(
            method,
            format!("the answer is a {}, expected a struct", other.kind()),
        )),
        None => Err(malformed(method, "the answer has no params".to_owned())),
    }
}

/// The message of a decoding error, redacted. The decoder cuts quoted text
/// short, which could cut the PIN in half and defeat redaction; so when the
/// body holds the PIN, the error is taken from the body with the PIN
/// already redacted.
fn decode_error_detail(body: &[u8], error: xmlrpc::DecodeError, pin: &Secret) -> String {
    let secret = pin.expose().as_bytes();
    let holds_pin = !secret.is_empty() && body.windows(secret.len()).any(|window| window == secret);
    let message = if holds_pin {
        let redacted = pin.redact_in(&String::from_utf8_lossy(body));
        match xmlrpc::decode_response(redacted.as_bytes()) {
            Err(error) => error.to_string(),
            Ok(_) => "the document does not parse".to_owned(),
        }
    } else {
        error.to_string()
    };
    shorten(&pin.redact_in(&message), SNIPPET_CHARS)
}

fn malformed(method: &'static str, detail: String) -> BelfabriekError {
    BelfabriekError::Malformed { method, detail }
}

/// The start of an error body for a message: whitespace collapsed, the PIN
/// redacted (before cutting, so no half PIN survives), at most
/// [`SNIPPET_CHARS`] characters.
fn snippet(body: &[u8], pin: &Secret) -> String {
    let text = String::from_utf8_lossy(body);
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if collapsed.is_empty() {
        return "(empty body)".to_owned();
    }
    shorten(&pin.redact_in(&collapsed), SNIPPET_CHARS)
}

/// True when a request failed because the (kept-alive) connection was closed
/// or reset before any response arrived: safe to send once more, since both
/// methods only read. Never for timeouts or failed connects.
fn closed_under_request(error: &reqwest::Error) -> bool {
    if error.is_timeout() || error.is_connect() {
        return false;
    }
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            ) {
                return true;
            }
        }
        // hyper's `IncompleteMessage` (the peer closed the connection before
        // the response began) has no public type to downcast to without a
        // direct hyper dependency; its message is stable and the retry test
        // below would notice a change.
        if cause
            .to_string()
            .contains("connection closed before message completed")
        {
            return true;
        }
        source = cause.source();
    }
    false
}

enum ReadError {
    Transport(reqwest::Error),
    TooLarge,
}

/// Reads the whole body, refusing more than [`MAX_BODY_BYTES`].
async fn read_body(response: &mut reqwest::Response) -> Result<Vec<u8>, ReadError> {
    let expected = response.content_length().unwrap_or(0);
    if expected > MAX_BODY_BYTES as u64 {
        return Err(ReadError::TooLarge);
    }
    let mut body = Vec::with_capacity(usize::try_from(expected).unwrap_or(0).max(512));
    while let Some(chunk) = response.chunk().await.map_err(ReadError::Transport)? {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(ReadError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use axum::body::Bytes;
    use axum::extract::{Path, State};
    use axum::http::{header, HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::model::AgentId;
    use crate::xmlrpc::{encode_response, Encoding};

    const PIN: &str = "98765";

    /// The `ivr.getAgentAvail` answer exactly as the Belfabriek document shows it.
    const SEED_AGENT_AVAIL: &str = "<methodResponse>\n\n <params>\n\n   <param>\n\n     <value>\n\n       <struct>\n\n         <member>\n\n           <name>available</name>\n\n           <value>\n\n             <i4>0</i4>\n\n           </value>\n\n         </member>\n\n         <member>\n\n           <name>availReason</name>\n\n           <value>\n\n             <string>-</string>\n\n           </value>\n\n         </member>\n\n         <member>\n\n           <name>extension</name>\n\n           <value>\n\n             <string>31201234567</string>\n\n           </value>\n\n         </member>\n\n       </struct>\n\n     </value>\n\n   </param>\n\n </params>\n\n</methodResponse>\n";

    /// The `general.getExtensionStatus` answer exactly as the document shows it.
    const SEED_EXTENSION_STATUS: &str = "<methodResponse>\n\n <params>\n\n   <param>\n\n     <value>\n\n       <struct>\n\n         <member>\n\n           <name>Available</name>\n\n           <value>\n\n             <string>called</string>\n\n           </value>\n\n         </member>\n\n       </struct>\n\n     </value>\n\n   </param>\n\n </params>\n\n</methodResponse>\n";

    fn pin() -> Secret {
        Secret::new(PIN)
    }

    fn config(url: &str, timeout: Duration) -> BelfabriekConfig {
        // The built-in defaults (member names as documented), pointed at `url`.
        let mut config = crate::config::Config::from_toml_str("")
            .expect("the defaults are valid")
            .belfabriek;
        config.url = url.to_owned();
        config.timeout = timeout;
        config
    }

    fn agent(extension_id: &str) -> AgentConfig {
        AgentConfig {
            id: AgentId::parse("alice").unwrap(),
            name: None,
            extension_id: extension_id.to_owned(),
            sup_id: Some("7".into()),
            man_id: None,
            cust_id: None,
            queue_extension: None,
        }
    }

    fn answer(members: &[(&str, Value)]) -> Vec<u8> {
        let members = members
            .iter()
            .map(|(name, value)| ((*name).to_owned(), value.clone()))
            .collect();
        encode_response(
            &Response::Params(vec![Value::Struct(members)]),
            Encoding::Iso8859_1,
        )
    }

    fn fault_body(code: i64, message: &str) -> Vec<u8> {
        encode_response(
            &Response::Fault {
                code,
                message: message.to_owned(),
            },
            Encoding::Iso8859_1,
        )
    }

    fn assert_no_pin(error: &BelfabriekError) {
        let printed = format!("{error} {error:?}");
        assert!(!printed.contains(PIN), "the pin leaked: {printed}");
    }

    /// An expected `ivr.getAgentAvail` reading: available, reason,
    /// destination; or a fragment of the expected error message.
    type ExpectedAvail = Result<(bool, &'static str, Option<&'static str>), &'static str>;

    /// Interprets an `ivr.getAgentAvail` body and compares with the expected
    /// reading or a fragment of the expected error message.
    fn check_avail(body: &[u8], expected: ExpectedAvail) {
        let got = interpret_agent_avail(body, &pin());
        match (&got, expected) {
            (Ok(avail), Ok((available, reason, destination))) => {
                assert_eq!(avail.available, available, "{got:?}");
                assert_eq!(avail.reason, reason, "{got:?}");
                assert_eq!(avail.destination.as_deref(), destination, "{got:?}");
            }
            (Err(error), Err(fragment)) => {
                assert_no_pin(error);
                assert!(
                    error.to_string().contains(fragment),
                    "{error} lacks {fragment:?}"
                );
                assert!(error.to_string().contains(METHOD_AGENT_AVAIL), "{error}");
            }
            _ => panic!("got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn agent_avail_answers_are_read_leniently() {
        let html = format!("<html><body>bad pin {PIN}</body></html>");
        let cases: Vec<(Vec<u8>, ExpectedAvail)> = vec![
            (SEED_AGENT_AVAIL.as_bytes().to_vec(), Ok((false, "-", Some("31201234567")))),
            (
                answer(&[("available", Value::Int(1)), ("availReason", "".into()), ("extension", "31201234567".into())]),
                Ok((true, "", Some("31201234567"))),
            ),
            (
                answer(&[("available", Value::Bool(false)), ("availReason", " Pause ".into())]),
                Ok((false, "Pause", None)),
            ),
            (
                answer(&[("available", "1".into()), ("endpoint", "31612345678".into())]),
                Ok((true, "", Some("31612345678"))),
            ),
            (
                answer(&[("Available", "true".into()), ("AvailReason", "handling".into()), ("extension", Value::Int(31201234567))]),
                Ok((true, "handling", Some("31201234567"))),
            ),
            (
                answer(&[("available", Value::Int(0)), ("availReason", Value::Nil), ("extension", " ".into())]),
                Ok((false, "", None)),
            ),
            (answer(&[("availReason", "-".into())]), Err("no member \"available\"")),
            (answer(&[("available", "maybe".into())]), Err("\"maybe\", expected 0 or 1")),
            (answer(&[("available", PIN.into())]), Err("\"[redacted]\", expected 0 or 1")),
            (answer(&[("available", Value::Array(vec![]))]), Err("is a array")),
            (
                encode_response(&Response::Params(vec!["x".into()]), Encoding::Utf8),
                Err("the answer is a string, expected a struct"),
            ),
            (
                encode_response(&Response::Params(vec![]), Encoding::Utf8),
                Err("no params"),
            ),
            (fault_body(401, &format!("invalid accountCode {PIN}")), Err("returned fault 401: invalid accountCode [redacted]")),
            (Vec::new(), Err("malformed response: empty body")),
            (html.into_bytes(), Err("unexpected element <html>")),
            (SEED_AGENT_AVAIL.as_bytes()[..120].to_vec(), Err("truncated document")),
            (
                format!("<methodResponse><params><param><value>x{PIN}<i4>1</i4></value></param></params></methodResponse>").into_bytes(),
                Err("unexpected text \"x[redacted]\""),
            ),
        ];
        for (body, expected) in cases {
            check_avail(&body, expected);
        }
    }

    #[test]
    fn a_pin_cut_in_half_by_the_decoder_is_still_redacted() {
        // The decoder quotes at most 40 characters: put the PIN across that cut.
        let text = format!("{}{PIN}", "y".repeat(38));
        let body = format!("<methodResponse>{text}</methodResponse>");
        let error = interpret_agent_avail(body.as_bytes(), &pin()).unwrap_err();
        assert!(!error.to_string().contains("98"), "{error}");
    }

    #[test]
    fn extension_status_is_read_from_status_or_available_in_any_case() {
        let cases: Vec<(Vec<u8>, Result<&str, &str>)> = vec![
            (SEED_EXTENSION_STATUS.as_bytes().to_vec(), Ok("called")),
            (answer(&[("status", "idle".into())]), Ok("idle")),
            (answer(&[("STATUS", " WrapUp ".into())]), Ok("wrapup")),
            (answer(&[("available", "Calling".into())]), Ok("calling")),
            (answer(&[("status", "".into())]), Ok("")),
            (
                answer(&[("state", "idle".into())]),
                Err("no member \"status\" or \"Available\""),
            ),
            (
                answer(&[("status", Value::Struct(vec![]))]),
                Err("the status is a struct"),
            ),
            (
                fault_body(3, "unknown extension"),
                Err("returned fault 3: unknown extension"),
            ),
        ];
        for (body, expected) in cases {
            let got = interpret_extension_status(&body, &pin());
            match (&got, expected) {
                (Ok(status), Ok(want)) => assert_eq!(status, want),
                (Err(error), Err(fragment)) => {
                    assert!(
                        error.to_string().contains(fragment),
                        "{error} lacks {fragment:?}"
                    );
                    assert!(
                        error.to_string().contains(METHOD_EXTENSION_STATUS),
                        "{error}"
                    );
                }
                _ => panic!("got {got:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn requests_carry_the_configured_members_as_strings() {
        let mut config = config("http://127.0.0.1:1/", Duration::from_secs(1));
        let mut alice = agent("10<01&");
        let (method, params) =
            xmlrpc::decode_call(&agent_avail_call(&config, &pin(), &alice)).unwrap();
        assert_eq!(method, METHOD_AGENT_AVAIL);
        assert_eq!(
            params,
            [Value::Struct(vec![
                ("accountCode".into(), PIN.into()),
                ("extensionId".into(), "10<01&".into()),
            ])]
        );

        let (method, params) =
            xmlrpc::decode_call(&extension_status_call(&config, &pin(), &alice)).unwrap();
        assert_eq!(method, METHOD_EXTENSION_STATUS);
        assert_eq!(
            params,
            [Value::Struct(vec![
                ("supId".into(), "7".into()),
                ("manId".into(), "".into()),
                ("accountCode".into(), PIN.into()),
                ("extensionId".into(), "10<01&".into()),
            ])]
        );

        config.account_param = "accountPin".into();
        config.status_params.cust_id = "custId".into();
        config.status_params.ext_id = "extId".into();
        alice.cust_id = Some("555".into());
        let body = agent_avail_call(&config, &pin(), &alice);
        assert!(String::from_utf8_lossy(&body).contains("<name>accountPin</name>"));
        let (_, params) =
            xmlrpc::decode_call(&extension_status_call(&config, &pin(), &alice)).unwrap();
        assert_eq!(
            params[0].member("custId").and_then(Value::as_str),
            Some("555")
        );
        assert_eq!(
            params[0].member("extId").and_then(Value::as_str),
            Some("10<01&")
        );
    }

    #[test]
    fn snippets_are_short_collapsed_and_redacted() {
        let body = format!(
            "<html>\n  <h1>Error</h1>\n\n {PIN} {}</html>",
            "z".repeat(500)
        );
        let text = snippet(body.as_bytes(), &pin());
        assert!(
            text.starts_with("<html> <h1>Error</h1> [redacted] zzz"),
            "{text}"
        );
        assert!(text.chars().count() <= SNIPPET_CHARS + 3, "{text}");
        assert_eq!(snippet(b" \n", &pin()), "(empty body)");
    }

    /// What the test upstream saw of one request.
    #[derive(Debug, Clone)]
    struct Seen {
        /// The `Content-Type` header.
        content_type: String,
        /// The decoded method name.
        method: String,
        /// The decoded params.
        params: Vec<Value>,
    }

    /// A tiny stand-in for the Belfabriek service: answers by the scenario
    /// named in the URL path and records every request.
    #[derive(Default)]
    struct Upstream {
        /// Every request, in order.
        seen: Mutex<Vec<Seen>>,
    }

    impl Upstream {
        fn methods(&self) -> Vec<String> {
            self.seen
                .lock()
                .unwrap()
                .iter()
                .map(|seen| seen.method.clone())
                .collect()
        }
    }

    async fn answer_scenario(
        State(upstream): State<Arc<Upstream>>,
        Path(scenario): Path<String>,
        headers: HeaderMap,
        body: Bytes,
    ) -> axum::response::Response {
        let (method, params) = xmlrpc::decode_call(&body).unwrap();
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        upstream.seen.lock().unwrap().push(Seen {
            content_type,
            method: method.clone(),
            params,
        });
        let xml = |body: Vec<u8>| {
            (StatusCode::OK, [(header::CONTENT_TYPE, "text/xml")], body).into_response()
        };
        let status_call = method == METHOD_EXTENSION_STATUS;
        match scenario.as_str() {
            "offline" => xml(SEED_AGENT_AVAIL.as_bytes().to_vec()),
            "on_call" if status_call => xml(SEED_EXTENSION_STATUS.as_bytes().to_vec()),
            "on_call" => xml(answer(&[
                ("available", Value::Int(1)),
                ("availReason", "".into()),
                ("extension", "31201234567".into()),
            ])),
            "quirks" if status_call => xml(answer(&[("status", " Wrapup ".into())])),
            "quirks" => xml(answer(&[
                ("available", "1".into()),
                ("endpoint", "3161234é".into()),
            ])),
            "fault" => xml(fault_body(401, &format!("invalid accountCode {PIN}"))),
            "status_fault" if status_call => xml(fault_body(3, "no such extension")),
            "status_fault" => xml(answer(&[("available", Value::Bool(true))])),
            "html500" => (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, "text/html")],
                format!("<html><body><h1>Server Error</h1><p>pin {PIN} rejected</p></body></html>"),
            )
                .into_response(),
            "truncated" => xml(SEED_AGENT_AVAIL.as_bytes()[..150].to_vec()),
            "empty" => xml(Vec::new()),
            "slow" => {
                // Slower than the client's timeout: the client gives up first.
                tokio::time::sleep(Duration::from_secs(10)).await;
                xml(SEED_AGENT_AVAIL.as_bytes().to_vec())
            }
            _ => (StatusCode::NOT_FOUND, "no such scenario").into_response(),
        }
    }

    async fn start_upstream() -> (std::net::SocketAddr, Arc<Upstream>) {
        let upstream = Arc::new(Upstream::default());
        let app = axum::Router::new()
            .route("/{scenario}", axum::routing::post(answer_scenario))
            .with_state(upstream.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (address, upstream)
    }

    fn client_for(address: std::net::SocketAddr, scenario: &str) -> BelfabriekClient {
        let config = config(
            &format!("http://{address}/{scenario}"),
            Duration::from_millis(500),
        );
        BelfabriekClient::new(&config, pin(), 4).unwrap()
    }

    #[tokio::test]
    async fn polls_over_http_and_asks_the_status_only_when_available() {
        let (address, upstream) = start_upstream().await;

        let reading = client_for(address, "offline")
            .poll(&agent("1001"))
            .await
            .unwrap();
        assert_eq!(
            reading,
            AgentReading {
                available: false,
                reason: "-".into(),
                destination: Some("31201234567".into()),
                extension_status: None,
            }
        );
        assert_eq!(upstream.methods(), [METHOD_AGENT_AVAIL]);

        let reading = client_for(address, "on_call")
            .poll(&agent("1001"))
            .await
            .unwrap();
        assert!(reading.available);
        assert_eq!(reading.extension_status.as_deref(), Some("called"));
        assert_eq!(
            upstream.methods(),
            [
                METHOD_AGENT_AVAIL,
                METHOD_AGENT_AVAIL,
                METHOD_EXTENSION_STATUS
            ]
        );
        let seen = upstream.seen.lock().unwrap().clone();
        for request in &seen {
            assert_eq!(request.content_type, "text/xml");
        }
        assert_eq!(
            seen[1].params[0]
                .member("accountCode")
                .and_then(Value::as_str),
            Some(PIN)
        );
        assert_eq!(
            seen[1].params[0]
                .member("extensionId")
                .and_then(Value::as_str),
            Some("1001")
        );
        assert_eq!(
            seen[2].params[0].member("supId").and_then(Value::as_str),
            Some("7")
        );
        assert_eq!(
            seen[2].params[0].member("manId").and_then(Value::as_str),
            Some("")
        );

        let reading = client_for(address, "quirks")
            .poll(&agent("1001"))
            .await
            .unwrap();
        assert_eq!(
            reading,
            AgentReading {
                available: true,
                reason: String::new(),
                destination: Some("3161234é".into()),
                extension_status: Some("wrapup".into()),
            }
        );
    }

    #[tokio::test]
    async fn upstream_failures_become_typed_errors_without_the_pin() {
        let (address, upstream) = start_upstream().await;
        // (scenario, error kind, requests the upstream sees, message fragment):
        // one request each (never retried), two when the second call fails.
        let cases: Vec<(&str, &str, usize, &str)> = vec![
            ("fault", "fault", 1, "ivr.getAgentAvail returned fault 401: invalid accountCode [redacted]"),
            ("status_fault", "fault", 2, "general.getExtensionStatus returned fault 3: no such extension"),
            ("html500", "http", 1, "ivr.getAgentAvail answered http 500: <html><body><h1>Server Error</h1><p>pin [redacted] rejected"),
            ("truncated", "malformed", 1, "malformed response: truncated document"),
            ("empty", "malformed", 1, "malformed response: empty body"),
            ("nothing-here", "http", 1, "answered http 404: no such scenario"),
            ("slow", "timeout", 1, "ivr.getAgentAvail timed out after 500ms"),
        ];
        for (scenario, kind, expected_requests, fragment) in cases {
            let before = upstream.methods().len();
            let error = client_for(address, scenario)
                .poll(&agent("1001"))
                .await
                .unwrap_err();
            assert_eq!(error.kind(), kind, "{scenario}: {error}");
            assert!(error.to_string().contains(fragment), "{scenario}: {error}");
            assert_no_pin(&error);
            let requests = upstream.methods().len() - before;
            assert_eq!(requests, expected_requests, "{scenario}");
        }
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let error = client_for(address, "offline")
            .poll(&agent("1001"))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), "connect", "{error}");
        assert!(
            error
                .to_string()
                .starts_with("belfabriek ivr.getAgentAvail could not reach the service"),
            "{error}"
        );
    }

    /// Reads one HTTP/1.1 request (headers and `Content-Length` body);
    /// `false` when the peer closed the connection first.
    async fn read_request(stream: &mut TcpStream) -> bool {
        let mut buffer = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length:"))
                    .map(|value| value.trim().parse().unwrap())
                    .unwrap_or(0);
                if buffer.len() >= end + 4 + length {
                    return true;
                }
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(read) => buffer.extend_from_slice(&chunk[..read]),
            }
        }
    }

    #[tokio::test]
    async fn a_kept_alive_connection_closed_under_a_request_is_retried_once() {
        // Every connection answers one request, then reads the next one and
        // closes without answering: what a server does when its keep-alive
        // timeout fires just as the client reuses the connection.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    if !read_request(&mut stream).await {
                        return;
                    }
                    let body = SEED_AGENT_AVAIL.as_bytes();
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    stream.write_all(head.as_bytes()).await.unwrap();
                    stream.write_all(body).await.unwrap();
                    read_request(&mut stream).await;
                });
            }
        });

        let client = client_for(address, "any");
        client.poll(&agent("1001")).await.unwrap();
        assert_eq!(connections.load(Ordering::SeqCst), 1);
        // Reuses the kept-alive connection, which is closed under it.
        let reading = client.poll(&agent("1001")).await.unwrap();
        assert_eq!(reading.reason, "-");
        assert_eq!(connections.load(Ordering::SeqCst), 2);
    }

    /// Starts the project's simulator on port 0 with three agents that only
    /// move when told to.
    async fn start_simulator() -> (
        crate::simulator::Simulator,
        tokio_util::sync::CancellationToken,
    ) {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let config = crate::simulator::SimulatorConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            agents: 3,
            account_pin: PIN.to_owned(),
            auto: false,
            seed: Some(7),
            ..Default::default()
        };
        let simulator = crate::simulator::Simulator::start(config, shutdown.clone())
            .await
            .unwrap();
        (simulator, shutdown)
    }

    fn simulator_client(simulator: &crate::simulator::Simulator, pin: &str) -> BelfabriekClient {
        let config = config(&simulator.belfabriek_url(), Duration::from_millis(500));
        BelfabriekClient::new(&config, Secret::new(pin), 4).unwrap()
    }

    #[tokio::test]
    async fn polls_every_state_of_the_simulator() {
        use crate::simulator::VirtualState;

        let (simulator, shutdown) = start_simulator().await;
        let client = simulator_client(&simulator, PIN);
        let alice = agent("1001");
        // (state served, expected reading: available, reason, extension status)
        let cases: Vec<(VirtualState, bool, &str, Option<&str>)> = vec![
            (VirtualState::offline(), false, "-", None),
            (VirtualState::unavailable("pause"), false, "pause", None),
            (
                VirtualState::unavailable("handling"),
                false,
                "handling",
                None,
            ),
            (
                VirtualState::unavailable("Lunch break é"),
                false,
                "Lunch break é",
                None,
            ),
            (VirtualState::available("idle"), true, "-", Some("idle")),
            (
                VirtualState::available("calling"),
                true,
                "-",
                Some("calling"),
            ),
            (VirtualState::available("called"), true, "-", Some("called")),
            (VirtualState::available("wrapup"), true, "-", Some("wrapup")),
        ];
        for (state, available, reason, extension_status) in cases {
            let served = simulator
                .set_agent("1001", state.with_destination("31612345678"))
                .unwrap();
            let before = simulator.counts();
            let reading = client.poll(&alice).await.unwrap();
            assert_eq!(
                reading,
                AgentReading {
                    available,
                    reason: reason.to_owned(),
                    destination: Some("31612345678".to_owned()),
                    extension_status: extension_status.map(str::to_owned),
                },
                "{served:?}"
            );
            let after = simulator.counts();
            assert_eq!(
                after.method(METHOD_AGENT_AVAIL) - before.method(METHOD_AGENT_AVAIL),
                1
            );
            let status_calls =
                after.method(METHOD_EXTENSION_STATUS) - before.method(METHOD_EXTENSION_STATUS);
            assert_eq!(status_calls, u64::from(available), "{served:?}");
        }
        shutdown.cancel();
    }

    #[tokio::test]
    async fn simulator_faults_become_typed_errors_and_polling_recovers() {
        use crate::simulator::{Api, Fault, FaultKind, VirtualState};

        let (simulator, shutdown) = start_simulator().await;
        let client = simulator_client(&simulator, PIN);
        let alice = agent("1001");
        simulator
            .set_agent("1001", VirtualState::available("called"))
            .unwrap();
        let cases: Vec<(FaultKind, &str)> = vec![
            (FaultKind::Http500, "http"),
            (FaultKind::XmlRpcFault, "fault"),
            (FaultKind::Malformed, "malformed"),
            (FaultKind::Empty, "malformed"),
            (FaultKind::Truncated, "malformed"),
            (FaultKind::HtmlErrorPage, "malformed"),
            (
                FaultKind::PlainTextError("Database error".into()),
                "malformed",
            ),
            (FaultKind::Latency(Duration::from_secs(5)), "timeout"),
        ];
        for (kind, expected) in cases {
            simulator.inject(
                Fault::always(Api::Belfabriek, kind.clone())
                    .for_agent("1001")
                    .times(1),
            );
            let error = client.poll(&alice).await.unwrap_err();
            assert_eq!(error.kind(), expected, "{kind:?}: {error}");
            assert_no_pin(&error);
            let reading = client.poll(&alice).await.unwrap();
            assert_eq!(
                reading.extension_status.as_deref(),
                Some("called"),
                "{kind:?}"
            );
        }

        let error = simulator_client(&simulator, "11111")
            .poll(&alice)
            .await
            .unwrap_err();
        assert!(
            matches!(error, BelfabriekError::Fault { code: 1, .. }),
            "{error}"
        );
        let error = client.poll(&agent("999")).await.unwrap_err();
        assert!(
            matches!(error, BelfabriekError::Fault { code: 2, .. }),
            "{error}"
        );
        assert!(
            error.to_string().contains("unknown extension 999"),
            "{error}"
        );
        shutdown.cancel();
    }
}
