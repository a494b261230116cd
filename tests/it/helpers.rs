//! `spawn_app()`: every test gets its own simulator, database, base topic
//! and bridge, on ports chosen by the OS, against the shared test broker.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use pbx2mqtt::app::Application;
#[cfg(feature = "embedded-broker")]
use pbx2mqtt::broker::EmbeddedBroker;
use pbx2mqtt::config::Config;
use pbx2mqtt::simulator::{Simulator, SimulatorConfig, VirtualState};
use pbx2mqtt::store::Store;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::mqtt_client::TestClient;

/// The simulator's account PIN in tests: distinctive, so a leak is found.
pub const TEST_PIN: &str = "PIN-8472-secret";
/// The simulator's TRiNG key in tests.
pub const TEST_KEY: &str = "KEY-5531-secret";

/// The broker every test uses: `PBX2MQTT_TEST_MQTT_URL`, else an embedded
/// broker started once per test process (builds with the `embedded-broker`
/// feature, the default).
pub fn broker_url() -> String {
    if let Ok(url) = std::env::var("PBX2MQTT_TEST_MQTT_URL") {
        if !url.is_empty() {
            return url;
        }
    }
    embedded_broker_url()
}

#[cfg(feature = "embedded-broker")]
fn embedded_broker_url() -> String {
    static EMBEDDED: OnceLock<EmbeddedBroker> = OnceLock::new();
    EMBEDDED
        .get_or_init(|| {
            EmbeddedBroker::start(SocketAddr::from(([127, 0, 0, 1], 0))).expect("embedded broker")
        })
        .url()
}

#[cfg(not(feature = "embedded-broker"))]
fn embedded_broker_url() -> String {
    panic!(
        "these tests need an MQTT broker: set PBX2MQTT_TEST_MQTT_URL=mqtt://host:port \
         (this build has no embedded broker: the `embedded-broker` feature is off)"
    )
}

/// Everything the bridge logged in this process, for the secret-leak test.
#[derive(Clone, Default)]
pub struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl LogBuffer {
    pub fn contents(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs (once per process) a subscriber that records every log line at
/// TRACE level, from every crate, into a buffer.
pub fn captured_logs() -> LogBuffer {
    static LOGS: OnceLock<LogBuffer> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = LogBuffer::default();
        let writer = buffer.clone();
        tracing_subscriber::fmt()
            .with_env_filter("trace,rumqttd=warn")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        buffer
    })
    .clone()
}

/// Test knobs.
#[derive(Clone)]
pub struct Options {
    pub agents: u32,
    pub poll_interval: &'static str,
    pub stale_after: u32,
    pub extra_toml: String,
    pub broker_url: Option<String>,
    /// `mqtt.protocol`; by default MQTT 5, or 3.1.1 on the embedded broker
    /// (rumqttd serves MQTT 5 on a separate listener only).
    pub protocol: Option<&'static str>,
    /// More `[mqtt]` keys (TOML lines), e.g. TLS files and credentials.
    pub mqtt_toml: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            agents: 3,
            poll_interval: "100ms",
            stale_after: 3,
            extra_toml: String::new(),
            broker_url: None,
            protocol: None,
            mqtt_toml: String::new(),
        }
    }
}

/// True when the tests use the embedded broker (no external one named).
pub fn uses_embedded_broker() -> bool {
    std::env::var("PBX2MQTT_TEST_MQTT_URL").map_or(true, |url| url.is_empty())
}

/// A running bridge with its own simulator, database and topic tree.
pub struct TestApp {
    pub simulator: Simulator,
    pub config: Config,
    pub base: String,
    pub database_url: String,
    pub broker_url: String,
    /// Keeps the database directory alive.
    pub dir: Arc<tempfile::TempDir>,
    simulator_stop: CancellationToken,
    bridge: Option<(CancellationToken, JoinHandle<anyhow::Result<()>>)>,
    pub http: Option<SocketAddr>,
    /// The running bridge's counters.
    pub metrics: Option<Arc<pbx2mqtt::metrics::Metrics>>,
}

impl TestApp {
    /// Agent id of the n-th (1-based) simulated agent.
    pub fn agent(&self, n: u32) -> String {
        format!("agent{}", 1000 + n)
    }

