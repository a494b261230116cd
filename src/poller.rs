//! The poller: polls every agent every `poll.interval`, with starts spread
//! across the interval, at most `poll.concurrency` polls in flight, and a
//! per-agent exponential backoff while an agent's polls fail.
//!
//! It owns scheduling only: what a poll does is the [`AgentSource`]'s job
//! (the Belfabriek client), what a result means is the tracker's. It never
//! waits on MQTT or the database: its only output is a channel to the
//! tracker, which never blocks for long (the tracker is pure and spills).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn, Instrument};

use crate::config::{AgentConfig, PollConfig};
use crate::metrics::Metrics;
use crate::model::{AgentId, AgentReading};
use crate::status::Observation;

/// Something that can poll one agent's status (the Belfabriek client).
pub trait AgentSource: Send + Sync + 'static {
    /// The error of a failed poll.
    type Error: std::fmt::Display + Send;

    /// Polls one agent.
    fn poll(
        &self,
        agent: &AgentConfig,
    ) -> impl Future<Output = Result<AgentReading, Self::Error>> + Send;
}

/// One poll's outcome, for the tracker.
#[derive(Debug, Clone, PartialEq)]
pub struct PollResult {
    /// The agent polled.
    pub agent: AgentId,
    /// What the poll found.
    pub observation: Observation,
    /// When the poll completed.
    pub at: DateTime<Utc>,
}

/// Polls a set of agents until cancelled.
pub struct Poller<S> {
    /// Where readings come from.
    source: Arc<S>,
    /// The agents to poll.
    agents: Vec<AgentConfig>,
    /// Interval, concurrency, backoff.
    config: PollConfig,
    /// Results go to the tracker.
    results: mpsc::Sender<PollResult>,
    /// Shared counters.
    metrics: Arc<Metrics>,
}

impl<S: AgentSource> Poller<S> {
    /// A poller for `agents`.
    pub fn new(
        source: Arc<S>,
        agents: Vec<AgentConfig>,
        config: PollConfig,
        results: mpsc::Sender<PollResult>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            source,
            agents,
            config,
            results,
            metrics,
        }
    }

    /// Runs one task per agent until `shutdown`; returns when all stopped.
    pub async fn run(self, shutdown: CancellationToken) {
        let limit = Arc::new(Semaphore::new(self.config.concurrency));
        let tasks = TaskTracker::new();
        let count = self.agents.len().max(1) as u32;
        let start = Instant::now();
        for (index, agent) in self.agents.into_iter().enumerate() {
            let schedule = AgentSchedule {
                interval: self.config.interval,
                max_backoff: self.config.max_backoff,
                first: start + self.config.interval / count * index as u32,
            };
            let span = tracing::debug_span!("agent", agent = %agent.id);
            tasks.spawn(
                poll_agent(
                    agent,
                    schedule,
                    self.source.clone(),
                    limit.clone(),
                    self.results.clone(),
                    self.metrics.clone(),
                    shutdown.clone(),
                )
                .instrument(span),
            );
        }
        tasks.close();
        tasks.wait().await;
    }
}

/// When one agent is polled.
#[derive(Debug, Clone, Copy)]
struct AgentSchedule {
    /// The normal gap between polls.
    interval: Duration,
    /// The longest gap while failing.
    max_backoff: Duration,
    /// The first poll (spread across the first interval).
    first: Instant,
}

impl AgentSchedule {
    /// The next poll after one planned for `planned` that finished at `now`
    /// with `failures` consecutive failures so far.
    fn next(&self, planned: Instant, now: Instant, failures: u32) -> Instant {
        if failures == 0 {
            // Keep the phase; if we fell behind, poll again right away
            // rather than bunching up several catch-up polls.
            let next = planned + self.interval;
            return next.max(now);
        }
        now + backoff(self.interval, self.max_backoff, failures)
    }
}

/// `interval · 2^(failures-1)`, capped at `max_backoff` (never below the
/// interval).
fn backoff(interval: Duration, max_backoff: Duration, failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    interval
        .saturating_mul(factor)
        .min(max_backoff.max(interval))
}

async fn poll_agent<S: AgentSource>(
    agent: AgentConfig,
    schedule: AgentSchedule,
    source: Arc<S>,
    limit: Arc<Semaphore>,
    results: mpsc::Sender<PollResult>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut planned = schedule.first;
    let mut failures = 0u32;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(planned) => {}
        }
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            // Boxed: a task's size is that of its largest await point, and
            // the HTTP future is large. Inline, each of thousands of mostly
            // sleeping agent tasks would reserve it; boxed, only the polls in
            // flight (at most `poll.concurrency`) hold one.
            outcome = Box::pin(async {
                // The semaphore is never closed, so acquire cannot fail.
                let _permit = limit.acquire().await;
                source.poll(&agent).await
            }) => outcome,
        };
        let observation = match outcome {
            Ok(reading) => {
                if failures > 0 {
                    debug!(failures, "poll recovered");
                }
                failures = 0;
                Metrics::inc(&metrics.polls_ok);
                Observation::Reading(reading)
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                Metrics::inc(&metrics.polls_failed);
                // The first failure and every tenth are worth a warning; the
                // rest are debug, so an outage does not flood the log.
                if failures == 1 || failures % 10 == 0 {
                    warn!(agent = %agent.id, failures, %error, "poll failed");
                } else {
                    debug!(agent = %agent.id, failures, %error, "poll failed");
                }
                Observation::Failed
            }
        };
        let result = PollResult {
            agent: agent.id.clone(),
            observation,
            at: Utc::now(),
        };
        if results.send(result).await.is_err() {
            return;
        }
        planned = schedule.next(planned, Instant::now(), failures);
    }
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

    #[test]
    fn schedule_keeps_its_phase_and_never_schedules_in_the_past() {
        let start = Instant::now();
        let schedule = AgentSchedule {
            interval: Duration::from_secs(2),
            max_backoff: Duration::from_secs(60),
            first: start,
        };
        let late = start + Duration::from_millis(300);
        assert_eq!(
            schedule.next(start, late, 0),
            start + Duration::from_secs(2)
        );
        let very_late = start + Duration::from_secs(5);
        assert_eq!(schedule.next(start, very_late, 0), very_late);
        assert_eq!(schedule.next(start, late, 2), late + Duration::from_secs(4));
    }
}
