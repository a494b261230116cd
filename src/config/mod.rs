//! Typed configuration, loaded in layers by figment: built-in defaults <
//! TOML file < `PBX2MQTT_SECTION__KEY` environment variables.
//!
//! Everything is parsed and checked here, once: durations carry a unit,
//! secrets become [`Secret`]s (from the environment or a `*_file`), values
//! are bounded, and every problem is collected with the key, where the value
//! came from and what is allowed, so a user fixes them all in one go
//! (`load`). Other modules take the typed sections and never see raw
//! strings. `load` collects, `validate` decides what is acceptable, and
//! `broker_url` parses `mqtt.url`.

mod broker_url;
mod load;
mod validate;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::model::{AgentId, Status};
use crate::secret::Secret;

pub use broker_url::{BrokerUrl, BrokerUrlError, MQTTS_PORT, MQTT_PORT};
pub use load::{
    Checked, ConfigError, ConfigFile, Loaded, Problem, Purpose, CONFIG_ENV, DEFAULT_CONFIG_PATH,
    LOG_FORMAT_ENV,
};
pub use validate::{MIN_ACCOUNT_PIN_CHARS, MIN_TRING_KEY_CHARS};

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[bridge]`: this bridge's identity and timings.
    pub bridge: BridgeConfig,
    /// `[mqtt]`: the broker connection.
    pub mqtt: MqttConfig,
    /// `[homeassistant]`: Home Assistant MQTT discovery.
    pub homeassistant: HomeAssistantConfig,
    /// `[belfabriek]`: the agent status API.
    pub belfabriek: BelfabriekConfig,
    /// `[tring]`: the call-queue API.
    pub tring: TringConfig,
    /// `[poll]`: how agents are polled.
    pub poll: PollConfig,
    /// `[database]`: the history store.
    pub database: DatabaseConfig,
    /// `[http]`: the HTTP server (reports, health).
    pub http: HttpConfig,
    /// `[report]`: report settings.
    pub report: ReportConfig,
    /// `[commands]`: what queue commands may do.
    pub commands: CommandsConfig,
    /// `[status]`: how upstream values map to statuses.
    pub status: StatusConfig,
    /// `[[agents]]`: the agents to poll.
    pub agents: Vec<AgentConfig>,
}

/// `[bridge]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    /// This bridge's name among bridges sharing a broker and a database
    /// (letters, digits, `_`, `-`). Unset: the host name, sanitised, else
    /// `pbx2mqtt`.
    pub id: String,
    /// How long a graceful stop (SIGINT/SIGTERM) may take in every state.
    #[serde(with = "duration_str")]
    pub shutdown_timeout: Duration,
    /// How long a bridge may be silent before another bridge takes over its
    /// agents (PostgreSQL, several bridges).
    #[serde(with = "duration_str")]
    pub takeover_after: Duration,
}

/// `[mqtt]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Broker URL, `mqtt://host:port` (port 1883) or `mqtts://host:port`
    /// (TLS, port 8883), parsed.
    pub url: BrokerUrl,
    /// MQTT protocol version.
    pub protocol: MqttProtocol,
    /// MQTT client id. Unset (or empty): `pbx2mqtt-<bridge.id>`.
    pub client_id: String,
    /// Prefix of every topic.
    pub base_topic: String,
    /// Username, if the broker wants one.
    pub username: Option<String>,
    /// Password (secret).
    #[serde(skip_serializing)]
    pub password: Option<Secret>,
    /// File holding the password (secret), instead of `password`.
    pub password_file: Option<PathBuf>,
    /// CA certificates (PEM) to trust for `mqtts://` instead of the system's
    /// roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for `mqtts://`; with `client_key_file`.
    pub client_cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM); with `client_cert_file`.
    pub client_key_file: Option<PathBuf>,
    /// The largest packet the bridge accepts (announced in CONNECT) and sends.
    pub max_packet_size: u32,
    /// How long the broker keeps the bridge's session while it is away.
    #[serde(with = "duration_str")]
    pub session_expiry: Duration,
    /// MQTT keep-alive interval.
    #[serde(with = "duration_str")]
    pub keep_alive: Duration,
}

/// `mqtt.protocol`: the MQTT version the bridge speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MqttProtocol {
    /// MQTT 5 (`"5"`), the default.
    #[default]
    V5,
    /// MQTT 3.1.1 (`"3.1.1"`), for old brokers.
    V311,
}

impl MqttProtocol {
    /// As written in the configuration: `5` or `3.1.1`.
    pub fn as_str(self) -> &'static str {
        match self {
            MqttProtocol::V5 => "5",
            MqttProtocol::V311 => "3.1.1",
        }
    }
}

