//! Builds rumqttc options from `[mqtt]`: broker address (parsed by
//! `config`), credentials, last will. Pure: no connection is made here.

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

/// rumqttc options for the bridge: clean session, last will `offline` on
/// `bridge/state` (retained), generous packet size.
pub fn mqtt_options(config: &MqttConfig, topics: &Topics) -> MqttOptions {
    let mut options = client_options(config, &config.client_id);
    options.set_last_will(LastWill::new(
        topics.bridge_state(),
        "offline",
        QoS::AtLeastOnce,
        true,
    ));
    options
}

/// Options for any client of this broker (credentials, clean session,
/// packet size) under `client_id`, without a last will: used by `check`.
pub fn client_options(config: &MqttConfig, client_id: &str) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, config.url.host(), config.url.port());
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
    options
}
