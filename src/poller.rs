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
//! The poller wakes on a grid of ticks ([`tick_for`]: a fiftieth of the
//! interval, at most 20 ms), not at every agent's own deadline: each wake-up
//! starts every poll due by then. 5,000 agents polled every second then cost
//! 50 wake-ups a second instead of 5,000, their answers arrive together, and
//! the history writer commits the transitions of a tick in one transaction.
//! A poll starts at most one tick after its planned time, and the planned
//! times keep their phase, so the lateness never accumulates.
//!
//! The changes of a tick are handed to the writer together: held in the
//! queue until the tick's last poll answered, or [`HOLD_MAX`] after the
//! first of them, whichever comes first. One commit (one fsync) then carries
//! them all, instead of the first change starting a commit that the rest of
//! the tick waits behind before getting one of their own.
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

/// The longest a change waits in the queue for the rest of its tick's polls
/// before the writer is woken anyway (a slow poll does not hold back the
/// others' changes).
pub const HOLD_MAX: Duration = Duration::from_millis(3);

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
    /// How long changes are held for the rest of their tick ([`HOLD_MAX`]).
    hold_max: Duration,
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
            hold_max: HOLD_MAX,
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
        // When the oldest change not yet handed to the writer was pushed.
        let mut held_since: Option<Instant> = None;
        loop {
            if held_since.is_some() && in_flight.is_empty() {
                self.changes.release();
                held_since = None;
            }
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
                () = sleep_until(next_due), if next_due.is_some() => {}
                () = sleep_until(held_since.map(|since| since + self.hold_max)), if held_since.is_some() => {
                    self.changes.release();
                    held_since = None;
                }
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

    /// Feeds one poll's outcome to the tracker and queues (holds) the change
    /// it finds; whether the poll failed, and whether a change was queued.
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

/// The poller's wake-up grid for `interval`: a fiftieth of it, between
/// 1 ms and 20 ms.
fn tick_for(interval: Duration) -> Duration {
    (interval / 50).clamp(Duration::from_millis(1), Duration::from_millis(20))
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

    /// Answers every agent `-` (not available) after the delay in its
    /// extension id (milliseconds).
    struct Delayed;

    impl AgentSource for Delayed {
        type Error = String;

        fn poll(
            &self,
            agent: &AgentConfig,
        ) -> impl Future<Output = Result<AgentReading, String>> + Send {
            let delay = Duration::from_millis(agent.extension_id.parse().unwrap_or(0));
            async move {
                tokio::time::sleep(delay).await;
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

    /// When the writer is first woken by a poller holding changes at most
    /// `hold_max`, over agents answering after `delays_ms` (their first polls
    /// spread over the first half of `interval`); and how many changes wait
    /// then.
    async fn first_hand_over(
        delays_ms: &[u64],
        interval: Duration,
        hold_max: Duration,
    ) -> (Duration, usize) {
        let agents: Vec<AgentConfig> = delays_ms
            .iter()
            .enumerate()
            .map(|(index, delay)| AgentConfig {
                id: AgentId::parse(&format!("agent{index}")).unwrap(),
                name: None,
                extension_id: delay.to_string(),
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
            interval,
            concurrency: 16,
            stale_after: 3,
            max_backoff: Duration::from_secs(3600),
        };
        let changes = ChangeQueue::new();
        let mut poller = Poller::new(
            Arc::new(Delayed),
            agents,
            config,
            tracker,
            changes.clone(),
            Arc::new(Metrics::default()),
            Clock::system(),
        );
        poller.hold_max = hold_max;
        let shutdown = CancellationToken::new();
        let start = Instant::now();
        let task = tokio::spawn(poller.run(shutdown.clone()));
        changes.pushed().await;
        let woken = (start.elapsed(), changes.len());
        shutdown.cancel();
        task.await.unwrap();
        woken
    }

    #[tokio::test]
    async fn a_ticks_changes_reach_the_writer_together_or_after_the_hold() {
        // Two agents, polls starting at 0 and 20 ms: the second answers at
        // 21 ms while the first is still out (until 30 ms). Its change is
        // held, and both go to the writer together.
        let interval = Duration::from_millis(40);
        let (at, waiting) = first_hand_over(&[30, 1], interval, Duration::from_secs(30)).await;
        assert_eq!(waiting, 2, "woken after {at:?}");
        assert!(at >= Duration::from_millis(30), "{at:?}");
        // A slow poll holds the others' changes back only for the hold.
        let hold = Duration::from_millis(200);
        let (at, waiting) = first_hand_over(&[5_000, 1], interval, hold).await;
        assert_eq!(waiting, 1, "woken after {at:?}");
        assert!(
            at >= Duration::from_millis(221) && at < Duration::from_secs(5),
            "{at:?}"
        );
    }

    #[test]
    fn wake_ups_fall_on_a_grid_of_ticks_never_before_the_deadline() {
        assert_eq!(tick_for(Duration::from_secs(1)), Duration::from_millis(20));
        assert_eq!(
            tick_for(Duration::from_millis(200)),
            Duration::from_millis(4)
        );
        assert_eq!(
            tick_for(Duration::from_millis(10)),
            Duration::from_millis(1)
        );
        assert_eq!(tick_for(Duration::from_secs(60)), Duration::from_millis(20));
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