impl std::fmt::Display for MqttProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for MqttProtocol {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for MqttProtocol {
    /// `"5"` or `"3.1.1"` (also the number `5`).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let allowed = "(allowed: \"5\", \"3.1.1\")";
        let raw = String::from(StringOrNumber::deserialize(deserializer).map_err(|_| {
            serde::de::Error::custom(format!("expected an MQTT version {allowed}"))
        })?);
        match raw.trim() {
            "5" | "5.0" => Ok(MqttProtocol::V5),
            "3.1.1" => Ok(MqttProtocol::V311),
            _ => Err(serde::de::Error::custom(format!(
                "{raw:?} is not an MQTT version {allowed}"
            ))),
        }
    }
}

/// `[homeassistant]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HomeAssistantConfig {
    /// Publish Home Assistant discovery configs.
    pub enabled: bool,
    /// Home Assistant's discovery prefix.
    pub discovery_prefix: String,
    /// Where Home Assistant announces `online` (then configs are republished).
    pub status_topic: String,
}

/// `[belfabriek]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BelfabriekConfig {
    /// The XML-RPC endpoint.
    pub url: String,
    /// Account PIN (secret).
    #[serde(skip_serializing)]
    pub account_pin: Option<Secret>,
    /// File holding the account PIN, instead of `account_pin`.
    pub account_pin_file: Option<PathBuf>,
    /// Struct member carrying the account PIN (`accountCode` per the
    /// documented example, `accountPin` per the prose).
    pub account_param: String,
    /// Member carrying the agent's extension id in `ivr.getAgentAvail`.
    pub extension_param: String,
    /// Member names of `general.getExtensionStatus`.
    pub status_params: StatusParams,
    /// HTTP request timeout.
    #[serde(with = "duration_str")]
    pub timeout: Duration,
}

/// Member names sent with `general.getExtensionStatus`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusParams {
    /// Supervisor id member (`supId`).
    pub sup_id: String,
    /// Manager id member (`manId`).
    pub man_id: String,
    /// Account id member (`accountCode` in the example, `custId` in the prose).
    pub cust_id: String,
    /// Extension id member (`extensionId` in the example, `extId` in the prose).
    pub ext_id: String,
}

/// `[tring]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TringConfig {
    /// The proxy API endpoint.
    pub url: String,
    /// API key (secret; it travels in the URL and is redacted everywhere).
    #[serde(skip_serializing)]
    pub key: Option<Secret>,
    /// File holding the API key, instead of `key`.
    pub key_file: Option<PathBuf>,
    /// Tenant code.
    #[serde(deserialize_with = "string_or_number")]
    pub tenant: String,
    /// HTTP request timeout.
    #[serde(with = "duration_str")]
    pub timeout: Duration,
}

/// `[poll]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollConfig {
    /// How often each agent is polled.
    #[serde(with = "duration_str")]
    pub interval: Duration,
    /// At most this many agent polls in flight.
    pub concurrency: usize,
    /// After this many consecutive failed polls an agent becomes `unknown`.
    pub stale_after: u32,
    /// The longest wait between retries of a failing agent.
    #[serde(with = "duration_str")]
    pub max_backoff: Duration,
}

/// `[database]`
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// sqlx URL: `sqlite://relative.db`, `sqlite:///absolute.db` or `postgres://...`.
    pub url: String,
}

impl std::fmt::Debug for DatabaseConfig {
    /// The URL without its password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &crate::store::redact_url(&self.url))
            .finish()
    }
}

/// `[http]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on, e.g. `127.0.0.1:8080`; empty disables the server.
    pub listen: String,
    /// The longest a request may take before it is answered 503.
    #[serde(with = "duration_str")]
    pub request_timeout: Duration,
}

/// `[report]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportConfig {
    /// IANA time zone in which report periods are cut.
    pub timezone: String,
    /// The most cells (agents × periods) one summary may have.
    pub max_cells: usize,
    /// The most intervals one timeline may return.
    pub max_timeline_rows: usize,
    /// The longest one report may take.
    #[serde(with = "duration_str")]
    pub timeout: Duration,
    /// Reports running at once (HTTP); more wait or are refused.
    pub max_concurrent: usize,
}

impl ReportConfig {
    /// The parsed time zone (checked at load).
    pub fn tz(&self) -> chrono_tz::Tz {
        // Checked by `Config::validate`; UTC is never reached in practice.
        self.timezone.parse().unwrap_or(chrono_tz::UTC)
    }
}

