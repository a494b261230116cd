//! Wiring: builds every component from the configuration, connects them with
//! bounded channels, runs them, and shuts them down in order.
//!
//! ```text
//! poller ─PollResult→ tracker ─Change→ history writer ─Committed→ mqtt connection
//! mqtt connection ─Incoming→ dispatcher ─Outgoing→ mqtt connection
//! ```
//!
//! Shutdown runs downstream: the poller stops first, the tracker then hands
//! its last changes to the writer, the writer commits them and closes the
//! history, the dispatcher finishes in-flight commands, and the MQTT
//! connection publishes what is left, then `offline`.

pub mod tracker;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use chrono::Utc;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::belfabriek::BelfabriekClient;
use crate::commands::Dispatcher;
use crate::config::Config;
use crate::history::HistoryWriter;
use crate::http::{HttpServer, HttpState};
use crate::latest::LatestStates;
use crate::metrics::Metrics;
use crate::mqtt::connection::{BridgeInfo, ConnectionChannels, MqttConnection, StartingPoint};
use crate::mqtt::options::mqtt_options;
use crate::mqtt::state::UNACKED_EVENTS_LIMIT;
use crate::mqtt::topics::Topics;
use crate::poller::Poller;
use crate::status::Tracker;
use crate::store::{DailyTotals, Store};
use crate::tring::TringClient;

use self::tracker::TrackerTask;

/// Poll results waiting for the tracker. The tracker is pure and fast, so a
/// small buffer only absorbs bursts when many polls finish together.
const POLL_RESULTS_CAPACITY: usize = 1024;

/// Changes waiting for the history writer: one batch's worth, twice. Beyond
/// this the tracker spills into its own queue, so the poller never waits.
const HISTORY_QUEUE_CAPACITY: usize = 8192;

/// Committed changes waiting for the MQTT connection, which always drains.
const COMMITTED_CAPACITY: usize = 8192;

/// Request messages waiting for the dispatcher.
const REQUESTS_CAPACITY: usize = 256;

/// Responses waiting for the MQTT connection.
const RESPONSES_CAPACITY: usize = 256;

/// A built, not yet running bridge. Building opens the database, resumes
/// history and binds the HTTP port, so tests can learn the real address
/// before anything runs.
pub struct Application {
    /// The configuration.
    config: Config,
    /// The history store.
    store: Store,
    /// The bound HTTP server, unless `http.listen` is empty.
    http: Option<HttpServer>,
    /// Latest state of every agent.
    latest: LatestStates,
    /// Shared counters.
    metrics: Arc<Metrics>,
    /// Where each agent's state starts (resumed from history).
    tracker: Tracker,
    /// The last `seq` recorded.
    last_seq: u64,
    /// Events the broker had not acknowledged when the bridge last stopped.
    unacknowledged: Vec<crate::model::TransitionEvent>,
    /// Every event up to this seq was acknowledged.
    acked_seq: u64,
}

