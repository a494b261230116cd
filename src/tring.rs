//! The TRiNG PBX proxy API client (`upstream-apis.md` §2): call-queue
//! membership over HTTP GET, everything in the query string.
//!
//! This module owns the URL building (always through `Url::query_pairs_mut`,
//! in the documented parameter order), deciding success from the status AND
//! the body (`OK`, a JSON list, `null`, or a plain-text error with HTTP 200),
//! and keeping the API key out of every text it produces: errors, logs and
//! URLs shown to people go through [`redacted_url`] and [`Secret::redact_in`].
//! It does not validate commands (that is `commands::parse`), it only refuses
//! to put anything but a plain number into a URL. It never follows a
//! redirect: the key is in the query string, and a redirect to another host
//! would hand it over; a 3xx answer is an error ([`TringError::Redirect`]).
//!
//! `add` is not known to be idempotent upstream, so [`TringClient::add`] lists
//! the queue first and skips the add when the member is already present
//! (`already_member: true`); [`TringClient::remove`] likewise skips the `del`
//! when the member is absent (`was_member: false`). Both cost one extra
//! `list` request; a member added or removed by someone else between the two
//! requests is the only (harmless) race.

use std::time::Duration;

use serde::Serialize;
use url::Url;

use crate::config::{is_plain_number, TringConfig};
use crate::secret::Secret;
use crate::text::{error_chain, shorten};

/// The value that replaces the key in every URL shown to a person.
pub const REDACTED: &str = "REDACTED";

/// The largest response body read from TRiNG; a larger one is `Malformed`.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The longest upstream text kept in an error message.
const MAX_ERROR_TEXT_CHARS: usize = 200;

/// Why a TRiNG call failed. Every message is already free of the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TringError {
    /// The client cannot be built from the configuration.
    #[error("tring client configuration: {0}")]
    Config(String),
    /// A queue or extension was not a plain number; nothing was sent.
    #[error("refusing to send {what} {value:?} to tring: it is not a plain number")]
    InvalidInput {
        /// `queue` or `extension`.
        what: &'static str,
        /// The refused value (shortened).
        value: String,
    },
    /// TRiNG answered (HTTP 200) with an error text instead of `OK`/JSON.
    #[error("tring rejected the request: {0}")]
    Rejected(String),
    /// TRiNG answered with a non-success HTTP status.
    #[error("tring answered HTTP {status}: {body}")]
    Http {
        /// The HTTP status code.
        status: u16,
        /// The start of the body, redacted.
        body: String,
    },
    /// TRiNG answered with a redirect, which is never followed (the key is in
    /// the URL and would go to the new address).
    #[error("tring answered HTTP {status} redirecting to {location}; redirects are not followed, so set tring.url to the final address")]
    Redirect {
        /// The HTTP status code (3xx).
        status: u16,
        /// Where it pointed, with the key redacted (or `(no location)`).
        location: String,
    },
    /// No complete answer within `tring.timeout`.
    #[error("tring did not answer within {}; check the service or raise tring.timeout", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// The connection could not be made or broke.
    #[error("cannot reach tring: {0}; check tring.url and the network")]
    Connect(String),
    /// An answer that is neither `OK`, a JSON list nor an error text.
    #[error("tring sent an unexpected answer: {0}")]
    Malformed(String),
}

/// What [`TringClient::add`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AddOutcome {
    /// True when the member was already in the queue, so no `add` was sent.
    pub already_member: bool,
}

/// What [`TringClient::remove`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RemoveOutcome {
    /// False when the member was not in the queue, so no `del` was sent.
    pub was_member: bool,
}

/// A client of one TRiNG tenant. Cheap to clone (the HTTP pool is shared).
#[derive(Clone)]
pub struct TringClient {
    /// The HTTP client (keep-alive pool, `tring.timeout` per request).
    http: reqwest::Client,
    /// The endpoint, e.g. `https://api.tring.nu/pbx/proxyapi.php`.
    endpoint: Url,
    /// The tenant code.
    tenant: String,
    /// The API key: only [`TringClient::url`] exposes it.
    key: Secret,
    /// The request timeout, for the `Timeout` error.
    timeout: Duration,
}

