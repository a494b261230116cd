//! Loading the configuration: the figment layers (built-in defaults < TOML
//! file < `PBX2MQTT_SECTION__KEY`), secrets from the environment or files,
//! and every problem collected at once.
//!
//! serde stops at the first bad field, so extraction runs in rounds: each
//! problem is recorded with its key and where the value came from (the file,
//! an environment variable), the bad value is replaced by its default (or
//! dropped), and extraction runs again until it succeeds. Validation
//! (`validate`) then adds what parsed but is not acceptable. The user sees
//! every problem in one message.

use std::fmt;
use std::path::{Path, PathBuf};

use figment::error::Kind;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Value};
use figment::{Figment, Metadata};
use serde::de::{DeserializeOwned, Visitor};

use super::validate::validate;
use super::{
    defaults, AgentConfig, BelfabriekConfig, BridgeConfig, CommandsConfig, Config, DatabaseConfig,
    HomeAssistantConfig, HttpConfig, MqttConfig, PollConfig, ReportConfig, StatusConfig,
    StatusParams, TringConfig,
};
use crate::secret::Secret;

/// The default path of the configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "config/pbx2mqtt.toml";

/// Environment variable naming the configuration file.
pub const CONFIG_ENV: &str = "PBX2MQTT_CONFIG";

/// Environment variable choosing the log format (`text` or `json`).
pub const LOG_FORMAT_ENV: &str = "PBX2MQTT_LOG_FORMAT";

/// Every configuration variable starts with this.
const ENV_PREFIX: &str = "PBX2MQTT_";

/// The test suite's variables (`PBX2MQTT_TEST_MQTT_URL`, ...), not
/// configuration.
const TEST_ENV_PREFIX: &str = "PBX2MQTT_TEST_";

/// Secrets set in the environment are read raw by `resolve_secrets`, never
/// parsed by figment (which would turn `01234` into `1234`).
const SECRET_ENV_KEYS: [&str; 3] = ["belfabriek__account_pin", "tring__key", "mqtt__password"];

/// Extraction rounds before giving up; each round repairs at least one
/// value, so only a pathological file gets near this.
const MAX_ROUNDS: usize = 500;

/// Which configuration file was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigFile {
    /// Named by `--config` or `PBX2MQTT_CONFIG` (`by`), and read.
    Named {
        /// The file.
        path: PathBuf,
        /// `--config` or `PBX2MQTT_CONFIG`.
        by: &'static str,
    },
    /// The default path, found and read.
    Found(PathBuf),
    /// No file: the default path does not exist, so only the built-in
    /// defaults and the environment apply.
    NotFound(PathBuf),
    /// Not from a file (a string: the demo and tests).
    Inline,
}

impl ConfigFile {
    /// The file that was read, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            ConfigFile::Named { path, .. } | ConfigFile::Found(path) => Some(path),
            ConfigFile::NotFound(_) | ConfigFile::Inline => None,
        }
    }

    /// "no configuration file found: looked for ... (name one with ...)",
    /// when the default file is missing.
    pub fn not_found_note(&self) -> Option<String> {
        let ConfigFile::NotFound(path) = self else {
            return None;
        };
        let directory = std::env::current_dir()
            .map(|dir| format!(" in {}", dir.display()))
            .unwrap_or_default();
        Some(format!(
            "no configuration file found: looked for {}{directory} (name one with --config FILE \
             or {CONFIG_ENV}=FILE)",
            path.display()
        ))
    }
}