impl Application {
    /// Opens the store, resumes from history and binds the HTTP server.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let mut store = Store::open(&config.database.url)
            .await
            .context("cannot open the history database (database.url)")?;
        let started = std::time::Instant::now();
        match store
            .keep_daily_totals(config.report.tz())
            .await
            .context("cannot prepare the per-day report totals")?
        {
            DailyTotals::Current => {}
            DailyTotals::Rebuilt { intervals } => info!(
                intervals,
                timezone = %config.report.timezone,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "per-day report totals rebuilt from history"
            ),
        }
        let agents: Vec<_> = config
            .agents
            .iter()
            .map(|agent| (agent.id.clone(), agent.display_name().to_owned()))
            .collect();
        let resume = store
            .resume(&agents, Utc::now())
            .await
            .context("cannot resume from history")?;
        // Before the first mark was stored, assume everything was delivered.
        let acked_seq = store
            .acked_seq()
            .await
            .context("cannot read the acknowledged event mark")?
            .unwrap_or(resume.last_seq);
        let unacknowledged = store
            .events_after(acked_seq, UNACKED_EVENTS_LIMIT)
            .await
            .context("cannot read unacknowledged events")?;
        let latest = LatestStates::default();
        for state in &resume.states {
            latest.update(state.clone());
        }
        let metrics = Arc::new(Metrics::default());
        let tracker = Tracker::new(
            resume.states.clone(),
            config.status.reasons.clone(),
            config.poll.stale_after,
        );
        let http = if config.http.listen.is_empty() {
            None
        } else {
            // Checked by config validation; the error names the key anyway.
            let listen: SocketAddr = config.http.listen.parse().context("http.listen")?;
            let state = HttpState::new(
                store.clone(),
                latest.clone(),
                metrics.clone(),
                &config.report,
                &config.agents,
            );
            Some(HttpServer::bind(listen, state).await?)
        };
        Ok(Self {
            config,
            store,
            http,
            latest,
            metrics,
            tracker,
            last_seq: resume.last_seq,
            unacknowledged,
            acked_seq,
        })
    }

    /// The address the HTTP server listens on.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(HttpServer::local_addr)
    }

    /// The latest state of every agent.
    pub fn latest(&self) -> LatestStates {
        self.latest.clone()
    }

    /// The shared counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Runs the bridge until `shutdown` is cancelled, then stops every part
    /// in order (see the module doc).
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let config = self.config;
        let topics = Topics::new(config.mqtt.base_topic.clone());
        let options = mqtt_options(&config.mqtt, &topics);
        let belfabriek = Arc::new(
            BelfabriekClient::new(
                &config.belfabriek,
                config.account_pin(),
                config.poll.concurrency,
            )
            .context("cannot build the Belfabriek client")?,
        );
        let tring = TringClient::new(&config.tring, config.tring_key())
            .context("cannot build the TRiNG client")?;

        let (poll_tx, poll_rx) = mpsc::channel(POLL_RESULTS_CAPACITY);
        let (history_tx, history_rx) = mpsc::channel(HISTORY_QUEUE_CAPACITY);
        let (committed_tx, committed_rx) = mpsc::channel(COMMITTED_CAPACITY);
        let (requests_tx, requests_rx) = mpsc::channel(REQUESTS_CAPACITY);
        let (responses_tx, responses_rx) = mpsc::channel(RESPONSES_CAPACITY);
        let (acked_tx, acked_rx) = watch::channel(self.acked_seq);

        let info = BridgeInfo::new(config.agents.len(), topics.base(), Utc::now());
        let connection = MqttConnection::new(
            options,
            topics.clone(),
            info,
            StartingPoint {
                states: self.latest.snapshot(),
                events: self.unacknowledged,
                acked_seq: self.acked_seq,
            },
            ConnectionChannels {
                committed: committed_rx,
                responses: responses_rx,
                requests: requests_tx,
                acked: acked_tx,
            },
            self.metrics.clone(),
            config.commands.max_payload_bytes,
        );
        let writer = HistoryWriter::new(
            self.store.clone(),
            history_rx,
            committed_tx,
            self.last_seq,
            self.latest.clone(),
            self.metrics.clone(),
        )
        .with_acked(acked_rx.clone());
        let dispatcher = Dispatcher::new(&config, tring, self.store.clone(), self.metrics.clone());
        let poller = Poller::new(
            belfabriek,
            config.agents.clone(),
            config.poll.clone(),
            poll_tx,
            self.metrics.clone(),
        );
        let tracker = TrackerTask::new(self.tracker, poll_rx, history_tx, self.metrics.clone());

        // Each stage stops on its own token, cancelled in order below.
        let writer_stop = CancellationToken::new();
        let mqtt_stop = CancellationToken::new();
        let mqtt = tokio::spawn(connection.run(mqtt_stop.clone()));
        let writer = tokio::spawn(writer.run(writer_stop.clone()));
        let tracker = tokio::spawn(tracker.run());
        let dispatcher = tokio::spawn(dispatcher.run(requests_rx, responses_tx, shutdown.clone()));
        let poller = tokio::spawn(poller.run(shutdown.clone()));
        let http = self
            .http
            .map(|server| tokio::spawn(server.run(shutdown.clone())));
        info!(agents = config.agents.len(), "bridge running");

        shutdown.cancelled().await;
        info!("shutting down");
        poller.await.context("poller task panicked")?;
        tracker.await.context("tracker task panicked")?;
        writer_stop.cancel();
        writer.await.context("history writer task panicked")?;
        dispatcher.await.context("dispatcher task panicked")?;
        mqtt_stop.cancel();
        mqtt.await.context("mqtt task panicked")?;
        // The connection flushed after the writer stopped: store its final
        // mark (the writer is gone, so this is still the only writer).
        let acked = *acked_rx.borrow();
        if let Err(error) = self.store.store_acked_seq(acked).await {
            tracing::warn!(%error, "cannot store the acknowledged event mark");
        }
        if let Some(http) = http {
            http.await.context("http task panicked")??;
        }
        self.store.close().await;
        info!("stopped");
        Ok(())
    }
}