impl std::fmt::Debug for TringClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TringClient")
            .field("endpoint", &self.endpoint.as_str())
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

/// The documented query of one operation, in order, without the key (which
/// always comes first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation<'a> {
    /// `reqtype=queue&tenant=T&number=Q&extension=E&action=add[&type=CU]`
    Add {
        queue: &'a str,
        extension: &'a str,
        custom: bool,
    },
    /// `reqtype=queue&tenant=T&number=Q&extension=E&action=del`
    Remove { queue: &'a str, extension: &'a str },
    /// `reqtype=queue&tenant=T&number=Q&action=clean`
    Clean { queue: &'a str },
    /// `reqtype=queue&tenant=T&number=Q&action=list&format=json`
    List { queue: &'a str },
    /// `reqtype=AGENT&action=listqueues&tenant=T&format=json&extension=E`
    AgentQueues { extension: &'a str },
}

impl TringClient {
    /// A client for `config.url` and `config.tenant`, authenticating with
    /// `key`. Fails when the URL, tenant or key is missing or unusable.
    pub fn new(config: &TringConfig, key: Secret) -> Result<Self, TringError> {
        let endpoint = Url::parse(&config.url).map_err(|error| {
            TringError::Config(format!("tring.url {:?} is not a URL: {error}", config.url))
        })?;
        if !matches!(endpoint.scheme(), "http" | "https") {
            return Err(TringError::Config(
                "tring.url must be an http:// or https:// URL".into(),
            ));
        }
        if config.tenant.trim().is_empty() {
            return Err(TringError::Config(
                "tring.tenant is empty; set it to the tenant code from your TRiNG supplier".into(),
            ));
        }
        if key.is_empty() {
            return Err(TringError::Config(
                "tring.key is not set; set PBX2MQTT_TRING__KEY or tring.key_file".into(),
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|error| {
                TringError::Config(format!("cannot build the HTTP client: {error}"))
            })?;
        Ok(Self {
            http,
            endpoint,
            tenant: config.tenant.clone(),
            key,
            timeout: config.timeout,
        })
    }

    /// The tenant code.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The endpoint with the key redacted, for `check` and logs.
    pub fn redacted_endpoint(&self) -> String {
        redacted_url(&self.endpoint, &self.key)
    }

    /// Adds `member` (an extension, or with `custom` a custom destination,
    /// `type=CU`) to `queue`. Lists the queue first and sends no `add` when the
    /// member is already there.
    pub async fn add(
        &self,
        queue: &str,
        member: &str,
        custom: bool,
    ) -> Result<AddOutcome, TringError> {
        check_number("queue", queue)?;
        check_number("extension", member)?;
        if self.list(queue).await?.iter().any(|m| m == member) {
            return Ok(AddOutcome {
                already_member: true,
            });
        }
        let body = self
            .send(Operation::Add {
                queue,
                extension: member,
                custom,
            })
            .await?;
        self.expect_ok(&body)?;
        Ok(AddOutcome {
            already_member: false,
        })
    }

    /// Removes `member` (agent or custom destination) from `queue`. Lists
    /// the queue first and sends no `del` when the member is absent.
    pub async fn remove(&self, queue: &str, member: &str) -> Result<RemoveOutcome, TringError> {
        check_number("queue", queue)?;
        check_number("extension", member)?;
        if !self.list(queue).await?.iter().any(|m| m == member) {
            return Ok(RemoveOutcome { was_member: false });
        }
        let body = self
            .send(Operation::Remove {
                queue,
                extension: member,
            })
            .await?;
        self.expect_ok(&body)?;
        Ok(RemoveOutcome { was_member: true })
    }

    /// Removes every member of `queue`. Destructive and irreversible.
    pub async fn clean(&self, queue: &str) -> Result<(), TringError> {
        check_number("queue", queue)?;
        let body = self.send(Operation::Clean { queue }).await?;
        self.expect_ok(&body)
    }

    /// The members of `queue`, as extensions without the `-TENANT` suffix
    /// (`null` upstream is an empty list).
    pub async fn list(&self, queue: &str) -> Result<Vec<String>, TringError> {
        check_number("queue", queue)?;
        let body = self.send(Operation::List { queue }).await?;
        parse_member_list(&body, &self.tenant).map_err(|error| self.scrub(error))
    }

    /// The queues `extension` is a member of (`null` is an empty list).
    pub async fn agent_queues(&self, extension: &str) -> Result<Vec<String>, TringError> {
        check_number("extension", extension)?;
        let body = self.send(Operation::AgentQueues { extension }).await?;
        parse_member_list(&body, &self.tenant).map_err(|error| self.scrub(error))
    }

    /// The full request URL, key included: only for the wire.
    fn url(&self, operation: Operation<'_>) -> Url {
        let mut url = self.endpoint.clone();
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("key", self.key.expose());
            let tenant = self.tenant.as_str();
            match operation {
                Operation::Add {
                    queue,
                    extension,
                    custom,
                } => {
                    query.extend_pairs([
                        ("reqtype", "queue"),
                        ("tenant", tenant),
                        ("number", queue),
                        ("extension", extension),
                        ("action", "add"),
                    ]);
                    if custom {
                        query.append_pair("type", "CU");
                    }
                }
                Operation::Remove { queue, extension } => {
                    query.extend_pairs([
                        ("reqtype", "queue"),
                        ("tenant", tenant),
                        ("number", queue),
                        ("extension", extension),
                        ("action", "del"),
                    ]);
                }
                Operation::Clean { queue } => {
                    query.extend_pairs([
                        ("reqtype", "queue"),
                        ("tenant", tenant),
                        ("number", queue),
                        ("action", "clean"),
                    ]);
                }
                Operation::List { queue } => {
                    query.extend_pairs([
                        ("reqtype", "queue"),
                        ("tenant", tenant),
                        ("number", queue),
                        ("action", "list"),
                        ("format", "json"),
                    ]);
                }
                Operation::AgentQueues { extension } => {
                    query.extend_pairs([
                        ("reqtype", "AGENT"),
                        ("action", "listqueues"),
                        ("tenant", tenant),
                        ("format", "json"),
                        ("extension", extension),
                    ]);
                }
            }
        }
        url
    }

    /// Sends one GET and returns the body of a 2xx answer.
    async fn send(&self, operation: Operation<'_>) -> Result<String, TringError> {
        let url = self.url(operation);
        tracing::debug!(url = %redacted_url(&url, &self.key), "tring request");
        let mut response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|error| self.transport_error(error))?;
        let status = response.status();
        if status.is_redirection() {
            return Err(self.redirect_error(status.as_u16(), &response));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|error| self.transport_error(error))?
        {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(TringError::Malformed(format!(
                    "the answer is larger than {MAX_BODY_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        let body = String::from_utf8_lossy(&body).into_owned();
        if !status.is_success() {
            return Err(TringError::Http {
                status: status.as_u16(),
                body: self.clean_text(&body),
            });
        }
        let (answer, warning) = split_php_warning(&body);
        if let Some(warning) = warning {
            tracing::warn!(
                warning = %self.clean_text(warning),
                "tring printed a PHP warning before its answer; using the answer"
            );
        }
        Ok(answer.to_owned())
    }

    /// `OK` is success; any other text is TRiNG's error message.
    fn expect_ok(&self, body: &str) -> Result<(), TringError> {
        interpret_ok_body(body).map_err(|error| self.scrub(error))
    }

    /// Maps a reqwest error to a typed error without the URL or the key.
    fn transport_error(&self, error: reqwest::Error) -> TringError {
        if error.is_timeout() {
            return TringError::Timeout(self.timeout);
        }
        let connect = error.is_connect();
        let text = self.key.redact_in(&error_chain(&error.without_url()));
        if connect {
            TringError::Connect(text)
        } else {
            TringError::Connect(format!("the request failed: {text}"))
        }
    }

    /// The error for a 3xx answer: where it pointed (resolved against the
    /// endpoint, the key redacted), never followed.
    fn redirect_error(&self, status: u16, response: &reqwest::Response) -> TringError {
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
        let location = match location {
            None => "(no location)".to_owned(),
            Some(location) => match self.endpoint.join(&location) {
                Ok(url) => shorten(&redacted_url(&url, &self.key), MAX_ERROR_TEXT_CHARS),
                Err(_) => self.clean_text(&location),
            },
        };
        TringError::Redirect { status, location }
    }

    /// Redacts the key from any upstream text inside an error.
    fn scrub(&self, error: TringError) -> TringError {
        match error {
            TringError::Rejected(text) => TringError::Rejected(self.clean_text(&text)),
            TringError::Malformed(text) => TringError::Malformed(self.clean_text(&text)),
            other => other,
        }
    }

    /// Upstream text made safe to show: key redacted, one line, shortened.
    fn clean_text(&self, text: &str) -> String {
        let redacted = self.key.redact_in(text.trim());
        let one_line: String = redacted
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        shorten(&one_line, MAX_ERROR_TEXT_CHARS)
    }
}

/// `url` with the `key` parameter's value replaced by [`REDACTED`] (and any
/// other occurrence of the key redacted): the only form of a TRiNG URL that
/// may reach a log, an error, a response or the database.
pub fn redacted_url(url: &Url, key: &Secret) -> String {
    let mut redacted = url.clone();
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(name, value)| {
                let value = if name == "key" {
                    REDACTED.to_owned()
                } else {
                    value.into_owned()
                };
                (name.into_owned(), value)
            })
            .collect();
        redacted.query_pairs_mut().clear().extend_pairs(pairs);
    }
    key.redact_in(redacted.as_str())
}

/// Refuses anything but a plain number before it goes into a URL.
fn check_number(what: &'static str, value: &str) -> Result<(), TringError> {
    if is_plain_number(value) {
        Ok(())
    } else {
        Err(TringError::InvalidInput {
            what,
            value: shorten(value, 40),
        })
    }
}

/// Decides an `add`/`del`/`clean` answer: `OK` (any case, surrounding
/// whitespace ignored) is success, an empty body is malformed, and any other
/// text is TRiNG's error message. Pure.
pub fn interpret_ok_body(body: &str) -> Result<(), TringError> {
    let text = body.trim();
    if text.eq_ignore_ascii_case("ok") {
        Ok(())
    } else if text.is_empty() {
        Err(TringError::Malformed(
            "an empty answer where `OK` was expected".into(),
        ))
    } else if looks_like_html(text) {
        Err(html_answer(text))
    } else {
        Err(TringError::Rejected(text.to_owned()))
    }
}

/// Splits PHP's displayed warnings (`<br />\n<b>Warning</b>: ... <br />`)
/// from the script's own answer after them: `(answer, Some(warning))`. A
/// body without that shape is all answer. Pure.
pub fn split_php_warning(body: &str) -> (&str, Option<&str>) {
    let trimmed = body.trim();
    if let Some((warning, answer)) = trimmed.rsplit_once("<br />") {
        let answer = answer.trim();
        let warning = warning.trim();
        let php_message = ["Warning", "Notice", "Deprecated"]
            .iter()
            .any(|kind| warning.contains(&format!("<b>{kind}</b>:")));
        if php_message && !answer.contains('<') {
            return (answer, Some(warning));
        }
    }
    (trimmed, None)
}

/// True when an answer is an HTML page (a proxy or maintenance page), not
/// the API's plain text.
fn looks_like_html(text: &str) -> bool {
    let start = text.trim_start().to_ascii_lowercase();
    start.starts_with('<') || start.contains("<html")
}

/// The error for an HTML page where the API's answer was expected, quoting
/// its title when it has one.
fn html_answer(text: &str) -> TringError {
    let lower = text.to_ascii_lowercase();
    let title = lower
        .find("<title>")
        .and_then(|start| {
            let start = start + "<title>".len();
            lower[start..]
                .find("</title>")
                .and_then(|end| text.get(start..start + end))
        })
        .unwrap_or("untitled");
    TringError::Malformed(format!(
        "an HTML page ({title:?}) instead of the API's answer; is tring.url right and the service up?"
    ))
}

/// Decides a `list`/`listqueues` answer (`format=json`): `null` is an empty
/// list, a JSON array of strings (or numbers) is the list with any `-TENANT`
/// suffix removed, plain text is TRiNG's error message, and anything else is
/// malformed. Pure.
pub fn parse_member_list(body: &str, tenant: &str) -> Result<Vec<String>, TringError> {
    let text = body.trim();
    if text == "null" {
        return Ok(Vec::new());
    }
    if text.is_empty() {
        return Err(TringError::Malformed(
            "an empty answer where a JSON list was expected".into(),
        ));
    }
    if looks_like_html(text) {
        return Err(html_answer(text));
    }
    if !(text.starts_with('[') || text.starts_with('{')) {
        return Err(TringError::Rejected(text.to_owned()));
    }
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|error| TringError::Malformed(format!("invalid JSON ({error}): {text}")))?;
    let items = match value {
        serde_json::Value::Array(items) => items,
        serde_json::Value::Object(object) => {
            let message = ["error", "message", "msg"]
                .iter()
                .find_map(|field| object.get(*field).and_then(|v| v.as_str()));
            return Err(match message {
                Some(message) => TringError::Rejected(message.to_owned()),
                None => TringError::Malformed(format!(
                    "a JSON object where a list was expected: {text}"
                )),
            });
        }
        other => {
            return Err(TringError::Malformed(format!(
                "a JSON value where a list was expected: {other}"
            )))
        }
    };
    items
        .into_iter()
        .map(|item| match item {
            serde_json::Value::String(member) => Ok(strip_tenant(&member, tenant)),
            serde_json::Value::Number(number) => Ok(number.to_string()),
            other => Err(TringError::Malformed(format!(
                "a list item that is not a string: {other}"
            ))),
        })
        .collect()
}

/// `"103-TENANT"` → `"103"`: the configured tenant suffix (any case), or
/// else everything from the first `-`.
fn strip_tenant(member: &str, tenant: &str) -> String {
    let member = member.trim();
    let suffix_start = member.len().saturating_sub(tenant.len() + 1);
    if !tenant.is_empty()
        && member.len() > tenant.len() + 1
        && member.is_char_boundary(suffix_start)
        && member[suffix_start..].eq_ignore_ascii_case(&format!("-{tenant}"))
    {
        return member[..suffix_start].to_owned();
    }
    match member.split_once('-') {
        Some((extension, _)) => extension.to_owned(),
        None => member.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(key: &str) -> TringClient {
        let config = TringConfig {
            url: "https://api.tring.nu/pbx/proxyapi.php".into(),
            key: None,
            key_file: None,
            tenant: "ACME".into(),
            timeout: Duration::from_secs(1),
        };
        TringClient::new(&config, Secret::new(key)).unwrap()
    }

    #[test]
    fn urls_follow_the_documented_parameter_order() {
        let client = client("k3y");
        let check = |operation: Operation<'_>, expected_query: &str| {
            let url = client.url(operation);
            assert_eq!(url.query(), Some(expected_query), "{operation:?}");
        };
        check(
            Operation::Add {
                queue: "500",
                extension: "201",
                custom: false,
            },
            "key=k3y&reqtype=queue&tenant=ACME&number=500&extension=201&action=add",
        );
        check(
            Operation::Add {
                queue: "500",
                extension: "0612345678",
                custom: true,
            },
            "key=k3y&reqtype=queue&tenant=ACME&number=500&extension=0612345678&action=add&type=CU",
        );
        check(
            Operation::Remove {
                queue: "500",
                extension: "201",
            },
            "key=k3y&reqtype=queue&tenant=ACME&number=500&extension=201&action=del",
        );
        check(
            Operation::Clean { queue: "500" },
            "key=k3y&reqtype=queue&tenant=ACME&number=500&action=clean",
        );
        check(
            Operation::List { queue: "500" },
            "key=k3y&reqtype=queue&tenant=ACME&number=500&action=list&format=json",
        );
        check(
            Operation::AgentQueues { extension: "201" },
            "key=k3y&reqtype=AGENT&action=listqueues&tenant=ACME&format=json&extension=201",
        );
    }

    #[test]
    fn special_characters_in_the_key_are_encoded_and_redacted() {
        let client = client("a&b=c d");
        let url = client.url(Operation::List { queue: "500" });
        assert!(url.as_str().contains("key=a%26b%3Dc+d&reqtype"), "{url}");
        let shown = redacted_url(&url, &client.key);
        assert!(shown.contains("key=REDACTED&reqtype=queue"), "{shown}");
        assert!(
            !shown.contains("a%26b") && !shown.contains("a&b=c d"),
            "{shown}"
        );
        assert!(!format!("{client:?}").contains("a&b"));
        assert!(!client.redacted_endpoint().contains("a&b"));
    }

    #[test]
    fn new_refuses_missing_tenant_key_or_url() {
        let mut config = TringConfig {
            url: "https://api.tring.nu/pbx/proxyapi.php".into(),
            key: None,
            key_file: None,
            tenant: String::new(),
            timeout: Duration::from_secs(1),
        };
        let error = TringClient::new(&config, Secret::new("k"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("tring.tenant"), "{error}");
        config.tenant = "ACME".into();
        let error = TringClient::new(&config, Secret::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains("tring.key"), "{error}");
        config.url = "ftp://x".into();
        let error = TringClient::new(&config, Secret::new("k"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("tring.url"), "{error}");
    }

    #[test]
    fn ok_bodies_decide_success() {
        assert_eq!(interpret_ok_body("OK"), Ok(()));
        assert_eq!(interpret_ok_body(" ok\r\n"), Ok(()));
        assert!(matches!(
            interpret_ok_body(""),
            Err(TringError::Malformed(_))
        ));
        assert_eq!(
            interpret_ok_body("Queue not found"),
            Err(TringError::Rejected("Queue not found".into()))
        );
    }

    #[test]
    fn member_lists_parse() {
        let check = |body: &str, expected: Result<Vec<&str>, &str>| {
            let actual = parse_member_list(body, "ACME");
            match (actual, expected) {
                (Ok(actual), Ok(expected)) => assert_eq!(actual, expected, "{body}"),
                (Err(error), Err(kind)) => {
                    let actual_kind = match error {
                        TringError::Rejected(_) => "rejected",
                        TringError::Malformed(_) => "malformed",
                        _ => "other",
                    };
                    assert_eq!(actual_kind, kind, "{body}: {error}");
                }
                (actual, expected) => panic!("{body}: {actual:?} != {expected:?}"),
            }
        };
        check("null", Ok(vec![]));
        check(" null\n", Ok(vec![]));
        check("[]", Ok(vec![]));
        check(r#"["103-ACME","104-acme"]"#, Ok(vec!["103", "104"]));
        check(r#"["103-OTHER-TENANT", "105"]"#, Ok(vec!["103", "105"]));
        check(r#"[500, "501"]"#, Ok(vec!["500", "501"]));
        check("Invalid key", Err("rejected"));
        check(r#"{"error":"no such queue"}"#, Err("rejected"));
        check(r#"{"foo":1}"#, Err("malformed"));
        check("[\"103-ACME\"", Err("malformed"));
        check("[null]", Err("malformed"));
        check("", Err("malformed"));
    }

    #[test]
    fn php_warnings_before_the_answer_are_split_off() {
        let warning = "<br />\n<b>Warning</b>:  mysqli::query(): MySQL server has gone away in \
                       <b>/var/www/pbx/proxyapi.php</b> on line <b>214</b><br />\n";
        let body = format!("{warning}OK");
        let (answer, found) = split_php_warning(&body);
        assert_eq!(answer, "OK");
        assert!(found.is_some_and(|w| w.contains("gone away")));
        let body = format!("{warning}[\"201-SIM\"]\n");
        let (answer, _) = split_php_warning(&body);
        assert_eq!(parse_member_list(answer, "SIM"), Ok(vec!["201".to_owned()]));
        assert_eq!(split_php_warning(" OK\n"), ("OK", None));
        assert_eq!(
            split_php_warning("ERROR: a<br />b"),
            ("ERROR: a<br />b", None)
        );
    }

    #[test]
    fn html_pages_are_malformed_not_rejections() {
        let page =
            "<html>\n<head><title>Onderhoud / Maintenance</title></head><body>x</body></html>";
        for error in [
            interpret_ok_body(page),
            parse_member_list(page, "SIM").map(|_| ()),
        ] {
            match error {
                Err(TringError::Malformed(message)) => {
                    assert!(message.contains("Onderhoud / Maintenance"), "{message}")
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn tenant_suffix_with_dashes_is_stripped_whole() {
        assert_eq!(strip_tenant("103-ACME-NL", "ACME-NL"), "103");
        assert_eq!(strip_tenant("103", "ACME"), "103");
        assert_eq!(strip_tenant("é-ACME", "ACME"), "é");
    }

    /// Serves `router` on 127.0.0.1, port 0; returns its address.
    async fn serve(router: axum::Router) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        address
    }

    #[tokio::test]
    async fn redirects_are_errors_and_never_followed() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;

        // Another host that would accept the key if a redirect were followed.
        let followed = Arc::new(AtomicUsize::new(0));
        let counter = followed.clone();
        let other_host = serve(axum::Router::new().fallback(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async { "[]" }
        }))
        .await;
        // TRiNG answering 302 to that host, query (key included) carried over.
        let redirector = serve(axum::Router::new().fallback(
            move |uri: axum::http::Uri| async move {
                let location = format!(
                    "http://{other_host}/proxyapi.php?{}",
                    uri.query().unwrap_or_default()
                );
                (
                    axum::http::StatusCode::FOUND,
                    [(axum::http::header::LOCATION, location)],
                )
            },
        ))
        .await;
        let key = "k3y-4711";
        let config = TringConfig {
            url: format!("http://{redirector}/pbx/proxyapi.php"),
            key: None,
            key_file: None,
            tenant: "ACME".into(),
            timeout: Duration::from_secs(5),
        };
        let client = TringClient::new(&config, Secret::new(key)).unwrap();

        let error = client.list("500").await.unwrap_err();
        match &error {
            TringError::Redirect { status, location } => {
                assert_eq!(*status, 302);
                assert!(location.contains(&other_host.to_string()), "{location}");
                assert!(location.contains("key=REDACTED"), "{location}");
            }
            other => panic!("expected a redirect error, got {other:?}"),
        }
        let message = error.to_string();
        assert!(!message.contains(key), "{message}");
        assert_eq!(
            crate::commands::CommandError::from(error).code,
            crate::commands::ErrorCode::UpstreamError
        );
        assert_eq!(
            followed.load(Ordering::SeqCst),
            0,
            "the redirect was followed"
        );
    }

    #[tokio::test]
    async fn non_numbers_never_reach_the_wire() {
        // Port 9 on 127.0.0.1: nothing listens, but the check comes first.
        let config = TringConfig {
            url: "http://127.0.0.1:9/proxyapi.php".into(),
            key: None,
            key_file: None,
            tenant: "ACME".into(),
            timeout: Duration::from_secs(1),
        };
        let client = TringClient::new(&config, Secret::new("k")).unwrap();
        for bad in ["201&action=clean", "", "../", "٢٠١"] {
            let error = client.add("500", bad, false).await.unwrap_err();
            assert!(
                matches!(
                    error,
                    TringError::InvalidInput {
                        what: "extension",
                        ..
                    }
                ),
                "{error}"
            );
            let error = client.list(bad).await.unwrap_err();
            assert!(
                matches!(error, TringError::InvalidInput { what: "queue", .. }),
                "{error}"
            );
        }
    }
}
