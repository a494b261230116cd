//! Typed configuration, loaded in layers by figment: built-in defaults <
//! TOML file < `PBX2MQTT_SECTION__KEY` environment variables (`product.md` §5).
//!
//! Everything is parsed and checked here, once: durations carry a unit,
//! secrets become [`Secret`]s (from the environment or a `*_file`), and a
//! wrong key or value fails with a message that names it. Other modules take
//! the typed sections and never see raw strings.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Deserializer, Serialize};

use crate::model::{AgentId, Status};
use crate::secret::Secret;

/// The default path of the configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "config/pbx2mqtt.toml";

/// Environment variable naming the configuration file.
pub const CONFIG_ENV: &str = "PBX2MQTT_CONFIG";

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A key is unknown, missing or has a value of the wrong type.
    #[error("invalid configuration: {0}")]
    Invalid(#[from] Box<figment::Error>),
    /// A value parsed but is not acceptable.
    #[error("invalid configuration: `{key}`: {message}")]
    Value {
        /// The dotted key, e.g. `poll.interval`.
        key: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// The file named by `--config` or `PBX2MQTT_CONFIG` does not exist.
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
    /// A `*_file` secret could not be read.
    #[error("cannot read `{key}` file {path}: {source}")]
    SecretFile {
        /// The dotted key, e.g. `tring.key_file`.
        key: String,
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
}

fn value_error(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Value {
        key: key.to_owned(),
        message: message.into(),
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[mqtt]`: the broker connection.
    pub mqtt: MqttConfig,
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

/// `[mqtt]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Broker URL, `mqtt://host:port` (port defaults to 1883), parsed.
    pub url: BrokerUrl,
    /// MQTT client id.
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
}

/// A broker address, parsed once when the configuration is read:
/// `mqtt://host:port`, `tcp://host:port` or `host:port`; the port defaults to
/// 1883. Shown (and serialized) as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BrokerUrl {
    /// The URL as written.
    raw: String,
    /// The host name or address (IPv6 without brackets).
    host: String,
    /// The TCP port.
    port: u16,
}

/// Why a broker URL is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerUrlError {
    /// A scheme other than `mqtt://` or `tcp://`.
    #[error("unsupported scheme in {0:?}: use mqtt://host:port")]
    Scheme(String),
    /// No host.
    #[error("no host in {0:?}: use mqtt://host:port")]
    Host(String),
    /// The port is not a number from 0 to 65535.
    #[error("bad port in {0:?}: use mqtt://host:port")]
    Port(String),
}

impl BrokerUrl {
    /// Parses `mqtt://host:port`, `tcp://host:port` or `host:port`.
    pub fn parse(url: &str) -> Result<Self, BrokerUrlError> {
        let rest = url
            .strip_prefix("mqtt://")
            .or_else(|| url.strip_prefix("tcp://"))
            .unwrap_or(url);
        if rest.contains("://") {
            return Err(BrokerUrlError::Scheme(url.to_owned()));
        }
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, _)) if !host.ends_with(']') && host.contains(':') => (rest, "1883"),
            Some((host, port)) => (host, port),
            None => (rest, "1883"),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(BrokerUrlError::Host(url.to_owned()));
        }
        let port = port
            .parse::<u16>()
            .map_err(|_| BrokerUrlError::Port(url.to_owned()))?;
        Ok(Self {
            raw: url.to_owned(),
            host: host.to_owned(),
            port,
        })
    }

    /// `mqtt://127.0.0.1:1883`, the default.
    pub fn localhost() -> Self {
        Self {
            raw: "mqtt://127.0.0.1:1883".to_owned(),
            host: "127.0.0.1".to_owned(),
            port: 1883,
        }
    }

    /// The host name or address.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

impl std::fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.raw)
    }
}

impl std::str::FromStr for BrokerUrl {
    type Err = BrokerUrlError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        Self::parse(url)
    }
}

impl TryFrom<String> for BrokerUrl {
    type Error = BrokerUrlError;

    fn try_from(url: String) -> Result<Self, Self::Error> {
        Self::parse(&url)
    }
}

impl From<BrokerUrl> for String {
    fn from(url: BrokerUrl) -> Self {
        url.raw
    }
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
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// sqlx URL: `sqlite://relative.db`, `sqlite:///absolute.db` or `postgres://...`.
    pub url: String,
}

/// `[http]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on, e.g. `127.0.0.1:8080`; empty disables the server.
    pub listen: String,
}

