//! Virtual agents: the pure state machine behind the simulated Belfabriek
//! API, and the simulated clock it runs on.
//!
//! An agent is advanced lazily: nothing happens between polls; when the
//! agent is read, [`VirtualAgent::advance_to`] replays every state change
//! that was due by "now". So 5,000 idle agents cost nothing, and a test can
//! jump the [`SimClock`] forward instead of sleeping. This module does no IO
//! and takes no locks; the server keeps one `Mutex<VirtualAgent>` per agent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// What the simulated Belfabriek service says about one agent: the fields of
/// `ivr.getAgentAvail` plus the `general.getExtensionStatus` value.
///
/// This is also the JSON body of `POST /control/agents/{ext}`:
/// `{"available":true,"reason":"-","destination":"31612345678","extension_status":"called"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtualState {
    /// `available` (sent as `<i4>1</i4>` or `<i4>0</i4>`).
    pub available: bool,
    /// `availReason`: `-`, `pause`, `paused`, `handling` or any other text.
    #[serde(default = "default_reason")]
    pub reason: String,
    /// `extension`: the number the agent is reached at. When setting a state,
    /// `None` keeps the agent's current destination; a state read back from
    /// the simulator always has one.
    #[serde(default)]
    pub destination: Option<String>,
    /// The `Available` member of `general.getExtensionStatus`: `calling`,
    /// `called`, `wrapup` or `idle` (any text is served as given).
    #[serde(default = "default_extension_status")]
    pub extension_status: String,
}

fn default_reason() -> String {
    "-".to_owned()
}

fn default_extension_status() -> String {
    "idle".to_owned()
}

impl VirtualState {
    /// Not logged in: `available=0`, reason `-`.
    pub fn offline() -> Self {
        Self::unavailable("-")
    }

    /// Not available for `reason` (`pause`, `paused`, `handling`, anything).
    pub fn unavailable(reason: &str) -> Self {
        Self {
            available: false,
            reason: reason.to_owned(),
            destination: None,
            extension_status: "idle".to_owned(),
        }
    }

    /// Logged in (`available=1`) with the given extension status (`idle`,
    /// `calling`, `called`, `wrapup`).
    pub fn available(extension_status: &str) -> Self {
        Self {
            available: true,
            reason: "-".to_owned(),
            destination: None,
            extension_status: extension_status.to_owned(),
        }
    }

    /// The same state with `destination` set.
    pub fn with_destination(mut self, destination: &str) -> Self {
        self.destination = Some(destination.to_owned());
        self
    }

    /// The state borrowed (no destination: empty).
    pub fn view(&self) -> StateView<'_> {
        StateView {
            available: self.available,
            reason: &self.reason,
            destination: self.destination.as_deref().unwrap_or_default(),
            extension_status: &self.extension_status,
        }
    }
}

/// A [`VirtualState`] borrowed from the agent, so an answer is written
/// without copying its texts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateView<'a> {
    /// `available`.
    pub available: bool,
    /// `availReason`.
    pub reason: &'a str,
    /// `extension`.
    pub destination: &'a str,
    /// The `Available` member of `general.getExtensionStatus`.
    pub extension_status: &'a str,
}

/// The simulated clock: real monotonic time plus an offset that tests (or a
/// tool) can push forward with [`SimClock::advance`].
#[derive(Debug)]
pub struct SimClock {
    /// When the simulator started.
    started: Instant,
    /// Extra simulated time, in microseconds.
    offset_micros: AtomicU64,
}

impl SimClock {
    /// A clock starting at zero now.
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            offset_micros: AtomicU64::new(0),
        }
    }

    /// Simulated microseconds since the start.
    pub fn now_micros(&self) -> u64 {
        let real = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        real.saturating_add(self.offset_micros.load(Ordering::Relaxed))
    }

    /// Moves simulated time forward by `by`.
    pub fn advance(&self, by: Duration) {
        let micros = u64::try_from(by.as_micros()).unwrap_or(u64::MAX);
        self.offset_micros.fetch_add(micros, Ordering::Relaxed);
    }
}

