//! Wiring: builds every component from the configuration, connects them,
//! runs them, and shuts them down in order within `bridge.shutdown_timeout`.
//!
//! ```text
//! poller (+ status core) ─ChangeQueue→ history writer ─LatestStates→ publisher ─→ broker
//!                                                                  └→ HTTP API, wallboard stream
//! broker ─→ command connection ─requests→ dispatcher ─responses→ command connection
//!                                            └→ audit writer, membership task ─LatestStates→ publisher
//! ```
//!
//! Every hand-over is bounded: the change queue and [`LatestStates`] hold
//! at most a few entries per agent (folded per agent while a reader is
//! slow), the request and response channels and the audit queue have named
//! capacities below.
//!
//! Shutdown runs downstream: the poller stops first; the writer commits what
//! waits and closes the history at the stop time; the dispatcher answers
//! what it received; the command connection publishes those answers; the
//! publisher publishes what is committed, then `offline`.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::belfabriek::BelfabriekClient;
use crate::clock::Clock;
use crate::cluster::{Coordinator, Timings};
use crate::commands::audit::AuditWriter;
use crate::commands::membership::{MembershipTask, RefreshRequests};
use crate::commands::{Dispatcher, SharedTransactions};
use crate::config::Config;
use crate::history::{ChangeQueue, ClusterMember, HistoryWriter};
use crate::homeassistant::Discovery;
use crate::http::{HttpServer, HttpState};
use crate::latest::LatestStates;
use crate::metrics::Metrics;
use crate::mqtt::commands::{CommandConnection, Presence, Subscriptions};
use crate::mqtt::publisher::{BridgeInfo, Publisher, PublisherParts};
use crate::mqtt::settings::{self, BrokerOptions};
use crate::mqtt::topics::Topics;
use crate::poller::Poller;
use crate::status::Tracker;
use crate::store::{DailyTotals, ResumedAgents, Store};
use crate::tring::TringClient;

/// Request messages waiting for the dispatcher. The dispatcher answers a
/// refusal in microseconds, so this only absorbs bursts; when it is full the
/// command connection stops reading and the broker holds the rest.
const REQUESTS_CAPACITY: usize = 1024;

/// Responses waiting for the command connection, which always drains them.
const RESPONSES_CAPACITY: usize = 1024;

/// How often the allocator's free pages go back to the system (see
/// `malloc.rs`).
const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Orders from the cluster coordinator to the poller waiting at most.
const CONTROL_CAPACITY: usize = 64;

/// Fencing reports from the history writer to the coordinator waiting at
/// most. The writer never waits on it: a report that finds it full is
/// dropped, and the coordinator's next tick finds the lost leases anyway.
const FENCED_CAPACITY: usize = 16;

/// The shared subscription group of the request topics when several
/// bridges share the work: each request goes to one of them.
const SHARE_GROUP: &str = "pbx2mqtt";

/// Added to `bridge.shutdown_timeout` for the final flush to the broker
/// after the history writer used its share.
const SHUTDOWN_MARGIN: std::time::Duration = std::time::Duration::from_secs(4);

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
    /// What is committed: states, recent events, queue members.
    latest: LatestStates,
    /// Shared counters.
    metrics: Arc<Metrics>,
    /// Where each agent's state starts (resumed from history).
    tracker: Tracker,
    /// The last `seq` recorded.
    last_seq: u64,
    /// Every event up to this seq was acknowledged by the broker.
    acked_seq: u64,
    /// The wall clock, never going backwards.
    clock: Clock,
    /// Several bridges share the database (PostgreSQL): agents are polled
    /// by the bridge holding their lease (see [`crate::cluster`]).
    cluster: Option<Timings>,
    /// SQLite: the lock that keeps a second bridge off the file, held while
    /// the bridge runs.
    _single_bridge: Option<std::fs::File>,
}

