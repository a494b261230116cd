//! The poller: polls every agent every `poll.interval`, with starts spread
//! across the interval, at most `poll.concurrency` polls in flight, and a
//! per-agent exponential backoff while an agent's polls fail. It feeds each
//! outcome to the pure status core ([`Tracker`]) and hands the changes it
//! finds to the history writer's [`ChangeQueue`].
//!
//! One task, one deadline queue: the polls in flight are futures of this
//! task, not tasks of their own, so a sleeping agent costs a heap entry, and
//! a reading that did not change stops here (no channel hop, no clone). It
//! never waits on MQTT or the database: the change queue is a mutex held
//! for a map insert.
//!
//! The poller wakes on a grid of ticks ([`tick_for`]: a two-hundredth of
//! the interval, at most 5 ms), not at every agent's own deadline: each
//! wake-up starts every poll due by then. 5,000 agents polled every second
//! then cost 200 wake-ups a second instead of 5,000, and the answers of a
//! tick arrive together. A poll starts at most one tick after its planned
//! time, and the planned times keep their phase, so the lateness never
//! accumulates.
//!
//! Changes are handed to the writer once every poll started has answered
//! (every answer already in is applied first), so the changes of a tick's
//! answers share one commit (one fsync, one write of each page they
//! touch); a poll still out holds them at most [`HOLD_MAX`]. With the
//! batch a single hand-over to the history thread, this measured a few
//! points of a core less and a shorter tail than a commit for every group
//! of answers that happened to arrive together (`docs/performance.md`,
//! ninth round; with the 20-ms tick and a dozen round trips per commit
//! a fixed hold had cost more than it saved, sixth and seventh rounds).
//!
//! What a poll does is the [`AgentSource`]'s job (the Belfabriek client);
//! what it means is the tracker's.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt as _};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::clock::Clock;
use crate::config::{AgentConfig, PollConfig};
use crate::history::pending::Pushed;
use crate::history::ChangeQueue;
use crate::metrics::Metrics;
use crate::model::{AgentId, AgentReading};
use crate::status::{Observation, Tracker};

/// Something that can poll one agent's status (the Belfabriek client).
pub trait AgentSource: Send + Sync + 'static {
    /// The error of a failed poll.
    type Error: std::fmt::Display + Send;

    /// Polls one agent.
    fn poll(
        &self,
        agent: &AgentConfig,
    ) -> impl Future<Output = Result<AgentReading, Self::Error>> + Send;

    /// A short name for the kind of a failure (for metrics), e.g. `timeout`.
    fn error_kind(error: &Self::Error) -> &'static str;
}

/// Which agents the poller polls, when several bridges share them (the
/// cluster coordinator sends these).
#[derive(Debug, Clone, PartialEq)]
pub enum PollerControl {
    /// Start polling these agents from these states (taken over).
    Gained(Vec<crate::model::AgentState>),
    /// Stop polling these agents (another bridge has them).
    Lost(Vec<crate::model::AgentId>),
}

/// Polls a set of agents until cancelled.
pub struct Poller<S> {
    /// Where readings come from.
    source: Arc<S>,
    /// The agents to poll.
    agents: Arc<[AgentConfig]>,
    /// Interval, concurrency, backoff.
    config: PollConfig,
    /// The status core, with every agent's current state.
    tracker: Tracker,
    /// Where changes go (the history writer).
    changes: ChangeQueue,
    /// Shared counters.
    metrics: Arc<Metrics>,
    /// The wall clock, never going backwards.
    clock: Clock,
    /// Which agents to poll, when they change at run time (several
    /// bridges); `None` polls every agent from the start.
    control: Option<mpsc::Receiver<PollerControl>>,
}

/// One agent's place in the schedule.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// When its current or next poll was planned.
    planned: Instant,
    /// Consecutive failed polls.
    failures: u32,
    /// Polled by this bridge now.
    active: bool,
    /// Bumped when the agent is (re)gained: schedule entries and polls of
    /// an earlier generation are stale.
    generation: u32,
}

impl<S: AgentSource> Poller<S> {
    /// A poller for `agents`, starting from `tracker`'s states.
    pub fn new(
        source: Arc<S>,
        agents: Vec<AgentConfig>,
        config: PollConfig,
        tracker: Tracker,
        changes: ChangeQueue,
        metrics: Arc<Metrics>,
        clock: Clock,
    ) -> Self {
        Self {
            source,
            agents: agents.into(),
            config,
            tracker,
            changes,
            metrics,
            clock,
            control: None,
        }
    }

