//! The loop every broker connection runs: connect, serve the event loop and
//! the task's own inputs side by side, reconnect with capped, jittered
//! backoff, and say why a connection failed.
//!
//! rumqttc's `poll` is not cancel-safe (dropping it mid-write loses a
//! packet, dropping it mid-connect restarts the connect), so one poll future
//! lives until it completes while the task's inputs are served beside it; a
//! task may pause reading the network (`read_network`) to push back on the
//! broker without dropping that future. What a connection does with events
//! and inputs is its [`Session`]'s business.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::client::{BrokerError, BrokerErrorKind, Client, Connection, NetEvent};
use crate::metrics::Metrics;

/// First reconnect delay; doubles per failure up to [`MAX_RECONNECT_DELAY`].
const MIN_RECONNECT_DELAY: Duration = Duration::from_millis(200);

/// Longest reconnect delay.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(30);

/// A connection that stayed up this long resets the reconnect backoff.
const STABLE_CONNECTION: Duration = Duration::from_secs(30);

/// How often a connected session is asked whether it is stuck.
const STUCK_CHECK: Duration = Duration::from_secs(1);

/// What a connection task does around the shared loop.
pub(super) trait Session: Send {
    /// One unit of local work (an input from a channel).
    type Work: Send;

    /// The connection's name in logs: `publisher` or `commands`.
    fn name(&self) -> &'static str;

    /// Waits for local work; must be cancel-safe (it loses the race against
    /// network events all the time). Pending forever when there is none.
    fn next_work(&mut self) -> impl Future<Output = Self::Work> + Send;

    /// Handles local work.
    fn on_work(&mut self, work: Self::Work, client: &Client);

    /// Hands waiting messages to the client while it has room; called
    /// before every wait.
    fn hand_over(&mut self, client: &Client);

    /// False to stop reading the network for now (backpressure).
    fn read_network(&self) -> bool {
        true
    }

    /// CONNACK: connected.
    fn on_connected(&mut self, session_present: bool, client: &Client);

    /// Any other network event.
    fn on_event(&mut self, event: NetEvent, client: &Client);

    /// The connection is gone (or a connect failed).
    fn on_disconnected(&mut self);

    /// Asked every second while connected: `Some(why)` when the connection
    /// looks alive but is not (the broker has not acknowledged a publish
    /// for far longer than a round trip: packets lost on a path that looks
    /// open; rumqttc pings only when idle, so a bridge that keeps publishing
    /// never notices). The loop then drops the connection and reconnects,
    /// which resends what was not acknowledged: MQTT resends nothing on a
    /// live connection.
    fn stuck(&mut self, now: Instant) -> Option<String> {
        let _ = now;
        None
    }
}

/// Runs `session` on `connection` until `shutdown` is cancelled.
pub(super) async fn run<S: Session>(
    session: &mut S,
    client: &Client,
    connection: &mut Connection,
    shutdown: &CancellationToken,
    metrics: &Arc<Metrics>,
) {
    let mut delay = MIN_RECONNECT_DELAY;
    let mut connected_at: Option<Instant> = None;
    let mut retry_at: Option<Instant> = None;
    let mut failures = Failures::default();
    loop {
        if let Some(at) = retry_at.take() {
            loop {
                session.hand_over(client);
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep_until(at) => break,
                    work = session.next_work() => session.on_work(work, client),
                }
            }
        }
        let mut abandon = false;
        let polled = {
            let poll = connection.poll();
            tokio::pin!(poll);
            let mut check_at = Instant::now() + STUCK_CHECK;
            loop {
                session.hand_over(client);
                let read = session.read_network();
                tokio::select! {
                    () = shutdown.cancelled() => break None,
                    event = &mut poll, if read => break Some(event),
                    work = session.next_work() => session.on_work(work, client),
                    () = tokio::time::sleep_until(check_at), if connected_at.is_some() => {
                        check_at = Instant::now() + STUCK_CHECK;
                        if let Some(why) = session.stuck(Instant::now()) {
                            // Dropped, not disconnected: a DISCONNECT would
                            // go down the same stuck path.
                            abandon = true;
                            break Some(Err(BrokerError {
                                kind: BrokerErrorKind::Timeout,
                                detail: why,
                            }));
                        }
                    }
                }
            }
        };
        match polled {
            None => return,
            Some(Ok(NetEvent::Connected { session_present })) => {
                connected_at = Some(Instant::now());
                failures.connected(session.name());
                session.on_connected(session_present, client);
            }
            Some(Ok(event)) => session.on_event(event, client),
            Some(Err(failure)) => {
                if abandon {
                    connection.abandon();
                }
                connection.forget_stale_events();
                metrics.mqtt_errors.inc(failure.kind.as_str());
                if connected_at.is_some() {
                    warn!(connection = session.name(), error = %failure, "lost the broker connection; reconnecting");
                } else {
                    failures.failed(session.name(), &failure);
                }
                session.on_disconnected();
                // Only a connection that lasted resets the backoff: one the
                // broker accepts and then drops at once (a duplicate client
                // id, a kick) must not become a reconnect loop.
                if connected_at
                    .take()
                    .is_some_and(|at| at.elapsed() >= STABLE_CONNECTION)
                {
                    delay = MIN_RECONNECT_DELAY;
                }
                retry_at = Some(Instant::now() + jittered(delay));
                delay = (delay * 2).min(MAX_RECONNECT_DELAY);
            }
        }
    }
}

/// Connect failures in a row, logged so an operator sees the cause at once
/// (at ERROR, at the default level) without a line per retry.
#[derive(Debug, Default)]
struct Failures {
    /// Failed attempts since the last connection.
    count: u32,
    /// The last failure's text.
    last: String,
}

impl Failures {
    fn failed(&mut self, name: &str, failure: &BrokerError) {
        self.count += 1;
        let text = failure.to_string();
        if self.count == 1 || text != self.last || self.count.is_power_of_two() {
            error!(connection = name, attempts = self.count, error = %failure, "cannot connect to the broker; retrying");
        }
        self.last = text;
    }

    fn connected(&mut self, name: &str) {
        if self.count > 0 {
            info!(
                connection = name,
                attempts = self.count + 1,
                "connected to the broker"
            );
        }
        self.count = 0;
        self.last.clear();
    }
}

fn jittered(delay: Duration) -> Duration {
    let factor = rand::thread_rng().gen_range(0.5..1.0);
    delay.mul_f64(factor)
}
