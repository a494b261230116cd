//! The PBX simulator: both upstream APIs of `upstream-apis.md` on one HTTP
//! port, with virtual agents, fault injection and request counting. It is
//! what `pbx2mqtt simulate`, `demo`, the tests and the benchmarks run
//! against.
//!
//! - `POST /xml/agent/xml.asp`: the Belfabriek XML-RPC API ([`belfabriek`]).
//! - `GET /pbx/proxyapi.php`: the TRiNG proxy API ([`tring`]).
//! - `/control/...`: JSON control for tools and the CLI: `POST
//!   /control/agents/{ext}` (a [`VirtualState`]; freezes the agent), `DELETE
//!   /control/agents/{ext}` (resume auto movement), `GET /control/agents`,
//!   `POST /control/faults` (a [`Fault`]), `GET`/`DELETE /control/faults`,
//!   `GET /control/stats` ([`RequestCounts`], with per-agent poll gaps),
//!   `DELETE /control/poll-gaps` (reset the gaps), `GET /control/poll-log`
//!   (a [`PollLog`]: per agent, which user agents polled it, how often and
//!   when; `?window=2s` lists as `overlaps` the agents polled by two
//!   different user agents less than 2 s apart), `DELETE /control/poll-log`
//!   (reset it), `GET`/`PUT /control/queues/{queue}`, `POST /control/clock`
//!   (`{"advance":"1m"}`).
//!
//! The simulator's cost bounds every benchmark of the bridge, so serving a
//! poll is kept lean by design: the server runs on its own thread with a
//! single-threaded runtime, frames HTTP/1.1 itself into reused buffers
//! ([`server`], [`http`]), scans request bodies for the few members it reads
//! and writes answers from the real service's layout ([`belfabriek`]), and
//! counts with atomics. Virtual agents ([`agents`]) move lazily: an agent's
//! state machine is advanced to "now" when it is read, under its own mutex,
//! so thousands of agents cost nothing between polls and requests never
//! share a global lock. This module owns the simulated services only; it
//! must not depend on the bridge's clients, so it stays an independent
//! stand-in for the real APIs.

pub mod agents;
pub mod belfabriek;
mod control;
pub mod faults;
mod http;
pub mod poll_gaps;
pub mod poll_log;
mod server;
pub mod tring;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use agents::VirtualState;
pub use faults::{Api, Fault, FaultKind};
pub use poll_gaps::PollGaps;
pub use poll_log::PollLog;
pub use tring::QueueMember;

use agents::{SimClock, VirtualAgent};
use faults::FaultTable;
use poll_gaps::PollGapRecorder;
use poll_log::{ClientId, PollLogRecorder};
use tring::{Queues, TringAccount, TringAction};

/// The Belfabriek API path.
pub const BELFABRIEK_PATH: &str = "/xml/agent/xml.asp";
/// The TRiNG API path.
pub const TRING_PATH: &str = "/pbx/proxyapi.php";

/// How the simulator runs (`pbx2mqtt simulate ...`).
#[derive(Debug, Clone, clap::Args)]
pub struct SimulatorConfig {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    /// Number of virtual agents.
    #[arg(long, default_value_t = 24)]
    pub agents: u32,
    /// Belfabriek extension id of the first agent (then +1 per agent).
    #[arg(long, default_value_t = 1001)]
    pub first_extension: u32,
    /// TRiNG extension of the first agent (then +1 per agent).
    #[arg(long, default_value_t = 201)]
    pub first_tring_extension: u32,
    /// Belfabriek account PIN the requests must carry.
    #[arg(long, default_value = "1234")]
    pub account_pin: String,
    /// TRiNG API key the requests must carry.
    #[arg(long, default_value = "simkey")]
    pub tring_key: String,
    /// TRiNG tenant code.
    #[arg(long, default_value = "SIM")]
    pub tenant: String,
    /// Whether agents move through states on their own (`--auto false` to
    /// keep them offline until set through the control API).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub auto: bool,
    /// Mean time an agent stays in one state (exponentially distributed).
    /// Transitions per second are about agents / mean dwell.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub mean_dwell: Duration,
    /// Seed for the agents' random movement (random when absent).
    #[arg(long)]
    pub seed: Option<u64>,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8090)),
            agents: 24,
            first_extension: 1001,
            first_tring_extension: 201,
            account_pin: "1234".to_owned(),
            tring_key: "simkey".to_owned(),
            tenant: "SIM".to_owned(),
            auto: true,
            mean_dwell: Duration::from_secs(20),
            seed: None,
        }
    }
}