    /// Polls only the agents `control` says, from none at the start.
    pub fn controlled_by(mut self, control: mpsc::Receiver<PollerControl>) -> Self {
        self.control = Some(control);
        self
    }

    /// Runs [`Poller::run`] on a thread of its own, with a single-threaded
    /// runtime that owns the poll connections and the tick timer: the
    /// answers of a tick are read by the thread that sent the requests,
    /// with no task stolen between threads and no other worker woken for
    /// them. The returned handle finishes with the poller (an error when
    /// it panicked or its thread could not start).
    pub fn spawn_on_own_thread(
        self,
        shutdown: CancellationToken,
    ) -> std::io::Result<tokio::sync::oneshot::Receiver<()>> {
        let (done, finished) = tokio::sync::oneshot::channel();
        let (started, start) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("pbx2mqtt-poller".into())
            .spawn(move || {
                // Built (and dropped) on its own thread, never inside the
                // caller's runtime.
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = started.send(Err(error));
                        return;
                    }
                };
                let _ = started.send(Ok(()));
                runtime.block_on(self.run(shutdown));
                let _ = done.send(());
            })?;
        // Waits the microseconds the runtime takes to build.
        start
            .recv()
            .map_err(|_| std::io::Error::other("the poller's thread ended at start"))??;
        Ok(finished)
    }

    /// Polls until `shutdown`; polls in flight then are dropped (their
    /// outcome would only be stale).
    pub async fn run(mut self, shutdown: CancellationToken) {
        let count = self.agents.len();
        let start = Instant::now();
        let spread = self.config.interval / u32::try_from(count.max(1)).unwrap_or(u32::MAX);
        let all_active = self.control.is_none();
        let mut slots: Vec<Slot> = (0..count)
            .map(|index| Slot {
                planned: start + spread * u32::try_from(index).unwrap_or(u32::MAX),
                failures: 0,
                active: all_active,
                generation: 0,
            })
            .collect();
        // Only control orders name agents by id: a bridge polling every
        // agent alone never looks one up.
        let index_of: HashMap<AgentId, usize> = match self.control {
            Some(_) => self
                .agents
                .iter()
                .enumerate()
                .map(|(index, agent)| (agent.id.clone(), index))
                .collect(),
            None => HashMap::new(),
        };
        let mut due: BinaryHeap<Reverse<(Instant, usize, u32)>> = slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| slot.active)
            .map(|(index, slot)| Reverse((slot.planned, index, 0)))
            .collect();
        let concurrency = self.config.concurrency.max(1);
        let tick = tick_for(self.config.interval);
        let (source, agents) = (self.source.clone(), self.agents.clone());
        let poll = |index: usize, generation: u32| {
            let source = source.clone();
            let agents = agents.clone();
            async move {
                let started = Instant::now();
                let outcome = source.poll(&agents[index]).await;
                (index, generation, outcome, started.elapsed())
            }
        };
        let mut control = self.control.take();
        let mut in_flight = FuturesUnordered::new();
        // Since when changes wait that the writer was not yet woken for.
        let mut held_since: Option<Instant> = None;
        loop {
            let now = Instant::now();
            while in_flight.len() < concurrency {
                match due.peek() {
                    Some(Reverse((at, _, _))) if *at <= now => {
                        let Some(Reverse((_, index, generation))) = due.pop() else {
                            break;
                        };
                        let slot = &slots[index];
                        if slot.active && slot.generation == generation {
                            in_flight.push(poll(index, generation));
                        }
                    }
                    _ => break,
                }
            }
            let next_due = (in_flight.len() < concurrency)
                .then(|| {
                    due.peek()
                        .map(|Reverse((at, _, _))| on_grid(start, *at, tick))
                })
                .flatten();
            tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    // The writer commits what waits when it stops.
                    self.changes.release();
                    return;
                }
                Some(order) = next_control(&mut control) => {
                    self.control_order(order, &mut slots, &index_of, &mut due, spread);
                }
                Some((index, generation, outcome, took)) = in_flight.next(), if !in_flight.is_empty() => {
                    let slot = slots[index];
                    if !slot.active || slot.generation != generation {
                        continue; // Lost (or lost and regained) meanwhile.
                    }
                    let (failed, pushed) = self.apply(index, outcome, took);
                    if pushed && held_since.is_none() {
                        held_since = Some(Instant::now());
                    }
                    let slot = &mut slots[index];
                    slot.failures = if failed { slot.failures.saturating_add(1) } else { 0 };
                    slot.planned = next_poll(&self.config, slot.planned, Instant::now(), slot.failures);
                    due.push(Reverse((slot.planned, index, generation)));
                }
                // Polled only when no answer is ready (the select is biased)
                // and no poll is out: the changes of a tick's answers share
                // a commit.
                () = std::future::ready(()), if held_since.is_some() && in_flight.is_empty() => {
                    self.changes.release();
                    held_since = None;
                }
                // A poll still out holds none of them longer than this.
                () = sleep_until(held_since.map(|since| since + HOLD_MAX)), if held_since.is_some() => {
                    self.changes.release();
                    held_since = None;
                }
                () = sleep_until(next_due), if next_due.is_some() => {}
            }
        }
    }

    /// Applies a change of the agents to poll.
    fn control_order(
        &mut self,
        order: PollerControl,
        slots: &mut [Slot],
        index_of: &HashMap<AgentId, usize>,
        due: &mut BinaryHeap<Reverse<(Instant, usize, u32)>>,
        spread: Duration,
    ) {
        match order {
            PollerControl::Gained(states) => {
                let start = Instant::now();
                for (position, state) in states.into_iter().enumerate() {
                    let Some(&index) = index_of.get(&state.agent) else {
                        continue;
                    };
                    let slot = &mut slots[index];
                    slot.active = true;
                    slot.failures = 0;
                    slot.generation = slot.generation.wrapping_add(1);
                    // Spread like at start, so a take-over is no burst.
                    slot.planned = start + spread * u32::try_from(position).unwrap_or(u32::MAX);
                    due.push(Reverse((slot.planned, index, slot.generation)));
                    self.tracker.insert(state);
                }
            }
            PollerControl::Lost(agents) => {
                for agent in agents {
                    if let Some(&index) = index_of.get(&agent) {
                        slots[index].active = false;
                        self.tracker.remove(&agent);
                    }
                }
            }
        }
    }

    /// Feeds one poll's outcome to the tracker and queues the change it
    /// finds, without waking the writer yet; whether the poll failed, and
    /// whether a change was queued.
    fn apply(
        &mut self,
        index: usize,
        outcome: Result<AgentReading, S::Error>,
        took: Duration,
    ) -> (bool, bool) {
        let agent = &self.agents[index];
        self.metrics.poll_duration.observe(took);
        let (observation, failed) = match outcome {
            Ok(reading) => {
                Metrics::inc(&self.metrics.polls_ok);
                (Observation::Reading(reading), false)
            }
            Err(error) => {
                Metrics::inc(&self.metrics.polls_failed);
                self.metrics.poll_error(S::error_kind(&error));
                let failures = self.tracker.failures(&agent.id).saturating_add(1);
                // The first failure and every tenth are worth a warning; the
                // rest are debug, so an outage does not flood the log.
                if failures == 1 || failures.is_multiple_of(10) {
                    warn!(agent = %agent.id, failures, %error, "poll failed");
                } else {
                    debug!(agent = %agent.id, failures, %error, "poll failed");
                }
                (Observation::Failed, true)
            }
        };
        let Some(change) = self
            .tracker
            .observe(&agent.id, observation, self.clock.now())
        else {
            return (failed, false);
        };
        if change.previous.is_some() {
            debug!(agent = %change.state.agent, to = %change.state.status, "transition");
        }
        match self.changes.push_held(change) {
            Pushed::Merged => {
                Metrics::inc(&self.metrics.history_merged);
                let merged = self.changes.merged();
                if merged.is_power_of_two() {
                    tracing::error!(
                        merged,
                        "the history database has been unavailable for long: transitions are being merged (history keeps each agent's latest status; statuses in between are lost)"
                    );
                }
            }
            Pushed::Queued | Pushed::Coalesced => {}
        }
        Metrics::set(&self.metrics.history_queue_depth, self.changes.len() as u64);
        (failed, true)
    }
}

