//! One face over rumqttc's two clients: MQTT 5 (`rumqttc::v5`, the default)
//! and MQTT 3.1.1 (`rumqttc`), plain TCP or TLS. The connection tasks speak
//! only in the types of this file, so nothing else depends on which
//! protocol is in use.
//!
//! This file owns the rumqttc types: options, the client handle, the event
//! loop and its events, and the mapping of rumqttc's errors to
//! [`BrokerError`]s that name the cause (refused credentials, a TLS failure,
//! an unreachable broker). It keeps no state of its own.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5 as v5bytes;

use crate::secret::Secret;

/// The MQTT protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// MQTT 3.1.1.
    V311,
    /// MQTT 5.
    V5,
}

/// The last will: published by the broker when the connection dies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// Its topic.
    pub topic: String,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// Everything needed to open one connection.
#[derive(Clone)]
pub struct Settings {
    /// 3.1.1 or 5.
    pub protocol: Protocol,
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// TLS configuration, for `mqtts://`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The client id.
    pub client_id: String,
    /// User name and password.
    pub credentials: Option<(String, Secret)>,
    /// Keep-alive interval.
    pub keep_alive: Duration,
    /// Keep the session (subscriptions, queued QoS 1 messages) across
    /// reconnects: clean start off.
    pub persistent: bool,
    /// How long the broker keeps a persistent session after a disconnect
    /// (MQTT 5; 3.1.1 brokers keep it until the client cleans it).
    pub session_expiry: Duration,
    /// The largest packet the broker may send us (announced in CONNECT on
    /// MQTT 5; on 3.1.1 the largest one rumqttc reads).
    pub max_incoming_packet: u32,
    /// Last will (retained, QoS 1), if any.
    pub will: Option<Will>,
    /// QoS 1 publishes on the wire at once.
    pub inflight: u16,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("protocol", &self.protocol)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls.is_some())
            .field("client_id", &self.client_id)
            .field("user", &self.credentials.as_ref().map(|(user, _)| user))
            .finish_non_exhaustive()
    }
}

/// A subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// The topic filter.
    pub path: String,
    /// Deliver retained messages with the retain flag as published (MQTT 5
    /// retain-as-published; on 3.1.1 a message that arrives while
    /// subscribed always has retain off).
    pub retain_as_published: bool,
}

/// A message to publish (QoS 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic.
    pub topic: String,
    /// The payload.
    pub payload: Bytes,
    /// Retained.
    pub retain: bool,
    /// MQTT 5 correlation data, for a response (ignored on 3.1.1).
    pub correlation_data: Option<Bytes>,
}

/// A message the broker delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The topic (lossy UTF-8).
    pub topic: String,
    /// The payload.
    pub payload: Bytes,
    /// The retain flag as delivered.
    pub retain: bool,
    /// MQTT 5: where the sender wants the answer.
    pub response_topic: Option<String>,
    /// MQTT 5: what to echo with the answer.
    pub correlation_data: Option<Bytes>,
}

/// What the event loop reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetEvent {
    /// CONNACK: connected.
    Connected {
        /// The broker still had our session.
        session_present: bool,
    },
    /// A message on a subscribed topic.
    Received(Received),
    /// A QoS 1 publish of ours went on the wire with this packet id.
    Sent(u16),
    /// The next publish waits: its packet id is still in flight.
    Parked(u16),
    /// The broker acknowledged our publish with this packet id.
    Acknowledged(u16),
    /// The broker refused some subscriptions (the filters' indexes).
    SubscriptionsRefused(Vec<usize>),
    /// Our DISCONNECT went out.
    Disconnected,
    /// Anything else (pings, our own acks...).
    Other,
}

/// Why a connection failed or ended, in words an operator acts on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {detail}")]
pub struct BrokerError {
    /// What kind of failure.
    pub kind: BrokerErrorKind,
    /// The details from the library or the broker.
    pub detail: String,
}

/// The kinds of [`BrokerError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerErrorKind {
    /// The broker refused our credentials.
    Credentials,
    /// The broker refused us for another reason.
    Refused,
    /// TLS failed (certificate, handshake).
    Tls,
    /// The broker could not be reached or the connection broke.
    Network,
    /// The broker did not answer in time.
    Timeout,
    /// A protocol violation or an oversized packet.
    Protocol,
}

impl BrokerErrorKind {
    /// A short name for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            BrokerErrorKind::Credentials => "credentials",
            BrokerErrorKind::Refused => "refused",
            BrokerErrorKind::Tls => "tls",
            BrokerErrorKind::Network => "network",
            BrokerErrorKind::Timeout => "timeout",
            BrokerErrorKind::Protocol => "protocol",
        }
    }
}