/// Errors of the simulator's control methods.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimulatorError {
    /// No virtual agent has that Belfabriek extension id.
    #[error("unknown virtual agent {0:?}: use a Belfabriek extension id the simulator serves (see `agents()`)")]
    UnknownAgent(String),
    /// The configuration cannot work.
    #[error("invalid simulator configuration: {0}")]
    InvalidConfig(String),
}

/// One virtual agent's identifiers, for generating a bridge configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtualAgentInfo {
    /// Belfabriek extension id (`1001`, ...).
    pub ext_id: String,
    /// TRiNG extension (`201`, ...).
    pub tring_extension: String,
    /// Display name (`Agent 1001`).
    pub name: String,
}

/// A virtual agent as `GET /control/agents` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSnapshot {
    /// Who the agent is.
    #[serde(flatten)]
    pub info: VirtualAgentInfo,
    /// What the Belfabriek API says about it now.
    pub state: VirtualState,
    /// True while its state was set from outside (no auto movement).
    pub frozen: bool,
    /// State changes made so far.
    pub changes: u64,
}

/// Requests received, per API and per method or action (`GET
/// /control/stats`). Every request that reached the endpoint counts,
/// whether it was valid, faulted or rejected.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCounts {
    /// Requests on `/xml/agent/xml.asp`.
    pub belfabriek: u64,
    /// Requests on `/pbx/proxyapi.php`.
    pub tring: u64,
    /// Belfabriek requests per method: `ivr.getAgentAvail`,
    /// `general.getExtensionStatus`, `other` (unknown or undecodable).
    pub belfabriek_methods: BTreeMap<String, u64>,
    /// TRiNG requests per action: `add`, `del`, `clean`, `list`,
    /// `listqueues`, `other`.
    pub tring_actions: BTreeMap<String, u64>,
    /// Requests that got an injected fault (latency included).
    pub faults_applied: u64,
    /// Time between successive `ivr.getAgentAvail` requests per agent,
    /// since the last `DELETE /control/poll-gaps`.
    #[serde(default)]
    pub poll_gaps: PollGaps,
}

impl RequestCounts {
    /// Belfabriek requests of `method` (0 when none).
    pub fn method(&self, method: &str) -> u64 {
        self.belfabriek_methods.get(method).copied().unwrap_or(0)
    }

    /// TRiNG requests of `action` (0 when none).
    pub fn action(&self, action: &str) -> u64 {
        self.tring_actions.get(action).copied().unwrap_or(0)
    }
}

/// The Belfabriek methods counted separately, in counter order.
const COUNTED_METHODS: [&str; 3] = [
    belfabriek::GET_AGENT_AVAIL,
    belfabriek::GET_EXTENSION_STATUS,
    "other",
];

/// Lock-free request counters.
#[derive(Debug, Default)]
struct Counters {
    /// Belfabriek requests.
    belfabriek: AtomicU64,
    /// TRiNG requests.
    tring: AtomicU64,
    /// Per entry of [`COUNTED_METHODS`].
    methods: [AtomicU64; 3],
    /// Per entry of [`TringAction::ALL`].
    actions: [AtomicU64; 6],
    /// Requests that got a fault.
    faults_applied: AtomicU64,
}

impl Counters {
    fn count_method(&self, method: &str) {
        let index = COUNTED_METHODS
            .iter()
            .position(|known| *known == method)
            .unwrap_or(COUNTED_METHODS.len() - 1);
        self.belfabriek.fetch_add(1, Ordering::Relaxed);
        self.methods[index].fetch_add(1, Ordering::Relaxed);
    }

