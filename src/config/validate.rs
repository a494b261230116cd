//! What a parsed configuration may hold: bounds for every number and
//! duration, the shape of URLs, topics and ids, the secrets a command needs,
//! and warnings for what works but is probably not meant. Pure: it reads the
//! typed configuration (and checks that configured files can be read) and
//! returns problems; `load` says where each value came from.

use std::collections::HashSet;
use std::fmt::Display;
use std::path::Path;
use std::time::Duration;

use super::load::{Problem, Purpose};
use super::{is_plain_number, Config};

/// The shortest Belfabriek PIN accepted: a real PIN is never shorter, and a
/// shorter one would make redaction meaningless.
pub const MIN_ACCOUNT_PIN_CHARS: usize = 4;

/// The shortest TRiNG key accepted (the simulator's is `simkey`).
pub const MIN_TRING_KEY_CHARS: usize = 6;

const MILLISECOND: Duration = Duration::from_millis(1);
const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(60 * 60);
const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// Every problem of `config` for `purpose`; warnings are added to
/// `warnings`. `agent_index[i]` is the position of `config.agents[i]` in
/// the file (agents with problems of their own were left out).
pub(super) fn validate(
    config: &Config,
    purpose: Purpose,
    agent_index: &[usize],
    warnings: &mut Vec<String>,
) -> Vec<Problem> {
    let mut rules = Rules::default();
    bridge(config, &mut rules);
    mqtt(config, &mut rules);
    homeassistant(config, &mut rules);
    belfabriek(config, purpose, &mut rules, warnings);
    tring(config, purpose, &mut rules);
    poll(config, &mut rules);
    database(config, &mut rules);
    http(config, &mut rules);
    report(config, &mut rules);
    commands(config, &mut rules);
    agents(config, purpose, agent_index, &mut rules, warnings);
    rules.problems
}

/// Collects problems.
#[derive(Default)]
struct Rules {
    /// Found so far.
    problems: Vec<Problem>,
}

impl Rules {
    fn fail(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(Problem::invalid(key, message));
    }

    /// `min <= value <= max`.
    fn duration(&mut self, key: &str, value: Duration, min: Duration, max: Duration) {
        if value < min || value > max {
            let what = if value < min { "too short" } else { "too long" };
            self.fail(
                key,
                format!(
                    "\"{}\" is {what} (allowed: {} to {})",
                    show(value),
                    show(min),
                    show(max)
                ),
            );
        }
    }

    /// `min <= value <= max`.
    fn number<T: PartialOrd + Display>(&mut self, key: &str, value: T, min: T, max: T) {
        if value < min || value > max {
            let what = if value < min {
                "too small"
            } else {
                "too large"
            };
            self.fail(key, format!("{value} is {what} (allowed: {min} to {max})"));
        }
    }

    /// A topic (or prefix) without wildcards.
    fn topic(&mut self, key: &str, value: &str) {
        if value.is_empty()
            || value.starts_with('/')
            || value.ends_with('/')
            || value.contains(['+', '#', '\0'])
        {
            self.fail(
                key,
                format!(
                    "{value:?} is not a usable topic (allowed: a non-empty topic without \
                     wildcards + and # and without a leading or trailing /)"
                ),
            );
        }
    }

    /// An `http://` or `https://` URL.
    fn http_url(&mut self, key: &str, value: &str) -> Option<url::Url> {
        match url::Url::parse(value) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => Some(url),
            Ok(_) => {
                self.fail(
                    key,
                    format!("{value:?} is not an http URL (allowed: http:// or https:// URLs)"),
                );
                None
            }
            Err(error) => {
                self.fail(
                    key,
                    format!("{value:?} is not a URL ({error}; allowed: http:// or https:// URLs)"),
                );
                None
            }
        }
    }

    /// A file that exists and can be read.
    fn readable_file(&mut self, key: &str, path: &Path) {
        let result = std::fs::metadata(path).and_then(|metadata| {
            if metadata.is_file() {
                std::fs::File::open(path).map(drop)
            } else {
                Err(std::io::Error::other("not a file"))
            }
        });
        if let Err(error) = result {
            self.fail(
                key,
                format!(
                    "cannot read {}: {error} (allowed: a readable PEM file)",
                    path.display()
                ),
            );
        }
    }
}

