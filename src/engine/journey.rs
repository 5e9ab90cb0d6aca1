//! A customer's walk through one sequence version, and the goals its steps armed.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::sequence::{Sequence, Step, Timing};

/// Stable id of a journey, derived from what started it so replays give the same ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JourneyId(pub u64);

impl JourneyId {
    /// FNV-1a over the parts: stable across runs, platforms and versions (unlike `Hash`).
    pub fn derive(parts: &[&str]) -> JourneyId {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for part in parts {
            for b in part.bytes().chain(std::iter::once(0)) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        JourneyId(h)
    }
}

impl fmt::Display for JourneyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl std::str::FromStr for JourneyId {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<JourneyId, Self::Err> {
        u64::from_str_radix(s, 16).map(JourneyId)
    }
}

// As 16 hex digits: JSON numbers above 2^53 lose precision in most tools.
impl serde::Serialize for JourneyId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for JourneyId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<JourneyId, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone)]
pub struct Journey {
    pub id: JourneyId,
    /// Pinned: a journey finishes on the version it started on.
    pub sequence: Arc<Sequence>,
    /// Set for per_order journeys: they only see this order's events.
    pub order_id: Option<Arc<str>>,
    pub started_at: DateTime<Utc>,
    /// Index of the current step.
    pub step: usize,
    pub state: State,
    /// Started by an event older than `policy.max_event_age` (a transactional sequence during
    /// a replay of history): it sends no marketing and starts no marketing sequence.
    pub backfill: bool,
    /// Paused by an operator: nothing runs (no step, no timeout, no `wait_for` match) until
    /// resumed; `exit_on` and goals still end it.
    pub held: bool,
}

/// Where the current step stands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum State {
    /// The step runs at `at`; `cause` says why then (it becomes the email's reason).
    Due { at: DateTime<Utc>, cause: Cause },
    /// Waiting for an event until `deadline`, when `on_timeout` decides.
    WaitingFor { deadline: DateTime<Utc> },
    /// `pause_when` held the due step; it runs when `pause_when` turns false.
    Paused,
}

/// Why a step runs at the instant it does. Fieldless (the details are in the step), so that
/// a journey stays small.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// No wait: right after the previous step (or at enrolment).
    Immediate,
    /// The step's `wait` elapsed.
    Waited,
    /// The step's `wait_for` event arrived.
    Event,
    /// `wait_for` timed out with `on_timeout: continue`.
    TimeoutContinue,
    /// The send window opened.
    Window,
    /// Quiet hours ended.
    QuietHoursOver,
    /// `pause_when` turned false.
    Resumed,
}

impl Cause {
    /// The reason an action ran now, in words: "wait 1d elapsed", "order.shipped received".
    pub fn describe(self, step: &Step) -> String {
        match (self, &step.timing) {
            (Cause::Waited, Timing::Wait(p)) => format!("wait {p} elapsed"),
            (Cause::Event, Timing::WaitFor(w)) => format!("{} received", w.event),
            (Cause::TimeoutContinue, Timing::WaitFor(w)) => {
                format!(
                    "wait_for {} timed out after {}: continue",
                    w.event, w.timeout
                )
            }
            (Cause::Window, _) => "send window open".into(),
            (Cause::QuietHoursOver, _) => "quiet hours over".into(),
            (Cause::Resumed, _) => "resumed".into(),
            (Cause::Immediate | Cause::Waited | Cause::Event | Cause::TimeoutContinue, _) => {
                "no wait".into()
            }
        }
    }
}

impl Journey {
    /// The instant this journey next needs the engine without an event, if any. A timer
    /// after 9999-12-31T23:59:59Z never fires (SPEC §7).
    pub fn due(&self) -> Option<DateTime<Utc>> {
        if self.held {
            return None;
        }
        match &self.state {
            State::Due { at, .. } => Some(*at),
            State::WaitingFor { deadline } => Some(*deadline),
            State::Paused => None,
        }
        .filter(|t| crate::time::fires(*t))
    }

    pub fn step_id(&self) -> Option<&Arc<str>> {
        self.sequence.steps.get(self.step).map(|s| &s.id)
    }
}

/// A conversion the customer may still make for a step whose action ran.
#[derive(Debug, Clone)]
pub struct PendingGoal {
    pub journey: JourneyId,
    pub sequence: Arc<Sequence>,
    pub step: usize,
    pub from: DateTime<Utc>,
    pub until: DateTime<Utc>,
}
