//! The embedded MQTT broker (rumqttd) for `pbx2mqtt demo` and for tests on
//! machines without Mosquitto. Not for production: `run` expects a real
//! broker at `mqtt.url`. Only in builds with the cargo feature
//! `embedded-broker` (on by default).

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

/// Why the embedded broker did not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// No free port could be found or bound.
    #[error("cannot reserve a port for the embedded broker: {0}")]
    Port(#[from] std::io::Error),
    /// The broker did not accept connections in time.
    #[error("embedded broker did not start listening on {0} within 5 s")]
    NotListening(SocketAddr),
}

/// A running embedded broker. It lives until the process exits (rumqttd has
/// no stop), which is what the demo and the tests need.
#[derive(Debug, Clone)]
pub struct EmbeddedBroker {
    /// The address it listens on.
    addr: SocketAddr,
}

impl EmbeddedBroker {
    /// Starts a broker on `listen`; port 0 picks a free port.
    pub fn start(listen: SocketAddr) -> Result<Self, BrokerError> {
        let addr = if listen.port() == 0 {
            // rumqttd cannot report the port it bound, so reserve one first.
            let probe = TcpListener::bind(listen)?;
            probe.local_addr()?
        } else {
            listen
        };
        let server = ServerSettings {
            name: "v4-1".into(),
            listen: addr,
            tls: None,
            next_connection_delay_ms: 1,
            connections: ConnectionSettings {
                connection_timeout_ms: 60_000,
                max_payload_size: 16 * 1024 * 1024,
                max_inflight_count: 500,
                auth: None,
                external_auth: None,
                dynamic_filters: true,
            },
        };
        let config = Config {
            id: 0,
            router: RouterConfig {
                max_connections: 10_010,
                max_outgoing_packet_count: 1_000,
                max_segment_size: 100 * 1024 * 1024,
                max_segment_count: 10,
                custom_segment: None,
                initialized_filters: None,
                shared_subscriptions_strategy: Default::default(),
            },
            v4: Some(HashMap::from([("v4-1".to_owned(), server)])),
            v5: None,
            ws: None,
            cluster: None,
            console: None,
            bridge: None,
            prometheus: None,
            metrics: None,
        };
        std::thread::Builder::new()
            .name("embedded-broker".into())
            .spawn(move || {
                let mut broker = Broker::new(config);
                if let Err(error) = broker.start() {
                    tracing::error!(%error, "embedded broker stopped");
                }
            })?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if Instant::now() > deadline {
                return Err(BrokerError::NotListening(addr));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self { addr })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://{}", self.addr)
    }
}