impl std::fmt::Display for BrokerErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BrokerErrorKind::Credentials => {
                "the broker refused the credentials (check mqtt.username and mqtt.password)"
            }
            BrokerErrorKind::Refused => "the broker refused the connection",
            BrokerErrorKind::Tls => {
                "TLS with the broker failed (check mqtt.url, mqtt.ca_file and the client certificate)"
            }
            BrokerErrorKind::Network => "cannot reach the broker (check mqtt.url)",
            BrokerErrorKind::Timeout => "the broker did not answer in time",
            BrokerErrorKind::Protocol => "the broker connection broke the protocol",
        })
    }
}

/// Why a request could not be handed to the event loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the mqtt request queue is full or closed")]
pub struct QueueFull;

/// The handle requests are sent through.
#[derive(Clone)]
pub enum Client {
    /// MQTT 3.1.1.
    V311(rumqttc::AsyncClient),
    /// MQTT 5.
    V5(rumqttc::v5::AsyncClient),
}

/// The event loop: owns the socket. Poll it, never drop a poll midway.
pub enum Connection {
    /// MQTT 3.1.1.
    V311(Box<rumqttc::EventLoop>),
    /// MQTT 5.
    V5(Box<rumqttc::v5::EventLoop>),
}

/// Opens nothing yet: the returned event loop connects when first polled.
/// `capacity` bounds the requests waiting inside rumqttc.
pub fn new(settings: &Settings, capacity: usize) -> (Client, Connection) {
    match settings.protocol {
        Protocol::V311 => {
            let mut options =
                rumqttc::MqttOptions::new(&settings.client_id, &settings.host, settings.port);
            options
                .set_keep_alive(settings.keep_alive)
                .set_clean_session(!settings.persistent)
                .set_max_packet_size(settings.max_incoming_packet as usize, usize::MAX)
                .set_inflight(settings.inflight);
            if let Some((user, password)) = &settings.credentials {
                options.set_credentials(user, password.expose());
            }
            if let Some(will) = &settings.will {
                options.set_last_will(rumqttc::LastWill::new(
                    &will.topic,
                    will.payload.clone(),
                    rumqttc::QoS::AtLeastOnce,
                    true,
                ));
            }
            if let Some(tls) = &settings.tls {
                options.set_transport(rumqttc::Transport::tls_with_config(
                    rumqttc::TlsConfiguration::Rustls(tls.clone()),
                ));
            }
            let (client, mut eventloop) = rumqttc::AsyncClient::new(options, capacity);
            let mut network = eventloop.network_options();
            network.set_tcp_nodelay(true);
            eventloop.set_network_options(network);
            (Client::V311(client), Connection::V311(Box::new(eventloop)))
        }
        Protocol::V5 => {
            let mut options =
                rumqttc::v5::MqttOptions::new(&settings.client_id, &settings.host, settings.port);
            options
                .set_keep_alive(settings.keep_alive)
                .set_clean_start(!settings.persistent)
                .set_max_packet_size(Some(settings.max_incoming_packet))
                .set_outgoing_inflight_upper_limit(settings.inflight);
            if settings.persistent {
                let expiry = u32::try_from(settings.session_expiry.as_secs()).unwrap_or(u32::MAX);
                options.set_session_expiry_interval(Some(expiry));
            }
            if let Some((user, password)) = &settings.credentials {
                options.set_credentials(user, password.expose());
            }
            if let Some(will) = &settings.will {
                options.set_last_will(v5bytes::LastWill::new(
                    &will.topic,
                    will.payload.clone(),
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    true,
                    None,
                ));
            }
            if let Some(tls) = &settings.tls {
                options.set_transport(rumqttc::Transport::tls_with_config(
                    rumqttc::TlsConfiguration::Rustls(tls.clone()),
                ));
            }
            let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(options, capacity);
            let mut network = eventloop.options.network_options();
            network.set_tcp_nodelay(true);
            eventloop.options.set_network_options(network);
            (Client::V5(client), Connection::V5(Box::new(eventloop)))
        }
    }
}

impl Client {
    /// The protocol version this client speaks.
    pub fn protocol(&self) -> Protocol {
        match self {
            Client::V311(_) => Protocol::V311,
            Client::V5(_) => Protocol::V5,
        }
    }

    /// Hands a QoS 1 publish to the event loop without waiting.
    pub fn try_publish(&self, message: &Message) -> Result<(), QueueFull> {
        match self {
            Client::V311(client) => client
                .try_publish(
                    &message.topic,
                    rumqttc::QoS::AtLeastOnce,
                    message.retain,
                    message.payload.to_vec(),
                )
                .map_err(|_| QueueFull),
            Client::V5(client) => {
                let properties = v5bytes::PublishProperties {
                    correlation_data: message.correlation_data.clone(),
                    ..Default::default()
                };
                client
                    .try_publish_with_properties(
                        message.topic.as_str(),
                        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                        message.retain,
                        message.payload.clone(),
                        properties,
                    )
                    .map_err(|_| QueueFull)
            }
        }
    }