/// `[commands]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandsConfig {
    /// Queues that commands may touch; empty allows every queue.
    #[serde(deserialize_with = "strings_or_numbers")]
    pub allowed_queues: Vec<String>,
    /// Whether `clean` (remove every member) is allowed.
    pub allow_clean: bool,
    /// A `transaction` seen again within this window is answered from memory.
    #[serde(with = "duration_str")]
    pub dedup_window: Duration,
    /// Larger request payloads are refused.
    pub max_payload_bytes: usize,
    /// At most this many commands run at once.
    pub concurrency: usize,
    /// How often queue membership (`queue/<queue>/members`) is refreshed.
    #[serde(with = "duration_str")]
    pub membership_interval: Duration,
    /// How long audit rows are kept; zero keeps them forever.
    #[serde(with = "duration_str")]
    pub audit_retention: Duration,
}

/// `[status]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusConfig {
    /// `availReason` (lowercased, trimmed) to status, for `available=0`.
    /// Reasons not listed become `unavailable`.
    pub reasons: BTreeMap<String, Status>,
}

/// `[[agents]]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The id used in topics, commands and reports.
    pub id: AgentId,
    /// Display name (defaults to the id).
    pub name: Option<String>,
    /// Belfabriek extension id ("Medewerker ID").
    #[serde(deserialize_with = "string_or_number")]
    pub extension_id: String,
    /// Belfabriek supervisor id.
    #[serde(default, deserialize_with = "opt_string_or_number")]
    pub sup_id: Option<String>,
    /// Belfabriek manager id.
    #[serde(default, deserialize_with = "opt_string_or_number")]
    pub man_id: Option<String>,
    /// Belfabriek account id for `general.getExtensionStatus` (defaults to
    /// the account PIN, as in the documented example).
    #[serde(default, deserialize_with = "opt_string_or_number")]
    pub cust_id: Option<String>,
    /// The agent's TRiNG extension, for queue commands.
    #[serde(default, deserialize_with = "opt_string_or_number")]
    pub queue_extension: Option<String>,
}

impl AgentConfig {
    /// The display name: `name`, or the id.
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(self.id.as_str())
    }
}

/// The built-in defaults, as a serializable tree for figment's lowest layer.
#[derive(Serialize)]
struct Defaults {
    bridge: BridgeConfig,
    mqtt: MqttConfig,
    homeassistant: HomeAssistantConfig,
    belfabriek: BelfabriekConfig,
    tring: TringConfig,
    poll: PollConfig,
    database: DatabaseConfig,
    http: HttpConfig,
    report: ReportConfig,
    commands: CommandsConfig,
    status: StatusConfig,
    agents: Vec<AgentConfig>,
}

/// The default reason table (the statuses table of the README).
pub fn default_reasons() -> BTreeMap<String, Status> {
    [
        ("-", Status::Offline),
        ("", Status::Offline),
        ("pause", Status::Paused),
        ("paused", Status::Paused),
        ("handling", Status::Busy),
    ]
    .into_iter()
    .map(|(reason, status)| (reason.to_owned(), status))
    .collect()
}

/// One day.
const DAY: Duration = Duration::from_secs(24 * 60 * 60);

fn defaults() -> Defaults {
    Defaults {
        bridge: BridgeConfig {
            // Resolved after loading: the host name (`load::default_bridge_id`).
            id: String::new(),
            shutdown_timeout: Duration::from_secs(10),
            takeover_after: Duration::from_secs(10),
        },
        mqtt: MqttConfig {
            url: BrokerUrl::localhost(),
            protocol: MqttProtocol::V5,
            // Resolved after loading: `pbx2mqtt-<bridge.id>`.
            client_id: String::new(),
            base_topic: "pbx2mqtt".into(),
            username: None,
            password: None,
            password_file: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            max_packet_size: 256 * 1024,
            session_expiry: Duration::from_secs(60 * 60),
            keep_alive: Duration::from_secs(15),
        },
        homeassistant: HomeAssistantConfig {
            enabled: true,
            discovery_prefix: "homeassistant".into(),
            status_topic: "homeassistant/status".into(),
        },
        belfabriek: BelfabriekConfig {
            url: "http://api1.belfabriek.nl/xml/agent/xml.asp".into(),
            account_pin: None,
            account_pin_file: None,
            account_param: "accountCode".into(),
            extension_param: "extensionId".into(),
            status_params: StatusParams {
                sup_id: "supId".into(),
                man_id: "manId".into(),
                cust_id: "accountCode".into(),
                ext_id: "extensionId".into(),
            },
            timeout: Duration::from_secs(5),
        },
        tring: TringConfig {
            url: "https://api.tring.nu/pbx/proxyapi.php".into(),
            key: None,
            key_file: None,
            tenant: String::new(),
            timeout: Duration::from_secs(10),
        },
        poll: PollConfig {
            interval: Duration::from_secs(2),
            concurrency: 64,
            stale_after: 3,
            max_backoff: Duration::from_secs(60),
        },
        database: DatabaseConfig {
            url: "sqlite://data/pbx2mqtt.db".into(),
        },
        http: HttpConfig {
            listen: "127.0.0.1:8080".into(),
            request_timeout: Duration::from_secs(60),
        },
        report: ReportConfig {
            timezone: "Europe/Amsterdam".into(),
            max_cells: 200_000,
            max_timeline_rows: 500_000,
            timeout: Duration::from_secs(30),
            max_concurrent: 2,
        },
        commands: CommandsConfig {
            allowed_queues: Vec::new(),
            allow_clean: false,
            dedup_window: Duration::from_secs(600),
            max_payload_bytes: 4096,
            concurrency: 8,
            membership_interval: Duration::from_secs(60),
            audit_retention: 90 * DAY,
        },
        status: StatusConfig {
            reasons: default_reasons(),
        },
        agents: Vec::new(),
    }
}

