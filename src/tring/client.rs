//! The HTTP side of the TRiNG client: one pooled reqwest client
//! (`tring.timeout` per request, redirects never followed), one GET per
//! operation, the body size limit, and transport errors mapped to
//! [`TringError`] without the URL or the key. URLs come from the pure
//! `request` module, and what the bodies say is read by the pure `answers`
//! module.

use std::time::Duration;

use url::Url;

use super::answers::{
    clean_text, interpret_ok_body, parse_member_list, scrub, split_php_warning,
    MAX_ERROR_TEXT_CHARS,
};
use super::request::{check_number, redacted_url, request_url, Operation};
use super::{AddOutcome, RemoveOutcome, TringError};
use crate::config::TringConfig;
use crate::secret::Secret;
use crate::text::{error_chain, shorten};

/// The largest response body read from TRiNG; a larger one is `Malformed`.
const MAX_BODY_BYTES: usize = 1024 * 1024;

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
        request_url(&self.endpoint, &self.tenant, &self.key, operation)
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
        scrub(error, &self.key)
    }

    /// Upstream text made safe to show: key redacted, one line, shortened.
    fn clean_text(&self, text: &str) -> String {
        clean_text(text, &self.key)
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
    fn the_key_stays_out_of_debug_and_the_shown_endpoint() {
        let client = client("a&b=c d");
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
    async fn a_one_character_key_does_not_mangle_error_texts() {
        // A host that never resolves: the resolver's words come back whole.
        let config = TringConfig {
            url: "http://pbx2mqtt-no-such-host.invalid/proxyapi.php".into(),
            key: None,
            key_file: None,
            tenant: "ACME".into(),
            timeout: Duration::from_secs(5),
        };
        let client = TringClient::new(&config, Secret::new("k")).unwrap();
        let message = client.list("500").await.unwrap_err().to_string();
        assert!(!message.contains("[redacted]"), "{message}");
        assert!(
            message.contains("lookup") || message.contains("resolve"),
            "{message}"
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