impl Default for SimClock {
    fn default() -> Self {
        Self::new()
    }
}

/// A tiny deterministic random generator (SplitMix64): 8 bytes per agent
/// instead of a full `StdRng`, and reproducible from the configured seed.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform number in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        // 53 random bits: exactly representable.
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// An exponentially distributed duration with the given mean (at least
    /// one microsecond, so time always moves on).
    pub fn exponential_micros(&mut self, mean_micros: u64) -> u64 {
        let uniform = self.next_f64();
        let sample = -(mean_micros as f64) * (1.0 - uniform).ln();
        // Cap the tail at 20 means so one agent cannot get stuck for hours.
        let capped = sample.min(mean_micros as f64 * 20.0);
        (capped as u64).max(1)
    }
}

/// Where a virtual agent is in its working day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Not logged in.
    Offline,
    /// Logged in, waiting for a call.
    Idle,
    /// A call is ringing (`calling`).
    Ringing,
    /// On a call (`called`).
    OnCall,
    /// After-call work (`wrapup`).
    Wrapup,
    /// On a break; the reason is `pause` or `paused`.
    Paused(&'static str),
    /// Not available because handling a call (`handling`).
    Handling,
    /// Not available for another reason (free text, e.g. `lunch`, `privé`).
    Away(&'static str),
}

/// The free-text reasons a virtual agent uses when away. `privé` is there on
/// purpose: it is not ASCII, so it exercises the ISO-8859-1 encoding.
const AWAY_REASONS: [&str; 4] = ["lunch", "overleg", "training", "privé"];

impl Phase {
    /// The upstream view of this phase at `destination`.
    pub fn state(self, destination: &str) -> VirtualState {
        let view = self.view(destination);
        VirtualState {
            available: view.available,
            reason: view.reason.to_owned(),
            destination: Some(destination.to_owned()),
            extension_status: view.extension_status.to_owned(),
        }
    }

    /// The upstream view of this phase at `destination`, borrowed.
    pub fn view(self, destination: &str) -> StateView<'_> {
        let (available, reason, extension_status) = match self {
            Phase::Offline => (false, "-", "idle"),
            Phase::Idle => (true, "-", "idle"),
            Phase::Ringing => (true, "-", "calling"),
            Phase::OnCall => (true, "-", "called"),
            Phase::Wrapup => (true, "-", "wrapup"),
            Phase::Paused(reason) => (false, reason, "idle"),
            Phase::Handling => (false, "handling", "called"),
            Phase::Away(reason) => (false, reason, "idle"),
        };
        StateView {
            available,
            reason,
            destination,
            extension_status,
        }
    }

    /// The phase after this one, drawn with realistic weights: a call rings,
    /// is mostly answered, wrapped up; agents sometimes pause, handle, step
    /// away, and rarely log off.
    pub fn next(self, rng: &mut SplitMix64) -> Phase {
        let roll = rng.next_f64();
        let pick = |rng: &mut SplitMix64, options: &[&'static str]| {
            let index = (rng.next_u64() % options.len() as u64) as usize;
            options[index]
        };
        match self {
            Phase::Offline => Phase::Idle,
            Phase::Idle => match roll {
                r if r < 0.72 => Phase::Ringing,
                r if r < 0.84 => Phase::Paused(pick(rng, &["pause", "paused"])),
                r if r < 0.91 => Phase::Handling,
                r if r < 0.96 => Phase::Away(pick(rng, &AWAY_REASONS)),
                _ => Phase::Offline,
            },
            Phase::Ringing => {
                if roll < 0.85 {
                    Phase::OnCall
                } else {
                    Phase::Idle
                }
            }
            Phase::OnCall => {
                if roll < 0.8 {
                    Phase::Wrapup
                } else {
                    Phase::Idle
                }
            }
            Phase::Wrapup => {
                if roll < 0.9 {
                    Phase::Idle
                } else {
                    Phase::Paused(pick(rng, &["pause", "paused"]))
                }
            }
            Phase::Paused(_) => {
                if roll < 0.9 {
                    Phase::Idle
                } else {
                    Phase::Offline
                }
            }
            Phase::Handling => Phase::Idle,
            Phase::Away(_) => {
                if roll < 0.8 {
                    Phase::Idle
                } else {
                    Phase::Offline
                }
            }
        }
    }
}

