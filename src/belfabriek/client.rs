//! The HTTP side of the Belfabriek client: the lean keep-alive client of
//! [`super::http1`] (`TCP_NODELAY`, no redirects, `belfabriek.timeout` for
//! each exchange, one retry when a kept-alive connection was closed under a
//! request, a body size limit), and its failures mapped to
//! [`BelfabriekError`] without the PIN. What the bodies say is read by the
//! pure `answers` module.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, Instrument};

use super::answers::{
    agent_avail_call, extension_status_call, interpret_agent_avail, interpret_extension_status,
    snippet, METHOD_AGENT_AVAIL, METHOD_EXTENSION_STATUS, SNIPPET_CHARS,
};
use super::http1::{Http1Client, HttpError, Target};
use super::BelfabriekError;
use crate::config::{AgentConfig, BelfabriekConfig};
use crate::model::AgentReading;
use crate::secret::Secret;
use crate::text::shorten;

/// Larger response bodies are refused (a real answer is well under 1 KiB).
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// Member names and the PIN, shared by clones of the client.
#[derive(Debug)]
struct Settings {
    /// The member names (the rest of the config is unused).
    config: BelfabriekConfig,
    /// The account PIN.
    pin: Secret,
}

/// A keep-alive HTTP client for the Belfabriek API. Cheap to clone; clones
/// share the connections.
#[derive(Debug, Clone)]
pub struct BelfabriekClient {
    /// The HTTP/1.1 client (keep-alive connections, timeout, `TCP_NODELAY`).
    http: Arc<Http1Client>,
    /// Member names, PIN.
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
        Self::for_bridge(config, pin, max_idle_per_host, "")
    }

    /// [`BelfabriekClient::new`] for bridge `bridge`, named in the
    /// `User-Agent` (`pbx2mqtt/<version> (<bridge>)`), so the upstream (and
    /// the simulator's poll log) can tell several bridges apart.
    pub fn for_bridge(
        config: &BelfabriekConfig,
        pin: Secret,
        max_idle_per_host: usize,
        bridge: &str,
    ) -> Result<Self, BelfabriekError> {
        let user_agent = if bridge.is_empty() {
            concat!("pbx2mqtt/", env!("CARGO_PKG_VERSION")).to_owned()
        } else {
            format!("pbx2mqtt/{} ({bridge})", env!("CARGO_PKG_VERSION"))
        };
        let setup = |detail: String| BelfabriekError::Setup {
            detail: format!("belfabriek.url {:?}: {detail}", config.url),
        };
        let url =
            url::Url::parse(&config.url).map_err(|error| setup(format!("not a url: {error}")))?;
        let target = Target::from_url(&url).map_err(setup)?;
        let http = Http1Client::new(
            target,
            &user_agent,
            "text/xml",
            max_idle_per_host,
            config.timeout,
            MAX_BODY_BYTES,
        )
        .map_err(setup)?;
        let mut config = config.clone();
        // The client holds the PIN once, in `pin`; drop the config's copy.
        config.account_pin = None;
        Ok(Self {
            http: Arc::new(http),
            settings: Arc::new(Settings { config, pin }),
        })
    }

    /// Polls one agent: `ivr.getAgentAvail`, then `general.getExtensionStatus`
    /// only when the agent is available.
    pub async fn poll(&self, agent: &AgentConfig) -> Result<AgentReading, BelfabriekError> {
        let span = tracing::debug_span!("belfabriek_poll", agent = %agent.id);
        async move {
            let settings = &*self.settings;
            let body = agent_avail_call(&settings.config, &settings.pin, agent);
            let answer = self.call(METHOD_AGENT_AVAIL, &body).await?;
            let avail = interpret_agent_avail(&answer, &settings.pin)?;
            let extension_status = if avail.available {
                let body = extension_status_call(&settings.config, &settings.pin, agent);
                let answer = self.call(METHOD_EXTENSION_STATUS, &body).await?;
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
    async fn call(&self, method: &'static str, body: &[u8]) -> Result<Vec<u8>, BelfabriekError> {
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
        body: &[u8],
    ) -> Result<Vec<u8>, BelfabriekError> {
        let settings = &*self.settings;
        let answer = self.http.post(body).await.map_err(|error| match error {
            HttpError::Timeout(_) => BelfabriekError::Timeout {
                method,
                after: settings.config.timeout,
            },
            HttpError::TooLarge { status, .. } if !(200..300).contains(&status) => {
                BelfabriekError::Http {
                    method,
                    status,
                    snippet: "(body larger than 1 MiB)".to_owned(),
                }
            }
            HttpError::TooLarge { .. } => BelfabriekError::Malformed {
                method,
                detail: "body larger than 1 MiB".to_owned(),
            },
            other => BelfabriekError::Connect {
                method,
                detail: shorten(&settings.pin.redact_in(&other.to_string()), SNIPPET_CHARS),
            },
        })?;
        if !(200..300).contains(&answer.status) {
            return Err(BelfabriekError::Http {
                method,
                status: answer.status,
                snippet: snippet(&answer.body, &settings.pin),
            });
        }
        Ok(answer.body)
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

    fn error_kind(error: &Self::Error) -> &'static str {
        error.kind()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::time::Duration;

    use axum::body::Bytes;
    use axum::extract::{Path, State};
    use axum::http::{header, HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::belfabriek::fixtures::*;
    use crate::xmlrpc::{self, Value};

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