/// `2s`, `100ms`, `5m`, `90d`: the largest unit that divides evenly.
fn show(value: Duration) -> String {
    if value.is_zero() {
        return "0s".into();
    }
    for (unit, suffix) in [
        (DAY, "d"),
        (HOUR, "h"),
        (MINUTE, "m"),
        (SECOND, "s"),
        (MILLISECOND, "ms"),
    ] {
        if value.as_nanos().is_multiple_of(unit.as_nanos()) {
            return format!("{}{suffix}", value.as_nanos() / unit.as_nanos());
        }
    }
    humantime::format_duration(value).to_string()
}

/// Letters, digits, `_` and `-`, 1 to 64 of them.
fn is_plain_id(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 64
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn bridge(config: &Config, rules: &mut Rules) {
    let bridge = &config.bridge;
    if !is_plain_id(&bridge.id) {
        rules.fail(
            "bridge.id",
            format!(
                "{:?} is not a bridge id (allowed: 1 to 64 letters, digits, '_' or '-')",
                bridge.id
            ),
        );
    }
    rules.duration(
        "bridge.shutdown_timeout",
        bridge.shutdown_timeout,
        SECOND,
        5 * MINUTE,
    );
    rules.duration(
        "bridge.takeover_after",
        bridge.takeover_after,
        2 * SECOND,
        5 * MINUTE,
    );
}

fn mqtt(config: &Config, rules: &mut Rules) {
    let mqtt = &config.mqtt;
    rules.topic("mqtt.base_topic", &mqtt.base_topic);
    if mqtt.client_id.is_empty() || mqtt.client_id.len() > 256 || mqtt.client_id.contains('\0') {
        rules.fail(
            "mqtt.client_id",
            "not a usable client id (allowed: 1 to 256 characters; unset gives pbx2mqtt-<bridge.id>)",
        );
    }
    for (key, path) in [
        ("mqtt.ca_file", &mqtt.ca_file),
        ("mqtt.client_cert_file", &mqtt.client_cert_file),
        ("mqtt.client_key_file", &mqtt.client_key_file),
    ] {
        let Some(path) = path else { continue };
        if mqtt.url.tls() {
            rules.readable_file(key, path);
        } else {
            rules.fail(
                key,
                format!(
                    "is only used with TLS, and mqtt.url {:?} is not (allowed: set mqtt.url to \
                     mqtts://host:port, or remove {key})",
                    mqtt.url.as_str()
                ),
            );
        }
    }
    match (&mqtt.client_cert_file, &mqtt.client_key_file) {
        (Some(_), None) => rules.fail(
            "mqtt.client_key_file",
            "is not set, but mqtt.client_cert_file is (allowed: both or neither)",
        ),
        (None, Some(_)) => rules.fail(
            "mqtt.client_cert_file",
            "is not set, but mqtt.client_key_file is (allowed: both or neither)",
        ),
        _ => {}
    }
    rules.number(
        "mqtt.max_packet_size",
        mqtt.max_packet_size,
        1024,
        268_435_455,
    );
    rules.duration(
        "mqtt.session_expiry",
        mqtt.session_expiry,
        Duration::ZERO,
        365 * DAY,
    );
    rules.duration("mqtt.keep_alive", mqtt.keep_alive, 5 * SECOND, HOUR);
}

fn homeassistant(config: &Config, rules: &mut Rules) {
    rules.topic(
        "homeassistant.discovery_prefix",
        &config.homeassistant.discovery_prefix,
    );
    rules.topic(
        "homeassistant.status_topic",
        &config.homeassistant.status_topic,
    );
}

fn belfabriek(config: &Config, purpose: Purpose, rules: &mut Rules, warnings: &mut Vec<String>) {
    let belfabriek = &config.belfabriek;
    let url = rules.http_url("belfabriek.url", &belfabriek.url);
    rules.duration(
        "belfabriek.timeout",
        belfabriek.timeout,
        100 * MILLISECOND,
        5 * MINUTE,
    );
    for (key, value) in [
        ("belfabriek.account_param", &belfabriek.account_param),
        ("belfabriek.extension_param", &belfabriek.extension_param),
        (
            "belfabriek.status_params.sup_id",
            &belfabriek.status_params.sup_id,
        ),
        (
            "belfabriek.status_params.man_id",
            &belfabriek.status_params.man_id,
        ),
        (
            "belfabriek.status_params.cust_id",
            &belfabriek.status_params.cust_id,
        ),
        (
            "belfabriek.status_params.ext_id",
            &belfabriek.status_params.ext_id,
        ),
    ] {
        if value.trim().is_empty() {
            rules.fail(key, "is empty (allowed: an XML-RPC member name)");
        }
    }
    match &belfabriek.account_pin {
        Some(pin) if !pin.is_empty() && pin.expose().chars().count() < MIN_ACCOUNT_PIN_CHARS => {
            rules.fail(
                "belfabriek.account_pin",
                format!(
                    "is shorter than {MIN_ACCOUNT_PIN_CHARS} characters (allowed: the account PIN \
                     from Belfabriek; check the value)"
                ),
            )
        }
        Some(pin) if !pin.is_empty() => {}
        _ if purpose == Purpose::Service => rules.fail(
            "belfabriek.account_pin",
            "is not set; set the account PIN in PBX2MQTT_BELFABRIEK__ACCOUNT_PIN, \
             belfabriek.account_pin_file or belfabriek.account_pin",
        ),
        _ => {}
    }
    if purpose == Purpose::Service {
        if let Some(url) = url.filter(|url| url.scheme() == "http" && !is_loopback(url)) {
            warnings.push(format!(
                "belfabriek.url {:?} is plain http://: the account PIN travels unencrypted; \
                 use https:// if the API offers it",
                url.as_str()
            ));
        }
    }
}

/// `localhost`, `127.x.x.x` or `::1`: traffic that never leaves the machine.
fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(address)) => address.is_loopback(),
        Some(url::Host::Ipv6(address)) => address.is_loopback(),
        None => false,
    }
}

