//! [`BrokerUrl`]: the broker address of `mqtt.url`, parsed once when the
//! configuration is read. Pure.

use serde::{Deserialize, Serialize};

/// The MQTT port without TLS.
pub const MQTT_PORT: u16 = 1883;

/// The MQTT port with TLS.
pub const MQTTS_PORT: u16 = 8883;

/// A broker address: `mqtt://host[:port]`, `tcp://host[:port]` or
/// `host[:port]` (port 1883), or with TLS `mqtts://host[:port]` or
/// `ssl://host[:port]` (port 8883). Shown (and serialized) as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BrokerUrl {
    /// The URL as written.
    raw: String,
    /// The host name or address (IPv6 without brackets).
    host: String,
    /// The TCP port.
    port: u16,
    /// True for `mqtts://` and `ssl://`: the connection uses TLS.
    tls: bool,
}

/// Why a broker URL is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerUrlError {
    /// A scheme other than `mqtt://`, `tcp://`, `mqtts://` or `ssl://`.
    #[error(
        "unsupported scheme in {0:?} (allowed: mqtt://host:port, or mqtts://host:port for TLS)"
    )]
    Scheme(String),
    /// No host.
    #[error("no host in {0:?} (allowed: mqtt://host:port, or mqtts://host:port for TLS)")]
    Host(String),
    /// The port is not a number from 0 to 65535.
    #[error("bad port in {0:?} (allowed: a port from 1 to 65535)")]
    Port(String),
}

impl BrokerUrl {
    /// Parses `mqtt://host:port`, `tcp://host:port`, `host:port`,
    /// `mqtts://host:port` or `ssl://host:port`.
    pub fn parse(url: &str) -> Result<Self, BrokerUrlError> {
        let (rest, tls) = if let Some(rest) = url.strip_prefix("mqtt://") {
            (rest, false)
        } else if let Some(rest) = url.strip_prefix("tcp://") {
            (rest, false)
        } else if let Some(rest) = url.strip_prefix("mqtts://") {
            (rest, true)
        } else if let Some(rest) = url.strip_prefix("ssl://") {
            (rest, true)
        } else {
            (url, false)
        };
        if rest.contains("://") {
            return Err(BrokerUrlError::Scheme(url.to_owned()));
        }
        let default_port = if tls { MQTTS_PORT } else { MQTT_PORT };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            // An IPv6 address without brackets or port.
            Some((host, _)) if !host.ends_with(']') && host.contains(':') => (rest, None),
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(BrokerUrlError::Host(url.to_owned()));
        }
        let port = match port {
            None => default_port,
            Some(port) => match port.parse::<u16>() {
                Ok(port) if port > 0 => port,
                _ => return Err(BrokerUrlError::Port(url.to_owned())),
            },
        };
        Ok(Self {
            raw: url.to_owned(),
            host: host.to_owned(),
            port,
            tls,
        })
    }

    /// `mqtt://127.0.0.1:1883`, the default.
    pub fn localhost() -> Self {
        Self {
            raw: "mqtt://127.0.0.1:1883".to_owned(),
            host: "127.0.0.1".to_owned(),
            port: MQTT_PORT,
            tls: false,
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

    /// True when the connection uses TLS (`mqtts://`, `ssl://`).
    pub fn tls(&self) -> bool {
        self.tls
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_tls_urls() {
        let ok = |url: &str| {
            let parsed = BrokerUrl::parse(url).unwrap();
            assert_eq!(parsed.as_str(), url);
            (parsed.host().to_owned(), parsed.port(), parsed.tls())
        };
        assert_eq!(
            ok("mqtt://127.0.0.1:1883"),
            ("127.0.0.1".into(), 1883, false)
        );
        assert_eq!(ok("tcp://broker:1884"), ("broker".into(), 1884, false));
        assert_eq!(ok("mqtt://broker"), ("broker".into(), 1883, false));
        assert_eq!(ok("broker:99"), ("broker".into(), 99, false));
        assert_eq!(ok("mqtt://[::1]:1883"), ("::1".into(), 1883, false));
        assert_eq!(ok("mqtts://broker"), ("broker".into(), 8883, true));
        assert_eq!(ok("mqtts://broker:9883"), ("broker".into(), 9883, true));
        assert_eq!(ok("ssl://[::1]"), ("::1".into(), 8883, true));
        assert_eq!(
            BrokerUrl::localhost(),
            BrokerUrl::parse("mqtt://127.0.0.1:1883").unwrap()
        );
        for bad in [
            "http://x:1",
            "wss://x",
            "mqtt://:1883",
            "mqtts://",
            "mqtt://h:port",
            "mqtt://h:70000",
            "mqtt://h:0",
        ] {
            assert!(BrokerUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