    /// Belfabriek extension id of the n-th agent.
    pub fn ext(&self, n: u32) -> String {
        (1000 + n).to_string()
    }

    /// `<base>/agent/<agent><suffix>`.
    pub fn topic(&self, n: u32, suffix: &str) -> String {
        format!("{}/agent/{}{suffix}", self.base, self.agent(n))
    }

    /// Sets the n-th agent's state in the simulator.
    pub fn set(&self, n: u32, available: bool, reason: &str, extension_status: &str) {
        self.simulator
            .set_agent(
                &self.ext(n),
                VirtualState {
                    available,
                    reason: reason.into(),
                    destination: None,
                    extension_status: extension_status.into(),
                },
            )
            .unwrap();
    }

    /// A test client subscribed to everything under the base topic.
    pub async fn subscriber(&self) -> TestClient {
        TestClient::connect(&self.broker_url, &[format!("{}/#", self.base)]).await
    }

    /// A subscriber, once the bridge is online and its command connection
    /// subscribed (so commands sent now are heard).
    pub async fn ready_subscriber(&self) -> TestClient {
        let mut sub = self.subscriber().await;
        wait_ready(&mut sub, &self.base).await;
        sub
    }

    /// The n-th agent's history intervals of the last hour.
    pub async fn history(&self, n: u32) -> Vec<pbx2mqtt::store::Interval> {
        let agent = pbx2mqtt::model::AgentId::parse(&self.agent(n)).unwrap();
        let now = chrono::Utc::now();
        self.store()
            .await
            .intervals(
                Some(&agent),
                now - chrono::Duration::hours(1),
                now + chrono::Duration::hours(1),
            )
            .await
            .unwrap()
    }

    /// Opens the history database (a second connection).
    pub async fn store(&self) -> Store {
        Store::open(&self.database_url).await.unwrap()
    }

    /// Starts the bridge (again) on the same database.
    pub async fn start_bridge(&mut self) {
        assert!(self.bridge.is_none(), "bridge already running");
        let app = Application::build(self.config.clone())
            .await
            .expect("build app");
        self.http = app.http_addr();
        self.metrics = Some(app.metrics());
        let stop = CancellationToken::new();
        let handle = tokio::spawn(app.run(stop.clone()));
        self.bridge = Some((stop, handle));
    }

    /// Stops the bridge gracefully and waits for it.
    pub async fn stop_bridge(&mut self) {
        let (stop, handle) = self.bridge.take().expect("bridge not running");
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(20), handle)
            .await
            .expect("bridge did not stop within 20 s")
            .expect("bridge task panicked")
            .expect("bridge failed");
    }
}

