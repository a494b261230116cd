//! Logging setup for the binary: the filter (`RUST_LOG`, else a default),
//! the format (text or JSON), colour only on a terminal, the bridge for the
//! `log` crate, and [`QuietBrokerLayer`], which hides the embedded broker's
//! routine client-disconnect messages.
//!
//! Only the command line calls [`init`]; tests install their own subscribers.

use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Default log filter; `RUST_LOG` overrides it.
pub const DEFAULT_LOG_FILTER: &str = "info,rumqttd=warn,rumqttc=warn,sqlx=warn,hyper=warn";

/// Log output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The filter: `RUST_LOG` when it is set and valid, else the default.
fn env_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER))
}

/// Installs the subscriber for `format` on stderr. Its `init` also
/// installs the bridge for the `log` crate (tracing-subscriber's
/// `tracing-log` feature), which rumqttc, reqwest and sqlx log through.
/// Colour only when stderr is a terminal (never in files, pipes or `docker
/// logs`) and `NO_COLOR` is not set.
pub fn init(format: LogFormat) {
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    // Would the filter show rumqttd's DEBUG lines? Asked of the filter
    // alone, before anything is installed.
    let broker_debug = tracing::subscriber::with_default(
        tracing_subscriber::registry().with(env_filter()),
        || tracing::enabled!(target: "rumqttd::server::broker", tracing::Level::DEBUG),
    );
    let registry = tracing_subscriber::registry()
        .with(env_filter())
        .with(QuietBrokerLayer::new(broker_debug));
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => registry.with(fmt).init(),
        LogFormat::Json => registry.with(fmt.json()).init(),
    }
}

/// rumqttd (the embedded broker of the demo and the tests) logs every client
/// that leaves, and every TCP connection closed before it spoke MQTT (a
/// port probe, a health check), at ERROR. These messages say nothing more
/// than "a client left": this layer treats them as DEBUG, shown only when
/// the filter shows rumqttd's DEBUG lines (`RUST_LOG=rumqttd=debug`).
/// Anything else rumqttd says is left alone.
#[derive(Debug, Clone, Copy)]
pub struct QuietBrokerLayer {
    /// Show the routine messages anyway (debug logging for rumqttd is on).
    show_routine: bool,
}

impl QuietBrokerLayer {
    /// A layer that hides the routine messages unless `show_routine`.
    pub fn new(show_routine: bool) -> Self {
        Self { show_routine }
    }
}

impl<S: Subscriber> Layer<S> for QuietBrokerLayer {
    fn event_enabled(&self, event: &Event<'_>, _: Context<'_, S>) -> bool {
        self.show_routine || !is_routine_broker_message(event)
    }
}

/// Messages rumqttd logs when a client goes away.
const ROUTINE_DISCONNECTS: [&str; 4] = [
    "disconnected",
    "router-drop",
    "connection-stop",
    "no-connection id ",
];

/// Logged when a connection closes before its CONNECT; routine only when
/// the peer simply went away (not a malformed or refused CONNECT).
const CONNECT_ABANDONED: &str = "Error while handling MQTT connect packet";

/// The error texts of a peer that simply went away.
const PEER_WENT_AWAY: [&str; 4] = [
    "ConnectionAborted",
    "ConnectionReset",
    "UnexpectedEof",
    "BrokenPipe",
];

fn is_routine_broker_message(event: &Event<'_>) -> bool {
    if !event.metadata().target().starts_with("rumqttd") {
        return false;
    }
    let mut fields = Fields::default();
    event.record(&mut fields);
    if ROUTINE_DISCONNECTS
        .iter()
        .any(|routine| fields.message.starts_with(routine))
    {
        return true;
    }
    fields.message == CONNECT_ABANDONED
        && PEER_WENT_AWAY
            .iter()
            .any(|reason| fields.error.contains(reason))
}

/// The `message` and `error` fields of an event.
#[derive(Default)]
struct Fields {
    message: String,
    error: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "error" => self.error = format!("{value:?}"),
            _ => {}
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_owned(),
            "error" => self.error = value.to_owned(),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Runs `emit` under a subscriber with the quiet layer; what was written.
    fn logged(show_routine: bool, emit: impl FnOnce()) -> String {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::registry()
            .with(QuietBrokerLayer::new(show_routine))
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(move || Writer(writer.clone())),
            );
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = buffer.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    struct Writer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Writer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn broker_messages() {
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        tracing::error!(target: "rumqttd::server::broker", error = ?reset, "disconnected");
        tracing::error!(target: "rumqttd::server::broker", error = "Recv(Disconnected)", "router-drop");
        tracing::error!(target: "rumqttd::router::routing", "no-connection id {} is already gone", 7);
        tracing::error!(target: "rumqttd::server::broker", error = "Network(Io(Custom { kind: ConnectionAborted }))", "Error while handling MQTT connect packet");
        tracing::error!(target: "rumqttd::server::broker", error = "InvalidProtocol", "Error while handling MQTT connect packet");
        tracing::error!(target: "rumqttd::router::routing", "no space for new connection");
        tracing::error!(target: "pbx2mqtt::app", "disconnected");
    }

    #[test]
    fn routine_broker_disconnects_are_hidden_and_the_rest_kept() {
        let text = logged(false, broker_messages);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].contains("InvalidProtocol"), "{text}");
        assert!(lines[1].contains("no space for new connection"), "{text}");
        assert!(lines[2].contains("pbx2mqtt::app"), "{text}");
        // With rumqttd's debug logging on, everything is shown.
        assert_eq!(logged(true, broker_messages).lines().count(), 7);
    }
}
