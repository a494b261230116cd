//! Everything MQTT: broker options, topic names, payloads and the connection
//! task that owns the client.

pub mod options;
pub mod topics;