impl Drop for TestApp {
    /// Stops the bridge and the simulator, and clears every retained
    /// message the test left on the broker (even when it failed), so test
    /// runs do not pile up retained topics on a shared broker.
    fn drop(&mut self) {
        let bridge = self.bridge.take();
        if let Some((stop, _)) = &bridge {
            stop.cancel();
        }
        self.simulator_stop.cancel();
        let broker = self.broker_url.clone();
        let base = self.base.clone();
        let prefix = self.config.homeassistant.discovery_prefix.clone();
        let handle = bridge.map(|(_, handle)| handle);
        // Drop cannot await: a thread with its own runtime waits for the
        // bridge to finish (it publishes `offline` last), then clears.
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                if let Some(handle) = handle {
                    let _ = tokio::time::timeout(Duration::from_secs(10), handle).await;
                }
                if let Err(error) = clear_retained_under(&broker, &base, &prefix).await {
                    eprintln!("could not clear the retained topics under {base}: {error}");
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// Clears (with an empty retained message) every retained message under
/// `base`, and every Home Assistant discovery config of the bridge with
/// that base topic; the number cleared. Never panics: it runs in `Drop`.
pub async fn clear_retained(broker_url: &str, base: &str) -> Result<usize, String> {
    clear_retained_under(broker_url, base, "homeassistant").await
}

/// [`clear_retained`] for a bridge with the discovery prefix `prefix`.
///
/// It subscribes to this bridge's configs only (`<prefix>/+/<node>/+/config`)
/// and at QoS 0: a subscription to all of `homeassistant/#` at QoS 1 on a
/// shared broker gets every other test's retained configs too, beyond
/// Mosquitto's queue for one client (`max_queued_messages`, 1000), which
/// then drops the rest, its own among them, so leftovers piled up.
pub async fn clear_retained_under(
    broker_url: &str,
    base: &str,
    prefix: &str,
) -> Result<usize, String> {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

    let url = pbx2mqtt::config::BrokerUrl::parse(broker_url).map_err(|e| e.to_string())?;
    let node = pbx2mqtt::homeassistant::topic_id(base);
    let mut options = MqttOptions::new(
        format!("cleanup-{:016x}", rand::random::<u64>()),
        url.host(),
        url.port(),
    );
    options.set_max_packet_size(1 << 24, 1 << 24);
    let (client, mut eventloop) = AsyncClient::new(options, 1024);
    let filters = [format!("{base}/#"), format!("{prefix}/+/{node}/+/config")];
    let marker = |n: u32| format!("{base}/cleanup-marker/{n}");
    let ours = |topic: &str| {
        topic.starts_with(&format!("{base}/"))
            || (topic.starts_with(&format!("{prefix}/")) && topic.contains(&format!("/{node}/")))
    };
    let work = async {
        let mut retained = std::collections::BTreeSet::<String>::new();
        // Clears not yet handed to the client (its queue is bounded), then
        // the last marker.
        let mut pending = std::collections::VecDeque::<(String, bool)>::new();
        let mut subacks = 0;
        loop {
            while let Some((topic, is_marker)) = pending.front() {
                if client
                    .try_publish(topic.clone(), QoS::AtLeastOnce, !is_marker, Vec::new())
                    .is_err()
                {
                    break;
                }
                pending.pop_front();
            }
            match eventloop.poll().await.map_err(|e| e.to_string())? {
                Event::Incoming(Packet::ConnAck(_)) => {
                    for filter in &filters {
                        client
                            .try_subscribe(filter.clone(), QoS::AtMostOnce)
                            .map_err(|e| e.to_string())?;
                    }
                }
                Event::Incoming(Packet::SubAck(_)) => {
                    subacks += 1;
                    if subacks == filters.len() {
                        // Everything retained is delivered before this.
                        pending.push_back((marker(1), true));
                    }
                }
                Event::Incoming(Packet::Publish(publish)) if publish.topic == marker(1) => {
                    pending.extend(retained.iter().map(|topic| (topic.clone(), false)));
                    // The broker handles a client's messages in order: when
                    // this comes back, every clear before it is done.
                    pending.push_back((marker(2), true));
                }
                Event::Incoming(Packet::Publish(publish)) if publish.topic == marker(2) => {
                    let _ = client.try_disconnect();
                    return Ok(retained.len());
                }
                Event::Incoming(Packet::Publish(publish))
                    if publish.retain && !publish.payload.is_empty() && ours(&publish.topic) =>
                {
                    retained.insert(publish.topic.clone());
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .map_err(|_| "no answer from the broker within 10 s".to_owned())?
}

/// With `PBX2MQTT_TEST_LOG=<filter>`, logs go to stderr (for debugging).
fn debug_logs() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        if let Ok(filter) = std::env::var("PBX2MQTT_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
    });
}

/// Starts a simulator (agents frozen at offline) and a bridge.
pub async fn spawn_app(options: Options) -> TestApp {
    let mut app = prepare_app(options).await;
    app.start_bridge().await;
    app
}

/// Like [`spawn_app`] but does not start the bridge.
pub async fn prepare_app(options: Options) -> TestApp {
    debug_logs();
    let simulator_stop = CancellationToken::new();
    let simulator = Simulator::start(
        SimulatorConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            agents: options.agents,
            account_pin: TEST_PIN.into(),
            tring_key: TEST_KEY.into(),
            tenant: "TEST".into(),
            auto: false,
            seed: Some(7),
            ..SimulatorConfig::default()
        },
        simulator_stop.clone(),
    )
    .await
    .expect("simulator");
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let database_url = format!("sqlite://{}", dir.path().join("history.db").display());
    let unique: u32 = rand::random();
    let base = format!("pbx2mqtt-test/{unique:08x}");
    let protocol =
        options
            .protocol
            .unwrap_or(if options.broker_url.is_none() && uses_embedded_broker() {
                "3.1.1"
            } else {
                "5"
            });
    let broker_url = options.broker_url.clone().unwrap_or_else(broker_url);
    let mut toml = format!(
        "[mqtt]\nurl = {broker_url:?}\nclient_id = \"bridge-{unique:08x}\"\nbase_topic = {base:?}\nprotocol = {protocol:?}\n{mqtt_toml}\n\
         [belfabriek]\nurl = {bel:?}\naccount_pin = {TEST_PIN:?}\ntimeout = \"1s\"\n\
         [tring]\nurl = {tring:?}\nkey = {TEST_KEY:?}\ntenant = \"TEST\"\ntimeout = \"1s\"\n\
         [poll]\ninterval = {interval:?}\nstale_after = {stale}\nmax_backoff = \"200ms\"\n\
         [database]\nurl = {database_url:?}\n[http]\nlisten = \"127.0.0.1:0\"\n{extra}\n",
        bel = simulator.belfabriek_url(),
        tring = simulator.tring_url(),
        interval = options.poll_interval,
        stale = options.stale_after,
        extra = options.extra_toml,
        mqtt_toml = options.mqtt_toml,
    );
    toml.push_str(&simulator.agents_toml("agent"));
    let config = Config::from_toml_str(&toml).expect("test config");
    std::fs::write(dir.path().join("pbx2mqtt.toml"), &toml).unwrap();
    TestApp {
        simulator,
        config,
        base,
        database_url,
        broker_url,
        dir,
        simulator_stop,
        bridge: None,
        http: None,
        metrics: None,
    }
}

/// Waits (on `sub`, subscribed to `<base>/#`) until the bridge under
/// `base` is online: the publisher's `bridge/state` and the command
/// connection's own `bridge/<id>/state`, which it publishes after
/// subscribing to the request topics. Call `sub.forget()` first after a
/// restart.
pub async fn wait_ready(sub: &mut TestClient, base: &str) {
    let overall = format!("{base}/bridge/state");
    sub.wait_for(SOON, "bridge online", |m| {
        m.topic == overall && m.text() == "online"
    })
    .await;
    let prefix = format!("{base}/bridge/");
    sub.wait_for(SOON, "command connection subscribed", |m| {
        m.topic != overall
            && m.topic.starts_with(&prefix)
            && m.topic.ends_with("/state")
            && m.text() == "online"
    })
    .await;
}

/// Waits until `condition` holds, checking every 10 ms, for at most `within`.
pub async fn wait_until(within: Duration, what: &str, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl TestApp {
    /// A counter of the running bridge.
    pub fn counter(
        &self,
        pick: impl Fn(&pbx2mqtt::metrics::Metrics) -> &std::sync::atomic::AtomicU64,
    ) -> u64 {
        pick(self.metrics.as_ref().expect("bridge not started"))
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until every agent has been polled `rounds` more times.
    pub async fn wait_polls(&self, rounds: u64) {
        let target = self.counter(|m| &m.polls_ok) + rounds * self.config.agents.len() as u64;
        let metrics = self.metrics.clone().expect("bridge not started");
        wait_until(SOON, "polls", move || {
            metrics.polls_ok.load(std::sync::atomic::Ordering::Relaxed) >= target
        })
        .await;
    }
}

/// Generous upper bound for anything the bridge should do "soon".
pub const SOON: Duration = Duration::from_secs(10);

/// A fresh PostgreSQL database on the server at `PBX2MQTT_TEST_POSTGRES_URL`
/// (tests that need one are ignored when it was not set at build time, see
/// `build.rs`), dropped by [`PgDatabase::drop_database`].
pub struct PgDatabase {
    /// The database's URL.
    pub url: String,
    /// The server's URL (to drop it from).
    server: String,
    /// The database's name.
    name: String,
}

impl PgDatabase {
    /// Creates `<prefix>_<random>`, empty (the bridge migrates it).
    pub async fn create(prefix: &str) -> PgDatabase {
        let server = match std::env::var("PBX2MQTT_TEST_POSTGRES_URL") {
            Ok(url) if !url.is_empty() => url,
            _ => panic!(
                "PBX2MQTT_TEST_POSTGRES_URL was set when the tests were built but is not set now"
            ),
        };
        let name = format!("{prefix}_{:016x}", rand::random::<u64>());
        let admin = sqlx::PgPool::connect(&server).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let mut url = url::Url::parse(&server).unwrap();
        url.set_path(&format!("/{name}"));
        PgDatabase {
            url: url.to_string(),
            server,
            name,
        }
    }

    /// Drops the database (closing any connection left).
    pub async fn drop_database(self) {
        let admin = sqlx::PgPool::connect(&self.server).await.unwrap();
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&admin)
        .await
        .unwrap();
        admin.close().await;
    }
}

impl TestApp {
    /// `GET /readyz`: the status code and the JSON body.
    pub async fn readyz(&self) -> (u16, serde_json::Value) {
        let http = self.http.expect("bridge not started");
        let response = reqwest::get(format!("http://{http}/readyz"))
            .await
            .expect("GET /readyz");
        let status = response.status().as_u16();
        let body = response.bytes().await.expect("/readyz body");
        (status, serde_json::from_slice(&body).expect("/readyz JSON"))
    }

    /// Waits until the audit table holds a row satisfying `matches`, and
    /// returns it (the audit writer stores rows in batches).
    pub async fn wait_audit(
        &self,
        what: &str,
        matches: impl Fn(&pbx2mqtt::store::AuditRecord) -> bool,
    ) -> pbx2mqtt::store::AuditRecord {
        let store = self.store().await;
        let deadline = tokio::time::Instant::now() + SOON;
        loop {
            let rows = store
                .audit_since(chrono::DateTime::<chrono::Utc>::UNIX_EPOCH, 10_000)
                .await
                .expect("read the audit table");
            if let Some(row) = rows.into_iter().find(|row| matches(row)) {
                return row;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for the audit row: {what}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The messages retained on the broker under `filter` right now: a fresh
/// client subscribes, then publishes a marker under `marker_topic` (which
/// `filter` must match); what came before the marker is what was retained.
pub async fn retained_under(
    broker_url: &str,
    filter: &str,
    marker_topic: &str,
) -> Vec<crate::mqtt_client::Message> {
    let mut client = TestClient::connect(broker_url, &[filter.to_owned()]).await;
    let marker = format!("marker-{}", rand::random::<u64>());
    client.publish(marker_topic, marker.clone(), false).await;
    client
        .wait_for(SOON, "the marker", |m| {
            m.topic == marker_topic && m.text() == marker
        })
        .await;
    client
        .seen
        .iter()
        .filter(|m| m.retain && !m.payload.is_empty())
        .cloned()
        .collect()
}

/// A broker that is Mosquitto: the shared one at `PBX2MQTT_TEST_MQTT_URL`,
/// else a private one when the binary is installed. Tests of MQTT 5 need
/// it (the embedded rumqttd speaks MQTT 5 on another listener only).
pub struct RealBroker {
    pub url: String,
    /// A private broker, stopped on drop.
    _private: Option<crate::mosquitto::Mosquitto>,
}

impl RealBroker {
    /// The broker. Tests that call this are built as ignored where there is
    /// no Mosquitto to use (`build.rs`); run anyway, that is a failure.
    pub async fn get(test: &str) -> RealBroker {
        if !uses_embedded_broker() {
            return RealBroker {
                url: broker_url(),
                _private: None,
            };
        }
        match crate::mosquitto::mosquitto_binary() {
            Some(binary) => {
                let port = crate::mosquitto::free_port();
                let mosquitto = crate::mosquitto::Mosquitto::start(binary, port).await;
                RealBroker {
                    url: format!("mqtt://127.0.0.1:{port}"),
                    _private: Some(mosquitto),
                }
            }
            None => {
                panic!("{test}: needs Mosquitto (set PBX2MQTT_TEST_MQTT_URL or install mosquitto)")
            }
        }
    }
}