/// How many state changes one read may replay before the agent simply
/// restarts its timer from now (after a long unpolled stretch with a tiny
/// dwell time, replaying every change would waste time for nothing).
const MAX_CHANGES_PER_READ: u32 = 1_000;

/// One virtual agent.
#[derive(Debug, Clone)]
pub struct VirtualAgent {
    /// Where the agent is when moving on its own.
    phase: Phase,
    /// The desk number the agent normally answers on.
    desk_destination: String,
    /// The mobile number the agent sometimes logs in with.
    mobile_destination: String,
    /// Whether the current session uses the mobile number.
    on_mobile: bool,
    /// A state set from outside; while set, the agent does not move.
    frozen: Option<VirtualState>,
    /// When (simulated microseconds) the next change is due.
    next_change_micros: u64,
    /// State changes made so far (auto movement and `set`).
    changes: u64,
    /// This agent's random stream.
    rng: SplitMix64,
}

impl VirtualAgent {
    /// A new agent. `number` seeds its phone numbers; with `auto`, it starts
    /// in a random phase with a random first dwell, otherwise offline.
    pub fn new(number: u32, seed: u64, auto: bool, now_micros: u64, mean_micros: u64) -> Self {
        let mut rng = SplitMix64::new(seed);
        let phase = if auto {
            match rng.next_f64() {
                r if r < 0.2 => Phase::Offline,
                r if r < 0.6 => Phase::Idle,
                r if r < 0.65 => Phase::Ringing,
                r if r < 0.82 => Phase::OnCall,
                r if r < 0.9 => Phase::Wrapup,
                _ => Phase::Paused("pause"),
            }
        } else {
            Phase::Offline
        };
        let first_dwell = rng.exponential_micros(mean_micros);
        Self {
            phase,
            desk_destination: format!("31201{:06}", number % 1_000_000),
            mobile_destination: format!("3161{:07}", number % 10_000_000),
            on_mobile: false,
            frozen: None,
            next_change_micros: now_micros.saturating_add(first_dwell),
            changes: 0,
            rng,
        }
    }

    /// The destination of the current session.
    fn destination(&self) -> &str {
        if self.on_mobile {
            &self.mobile_destination
        } else {
            &self.desk_destination
        }
    }

    /// Replays every change due by `now_micros` (only when `auto` and not
    /// frozen).
    pub fn advance_to(&mut self, now_micros: u64, mean_micros: u64, auto: bool) {
        if !auto || self.frozen.is_some() {
            return;
        }
        let mut replayed = 0;
        while self.next_change_micros <= now_micros {
            let next = self.phase.next(&mut self.rng);
            if self.phase == Phase::Offline && next != Phase::Offline {
                // A new login: most agents answer on their desk number.
                self.on_mobile = self.rng.next_f64() < 0.15;
            }
            self.phase = next;
            self.changes += 1;
            replayed += 1;
            let dwell = self.rng.exponential_micros(mean_micros);
            if replayed >= MAX_CHANGES_PER_READ {
                self.next_change_micros = now_micros.saturating_add(dwell);
                break;
            }
            self.next_change_micros = self.next_change_micros.saturating_add(dwell);
        }
    }