    fn count_action(&self, action: TringAction) {
        let index = TringAction::ALL
            .iter()
            .position(|known| *known == action)
            .unwrap_or(TringAction::ALL.len() - 1);
        self.tring.fetch_add(1, Ordering::Relaxed);
        self.actions[index].fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> RequestCounts {
        RequestCounts {
            belfabriek: self.belfabriek.load(Ordering::Relaxed),
            tring: self.tring.load(Ordering::Relaxed),
            belfabriek_methods: COUNTED_METHODS
                .iter()
                .zip(&self.methods)
                .map(|(name, count)| ((*name).to_owned(), count.load(Ordering::Relaxed)))
                .collect(),
            tring_actions: TringAction::ALL
                .iter()
                .zip(&self.actions)
                .map(|(action, count)| (action.as_str().to_owned(), count.load(Ordering::Relaxed)))
                .collect(),
            faults_applied: self.faults_applied.load(Ordering::Relaxed),
            poll_gaps: PollGaps::default(),
        }
    }
}

/// Everything the handlers share.
#[derive(Debug)]
struct Shared {
    /// The Belfabriek account PIN.
    account_pin: String,
    /// The TRiNG key and tenant.
    tring_account: TringAccount,
    /// Whether agents move on their own.
    auto: bool,
    /// Mean dwell per state, in microseconds.
    mean_dwell_micros: u64,
    /// Simulated time.
    clock: SimClock,
    /// One lock per agent, in extension order.
    agents: Vec<Mutex<VirtualAgent>>,
    /// The agents' identifiers, same order.
    infos: Vec<VirtualAgentInfo>,
    /// The Belfabriek extension id of the first agent (the others follow).
    first_extension: u32,
    /// The TRiNG queues.
    queues: Mutex<Queues>,
    /// Armed faults.
    faults: FaultTable,
    /// Request counters.
    counters: Counters,
    /// Time between polls per agent, same order as `agents`.
    poll_gaps: PollGapRecorder,
    /// Who polled each agent when, same order as `agents`.
    poll_log: PollLogRecorder,
}

/// Locks a mutex whose data stays valid even if a holder panicked (plain
/// values replaced wholesale), so poisoning is ignored.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    fn new(config: &SimulatorConfig) -> Result<Self, SimulatorError> {
        let invalid = |message: &str| Err(SimulatorError::InvalidConfig(message.to_owned()));
        if config.mean_dwell.is_zero() {
            return invalid("mean_dwell must be greater than zero");
        }
        if config.tenant.is_empty() || config.tring_key.is_empty() || config.account_pin.is_empty()
        {
            return invalid("account_pin, tring_key and tenant must not be empty");
        }
        if config.first_extension.checked_add(config.agents).is_none()
            || config
                .first_tring_extension
                .checked_add(config.agents)
                .is_none()
        {
            return invalid("too many agents for the first extension numbers");
        }
        let mean_dwell_micros = u64::try_from(config.mean_dwell.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let seed = config.seed.unwrap_or_else(rand::random);
        let clock = SimClock::new();
        let now = clock.now_micros();
        let mut agents = Vec::with_capacity(config.agents as usize);
        let mut infos = Vec::with_capacity(config.agents as usize);
        for offset in 0..config.agents {
            let number = config.first_extension + offset;
            let agent_seed = seed ^ u64::from(number).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            agents.push(Mutex::new(VirtualAgent::new(
                number,
                agent_seed,
                config.auto,
                now,
                mean_dwell_micros,
            )));
            infos.push(VirtualAgentInfo {
                ext_id: number.to_string(),
                tring_extension: (config.first_tring_extension + offset).to_string(),
                name: format!("Agent {number}"),
            });
        }
        let poll_gaps = PollGapRecorder::new(config.agents as usize);
        let poll_log = PollLogRecorder::new(config.agents as usize, poll_gaps.origin());
        Ok(Self {
            account_pin: config.account_pin.clone(),
            tring_account: TringAccount {
                key: config.tring_key.clone(),
                tenant: config.tenant.clone(),
            },
            auto: config.auto,
            mean_dwell_micros,
            clock,
            agents,
            infos,
            first_extension: config.first_extension,
            queues: Mutex::new(Queues::default()),
            faults: FaultTable::default(),
            counters: Counters::default(),
            poll_gaps,
            poll_log,
        })
    }