fn tring(config: &Config, purpose: Purpose, rules: &mut Rules) {
    let tring = &config.tring;
    rules.http_url("tring.url", &tring.url);
    rules.duration(
        "tring.timeout",
        tring.timeout,
        100 * MILLISECOND,
        5 * MINUTE,
    );
    let needed = matches!(purpose, Purpose::Service | Purpose::QueueCommands);
    match &tring.key {
        Some(key) if !key.is_empty() && key.expose().chars().count() < MIN_TRING_KEY_CHARS => rules
            .fail(
                "tring.key",
                format!(
                    "is shorter than {MIN_TRING_KEY_CHARS} characters (allowed: the API key from \
                     your TRiNG supplier; check the value)"
                ),
            ),
        Some(key) if !key.is_empty() => {}
        _ if needed => rules.fail(
            "tring.key",
            "is not set; set the API key in PBX2MQTT_TRING__KEY, tring.key_file or tring.key",
        ),
        _ => {}
    }
    if needed && tring.tenant.trim().is_empty() {
        rules.fail(
            "tring.tenant",
            "is not set; set it (or PBX2MQTT_TRING__TENANT) to the tenant code from your TRiNG \
             supplier",
        );
    }
}

fn poll(config: &Config, rules: &mut Rules) {
    let poll = &config.poll;
    rules.duration("poll.interval", poll.interval, 100 * MILLISECOND, HOUR);
    rules.number("poll.concurrency", poll.concurrency, 1, 10_000);
    rules.number("poll.stale_after", poll.stale_after, 1, 1000);
    if poll.max_backoff < poll.interval {
        rules.fail(
            "poll.max_backoff",
            format!(
                "\"{}\" is shorter than poll.interval \"{}\" (allowed: poll.interval to 1d)",
                show(poll.max_backoff),
                show(poll.interval)
            ),
        );
    } else {
        rules.duration("poll.max_backoff", poll.max_backoff, poll.interval, DAY);
    }
}

fn database(config: &Config, rules: &mut Rules) {
    let url = &config.database.url;
    let scheme = url
        .split(':')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if !matches!(scheme.as_str(), "sqlite" | "postgres" | "postgresql") || !url.contains(':') {
        rules.fail(
            "database.url",
            format!(
                "{:?} is not a database URL (allowed: sqlite://relative.db, \
                 sqlite:///absolute.db, postgres://user@host/db)",
                crate::store::redact_url(url)
            ),
        );
    }
}