/// `[report]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportConfig {
    /// IANA time zone in which report periods are cut.
    pub timezone: String,
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
    mqtt: MqttConfig,
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

/// The default reason table of `product.md` §1.
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

fn defaults() -> Defaults {
    Defaults {
        mqtt: MqttConfig {
            url: BrokerUrl::localhost(),
            client_id: "pbx2mqtt".into(),
            base_topic: "pbx2mqtt".into(),
            username: None,
            password: None,
            password_file: None,
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
        },
        report: ReportConfig {
            timezone: "Europe/Amsterdam".into(),
        },
        commands: CommandsConfig {
            allowed_queues: Vec::new(),
            allow_clean: false,
            dedup_window: Duration::from_secs(600),
            max_payload_bytes: 4096,
            concurrency: 8,
        },
        status: StatusConfig {
            reasons: default_reasons(),
        },
        agents: Vec::new(),
    }
}

impl Config {
    /// The figment with defaults, the file (if any) and the environment.
    ///
    /// `file`: `Some(path)` must exist; `None` uses `PBX2MQTT_CONFIG` (must
    /// exist) or [`DEFAULT_CONFIG_PATH`] (optional).
    pub fn figment(file: Option<&Path>) -> Result<Figment, ConfigError> {
        let env_file = std::env::var_os(CONFIG_ENV).map(PathBuf::from);
        let (path, required) = match (file, env_file) {
            (Some(path), _) => (path.to_path_buf(), true),
            (None, Some(path)) => (path, true),
            (None, None) => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        let mut figment = Figment::from(Serialized::defaults(defaults()));
        if path.exists() {
            figment = figment.merge(Toml::file(&path));
        } else if required {
            return Err(ConfigError::MissingFile(path));
        }
        Ok(figment.merge(env_provider()))
    }

    /// Loads, resolves secrets and validates.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::from_figment(Self::figment(file)?)
    }

    /// Defaults < `toml` < environment: for tests and the demo.
    pub fn from_toml_str(toml: &str) -> Result<Self, ConfigError> {
        Self::from_figment(
            Figment::from(Serialized::defaults(defaults()))
                .merge(Toml::string(toml))
                .merge(env_provider()),
        )
    }