    /// The index of the agent with Belfabriek extension id `ext_id`: its
    /// number written plainly (no sign, no leading zero), within range.
    fn index_of(&self, ext_id: &str) -> Option<usize> {
        let canonical = !ext_id.is_empty()
            && ext_id.bytes().all(|b| b.is_ascii_digit())
            && (ext_id == "0" || !ext_id.starts_with('0'));
        if !canonical {
            return None;
        }
        let number: u32 = ext_id.parse().ok()?;
        let index = usize::try_from(number.checked_sub(self.first_extension)?).ok()?;
        (index < self.agents.len()).then_some(index)
    }

    /// Runs `f` on the agent at `index` (which must exist), advanced to now.
    fn with_agent_at<R>(&self, index: usize, f: impl FnOnce(&mut VirtualAgent) -> R) -> R {
        let mut agent = lock(&self.agents[index]);
        agent.advance_to(self.clock.now_micros(), self.mean_dwell_micros, self.auto);
        f(&mut agent)
    }

    /// Runs `f` on the agent with Belfabriek extension id `ext_id`, advanced
    /// to now.
    fn with_agent<R>(&self, ext_id: &str, f: impl FnOnce(&mut VirtualAgent) -> R) -> Option<R> {
        let index = self.index_of(ext_id)?;
        Some(self.with_agent_at(index, f))
    }

    /// Notes an `ivr.getAgentAvail` request about the agent at `index` by
    /// `client`: its poll gap and the poll log.
    fn record_poll(&self, index: usize, client: ClientId) {
        let now = self.poll_gaps.now_micros();
        self.poll_gaps.record_at(index, now);
        self.poll_log.record(index, client, now);
    }

    /// The poll log, with overlaps closer than `window`.
    fn poll_log_snapshot(&self, window: Option<Duration>) -> PollLog {
        self.poll_log
            .snapshot(window, |index| self.infos[index].ext_id.clone())
    }

    /// Request counts with the poll gaps.
    fn stats(&self) -> RequestCounts {
        RequestCounts {
            poll_gaps: self.poll_gaps_snapshot(),
            ..self.counters.snapshot()
        }
    }

    fn poll_gaps_snapshot(&self) -> PollGaps {
        self.poll_gaps
            .snapshot(|index| self.infos[index].ext_id.clone())
    }

    fn agent_state(&self, ext_id: &str) -> Option<VirtualState> {
        self.with_agent(ext_id, |agent| agent.state())
    }

    fn set_agent(&self, ext_id: &str, state: VirtualState) -> Result<VirtualState, SimulatorError> {
        self.with_agent(ext_id, |agent| {
            agent.freeze(state);
            agent.state()
        })
        .ok_or_else(|| SimulatorError::UnknownAgent(ext_id.to_owned()))
    }

    fn resume_agent(&self, ext_id: &str) -> Result<VirtualState, SimulatorError> {
        let now = self.clock.now_micros();
        self.with_agent(ext_id, |agent| {
            agent.resume(now, self.mean_dwell_micros);
            agent.state()
        })
        .ok_or_else(|| SimulatorError::UnknownAgent(ext_id.to_owned()))
    }

    fn snapshot(&self, index: usize) -> AgentSnapshot {
        self.with_agent_at(index, |agent| AgentSnapshot {
            info: self.infos[index].clone(),
            state: agent.state(),
            frozen: agent.is_frozen(),
            changes: agent.changes(),
        })
    }

    /// True when a TRiNG `extension` parameter is about the agent a fault
    /// names (its TRiNG extension, or the very value).
    fn tring_request_matches_agent(&self, extension: Option<&str>, agent: &str) -> bool {
        let Some(extension) = extension else {
            return false;
        };
        extension == agent
            || self
                .index_of(agent)
                .is_some_and(|index| self.infos[index].tring_extension == extension)
    }
}