fn http(config: &Config, rules: &mut Rules) {
    let http = &config.http;
    if !http.listen.is_empty() && http.listen.parse::<std::net::SocketAddr>().is_err() {
        rules.fail(
            "http.listen",
            format!(
                "{:?} is not an address (allowed: an address like 127.0.0.1:8080, or empty to \
                 disable the server)",
                http.listen
            ),
        );
    }
    rules.duration("http.request_timeout", http.request_timeout, SECOND, HOUR);
}

fn report(config: &Config, rules: &mut Rules) {
    let report = &config.report;
    if report.timezone.parse::<chrono_tz::Tz>().is_err() {
        rules.fail(
            "report.timezone",
            format!(
                "unknown time zone {:?} (allowed: an IANA name like Europe/Amsterdam)",
                report.timezone
            ),
        );
    }
    rules.number("report.max_cells", report.max_cells, 1, 100_000_000);
    rules.number(
        "report.max_timeline_rows",
        report.max_timeline_rows,
        1,
        100_000_000,
    );
    rules.duration("report.timeout", report.timeout, SECOND, HOUR);
    rules.number("report.max_concurrent", report.max_concurrent, 1, 64);
}

fn commands(config: &Config, rules: &mut Rules) {
    let commands = &config.commands;
    if let Some(queue) = commands.allowed_queues.iter().find(|q| !is_plain_number(q)) {
        rules.fail(
            "commands.allowed_queues",
            format!("{queue:?} is not a queue number (allowed: 1 to 20 digits)"),
        );
    }
    rules.duration(
        "commands.dedup_window",
        commands.dedup_window,
        Duration::ZERO,
        DAY,
    );
    rules.number(
        "commands.max_payload_bytes",
        commands.max_payload_bytes,
        64,
        65_536,
    );
    rules.number("commands.concurrency", commands.concurrency, 1, 256);
    rules.duration(
        "commands.membership_interval",
        commands.membership_interval,
        5 * SECOND,
        DAY,
    );
    let retention = commands.audit_retention;
    if !retention.is_zero() && (retention < DAY || retention > 3650 * DAY) {
        rules.fail(
            "commands.audit_retention",
            format!(
                "\"{}\" is out of range (allowed: 1d to 3650d, or 0s to keep audit rows forever)",
                show(retention)
            ),
        );
    }
}

fn agents(
    config: &Config,
    purpose: Purpose,
    agent_index: &[usize],
    rules: &mut Rules,
    warnings: &mut Vec<String>,
) {
    let mut seen = HashSet::new();
    for (position, agent) in config.agents.iter().enumerate() {
        let index = agent_index.get(position).copied().unwrap_or(position);
        if !seen.insert(agent.id.as_str()) {
            rules.fail(
                &format!("agents.{index}.id"),
                format!(
                    "duplicate agent id {:?} (allowed: each id once)",
                    agent.id.as_str()
                ),
            );
        }
        if agent.extension_id.trim().is_empty() {
            rules.fail(
                &format!("agents.{index}.extension_id"),
                "is empty (allowed: the Belfabriek extension id)",
            );
        }
        if let Some(ext) = &agent.queue_extension {
            if !is_plain_number(ext) {
                rules.fail(
                    &format!("agents.{index}.queue_extension"),
                    format!("{ext:?} is not an extension number (allowed: 1 to 20 digits)"),
                );
            }
        }
    }
    if purpose == Purpose::Service && config.agents.is_empty() {
        warnings.push(
            "no agents configured: nothing will be polled; add an [[agents]] table per agent \
             (see config/pbx2mqtt.example.toml)"
                .into(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_show_in_their_largest_unit() {
        assert_eq!(show(Duration::ZERO), "0s");
        assert_eq!(show(100 * MILLISECOND), "100ms");
        assert_eq!(show(90 * SECOND), "90s");
        assert_eq!(show(5 * MINUTE), "5m");
        assert_eq!(show(3650 * DAY), "3650d");
    }
}