/// What the configuration is for: which settings must be present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `run`, `check`, `demo`: polls Belfabriek and runs queue commands, so
    /// the PIN, the TRiNG key and the tenant are required.
    Service,
    /// `queue`, `agent`: TRiNG only (key and tenant required).
    QueueCommands,
    /// `report`, `audit`, `migrate`: the database and report settings.
    History,
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where the value came from: the file, or `environment variable
    /// PBX2MQTT_...`; `None` for a built-in default or a missing value.
    source: Option<String>,
    /// The key as figment sees it: `["agents", "1", "id"]`; empty for a
    /// problem with the whole file.
    path: Vec<String>,
    /// What is wrong.
    what: What,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum What {
    /// The key does not exist; these do.
    Unknown(Vec<&'static str>),
    /// The value is not acceptable: what is wrong and what is allowed.
    Invalid(String),
}

impl Problem {
    /// A problem with the value at `key` (dotted: `poll.interval`,
    /// `agents.1.id`): what is wrong and what is allowed.
    pub(super) fn invalid(key: &str, message: impl Into<String>) -> Self {
        Self {
            source: None,
            path: key.split('.').map(str::to_owned).collect(),
            what: What::Invalid(message.into()),
        }
    }

    /// The key as a user writes it: `poll.interval`, `agents[1].id`.
    pub fn key(&self) -> String {
        display_key(&self.path)
    }

    /// Where the value came from, when it was not a built-in default.
    pub fn source(&self) -> Option<&str> {
        self.source.as_deref()
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(source) = &self.source {
            write!(f, "{source}: ")?;
        }
        match &self.what {
            What::Unknown(allowed) => write!(
                f,
                "unknown key {} (allowed: {})",
                self.key(),
                allowed.join(", ")
            ),
            What::Invalid(message) if self.path.is_empty() => f.write_str(message),
            What::Invalid(message) => write!(f, "{}: {message}", self.key()),
        }
    }
}

/// `["agents", "1", "id"]` as `agents[1].id`; odd keys (reasons) quoted.
fn display_key(path: &[String]) -> String {
    let mut out = String::new();
    for segment in path {
        let plain = !segment.is_empty()
            && segment
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if segment.bytes().all(|b| b.is_ascii_digit()) && !out.is_empty() {
            out.push_str(&format!("[{segment}]"));
            continue;
        }
        if !out.is_empty() {
            out.push('.');
        }
        if plain {
            out.push_str(segment);
        } else {
            out.push_str(&format!("{segment:?}"));
        }
    }
    out
}

/// Why the configuration could not be loaded. Always a usage error: the
/// command line exits 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named by `--config` or `PBX2MQTT_CONFIG` does not exist.
    #[error("configuration file {} (named by {by}) does not exist", path.display())]
    MissingFile {
        /// The file.
        path: PathBuf,
        /// `--config` or `PBX2MQTT_CONFIG`.
        by: &'static str,
    },
    /// One or more problems, every one of them.
    #[error("{}", render_problems(file, problems, warnings))]
    Invalid {
        /// Which file was read (or looked for).
        file: ConfigFile,
        /// Every problem found.
        problems: Vec<Problem>,
        /// Warnings found along the way (a misspelt variable explains many a
        /// missing value).
        warnings: Vec<String>,
    },
    /// The problems were printed already (by `check`).
    #[error("invalid configuration: {count} {} (listed above)", plural(*count, "problem"))]
    Reported {
        /// How many.
        count: usize,
    },
}

/// `1 problem`, `2 problems`.
pub(crate) fn plural(count: usize, noun: &str) -> String {
    if count == 1 {
        noun.to_owned()
    } else {
        format!("{noun}s")
    }
}

fn render_problems(file: &ConfigFile, problems: &[Problem], warnings: &[String]) -> String {
    let mut out = match file.not_found_note() {
        Some(note) => format!(
            "{note}; the built-in defaults and the environment leave {} {}:",
            problems.len(),
            plural(problems.len(), "problem")
        ),
        None if problems.len() == 1 => format!("invalid configuration: {}", problems[0]),
        None => format!("invalid configuration ({} problems):", problems.len()),
    };
    if file.not_found_note().is_some() || problems.len() > 1 {
        for problem in problems {
            out.push_str(&format!("\n  {problem}"));
        }
    }
    for warning in warnings {
        out.push_str(&format!("\nwarning: {warning}"));
    }
    out
}