/// A running simulator. Cheap to clone; every clone controls the same
/// server.
#[derive(Debug, Clone)]
pub struct Simulator {
    /// State shared with the HTTP handlers.
    shared: Arc<Shared>,
    /// The bound address.
    addr: SocketAddr,
    /// Cancelled when the server has stopped.
    stopped: CancellationToken,
    /// The server's error, if it stopped with one.
    failure: Arc<Mutex<Option<String>>>,
}

impl Simulator {
    /// Binds `config.listen` (port 0 allowed), starts serving both APIs and
    /// the control API, and returns. The server stops when `shutdown` is
    /// cancelled, or when the runtime `start` was called on shuts down.
    ///
    /// The server runs on a thread of its own with a single-threaded
    /// runtime: it never competes with the caller's tasks for a worker, and
    /// on a 2-core machine it costs less than a share of a multi-threaded
    /// runtime (no work stealing, no cross-thread wake-ups). When it stops,
    /// connections still open are closed at once.
    pub async fn start(
        config: SimulatorConfig,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Simulator> {
        let shared = Arc::new(Shared::new(&config)?);
        let listener = std::net::TcpListener::bind(config.listen).with_context(|| {
            format!(
                "cannot listen on {} for the simulator: is the port in use?",
                config.listen
            )
        })?;
        listener
            .set_nonblocking(true)
            .context("cannot make the simulator's socket non-blocking")?;
        let addr = listener
            .local_addr()
            .context("cannot read the simulator's bound address")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the simulator's runtime")?;
        let simulator = Simulator {
            shared: Arc::clone(&shared),
            addr,
            stopped: CancellationToken::new(),
            failure: Arc::new(Mutex::new(None)),
        };

        // Stop with the caller's runtime too, as a server spawned on it
        // would: its tasks are dropped when it shuts down, and this one
        // cancels `stop` as it goes.
        let stop = shutdown.child_token();
        let caller_gone = stop.clone().drop_guard();
        tokio::spawn(async move {
            let _caller_gone = caller_gone;
            std::future::pending::<()>().await
        });

        let stopped = simulator.stopped.clone();
        let failure = Arc::clone(&simulator.failure);
        std::thread::Builder::new()
            .name("pbx-simulator".to_owned())
            .spawn(move || {
                let served = runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    server::serve(listener, shared, stop).await;
                    Ok::<_, std::io::Error>(())
                });
                // Closes every connection still open.
                drop(runtime);
                if let Err(error) = served {
                    tracing::error!(%error, "pbx simulator stopped with an error");
                    *lock(&failure) = Some(error.to_string());
                }
                stopped.cancel();
            })
            .context("cannot start the simulator's thread")?;

        tracing::info!(
            belfabriek_url = %simulator.belfabriek_url(),
            tring_url = %simulator.tring_url(),
            control_url = %format!("http://{addr}/control"),
            agents = config.agents,
            auto = config.auto,
            mean_dwell = %humantime::format_duration(config.mean_dwell),
            tenant = %config.tenant,
            "pbx simulator listening"
        );
        Ok(simulator)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR/xml/agent/xml.asp`.
    pub fn belfabriek_url(&self) -> String {
        format!("http://{}{BELFABRIEK_PATH}", self.addr)
    }

    /// `http://ADDR/pbx/proxyapi.php`.
    pub fn tring_url(&self) -> String {
        format!("http://{}{TRING_PATH}", self.addr)
    }

    /// `http://ADDR/control`.
    pub fn control_url(&self) -> String {
        format!("http://{}/control", self.addr)
    }

    /// The virtual agents' identifiers, in extension order.
    pub fn agents(&self) -> Vec<VirtualAgentInfo> {
        self.shared.infos.clone()
    }

    /// `[[agents]]` tables for a bridge configuration serving every virtual
    /// agent, with ids `<id_prefix><ext_id>` (used by the demo and tests).
    pub fn agents_toml(&self, id_prefix: &str) -> String {
        self.agents()
            .iter()
            .map(|agent| {
                format!(
                    "[[agents]]\nid = \"{id_prefix}{ext}\"\nname = {name:?}\nextension_id = \"{ext}\"\nqueue_extension = \"{queue}\"\n",
                    ext = agent.ext_id,
                    name = agent.name,
                    queue = agent.tring_extension,
                )
            })
            .collect()
    }