impl Config {
    /// The Belfabriek PIN (empty when not configured; validation for `run`
    /// and `check` refuses that).
    pub fn account_pin(&self) -> Secret {
        self.belfabriek.account_pin.clone().unwrap_or_default()
    }

    /// The TRiNG key (empty when not configured).
    pub fn tring_key(&self) -> Secret {
        self.tring.key.clone().unwrap_or_default()
    }

    /// Every secret of this configuration, for redaction.
    pub fn secrets(&self) -> Vec<Secret> {
        [
            self.belfabriek.account_pin.clone(),
            self.tring.key.clone(),
            self.mqtt.password.clone(),
        ]
        .into_iter()
        .flatten()
        .filter(|secret| !secret.is_empty())
        .collect()
    }
}

/// True for 1 to 20 ASCII digits: the only shape a queue or extension number
/// may have before it goes into a TRiNG URL.
pub fn is_plain_number(value: &str) -> bool {
    !value.is_empty() && value.len() <= 20 && value.bytes().all(|b| b.is_ascii_digit())
}

/// Serde adapter for durations written as `"2s"`, `"200ms"`, `"1m"`.
pub mod duration_str {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `"2s"`.
    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&humantime::format_duration(*value).to_string())
    }

    /// Reads `"2s"`, `"200ms"`, `"1m 30s"`.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let raw = String::deserialize(deserializer).map_err(|_| {
            serde::de::Error::custom(
                "expected a duration string with a unit, like \"2s\" or \"200ms\"",
            )
        })?;
        humantime::parse_duration(raw.trim()).map_err(|e| {
            serde::de::Error::custom(format!(
                "{raw:?} is not a duration ({e}); write it with a unit, like \"2s\" or \"200ms\""
            ))
        })
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StringOrNumber {
    String(String),
    Unsigned(u64),
    Signed(i64),
}

impl From<StringOrNumber> for String {
    fn from(value: StringOrNumber) -> Self {
        match value {
            StringOrNumber::String(s) => s,
            StringOrNumber::Unsigned(n) => n.to_string(),
            StringOrNumber::Signed(n) => n.to_string(),
        }
    }
}

fn string_or_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    StringOrNumber::deserialize(deserializer).map(String::from)
}

fn opt_string_or_number<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    Option::<StringOrNumber>::deserialize(deserializer).map(|v| v.map(String::from))
}