/// A configuration with everything found wrong with it: what `check`
/// reports. With problems, `config` is what remains when every bad value is
/// replaced by its default (or dropped): usable for probing, not for running.
#[derive(Debug)]
pub struct Checked {
    /// The configuration, repaired where it had problems.
    pub config: Config,
    /// Which file was read.
    pub file: ConfigFile,
    /// Everything that must be fixed; empty when the configuration is good.
    pub problems: Vec<Problem>,
    /// Things that work but are probably not meant (no agents, a plain
    /// http:// PIN, a misspelt variable): `run` logs them, `check` prints them.
    pub warnings: Vec<String>,
}

/// A configuration without problems.
#[derive(Debug)]
pub struct Loaded {
    /// The configuration.
    pub config: Config,
    /// Which file was read.
    pub file: ConfigFile,
    /// See [`Checked::warnings`].
    pub warnings: Vec<String>,
}

impl Checked {
    /// The configuration if it has no problems, else every problem.
    pub fn into_loaded(self) -> Result<Loaded, ConfigError> {
        if self.problems.is_empty() {
            Ok(Loaded {
                config: self.config,
                file: self.file,
                warnings: self.warnings,
            })
        } else {
            // The no-file note is the message's first line already.
            let warnings = self
                .warnings
                .into_iter()
                .filter(|warning| !warning.starts_with("no configuration file found"))
                .collect();
            Err(ConfigError::Invalid {
                file: self.file,
                problems: self.problems,
                warnings,
            })
        }
    }
}

impl Config {
    /// The figment with defaults, the file (if any) and the environment.
    ///
    /// `file`: `Some(path)` must exist; `None` uses `PBX2MQTT_CONFIG` (must
    /// exist) or [`DEFAULT_CONFIG_PATH`] (optional).
    pub fn figment(file: Option<&Path>) -> Result<Figment, ConfigError> {
        Ok(layers(file)?.0)
    }

    /// Loads and checks for `purpose`, collecting every problem; `Err` only
    /// when a named file does not exist or the file cannot be read as TOML.
    /// `run` and `check` both call this.
    pub fn check(file: Option<&Path>, purpose: Purpose) -> Result<Checked, ConfigError> {
        let (figment, file) = layers(file)?;
        collect(&figment, file, purpose)
    }

    /// Loads for `purpose`: the configuration and its warnings, or every
    /// problem in one error.
    pub fn load_for(file: Option<&Path>, purpose: Purpose) -> Result<Loaded, ConfigError> {
        Self::check(file, purpose)?.into_loaded()
    }

    /// Loads, resolves secrets and validates what every command needs.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Ok(Self::load_for(file, Purpose::History)?.config)
    }

    /// Defaults < `toml` < environment: for tests and the demo.
    pub fn from_toml_str(toml: &str) -> Result<Self, ConfigError> {
        Self::from_figment(
            defaults_figment()
                .merge(Toml::string(toml))
                .merge(env_provider()),
        )
    }

    /// Extracts from a prepared figment, resolves secrets and validates.
    pub fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        Ok(collect(&figment, ConfigFile::Inline, Purpose::History)?
            .into_loaded()?
            .config)
    }

    /// Validates a configuration already loaded (or built in code, as the
    /// demo and the tests do) for `purpose`, as loading for it would: every
    /// problem in one error, else the warnings.
    pub fn validate_for(&self, purpose: Purpose) -> Result<Vec<String>, ConfigError> {
        let mut warnings = Vec::new();
        let agent_index: Vec<usize> = (0..self.agents.len()).collect();
        let problems = validate(self, purpose, &agent_index, &mut warnings);
        if problems.is_empty() {
            Ok(warnings)
        } else {
            Err(ConfigError::Invalid {
                file: ConfigFile::Inline,
                problems,
                warnings,
            })
        }
    }
}