    /// Every agent with its current state.
    pub fn snapshots(&self) -> Vec<AgentSnapshot> {
        (0..self.shared.infos.len())
            .map(|index| self.shared.snapshot(index))
            .collect()
    }

    /// Sets an agent's state (as served from the next request on) and stops
    /// its auto movement. A `None` destination keeps the current one.
    /// Returns the state now served.
    pub fn set_agent(
        &self,
        ext_id: &str,
        state: VirtualState,
    ) -> Result<VirtualState, SimulatorError> {
        self.shared.set_agent(ext_id, state)
    }

    /// Lets a frozen agent move on its own again (when `auto` is on).
    pub fn resume_agent(&self, ext_id: &str) -> Result<VirtualState, SimulatorError> {
        self.shared.resume_agent(ext_id)
    }

    /// The state an agent is served with now (`None`: unknown agent).
    pub fn agent_state(&self, ext_id: &str) -> Option<VirtualState> {
        self.shared.agent_state(ext_id)
    }

    /// Moves simulated time forward: auto-moving agents make every change
    /// due in that time at their next read.
    pub fn advance_clock(&self, by: Duration) {
        self.shared.clock.advance(by);
    }

    /// Arms a fault.
    pub fn inject(&self, fault: Fault) {
        self.shared.faults.inject(fault);
    }

    /// Disarms every fault.
    pub fn clear_faults(&self) {
        self.shared.faults.clear();
    }

    /// The armed faults.
    pub fn faults(&self) -> Vec<Fault> {
        self.shared.faults.list()
    }

    /// Requests received so far, with the poll gaps since the last
    /// [`Simulator::reset_poll_gaps`].
    pub fn counts(&self) -> RequestCounts {
        self.shared.stats()
    }

    /// Forgets the poll gaps measured so far (the request counts stay), to
    /// start a measurement window.
    pub fn reset_poll_gaps(&self) {
        self.shared.poll_gaps.reset();
    }

    /// The poll log since the last [`Simulator::reset_poll_log`]: per agent,
    /// which user agents polled it, how often and when; as `overlaps`, the
    /// agents polled by two different user agents less than `window` apart
    /// (`None`: at any distance). `GET /control/poll-log?window=...`.
    pub fn poll_log(&self, window: Option<Duration>) -> PollLog {
        self.shared.poll_log_snapshot(window)
    }

    /// Forgets every poll logged so far, to start a measurement window
    /// (`DELETE /control/poll-log`).
    pub fn reset_poll_log(&self) {
        self.shared.poll_log.reset();
    }

    /// The extensions in `queue`, in the order they were added.
    pub fn queue_members(&self, queue: &str) -> Vec<String> {
        self.queue_entries(queue)
            .into_iter()
            .map(|member| member.extension)
            .collect()
    }

    /// The members of `queue` with their kind (agent or custom destination).
    pub fn queue_entries(&self, queue: &str) -> Vec<QueueMember> {
        lock(&self.shared.queues).members(queue).to_vec()
    }

    /// Replaces the members of `queue` with these extensions (as agents, not
    /// custom destinations).
    pub fn set_queue_members<I>(&self, queue: &str, extensions: I)
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let members = extensions
            .into_iter()
            .map(|extension| QueueMember {
                extension: extension.as_ref().to_owned(),
                custom: false,
            })
            .collect();
        lock(&self.shared.queues).set_members(queue, members);
    }

    /// Resolves when the server has stopped (after `shutdown` was cancelled,
    /// or on a fatal error).
    pub async fn stopped(&self) {
        self.stopped.cancelled().await;
    }

    /// Waits until the server has stopped; the error if it failed.
    pub async fn join(&self) -> anyhow::Result<()> {
        self.stopped().await;
        match lock(&self.failure).clone() {
            Some(error) => Err(anyhow::anyhow!("pbx simulator failed: {error}")),
            None => Ok(()),
        }
    }
}
