//! The settings of the bridge's two broker connections, from `[mqtt]`: the
//! publisher (agent states, events, discovery; the last will on
//! `bridge/state`) and the command connection (requests and responses, a
//! persistent session). Also the TLS configuration for `mqtts://`. Reads
//! certificate files; makes no connection.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::client::{Protocol, Settings, Will};
use super::topics::Topics;
use crate::config::{MqttConfig, MqttProtocol};

/// The largest MQTT packet there is (the protocol's limit, 256 MiB): what a
/// 3.1.1 command connection accepts, so that no message, however large, can
/// make rumqttc drop the connection (a retained one would then make it
/// reconnect for ever). MQTT 5 connections announce
/// `mqtt.max_packet_size` instead and the broker drops bigger messages.
pub const MQTT_MAX_PACKET: u32 = 268_435_455;

/// QoS 1 publishes the publisher keeps on the wire at once.
const PUBLISHER_INFLIGHT: u16 = 200;

/// QoS 1 publishes the command connection keeps on the wire at once.
const COMMANDS_INFLIGHT: u16 = 100;

/// The `[mqtt]` options beyond address and credentials.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    /// 3.1.1 or 5.
    pub protocol: Protocol,
    /// Announced in CONNECT (MQTT 5).
    pub max_packet_size: u32,
    /// How long the broker keeps the command session after a disconnect.
    pub session_expiry: Duration,
    /// Keep-alive interval.
    pub keep_alive: Duration,
    /// CA certificates (PEM) to trust instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM), for brokers that want one.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

impl BrokerOptions {
    /// The options of `[mqtt]`.
    pub fn from_config(config: &MqttConfig) -> Self {
        Self {
            protocol: match config.protocol {
                MqttProtocol::V311 => Protocol::V311,
                MqttProtocol::V5 => Protocol::V5,
            },
            max_packet_size: config.max_packet_size,
            session_expiry: config.session_expiry,
            keep_alive: config.keep_alive,
            ca_file: config.ca_file.clone(),
            client_cert: config
                .client_cert_file
                .clone()
                .zip(config.client_key_file.clone()),
        }
    }
}

/// Why the TLS settings could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A file could not be read.
    #[error("cannot read {key} file {path}: {source}")]
    Read {
        /// The config key.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file holds nothing usable.
    #[error("{key} file {path} holds no {what} in PEM form")]
    Empty {
        /// The config key.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What was looked for.
        what: &'static str,
    },
    /// No trusted roots at all.
    #[error(
        "no trusted CA certificates: the system has none readable ({detail}); set mqtt.ca_file"
    )]
    NoRoots {
        /// What the system store said.
        detail: String,
    },
    /// rustls refused the configuration.
    #[error("invalid TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The publisher connection: clean session, last will `offline` on
/// `bridge/state` (retained), nothing subscribed.
pub fn publisher(
    config: &MqttConfig,
    options: &BrokerOptions,
    topics: &Topics,
) -> Result<Settings, TlsSetupError> {
    Ok(Settings {
        will: Some(Will {
            topic: topics.bridge_state(),
            payload: b"offline".to_vec(),
        }),
        persistent: false,
        inflight: PUBLISHER_INFLIGHT,
        max_incoming_packet: options.max_packet_size,
        ..base(config, options, &config.client_id)?
    })
}

/// The command connection: a persistent session (requests published while
/// the bridge reconnects are delivered afterwards), last will `offline` on
/// this bridge's own state topic (`<base>/bridge/<id>/state`).
pub fn commands(
    config: &MqttConfig,
    options: &BrokerOptions,
    own_state: String,
) -> Result<Settings, TlsSetupError> {
    let base = base(config, options, &format!("{}-cmd", config.client_id))?;
    Ok(Settings {
        will: Some(Will {
            topic: own_state,
            payload: b"offline".to_vec(),
        }),
        persistent: true,
        inflight: COMMANDS_INFLIGHT,
        max_incoming_packet: match options.protocol {
            Protocol::V5 => options.max_packet_size,
            // 3.1.1 cannot tell the broker a limit; reading anything it
            // sends is what keeps an oversized message from becoming a
            // reconnect loop (the command is then refused as too large).
            Protocol::V311 => MQTT_MAX_PACKET,
        },
        ..base
    })
}

/// A short-lived client for `check` under its own client id.
pub fn probe(config: &MqttConfig, options: &BrokerOptions) -> Result<Settings, TlsSetupError> {
    base(config, options, &format!("{}-check", config.client_id))
}

fn base(
    config: &MqttConfig,
    options: &BrokerOptions,
    client_id: &str,
) -> Result<Settings, TlsSetupError> {
    let tls = if config.url.tls() {
        Some(tls_config(options)?)
    } else {
        None
    };
    Ok(Settings {
        protocol: options.protocol,
        host: config.url.host().to_owned(),
        port: config.url.port(),
        tls,
        client_id: client_id.to_owned(),
        credentials: config
            .username
            .as_ref()
            .map(|user| (user.clone(), config.password.clone().unwrap_or_default())),
        keep_alive: options.keep_alive,
        persistent: false,
        session_expiry: options.session_expiry,
        max_incoming_packet: options.max_packet_size,
        will: None,
        inflight: 100,
    })
}

/// The rustls client configuration: the CA file's certificates or the
/// system's, and the client certificate when one is configured.
pub fn tls_config(options: &BrokerOptions) -> Result<Arc<rustls::ClientConfig>, TlsSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    match &options.ca_file {
        Some(path) => {
            let certs = read_certs("mqtt.ca_file", path)?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(TlsSetupError::Empty {
                    key: "mqtt.ca_file",
                    path: path.clone(),
                    what: "usable CA certificate",
                });
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let detail = found
                    .errors
                    .first()
                    .map_or_else(|| "none found".to_owned(), ToString::to_string);
                return Err(TlsSetupError::NoRoots { detail });
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match &options.client_cert {
        Some((cert, key)) => {
            let chain = read_certs("mqtt.client_cert_file", cert)?;
            let key = read_key(key)?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

fn open(
    key: &'static str,
    path: &Path,
) -> Result<std::io::BufReader<std::fs::File>, TlsSetupError> {
    std::fs::File::open(path)
        .map(std::io::BufReader::new)
        .map_err(|source| TlsSetupError::Read {
            key,
            path: path.to_owned(),
            source,
        })
}

fn read_certs(
    key: &'static str,
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, TlsSetupError> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut open(key, path)?)
        .collect::<Result<_, _>>()
        .map_err(|source| TlsSetupError::Read {
            key,
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsSetupError::Empty {
            key,
            path: path.to_owned(),
            what: "certificate",
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<rustls::pki_types::PrivateKeyDer<'static>, TlsSetupError> {
    const KEY: &str = "mqtt.client_key_file";
    rustls_pemfile::private_key(&mut open(KEY, path)?)
        .map_err(|source| TlsSetupError::Read {
            key: KEY,
            path: path.to_owned(),
            source,
        })?
        .ok_or_else(|| TlsSetupError::Empty {
            key: KEY,
            path: path.to_owned(),
            what: "private key",
        })
}