fn defaults_figment() -> Figment {
    Figment::from(Serialized::defaults(defaults()))
}

/// The layers and which file they read.
fn layers(file: Option<&Path>) -> Result<(Figment, ConfigFile), ConfigError> {
    let from_env = std::env::var_os(CONFIG_ENV)
        .filter(|value| !value.is_empty())
        .map(PathBuf::from);
    let file = match (file, from_env) {
        (Some(path), _) => ConfigFile::Named {
            path: path.to_path_buf(),
            by: "--config",
        },
        (None, Some(path)) => ConfigFile::Named {
            path,
            by: CONFIG_ENV,
        },
        (None, None) => {
            let path = PathBuf::from(DEFAULT_CONFIG_PATH);
            if path.exists() {
                ConfigFile::Found(path)
            } else {
                ConfigFile::NotFound(path)
            }
        }
    };
    let mut figment = defaults_figment();
    match &file {
        ConfigFile::Named { path, by } if !path.exists() => {
            return Err(ConfigError::MissingFile {
                path: path.clone(),
                by,
            })
        }
        ConfigFile::Named { path, .. } | ConfigFile::Found(path) => {
            figment = figment.merge(Toml::file_exact(path));
        }
        ConfigFile::NotFound(_) | ConfigFile::Inline => {}
    }
    Ok((figment.merge(env_provider()), file))
}

fn env_provider() -> Env {
    // Only `SECTION__KEY` variables: `PBX2MQTT_CONFIG` and the test variables
    // (`PBX2MQTT_TEST_*`) are not configuration keys; others without `__`
    // are reported by `env_warnings`.
    Env::prefixed(ENV_PREFIX)
        .filter(|key| {
            let key = key.as_str();
            key.contains("__")
                && !SECRET_ENV_KEYS
                    .iter()
                    .any(|secret| key.eq_ignore_ascii_case(secret))
        })
        .split("__")
}

/// Extracts, repairs, resolves secrets and validates: every problem.
fn collect(figment: &Figment, file: ConfigFile, purpose: Purpose) -> Result<Checked, ConfigError> {
    let sources = Sources {
        figment,
        file: &file,
    };
    // The merged tree itself (`find_value("")` is the root): extracting a
    // `Dict` would copy it once more, and with 5,000 agents each copy of
    // figment's tree is about 4 MB, the start's peak memory.
    let mut root: Dict = match figment.find_value("").map(Value::into_dict) {
        Ok(Some(root)) => root,
        // Unreachable: figment's merged root is always a dictionary.
        Ok(None) => Dict::new(),
        Err(errors) => {
            // The file is not TOML (or cannot be read): nothing to go on.
            let problems = errors
                .into_iter()
                .map(|error| Problem {
                    source: error
                        .metadata
                        .as_ref()
                        .and_then(|metadata| sources.describe(metadata, &error.path))
                        .or_else(|| file.path().map(|path| path.display().to_string())),
                    path: Vec::new(),
                    what: What::Invalid(format!("cannot be read: {}", error.kind)),
                })
                .collect();
            return Err(ConfigError::Invalid {
                file,
                problems,
                warnings: Vec::new(),
            });
        }
    };
    // Defaults serialize to a tree; a failure would be a bug in `defaults`.
    let default_tree: Dict = defaults_figment().extract().unwrap_or_default();
    let mut found = Vec::new();

    // Agents one by one, so one bad agent does not hide the others.
    let raw_agents = root.insert("agents".into(), Value::from(Vec::<Value>::new()));
    let config = extract_repairing::<Config>(root, &default_tree, &[], &mut found)
        .or_else(|| defaults_figment().extract::<Config>().ok());
    let (agent_index, agents): (Vec<usize>, Vec<AgentConfig>) =
        extract_agents(raw_agents, &mut found).into_iter().unzip();

    let mut problems: Vec<Problem> = found
        .into_iter()
        .map(|(path, what)| Problem {
            source: sources.of_nearest(&path),
            path,
            what,
        })
        .collect();
    let Some(mut config) = config else {
        // Unreachable: the defaults alone always extract.
        return Err(ConfigError::Invalid {
            file,
            problems,
            warnings: Vec::new(),
        });
    };
    config.agents = agents;
    // Reasons are looked up lowercased and trimmed; store keys that way.
    config.status.reasons = std::mem::take(&mut config.status.reasons)
        .into_iter()
        .map(|(reason, status)| (reason.trim().to_lowercase(), status))
        .collect();
    problems.extend(resolve_secrets(&mut config));
    if config.bridge.id.is_empty() {
        config.bridge.id = default_bridge_id();
    }
    if config.mqtt.client_id.is_empty() {
        config.mqtt.client_id = format!("pbx2mqtt-{}", config.bridge.id);
    }

    let mut warnings = Vec::new();
    for mut problem in validate(&config, purpose, &agent_index, &mut warnings) {
        // A value already reported (and replaced by its default) is not
        // reported again.
        if problems.iter().any(|known| known.path == problem.path) {
            continue;
        }
        problem.source = sources.of(&problem.path);
        problems.push(problem);
    }
    warnings.extend(env_warnings());
    if purpose == Purpose::Service {
        if let Some(note) = file.not_found_note() {
            warnings.insert(
                0,
                format!("{note}; running on the built-in defaults and the environment"),
            );
        }
    }
    Ok(Checked {
        config,
        file,
        problems,
        warnings,
    })
}