    /// Subscribes to `filters` at QoS 1.
    pub fn try_subscribe(&self, filters: &[Filter]) -> Result<(), QueueFull> {
        match self {
            Client::V311(client) => client
                .try_subscribe_many(filters.iter().map(|filter| {
                    rumqttc::SubscribeFilter::new(filter.path.clone(), rumqttc::QoS::AtLeastOnce)
                }))
                .map_err(|_| QueueFull),
            Client::V5(client) => client
                .try_subscribe_many(filters.iter().map(|filter| {
                    let mut v5 = v5bytes::Filter::new(
                        filter.path.clone(),
                        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    );
                    v5.preserve_retain = filter.retain_as_published;
                    v5
                }))
                .map_err(|_| QueueFull),
        }
    }

    /// Asks for a clean DISCONNECT (no last will).
    pub fn try_disconnect(&self) -> Result<(), QueueFull> {
        match self {
            Client::V311(client) => client.try_disconnect().map_err(|_| QueueFull),
            Client::V5(client) => client.try_disconnect().map_err(|_| QueueFull),
        }
    }
}

impl Connection {
    /// The next event; connects (again) first when not connected. Not
    /// cancel-safe: keep one poll future until it completes.
    pub async fn poll(&mut self) -> Result<NetEvent, BrokerError> {
        match self {
            Connection::V311(eventloop) => match eventloop.poll().await {
                Ok(event) => Ok(event_v311(event)),
                Err(error) => Err(error_v311(error)),
            },
            Connection::V5(eventloop) => match eventloop.poll().await {
                Ok(event) => Ok(event_v5(event)),
                Err(error) => Err(error_v5(error)),
            },
        }
    }

    /// After a connection error: forgets the reports rumqttc still holds
    /// about the dead connection's packets, so they are not read as the next
    /// connection's. rumqttc offers no call for this; its state's event
    /// queue is public, and clearing it is all that is needed.
    pub fn forget_stale_events(&mut self) {
        match self {
            Connection::V311(eventloop) => eventloop.state.events.clear(),
            Connection::V5(eventloop) => eventloop.state.events.clear(),
        }
    }

    /// Drops the network connection as if it had failed (the next `poll`
    /// connects again, and rumqttc queues its unacknowledged publishes for
    /// the new connection, as after any failure). For a connection that
    /// looks open but is stuck; call only with no poll future alive.
    pub fn abandon(&mut self) {
        match self {
            Connection::V311(eventloop) => eventloop.clean(),
            Connection::V5(eventloop) => eventloop.clean(),
        }
    }

    /// QoS 1 publishes on the wire, not yet acknowledged (rumqttc's own
    /// count; read to know when a shutdown flush is done).
    pub fn inflight(&self) -> u16 {
        match self {
            Connection::V311(eventloop) => eventloop.state.inflight(),
            Connection::V5(eventloop) => eventloop.state.inflight(),
        }
    }
}

fn event_v311(event: rumqttc::Event) -> NetEvent {
    use rumqttc::{Event, Outgoing, Packet};
    match event {
        Event::Incoming(Packet::ConnAck(ack)) => NetEvent::Connected {
            session_present: ack.session_present,
        },
        Event::Incoming(Packet::Publish(publish)) => NetEvent::Received(Received {
            topic: publish.topic,
            payload: publish.payload,
            retain: publish.retain,
            response_topic: None,
            correlation_data: None,
        }),
        Event::Incoming(Packet::PubAck(ack)) => NetEvent::Acknowledged(ack.pkid),
        Event::Incoming(Packet::SubAck(ack)) => NetEvent::SubscriptionsRefused(
            ack.return_codes
                .iter()
                .enumerate()
                .filter(|(_, code)| matches!(code, rumqttc::SubscribeReasonCode::Failure))
                .map(|(index, _)| index)
                .collect(),
        ),
        Event::Outgoing(Outgoing::Publish(pkid)) => NetEvent::Sent(pkid),
        Event::Outgoing(Outgoing::AwaitAck(pkid)) => NetEvent::Parked(pkid),
        Event::Outgoing(Outgoing::Disconnect) => NetEvent::Disconnected,
        _ => NetEvent::Other,
    }
}

