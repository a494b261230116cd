//! A one-off connection to the broker with the bridge's own settings
//! (protocol, TLS, credentials) under its own client id, for `pbx2mqtt
//! check`: connects, waits for CONNACK, disconnects. No last will, no
//! subscriptions, so it never disturbs a running bridge.

use std::time::Duration;

use super::client::{self, BrokerError, NetEvent};
use super::settings::{self, BrokerOptions, TlsSetupError};
use crate::config::MqttConfig;

/// Why the probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The TLS settings could not be built.
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    /// The broker refused or could not be reached.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// No CONNACK in time.
    #[error("no answer from the broker within {0:?}")]
    Timeout(Duration),
}

/// Connects once; `Ok` once the broker accepted the connection.
pub async fn probe(config: &MqttConfig, timeout: Duration) -> Result<(), ProbeError> {
    let options = BrokerOptions::from_config(config);
    let settings = settings::probe(config, &options)?;
    let (client, mut connection) = client::new(&settings, 8);
    let connected = tokio::time::timeout(timeout, async {
        loop {
            match connection.poll().await? {
                NetEvent::Connected { .. } => return Ok::<_, BrokerError>(()),
                _ => continue,
            }
        }
    })
    .await
    .map_err(|_| ProbeError::Timeout(timeout))?;
    connected?;
    let _ = client.try_disconnect();
    // Write the DISCONNECT (bounded: a broker gone now does not matter).
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while let Ok(event) = connection.poll().await {
            if event == NetEvent::Disconnected {
                break;
            }
        }
    })
    .await;
    Ok(())
}