/// Says where a value came from.
struct Sources<'a> {
    /// The layered figment (its metadata knows each value's provider).
    figment: &'a Figment,
    /// The file that was read.
    file: &'a ConfigFile,
}

impl Sources<'_> {
    /// Where the value at `path` came from; `None` for built-in defaults
    /// and missing values.
    fn of(&self, path: &[String]) -> Option<String> {
        // Secrets from the environment are read raw, not through figment.
        let dotted = path.join(".");
        if SECRET_ENV_KEYS.contains(&dotted.replace('.', "__").as_str()) {
            let name = format!(
                "{ENV_PREFIX}{}",
                dotted.replace('.', "__").to_ascii_uppercase()
            );
            if std::env::var_os(&name).is_some() {
                return Some(format!("environment variable {name}"));
            }
        }
        let metadata = self.figment.find_metadata(&dotted)?;
        self.describe(metadata, path)
    }

    /// Where the value at `path`, or its closest parent, came from: for
    /// values inside an array (agents) and missing fields of a table.
    fn of_nearest(&self, path: &[String]) -> Option<String> {
        (1..=path.len()).rev().find_map(|len| {
            let metadata = self.figment.find_metadata(&path[..len].join("."))?;
            self.describe(metadata, path)
        })
    }

    fn describe(&self, metadata: &Metadata, path: &[String]) -> Option<String> {
        let from_file = metadata
            .source
            .as_ref()
            .and_then(|source| source.file_path())
            .is_some();
        if from_file {
            // As the user wrote it, not figment's absolute path.
            return self.file.path().map(|path| path.display().to_string());
        }
        if metadata.name.contains("environment") {
            let name: Vec<String> = path.iter().map(|s| s.to_ascii_uppercase()).collect();
            return Some(format!(
                "environment variable {ENV_PREFIX}{}",
                name.join("__")
            ));
        }
        None
    }
}

/// A problem found while extracting: the path and what is wrong.
type Found = (Vec<String>, What);