fn strings_or_numbers<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    Vec::<StringOrNumber>::deserialize(deserializer)
        .map(|values| values.into_iter().map(String::from).collect())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn load(toml: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(toml)
    }

    fn load_error(toml: &str) -> String {
        load(toml).unwrap_err().to_string()
    }

    /// Loads `toml` from a file for `purpose`: every problem and warning.
    fn check(toml: &str, purpose: Purpose) -> Checked {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pbx2mqtt.toml");
        std::fs::write(&path, toml).unwrap();
        Config::check(Some(&path), purpose).unwrap()
    }

    const SERVICE_OK: &str = "[belfabriek]\naccount_pin = \"1234\"\n\
        [tring]\nkey = \"simkey\"\ntenant = \"SIM\"\n\
        [[agents]]\nid = \"alice\"\nextension_id = 1001\n";

    #[test]
    fn a_bad_broker_url_names_the_key() {
        let error = load_error("[mqtt]\nurl = \"http://broker\"\n");
        assert!(error.contains("unsupported scheme"), "{error}");
        assert!(error.contains("mqtt.url"), "{error}");
        let config = load("[mqtt]\nurl = \"mqtts://broker\"\n").unwrap();
        assert!(config.mqtt.url.tls());
        assert_eq!(config.mqtt.url.port(), MQTTS_PORT);
    }

    #[test]
    fn defaults_are_valid_and_match_the_readme() {
        let config = load("").unwrap();
        assert_eq!(config.mqtt.base_topic, "pbx2mqtt");
        assert_eq!(config.belfabriek.account_param, "accountCode");
        assert_eq!(config.poll.interval, Duration::from_secs(2));
        assert_eq!(config.report.timezone, "Europe/Amsterdam");
        assert_eq!(config.status.reasons.get("pause"), Some(&Status::Paused));
        assert!(!config.commands.allow_clean);
        // The new keys.
        assert_eq!(config.mqtt.protocol, MqttProtocol::V5);
        assert_eq!(config.mqtt.max_packet_size, 262_144);
        assert_eq!(config.mqtt.session_expiry, Duration::from_secs(3600));
        assert_eq!(config.mqtt.keep_alive, Duration::from_secs(15));
        assert_eq!(config.mqtt.ca_file, None);
        assert_eq!(config.bridge.shutdown_timeout, Duration::from_secs(10));
        assert_eq!(config.bridge.takeover_after, Duration::from_secs(10));
        assert!(config.homeassistant.enabled);
        assert_eq!(config.homeassistant.discovery_prefix, "homeassistant");
        assert_eq!(config.homeassistant.status_topic, "homeassistant/status");
        assert_eq!(config.commands.membership_interval, Duration::from_secs(60));
        assert_eq!(config.commands.audit_retention, 90 * DAY);
        assert_eq!(config.report.max_cells, 200_000);
        assert_eq!(config.report.max_timeline_rows, 500_000);
        assert_eq!(config.report.timeout, Duration::from_secs(30));
        assert_eq!(config.report.max_concurrent, 2);
        assert_eq!(config.http.request_timeout, Duration::from_secs(60));
    }

    #[test]
    fn the_bridge_id_defaults_to_the_host_name_and_names_the_client() {
        let config = load("").unwrap();
        assert_eq!(config.bridge.id, load::default_bridge_id());
        assert!(!config.bridge.id.is_empty());
        assert_eq!(
            config.mqtt.client_id,
            format!("pbx2mqtt-{}", config.bridge.id)
        );
        let config = load("[bridge]\nid = \"east\"").unwrap();
        assert_eq!(config.mqtt.client_id, "pbx2mqtt-east");
        let config = load("[bridge]\nid = \"east\"\n[mqtt]\nclient_id = \"mine\"").unwrap();
        assert_eq!(config.mqtt.client_id, "mine");
        assert_eq!(load::sanitize_id("web1.example.com"), "web1-example-com");
        assert_eq!(load::sanitize_id("..."), "");
        assert!(load_error("[bridge]\nid = \"a b\"").contains("bridge.id"));
    }

    #[test]
    fn the_protocol_is_5_or_3_1_1() {
        assert_eq!(
            load("[mqtt]\nprotocol = \"3.1.1\"").unwrap().mqtt.protocol,
            MqttProtocol::V311
        );
        assert_eq!(
            load("[mqtt]\nprotocol = 5").unwrap().mqtt.protocol,
            MqttProtocol::V5
        );
        let error = load_error("[mqtt]\nprotocol = \"4\"");
        assert!(
            error.contains(
                "mqtt.protocol: \"4\" is not an MQTT version (allowed: \"5\", \"3.1.1\")"
            ),
            "{error}"
        );
    }

    #[test]
    fn durations_need_a_unit_and_errors_name_the_key() {
        let config = load("[poll]\ninterval = \"200ms\"").unwrap();
        assert_eq!(config.poll.interval, Duration::from_millis(200));
        let error = load_error("[poll]\ninterval = \"fast\"");
        assert!(error.contains("poll.interval"), "{error}");
        let error = load("[poll]\ninterval = 2").unwrap_err().to_string();
        assert!(error.contains("poll.interval"), "{error}");
    }

    #[test]
    fn an_unknown_key_is_one_clean_line_naming_the_file_and_the_allowed_keys() {
        let checked = check("[poll]\nintervall = \"2s\"\n", Purpose::History);
        let file = checked.file.path().unwrap().display().to_string();
        let error = checked.into_loaded().unwrap_err().to_string();
        assert_eq!(
            error,
            format!(
                "invalid configuration: {file}: unknown key poll.intervall \
                 (allowed: interval, concurrency, stale_after, max_backoff)"
            )
        );
        let error = error_of("[mqqt]\nurl = \"x\"");
        assert!(
            error.contains("unknown key mqqt (allowed: bridge, mqtt,"),
            "{error}"
        );
        assert!(
            !error.contains('`') && !error.contains("default."),
            "{error}"
        );
    }

    fn error_of(toml: &str) -> String {
        check(toml, Purpose::History)
            .into_loaded()
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let checked = check(
            "[poll]\nintervall = \"2s\"\nconcurrency = 4000000000000000000\nstale_after = \"x\"\n\
             [belfabriek]\ntimeout = \"0s\"\n\
             [[agents]]\nid = \"a/b\"\nextension_id = 1\n\
             [[agents]]\nid = \"bob\"\n\
             [[agents]]\nid = \"carol\"\nextension_id = 3\nqueue_extension = \"3x\"\n",
            Purpose::Service,
        );
        let keys: Vec<String> = checked.problems.iter().map(Problem::key).collect();
        assert_eq!(
            keys,
            [
                "poll.intervall",
                "poll.stale_after",
                "agents[0].id",
                "agents[1].extension_id",
                "belfabriek.timeout",
                "belfabriek.account_pin",
                "tring.key",
                "tring.tenant",
                "poll.concurrency",
                "agents[2].queue_extension",
            ]
        );
        // The good agent is kept; the config is usable for probing.
        assert_eq!(checked.config.agents.len(), 1);
        let message = checked.into_loaded().unwrap_err().to_string();
        assert!(
            message.starts_with("invalid configuration (10 problems):\n  "),
            "{message}"
        );
        assert!(
            message.contains(
                "poll.concurrency: 4000000000000000000 is too large (allowed: 1 to 10000)"
            ),
            "{message}"
        );
        assert!(
            message.contains("belfabriek.timeout: \"0s\" is too short (allowed: 100ms to 5m)"),
            "{message}"
        );
        assert!(
            message.contains("agents[1].extension_id: is required"),
            "{message}"
        );
        assert_eq!(message.matches("agents[0]").count(), 1, "{message}");
    }

    #[test]
    fn absurd_values_are_refused_with_bounds_naming_the_key() {
        for (toml, expected) in [
            ("[poll]\nconcurrency = 0", "poll.concurrency: 0 is too small (allowed: 1 to 10000)"),
            ("[poll]\ninterval = \"50ms\"", "poll.interval: \"50ms\" is too short (allowed: 100ms to 1h)"),
            ("[poll]\ninterval = \"2h\"\nmax_backoff = \"3h\"", "poll.interval: \"2h\" is too long"),
            ("[poll]\nstale_after = 1001", "poll.stale_after: 1001 is too large (allowed: 1 to 1000)"),
            ("[poll]\ninterval = \"5s\"\nmax_backoff = \"1s\"", "poll.max_backoff: \"1s\" is shorter than poll.interval \"5s\""),
            ("[tring]\ntimeout = \"6m\"", "tring.timeout: \"6m\" is too long (allowed: 100ms to 5m)"),
            ("[commands]\nconcurrency = 100000", "commands.concurrency: 100000 is too large (allowed: 1 to 256)"),
            ("[commands]\ndedup_window = \"2d\"", "commands.dedup_window: \"2d\" is too long (allowed: 0s to 1d)"),
            ("[commands]\nmax_payload_bytes = 10", "commands.max_payload_bytes: 10 is too small (allowed: 64 to 65536)"),
            ("[commands]\nmembership_interval = \"1s\"", "commands.membership_interval: \"1s\" is too short (allowed: 5s to 1d)"),
            ("[commands]\naudit_retention = \"1h\"", "commands.audit_retention: \"1h\" is out of range (allowed: 1d to 3650d, or 0s"),
            ("[report]\nmax_concurrent = 0", "report.max_concurrent: 0 is too small (allowed: 1 to 64)"),
            ("[report]\nmax_cells = 0", "report.max_cells: 0 is too small"),
            ("[report]\nmax_timeline_rows = 0", "report.max_timeline_rows: 0 is too small"),
            ("[report]\ntimeout = \"0s\"", "report.timeout: \"0s\" is too short (allowed: 1s to 1h)"),
            ("[http]\nrequest_timeout = \"0s\"", "http.request_timeout: \"0s\" is too short (allowed: 1s to 1h)"),
            ("[mqtt]\nmax_packet_size = 100", "mqtt.max_packet_size: 100 is too small (allowed: 1024 to 268435455)"),
            ("[mqtt]\nkeep_alive = \"1s\"", "mqtt.keep_alive: \"1s\" is too short (allowed: 5s to 1h)"),
            ("[mqtt]\nsession_expiry = \"400d\"", "mqtt.session_expiry: \"400d\" is too long"),
            ("[bridge]\nshutdown_timeout = \"0s\"", "bridge.shutdown_timeout: \"0s\" is too short (allowed: 1s to 5m)"),
            ("[bridge]\ntakeover_after = \"1s\"", "bridge.takeover_after: \"1s\" is too short (allowed: 2s to 5m)"),
            ("[homeassistant]\ndiscovery_prefix = \"ha/#\"", "homeassistant.discovery_prefix: \"ha/#\" is not a usable topic"),
            ("[homeassistant]\nstatus_topic = \"\"", "homeassistant.status_topic: \"\" is not a usable topic"),
            ("[database]\nurl = \"mysql://u:hunter2@h/db\"", "database.url: \"mysql://u:%5Bredacted%5D@h/db\" is not a database URL"),
            ("[report]\ntimezone = \"Mars/Olympus\"", "report.timezone"),
            ("[mqtt]\nbase_topic = \"a/#\"", "mqtt.base_topic"),
            ("[commands]\nallowed_queues = [\"5&x\"]", "commands.allowed_queues"),
            ("[belfabriek]\nurl = \"ftp://x\"", "belfabriek.url"),
            (
                "[[agents]]\nid = \"a\"\nextension_id = 1\n[[agents]]\nid = \"a\"\nextension_id = 2",
                "agents[1].id: duplicate agent id \"a\"",
            ),
            ("[[agents]]\nid = \"a/b\"\nextension_id = 1", "agents[0].id"),
        ] {
            let error = load_error(toml);
            assert!(error.contains(expected), "{toml}:\n{error}");
            assert!(error.starts_with("invalid configuration: "), "{toml}:\n{error}");
        }
        // Zero keeps the audit rows forever.
        assert!(load("[commands]\naudit_retention = \"0s\"").is_ok());
    }

    #[test]
    fn tls_files_must_exist_and_come_in_pairs() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let config = load(&format!(
            "[mqtt]\nurl = \"mqtts://broker\"\nca_file = {ca:?}"
        ))
        .unwrap();
        assert_eq!(config.mqtt.ca_file.as_deref(), Some(ca.as_path()));
        let error = load_error("[mqtt]\nurl = \"mqtts://broker\"\nca_file = \"/no/such/ca.pem\"");
        assert!(
            error.contains("mqtt.ca_file: cannot read /no/such/ca.pem"),
            "{error}"
        );
        let error = load_error(&format!(
            "[mqtt]\nurl = \"mqtt://broker\"\nca_file = {ca:?}"
        ));
        assert!(
            error.contains("mqtt.ca_file: is only used with TLS"),
            "{error}"
        );
        let error = load_error(&format!(
            "[mqtt]\nurl = \"mqtts://broker\"\nclient_cert_file = {ca:?}"
        ));
        assert!(
            error.contains("mqtt.client_key_file: is not set, but mqtt.client_cert_file is"),
            "{error}"
        );
    }

    #[test]
    fn run_and_check_need_the_secrets_and_the_tenant() {
        let checked = check("", Purpose::Service);
        let keys: Vec<String> = checked.problems.iter().map(Problem::key).collect();
        assert_eq!(
            keys,
            ["belfabriek.account_pin", "tring.key", "tring.tenant"]
        );
        assert!(checked
            .warnings
            .iter()
            .any(|w| w.starts_with("no agents configured")));
        // The same for a configuration built in code.
        let message = load("")
            .unwrap()
            .validate_for(Purpose::Service)
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with("invalid configuration (3 problems):"),
            "{message}"
        );
        let built = load(SERVICE_OK).unwrap();
        let warnings = built.validate_for(Purpose::Service).unwrap();
        assert_eq!(warnings.len(), 1, "the plain-http warning: {warnings:?}");
        let checked = check(SERVICE_OK, Purpose::Service);
        assert_eq!(checked.problems, []);
        // Reports need none of them; queue commands need TRiNG's.
        assert_eq!(check("", Purpose::History).problems, []);
        let keys: Vec<String> = check("", Purpose::QueueCommands)
            .problems
            .iter()
            .map(Problem::key)
            .collect();
        assert_eq!(keys, ["tring.key", "tring.tenant"]);
    }

    #[test]
    fn short_secrets_are_refused_without_showing_them() {
        let checked = check(
            "[belfabriek]\naccount_pin = \"7\"\n[tring]\nkey = \"k\"\ntenant = \"T\"",
            Purpose::History,
        );
        let message = checked.into_loaded().unwrap_err().to_string();
        assert!(
            message.contains("belfabriek.account_pin: is shorter than 4 characters"),
            "{message}"
        );
        assert!(
            message.contains("tring.key: is shorter than 6 characters"),
            "{message}"
        );
        assert!(
            !message.contains("\"7\"") && !message.contains("\"k\""),
            "{message}"
        );
    }

    #[test]
    fn a_plain_http_belfabriek_url_is_a_warning_unless_local() {
        let warned = |url: &str| {
            let toml = format!(
                "[belfabriek]\nurl = {url:?}\naccount_pin = \"1234\"\n\
                 [tring]\nkey = \"simkey\"\ntenant = \"SIM\"\n"
            );
            check(&toml, Purpose::Service)
                .warnings
                .iter()
                .any(|w| w.contains("plain http://"))
        };
        assert!(warned("http://api1.belfabriek.nl/xml/agent/xml.asp"));
        assert!(!warned("https://api1.belfabriek.nl/xml/agent/xml.asp"));
        assert!(!warned("http://127.0.0.1:8090/xml/agent/xml.asp"));
    }

    #[test]
    fn misspelt_variables_get_a_suggestion() {
        assert_eq!(
            load::env_suggestion("PBX2MQTT_POLL_INTERVALL").as_deref(),
            Some("PBX2MQTT_POLL__INTERVAL")
        );
        assert_eq!(
            load::env_suggestion("PBX2MQTT_BELFABRIEK_ACCOUNT_PIN").as_deref(),
            Some("PBX2MQTT_BELFABRIEK__ACCOUNT_PIN")
        );
        assert_eq!(
            load::env_suggestion("PBX2MQTT_HOMEASSISTANT_ENABLED").as_deref(),
            Some("PBX2MQTT_HOMEASSISTANT__ENABLED")
        );
        assert_eq!(load::env_suggestion("PBX2MQTT_NOTHING"), None);
        assert_eq!(
            load::keys_of("poll"),
            ["interval", "concurrency", "stale_after", "max_backoff"]
        );
    }

    #[test]
    fn agents_accept_numbers_for_ids_and_reasons_merge_with_defaults() {
        let config = load(
            "[[agents]]\nid = \"alice\"\nextension_id = 1001\nqueue_extension = 201\n\
             [status.reasons]\n\" Lunch \" = \"paused\"",
        )
        .unwrap();
        assert_eq!(config.agents[0].extension_id, "1001");
        assert_eq!(config.agents[0].queue_extension.as_deref(), Some("201"));
        assert_eq!(config.agents[0].display_name(), "alice");
        assert_eq!(config.status.reasons.get("lunch"), Some(&Status::Paused));
        assert_eq!(config.status.reasons.get("handling"), Some(&Status::Busy));
        let error = load_error("[status.reasons]\nlunch = \"napping\"");
        assert!(
            error.contains("status.reasons.lunch: \"napping\" is not allowed (allowed: offline,"),
            "{error}"
        );
    }

    #[test]
    fn numeric_secrets_load_from_toml_and_are_never_in_errors() {
        let config = load("[belfabriek]\naccount_pin = 4321\n[tring]\nkey = 987654").unwrap();
        assert_eq!(config.account_pin().expose(), "4321");
        assert_eq!(config.tring_key().expose(), "987654");
        // A different error elsewhere in the file does not echo the secret.
        let error = load_error("[belfabriek]\naccount_pin = 4321\n[poll]\ninterval = 5");
        assert!(!error.contains("4321"), "{error}");
    }

    #[test]
    fn the_commented_example_config_loads_and_equals_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/pbx2mqtt.example.toml");
        let example = Config::load(Some(&path)).unwrap();
        let defaults = load("").unwrap();
        assert_eq!(format!("{example:?}"), format!("{defaults:?}"));
        let missing = Config::load(Some(Path::new("no/such/file.toml"))).unwrap_err();
        assert_eq!(
            missing.to_string(),
            "configuration file no/such/file.toml (named by --config) does not exist"
        );
    }

    #[test]
    fn every_key_is_documented_in_the_readme_and_the_example_config() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
        let example = std::fs::read_to_string(root.join("config/pbx2mqtt.example.toml")).unwrap();
        for section in load::sections() {
            if *section == "agents" {
                continue;
            }
            assert!(
                example.contains(&format!("\n[{section}]\n"))
                    || example.contains(&format!("\n[{section}.")),
                "[{section}] is not in the example config"
            );
            for key in load::keys_of(section) {
                assert!(
                    readme.contains(&format!("`{section}.{key}")),
                    "{section}.{key} is not in the README's configuration table"
                );
                let documented = example.contains(&format!("\n{key} ="))
                    || example.contains(&format!("\n# {key} ="))
                    || example.contains(&format!("\n[{section}.{key}]"));
                assert!(documented, "{section}.{key} is not in the example config");
            }
        }
    }

    #[test]
    fn secrets_come_from_files_and_never_print() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pin");
        std::fs::write(&path, "01234\n").unwrap();
        let config = load(&format!(
            "[belfabriek]\naccount_pin_file = {:?}\n[tring]\nkey = \"sekrit\"\n\
             [database]\nurl = \"postgres://bridge:pg-pass-99@db/history\"",
            path.display().to_string()
        ))
        .unwrap();
        assert_eq!(config.account_pin().expose(), "01234");
        assert_eq!(config.tring_key().expose(), "sekrit");
        let printed = format!("{config:?}");
        for secret in ["01234", "sekrit", "pg-pass-99"] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
        assert!(
            printed.contains("postgres://bridge:%5Bredacted%5D@db/history"),
            "{printed}"
        );
        let error = load_error("[tring]\nkey_file = \"/no/such/key\"");
        assert!(
            error.contains("tring.key_file: cannot read /no/such/key"),
            "{error}"
        );
    }
}
