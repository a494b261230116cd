//! Everything MQTT: broker options, topic names, the connection task that
//! owns the client, and beside it the pure delivery state it keeps
//! (`state.rs`: which events wait for a PUBACK). Other modules talk to the connection only through
//! [`Incoming`] and [`Outgoing`] messages on channels.

pub mod connection;
pub mod options;
pub mod state;
pub mod topics;

use rumqttc::QoS;

/// A message received on a subscribed request topic, handed to the command
/// dispatcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    /// The full topic.
    pub topic: String,
    /// The raw payload.
    pub payload: Vec<u8>,
    /// True when the broker delivered it as a retained message.
    pub retain: bool,
}

/// A message for the connection task to publish (responses, clears).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The full topic.
    pub topic: String,
    /// The payload (empty with `retain` clears a retained message).
    pub payload: Vec<u8>,
    /// Publish as retained.
    pub retain: bool,
    /// Quality of service.
    pub qos: QoS,
}