/// Extracts `T` from `tree`, recording every problem under `prefix` and
/// replacing the bad value by its default (or removing it) until extraction
/// succeeds. `None` when a required value is missing or bad.
fn extract_repairing<T: DeserializeOwned>(
    mut tree: Dict,
    default_tree: &Dict,
    prefix: &[String],
    found: &mut Vec<Found>,
) -> Option<T> {
    let mut repaired: Vec<Vec<String>> = Vec::new();
    for _ in 0..MAX_ROUNDS {
        let errors = match Figment::from(Serialized::defaults(&tree)).extract::<T>() {
            Ok(value) => return Some(value),
            Err(errors) => errors,
        };
        let mut progress = false;
        for error in errors {
            let mut path = error.path.clone();
            let what = match &error.kind {
                Kind::UnknownField(_, allowed) => What::Unknown(allowed.to_vec()),
                Kind::MissingField(field) => {
                    path.push(field.to_string());
                    What::Invalid("is required".into())
                }
                kind => What::Invalid(describe(kind)),
            };
            let full: Vec<String> = prefix.iter().cloned().chain(path.clone()).collect();
            // A value removed in an earlier round is not missing as well.
            if !repaired.contains(&full) {
                found.push((full.clone(), what));
            }
            if repair(&mut tree, &path, default_tree, &error.kind) {
                repaired.push(full);
                progress = true;
            }
        }
        if !progress {
            return None;
        }
    }
    None
}

/// Replaces the value at `path` (or its closest parent in a table) by the
/// default, or removes it when there is none. False when nothing changed.
fn repair(tree: &mut Dict, path: &[String], default_tree: &Dict, kind: &Kind) -> bool {
    if let Kind::MissingField(field) = kind {
        let mut full = path.to_vec();
        full.push(field.to_string());
        return match lookup(default_tree, &full) {
            Some(default) => set(tree, &full, default.clone()),
            None => false,
        };
    }
    for len in (1..=path.len()).rev() {
        let prefix = &path[..len];
        let unknown = matches!(kind, Kind::UnknownField(..));
        let default = if unknown {
            None
        } else {
            lookup(default_tree, prefix).cloned()
        };
        let changed = match default {
            Some(default) => set(tree, prefix, default),
            None => remove(tree, prefix),
        };
        if changed {
            return true;
        }
    }
    false
}

fn lookup<'a>(tree: &'a Dict, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let mut value = tree.get(first)?;
    for segment in rest {
        value = match value {
            Value::Dict(_, dict) => dict.get(segment)?,
            _ => return None,
        };
    }
    Some(value)
}

/// The table holding the last segment of `path`.
fn parent_mut<'a>(tree: &'a mut Dict, path: &[String]) -> Option<&'a mut Dict> {
    let (_, parents) = path.split_last()?;
    let mut dict = tree;
    for segment in parents {
        dict = match dict.get_mut(segment)? {
            Value::Dict(_, inner) => inner,
            _ => return None,
        };
    }
    Some(dict)
}

fn set(tree: &mut Dict, path: &[String], value: Value) -> bool {
    let Some(last) = path.last() else {
        return false;
    };
    match parent_mut(tree, path) {
        Some(dict) if dict.get(last) != Some(&value) => {
            dict.insert(last.clone(), value);
            true
        }
        _ => false,
    }
}

fn remove(tree: &mut Dict, path: &[String]) -> bool {
    let Some(last) = path.last() else {
        return false;
    };
    parent_mut(tree, path).is_some_and(|dict| dict.remove(last).is_some())
}

/// Each `[[agents]]` table on its own, with its position in the file; a bad
/// one is reported and left out.
fn extract_agents(raw: Option<Value>, found: &mut Vec<Found>) -> Vec<(usize, AgentConfig)> {
    let items = match raw {
        None => return Vec::new(),
        Some(Value::Array(_, items)) => items,
        Some(_) => {
            found.push((
                vec!["agents".into()],
                What::Invalid("expected [[agents]] tables".into()),
            ));
            return Vec::new();
        }
    };
    let mut agents = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        let prefix = vec!["agents".to_owned(), index.to_string()];
        match item {
            Value::Dict(_, table) => {
                if let Some(agent) =
                    extract_repairing::<AgentConfig>(table, &Dict::new(), &prefix, found)
                {
                    agents.push((index, agent));
                }
            }
            _ => found.push((prefix, What::Invalid("expected an [[agents]] table".into()))),
        }
    }
    agents
}

