//! Everything MQTT. The bridge keeps two broker connections:
//! - the publisher (`publisher.rs`): agent states, transition events,
//!   membership, `bridge/state` and `bridge/info`, Home Assistant discovery;
//!   it subscribes to nothing;
//! - the command connection (`commands.rs`): request topics in, responses
//!   out, Home Assistant's birth message, stale discovery configs.
//!
//! Beside them: `client.rs` (one face over rumqttc's MQTT 5 and 3.1.1
//! clients, TLS, errors that name their cause; the only file that names
//! rumqttc types), `session.rs` (the connect/serve/reconnect loop both
//! connections run), `settings.rs` (their settings from `[mqtt]`),
//! `state.rs` (pure: which events wait for a PUBACK) and `topics.rs` (pure:
//! topic names). Other modules talk to the connections only through
//! [`crate::latest::LatestStates`] and the [`Incoming`] and [`Outgoing`]
//! messages on channels.

pub mod client;
pub mod commands;
pub mod probe;
pub mod publisher;
mod session;
pub mod settings;
pub mod state;
pub mod topics;

use bytes::Bytes;

/// A message received on a subscribed request topic, handed to the command
/// dispatcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    /// The full topic.
    pub topic: String,
    /// The raw payload (cut just past `commands.max_payload_bytes`).
    pub payload: Vec<u8>,
    /// True when the broker delivered it as a retained message.
    pub retain: bool,
    /// MQTT 5: where the requester wants the answer.
    pub response_topic: Option<String>,
    /// MQTT 5: what to send back with the answer.
    pub correlation_data: Option<Bytes>,
}

/// A message for the command connection to publish (responses, clears),
/// QoS 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The full topic.
    pub topic: String,
    /// The payload (empty with `retain` clears a retained message).
    pub payload: Vec<u8>,
    /// Publish as retained.
    pub retain: bool,
    /// MQTT 5: the request's correlation data, echoed.
    pub correlation_data: Option<Bytes>,
}