fn event_v5(event: rumqttc::v5::Event) -> NetEvent {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::Event;
    use rumqttc::Outgoing;
    match event {
        Event::Incoming(Packet::ConnAck(ack)) => NetEvent::Connected {
            session_present: ack.session_present,
        },
        Event::Incoming(Packet::Publish(publish)) => {
            let (response_topic, correlation_data) = publish
                .properties
                .map(|p| (p.response_topic, p.correlation_data))
                .unwrap_or_default();
            NetEvent::Received(Received {
                topic: String::from_utf8_lossy(&publish.topic).into_owned(),
                payload: publish.payload,
                retain: publish.retain,
                response_topic,
                correlation_data,
            })
        }
        Event::Incoming(Packet::PubAck(ack)) => NetEvent::Acknowledged(ack.pkid),
        Event::Incoming(Packet::SubAck(ack)) => NetEvent::SubscriptionsRefused(
            ack.return_codes
                .iter()
                .enumerate()
                .filter(|(_, code)| !matches!(code, v5bytes::SubscribeReasonCode::Success(_)))
                .map(|(index, _)| index)
                .collect(),
        ),
        Event::Outgoing(Outgoing::Publish(pkid)) => NetEvent::Sent(pkid),
        Event::Outgoing(Outgoing::AwaitAck(pkid)) => NetEvent::Parked(pkid),
        Event::Outgoing(Outgoing::Disconnect) => NetEvent::Disconnected,
        _ => NetEvent::Other,
    }
}

fn error(kind: BrokerErrorKind, detail: impl std::fmt::Display) -> BrokerError {
    BrokerError {
        kind,
        detail: detail.to_string(),
    }
}

fn error_v311(failure: rumqttc::ConnectionError) -> BrokerError {
    use rumqttc::{ConnectReturnCode, ConnectionError};
    match failure {
        ConnectionError::ConnectionRefused(
            code @ (ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized),
        ) => error(BrokerErrorKind::Credentials, format!("{code:?}")),
        ConnectionError::ConnectionRefused(code) => {
            error(BrokerErrorKind::Refused, format!("{code:?}"))
        }
        ConnectionError::Tls(detail) => error(BrokerErrorKind::Tls, detail),
        ConnectionError::Io(detail) => error(BrokerErrorKind::Network, detail),
        ConnectionError::NetworkTimeout | ConnectionError::FlushTimeout => {
            error(BrokerErrorKind::Timeout, failure)
        }
        ConnectionError::MqttState(rumqttc::StateError::Io(detail)) => {
            error(BrokerErrorKind::Network, detail)
        }
        other => error(kind_of_other(&other.to_string()), other),
    }
}

/// The kind of a failure rumqttc reports as a protocol or state error. A
/// TLS alert can arrive after the handshake (TLS 1.3: a broker that wants a
/// client certificate says so on the first read), and rumqttc then reports
/// it as a failed read of an MQTT packet; its text still names the alert.
fn kind_of_other(text: &str) -> BrokerErrorKind {
    const TLS_SIGNS: [&str; 3] = ["fatal alert", "peer certificate", "tls handshake"];
    let lower = text.to_ascii_lowercase();
    if TLS_SIGNS.iter().any(|sign| lower.contains(sign)) {
        BrokerErrorKind::Tls
    } else {
        BrokerErrorKind::Protocol
    }
}

fn error_v5(failure: rumqttc::v5::ConnectionError) -> BrokerError {
    use rumqttc::v5::mqttbytes::v5::ConnectReturnCode;
    use rumqttc::v5::ConnectionError;
    match failure {
        ConnectionError::ConnectionRefused(
            code @ (ConnectReturnCode::BadUserNamePassword
            | ConnectReturnCode::NotAuthorized
            | ConnectReturnCode::BadAuthenticationMethod),
        ) => error(BrokerErrorKind::Credentials, format!("{code:?}")),
        ConnectionError::ConnectionRefused(code) => {
            error(BrokerErrorKind::Refused, format!("{code:?}"))
        }
        ConnectionError::Tls(detail) => error(BrokerErrorKind::Tls, detail),
        ConnectionError::Io(detail) => error(BrokerErrorKind::Network, detail),
        ConnectionError::Timeout(_) => error(BrokerErrorKind::Timeout, failure),
        ConnectionError::MqttState(rumqttc::v5::StateError::Io(detail)) => {
            error(BrokerErrorKind::Network, detail)
        }
        other => error(kind_of_other(&other.to_string()), other),
    }
}

#[cfg(test)]
mod tests {
    use super::{kind_of_other, BrokerErrorKind};

    #[test]
    fn a_tls_alert_after_the_handshake_is_a_tls_failure() {
        assert_eq!(
            kind_of_other("Mqtt state: Mqtt serialization/deserialization error: IO: received fatal alert: CertificateRequired"),
            BrokerErrorKind::Tls
        );
        assert_eq!(
            kind_of_other("Mqtt state: Received unsolicited ack pkid: 3"),
            BrokerErrorKind::Protocol
        );
    }
}
