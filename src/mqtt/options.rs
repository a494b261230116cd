//! Builds rumqttc options from `[mqtt]`: broker URL, credentials, last will.
//! Pure: no connection is made here.

use std::time::Duration;

use rumqttc::{LastWill, MqttOptions, QoS};

use crate::config::MqttConfig;
use crate::mqtt::topics::Topics;

/// The largest packet the bridge accepts from or sends to the broker.
///
/// Large on purpose: rumqttc drops the connection on a bigger packet, and a
/// retained oversized message on a subscribed topic would then cause a
/// reconnect loop. Payload limits are enforced on the parsed command instead.
pub const MAX_PACKET_BYTES: usize = 16 * 1024 * 1024;

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

/// Host and port of a broker URL: `mqtt://host:port`, `tcp://host:port` or
/// `host:port`; the port defaults to 1883.
pub fn parse_broker_url(url: &str) -> Result<(String, u16), BrokerUrlError> {
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
    Ok((host.to_owned(), port))
}

/// rumqttc options for the bridge: clean session, last will `offline` on
/// `bridge/state` (retained), generous packet size.
pub fn mqtt_options(config: &MqttConfig, topics: &Topics) -> Result<MqttOptions, BrokerUrlError> {
    let mut options = client_options(config, &config.client_id)?;
    options.set_last_will(LastWill::new(
        topics.bridge_state(),
        "offline",
        QoS::AtLeastOnce,
        true,
    ));
    Ok(options)
}

/// Options for any client of this broker (credentials, clean session,
/// packet size) under `client_id`, without a last will: used by `check`.
pub fn client_options(config: &MqttConfig, client_id: &str) -> Result<MqttOptions, BrokerUrlError> {
    let (host, port) = parse_broker_url(&config.url)?;
    let mut options = MqttOptions::new(client_id, host, port);
    options
        .set_keep_alive(Duration::from_secs(15))
        .set_clean_session(true)
        .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES)
        .set_inflight(200);
    if let Some(username) = &config.username {
        let password = config
            .password
            .as_ref()
            .map(|p| p.expose().to_owned())
            .unwrap_or_default();
        options.set_credentials(username.clone(), password);
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        let ok = |url: &str| parse_broker_url(url).unwrap();
        assert_eq!(ok("mqtt://127.0.0.1:1883"), ("127.0.0.1".into(), 1883));
        assert_eq!(ok("tcp://broker:1884"), ("broker".into(), 1884));
        assert_eq!(ok("mqtt://broker"), ("broker".into(), 1883));
        assert_eq!(ok("broker:99"), ("broker".into(), 99));
        assert_eq!(ok("mqtt://[::1]:1883"), ("::1".into(), 1883));
        for bad in [
            "http://x:1",
            "mqtt://:1883",
            "mqtt://h:port",
            "mqtt://h:70000",
        ] {
            assert!(parse_broker_url(bad).is_err(), "{bad}");
        }
    }
}