/// What an extraction error says, in plain words (no backticks, no
/// internal names).
fn describe(kind: &Kind) -> String {
    let expected = |what: &str| match what {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number".to_owned(),
        "i8" | "i16" | "i32" | "i64" | "isize" => "a number".to_owned(),
        what if what.starts_with("struct ") => "a table".to_owned(),
        what => what.to_owned(),
    };
    match kind {
        Kind::Message(message) => message.clone(),
        Kind::InvalidType(actual, what) | Kind::InvalidValue(actual, what) => {
            format!("expected {}, found {actual}", expected(what))
        }
        Kind::InvalidLength(length, what) => {
            format!(
                "expected {}, found {}",
                expected(what),
                crate::text::count(*length, "value")
            )
        }
        Kind::UnknownVariant(value, allowed) => {
            format!("{value:?} is not allowed (allowed: {})", allowed.join(", "))
        }
        Kind::UnknownField(field, allowed) => {
            format!("unknown key {field} (allowed: {})", allowed.join(", "))
        }
        Kind::MissingField(_) => "is required".into(),
        Kind::DuplicateField(field) => format!("{field} is given twice"),
        Kind::ISizeOutOfRange(value) => format!("{value} is out of range"),
        Kind::USizeOutOfRange(value) => format!("{value} is out of range"),
        Kind::Unsupported(actual) => format!("{actual} is not supported here"),
        Kind::UnsupportedKey(actual, what) => {
            format!("a key of {actual} is not supported (expected {what})")
        }
    }
}

/// Secrets from the raw environment and from `*_file` paths.
fn resolve_secrets(config: &mut Config) -> Vec<Problem> {
    // Raw environment values win: figment would parse "01234" as a number.
    let raw = |name: &str| std::env::var(name).ok().map(Secret::new);
    if let Some(pin) = raw("PBX2MQTT_BELFABRIEK__ACCOUNT_PIN") {
        config.belfabriek.account_pin = Some(pin);
    }
    if let Some(key) = raw("PBX2MQTT_TRING__KEY") {
        config.tring.key = Some(key);
    }
    if let Some(password) = raw("PBX2MQTT_MQTT__PASSWORD") {
        config.mqtt.password = Some(password);
    }
    [
        read_secret_file(
            "belfabriek.account_pin_file",
            &config.belfabriek.account_pin_file,
            &mut config.belfabriek.account_pin,
        ),
        read_secret_file(
            "tring.key_file",
            &config.tring.key_file,
            &mut config.tring.key,
        ),
        read_secret_file(
            "mqtt.password_file",
            &config.mqtt.password_file,
            &mut config.mqtt.password,
        ),
    ]
    .into_iter()
    .flatten()
    .collect()
}

fn read_secret_file(
    key: &str,
    path: &Option<PathBuf>,
    target: &mut Option<Secret>,
) -> Option<Problem> {
    let path = path.as_ref()?;
    match std::fs::read_to_string(path) {
        Ok(content) => {
            *target = Some(Secret::new(content.trim_end_matches(['\r', '\n'])));
            None
        }
        Err(error) => Some(Problem::invalid(
            key,
            format!(
                "cannot read {}: {error} (allowed: a readable file holding the secret)",
                path.display()
            ),
        )),
    }
}

/// The bridge id when `bridge.id` is not set: the host name with every
/// character outside `[A-Za-z0-9_-]` replaced by `-`, else `pbx2mqtt`.
pub(super) fn default_bridge_id() -> String {
    whoami::fallible::hostname()
        .map(|host| sanitize_id(&host))
        .ok()
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| "pbx2mqtt".to_owned())
}

/// `[A-Za-z0-9_-]` only, at most 64 characters, no `-` at either end.
pub(super) fn sanitize_id(raw: &str) -> String {
    let id: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    id.trim_matches('-').to_owned()
}