    /// The current state, borrowed (call [`Self::advance_to`] first).
    pub fn view(&self) -> StateView<'_> {
        match &self.frozen {
            Some(state) => state.view(),
            None => self.phase.view(self.destination()),
        }
    }

    /// The current state (call [`Self::advance_to`] first).
    pub fn state(&self) -> VirtualState {
        match &self.frozen {
            Some(state) => state.clone(),
            None => self.phase.state(self.destination()),
        }
    }

    /// Sets the state and stops auto movement. A `None` destination keeps
    /// the current one.
    pub fn freeze(&mut self, mut state: VirtualState) {
        if state.destination.is_none() {
            state.destination = Some(match &self.frozen {
                Some(VirtualState {
                    destination: Some(current),
                    ..
                }) => current.clone(),
                _ => self.destination().to_owned(),
            });
        }
        self.frozen = Some(state);
        self.changes += 1;
    }

    /// Resumes auto movement from the phase the agent had before it was
    /// frozen, with a fresh dwell starting at `now_micros`.
    pub fn resume(&mut self, now_micros: u64, mean_micros: u64) {
        self.frozen = None;
        self.next_change_micros =
            now_micros.saturating_add(self.rng.exponential_micros(mean_micros));
    }

    /// True while the state was set from outside.
    pub fn is_frozen(&self) -> bool {
        self.frozen.is_some()
    }

    /// How many state changes this agent has made.
    pub fn changes(&self) -> u64 {
        self.changes
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const MEAN: u64 = 1_000_000;

    #[test]
    fn auto_agent_visits_every_kind_of_state_over_simulated_time() {
        let mut agent = VirtualAgent::new(1001, 7, true, 0, MEAN);
        let mut seen = BTreeSet::new();
        for second in 0..2_000u64 {
            agent.advance_to(second * MEAN, MEAN, true);
            let state = agent.state();
            seen.insert((
                state.available,
                state.reason.clone(),
                state.extension_status,
            ));
        }
        for expected in [
            (false, "-", "idle"),
            (true, "-", "idle"),
            (true, "-", "calling"),
            (true, "-", "called"),
            (true, "-", "wrapup"),
            (false, "handling", "called"),
        ] {
            let expected = (expected.0, expected.1.to_owned(), expected.2.to_owned());
            assert!(seen.contains(&expected), "{expected:?} not in {seen:?}");
        }
        assert!(seen
            .iter()
            .any(|(_, reason, _)| reason.starts_with("pause")));
        assert!(agent.changes() > 500, "{}", agent.changes());
    }

    #[test]
    fn agent_without_auto_stays_offline_and_frozen_agent_stays_put() {
        let mut agent = VirtualAgent::new(1001, 7, false, 0, MEAN);
        agent.advance_to(1_000 * MEAN, MEAN, false);
        assert!(!agent.state().available);
        assert_eq!(agent.state().reason, "-");
        assert_eq!(agent.state().destination.as_deref(), Some("31201001001"));

        let mut agent = VirtualAgent::new(1001, 7, true, 0, MEAN);
        agent.freeze(VirtualState::available("called"));
        agent.advance_to(1_000 * MEAN, MEAN, true);
        assert_eq!(agent.state().extension_status, "called");
        assert!(agent.state().destination.is_some());
        agent.resume(1_000 * MEAN, MEAN);
        agent.advance_to(2_000 * MEAN, MEAN, true);
        assert!(!agent.is_frozen());
    }

    #[test]
    fn a_long_unpolled_stretch_is_bounded() {
        let mut agent = VirtualAgent::new(1, 1, true, 0, 1);
        agent.advance_to(u64::MAX / 2, 1, true);
        assert_eq!(agent.changes(), u64::from(MAX_CHANGES_PER_READ));
        assert!(agent.next_change_micros > u64::MAX / 2);
    }

    #[test]
    fn exponential_dwell_has_roughly_the_mean() {
        let mut rng = SplitMix64::new(3);
        let total: u64 = (0..10_000).map(|_| rng.exponential_micros(MEAN)).sum();
        let mean = total / 10_000;
        assert!((800_000..1_200_000).contains(&mean), "{mean}");
    }

    #[test]
    fn clock_advances_by_offset() {
        let clock = SimClock::new();
        let before = clock.now_micros();
        clock.advance(Duration::from_secs(60));
        assert!(clock.now_micros() >= before + 60_000_000);
    }
}