/// The longest a change waits for polls still out before it is handed to
/// the writer: about the time a tick's polls take to answer at 5,000
/// agents, well under the 5-ms latency target (3 ms measured a longer
/// tail, 1 ms more commits; `docs/performance.md`, ninth round).
const HOLD_MAX: Duration = Duration::from_millis(2);

/// The next order on the control channel; never completes without one.
async fn next_control(
    control: &mut Option<mpsc::Receiver<PollerControl>>,
) -> Option<PollerControl> {
    match control {
        Some(receiver) => match receiver.recv().await {
            Some(order) => Some(order),
            None => {
                *control = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
}

/// The poller's wake-up grid for `interval`: a two-hundredth of it, between
/// 1 ms and 5 ms. At 5,000 agents every second a tick's answers queue
/// behind the commit in progress: without a hold, a 20-ms tick measured
/// p99 5.1–6.3 ms, 5 ms 3.4–3.9 ms for 4–6 more points of a core, 2 ms no
/// better for 5 more (`docs/performance.md`, sixth round; on a machine
/// starved of CPU the shorter tick's extra commits cost tail instead,
/// seventh round).
fn tick_for(interval: Duration) -> Duration {
    (interval / 200).clamp(Duration::from_millis(1), Duration::from_millis(5))
}

/// The first point of the grid (`start`, then every `tick`) at or after `at`.
fn on_grid(start: Instant, at: Instant, tick: Duration) -> Instant {
    let tick_nanos = tick.as_nanos().max(1);
    let offset = at.saturating_duration_since(start).as_nanos();
    let ticks = offset.div_ceil(tick_nanos);
    let nanos = u64::try_from(ticks.saturating_mul(tick_nanos)).unwrap_or(u64::MAX);
    start + Duration::from_nanos(nanos)
}

/// Sleeps until `at`; never completes for `None`.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The next poll after one planned for `planned` that finished at `now`
/// with `failures` consecutive failures so far.
fn next_poll(config: &PollConfig, planned: Instant, now: Instant, failures: u32) -> Instant {
    if failures == 0 {
        // Keep the phase; if we fell behind, poll again right away rather
        // than bunching up several catch-up polls.
        return (planned + config.interval).max(now);
    }
    now + backoff(config.interval, config.max_backoff, failures)
}

/// `interval · 2^(failures-1)`, capped at `max_backoff` (never below the
/// interval).
fn backoff(interval: Duration, max_backoff: Duration, failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    interval
        .saturating_mul(factor)
        .min(max_backoff.max(interval))
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt as _;

    use super::*;

    #[test]
    fn backoff_doubles_from_the_interval_and_is_capped() {
        let second = Duration::from_secs(1);
        let cap = Duration::from_secs(10);
        let got: Vec<u64> = (1..=6).map(|n| backoff(second, cap, n).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 10, 10]);
        assert_eq!(backoff(second, cap, u32::MAX), cap);
        // A cap below the interval never polls faster than the interval.
        assert_eq!(backoff(second, Duration::from_millis(1), 3), second);
    }

    /// Answers an agent `-` (not available) once the gate is open to the
    /// number in its extension id, never before; counts the polls started.
    struct Gated {
        gate: tokio::sync::watch::Receiver<u64>,
        started: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl AgentSource for Gated {
        type Error = String;

        fn poll(
            &self,
            agent: &AgentConfig,
        ) -> impl Future<Output = Result<AgentReading, String>> + Send {
            let needed: u64 = agent.extension_id.parse().unwrap_or(0);
            let mut gate = self.gate.clone();
            self.started
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async move {
                gate.wait_for(|open| *open >= needed)
                    .await
                    .map_err(|_| "the gate was dropped".to_owned())?;
                Ok(AgentReading {
                    available: false,
                    reason: "-".to_owned(),
                    destination: None,
                    extension_status: None,
                })
            }
        }

        fn error_kind(_: &String) -> &'static str {
            "test"
        }
    }

    /// How many changes wait when the writer is first woken, for agents
    /// answering once the gate is open to their `gates`, after every poll
    /// started and the gate was opened to 1 (in one step: the answers it
    /// lets through are ready together). Fails if the writer is woken
    /// more than once for them; when every poll answered, if it is not
    /// woken within the poller's next turns (no timer); when one is still
    /// out, if it is woken before the hold or not within a second.
    async fn waiting_at_first_hand_over(gates: &[u64]) -> usize {
        let all_answer = gates.iter().all(|&gate| gate <= 1);
        let agents: Vec<AgentConfig> = gates
            .iter()
            .enumerate()
            .map(|(index, gate)| AgentConfig {
                id: AgentId::parse(&format!("agent{index}")).unwrap(),
                name: None,
                extension_id: gate.to_string(),
                sup_id: None,
                man_id: None,
                cust_id: None,
                queue_extension: None,
            })
            .collect();
        let now = chrono::Utc::now();
        let tracker = Tracker::new(
            agents.iter().map(|agent| {
                crate::status::unknown_state(agent.id.clone(), agent.id.to_string(), now)
            }),
            crate::config::default_reasons(),
            3,
        );
        let config = PollConfig {
            interval: Duration::from_millis(100),
            concurrency: 16,
            stale_after: 3,
            max_backoff: Duration::from_secs(3600),
        };
        let (open, gate) = tokio::sync::watch::channel(0);
        let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let changes = ChangeQueue::new();
        let poller = Poller::new(
            Arc::new(Gated {
                gate,
                started: started.clone(),
            }),
            agents,
            config,
            tracker,
            changes.clone(),
            Arc::new(Metrics::default()),
            Clock::system(),
        );
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(poller.run(shutdown.clone()));
        let all_started = async {
            while started.load(std::sync::atomic::Ordering::Relaxed) < gates.len() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), all_started)
            .await
            .expect("every agent's first poll starts");
        assert!(changes.is_empty(), "a change before the gate opened");
        open.send_replace(1);
        // The poller was woken by the gate; yielding lets it run (a few
        // times over, in case its coop budget split the work) without any
        // timer firing in between on this single thread.
        let opened = Instant::now();
        let mut woken = false;
        for _ in 0..8 {
            tokio::task::yield_now().await;
            if changes.pushed().now_or_never().is_some() {
                woken = true;
                break;
            }
        }
        if all_answer {
            assert!(woken, "the writer was not woken in the poller's next turns");
        } else {
            assert!(
                !woken,
                "the writer was woken before the hold for the poll still out"
            );
            tokio::time::timeout(Duration::from_secs(1), changes.pushed())
                .await
                .expect("the hold ends without the poll still out");
            assert!(opened.elapsed() >= HOLD_MAX, "woken before the hold ended");
        }
        let waiting = changes.len();
        assert!(
            changes.pushed().now_or_never().is_none(),
            "the writer was woken more than once for answers ready together"
        );
        shutdown.cancel();
        task.await.unwrap();
        waiting
    }

    #[tokio::test]
    async fn a_ticks_answers_reach_the_writer_together_and_a_slow_poll_holds_them_briefly() {
        // Every poll answered at once: one wake-up of the writer finds the
        // three changes, at once.
        assert_eq!(waiting_at_first_hand_over(&[1, 1, 1]).await, 3);
        // One agent's poll stays out (its gate never opens that far): the
        // others' changes are handed over after the hold, without it.
        assert_eq!(waiting_at_first_hand_over(&[2, 1, 1]).await, 2);
    }

    #[test]
    fn wake_ups_fall_on_a_grid_of_ticks_never_before_the_deadline() {
        assert_eq!(tick_for(Duration::from_secs(1)), Duration::from_millis(5));
        assert_eq!(
            tick_for(Duration::from_millis(400)),
            Duration::from_millis(2)
        );
        assert_eq!(
            tick_for(Duration::from_millis(10)),
            Duration::from_millis(1)
        );
        assert_eq!(tick_for(Duration::from_secs(60)), Duration::from_millis(5));
        let start = Instant::now();
        let tick = Duration::from_millis(20);
        let at = |ms| start + Duration::from_millis(ms);
        assert_eq!(on_grid(start, at(0), tick), at(0));
        assert_eq!(on_grid(start, at(1), tick), at(20));
        assert_eq!(on_grid(start, at(20), tick), at(20));
        assert_eq!(on_grid(start, at(39), tick), at(40));
        // Many deadlines, few wake-ups: 1,000 agents spread over a second.
        let wakes: std::collections::BTreeSet<Instant> =
            (0..1000).map(|ms| on_grid(start, at(ms), tick)).collect();
        assert_eq!(wakes.len(), 51);
    }

    #[test]
    fn the_schedule_keeps_its_phase_and_never_plans_in_the_past() {
        let config = PollConfig {
            interval: Duration::from_secs(2),
            concurrency: 1,
            stale_after: 3,
            max_backoff: Duration::from_secs(60),
        };
        let start = Instant::now();
        let late = start + Duration::from_millis(300);
        assert_eq!(
            next_poll(&config, start, late, 0),
            start + Duration::from_secs(2)
        );
        let very_late = start + Duration::from_secs(5);
        assert_eq!(next_poll(&config, start, very_late, 0), very_late);
        assert_eq!(
            next_poll(&config, start, late, 2),
            late + Duration::from_secs(4)
        );
    }
}