/// Warnings for `PBX2MQTT_*` variables that are not configuration: no `__`
/// between section and key, so figment would ignore them without a word.
fn env_warnings() -> Vec<String> {
    let mut names: Vec<String> = std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|name| {
            name.starts_with(ENV_PREFIX)
                && !name.contains("__")
                && name != CONFIG_ENV
                && name != LOG_FORMAT_ENV
                && !name.starts_with(TEST_ENV_PREFIX)
        })
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let hint = env_suggestion(&name)
                .map(|suggestion| format!("; did you mean {suggestion}?"))
                .unwrap_or_default();
            format!(
                "environment variable {name} is ignored: configuration variables are \
                 {ENV_PREFIX}<SECTION>__<KEY>, with two underscores between section and key{hint}"
            )
        })
        .collect()
}

/// `PBX2MQTT_POLL_INTERVALL` → `PBX2MQTT_POLL__INTERVAL`: the section it
/// starts with, and that section's closest key.
pub(super) fn env_suggestion(name: &str) -> Option<String> {
    let rest = name.strip_prefix(ENV_PREFIX)?.to_ascii_lowercase();
    let (section, key) = section_names()
        .iter()
        .filter(|section| **section != "agents")
        .find_map(|section| {
            let key = rest.strip_prefix(section)?.strip_prefix('_')?;
            Some((*section, key))
        })?;
    let fields = section_fields(section);
    let closest = fields
        .iter()
        .map(|field| (edit_distance(field, key), *field))
        .min()
        .filter(|(distance, field)| *distance <= 2.max(field.len() / 3))
        .map(|(_, field)| field)
        .unwrap_or(key);
    Some(format!(
        "{ENV_PREFIX}{}__{}",
        section.to_ascii_uppercase(),
        closest.to_ascii_uppercase()
    ))
}

/// The sections (top-level keys) of the configuration.
fn section_names() -> &'static [&'static str] {
    field_names::<Config>()
}

/// The keys of one section.
fn section_fields(section: &str) -> &'static [&'static str] {
    match section {
        "bridge" => field_names::<BridgeConfig>(),
        "mqtt" => field_names::<MqttConfig>(),
        "homeassistant" => field_names::<HomeAssistantConfig>(),
        "belfabriek" => field_names::<BelfabriekConfig>(),
        "tring" => field_names::<TringConfig>(),
        "poll" => field_names::<PollConfig>(),
        "database" => field_names::<DatabaseConfig>(),
        "http" => field_names::<HttpConfig>(),
        "report" => field_names::<ReportConfig>(),
        "commands" => field_names::<CommandsConfig>(),
        "status" => field_names::<StatusConfig>(),
        "status_params" => field_names::<StatusParams>(),
        _ => &[],
    }
}

/// The field names a derived `Deserialize` struct accepts, as serde passes
/// them to `deserialize_struct` (the same list its unknown-field error
/// names).
fn field_names<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Names<'a>(&'a mut &'static [&'static str]);

    impl<'de> serde::Deserializer<'de> for Names<'_> {
        type Error = serde::de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(serde::de::Error::custom("field names only"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(serde::de::Error::custom("field names only"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    // Always an error: `Names` only records the field list.
    let _ = T::deserialize(Names(&mut fields));
    fields
}

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let current = row[j + 1];
            row[j + 1] = if ca == *cb {
                previous
            } else {
                1 + previous.min(row[j]).min(row[j + 1])
            };
            previous = current;
        }
    }
    row[b.len()]
}

/// Exposed for tests: the keys of a section.
#[cfg(test)]
pub(super) fn keys_of(section: &str) -> &'static [&'static str] {
    section_fields(section)
}

/// Exposed for tests: the sections.
#[cfg(test)]
pub(super) fn sections() -> &'static [&'static str] {
    section_names()
}