    /// Extracts from a prepared figment, resolves secrets and validates.
    pub fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let mut config: Config = figment.extract().map_err(Box::new)?;
        // Reasons are looked up lowercased and trimmed; store keys that way.
        config.status.reasons = std::mem::take(&mut config.status.reasons)
            .into_iter()
            .map(|(reason, status)| (reason.trim().to_lowercase(), status))
            .collect();
        config.resolve_secrets()?;
        config.validate()?;
        Ok(config)
    }

    /// The Belfabriek PIN (empty when not configured; `check` reports that).
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

    fn resolve_secrets(&mut self) -> Result<(), ConfigError> {
        // Raw environment values win: figment would parse "01234" as a number.
        let raw = |name: &str| std::env::var(name).ok().map(Secret::new);
        if let Some(pin) = raw("PBX2MQTT_BELFABRIEK__ACCOUNT_PIN") {
            self.belfabriek.account_pin = Some(pin);
        }
        if let Some(key) = raw("PBX2MQTT_TRING__KEY") {
            self.tring.key = Some(key);
        }
        if let Some(password) = raw("PBX2MQTT_MQTT__PASSWORD") {
            self.mqtt.password = Some(password);
        }
        read_secret_file(
            "belfabriek.account_pin_file",
            &self.belfabriek.account_pin_file,
            &mut self.belfabriek.account_pin,
        )?;
        read_secret_file("tring.key_file", &self.tring.key_file, &mut self.tring.key)?;
        read_secret_file(
            "mqtt.password_file",
            &self.mqtt.password_file,
            &mut self.mqtt.password,
        )?;
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for (key, url) in [
            ("belfabriek.url", &self.belfabriek.url),
            ("tring.url", &self.tring.url),
        ] {
            let parsed = url::Url::parse(url)
                .map_err(|e| value_error(key, format!("{e}: expected an http(s) URL")))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(value_error(key, "expected an http:// or https:// URL"));
            }
        }
        let base = &self.mqtt.base_topic;
        if base.is_empty()
            || base.starts_with('/')
            || base.ends_with('/')
            || base.contains(['+', '#', '\0'])
        {
            return Err(value_error(
                "mqtt.base_topic",
                "must be a non-empty topic without wildcards or leading/trailing '/'",
            ));
        }
        if self.mqtt.client_id.is_empty() {
            return Err(value_error("mqtt.client_id", "must not be empty"));
        }
        if self.poll.interval.is_zero() {
            return Err(value_error("poll.interval", "must be greater than zero"));
        }
        if self.poll.concurrency == 0 {
            return Err(value_error("poll.concurrency", "must be at least 1"));
        }
        if self.poll.stale_after == 0 {
            return Err(value_error("poll.stale_after", "must be at least 1"));
        }
        if self.commands.concurrency == 0 {
            return Err(value_error("commands.concurrency", "must be at least 1"));
        }
        if self.report.timezone.parse::<chrono_tz::Tz>().is_err() {
            return Err(value_error(
                "report.timezone",
                format!(
                    "unknown time zone {:?}; use an IANA name like Europe/Amsterdam",
                    self.report.timezone
                ),
            ));
        }
        if !self.http.listen.is_empty() && self.http.listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(value_error(
                "http.listen",
                "expected an address like 127.0.0.1:8080 (or empty to disable)",
            ));
        }
        if let Some(queue) = self
            .commands
            .allowed_queues
            .iter()
            .find(|q| !is_plain_number(q))
        {
            return Err(value_error(
                "commands.allowed_queues",
                format!("{queue:?} is not a queue number"),
            ));
        }
        let mut seen = HashSet::new();
        for (index, agent) in self.agents.iter().enumerate() {
            if !seen.insert(agent.id.as_str()) {
                return Err(value_error(
                    &format!("agents[{index}].id"),
                    format!("duplicate agent id {:?}", agent.id.as_str()),
                ));
            }
            if agent.extension_id.trim().is_empty() {
                return Err(value_error(
                    &format!("agents[{index}].extension_id"),
                    "must not be empty",
                ));
            }
            if let Some(ext) = &agent.queue_extension {
                if !is_plain_number(ext) {
                    return Err(value_error(
                        &format!("agents[{index}].queue_extension"),
                        format!("{ext:?} is not an extension number"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// True for 1 to 20 ASCII digits: the only shape a queue or extension number
/// may have before it goes into a TRiNG URL.
pub fn is_plain_number(value: &str) -> bool {
    !value.is_empty() && value.len() <= 20 && value.bytes().all(|b| b.is_ascii_digit())
}

/// Secrets set in the environment are read raw by `resolve_secrets`, never
/// parsed by figment (which would turn `01234` into `1234`).
const SECRET_ENV_KEYS: [&str; 3] = ["belfabriek__account_pin", "tring__key", "mqtt__password"];

fn env_provider() -> Env {
    // Only `SECTION__KEY` variables: `PBX2MQTT_CONFIG` and the test variables
    // (`PBX2MQTT_TEST_*`) are not configuration keys.
    Env::prefixed("PBX2MQTT_")
        .filter(|key| key.as_str().contains("__") && !SECRET_ENV_KEYS.contains(&key.as_str()))
        .split("__")
}

fn read_secret_file(
    key: &str,
    path: &Option<PathBuf>,
    target: &mut Option<Secret>,
) -> Result<(), ConfigError> {
    let Some(path) = path else { return Ok(()) };
    let content = std::fs::read_to_string(path).map_err(|source| ConfigError::SecretFile {
        key: key.to_owned(),
        path: path.clone(),
        source,
    })?;
    *target = Some(Secret::new(content.trim_end_matches(['\r', '\n'])));
    Ok(())
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
    use super::*;

    fn load(toml: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(toml)
    }

    #[test]
    fn broker_urls() {
        let ok = |url: &str| {
            let parsed = BrokerUrl::parse(url).unwrap();
            assert_eq!(parsed.as_str(), url);
            (parsed.host().to_owned(), parsed.port())
        };
        assert_eq!(ok("mqtt://127.0.0.1:1883"), ("127.0.0.1".into(), 1883));
        assert_eq!(ok("tcp://broker:1884"), ("broker".into(), 1884));
        assert_eq!(ok("mqtt://broker"), ("broker".into(), 1883));
        assert_eq!(ok("broker:99"), ("broker".into(), 99));
        assert_eq!(ok("mqtt://[::1]:1883"), ("::1".into(), 1883));
        assert_eq!(
            BrokerUrl::localhost(),
            BrokerUrl::parse("mqtt://127.0.0.1:1883").unwrap()
        );
        for bad in [
            "http://x:1",
            "mqtt://:1883",
            "mqtt://h:port",
            "mqtt://h:70000",
        ] {
            assert!(BrokerUrl::parse(bad).is_err(), "{bad}");
        }
        let error = load("[mqtt]\nurl = \"http://broker\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("unsupported scheme"), "{error}");
        assert!(error.contains("mqtt.url"), "{error}");
    }

    #[test]
    fn defaults_are_valid_and_match_the_contract() {
        let config = load("").unwrap();
        assert_eq!(config.mqtt.base_topic, "pbx2mqtt");
        assert_eq!(config.belfabriek.account_param, "accountCode");
        assert_eq!(config.poll.interval, Duration::from_secs(2));
        assert_eq!(config.report.timezone, "Europe/Amsterdam");
        assert_eq!(config.status.reasons.get("pause"), Some(&Status::Paused));
        assert!(!config.commands.allow_clean);
    }

    #[test]
    fn durations_need_a_unit_and_errors_name_the_key() {
        let config = load("[poll]\ninterval = \"200ms\"").unwrap();
        assert_eq!(config.poll.interval, Duration::from_millis(200));
        let error = load("[poll]\ninterval = \"fast\"").unwrap_err().to_string();
        assert!(error.contains("poll.interval"), "{error}");
        let error = load("[poll]\ninterval = 2").unwrap_err().to_string();
        assert!(error.contains("poll.interval"), "{error}");
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let error = load("[poll]\nintervall = \"2s\"").unwrap_err().to_string();
        assert!(error.contains("intervall"), "{error}");
        let error = load("[mqqt]\nurl = \"x\"").unwrap_err().to_string();
        assert!(error.contains("mqqt"), "{error}");
    }

    #[test]
    fn values_are_checked_with_the_key_named() {
        for (toml, key) in [
            ("[report]\ntimezone = \"Mars/Olympus\"", "report.timezone"),
            ("[mqtt]\nbase_topic = \"a/#\"", "mqtt.base_topic"),
            ("[poll]\nconcurrency = 0", "poll.concurrency"),
            ("[commands]\nallowed_queues = [\"5&x\"]", "commands.allowed_queues"),
            ("[belfabriek]\nurl = \"ftp://x\"", "belfabriek.url"),
            (
                "[[agents]]\nid = \"a\"\nextension_id = 1\n[[agents]]\nid = \"a\"\nextension_id = 2",
                "agents[1].id",
            ),
        ] {
            let error = load(toml).unwrap_err().to_string();
            assert!(error.contains(key), "{toml}: {error}");
        }
        let error = load("[[agents]]\nid = \"a/b\"\nextension_id = 1")
            .unwrap_err()
            .to_string();
        assert!(error.contains("agents"), "{error}");
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
    }

    #[test]
    fn numeric_secrets_load_from_toml_and_are_never_in_errors() {
        let config = load("[belfabriek]\naccount_pin = 4321\n[tring]\nkey = 98765").unwrap();
        assert_eq!(config.account_pin().expose(), "4321");
        assert_eq!(config.tring_key().expose(), "98765");
        // A different error elsewhere in the file does not echo the secret.
        let error = load("[belfabriek]\naccount_pin = 4321\n[poll]\ninterval = 5")
            .unwrap_err()
            .to_string();
        assert!(!error.contains("4321"), "{error}");
    }

    #[test]
    fn the_commented_example_config_loads_and_equals_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/pbx2mqtt.example.toml");
        let example = Config::load(Some(&path)).unwrap();
        let defaults = load("").unwrap();
        assert_eq!(format!("{example:?}"), format!("{defaults:?}"));
        let missing = Config::load(Some(Path::new("no/such/file.toml"))).unwrap_err();
        assert!(
            missing.to_string().contains("no/such/file.toml"),
            "{missing}"
        );
    }

    #[test]
    fn secrets_come_from_files_and_never_print() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pin");
        std::fs::write(&path, "01234\n").unwrap();
        let config = load(&format!(
            "[belfabriek]\naccount_pin_file = {:?}\n[tring]\nkey = \"sekrit\"",
            path.display().to_string()
        ))
        .unwrap();
        assert_eq!(config.account_pin().expose(), "01234");
        assert_eq!(config.tring_key().expose(), "sekrit");
        let printed = format!("{config:?}");
        assert!(
            !printed.contains("01234") && !printed.contains("sekrit"),
            "{printed}"
        );
    }
}