impl Application {
    /// Opens the store, resumes from history and binds the HTTP server.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        Self::build_with_clock(config, Clock::system()).await
    }

    /// [`Application::build`] with a given clock (tests).
    pub async fn build_with_clock(config: Config, clock: Clock) -> anyhow::Result<Self> {
        let single_bridge = Store::lock_single_bridge(&config.database.url)?;
        let mut store = Store::open(&config.database.url)
            .await
            .context("cannot open the history database (database.url)")?;
        let cluster = store
            .is_shared()
            .then(|| Timings::from_takeover(config.bridge.takeover_after));
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
        let resume = if cluster.is_some() {
            // Agents come with their leases, once the bridge runs.
            ResumedAgents {
                states: Vec::new(),
                last_seq: store.last_seq().await.context("cannot read the last seq")?,
            }
        } else {
            store
                .resume(&agents, clock.now())
                .await
                .context("cannot resume from history")?
        };
        // Nothing is ever stamped before the history already stored.
        for state in &resume.states {
            clock.raise_to(state.since.max(state.updated));
        }
        if clock.behind_ms() > 0 {
            tracing::warn!(
                behind_ms = clock.behind_ms(),
                "the system clock is behind the stored history; time stands still until it catches up"
            );
        }
        // Before the first mark was stored, assume everything was delivered.
        let acked_seq = store
            .acked_seq(&config.bridge.id)
            .await
            .context("cannot read the acknowledged event mark")?
            .unwrap_or(resume.last_seq);
        let latest = LatestStates::new(resume.states.clone(), resume.last_seq);
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
            let mut state = HttpState::new(
                store.clone(),
                latest.clone(),
                metrics.clone(),
                &config.report,
                &config.agents,
            );
            state.request_timeout = config.http.request_timeout;
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
            acked_seq,
            clock,
            cluster,
            _single_bridge: single_bridge,
        })
    }

    /// The address the HTTP server listens on.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(HttpServer::local_addr)
    }

    /// What is committed: every agent's state, recent events, queues.
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
        let mut config = self.config;
        let topics = Topics::new(config.mqtt.base_topic.clone());
        let broker = BrokerOptions::from_config(&config.mqtt);
        let publisher_settings =
            settings::publisher(&config.mqtt, &broker, &topics).context("mqtt TLS settings")?;
        let commands_settings = settings::commands(
            &config.mqtt,
            &broker,
            topics.bridge_member_state(&config.bridge.id),
        )
        .context("mqtt TLS settings")?;
        let belfabriek = Arc::new(
            BelfabriekClient::for_bridge(
                &config.belfabriek,
                config.account_pin(),
                config.poll.concurrency,
                &config.bridge.id,
            )
            .context("cannot build the Belfabriek client")?,
        );
        let tring = TringClient::new(&config.tring, config.tring_key())
            .context("cannot build the TRiNG client")?;
        let shutdown_timeout = config.bridge.shutdown_timeout;

        let changes = ChangeQueue::new();
        let (requests_tx, requests_rx) = mpsc::channel(REQUESTS_CAPACITY);
        let (responses_tx, responses_rx) = mpsc::channel(RESPONSES_CAPACITY);
        let (acked_tx, acked_rx) = watch::channel(self.acked_seq);
        let rediscover = Arc::new(Notify::new());
        let reannounce = Arc::new(Notify::new());
        let refresh = RefreshRequests::default();

        let agent_extensions: Vec<_> = config
            .agents
            .iter()
            .filter_map(|agent| {
                agent
                    .queue_extension
                    .clone()
                    .map(|extension| (agent.id.clone(), extension))
            })
            .collect();
        let discovery = config.homeassistant.enabled.then(|| Discovery {
            prefix: config.homeassistant.discovery_prefix.clone(),
            base: config.mqtt.base_topic.clone(),
            agents: config
                .agents
                .iter()
                .map(|agent| (agent.id.clone(), agent.display_name().to_owned()))
                .collect(),
            queues: config.commands.allowed_queues.clone(),
            agents_with_extension: agent_extensions.iter().map(|(id, _)| id.clone()).collect(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        });
        let subscriptions = Subscriptions {
            requests: topics.request_filters().to_vec(),
            ha_status: config
                .homeassistant
                .enabled
                .then(|| config.homeassistant.status_topic.clone()),
            discovery: discovery
                .as_ref()
                .map(|discovery| (discovery.own_configs_filter(), discovery.current_configs())),
            shared_group: self.cluster.map(|_| SHARE_GROUP.to_owned()),
            presence: Presence {
                own: topics.bridge_member_state(&config.bridge.id),
                overall: self.cluster.map(|_| topics.bridge_state()),
                reannounce: reannounce.clone(),
            },
        };
        let publisher = Publisher::new(PublisherParts {
            topics: topics.clone(),
            info: BridgeInfo::new(config.agents.len(), topics.base(), self.clock.now()),
            discovery,
            subscription: self.latest.subscribe(),
            store: self.store.clone(),
            bridge: config.bridge.id.clone(),
            acked_seq: self.acked_seq,
            acked: acked_tx,
            rediscover: rediscover.clone(),
            reannounce,
            agent_extensions: agent_extensions.clone(),
            metrics: self.metrics.clone(),
        });
        let commands = CommandConnection::new(
            subscriptions,
            requests_tx,
            responses_rx,
            rediscover,
            config.commands.max_payload_bytes,
            self.metrics.clone(),
        );
        let writer = HistoryWriter::new(
            self.store.clone(),
            changes.clone(),
            self.last_seq,
            self.latest.clone(),
            self.metrics.clone(),
            self.clock.clone(),
            shutdown_timeout,
        )
        .with_acked(acked_rx.clone());
        let (fenced_tx, fenced_rx) = mpsc::channel(FENCED_CAPACITY);
        let writer = writer.as_bridge(
            &config.bridge.id,
            self.cluster.map(|timings| ClusterMember {
                lease_ms: timings.lease_ms(),
                lost: fenced_tx,
            }),
        );
        let retention =
            (!config.commands.audit_retention.is_zero()).then_some(config.commands.audit_retention);
        let (audit_writer, audit) =
            AuditWriter::new(self.store.clone(), retention, self.metrics.clone());
        let membership = MembershipTask::new(
            tring.clone(),
            config.commands.allowed_queues.clone(),
            agent_extensions,
            self.latest.clone(),
            config.commands.membership_interval,
            refresh.clone(),
            self.clock.clone(),
        );
        let mut dispatcher = Dispatcher::new(&config, tring, audit, refresh, self.metrics.clone());
        if let Some(timings) = self.cluster {
            dispatcher = dispatcher.shared_with(SharedTransactions {
                store: self.store.clone(),
                bridge: config.bridge.id.clone(),
                window: config.commands.dedup_window,
                alive: timings.lease,
            });
        }
        let agent_count = config.agents.len();
        let coordinated_agents: Vec<_> = match self.cluster {
            Some(_) => config
                .agents
                .iter()
                .map(|agent| (agent.id.clone(), agent.display_name().to_owned()))
                .collect(),
            None => Vec::new(),
        };
        // The poller is the agent list's last reader: it takes it rather
        // than keep a second copy for the bridge's lifetime.
        let poller = Poller::new(
            belfabriek,
            std::mem::take(&mut config.agents),
            config.poll.clone(),
            self.tracker,
            changes,
            self.metrics.clone(),
            self.clock.clone(),
        );
        let (poller, coordinator) = match self.cluster {
            None => (poller, None),
            Some(timings) => {
                let (control_tx, control_rx) = mpsc::channel(CONTROL_CAPACITY);
                let coordinator = Coordinator::new(
                    self.store.clone(),
                    config.bridge.id.clone(),
                    coordinated_agents,
                    timings,
                    control_tx,
                    self.latest.clone(),
                    fenced_rx,
                    self.clock.clone(),
                    self.metrics.clone(),
                );
                (poller.controlled_by(control_rx), Some(coordinator))
            }
        };

        // Each stage stops on its own token, cancelled in order below.
        let writer_stop = CancellationToken::new();
        let publisher_stop = CancellationToken::new();
        let commands_stop = CancellationToken::new();
        let (client, connection) = crate::mqtt::client::new(&publisher_settings, 256);
        let publisher = tokio::spawn(publisher.run(client, connection, publisher_stop.clone()));
        let (client, connection) = crate::mqtt::client::new(&commands_settings, 256);
        let commands =
            tokio::spawn(commands.run(client, connection, commands_stop.clone(), shutdown_timeout));
        let writer = tokio::spawn(writer.run(writer_stop.clone()));
        let audit_writer = tokio::spawn(audit_writer.run());
        let membership = tokio::spawn(membership.run(shutdown.clone()));
        let dispatcher = tokio::spawn(dispatcher.run(requests_rx, responses_tx));
        let poller = poller
            .spawn_on_own_thread(shutdown.clone())
            .context("cannot start the poller's thread")?;
        let coordinator =
            coordinator.map(|coordinator| tokio::spawn(coordinator.run(shutdown.clone())));
        let http = self
            .http
            .map(|server| tokio::spawn(server.run(shutdown.clone())));
        tokio::spawn(crate::malloc::trim_every(TRIM_EVERY, shutdown.clone()));
        tokio::spawn(crate::store::keep_wal_short(
            self.store.clone(),
            crate::store::CHECKPOINT_EVERY,
            shutdown.clone(),
        ));
        info!(
            agents = agent_count,
            bridge = %config.bridge.id,
            several_bridges = self.cluster.is_some(),
            "bridge running"
        );

        shutdown.cancelled().await;
        info!(
            timeout_ms = shutdown_timeout.as_millis() as u64,
            "shutting down"
        );
        let ordered = async {
            poller.await.context("the poller panicked")?;
            // No coordination step may run once the writer leaves.
            if let Some(coordinator) = coordinator {
                coordinator.await.context("cluster coordinator panicked")?;
            }
            membership.await.context("membership task panicked")?;
            writer_stop.cancel();
            commands_stop.cancel();
            writer.await.context("history writer task panicked")?;
            dispatcher.await.context("dispatcher task panicked")?;
            commands.await.context("command connection task panicked")?;
            audit_writer.await.context("audit writer task panicked")?;
            publisher_stop.cancel();
            publisher.await.context("publisher task panicked")?;
            anyhow::Ok(())
        };
        // Every stage bounds its own waiting; this is the backstop. What is
        // still running then is dropped: the broker publishes the last will.
        match tokio::time::timeout(shutdown_timeout + SHUTDOWN_MARGIN, ordered).await {
            Ok(result) => result?,
            Err(_) => tracing::error!(
                timeout_ms = shutdown_timeout.as_millis() as u64,
                "shutdown took longer than bridge.shutdown_timeout; stopping anyway"
            ),
        }
        // The publisher flushed after the writer stopped: store its final
        // mark (the writer is gone, so this is still the only writer).
        let acked = *acked_rx.borrow();
        if let Err(error) = self.store.store_acked_seq(&config.bridge.id, acked).await {
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
